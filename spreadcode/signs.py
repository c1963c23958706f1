"""Sign codes: one bit per dimension, the binary quantizer of *Spreading vectors*.

Bit layout (normative; the .spc format points here): a vector x of dimension d becomes
ceil(d / 8) bytes; bit i is bit (i % 8) of byte i // 8, least significant bit first, and is 1
when x_i > 0 (0 for x_i <= 0). Padding bits of the last byte are 0 and are checked on
input. The bit pattern stands for the vector s in {-1, +1}^d (bit 1 -> +1), i.e. the unit
point s / sqrt(d). Limit: 1 <= d <= MAX_DIM = 2^20 (anything else is refused with
SpreadcodeError).

Distances:
* Hamming: the number of differing bits, returned as float32 by the searches (exact).
* asymmetric (float query q against a code): the squared distance from a unit q to
  s / sqrt(d), 2 - 2 <q, s> / sqrt(d), computed in float32 as 2 - <q, s> * float32(2 / sqrt(d)).
"""
import math

import numpy as np

from spreadcode import _codec
from spreadcode.errors import SpreadcodeError

MAX_DIM = 1 << 20


def check_dim(d):
    """d as an int in 1..MAX_DIM (the dimension of sign codes); SpreadcodeError otherwise."""
    d = _codec.check_int(d, "d", 1)
    if d > MAX_DIM:
        raise SpreadcodeError(f"sign code dimension d={d} is above the limit of {MAX_DIM}")
    return d


def code_bytes(d):
    """Bytes per sign code of a d-dimensional vector: ceil(d / 8)."""
    return (check_dim(d) + 7) // 8


def pack(x, threads=None):
    """Sign codes of the rows of x (float32 (n, d), finite): uint8 (n, ceil(d / 8)).
    Cost: O(n * d)."""
    x = _codec.check_vectors(x, "x")
    if x.shape[1] == 0:
        raise SpreadcodeError("x must have at least one column")
    out = np.empty((x.shape[0], code_bytes(x.shape[1])), dtype=np.uint8)
    _codec.sign_pack(x, out, _codec.check_threads(threads))
    return out


def unpack(codes, d, threads=None):
    """The +-1 vectors s of sign codes (uint8 (n, ceil(d / 8))): float32 (n, d). Cost: O(n * d)."""
    d = check_dim(d)
    codes = _codec.check_sign_codes(codes, d, "codes")
    out = np.empty((codes.shape[0], d), dtype=np.float32)
    _codec.sign_unpack(codes, out, _codec.check_threads(threads))
    return out


def hamming(a, b, threads=None):
    """Row-wise Hamming distances between sign codes a and b: int32 (n,).

    a and b are uint8 (n, nbytes) with the same shape, or one of them has a single row
    that is compared with every row of the other. Cost: O(n * nbytes) popcounts."""
    for name, c in (("a", a), ("b", b)):
        if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 2:
            raise SpreadcodeError(f"{name} must be a uint8 array of shape (n, nbytes), got {_codec.describe(c)}")
        if not c.flags.c_contiguous:
            raise SpreadcodeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if a.shape[1] != b.shape[1]:
        raise SpreadcodeError(f"a and b must have the same bytes per code, got {a.shape} and {b.shape}")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise SpreadcodeError(f"a and b must have the same number of rows (or one row), got {a.shape} and {b.shape}")
    n = 0 if 0 in (a.shape[0], b.shape[0]) else max(a.shape[0], b.shape[0])
    out = np.empty(n, dtype=np.int32)
    _codec.sign_hamming(a, b, out, _codec.check_threads(threads))
    return out


def _hamming_scan(db, q_codes):
    """A prepared Hamming _codec.Scan; db and q_codes must share the byte width."""
    if not isinstance(db, np.ndarray) or db.ndim != 2:
        raise SpreadcodeError(f"db must be a uint8 array of shape (n, nbytes), got {_codec.describe(db)}")
    d = 8 * db.shape[1]
    db = _codec.check_sign_codes(db, d, "db")
    q_codes = _codec.check_sign_codes(q_codes, d, "q_codes")
    return _codec.sign_scan(db, d, q_codes, np.float32(1.0))


def _asymmetric_scan(db, d, queries):
    """A prepared asymmetric _codec.Scan of sign codes against float32 queries."""
    d = check_dim(d)
    db = _codec.check_sign_codes(db, d, "db")
    queries = _codec.check_vectors(queries, "queries", d)
    return _codec.sign_scan(db, d, queries, np.float32(2.0 / math.sqrt(d)))


def hamming_search(db, q_codes, k, threads=None):
    """The k codes of db (uint8 (n, nbytes)) nearest in Hamming distance to each query code
    (uint8 (nq, nbytes)): (distances float32 (nq, k) = bit counts, ids int64 (nq, k)),
    sorted by (distance, id); id -1 / distance +inf pad rows when n < k.
    Cost: O(n * nq * nbytes) popcounts on `threads` cores."""
    k = _codec.check_int(k, "k", 1)
    return _hamming_scan(db, q_codes).topk(k, _codec.check_threads(threads))


def hamming_range_search(db, q_codes, radius, threads=None):
    """Every code of db within Hamming distance radius of each query code, faiss-style CSR:
    (lims int64 (nq + 1,), ids int64, distances float32), each query sorted by (distance, id)."""
    radius = _codec.check_radius(radius)
    return _hamming_scan(db, q_codes).range(radius, _codec.check_threads(threads))


def asymmetric_search(db, d, queries, k, threads=None):
    """The k codes of db (uint8 (n, ceil(d / 8))) nearest to each float32 query (nq, d)
    under the asymmetric distance 2 - 2 <q, s> / sqrt(d): (distances float32 (nq, k),
    ids int64 (nq, k)), sorted by (distance, id), padded with -1 / +inf when n < k.
    Codes are unpacked block by block once per query batch. Cost: O(n * nq * d)."""
    k = _codec.check_int(k, "k", 1)
    return _asymmetric_scan(db, d, queries).topk(k, _codec.check_threads(threads))


def asymmetric_range_search(db, d, queries, radius, threads=None):
    """Every code of db with asymmetric distance <= radius to each query, faiss-style CSR:
    (lims int64 (nq + 1,), ids int64, distances float32), each query sorted by (distance, id)."""
    radius = _codec.check_radius(radius)
    return _asymmetric_scan(db, d, queries).range(radius, _codec.check_threads(threads))
