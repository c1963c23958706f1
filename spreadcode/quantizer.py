"""Quantizer objects: the one place that dispatches on the code kind.

A quantizer turns catalyzed float32 vectors (n, d) into codes and back, searches codes with
float queries, and converts codes to and from the raw bytes the .spc container stores. Two
kinds share the interface:

* ``LatticeQuantizer(d, r2)``: kind "lattice", param = r2; codes are uint64 (n,) for
  codes of at most 64 bits, else (n, words) (spec: ``spreadcode.lattice``);
  reconstruction z / r.
* ``SignQuantizer(d)``: kind "sign", param = d (one bit per dimension); codes are uint8
  (n, ceil(d / 8)) (spec: ``spreadcode.signs``); reconstruction s / sqrt(d). Its search
  is asymmetric (float query against +-1 codes) unless ``hamming=True``, which binarises
  the queries and ranks by Hamming distance.

Search distances are squared L2 between a unit query and the unit reconstruction
(2 - 2 <q, x_hat>), or bit counts for Hamming; results are sorted by (distance, id).
"""
import math
from dataclasses import dataclass

import numpy as np

from spreadcode import _codec, lattice, signs
from spreadcode.errors import SpreadcodeError


class LatticeQuantizer:
    """Spherical lattice S(d, r2) quantizer (nearest point, exact code bijection)."""

    kind = "lattice"
    has_hamming = False

    def __init__(self, d, r2):
        self.d, self.param, self.words = lattice.check_setting(d, r2)
        self.bits = lattice.bits(self.d, self.param)
        self.code_bytes = 8 * self.words
        self.code_dtype = np.dtype(np.uint64)
        self.code_shape = () if self.words == 1 else (self.words,)

    def __repr__(self):
        return f"LatticeQuantizer(d={self.d}, r2={self.param})"

    def quantize(self, x, threads=None):
        """Codes of the nearest lattice points of x's rows (float32 (n, d), any norm)."""
        return lattice.quantize(_codec.check_vectors(x, "x", self.d), self.param, threads)

    def reconstruct(self, codes, threads=None):
        """Unit-norm float32 (n, d) rows z / r of the codes."""
        z = lattice.decode(codes, self.d, self.param, threads)
        return z.astype(np.float32) * np.float32(1.0 / math.sqrt(self.param))

    def search(self, codes, queries, k, threads=None):
        """k nearest codes per unit query (float32 (nq, d)): (float32 (nq, k), int64 (nq, k))."""
        return lattice.search(codes, self.d, self.param, queries, k, threads)

    def range_search(self, codes, queries, radius, threads=None):
        """Codes with distance <= radius, CSR (lims, ids, distances)."""
        return lattice.range_search(codes, self.d, self.param, queries, radius, threads)

    def codes_to_bytes(self, codes):
        """uint8 (n, code_bytes): each code as one little-endian integer of code_bytes bytes."""
        view = _codec.check_lattice_codes(codes, self.words, "codes")
        return view.astype("<u8", copy=False).view(np.uint8).reshape(view.shape[0], self.code_bytes)

    def codes_from_bytes(self, buf):
        """Codes from uint8 (n, code_bytes) as written by codes_to_bytes, validated; a view
        of buf (no copy) when buf is C-contiguous."""
        buf = _bytes_matrix(buf, self.code_bytes)
        words = np.ascontiguousarray(buf).view("<u8").astype(np.uint64, copy=False)
        codes = words.reshape((buf.shape[0],) + self.code_shape)
        lattice.check_codes(codes, self.d, self.param)
        return codes


