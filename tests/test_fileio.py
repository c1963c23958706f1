"""All-or-nothing outputs: recognisable temporaries, deleted on any exception, and those of
killed processes deleted by the next write of the same output."""
import os
import subprocess
import sys

import pytest

from spreadcode import fileio
from spreadcode.errors import SpreadcodeError


def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_is_hidden_beside_the_target_and_names_its_process(tmp_path):
    with fileio.atomic_output(tmp_path / "out.bin") as fh:
        fh.write(b"data")
        (temporary,) = tmp_path.iterdir()
        prefix = f".out.bin.spreadcode-tmp-{os.getpid()}-"
        assert temporary.name.startswith(prefix) and len(temporary.name) == len(prefix) + 12
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert (tmp_path / "out.bin").read_bytes() == b"data"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), RuntimeError("boom")])
def test_an_exception_deletes_every_temporary_and_touches_no_target(tmp_path, interrupt):
    (tmp_path / "b.bin").write_bytes(b"old")
    with pytest.raises(type(interrupt)):
        with fileio.atomic_outputs([tmp_path / "a.bin", tmp_path / "b.bin"]) as (a, b):
            a.write(b"new a")
            b.write(b"new b")
            raise interrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]
    assert (tmp_path / "b.bin").read_bytes() == b"old"


def test_several_outputs_appear_together(tmp_path):
    with fileio.atomic_outputs([tmp_path / "a.bin", tmp_path / "b.bin"]) as (a, b):
        a.write(b"1")
        b.write(b"2")
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []
    assert [(tmp_path / n).read_bytes() for n in ("a.bin", "b.bin")] == [b"1", b"2"]


def test_unwritable_directory_is_one_clear_error(tmp_path):
    with pytest.raises(SpreadcodeError, match="dir.bin: cannot create file"):
        with fileio.atomic_output(tmp_path / "no" / "such" / "dir.bin"):
            pass


def test_next_write_deletes_the_temporaries_of_dead_processes_only(tmp_path):
    dead = tmp_path / f".out.bin.spreadcode-tmp-{dead_pid()}-0123456789ab"
    alive = tmp_path / f".out.bin.spreadcode-tmp-{os.getpid()}-0123456789ab"
    other_output = tmp_path / f".other.bin.spreadcode-tmp-{dead_pid()}-0123456789ab"
    not_ours = tmp_path / ".out.bin.0123456789ab.tmp"
    for path in (dead, alive, other_output, not_ours):
        path.write_bytes(b"partial")
    with fileio.atomic_output(tmp_path / "out.bin") as fh:
        fh.write(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out.bin", alive.name, other_output.name, not_ours.name])
