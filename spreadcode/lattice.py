"""Spherical lattice codes: S(d, r2) = {z in Z^d : z_1^2 + ... + z_d^2 = r2}.

The quantizer of *Spreading vectors* (Sablayrolles et al., ICLR 2019, Sec. 4 and App. B):
a catalyzed unit vector y is replaced by the lattice point z in S(d, r2) that maximises
<y, z>, and z is stored as its index in a fixed bijection S(d, r2) <-> [0, count(d, r2)).
Nothing is trained; (d, r2) is the whole codebook. This docstring is the normative
specification of that bijection (the .spc file format points here).

Code of a lattice point
-----------------------
Notation: C(n, t) is the binomial coefficient, 0 when t > n.

1. **Atoms.** The atom of z is |z| sorted in non-increasing order. The atoms of S(d, r2) are
   all non-increasing tuples of d non-negative integers whose squares sum to r2, numbered
   0, 1, 2, ... in *ascending lexicographic order* (``atoms(d, r2)`` lists them). An atom a
   with nnz(a) non-zero entries and m_v entries equal to v stands for
   w(a) = d! / prod_v(m_v!) * 2^nnz(a) points, and
   offset(a) = sum of w(b) over the atoms b numbered before a; count(d, r2) = sum of all w.

2. **Permutation rank.** Let u_1 > u_2 > ... > u_k be the distinct values of the atom of z,
   with multiplicities m_1, ..., m_k ("layers"). For j = 1..k let F_j be the coordinate
   positions whose |z_p| is not among u_1..u_{j-1}, listed in increasing order
   (F_1 = 0, 1, ..., d-1), and n_j = len(F_j). If the positions with |z_p| = u_j are the
   entries number q_1 < q_2 < ... < q_{m_j} of F_j (counting from 0), the layer rank is
   rho_j = C(q_1, 1) + C(q_2, 2) + ... + C(q_{m_j}, m_j), with 0 <= rho_j < C(n_j, m_j)
   (combinatorial number system). The last layer has n_k = m_k, so rho_k = 0. Then

       rank = rho_1 * Q_1 + rho_2 * Q_2 + ... + rho_k * Q_k,   Q_j = prod_{i > j} C(n_i, m_i)

   a mixed-radix number whose most significant digit is layer 1 (the largest value);
   0 <= rank < d! / prod(m_j!).

3. **Signs.** sign = sum of 2^i over the i for which the i-th non-zero coordinate of z
   (i = 0, 1, ..., taken in increasing position order) is negative; 0 <= sign < 2^nnz.

4. **Code.** code = offset(atom) + rank * 2^nnz(atom) + sign.

Decoding inverts this: the atom is the last one whose offset is <= code; with
rest = code - offset, sign = rest mod 2^nnz and rank = rest div 2^nnz; layer j's rank is
rho_j = (rank div Q_j) mod C(n_j, m_j), and its positions are recovered greedily: walk
p = n_j - 1 down to 0 with i = m_j positions still to place; whenever i > 0 and
C(p, i) <= rho_j, entry p of F_j gets u_j, rho_j -= C(p, i), i -= 1.

Worked example, d = 3, r2 = 2: the only atom is (1, 1, 0), w = 3!/(2! 1!) * 2^2 = 12.
For z = (0, -1, 1): layer 1 (value 1) sits at entries 1, 2 of F_1 = (0, 1, 2), so
rho_1 = C(1, 1) + C(2, 2) = 2 and Q_1 = C(1, 1) = 1, rank = 2; the first non-zero
coordinate is negative, the second positive, so sign = 1; code = 0 + 2 * 4 + 1 = 9.

Storage. A code is an unsigned integer below count(d, r2), held in
W = words(d, r2) = max(1, ceil(bits(d, r2) / 64)) 64-bit words, little-endian word order
(word 0 is the least significant); as bytes, each word is little-endian, word 0 first, i.e.
the code is one 8W-byte little-endian integer. In numpy: an (n,) uint64 array when W = 1,
an (n, W) uint64 array otherwise.

Limits (anything else is refused with SpreadcodeError): 1 <= d <= 64 (every binomial fits
a word), floor(sqrt(r2)) <= 127 (points are int8), W <= 4 (codes up to 256 bits), and at
most MAX_ATOMS atoms (the nearest-point search scores every atom).

Nearest point and search
------------------------
``nearest(y, r2)`` returns argmax over z in S(d, r2) of <y, z>, exactly: the coordinates
of y are sorted by decreasing |y| (ties: lower index first); the atom a maximising
sum_i a_i |y|_(i) is found by scoring every atom through its conjugate partition
(sum_{t >= 1} P(#{i : a_i >= t}) with P the prefix sums of the sorted |y|, computed in
float32); a's entries go back to the sorted positions with the signs of y (+ for 0).
Ties between atoms go to the lower atom number.

``search`` scores unit queries against codes with the squared distance between q and the
unit point z / r, 2 - 2 <q, z> / r, computed in float32 as 2 - <q, z> * float32(2 / r).
"""
import functools
import math

