# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core of the spreadcode codec: lattice atoms, nearest lattice point, the
code <-> point bijection, sign codes and the scan kernels with top-k / range collection.

Private module. ``spreadcode.lattice`` and ``spreadcode.signs`` validate the user's input,
build the per-(d, r2) tables, and call the functions here. The hot loops are plain C
(``csrc/``: ``lattice.c``, ``signs.c``, ``scan.c``, compiled into this extension) so that
they can use 128-bit products, OpenMP pragmas and compiler vector extensions; the Cython
functions below are thin wrappers that release the GIL around them.

The bijection implemented here is specified in the docstring of ``spreadcode.lattice``.
"""
import operator

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc

from spreadcode.errors import SpreadcodeError

cnp.import_array()

# The C kernels this module calls, declared from their headers in csrc/.
cdef extern from "csrc/common.h":
    int SC_MAX_D
    int SC_MAX_W
    int SC_MAX_THREADS() nogil

cdef extern from "csrc/lattice.h":
    ctypedef struct sc_lattice:
        int d, W, natom, tmax, nlevmax
        const int8_t *atoms
        const uint8_t *pos_lev
        const uint8_t *conj
        const uint8_t *nnz
        const uint8_t *nlev
        const int8_t *lev_val
        const uint8_t *lev_mult
        const uint64_t *offsets

    void sc_init_tables()
    void sc_init_bits()
    int64_t sc_enumerate_atoms(int d, int r2, int8_t *out, int64_t cap) nogil
    void sc_nearest(const sc_lattice *L, const float *y, int64_t n, int8_t *z, int threads) nogil
    void sc_quantize(const sc_lattice *L, const float *y, int64_t n, uint64_t *codes, int threads) nogil
    int64_t sc_encode(const sc_lattice *L, const int8_t *z, int64_t n, int r2, uint64_t *codes,
                      int threads) nogil
    int64_t sc_first_invalid(const sc_lattice *L, const uint64_t *codes, int64_t n) nogil
    void sc_decode(const sc_lattice *L, const uint64_t *codes, int64_t n, int8_t *z, int threads) nogil

cdef extern from "csrc/signs.h":
    void sc_sign_pack(const float *x, int64_t n, int d, uint8_t *out, int threads) nogil
    void sc_sign_unpack(const uint8_t *codes, int64_t n, int d, float *out, int threads) nogil
    void sc_hamming(const uint8_t *a, int64_t sa, const uint8_t *b, int64_t sb, int64_t n, int nb,
                    int32_t *out, int threads) nogil

cdef extern from "csrc/scan.h":
    int SC_LATTICE, SC_SIGN_DOT, SC_HAMMING, SC_FLOAT_L2, SC_INT8_L2

    ctypedef struct sc_scan:
        int kind, d
        int64_t n
        const sc_lattice *lat
        const uint64_t *lcodes
        const uint8_t *scodes
        const float *vectors
        const uint8_t *rows
        int nb
        int nq
        const float *queries
        const uint8_t *qcodes
        float scale2
        int portable

    ctypedef struct sc_range_result:
        int slots, nq

    int sc_scan_topk(const sc_scan *S, int k, int threads, const float *bound, float *D,
                     int64_t *I) nogil
    int sc_scan_range(const sc_scan *S, float radius, int threads, sc_range_result *R,
                      int64_t *lims) nogil
    void sc_range_finish(sc_range_result *R, const int64_t *lims, int64_t *ids, float *dists,
                         int threads) nogil
    void sc_int8_rows(const float *x, int64_t n, int d, uint8_t *rows, int threads) nogil

cdef extern from "csrc/int8.h":
    int SC_INT8_MAX_WIDTH
    void sc_quantize_rows(const float *x, int kx, const float *y, int ky, int difference,
                          int64_t n, int plus_128, int8_t *out, float *scale, int threads) nogil
    void sc_dequantize(const int32_t *acc, int64_t n, int m, const float *row_scale,
                       const float *col_scale, const int32_t *col_offset, const float *bias,
                       float *out, int threads) nogil
    void sc_requantize_relu(const int32_t *acc, int64_t n, int m, const float *row_scale,
                            const float *col_scale, const int32_t *col_offset,
                            const float *bias, int8_t *out, float *out_scale,
                            int threads) nogil
    ctypedef struct sc_int8_layer:
        int k, m
        const int8_t *packed
        const float *col_scale
        const int32_t *col_offset
        const float *bias
    int sc_int8_fused_available()
    int64_t sc_int8_pack_size(int k, int m)
    void sc_int8_pack(const int8_t *w, int k, int m, int8_t *out) nogil
    int sc_int8_mlp(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                    const float *row_scale, int64_t n, float *out, int threads) nogil

cdef extern from "csrc/greedy.h":
    ctypedef struct sc_greedy_stage:
        const sc_int8_layer *f
        int f_layers
        const sc_lattice *lattice
        float unit
        const sc_int8_layer *g
        int g_layers
        const float *table
        uint64_t *codes
    int sc_greedy_encode(const sc_greedy_stage *stages, int nstages, const float *xs,
                         int64_t n, int d_in, int threads) nogil

MAX_DIM = SC_MAX_D
MAX_WORDS = SC_MAX_W
INT8_MAX_WIDTH = SC_INT8_MAX_WIDTH
INT8_FUSED = bool(sc_int8_fused_available())  # FusedInt8Mlp runs on this CPU
TOPK_HEAP_ENTRIES = 1 << 24       # (distance, id) heap entries of one top-k query batch
INT8_SCAN_MAX_D = 1 << 16         # int8_scan's int32 sums: 255 * 127 * 2^16 < 2^31
sc_init_tables()
sc_init_bits()


# ---------------------------------------------------------------------------------------
# Input checks shared by lattice.py and signs.py (every failure is a SpreadcodeError)
# ---------------------------------------------------------------------------------------

def describe(x):
    """A short description of x for error messages, e.g. 'float64 array of shape (3, 4)'."""
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {x.shape}"
    return type(x).__name__


def check_vectors(x, name, d=None):
    """x if it is a finite, C-contiguous float32 (n, d) array (d checked when given)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise SpreadcodeError(f"{name} must be a float32 array of shape (n, d), got {describe(x)}")
    if d is not None and x.shape[1] != d:
        raise SpreadcodeError(f"{name} must have {d} columns, got shape {x.shape}")
    if not x.flags.c_contiguous:
        raise SpreadcodeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if not np.isfinite(x).all():
        raise SpreadcodeError(f"{name} contains NaN or infinite values")
    return x


