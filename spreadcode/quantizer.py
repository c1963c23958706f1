"""Quantizer objects: the one place that dispatches on the code kind.

A quantizer turns catalyzed float32 vectors (n, d) into codes and back, searches codes with
float queries, and converts codes to and from the raw bytes the .spc container stores. Three
kinds share the interface:

* ``LatticeQuantizer(d, r2)``: kind "lattice", param = r2; codes are uint64 (n,) for
  codes of at most 64 bits, else (n, words) (spec: ``spreadcode.lattice``);
  reconstruction z / r.
* ``SignQuantizer(d)``: kind "sign", param = d (one bit per dimension); codes are uint8
  (n, ceil(d / 8)) (spec: ``spreadcode.signs``); reconstruction s / sqrt(d). Its search
  is asymmetric (float query against +-1 codes) unless ``hamming=True``, which binarises
  the queries and ranks by Hamming distance.
* ``ProductQuantizer(blocks)``: kind "product", param = the blocks ((d_1, r2_1), ...,
  (d_M, r2_M)), d = sum of d_m: coordinates d_1 + ... + d_(m-1) onward form block m, each
  quantized by its own ``LatticeQuantizer(d_m, r2_m)`` (codes of at most 64 bits). A code is
  uint8 (n, code_bytes): block m's rank as a little-endian integer of ceil(bits_m / 8)
  bytes, block 0 first; reconstruction z_m / (r_m sqrt(M)) per block (unit rows).

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
        # a point z's unit point is z · unit_scale (float32, as `reconstruct` computes it)
        self.unit_scale = np.float32(1.0 / math.sqrt(self.param))

    def __repr__(self):
        return f"LatticeQuantizer(d={self.d}, r2={self.param})"

    def quantize(self, x, threads=None):
        """Codes of the nearest lattice points of x's rows (float32 (n, d), any norm)."""
        return lattice.quantize(_codec.check_vectors(x, "x", self.d), self.param, threads)

    def reconstruct(self, codes, threads=None):
        """Unit-norm float32 (n, d) rows z / r of the codes."""
        z = lattice.decode(codes, self.d, self.param, threads)
        return z.astype(np.float32) * self.unit_scale

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


MAX_BLOCKS = 64
MAX_BLOCK_BITS = 64
_SCAN_CODES = 16384   # codes decoded at a time by ProductQuantizer's searches
_SCAN_QUERIES = 128   # queries scored at a time against them: a 16 MiB distance matrix