import numpy as np

from spreadcode import _codec
from spreadcode.errors import SpreadcodeError

MAX_DIM = _codec.MAX_DIM
MAX_WORDS = _codec.MAX_WORDS
MAX_COORD = 127
MAX_ATOMS = 1 << 18
GOOD_DIMS = (24, 32, 40, 48, 64)
GOOD_MAX_ATOMS = 4096
_WORD_MASK = (1 << 64) - 1


@functools.lru_cache(maxsize=64)
def _sphere_counts(d, top):
    """|S(d, s)| for s = 0..top as a tuple of Python ints (theta series of Z^d, truncated).

    Cost: d * top * sqrt(top) big-integer additions, vectorised over s."""
    series = np.zeros(top + 1, dtype=object)
    series[0] = 1
    squares = [v * v for v in range(math.isqrt(top) + 1)]
    for _ in range(d):
        nxt = series.copy()
        for v2 in squares[1:]:
            nxt[v2:] += 2 * series[: top + 1 - v2]
        series = nxt
    return tuple(int(c) for c in series)


def count(d, r2):
    """|S(d, r2)|, the number of integer points of squared norm r2 in dimension d (exact).

    Cost: O(d * r2^1.5) big-integer additions (cached)."""
    d = _codec.check_int(d, "d", 1)
    r2 = _codec.check_int(r2, "r2", 0)
    return _sphere_counts(d, r2)[r2]


def _empty(d, r2):
    return SpreadcodeError(f"S(d={d}, r2={r2}) is empty: {r2} is not a sum of {d} squares")


def bits(d, r2):
    """Bits needed by a code of S(d, r2): ceil(log2(count(d, r2))); 0 for a single point."""
    n = count(d, r2)
    if n == 0:
        raise _empty(d, r2)
    return (n - 1).bit_length()


