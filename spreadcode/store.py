"""The model store: trained artifacts (catalyzers, later decoders) named by the SHA-256 of their bytes.

Layout: ``<store>/<sha256>.safetensors``, where ``<store>`` is ``$SPREADCODE_HOME/models``
(default ``~/.spreadcode/models``) unless a directory is given explicitly. Every artifact is a
safetensors file whose header metadata holds one JSON string under the key ``"spreadcode"``
with at least ``"artifact"`` (the kind: ``"catalyzer"``, ``"decoder"``, ...) and
``"format_version"``. This module parses that header itself (8-byte little-endian length, then
JSON), so listing and inspecting models never imports torch.
"""
import hashlib
import io
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from spreadcode.errors import SpreadcodeError
from spreadcode.fileio import atomic_output, load_json

ARTIFACT_SUFFIX = ".safetensors"
FORMAT_VERSION = 1
METADATA_KEY = "spreadcode"
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# Bytes per element of the safetensors dtypes a spreadcode artifact may hold.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_HASH_PREFIX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class ArtifactInfo:
    """One stored artifact: its hash, path, kind, modification time (ns) and header metadata."""

    sha256: str
    path: Path
    kind: str
    mtime_ns: int
    meta: dict


def store_dir(override=None):
    """The store directory: ``override`` itself when given (a ``--store`` flag), else
    ``$SPREADCODE_HOME/models``, else ``~/.spreadcode/models``. Not created here."""
    if override is not None:
        return Path(override).expanduser()
    home = os.environ.get("SPREADCODE_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".spreadcode") / "models"


def sha256_file(path):
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_header(fh, size, name):
    """Read and validate the safetensors header of an open binary file of ``size`` bytes.

    Returns (the spreadcode metadata dict, {tensor name: (safetensors dtype, shape tuple)}).
    Raises SpreadcodeError naming ``name`` for anything that is not a complete spreadcode
    artifact: every tensor's dtype and shape must account exactly for its bytes, which must
    lie inside the file, so the shapes are what loading the tensors will allocate.
    """
    prefix = fh.read(8)
    if len(prefix) < 8:
        raise SpreadcodeError(f"{name}: not a spreadcode model file (too short to be safetensors)")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > min(size - 8, _MAX_HEADER_BYTES):
        raise SpreadcodeError(f"{name}: not a spreadcode model file (not safetensors, or truncated)")
    header = load_json(fh.read(header_len), f"{name}: not a spreadcode model file: its safetensors header")
    if not isinstance(header, dict):
        raise SpreadcodeError(f"{name}: not a spreadcode model file (the safetensors header is not an object)")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        raise SpreadcodeError(f"{name}: a safetensors file without spreadcode metadata, not a spreadcode model")
    if not isinstance(metadata[METADATA_KEY], str):
        raise SpreadcodeError(f"{name}: corrupt spreadcode metadata in the model header (not a string)")
    meta = load_json(metadata[METADATA_KEY], f"{name}: corrupt spreadcode metadata: it")
    if not isinstance(meta, dict) or not isinstance(meta.get("artifact"), str) \
            or not isinstance(meta.get("format_version"), int):
        raise SpreadcodeError(f"{name}: corrupt spreadcode metadata (no artifact kind or format_version)")
    if meta["format_version"] > FORMAT_VERSION:
        raise SpreadcodeError(
            f"{name}: format_version {meta['format_version']} is newer than this spreadcode "
            f"understands ({FORMAT_VERSION}); upgrade spreadcode")
    data_size = size - 8 - header_len
    tensors = {}
    for tensor_name, entry in header.items():
        if tensor_name != "__metadata__":
            tensors[tensor_name] = _tensor_entry(entry, data_size)
            if tensors[tensor_name] is None:
                raise SpreadcodeError(
                    f"{name}: corrupt model file (tensor {tensor_name!r}: its dtype, shape and "
                    "byte range disagree, or it lies outside the file)")
    return meta, tensors


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(entry, data_size):
    """(dtype, shape tuple) of a safetensors header entry whose ``data_offsets`` lie within the
    ``data_size`` bytes of tensor data and span exactly shape x dtype size bytes; else None."""
    if not isinstance(entry, dict):
        return None
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not (dtype in DTYPE_BYTES and isinstance(shape, list) and all(map(_is_count, shape))
            and isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1] <= data_size
            and offsets[1] - offsets[0] == math.prod(shape) * DTYPE_BYTES[dtype]):
        return None
    return dtype, tuple(shape)