class ProductQuantizer:
    """Product of spherical lattices S(d_1, r2_1) x ... x S(d_M, r2_M): each block of
    coordinates is quantized by its own lattice, codes are the blocks' ranks side by side."""

    kind = "product"
    has_hamming = False

    def __init__(self, blocks):
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__len__") \
                or not 1 <= len(blocks) <= MAX_BLOCKS:
            raise SpreadcodeError(f"product blocks must be a list of 1 to {MAX_BLOCKS} "
                                  f"(d, r2) pairs, got {blocks!r}")
        self.blocks = tuple(_block(m, pair) for m, pair in enumerate(blocks))
        self.param = tuple((b.d, b.param) for b in self.blocks)
        self.d = sum(b.d for b in self.blocks)
        self.bits = sum(b.bits for b in self.blocks)
        self.block_bytes = tuple(-(-b.bits // 8) for b in self.blocks)
        self.code_bytes = sum(self.block_bytes)
        self.code_dtype = np.dtype(np.uint8)
        self.code_shape = (self.code_bytes,)
        self._starts = np.cumsum((0,) + tuple(b.d for b in self.blocks)).tolist()
        self._byte_starts = np.cumsum((0,) + self.block_bytes).tolist()
        scale = 1.0 / math.sqrt(len(self.blocks))
        self._scales = tuple(np.float32(scale / math.sqrt(b.param)) for b in self.blocks)

    def __repr__(self):
        return f"ProductQuantizer({[list(pair) for pair in self.param]})"

    def block_codes(self, codes, name="codes"):
        """The blocks' ranks of codes uint8 (n, code_bytes): M uint64 (n,) arrays, validated
        (each below its sphere's count; the error names the block and row)."""
        codes = _bytes_matrix(codes, self.code_bytes, name)
        ranks = []
        for m, block in enumerate(self.blocks):
            padded = np.zeros((codes.shape[0], 8), dtype=np.uint8)
            padded[:, :self.block_bytes[m]] = codes[:, self._byte_starts[m]:self._byte_starts[m + 1]]
            rank = padded.view("<u8").reshape(codes.shape[0]).astype(np.uint64, copy=False)
            lattice.check_codes(rank, block.d, block.param, f"{name} block {m}")
            ranks.append(rank)
        return ranks

    def join_block_codes(self, ranks, name="ranks"):
        """Codes uint8 (n, code_bytes) of the blocks' ranks: M uint64 (n,) arrays, validated."""
        if not isinstance(ranks, (list, tuple)) or len(ranks) != len(self.blocks):
            raise SpreadcodeError(f"{name} must be a list of {len(self.blocks)} uint64 (n,) "
                                  f"arrays, one per block, got {_codec.describe(ranks)}")
        n = ranks[0].shape[0] if isinstance(ranks[0], np.ndarray) and ranks[0].ndim else 0
        codes = np.empty((n, self.code_bytes), dtype=np.uint8)
        for m, (block, rank) in enumerate(zip(self.blocks, ranks)):
            view = lattice.check_codes(rank, block.d, block.param, f"{name}[{m}]")
            if view.shape[0] != n:
                raise SpreadcodeError(f"{name}[{m}] has {view.shape[0]} rows, {name}[0] has {n}")
            codes[:, self._byte_starts[m]:self._byte_starts[m + 1]] = \
                view.astype("<u8", copy=False).view(np.uint8)[:, :self.block_bytes[m]]
        return codes

    def block_points(self, codes, threads=None):
        """The blocks' lattice points of codes uint8 (n, code_bytes): M int8 (n, d_m) arrays."""
        return [lattice.decode(rank, block.d, block.param, threads)
                for block, rank in zip(self.blocks, self.block_codes(codes))]

    def quantize(self, x, threads=None):
        """Codes uint8 (n, code_bytes) of x's rows (float32 (n, d), any norm): block m is the
        nearest point of S(d_m, r2_m) to x's block m, which does not depend on that block's
        norm (an all-zero block gets code 0, the first point of atom 0)."""
        x = _codec.check_vectors(x, "x", self.d)
        return self.join_block_codes([
            block.quantize(np.ascontiguousarray(x[:, self._starts[m]:self._starts[m + 1]]), threads)
            for m, block in enumerate(self.blocks)])

    def reconstruct(self, codes, threads=None):
        """Unit-norm float32 (n, d) rows: block m is z_m / (r_m sqrt(M))."""
        points = self.block_points(codes, threads)
        out = np.empty((len(points[0]), self.d), dtype=np.float32)
        for m, z in enumerate(points):
            np.multiply(z, self._scales[m], out=out[:, self._starts[m]:self._starts[m + 1]])
        return out

    def _scores(self, codes, queries, threads):
        """Yield (first code, distances float32 (nq_b, n_c), first query) for chunks of codes
        (decoded once each) against batches of queries: 2 - 2 <q, x_hat>, the dot product of
        the float32 values taken in float64 (so a pair's distance does not depend on the
        chunking or BLAS kernel: equal codes tie exactly) and rounded to float32."""
        queries = _codec.check_vectors(queries, "queries", self.d)
        codes = _bytes_matrix(codes, self.code_bytes, "codes")
        for start in range(0, codes.shape[0], _SCAN_CODES):
            chunk = np.ascontiguousarray(codes[start:start + _SCAN_CODES])
            rec = self.reconstruct(chunk, threads).astype(np.float64).T
            for q0 in range(0, queries.shape[0], _SCAN_QUERIES):
                dist = queries[q0:q0 + _SCAN_QUERIES].astype(np.float64) @ rec
                dist *= -2.0
                dist += 2.0
                yield start, dist.astype(np.float32), q0

    def search(self, codes, queries, k, threads=None):
        """The k codes (uint8 (n, code_bytes)) nearest to each unit query (float32 (nq, d)):
        (distances float32 (nq, k), ids int64 (nq, k)), distance 2 - 2 <q, x_hat>; rows sorted
        by (distance, id); id -1 and distance +inf pad rows when len(codes) < k. Memory:
        O(nq * k) plus a fixed chunk of decoded codes and distances."""
        k = _codec.check_int(k, "k", 1)
        nq = _codec.check_vectors(queries, "queries", self.d).shape[0]
        best_d = np.full((nq, k), np.inf, dtype=np.float32)
        best_i = np.full((nq, k), -1, dtype=np.int64)
        for start, dist, q0 in self._scores(codes, queries, threads):
            rows = slice(q0, q0 + dist.shape[0])
            cand_d, cand_i = _chunk_topk(dist, k)
            merged_d = np.concatenate([best_d[rows], cand_d], axis=1)
            merged_i = np.concatenate([best_i[rows], cand_i + start], axis=1)
            order = np.lexsort((merged_i, merged_d), axis=1)[:, :k]
            best_d[rows] = np.take_along_axis(merged_d, order, axis=1)
            best_i[rows] = np.take_along_axis(merged_i, order, axis=1)
        return best_d, best_i

    def range_search(self, codes, queries, radius, threads=None):
        """Codes with distance <= radius (distance as in search()), faiss-style CSR:
        (lims int64 (nq + 1,), ids int64 (lims[-1],), distances float32 (lims[-1],)), each
        query's results sorted by (distance, id)."""
        radius = _codec.check_radius(radius)
        nq = _codec.check_vectors(queries, "queries", self.d).shape[0]
        found_q, found_i, found_d = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], \
            [np.zeros(0, np.float32)]
        for start, dist, q0 in self._scores(codes, queries, threads):
            q, i = np.nonzero(dist <= radius)
            found_q.append(q + q0)
            found_i.append(i + np.int64(start))
            found_d.append(dist[q, i])
        q, ids, dist = (np.concatenate(found) for found in (found_q, found_i, found_d))
        order = np.lexsort((ids, dist, q))
        lims = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum(np.bincount(q, minlength=nq), out=lims[1:])
        return lims, ids[order], dist[order]

    def codes_to_bytes(self, codes):
        """The codes themselves, validated: uint8 (n, code_bytes)."""
        self.block_codes(codes)
        return codes

    def codes_from_bytes(self, buf):
        """Codes from uint8 (n, code_bytes), validated (every block's rank below its sphere's
        count); buf itself when it is C-contiguous."""
        buf = np.ascontiguousarray(_bytes_matrix(buf, self.code_bytes))
        self.block_codes(buf)
        return buf


def _block(m, pair):
    """The LatticeQuantizer of product block ``m`` given as a (d, r2) pair, at most 64 bits."""
    if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
        raise SpreadcodeError(f"product block {m} must be a (d, r2) pair, got {pair!r}")
    try:
        block = LatticeQuantizer(*pair)
    except SpreadcodeError as err:
        raise SpreadcodeError(f"product block {m}: {err}") from None
    if block.bits > MAX_BLOCK_BITS:
        raise SpreadcodeError(f"product block {m}: S(d={block.d}, r2={block.param}) needs "
                              f"{block.bits}-bit codes, above the {MAX_BLOCK_BITS}-bit limit "
                              "of a product block")
    return block


def _chunk_topk(dist, k):
    """The min(k, n) smallest of each row of dist float32 (nq, n), ties to the lower column:
    (float32 (nq, k'), int64 (nq, k') columns), sorted by (distance, column)."""
    nq, n = dist.shape
    kk = min(k, n)
    cols = np.arange(n, dtype=np.int64)[None, :].repeat(nq, axis=0) if kk == n \
        else np.argpartition(dist, kk - 1, axis=1)[:, :kk]
    if kk < n:
        kth = np.take_along_axis(dist, cols, axis=1).max(axis=1, keepdims=True)
        tied = np.flatnonzero((dist <= kth).sum(axis=1) > kk)
        if len(tied):  # the k-th distance also occurs outside the selection: lowest columns
            cols[tied] = np.lexsort((np.arange(n)[None, :].repeat(len(tied), axis=0),
                                     dist[tied]), axis=1)[:, :kk]
    picked = np.take_along_axis(dist, cols, axis=1)
    order = np.lexsort((cols, picked), axis=1)
    return np.take_along_axis(picked, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _bytes_matrix(buf, code_bytes, name="code bytes"):
    """buf if it is a uint8 (n, code_bytes) array; SpreadcodeError naming ``name``."""
    if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 2 \
            or buf.shape[1] != code_bytes:
        raise SpreadcodeError(
            f"{name} must be a uint8 array of shape (n, {code_bytes}), got {_codec.describe(buf)}")
    return buf


def metadata_error(where, field, why):
    """The SpreadcodeError of a bad metadata field: "<where> (bad '<field>': <why>)"."""
    return SpreadcodeError(f"{where} (bad '{field}': {why})")


@dataclass(frozen=True)
class QuantizerSpec:
    """The code a model file names: ``kind`` ("lattice", "sign" or "product"), ``d`` and
    ``param`` (r2 for the lattice, d for signs, the blocks ((d_1, r2_1), ...) as a tuple of
    pairs for a product), as in the JSON object {"kind", "d", "param"}."""

    kind: str
    d: int
    param: int | tuple

    @classmethod
    def from_json(cls, value, where, field="quantizer"):
        """The spec of a metadata object; SpreadcodeError "<where> (bad '<field>...': why)"
        naming the bad field, also when the codec refuses the code."""
        if not isinstance(value, dict):
            raise metadata_error(where, field, "not an object")
        if set(value) != {"kind", "d", "param"}:
            raise metadata_error(where, field, f"keys {sorted(value)}, expected d, kind, param")
        try:
            quantizer = quantizer_from_spec(**value)
        except SpreadcodeError as err:
            raise metadata_error(where, field, err) from None
        return cls(quantizer.kind, quantizer.d, quantizer.param)

    def to_json(self):
        """The JSON object {"kind", "d", "param"} (a product's blocks as lists)."""
        return quantizer_spec(self.kind, self.d, self.param)

    def quantizer(self):
        """The quantizer object of this code."""
        return quantizer_from_spec(self.kind, self.d, self.param)


def quantizer_spec(kind, d, param=None):
    """The (kind, d, param) triple of model files and .spc headers, as a JSON dict: the
    lattice's param is r2 (given), the sign quantizer's is d, a product's is its blocks (given,
    written as a list of [d, r2] lists)."""
    if kind == "product":
        param = [[int(d_m), int(r2_m)] for d_m, r2_m in param]
    return {"kind": kind, "d": d, "param": d if kind == "sign" else param}


def _blocks_text(blocks, sphere):
    """The blocks ((d, r2), ...) as runs of equal blocks, e.g. "4×S(12,6)+S(8,16)" for
    ``sphere`` = "S({},{})"."""
    runs = []
    for pair in blocks:
        if runs and runs[-1][1] == tuple(pair):
            runs[-1][0] += 1
        else:
            runs.append([1, tuple(pair)])
    return "+".join(("" if n == 1 else f"{n}×") + sphere.format(*pair) for n, pair in runs)


def describe_code(kind, d, param):
    """The code of a header in words, e.g. ``lattice S(24, r²=79)``, ``sign bits, d=64`` or
    ``product of 4 lattices 4×S(12, r²=6)``."""
    if kind == "product":
        return f"product of {len(param)} lattices {_blocks_text(param, 'S({}, r²={})')}"
    return f"lattice S({d}, r²={param})" if kind == "lattice" else f"sign bits, d={d}"


def describe_quantizer(quantizer) -> str:
    """Human-readable name of a quantizer, e.g. ``lattice d=24 r2=79``, ``sign d=64`` or
    ``product d=48 4×S(12,6)``."""
    if quantizer.kind == "lattice":
        return f"lattice d={quantizer.d} r2={quantizer.param}"
    if quantizer.kind == "product":
        return f"product d={quantizer.d} {_blocks_text(quantizer.param, 'S({},{})')}"
    return f"sign d={quantizer.d}"


def quantizer_from_spec(kind, d, param):
    """The quantizer named by a (kind, d, param) triple as stored in model files and .spc
    headers: ("lattice", d, r2), ("sign", d, d) or ("product", d, [[d_1, r2_1], ...]) with
    d = d_1 + ... + d_M."""
    if kind == "lattice":
        return LatticeQuantizer(d, param)
    if kind == "sign":
        q = SignQuantizer(d)
        if _codec.check_int(param, "param", 1) != q.d:
            raise SpreadcodeError(f"sign quantizer param must equal d={q.d} (bits), got {param}")
        return q
    if kind == "product":
        q = ProductQuantizer(param)
        if _codec.check_int(d, "d", 1) != q.d:
            raise SpreadcodeError(f"product quantizer d must be the sum of its blocks' "
                                  f"dimensions, {q.d}, got {d}")
        return q
    raise SpreadcodeError(f"unknown quantizer kind {kind!r} (expected 'lattice', 'sign' or "
                          "'product')")