def _words_of_bits(nbits):
    return max(1, -(-nbits // 64))


def words(d, r2):
    """64-bit words per stored code: max(1, ceil(bits(d, r2) / 64))."""
    return _words_of_bits(bits(d, r2))


@functools.lru_cache(maxsize=16)
def _sphere_counts_float(d, top):
    """|S(d, s)| for s = 0..top in float64 (relative error below 1e-12): read-only float64
    (top + 1,)."""
    series = np.zeros(top + 1)
    series[0] = 1.0
    for _ in range(d):
        nxt = series.copy()
        for v in range(1, math.isqrt(top) + 1):
            nxt[v * v:] += 2.0 * series[: top + 1 - v * v]
        series = nxt
    series.flags.writeable = False
    return series


def params(bits, d):
    """The r2 of a bits-bit code in dimension d: the largest r2 such that every sphere
    S(d, s), 1 <= s <= r2, has at most 2^bits points (the count is not monotone in r2 for
    small d), among non-empty spheres with floor(sqrt(r2)) <= 127. Raises when even r2 = 1
    does not fit. Cost: O(d * 127 * 16384) float operations, plus an exact count() when a
    count lies within 1e-9 of 2^bits."""
    bits = _codec.check_int(bits, "bits", 1)
    d = _codec.check_int(d, "d", 1)
    if bits > 64 * MAX_WORDS:
        raise SpreadcodeError(f"bits={bits} is above the {64 * MAX_WORDS}-bit code limit")
    counts = _sphere_counts_float(d, (MAX_COORD + 1) ** 2 - 1)
    budget = 2.0 ** bits
    first_over = len(counts)
    for s in np.nonzero(counts[1:] > budget * (1 - 1e-9))[0] + 1:
        if counts[s] > budget * (1 + 1e-9) or count(d, int(s)) > 1 << bits:
            first_over = int(s)
            break
    nonempty = np.nonzero(counts[1:first_over])[0]
    if len(nonempty) == 0:
        raise SpreadcodeError(f"no sphere of Z^{d} fits in {bits} bits (|S({d}, 1)| = {2 * d})")
    return int(nonempty[-1]) + 1


def good_params(bits):
    """Recommended (d, r2) pairs for a bits-bit code, e.g. bits = 16, 32, 64, 128, 256.

    For each d in GOOD_DIMS, r2 = params(bits, d), kept when the exact nearest-point search
    stays fast (at most GOOD_MAX_ATOMS atoms) and the code fits the codec limits. For d = 24
    this gives the paper's r2 = 3, 10, 79 at 16, 32, 64 bits; at 128 bits d = 48 and 64 qualify;
    256-bit spheres need far more atoms than that for d <= 64, so that list is empty."""
    bits = _codec.check_int(bits, "bits", 1)
    out = []
    for d in GOOD_DIMS:
        try:
            r2 = params(bits, d)
        except SpreadcodeError:
            continue
        if _codec.enumerate_atoms(d, r2, GOOD_MAX_ATOMS) is not None and words(d, r2) <= MAX_WORDS:
            out.append((d, r2))
    return out


def _limits(d, r2):
    """(d, r2) as ints after checking the dimension and coordinate limits."""
    d = _codec.check_int(d, "d", 1)
    r2 = _codec.check_int(r2, "r2", 1)
    if d > MAX_DIM:
        raise SpreadcodeError(f"lattice dimension d={d} is above the limit of {MAX_DIM}")
    if math.isqrt(r2) > MAX_COORD:
        raise SpreadcodeError(
            f"r2={r2} is too large: coordinates up to {math.isqrt(r2)} do not fit int8 (max {MAX_COORD})")
    return d, r2


def check_setting(d, r2):
    """(d, r2, words(d, r2)) as ints after checking every codec limit of the module
    docstring; SpreadcodeError names the limit that is exceeded. Builds and caches the
    setting's tables on first use."""
    tables = _tables(*_limits(d, r2))
    return tables.d, tables.r2, tables.words


def tables(d, r2):
    """The compiled tables of S(d, r2), a `spreadcode._codec.LatticeTables`, for kernels that
    run the nearest point inside a larger step (`spreadcode.residual`'s fused greedy
    encoding); built and cached once per setting, after check_setting's checks."""
    return _tables(*_limits(d, r2))


def _to_words(values, w):
    """Python ints (each < 2^(64 w)) -> uint64 array (len(values), w), little-endian words."""
    return np.array([[(v >> (64 * i)) & _WORD_MASK for i in range(w)] for v in values],
                    dtype=np.uint64).reshape(len(values), w)


@functools.lru_cache(maxsize=16)
def _tables(d, r2):
    """The kernel tables of S(d, r2) (a _codec.LatticeTables), built once per setting from
    ints (d, r2) within _limits; the code length comes from the atom weights, whose sum is
    count(d, r2). Cost: proportional to the number of atoms (Python-int arithmetic per atom)."""
    atoms = _codec.enumerate_atoms(d, r2, MAX_ATOMS)
    if atoms is None:
        raise SpreadcodeError(
            f"S(d={d}, r2={r2}) has more than {MAX_ATOMS} atoms: too many for the exact "
            "nearest-point search; use a smaller r2 (see good_params)")
    natom = len(atoms)
    if natom == 0:
        raise _empty(d, r2)
    new_level = np.zeros((natom, d), dtype=bool)
    new_level[:, 1:] = atoms[:, 1:] != atoms[:, :-1]
    pos_lev = np.cumsum(new_level, axis=1).astype(np.uint8)
    nlev = (pos_lev[:, -1] + 1).astype(np.uint8)
    nlevmax = int(nlev.max())
    rows = np.repeat(np.arange(natom), d)
    lev_val = np.zeros((natom, nlevmax), dtype=np.int8)
    lev_val[rows, pos_lev.ravel()] = atoms.ravel()
    lev_mult = np.zeros((natom, nlevmax), dtype=np.uint8)
    np.add.at(lev_mult, (rows, pos_lev.ravel()), 1)
    tmax = int(atoms[:, 0].max())
    conj = np.stack([(atoms >= t).sum(axis=1) for t in range(1, tmax + 1)], axis=1).astype(np.uint8)
    nnz = (atoms != 0).sum(axis=1).astype(np.uint8)

    fact = [math.factorial(i) for i in range(d + 1)]
    offsets = [0]
    for mults, nz in zip(lev_mult.tolist(), nnz.tolist()):
        weight = fact[d]
        for m in mults:
            weight //= fact[m]
        offsets.append(offsets[-1] + (weight << nz))
    nbits = (offsets[-1] - 1).bit_length()
    w = _words_of_bits(nbits)
    if w > MAX_WORDS:
        raise SpreadcodeError(f"S(d={d}, r2={r2}) needs {nbits}-bit codes, above the {64 * MAX_WORDS}-bit limit")
    return _codec.LatticeTables(d, r2, w, atoms, pos_lev, conj, nnz, nlev, lev_val, lev_mult,
                                _to_words(offsets, w))


def atoms(d, r2):
    """The atoms of S(d, r2): int8 (natom, d), rows non-increasing, ascending lexicographic
    order (atom number = row number). A read-only view of the cached tables."""
    view = _tables(*_limits(d, r2)).atoms.view()
    view.flags.writeable = False
    return view


def _codes_out(n, w):
    """A fresh (n, w) code buffer and the array handed back ((n,) when w = 1)."""
    out = np.empty((n, w), dtype=np.uint64)
    return out, (out.reshape(n) if w == 1 else out)


def nearest(y, r2, threads=None):
    """Nearest points of S(d, r2) to the rows of y: int8 (n, d) maximising <y_i, z>.

    y: float32 (n, d), C-contiguous, finite; rows need not be normalised.
    Cost: O(n * (d^2 + atoms * sqrt(r2))), on `threads` cores (default: all)."""
    y = _codec.check_vectors(y, "y")
    d, r2, _ = check_setting(y.shape[1], r2)
    z = np.empty((y.shape[0], d), dtype=np.int8)
    _tables(d, r2).nearest(y, z, _codec.check_threads(threads))
    return z


@functools.lru_cache(maxsize=None)
def _candidate_templates(d, r2):
    """The points of S(T, r2), T = min(d, r2 + 2), with no negative entry, in code order:
    float32 (t, T), read-only (`nearest_candidates` places them on a row's T largest
    |coordinates| with the row's signs)."""
    size = min(d, r2 + 2)
    points = decode(np.arange(count(size, r2), dtype=np.uint64), size, r2)
    table = points[(points >= 0).all(axis=1)].astype(np.float32)
    table.flags.writeable = False
    return table


def nearest_candidates(y, r2, count):
    """The two (or ``count``) points of S(d, r2) nearest each row of y, nearest first:
    int8 (n, c, d) with c = min(count, templates).

    Candidates are the points whose non-zero entries lie on the row's T = min(d, r2 + 2)
    largest |coordinates|, with the row's signs. Any other point is no nearer than one made
    from it by flipping a sign back or moving an entry to one of the (at least two) of
    those coordinates it leaves unused, so the first two candidates are the sphere's two
    nearest points (the first is `nearest`'s, up to ties); later ones are the nearest
    candidates, not always the sphere's. Ties break deterministically. y: float32 (n, d),
    finite.
    For the beam search of `spreadcode.residual`: numpy over the whole batch,
    O(n · (d log d + t · T)) for t templates (196 for S(12, 6)), meant for small spheres."""
    y = _codec.check_vectors(y, "y")
    d, r2, _ = check_setting(y.shape[1], r2)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise SpreadcodeError(f"count must be a positive integer, got {count!r}")
    table = _candidate_templates(d, r2)
    size = table.shape[1]
    order = np.argsort(-np.abs(y), axis=1, kind="stable")[:, :size]
    top = np.take_along_axis(y, order, axis=1)
    # Not `@`: a BLAS call here leaves OpenBLAS threads spinning, which halves the speed of
    # the torch decoders that run between calls in the beam search.
    scores = np.einsum("nj,tj->nt", np.abs(top), table)
    count = min(int(count), table.shape[0])
    if count < table.shape[0]:  # the count best, then in order
        part = np.argpartition(-scores, count - 1, axis=1)[:, :count]
        part.sort(axis=1)
        best = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1),
                                                   axis=1, kind="stable"), axis=1)
    else:
        best = np.argsort(-scores, axis=1, kind="stable")
    values = table[best] * np.where(top < 0, -1, 1).astype(np.float32)[:, None, :]
    z = np.zeros((y.shape[0], count, d), dtype=np.int8)
    np.put_along_axis(z, np.broadcast_to(order[:, None, :], values.shape),
                      values.astype(np.int8), axis=2)
    return z


