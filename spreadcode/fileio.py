"""File handling shared by every layer: all-or-nothing outputs, strict JSON reading and
canonical JSON writing.

Outputs are written to a hidden temporary file beside the target, named
``.<name>.spreadcode-tmp-<pid>-<random hex>``, and renamed onto the target only when complete;
an exception (Ctrl-C, and SIGTERM through the CLI) deletes it. A process killed outright
(SIGKILL, power loss) cannot clean up, so every new write of ``<name>`` first deletes the
temporaries of ``<name>`` whose process no longer exists. No torch, no click.
"""
import json
import os
import re
import secrets
from contextlib import ExitStack, contextmanager
from pathlib import Path

from spreadcode.errors import SpreadcodeError

TEMP_MARK = ".spreadcode-tmp-"
MAX_JSON_DEPTH = 64


def temp_path(path):
    """The temporary sibling a write of ``path`` goes through (see the module docstring)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(6)}")


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we can test: leave its file alone
    return True


def remove_stale_temps(path):
    """Delete the temporaries of earlier writes of ``path`` whose process has died.

    Returns the paths removed. Temporaries of live processes (a concurrent write) are kept."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}{TEMP_MARK}") + r"(\d+)-[0-9a-f]+")
    removed = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.fullmatch(candidate.name)
        if match and not _process_exists(int(match.group(1))):
            try:
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed


@contextmanager
def _temporary(path):
    """An open binary temp file (read/write/seek) for ``path``; deleted on any exception,
    else handed back (closed by the caller's commit)."""
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise SpreadcodeError(f"{path}: cannot create file ({err.strerror})") from None
    fh = os.fdopen(fd, "w+b")
    try:
        yield fh, tmp
    except BaseException:
        fh.close()
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_outputs(paths):
    """Write several files all-or-nothing: yields one binary file (read/write/seek, so h5py can
    use it) per path, each a temporary in its target's directory. On clean exit they are all
    fsynced, then renamed onto their targets; on any exception (Ctrl-C included) they are all
    deleted, no target is touched, and the exception is re-raised."""
    paths = [Path(p) for p in paths]
    with ExitStack() as stack:
        opened = [stack.enter_context(_temporary(path)) for path in paths]
        yield [fh for fh, _ in opened]
        try:
            for fh, _ in opened:
                fh.flush()
                os.fsync(fh.fileno())
                fh.close()
        except OSError as err:
            raise SpreadcodeError(f"{paths[0]}: cannot write file ({err.strerror or err})") from None
    # Every temporary is complete: the renames are the only step left.
    for (_, tmp), path in zip(opened, paths):
        try:
            os.replace(tmp, path)
        except OSError as err:
            for _, left in opened:
                left.unlink(missing_ok=True)
            raise SpreadcodeError(f"{path}: cannot write file ({err.strerror or err})") from None


@contextmanager
def atomic_output(path):
    """`atomic_outputs` of one file: yields its binary temp file."""
    with atomic_outputs([path]) as (fh,):
        yield fh


def canonical_json(value, ascii_only=True):
    """The one JSON text of ``value`` that spreadcode writes (model-file and .spc metadata):
    sorted keys, compact separators, no NaN/Infinity (ValueError); non-ASCII characters
    escaped unless ``ascii_only`` is False. Equal values give equal text, hence equal hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only,
                      allow_nan=False)


def load_json(data, what):
    """Parse JSON strictly: UTF-8 bytes or a str, RFC 8259 without NaN/Infinity, valid
    Unicode (no unpaired surrogates), nested at most MAX_JSON_DEPTH arrays/objects deep.

    Returns the value; raises SpreadcodeError("<what> is not valid JSON (<why>)")."""
    def refuse(why):
        return SpreadcodeError(f"{what} is not valid JSON ({why})")

    def no_constant(name):
        raise refuse(f"{name} is not a JSON number")

    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        value = json.loads(text, parse_constant=no_constant)
    except UnicodeDecodeError:
        raise refuse("not UTF-8") from None
    except RecursionError:
        raise refuse(f"nested more than {MAX_JSON_DEPTH} levels deep") from None
    except SpreadcodeError:
        raise
    except ValueError as err:  # json.JSONDecodeError, or an integer with too many digits
        raise refuse(str(err)) from None
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise refuse("a string holds an unpaired surrogate") from None
        elif isinstance(item, (list, dict)):
            if depth == MAX_JSON_DEPTH:
                raise refuse(f"nested more than {MAX_JSON_DEPTH} levels deep")
            children = (x for pair in item.items() for x in pair) if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return value