def check_lattice_codes(codes, int words, name):
    """An (n, words) uint64 view of lattice codes: (n,) when words = 1, else (n, words)."""
    expected = "(n,)" if words == 1 else f"(n, {words})"
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint64:
        raise SpreadcodeError(f"{name} must be a uint64 array of shape {expected}, got {describe(codes)}")
    if (codes.ndim, codes.shape[1:]) != ((1, ()) if words == 1 else (2, (words,))):
        raise SpreadcodeError(f"{name} must have shape {expected} for {64 * words}-bit words, "
                              f"got {codes.shape}")
    if not codes.flags.c_contiguous:
        raise SpreadcodeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    return codes.reshape(codes.shape[0], words)


def check_sign_codes(codes, int d, name):
    """codes if it is a C-contiguous uint8 (n, ceil(d/8)) array with zero padding bits."""
    nb = (d + 7) // 8
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
        raise SpreadcodeError(f"{name} must be a uint8 array of shape (n, {nb}), got {describe(codes)}")
    if codes.shape[1] != nb:
        raise SpreadcodeError(f"{name} must have {nb} bytes per row for d={d}, got shape {codes.shape}")
    if not codes.flags.c_contiguous:
        raise SpreadcodeError(f"{name} must be C-contiguous (use np.ascontiguousarray)")
    if d % 8 and codes.shape[0] and (codes[:, -1] >> (d % 8)).any():
        raise SpreadcodeError(f"{name} has bits set beyond dimension d={d} (padding bits must be 0)")
    return codes