def quantize(y, r2, threads=None):
    """encode(nearest(y, r2), r2) in one pass: codes of the nearest points of y's rows.

    y: float32 (n, d). Returns uint64 (n,) when words(d, r2) = 1, else (n, words).
    Cost: that of nearest() plus O(d * layers) per row."""
    y = _codec.check_vectors(y, "y")
    d, r2, w = check_setting(y.shape[1], r2)
    out, codes = _codes_out(y.shape[0], w)
    _tables(d, r2).quantize(y, out, _codec.check_threads(threads))
    return codes


def encode(z, r2, threads=None):
    """Codes of lattice points z: int8 (n, d), every row in S(d, r2).

    Returns uint64 (n,) when words(d, r2) = 1, else uint64 (n, words); see the module
    docstring for the bijection. Cost: O(d * layers) word operations per row."""
    if not isinstance(z, np.ndarray) or z.dtype != np.int8 or z.ndim != 2:
        raise SpreadcodeError(f"z must be an int8 array of shape (n, d), got {_codec.describe(z)}")
    if not z.flags.c_contiguous:
        raise SpreadcodeError("z must be C-contiguous")
    d, r2, w = check_setting(z.shape[1], r2)
    out, codes = _codes_out(z.shape[0], w)
    bad = _tables(d, r2).encode(z, out, _codec.check_threads(threads))
    if bad >= 0:
        raise SpreadcodeError(
            f"z row {bad} is not a point of S(d={d}, r2={r2}): squared norm {int((z[bad].astype(np.int64) ** 2).sum())}")
    return codes


