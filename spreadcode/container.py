"""The .spc file: a self-describing, checksummed array of fixed-width codes.

Byte-level specification: ``formats/spc.md``. In short: a 192-byte little-endian header
(magic, version, code kind and parameters, counts, catalyzer SHA-256, checksums), for product
codes a block table of M (u32 d_m, u32 r2_m) pairs (format 1.1), UTF-8 JSON metadata, zero padding to a 64-byte boundary, ``count × code_bytes`` code bytes, then (flag
bit 0) zero padding to 8 bytes and ``count`` int64 ids. Everything before the payload is
covered by the header SHA-256, everything from the payload on by the payload SHA-256.
There is no codebook: the header alone says how to decode.

This module only moves bytes: `SpcWriter` takes codes already packed to uint8 (b, code_bytes)
(see ``Quantizer.codes_to_bytes``) and `open_spc` hands them back memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import struct
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from spreadcode.errors import SpreadcodeError
from spreadcode.fileio import atomic_output, canonical_json, load_json
from spreadcode.quantizer import MAX_BLOCKS, describe_code, quantizer_from_spec

MAGIC = b"SPRDCODE"
VERSION_MAJOR = 1
VERSION_MINOR = 0          # lattice and sign files: format 1.0
PRODUCT_VERSION_MINOR = 1  # product files (the block table): format 1.1
HEADER = struct.Struct("<8sHHIBBH7IQQ32s32s32s32s")
HEADER_SIZE = HEADER.size  # 192
BLOCK = struct.Struct("<II")  # a product block (d_m, r2_m), after the fixed header
HEADER_SHA256_SLICE = slice(128, 160)
PAYLOAD_ALIGN = 64
IDS_ALIGN = 8
FLAG_HAS_IDS = 1
KINDS = {"lattice": 1, "sign": 2, "product": 3}
INPUT_DTYPES = {"float32": 1, "uint8": 2, "int32": 3, "float64": 4, "int8": 5, "float16": 6}
_HASH_CHUNK = 1 << 23


@dataclass(frozen=True)
class SpcHeader:
    """Every field of a .spc header, decoded.

    ``kind`` is "lattice" (``param`` = r², codes are ``code_bytes // 8`` little-endian uint64
    words), "sign" (``param`` = bits = d, one bit per dimension) or "product" (``param`` = the
    block table ((d_1, r2_1), ..., (d_M, r2_M)); the header's u32 field holds M, the table
    follows the fixed header); ``param`` is thus the quantizer's (`quantizer_from_spec`).
    ``catalyzer_sha256`` is a
    hex str, or None when the vectors were coded without a catalyzer; ``metadata`` is the
    decoded JSON object; the sha256 fields are hex str.
    """

    version_major: int
    version_minor: int
    kind: str
    d: int
    param: int
    bits: int
    code_bytes: int
    count: int
    input_dim: int
    input_dtype: str
    catalyzer_sha256: str | None
    flags: int
    metadata: dict
    header_size: int
    payload_offset: int
    payload_sha256: str
    header_sha256: str

    @property
    def has_ids(self):
        return bool(self.flags & FLAG_HAS_IDS)

    @property
    def ids_offset(self):
        """Byte offset of the int64 ids (meaningful when ``has_ids``)."""
        return _align(self.payload_offset + self.count * self.code_bytes, IDS_ALIGN)

    @property
    def file_size(self):
        """The exact length in bytes a file with this header has."""
        if self.has_ids:
            return self.ids_offset + 8 * self.count
        return self.payload_offset + self.count * self.code_bytes


def _align(offset, alignment):
    return -(-offset // alignment) * alignment


def _check_code_layout(kind, d, param, bits, code_bytes, where):
    """The quantizer of the code parameters; raise unless they name a setting the codec
    supports (within its limits, see `spreadcode.lattice`, `spreadcode.signs` and
    `spreadcode.quantizer.ProductQuantizer`) and ``bits`` / ``code_bytes`` are exactly what it
    takes: lattice ceil(log2 |S(d, r²)|) bits in ceil(bits / 64) uint64 words, sign codes one
    bit per dimension (param = bits = d) in ceil(d / 8) bytes, product codes the sums of their
    blocks' bits and ceil(bits_m / 8) bytes (param = the blocks, d their dimensions' sum)."""
    if kind not in KINDS:
        raise SpreadcodeError(f"{where}: unknown code kind {kind!r} (expected lattice, sign "
                              "or product)")
    try:
        quantizer = quantizer_from_spec(kind, d, param)
    except SpreadcodeError as err:
        raise SpreadcodeError(f"{where}: {err}") from None
    if (bits, code_bytes) != (quantizer.bits, quantizer.code_bytes):
        raise SpreadcodeError(
            f"{where}: {describe_code(kind, d, param)} codes have {quantizer.bits} bits in "
            f"{quantizer.code_bytes} bytes, not {bits} bits in {code_bytes} bytes")
    return quantizer


def _catalyzer_bytes(value, where):
    """32 raw bytes from None, raw bytes or a hex str (all zero = no catalyzer)."""
    if value is None:
        return bytes(32)
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            value = b""
    if not isinstance(value, bytes) or len(value) != 32:
        raise SpreadcodeError(
            f"{where}: catalyzer SHA-256 must be 32 bytes or 64 hex digits, got {value!r}")
    return value


def _metadata_bytes(metadata, where):
    """Deterministic UTF-8 JSON: sorted keys, compact separators, no NaN; only what readers
    accept (`_read_metadata`)."""
    try:
        data = canonical_json(metadata or {}, ascii_only=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise SpreadcodeError(f"{where}: metadata is not JSON-serialisable ({err})") from None
    _read_metadata(data, where)
    return data


def _read_metadata(data, where):
    """The metadata object of UTF-8 JSON bytes, parsed strictly (`fileio.load_json`)."""
    metadata = load_json(data, f"{where}: metadata")
    if not isinstance(metadata, dict):
        raise SpreadcodeError(f"{where}: metadata is not a JSON object")
    return metadata


class SpcWriter:
    """Stream codes into a new .spc file, all-or-nothing.

    ``param`` is the quantizer's: r² (lattice), d (sign) or the blocks ((d_m, r2_m), ...)
    (product: a 1.1 file with the block table). Use as a context manager; ``append`` batches
    of uint8 (b, code_bytes) codes (and, when
    ``with_ids``, int64 (b,) ids). The file is built at a hidden temp path beside ``path``
    (ids go to an anonymous scratch file until the codes are complete); on clean exit the
    count and checksums are filled in and the file is renamed onto ``path``. On an exception
    (Ctrl-C included) nothing is left behind. The same appends give byte-identical files.
    """

    def __init__(self, path, *, kind, d, param, bits, code_bytes, input_dim, input_dtype,
                 catalyzer_sha256=None, metadata=None, with_ids=False):
        self.path = Path(path)
        for name, value in (("d", d), ("param", param), ("bits", bits),
                            ("code_bytes", code_bytes), ("input_dim", input_dim)):
            if name == "param" and kind == "product":
                continue  # the blocks, checked by the quantizer
            if not isinstance(value, numbers.Integral) or not 0 <= value < 2**32:
                raise SpreadcodeError(f"{self.path}: {name} must be an integer in [0, 2^32), "
                                      f"got {value!r}")
        quantizer = _check_code_layout(kind, d, param, bits, code_bytes, self.path)
        if str(input_dtype) not in INPUT_DTYPES:
            raise SpreadcodeError(f"{self.path}: unsupported input dtype {input_dtype!r} "
                                  f"(expected one of {', '.join(INPUT_DTYPES)})")
        if input_dim < 1:
            raise SpreadcodeError(f"{self.path}: input dimension must be positive")
        blocks = quantizer.param if kind == "product" else ()
        self._blocks = b"".join(BLOCK.pack(*pair) for pair in blocks)
        self._fields = dict(kind=kind, d=int(d), param=len(blocks) if blocks else int(param),
                            bits=int(bits),
                            code_bytes=int(code_bytes), input_dim=int(input_dim), input_dtype=str(input_dtype),
                            flags=FLAG_HAS_IDS if with_ids else 0,
                            catalyzer=_catalyzer_bytes(catalyzer_sha256, self.path))
        self._metadata = _metadata_bytes(metadata, self.path)
        self._header_size = HEADER_SIZE + len(self._blocks)
        self._payload_offset = _align(self._header_size + len(self._metadata), PAYLOAD_ALIGN)
        self.count = 0
        self._output = self._file = self._ids_file = None
        self._payload_hash = hashlib.sha256()

    def _header(self, payload_sha256=bytes(32), header_sha256=bytes(32)):
        """The fixed header and, for product codes, the block table: header_size bytes."""
        f = self._fields
        minor = PRODUCT_VERSION_MINOR if self._blocks else VERSION_MINOR
        return HEADER.pack(
            MAGIC, VERSION_MAJOR, minor, self._header_size, KINDS[f["kind"]],
            INPUT_DTYPES[f["input_dtype"]], 0, f["d"], f["param"], f["bits"], f["code_bytes"],
            f["input_dim"], f["flags"], len(self._metadata), self.count, self._payload_offset,
            f["catalyzer"], payload_sha256, header_sha256, bytes(32)) + self._blocks

    def _prefix(self, payload_sha256=bytes(32), header_sha256=bytes(32)):
        """Bytes [0, payload_offset): header, metadata, zero padding."""
        head = self._header(payload_sha256, header_sha256) + self._metadata
        return head + bytes(self._payload_offset - len(head))

    def __enter__(self):
        self._output = atomic_output(self.path)
        self._file = self._output.__enter__()
        try:
            if self._fields["flags"] & FLAG_HAS_IDS:
                self._ids_file = tempfile.TemporaryFile(dir=self.path.parent)
            self._file.write(self._prefix())
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def append(self, codes, ids=None):
        """Add codes uint8 (b, code_bytes) — and ids int64 (b,) iff the file has ids."""
        if self._file is None:
            raise SpreadcodeError(f"{self.path}: SpcWriter.append outside its `with` block")
        codes = np.asarray(codes)
        code_bytes = self._fields["code_bytes"]
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_bytes:
            raise SpreadcodeError(
                f"{self.path}: codes must be uint8 (b, {code_bytes}), "
                f"got {codes.dtype} {codes.shape}")
        if (ids is not None) != (self._ids_file is not None):
            raise SpreadcodeError(
                f"{self.path}: ids must be given with every batch exactly when the writer "
                "was made with with_ids=True")
        if ids is not None:
            ids = np.asarray(ids)
            if not np.can_cast(ids.dtype, "<i8") or ids.shape != (codes.shape[0],):
                raise SpreadcodeError(f"{self.path}: ids must be {codes.shape[0]} int64 values, "
                                      f"got {ids.dtype} {ids.shape}")
            self._ids_file.write(np.ascontiguousarray(ids, dtype="<i8"))
        codes = np.ascontiguousarray(codes)
        self._file.write(codes)
        self._payload_hash.update(codes)
        self.count += codes.shape[0]

    def _finish(self):
        """Append the ids after the codes, then fill in count and checksums."""
        if self._ids_file is not None:
            end = self._payload_offset + self.count * self._fields["code_bytes"]
            padding = bytes(_align(end, IDS_ALIGN) - end)
            self._file.write(padding)
            self._payload_hash.update(padding)
            self._ids_file.seek(0)
            while block := self._ids_file.read(_HASH_CHUNK):
                self._file.write(block)
                self._payload_hash.update(block)
        payload_sha256 = self._payload_hash.digest()
        header_sha256 = hashlib.sha256(self._prefix(payload_sha256)).digest()
        self._file.seek(0)
        self._file.write(self._header(payload_sha256, header_sha256))

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self._finish()
                except BaseException as err:
                    self._output.__exit__(type(err), err, err.__traceback__)
                    raise
                self._output.__exit__(None, None, None)
            else:
                self._output.__exit__(exc_type, exc, tb)
        finally:
            self._file = None
            if self._ids_file is not None:
                self._ids_file.close()
        return False


class SpcFile:
    """An opened .spc file: validated ``header``, ``count``, memory-mapped read-only
    ``codes_bytes`` uint8 (count, code_bytes) and ``ids`` int64 (count,) or None."""

    def __init__(self, path, header):
        self.path = Path(path)
        self.header = header
        self.count = header.count
        self.codes_bytes = _map(self.path, np.uint8, header.payload_offset,
                                (header.count, header.code_bytes))
        self.ids = (_map(self.path, np.dtype("<i8"), header.ids_offset, (header.count,))
                    if header.has_ids else None)

    def __repr__(self):
        h = self.header
        return f"SpcFile({str(self.path)!r}, {h.kind} d={h.d} param={h.param}, count={h.count})"

    @cached_property
    def checksum_ok(self):
        """Whether the payload (codes, padding, ids) matches its SHA-256; computed once."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as fh:
            fh.seek(self.header.payload_offset)
            _hash_file(fh, digest)
        return digest.hexdigest() == self.header.payload_sha256

    def verify(self):
        """Raise SpreadcodeError unless the payload checksum matches."""
        if not self.checksum_ok:
            raise SpreadcodeError(
                f"{self.path}: payload checksum mismatch: the codes or ids are corrupted")