def _read_header(path):
    """`_parse_header` of the file at ``path``; SpreadcodeError when it cannot be read."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _parse_header(fh, os.fstat(fh.fileno()).st_size, str(path))
    except OSError as exc:
        raise SpreadcodeError(f"{path}: cannot read model file ({exc.strerror})") from None


def read_metadata(path):
    """The spreadcode metadata dict of an artifact file (header only; no torch, no tensor data).

    Raises SpreadcodeError for missing, foreign (not safetensors / no spreadcode metadata),
    truncated or too-new files.
    """
    return _read_header(path)[0]


def read_tensors(path):
    """The tensors an artifact file holds, from its header only: {name: (safetensors dtype
    such as "F32", shape tuple)}, each checked to fill exactly its bytes inside the file.
    Raises SpreadcodeError as `read_metadata` does."""
    return _read_header(path)[1]


def write_file(path, data):
    """Atomically write artifact bytes to exactly ``path`` (no extension added); mkdir parents."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise SpreadcodeError(f"{path}: cannot write model file ({exc.strerror})") from None


def save_artifact(src, store=None):
    """Put an artifact (its bytes, or the path of a file) into the store.

    The bytes are validated as a spreadcode artifact first. Stored as
    ``<store>/<sha256>.safetensors`` (atomic); storing identical bytes again only refreshes the
    modification time, so the artifact becomes "latest". Returns (sha256 hex, stored Path).
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "model bytes"
    else:
        name = str(src)
        try:
            data = Path(src).read_bytes()
        except OSError as exc:
            raise SpreadcodeError(f"{src}: cannot read model file ({exc.strerror})") from None
    _parse_header(io.BytesIO(data), len(data), name)
    sha = hashlib.sha256(data).hexdigest()
    target = store_dir(store) / f"{sha}{ARTIFACT_SUFFIX}"
    if target.is_file() and sha256_file(target) == sha:
        os.utime(target)
    else:
        write_file(target, data)
    return sha, target


def list_artifacts(kind=None, store=None):
    """Artifacts in the store, newest first (by mtime, then name), optionally of one ``kind``.

    Returns a list of ArtifactInfo. Files in the store that are not valid artifacts are skipped
    (loading one by hash still reports what is wrong with it).
    """
    directory = store_dir(store)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob(f"*{ARTIFACT_SUFFIX}"):
        try:
            meta = read_metadata(path)
            mtime_ns = path.stat().st_mtime_ns
        except (SpreadcodeError, OSError):
            continue
        if kind is None or meta["artifact"] == kind:
            found.append(ArtifactInfo(path.name[:-len(ARTIFACT_SUFFIX)], path, meta["artifact"], mtime_ns, meta))
    found.sort(key=lambda info: (info.mtime_ns, info.path.name), reverse=True)
    return found


def resolve(ref, store=None, kind="catalyzer"):
    """Turn a model reference into a file path.

    ``ref``: an existing file path; a full SHA-256 or a unique prefix of at least 8 hex digits
    of an artifact in the store; or ``"latest"`` (newest artifact of ``kind`` in the store).
    Raises SpreadcodeError when nothing, or more than one artifact, matches.
    """
    ref = str(ref)
    directory = store_dir(store)
    if ref == "latest":
        newest = list_artifacts(kind=kind, store=store)
        if not newest:
            raise SpreadcodeError(f"no {kind} in the model store {directory}; train one first")
        return newest[0].path
    if Path(ref).expanduser().is_file():
        return Path(ref).expanduser()
    if _HASH_PREFIX.fullmatch(ref.lower()):
        matches = sorted(directory.glob(f"{ref.lower()}*{ARTIFACT_SUFFIX}")) if directory.is_dir() else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SpreadcodeError(f"no model with hash {ref} in the model store {directory}")
        raise SpreadcodeError(
            f"hash prefix {ref} is ambiguous in {directory} ({len(matches)} models match); give more digits")
    raise SpreadcodeError(
        f"model {ref!r} not found: not a file, not a hash of at least 8 hex digits, not 'latest'")