def check_codes(codes, d, r2, name="codes"):
    """codes of S(d, r2) viewed as (n, words) uint64, after checking dtype, shape,
    contiguity and that every code is below count(d, r2). Cost: O(n * words)."""
    d, r2, w = check_setting(d, r2)
    view = _codec.check_lattice_codes(codes, w, name)
    bad = _tables(d, r2).first_invalid(view)
    if bad >= 0:
        raise SpreadcodeError(f"{name} row {bad} is not a valid code of S(d={d}, r2={r2}): "
                              f"codes must be below count = {count(d, r2)}")
    return view


def decode(codes, d, r2, threads=None):
    """Lattice points of codes: int8 (n, d). codes: uint64 (n,) when words(d, r2) = 1,
    else (n, words); each must be < count(d, r2). Cost: O(d * layers) word operations
    per code plus a binary search over the atoms."""
    view = check_codes(codes, d, r2)
    z = np.empty((view.shape[0], d), dtype=np.int8)
    _tables(d, r2).decode(view, z, _codec.check_threads(threads))
    return z


def _scan(codes, d, r2, queries):
    """A prepared _codec.Scan of validated lattice codes against validated queries."""
    view = check_codes(codes, d, r2)
    queries = _codec.check_vectors(queries, "queries", d)
    return _tables(d, r2).scan_setup(view, queries, np.float32(2.0 / math.sqrt(r2)))


def search(codes, d, r2, queries, k, threads=None):
    """The k codes nearest to each query: (distances float32 (nq, k), ids int64 (nq, k)).

    distance = 2 - <q, z> * float32(2 / r), the squared distance from a unit q to z / r;
    rows sorted by (distance, id); id -1 and distance +inf pad rows when len(codes) < k.
    Codes are decoded block by block once and scored against all queries; memory is
    O(threads * nq * k). Cost: O(N * (decode + nq * d)) on `threads` cores."""
    k = _codec.check_int(k, "k", 1)
    return _scan(codes, d, r2, queries).topk(k, _codec.check_threads(threads))


def range_search(codes, d, r2, queries, radius, threads=None):
    """Every code with distance <= radius (distance as in search()), faiss-style CSR:
    (lims int64 (nq + 1,), ids int64 (lims[-1],), distances float32 (lims[-1],)); query i's
    results are ids[lims[i]:lims[i + 1]], sorted by (distance, id). Cost: that of search()."""
    radius = _codec.check_radius(radius)
    return _scan(codes, d, r2, queries).range(radius, _codec.check_threads(threads))