def _hash_file(fh, digest, size=None):
    """Feed the next ``size`` bytes (None: all the rest) of the binary file ``fh`` to
    ``digest``, _HASH_CHUNK at a time."""
    buffer = memoryview(bytearray(_HASH_CHUNK))
    while size is None or size > 0:
        got = fh.readinto(buffer if size is None else buffer[:min(size, _HASH_CHUNK)])
        if not got:
            return
        digest.update(buffer[:got])
        size = None if size is None else size - got


def _map(path, dtype, offset, shape):
    """Read-only memory map of ``shape`` items at ``offset`` (an empty array when size 0)."""
    if math.prod(shape) == 0:
        empty = np.zeros(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def read_header(path):
    """Read and validate the header of a .spc file, before trusting any count in it.

    Checks, in the order of formats/spc.md ("Reading and validation"): magic, major version,
    that the header, metadata and payload offset fit in the file, the header SHA-256, the code
    parameters against the codec, the metadata, and that the file length is exactly what
    count, code size and ids imply. Returns an `SpcHeader`; SpreadcodeError naming the file
    and the first check that failed.
    """
    path = Path(path)
    if not path.is_file():
        raise SpreadcodeError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        start = fh.read(HEADER_SIZE)
        if not start:
            raise SpreadcodeError(f"{path}: empty file, not a .spc file")
        if start[:8] != MAGIC and not (len(start) < 8 and MAGIC.startswith(start)):
            raise SpreadcodeError(f"{path}: not a .spc file (bad magic bytes)")
        if len(start) < 12:
            raise SpreadcodeError(f"{path}: truncated: {size} bytes, no version field")
        major, minor = struct.unpack_from("<HH", start, 8)
        if major != VERSION_MAJOR:
            raise SpreadcodeError(
                f"{path}: file uses .spc format version {major}.{minor}; this spreadcode "
                f"reads up to {VERSION_MAJOR}.x" + (" — upgrade spreadcode" if major > 1 else ""))
        if len(start) < HEADER_SIZE:
            raise SpreadcodeError(
                f"{path}: truncated: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
        (_, _, _, header_size, kind, input_dtype, _, d, param, bits, code_bytes, input_dim,
         flags, metadata_size, count, payload_offset, catalyzer, payload_sha256,
         header_sha256, _) = HEADER.unpack(start)
        if not (HEADER_SIZE <= header_size
                and header_size + metadata_size <= payload_offset <= size
                and payload_offset % PAYLOAD_ALIGN == 0):
            raise SpreadcodeError(
                f"{path}: corrupted or truncated header: header {header_size} bytes, metadata "
                f"{metadata_size} bytes, payload at offset {payload_offset}, file {size} bytes")
        digest = hashlib.sha256(start[:HEADER_SHA256_SLICE.start] + bytes(32)
                                + start[HEADER_SHA256_SLICE.stop:])
        _hash_file(fh, digest, payload_offset - HEADER_SIZE)
        if digest.digest() != header_sha256:
            raise SpreadcodeError(f"{path}: header checksum mismatch: the header is corrupted")
        kind_name = {v: k for k, v in KINDS.items()}.get(kind)
        if kind_name is None:
            raise SpreadcodeError(
                f"{path}: unknown code kind {kind} (written by a newer spreadcode?)")
        if kind_name == "product":
            param = _read_blocks(fh, param, header_size, path)
        _check_code_layout(kind_name, d, param, bits, code_bytes, path)
        fh.seek(header_size)
        metadata = _read_metadata(fh.read(metadata_size), path)
    header = SpcHeader(
        version_major=major, version_minor=minor, kind=kind_name, d=d, param=param, bits=bits,
        code_bytes=code_bytes, count=count, input_dim=input_dim,
        input_dtype={v: k for k, v in INPUT_DTYPES.items()}.get(input_dtype,
                                                                f"unknown ({input_dtype})"),
        catalyzer_sha256=catalyzer.hex() if any(catalyzer) else None, flags=flags,
        metadata=metadata, header_size=header_size, payload_offset=payload_offset,
        payload_sha256=payload_sha256.hex(), header_sha256=header_sha256.hex())
    if size != header.file_size:
        ids = " plus int64 ids" if header.has_ids else ""
        problem = "truncated" if size < header.file_size else "unexpected trailing bytes"
        raise SpreadcodeError(
            f"{path}: {problem}: header says {count} codes of {code_bytes} bytes{ids} "
            f"({header.file_size - payload_offset} bytes of payload), file has "
            f"{size - payload_offset} bytes of payload")
    return header


def _read_blocks(fh, count, header_size, path):
    """The block table ((d_m, r2_m), ...) of a product header whose param field says
    ``count`` blocks, after checking 1 <= count <= MAX_BLOCKS and header_size = 192 + 8 count
    (the header checks before guarantee the table lies inside the file)."""
    if not 1 <= count <= MAX_BLOCKS:
        raise SpreadcodeError(f"{path}: product code of {count} blocks (param): expected 1 to "
                              f"{MAX_BLOCKS}")
    if header_size != HEADER_SIZE + BLOCK.size * count:
        raise SpreadcodeError(
            f"{path}: product code of {count} blocks needs header_size = {HEADER_SIZE} + "
            f"{BLOCK.size} × {count} = {HEADER_SIZE + BLOCK.size * count}, got {header_size}")
    fh.seek(HEADER_SIZE)
    table = fh.read(BLOCK.size * count)
    return tuple(BLOCK.unpack_from(table, BLOCK.size * m) for m in range(count))


def open_spc(path, verify=True):
    """Open a .spc file: header validated by `read_header`, payload memory-mapped.

    ``verify`` also checks the payload SHA-256 (reads the whole file once); pass False for
    quick inspection and call ``SpcFile.verify`` / ``checksum_ok`` later if needed.
    """
    spc = SpcFile(path, read_header(path))
    if verify:
        spc.verify()
    return spc


def describe(spc):
    """Human-oriented summary of an opened `SpcFile` for ``spreadcode info``: an ordered
    dict of field name -> str or int. Computes the payload checksum if not done yet."""
    h = spc.header
    input_bytes = h.input_dim * np.dtype(h.input_dtype).itemsize \
        if h.input_dtype in INPUT_DTYPES else None
    return {
        "file": str(spc.path),
        "format": f".spc {h.version_major}.{h.version_minor}",
        "code": describe_code(h.kind, h.d, h.param),
        "bits per code": h.bits,
        "bytes per code": h.code_bytes,
        "vectors": h.count,
        "ids": "int64" if h.has_ids else "none (position = id)",
        "input": f"{h.input_dim} x {h.input_dtype}",
        "compression": (f"{input_bytes / h.code_bytes:.1f}x" if input_bytes else "unknown"),
        "catalyzer sha256": h.catalyzer_sha256 or "none",
        "metadata": json.dumps(h.metadata, sort_keys=True, ensure_ascii=False),
        "file size": h.file_size,
        "payload sha256": h.payload_sha256,
        "checksum": "ok" if spc.checksum_ok else "MISMATCH (file corrupted)",
    }
