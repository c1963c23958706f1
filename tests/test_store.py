"""Model store: naming by SHA-256, resolving references, header parsing without torch."""
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy

from spreadcode import store
from spreadcode.errors import SpreadcodeError


def artifact_bytes(kind="catalyzer", version=1, **extra):
    """A small valid artifact: one tensor plus spreadcode metadata."""
    meta = {"artifact": kind, "format_version": version, **extra}
    return safetensors.numpy.save({"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                  metadata={"spreadcode": json.dumps(meta, sort_keys=True)})


def test_store_dir_override_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SPREADCODE_HOME", str(tmp_path / "home"))
    assert store.store_dir() == tmp_path / "home" / "models"
    assert store.store_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv("SPREADCODE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert store.store_dir() == tmp_path / "user" / ".spreadcode" / "models"


def test_save_artifact_names_file_by_hash(tmp_path):
    data = artifact_bytes(epochs=3)
    sha, path = store.save_artifact(data, tmp_path / "models")
    assert sha == hashlib.sha256(data).hexdigest()
    assert path == tmp_path / "models" / f"{sha}.safetensors"
    assert path.read_bytes() == data
    assert store.sha256_file(path) == sha
    assert [p.name for p in (tmp_path / "models").iterdir()] == [path.name]  # no temp left over


def test_save_artifact_from_path_and_again_refreshes_mtime(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(artifact_bytes())
    sha, path = store.save_artifact(src, tmp_path / "s")
    os.utime(path, ns=(10**9, 10**9))
    assert store.save_artifact(src, tmp_path / "s") == (sha, path)
    assert path.stat().st_mtime_ns > 10**9


def test_save_artifact_rejects_foreign_bytes(tmp_path):
    with pytest.raises(SpreadcodeError, match="not a spreadcode model"):
        store.save_artifact(b"\x00" * 100, tmp_path)
    assert not any(tmp_path.iterdir())


def test_read_metadata_returns_spreadcode_json(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(artifact_bytes(kind="decoder", catalyzer="ab" * 32))
    assert store.read_metadata(path) == {"artifact": "decoder", "format_version": 1, "catalyzer": "ab" * 32}


@pytest.mark.parametrize("content, message", [
    (b"", "too short"),
    (b"0123456789abcdef" * 4, "not safetensors, or truncated"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", r"safetensors header is not valid JSON \(not UTF-8\)"),
    (struct.pack("<Q", 2) + b"[]", "safetensors header is not an object"),
    (struct.pack("<Q", 6) + b"[[[]]]", "safetensors header is not an object"),
    (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000, "nested more than 64 levels"),
    (safetensors.numpy.save({"w": np.zeros(2, np.float32)}), "without spreadcode metadata"),
    (safetensors.numpy.save({"w": np.zeros(2, np.float32)}, metadata={"spreadcode": "{"}), "corrupt spreadcode metadata"),
    (safetensors.numpy.save({"w": np.zeros(2, np.float32)}, metadata={"spreadcode": "{}"}), "no artifact kind"),
])
def test_read_metadata_rejects_foreign_and_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SpreadcodeError, match=message) as info:
        store.read_metadata(path)
    assert str(path) in str(info.value)


def test_read_metadata_detects_truncation(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(artifact_bytes()[:-4])
    with pytest.raises(SpreadcodeError, match="lies outside the file"):
        store.read_metadata(path)


def test_read_metadata_refuses_newer_format(tmp_path):
    path = tmp_path / "new.safetensors"
    path.write_bytes(artifact_bytes(version=2))
    with pytest.raises(SpreadcodeError, match="format_version 2 is newer"):
        store.read_metadata(path)


def test_read_metadata_missing_file(tmp_path):
    with pytest.raises(SpreadcodeError, match="cannot read model file"):
        store.read_metadata(tmp_path / "nope")


def test_resolve_path_hash_and_prefix(tmp_path):
    sha, path = store.save_artifact(artifact_bytes(), tmp_path)
    other = tmp_path / "elsewhere.bin"
    other.write_bytes(b"x")
    assert store.resolve(str(other), tmp_path) == other
    assert store.resolve(sha, tmp_path) == path
    assert store.resolve(sha[:8], tmp_path) == path
    assert store.resolve(sha[:8].upper(), tmp_path) == path
    with pytest.raises(SpreadcodeError, match="not a hash of at least 8 hex digits"):
        store.resolve(sha[:7], tmp_path)
    missing = "0" * 8 if not sha.startswith("0" * 8) else "1" * 8
    with pytest.raises(SpreadcodeError, match=f"no model with hash {missing}"):
        store.resolve(missing, tmp_path)


def test_resolve_ambiguous_prefix(tmp_path):
    data = artifact_bytes()
    for name in ("deadbeef00", "deadbeef11"):
        (tmp_path / f"{name}.safetensors").write_bytes(data)
    assert store.resolve("deadbeef0", tmp_path).name == "deadbeef00.safetensors"
    with pytest.raises(SpreadcodeError, match="ambiguous .*2 models match"):
        store.resolve("deadbeef", tmp_path)


def test_latest_and_list_follow_mtime_and_kind(tmp_path):
    old_sha, old = store.save_artifact(artifact_bytes(seed=1), tmp_path)
    new_sha, new = store.save_artifact(artifact_bytes(seed=2), tmp_path)
    dec_sha, dec = store.save_artifact(artifact_bytes(kind="decoder", catalyzer=new_sha), tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    for i, path in enumerate((old, new, dec)):
        os.utime(path, ns=(10**18 + i, 10**18 + i))
    assert store.resolve("latest", tmp_path) == new
    assert store.resolve("latest", tmp_path, kind="decoder") == dec
    assert [a.sha256 for a in store.list_artifacts(store=tmp_path)] == [dec_sha, new_sha, old_sha]
    listed = store.list_artifacts("catalyzer", tmp_path)
    assert [(a.sha256, a.kind, a.meta["seed"]) for a in listed] == [(new_sha, "catalyzer", 2), (old_sha, "catalyzer", 1)]
    os.utime(old, ns=(2 * 10**18, 2 * 10**18))
    assert store.resolve("latest", tmp_path) == old


def test_latest_in_empty_store(tmp_path):
    assert store.list_artifacts(store=tmp_path / "none") == []
    with pytest.raises(SpreadcodeError, match="no catalyzer in the model store"):
        store.resolve("latest", tmp_path / "none")


def test_write_file_exact_path(tmp_path):
    target = tmp_path / "sub" / "model"
    umask = os.umask(0o022)
    try:
        store.write_file(target, b"abc")
    finally:
        os.umask(umask)
    assert target.read_bytes() == b"abc"
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_store_does_not_import_torch():
    code = "import sys, spreadcode.store; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_read_tensors_lists_dtypes_and_shapes(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(artifact_bytes())
    assert store.read_tensors(path) == {"w": ("F32", (2, 3))}


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]},  # shape says 32 bytes
    {"dtype": "F64", "shape": [2, 3], "data_offsets": [0, 24]},  # dtype says 48 bytes
    {"dtype": "C64", "shape": [2, 3], "data_offsets": [0, 24]},  # no such dtype here
    {"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]},
    {"dtype": "F32", "shape": [True, 6], "data_offsets": [0, 24]},
    {"dtype": "F32", "shape": [10**9, 10**9], "data_offsets": [0, 24]},
    {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]},  # past the end
    {"dtype": "F32", "shape": [2, 3]},
])
def test_tensor_entries_must_account_for_their_bytes(tmp_path, entry):
    good = artifact_bytes()
    header_len = struct.unpack_from("<Q", good)[0]
    header = json.loads(good[8:8 + header_len])
    header["w"] = entry
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + good[8 + header_len:])
    with pytest.raises(SpreadcodeError, match=f"^{path}: corrupt model file \\(tensor 'w'"):
        store.read_metadata(path)