def check_int(value, name, minimum):
    """value as a Python int >= minimum (numpy integers accepted, bools refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise SpreadcodeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise SpreadcodeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise SpreadcodeError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_threads(threads):
    """Kernel thread count: all cores when None, else an int >= 1."""
    return SC_MAX_THREADS() if threads is None else check_int(threads, "threads", 1)


def check_radius(radius):
    """radius as a finite float."""
    try:
        value = float(radius)
    except (TypeError, ValueError):
        raise SpreadcodeError(f"radius must be a number, got {radius!r}") from None
    if not np.isfinite(value):
        raise SpreadcodeError(f"radius must be finite, got {radius!r}")
    return value


# ---------------------------------------------------------------------------------------
# Lattice tables
# ---------------------------------------------------------------------------------------

def enumerate_atoms(int d, int r2, int64_t cap):
    """Atoms of S(d, r2): int8 (natom, d), non-increasing rows in ascending lexicographic
    order, or None when there are more than `cap`. Cost: proportional to the atoms."""
    cdef int64_t n
    with nogil:
        n = sc_enumerate_atoms(d, r2, NULL, cap)
    if n > cap:
        return None
    out = np.zeros((n, d), dtype=np.int8)
    cdef int8_t[:, ::1] view = out
    if n:
        with nogil:
            sc_enumerate_atoms(d, r2, &view[0, 0], cap)
    return out


# ---------------------------------------------------------------------------------------
# Scans (lattice dot, sign dot, Hamming, float L2) with top-k and range collection
# ---------------------------------------------------------------------------------------

cdef class Scan:
    """One prepared scan: codes, queries and the scoring rule (see sc_scan in csrc/scan.h)."""
    cdef sc_scan s
    cdef object keep

    def topk(self, int k, int threads, bound=None):
        """(distances float32 (nq, k), ids int64 (nq, k)) sorted by (distance, id).

        ``bound``: None, or float32 (nq,): only codes at a distance <= bound[q] count for
        query q, and the slots of a query with fewer such codes than k come back as
        (inf, -1). Queries go in batches whose heaps (batch * k * threads entries) stay
        below TOPK_HEAP_ENTRIES; the codes are decoded once per batch."""
        cdef const float[::1] bv
        cdef const float *bp = NULL
        if bound is not None:
            bv = np.ascontiguousarray(bound, dtype=np.float32)
            if bv.shape[0] != self.s.nq:
                raise SpreadcodeError(f"{bv.shape[0]} bounds for {self.s.nq} queries")
            if self.s.nq:
                bp = &bv[0]
        distances = np.empty((self.s.nq, k), dtype=np.float32)
        ids = np.empty((self.s.nq, k), dtype=np.int64)
        cdef float[:, ::1] dv = distances
        cdef int64_t[:, ::1] iv = ids
        cdef int rc = 0
        cdef int batch = max(1, TOPK_HEAP_ENTRIES // (k * threads))
        cdef sc_scan part = self.s
        cdef int q0
        for q0 in range(0, self.s.nq, batch):
            part.nq = min(batch, self.s.nq - q0)
            if self.s.kind == SC_HAMMING:
                part.qcodes = self.s.qcodes + <size_t>q0 * self.s.nb
            else:
                part.queries = self.s.queries + <size_t>q0 * self.s.d
            with nogil:
                rc = sc_scan_topk(&part, k, threads, bp + q0 if bp != NULL else NULL,
                                  &dv[q0, 0], &iv[q0, 0])
            if rc:
                raise MemoryError("out of memory in the top-k scan")
        return distances, ids

    def range(self, float radius, int threads):
        """(lims int64 (nq + 1,), ids int64, distances float32), CSR by query."""
        cdef sc_range_result R
        lims = np.zeros(self.s.nq + 1, dtype=np.int64)
        cdef int64_t[::1] lv = lims
        cdef int rc
        with nogil:
            rc = sc_scan_range(&self.s, radius, threads, &R, &lv[0])
        if rc:
            raise MemoryError("out of memory in the range scan")
        total = int(lims[self.s.nq])
        ids = np.empty(total, dtype=np.int64)
        dists = np.empty(total, dtype=np.float32)
        cdef int64_t[::1] idv = ids
        cdef float[::1] dsv = dists
        with nogil:
            sc_range_finish(&R, &lv[0], &idv[0] if total else NULL, &dsv[0] if total else NULL,
                            threads)
        return lims, ids, dists


cdef class LatticeTables:
    """The per-(d, r2) arrays the lattice kernels read (built by ``spreadcode.lattice``).

    Keeps the numpy arrays alive and exposes them to C as one ``sc_lattice`` struct.
    """
    cdef sc_lattice c
    cdef readonly int d, r2, words
    cdef readonly object atoms
    cdef object _keep

    def __cinit__(self, int d, int r2, int words, atoms, pos_lev, conj, nnz, nlev, lev_val,
                  lev_mult, offsets):
        cdef const int8_t[:, ::1] a = atoms
        cdef const uint8_t[:, ::1] pl = pos_lev
        cdef const uint8_t[:, ::1] cj = conj
        cdef const uint8_t[::1] nz = nnz
        cdef const uint8_t[::1] nl = nlev
        cdef const int8_t[:, ::1] lv = lev_val
        cdef const uint8_t[:, ::1] lm = lev_mult
        cdef const uint64_t[:, ::1] off = offsets
        if d > SC_MAX_D or not 1 <= words <= SC_MAX_W or a.shape[0] < 1:
            raise SpreadcodeError(f"unsupported lattice tables: d={d}, words={words}")
        self.d, self.r2, self.words, self.atoms = d, r2, words, atoms
        self._keep = (pos_lev, conj, nnz, nlev, lev_val, lev_mult, offsets)
        self.c.d, self.c.W, self.c.natom = d, words, a.shape[0]
        self.c.tmax, self.c.nlevmax = cj.shape[1], lv.shape[1]
        self.c.atoms, self.c.pos_lev, self.c.conj = &a[0, 0], &pl[0, 0], &cj[0, 0]
        self.c.nnz, self.c.nlev = &nz[0], &nl[0]
        self.c.lev_val, self.c.lev_mult, self.c.offsets = &lv[0, 0], &lm[0, 0], &off[0, 0]

    def nearest(self, const float[:, ::1] y, int8_t[:, ::1] z, int threads):
        """z (n, d) int8 <- nearest points of y (n, d) float32."""
        if y.shape[0]:
            with nogil:
                sc_nearest(&self.c, &y[0, 0], y.shape[0], &z[0, 0], threads)

    def quantize(self, const float[:, ::1] y, uint64_t[:, ::1] codes, int threads):
        """codes (n, words) uint64 <- codes of the nearest points of y (n, d) float32."""
        if y.shape[0]:
            with nogil:
                sc_quantize(&self.c, &y[0, 0], y.shape[0], &codes[0, 0], threads)

    def encode(self, const int8_t[:, ::1] z, uint64_t[:, ::1] codes, int threads):
        """codes (n, words) <- codes of z (n, d) int8; returns -1 or the first row not in S."""
        cdef int64_t bad = -1
        if z.shape[0]:
            with nogil:
                bad = sc_encode(&self.c, &z[0, 0], z.shape[0], self.r2, &codes[0, 0], threads)
        return bad

    def first_invalid(self, const uint64_t[:, ::1] codes):
        """-1, or the first row of codes (n, words) that is >= count."""
        cdef int64_t bad = -1
        if codes.shape[0]:
            with nogil:
                bad = sc_first_invalid(&self.c, &codes[0, 0], codes.shape[0])
        return bad

    def decode(self, const uint64_t[:, ::1] codes, int8_t[:, ::1] z, int threads):
        """z (n, d) int8 <- points of valid codes (n, words)."""
        if codes.shape[0]:
            with nogil:
                sc_decode(&self.c, &codes[0, 0], codes.shape[0], &z[0, 0], threads)

    def scan_setup(self, const uint64_t[:, ::1] codes, const float[:, ::1] queries, float scale2):
        """A scan of lattice codes (n, words) against float32 queries (nq, d)."""
        cdef Scan scan = Scan()
        scan.s.kind = SC_LATTICE
        scan.s.d = self.d
        scan.s.n = codes.shape[0]
        scan.s.lat = &self.c
        scan.s.lcodes = &codes[0, 0] if codes.shape[0] else NULL
        scan.s.nq = queries.shape[0]
        scan.s.queries = &queries[0, 0] if queries.shape[0] else NULL
        scan.s.scale2 = scale2
        scan.keep = (self, codes, queries)
        return scan


def sign_scan(const uint8_t[:, ::1] db, int d, queries, float scale2):
    """A scan of sign codes db (n, ceil(d/8)): asymmetric when queries is float32 (nq, d)
    (distance 2 - <q, s> * scale2), Hamming when it is uint8 codes (nq, ceil(d/8))."""
    cdef Scan scan = Scan()
    cdef const float[:, ::1] qf
    cdef const uint8_t[:, ::1] qc
    scan.s.d = d
    scan.s.n = db.shape[0]
    scan.s.nb = db.shape[1]
    scan.s.scodes = &db[0, 0] if db.shape[0] else NULL
    scan.s.scale2 = scale2
    if queries.dtype == np.float32:
        qf = queries
        scan.s.kind = SC_SIGN_DOT
        scan.s.nq = qf.shape[0]
        scan.s.queries = &qf[0, 0] if qf.shape[0] else NULL
    else:
        qc = queries
        scan.s.kind = SC_HAMMING
        scan.s.nq = qc.shape[0]
        scan.s.qcodes = &qc[0, 0] if qc.shape[0] else NULL
    scan.keep = (db, queries)
    return scan


# ---------------------------------------------------------------------------------------
# Sign codes
# ---------------------------------------------------------------------------------------

def sign_pack(const float[:, ::1] x, uint8_t[:, ::1] out, int threads):
    """out (n, ceil(d/8)) uint8 <- sign bits of x (n, d) float32."""
    if x.shape[0] and x.shape[1]:
        with nogil:
            sc_sign_pack(&x[0, 0], x.shape[0], x.shape[1], &out[0, 0], threads)


def sign_unpack(const uint8_t[:, ::1] codes, float[:, ::1] out, int threads):
    """out (n, d) float32 of +-1 <- sign codes (n, ceil(d/8))."""
    if out.shape[0] and out.shape[1]:
        with nogil:
            sc_sign_unpack(&codes[0, 0], out.shape[0], out.shape[1], &out[0, 0], threads)


def sign_hamming(const uint8_t[:, ::1] a, const uint8_t[:, ::1] b, int32_t[::1] out, int threads):
    """out (n,) int32 <- popcount(a XOR b) row by row; a one-row operand is reused."""
    cdef int64_t n = out.shape[0]
    cdef int64_t sa = 0 if a.shape[0] == 1 else a.shape[1]
    cdef int64_t sb = 0 if b.shape[0] == 1 else b.shape[1]
    if n and a.shape[1]:
        with nogil:
            sc_hamming(&a[0, 0], sa, &b[0, 0], sb, n, a.shape[1], &out[0], threads)


def float_scan(const float[:, ::1] vectors, const float[:, ::1] queries):
    """A scan of float32 vectors (n, d) against float32 queries (nq, d) by squared L2
    distance less the query's squared norm, ‖x‖² − 2⟨q, x⟩ (its top-k: the nearest
    vectors, ties to the lower row)."""
    if vectors.shape[1] != queries.shape[1]:
        raise SpreadcodeError(f"queries have dimension {queries.shape[1]} but the vectors "
                              f"have {vectors.shape[1]}")
    cdef Scan scan = Scan()
    scan.s.kind = SC_FLOAT_L2
    scan.s.d = vectors.shape[1]
    scan.s.n = vectors.shape[0]
    scan.s.vectors = &vectors[0, 0] if vectors.shape[0] else NULL
    scan.s.nq = queries.shape[0]
    scan.s.queries = &queries[0, 0] if queries.shape[0] else NULL
    scan.keep = (vectors, queries)
    return scan


def int8_rows(const float[:, ::1] x, uint8_t[:, ::1] rows, int threads):
    """rows (n, d + 4) bytes <- vectors x (n, d) float32: each row's d int8 b = rint(x / t),
    then its float32 scale t = max|x| / 127 (b = 0 where t = 0), as `int8_scan` rounds its
    queries (`spreadcode.search.int8_rows` views its structured rows so)."""
    if rows.shape[0] != x.shape[0] or rows.shape[1] != x.shape[1] + 4:
        raise SpreadcodeError(f"int8_rows: {rows.shape[0]} rows of {rows.shape[1]} bytes for "
                              f"{x.shape[0]} vectors of {x.shape[1]} dimensions")
    if x.shape[0]:
        with nogil:
            sc_int8_rows(&x[0, 0] if x.shape[1] else NULL, x.shape[0], x.shape[1],
                         &rows[0, 0], threads)


def int8_scan(const uint8_t[:, ::1] rows, const float[:, ::1] queries, bint portable=False):
    """A scan of int8 rows against float32 queries (nq, d) by ‖x‖² − 2⟨q̃, x⟩ for the vectors
    x = s · c they hold: ``rows`` (n, d + 4) bytes, each d int8 c then a float32 scale s
    (`spreadcode.search.int8_rows`, viewed as bytes), and each query q rounded the same way,
    q̃ = t · b (t = max|q| / 127, b int8). ⟨b, c⟩ is an exact integer sum (AVX512-VNNI where
    the CPU has it: 4× the float scan's multiply-adds per instruction) and ‖x‖² − 2 s t ⟨b, c⟩
    is rounded once, so every CPU ranks alike. ``portable``: the kernel without VNNI (the
    same results; for tests)."""
    if rows.shape[1] != queries.shape[1] + 4:
        raise SpreadcodeError(f"queries have dimension {queries.shape[1]} but the int8 rows "
                              f"hold {rows.shape[1] - 4}")
    if queries.shape[1] > INT8_SCAN_MAX_D:
        raise SpreadcodeError(f"the int8 scan takes at most {INT8_SCAN_MAX_D} dimensions (its "
                              f"int32 sums), got {queries.shape[1]}")
    cdef Scan scan = Scan()
    scan.s.kind = SC_INT8_L2
    scan.s.portable = portable
    scan.s.d = queries.shape[1]
    scan.s.n = rows.shape[0]
    scan.s.rows = &rows[0, 0] if rows.shape[0] else NULL
    scan.s.nq = queries.shape[0]
    scan.s.queries = &queries[0, 0] if queries.shape[0] else NULL
    scan.keep = (rows, queries)
    return scan


# ---------------------------------------------------------------------------------------
# Row-scaled int8 layers (spreadcode/int8.py); the buffers' shapes are checked here, since
# a kernel would write past a short one
# ---------------------------------------------------------------------------------------

def _check_sizes(name, *pairs):
    """SpreadcodeError unless each (got, expected) pair of sizes agrees."""
    if any(got != expected for got, expected in pairs):
        raise SpreadcodeError(f"{name}: buffer sizes {[got for got, _ in pairs]} do not "
                              f"match {[expected for _, expected in pairs]}")


def quantize_rows(const float[:, ::1] x, int8_t[:, ::1] out, float[::1] scale, int threads,
                  const float[:, ::1] y=None, bint difference=False, bint plus_128=False):
    """out (n, k) int8, scale (n,) float32 <- the rows of x (n, k) float32, one symmetric
    scale per row; with y (n, ky) float32, the rows [x_i, y_i] (out (n, kx + ky)) or, when
    ``difference`` (kx = ky), [x_i − y_i, y_i], without building them. ``plus_128``: out
    holds the codes + 128 as uint8 bytes (what FusedInt8Mlp reads)."""
    cdef int ky = 0 if y is None else y.shape[1]
    if y is not None:
        _check_sizes("quantize_rows", (y.shape[0], x.shape[0]))
        if difference:
            _check_sizes("quantize_rows", (y.shape[1], x.shape[1]))
    elif difference:
        raise SpreadcodeError("quantize_rows: a difference needs y")
    _check_sizes("quantize_rows", (out.shape[0], x.shape[0]),
                 (out.shape[1], x.shape[1] + ky), (scale.shape[0], x.shape[0]))
    if ky and out.shape[1] > SC_INT8_MAX_WIDTH:
        raise SpreadcodeError(f"quantize_rows: concatenated rows of at most "
                              f"{SC_INT8_MAX_WIDTH} values, got {out.shape[1]}")
    if x.shape[0] and out.shape[1]:
        with nogil:
            sc_quantize_rows(&x[0, 0] if x.shape[1] else NULL, x.shape[1],
                             &y[0, 0] if ky else NULL, ky, difference, x.shape[0],
                             plus_128, &out[0, 0], &scale[0], threads)


def dequantize(const int32_t[:, ::1] acc, const float[::1] row_scale, const float[::1] col_scale,
               const int32_t[::1] col_offset not None, const float[::1] bias, float[:, ::1] out,
               int threads):
    """out (n, m) float32 <- int32 sums acc (n, m) scaled per row and column, offset, biased."""
    n, m = acc.shape[0], acc.shape[1]
    _check_sizes("dequantize", (row_scale.shape[0], n), (col_scale.shape[0], m),
                 (col_offset.shape[0], m), (bias.shape[0], m), (out.shape[0], n),
                 (out.shape[1], m))
    if acc.shape[0] and acc.shape[1]:
        with nogil:
            sc_dequantize(&acc[0, 0], acc.shape[0], acc.shape[1], &row_scale[0], &col_scale[0],
                          &col_offset[0], &bias[0], &out[0, 0], threads)


def requantize_relu(const int32_t[:, ::1] acc, const float[::1] row_scale,
                    const float[::1] col_scale, const int32_t[::1] col_offset not None,
                    const float[::1] bias, int8_t[:, ::1] out, float[::1] out_scale,
                    int threads):
    """out (n, m) int8, out_scale (n,) <- relu of `dequantize`'s output as shifted uint8 rows."""
    n, m = acc.shape[0], acc.shape[1]
    _check_sizes("requantize_relu", (row_scale.shape[0], n), (col_scale.shape[0], m),
                 (col_offset.shape[0], m), (bias.shape[0], m), (out.shape[0], n),
                 (out.shape[1], m), (out_scale.shape[0], n))
    if m > SC_INT8_MAX_WIDTH:
        raise SpreadcodeError(f"requantize_relu: rows of at most {SC_INT8_MAX_WIDTH} values")
    if acc.shape[0] and acc.shape[1]:
        with nogil:
            sc_requantize_relu(&acc[0, 0], acc.shape[0], acc.shape[1], &row_scale[0],
                               &col_scale[0], &col_offset[0], &bias[0], &out[0, 0],
                               &out_scale[0], threads)


def _check_fused(int rc):
    """The fused kernels' status (sc_int8_mlp, sc_greedy_encode) as Python errors: -1 a
    thread's buffers could not be allocated, -2 the kernel is not built into this codec."""
    if rc == -1:
        raise MemoryError()
    if rc:
        raise SpreadcodeError("the fused int8 MLP is not built into this codec")


cdef class FusedInt8Mlp:
    """An int8 MLP for the fused kernel (``sc_int8_mlp`` in csrc/int8.c, AVX512-VNNI CPUs:
    ``INT8_FUSED``): every layer's product, requantization and the next layer's product run
    over row tiles that stay in cache, one call per batch.

    ``layers``: [(codes int8 (k, m), col_scale float32 (m,), col_offset int32 (m,), bias
    float32 (m,))], one per Linear, each k a multiple of 4 and the previous layer's m (at
    most INT8_MAX_WIDTH); col_offset is added to the sums of the uint8 rows the layer reads.
    """
    cdef sc_int8_layer *c
    cdef int count
    cdef readonly int k, m
    cdef object _keep

    def __cinit__(self, layers):
        if not INT8_FUSED:
            raise SpreadcodeError("the fused int8 MLP needs an x86 CPU with AVX512-VNNI")
        if not layers:
            raise SpreadcodeError("FusedInt8Mlp: no layers")
        keep = []
        self.c = <sc_int8_layer *> malloc(len(layers) * sizeof(sc_int8_layer))
        if self.c == NULL:
            raise MemoryError()
        self.count = len(layers)
        cdef const int8_t[:, ::1] codes
        cdef int8_t[::1] packed
        cdef const float[::1] col_scale, bias
        cdef const int32_t[::1] col_offset
        cdef int k, m
        for i, (w, s, o, b) in enumerate(layers):
            codes, col_scale, col_offset, bias = w, s, o, b
            k, m = codes.shape[0], codes.shape[1]
            if k % 4 or not 0 < k <= SC_INT8_MAX_WIDTH or not 0 < m <= SC_INT8_MAX_WIDTH \
                    or (i and k != self.c[i - 1].m):
                raise SpreadcodeError(f"FusedInt8Mlp: layer {i} of shape ({k}, {m}) does not "
                                      "chain (inputs a multiple of 4, inputs and outputs at "
                                      f"most {SC_INT8_MAX_WIDTH})")
            _check_sizes("FusedInt8Mlp", (col_scale.shape[0], m), (col_offset.shape[0], m),
                         (bias.shape[0], m))
            packed = np.empty(sc_int8_pack_size(k, m), dtype=np.int8)
            with nogil:
                sc_int8_pack(&codes[0, 0], k, m, &packed[0])
            keep.append((packed, s, o, b))
            self.c[i].k, self.c[i].m = k, m
            self.c[i].packed, self.c[i].col_scale = &packed[0], &col_scale[0]
            self.c[i].col_offset, self.c[i].bias = &col_offset[0], &bias[0]
        self._keep = keep
        self.k, self.m = self.c[0].k, self.c[self.count - 1].m

    def __dealloc__(self):
        free(self.c)

    def __call__(self, const uint8_t[:, ::1] rows, const float[::1] row_scale,
                 float[:, ::1] out, int threads):
        """out (n, m) float32 <- the MLP of rows (n, k) uint8 with one scale per row (n,)."""
        _check_sizes("FusedInt8Mlp", (rows.shape[1], self.k), (row_scale.shape[0], rows.shape[0]),
                     (out.shape[0], rows.shape[0]), (out.shape[1], self.m))
        cdef int rc = 0
        if rows.shape[0]:
            with nogil:
                rc = sc_int8_mlp(self.c, self.count, &rows[0, 0], &row_scale[0],
                                 rows.shape[0], &out[0, 0], threads)
        _check_fused(rc)


cdef class FusedGreedyEncoder:
    """Greedy encoding of a residual model's stages in one call per batch
    (``sc_greedy_encode`` in csrc/greedy.c, AVX512-VNNI CPUs: ``INT8_FUSED``): each tile of
    rows runs every stage's encoder, nearest point and decoder while it stays in cache.

    ``stages``: [(f FusedInt8Mlp, tables LatticeTables, unit float32, g FusedInt8Mlp or
    None)], one per stage: the encoder f_m reads d_in inputs (the first stage) or 2 d_in
    ([x − x̂, x̂]) and outputs the sphere's d_m, whose codes fit one word; unit is
    1 / sqrt(r2_m); the decoder g_m reads d_m inputs (the first stage) or d_m + d_in
    ([z · unit, x̂]) and outputs d_in, None for the last stage only.
    """
    cdef sc_greedy_stage *c
    cdef int count
    cdef readonly int d_in
    cdef readonly int64_t first_count
    cdef object _keep

    def __cinit__(self, stages, int d_in):
        if not INT8_FUSED:
            raise SpreadcodeError("the fused greedy encoder needs an x86 CPU with AVX512-VNNI")
        if not stages:
            raise SpreadcodeError("FusedGreedyEncoder: no stages")
        self.c = <sc_greedy_stage *> malloc(len(stages) * sizeof(sc_greedy_stage))
        if self.c == NULL:
            raise MemoryError()
        self.count, self.d_in, self._keep = len(stages), d_in, stages
        cdef FusedInt8Mlp f, g
        cdef LatticeTables tables
        for s, (f, tables, unit, g) in enumerate(stages):
            last = s == len(stages) - 1
            d_f = d_in if s == 0 else 2 * d_in
            d_g = tables.d if s == 0 else tables.d + d_in
            if f is None or f.k != d_f or f.m != tables.d or tables.words != 1 \
                    or (g is None) != last or (g is not None and (g.k != d_g or g.m != d_in)):
                raise SpreadcodeError(f"FusedGreedyEncoder: stage {s} does not chain (encoder "
                                      f"{d_f} -> {tables.d} inputs, a one-word sphere, decoder "
                                      f"{d_g} -> {d_in} where a later stage follows)")
            self.c[s].f, self.c[s].f_layers = f.c, f.count
            self.c[s].lattice, self.c[s].unit = &tables.c, unit
            self.c[s].g = NULL if g is None else g.c
            self.c[s].g_layers = 0 if g is None else g.count
            self.c[s].table, self.c[s].codes = NULL, NULL
        tables = stages[0][1]
        self.first_count = int(tables.c.offsets[tables.c.natom])

    def __dealloc__(self):
        free(self.c)

    def __call__(self, const float[:, ::1] xs, table, int threads):
        """The stages' codes of the preprocessed inputs xs (n, d_in) float32: a list of
        uint64 (n,) arrays, one per stage. ``table``: float32 (count, d_in), g_0 of every
        point of the first stage in code order, looked up instead of running it; or None."""
        _check_sizes("FusedGreedyEncoder", (xs.shape[1], self.d_in))
        cdef int64_t n = xs.shape[0]
        codes = [np.empty(n, dtype=np.uint64) for _ in range(self.count)]
        cdef const float[:, ::1] rows
        if table is not None:
            rows = table
            _check_sizes("FusedGreedyEncoder table", (rows.shape[0], self.first_count),
                         (rows.shape[1], self.d_in))
        # this call's copy of the stages (its outputs and table), so that calls may overlap
        cdef sc_greedy_stage *call = <sc_greedy_stage *> malloc(
            self.count * sizeof(sc_greedy_stage))
        if call == NULL:
            raise MemoryError()
        cdef uint64_t[::1] view
        cdef int rc = 0
        try:
            for s in range(self.count):
                call[s] = self.c[s]
                view = codes[s]
                call[s].codes = &view[0] if n else NULL
            call[0].table = &rows[0, 0] if table is not None else NULL
            if n:
                with nogil:
                    rc = sc_greedy_encode(call, self.count, &xs[0, 0], n, self.d_in, threads)
        finally:
            free(call)
        _check_fused(rc)
        return codes