class SignQuantizer:
    """Sign-bit quantizer: one bit per dimension, x_i > 0 -> 1."""

    kind = "sign"
    has_hamming = True  # search(..., hamming=True)

    def __init__(self, d):
        self.d = signs.check_dim(d)
        self.param = self.d
        self.bits = self.d
        self.code_bytes = signs.code_bytes(self.d)
        self.code_dtype = np.dtype(np.uint8)
        self.code_shape = (self.code_bytes,)

    def __repr__(self):
        return f"SignQuantizer(d={self.d})"

    def quantize(self, x, threads=None):
        """Sign codes of x's rows (float32 (n, d)): uint8 (n, code_bytes)."""
        return signs.pack(_codec.check_vectors(x, "x", self.d), threads)

    def reconstruct(self, codes, threads=None):
        """Unit-norm float32 (n, d) rows s / sqrt(d)."""
        return signs.unpack(codes, self.d, threads) * np.float32(1.0 / math.sqrt(self.d))

    def search(self, codes, queries, k, hamming=False, threads=None):
        """k nearest codes per query (float32 (nq, d)): asymmetric distance by default, or
        Hamming distance to the query's own sign code when hamming=True."""
        if hamming:
            return signs.hamming_search(codes, self.quantize(queries, threads), k, threads)
        return signs.asymmetric_search(codes, self.d, queries, k, threads)

    def range_search(self, codes, queries, radius, hamming=False, threads=None):
        """Codes within radius of each query, CSR (lims, ids, distances); see search()."""
        if hamming:
            return signs.hamming_range_search(codes, self.quantize(queries, threads), radius, threads)
        return signs.asymmetric_range_search(codes, self.d, queries, radius, threads)

    def codes_to_bytes(self, codes):
        """The codes themselves: uint8 (n, code_bytes)."""
        return _codec.check_sign_codes(codes, self.d, "codes")

    def codes_from_bytes(self, buf):
        """Sign codes from uint8 (n, code_bytes) (validated: padding bits must be 0)."""
        return _codec.check_sign_codes(np.ascontiguousarray(_bytes_matrix(buf, self.code_bytes)),
                                       self.d, "codes")


def _bytes_matrix(buf, code_bytes):
    """buf if it is a uint8 (n, code_bytes) array."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 2 \
            or buf.shape[1] != code_bytes:
        raise SpreadcodeError(
            f"code bytes must be a uint8 array of shape (n, {code_bytes}), got {_codec.describe(buf)}")
    return buf


def metadata_error(where, field, why):
    """The SpreadcodeError of a bad metadata field: "<where> (bad '<field>': <why>)"."""
    return SpreadcodeError(f"{where} (bad '{field}': {why})")


@dataclass(frozen=True)
class QuantizerSpec:
    """The code a model file names: ``kind`` ("lattice" or "sign"), ``d`` and ``param`` (r2 for
    the lattice, d for signs), as in the JSON object {"kind", "d", "param"}."""

    kind: str
    d: int
    param: int

    @classmethod
    def from_json(cls, value, where, field="quantizer"):
        """The spec of a metadata object; SpreadcodeError "<where> (bad '<field>...': why)"
        naming the bad field, also when the codec refuses the code."""
        if not isinstance(value, dict):
            raise metadata_error(where, field, "not an object")
        if set(value) != {"kind", "d", "param"}:
            raise metadata_error(where, field, f"keys {sorted(value)}, expected d, kind, param")
        try:
            quantizer_from_spec(**value)
        except SpreadcodeError as err:
            raise metadata_error(where, field, err) from None
        return cls(**value)

    def to_json(self):
        """The JSON object {"kind", "d", "param"}."""
        return {"kind": self.kind, "d": self.d, "param": self.param}

    def quantizer(self):
        """The quantizer object of this code."""
        return quantizer_from_spec(self.kind, self.d, self.param)


def quantizer_spec(kind, d, r2=None):
    """The (kind, d, param) triple of model files and .spc headers, as a dict: the lattice's
    param is r2, the sign quantizer's is d."""
    return {"kind": kind, "d": d, "param": r2 if kind == "lattice" else d}


def describe_code(kind, d, param):
    """The code of a header in words, e.g. ``lattice S(24, r²=79)`` or ``sign bits, d=64``."""
    return f"lattice S({d}, r²={param})" if kind == "lattice" else f"sign bits, d={d}"


def describe_quantizer(quantizer) -> str:
    """Human-readable name of a quantizer, e.g. ``lattice d=24 r2=79`` or ``sign d=64``."""
    if quantizer.kind == "lattice":
        return f"lattice d={quantizer.d} r2={quantizer.param}"
    return f"sign d={quantizer.d}"


def quantizer_from_spec(kind, d, param):
    """The quantizer named by a (kind, d, param) triple as stored in .spc headers:
    ("lattice", d, r2) or ("sign", d, d)."""
    if kind == "lattice":
        return LatticeQuantizer(d, param)
    if kind == "sign":
        q = SignQuantizer(d)
        if _codec.check_int(param, "param", 1) != q.d:
            raise SpreadcodeError(f"sign quantizer param must equal d={q.d} (bits), got {param}")
        return q
    raise SpreadcodeError(f"unknown quantizer kind {kind!r} (expected 'lattice' or 'sign')")
