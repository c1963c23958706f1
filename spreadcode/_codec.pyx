# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled core of the spreadcode codec: lattice atoms, nearest lattice point, the
code <-> point bijection, sign codes and the scan kernels with top-k / range collection.

Private module. ``spreadcode.lattice`` and ``spreadcode.signs`` validate the user's input,
build the per-(d, r2) tables, and call the functions here. The hot loops are plain C (the
verbatim block below) so that they can use 128-bit products, OpenMP pragmas and compiler
vector extensions; the Cython functions release the GIL around them.

The bijection implemented here is specified in the docstring of ``spreadcode.lattice``.
"""
import operator

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t

from spreadcode.errors import SpreadcodeError

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <math.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define SC_THREAD_ID() omp_get_thread_num()
    #define SC_NUM_THREADS() omp_get_num_threads()
    #define SC_MAX_THREADS() omp_get_max_threads()
    #else
    #define SC_THREAD_ID() 0
    #define SC_NUM_THREADS() 1
    #define SC_MAX_THREADS() 1
    #endif

    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "the spreadcode codec kernels assume a little-endian machine"
    #endif
    #define SC_MAX_D 64          /* lattice dimension limit: every binomial C(n, k), n <= 64, fits a word */
    #define SC_MAX_W 4           /* lattice codes up to 4 words = 256 bits */
    #define SC_BINOM_N (SC_MAX_D + 1)
    #define SC_INLINE static inline __attribute__((always_inline))
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    #define SC_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
    #else
    #define SC_MULTIVERSION
    #endif

    typedef unsigned __int128 sc_u128;

    /* ------------------------------------------------------------------------------
       Multiword unsigned integers: W little-endian 64-bit words (word 0 least significant).
       The kernels below are written once for a word count W and instantiated for W = 1..4,
       so the W = 1 instance compiles to plain 64-bit arithmetic.
       ------------------------------------------------------------------------------ */
    SC_INLINE int scw_cmp(const uint64_t *a, const uint64_t *b, const int W) {
        for (int w = W - 1; w >= 0; --w)
            if (a[w] != b[w]) return a[w] < b[w] ? -1 : 1;
        return 0;
    }
    SC_INLINE void scw_add(uint64_t *a, const uint64_t *b, const int W) {       /* a += b */
        uint64_t carry = 0;
        for (int w = 0; w < W; ++w) {
            uint64_t s = a[w] + carry;
            uint64_t c1 = s < carry;
            a[w] = s + b[w];
            carry = c1 | (a[w] < s);
        }
    }
    SC_INLINE void scw_sub(uint64_t *a, const uint64_t *b, const int W) {       /* a -= b, a >= b */
        uint64_t borrow = 0;
        for (int w = 0; w < W; ++w) {
            uint64_t bw = b[w] + borrow;
            uint64_t out = (bw < borrow) | (a[w] < bw);
            a[w] -= bw;
            borrow = out;
        }
    }
    SC_INLINE void scw_muladd_word(uint64_t *a, uint64_t m, uint64_t add, const int W) {
        sc_u128 carry = add;                                 /* a = a * m + add, truncated */
        for (int w = 0; w < W; ++w) {
            carry += (sc_u128)a[w] * m;
            a[w] = (uint64_t)carry;
            carry >>= 64;
        }
    }
    SC_INLINE uint64_t scw_divmod_word(uint64_t *a, uint64_t m, const int W) {
        if (W == 1) { uint64_t r = a[0] % m; a[0] /= m; return r; }     /* a /= m; a % m */
        sc_u128 r = 0;
        for (int w = W - 1; w >= 0; --w) {
            sc_u128 cur = (r << 64) | a[w];
            a[w] = (uint64_t)(cur / m);
            r = cur % m;
        }
        return (uint64_t)r;
    }
    SC_INLINE void scw_shl(uint64_t *a, int s, const int W) {    /* a <<= s, 0 <= s <= 64 */
        const int ws = s >> 6, bs = s & 63;
        for (int w = W - 1; w >= 0; --w) {
            int src = w - ws;
            uint64_t hi = src >= 0 ? a[src] << bs : 0;
            uint64_t lo = (bs && src >= 1) ? a[src - 1] >> (64 - bs) : 0;
            a[w] = hi | lo;
        }
    }
    SC_INLINE void scw_shr(uint64_t *a, int s, const int W) {    /* a >>= s, 0 <= s <= 64 */
        const int ws = s >> 6, bs = s & 63;
        for (int w = 0; w < W; ++w) {
            int src = w + ws;
            uint64_t lo = src < W ? a[src] >> bs : 0;
            uint64_t hi = (bs && src + 1 < W) ? a[src + 1] << (64 - bs) : 0;
            a[w] = lo | hi;
        }
    }

    /* ------------------------------------------------------------------------------
       Tables of one spherical lattice S(d, r2), built by spreadcode.lattice (see there).
       ------------------------------------------------------------------------------ */
    typedef struct {
        int d, W, natom, tmax, nlevmax;
        const int8_t *atoms;       /* (natom, d): non-increasing rows, ascending lexicographic */
        const uint8_t *pos_lev;    /* (natom, d): level (distinct-value index) of each row entry */
        const uint8_t *conj;       /* (natom, tmax): conjugate partition #{i: a_i >= t}, t = 1.. */
        const uint8_t *nnz;        /* (natom,) non-zero entries */
        const uint8_t *nlev;       /* (natom,) distinct values */
        const int8_t *lev_val;     /* (natom, nlevmax) distinct values, decreasing */
        const uint8_t *lev_mult;   /* (natom, nlevmax) their multiplicities */
        const uint64_t *offsets;   /* (natom + 1, W) first code of each atom; last = count */
    } sc_lattice;

    /* sc_binom[k][n] = C(n, k) (0 when k > n); the 32- and 16-bit copies saturate, so
       they compare exactly against values below their maximum (narrower = more lanes). */
    static uint64_t sc_binom[SC_BINOM_N][SC_BINOM_N];
    static uint32_t sc_binom32[SC_BINOM_N][SC_BINOM_N];
    static uint16_t sc_binom16[SC_BINOM_N][SC_BINOM_N];
    /* sc_byte_mask[b]: byte i is 0xFF when bit i of b is set */
    static uint64_t sc_byte_mask[256];
    static void sc_init_tables(void) {
        for (int n = 0; n < SC_BINOM_N; ++n)
            for (int k = 0; k < SC_BINOM_N; ++k) {
                uint64_t c = k == 0 ? 1 : (n == 0 ? 0 : sc_binom[k - 1][n - 1] + sc_binom[k][n - 1]);
                sc_binom[k][n] = c;
                sc_binom32[k][n] = c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
                sc_binom16[k][n] = c > UINT16_MAX ? UINT16_MAX : (uint16_t)c;
            }
        for (int b = 0; b < 256; ++b) {
            sc_byte_mask[b] = 0;
            for (int i = 0; i < 8; ++i) if (b >> i & 1) sc_byte_mask[b] |= 0xFFULL << (8 * i);
        }
    }

    /* Atoms of S(d, r2) in ascending lexicographic order; writes at most `cap` rows into
       `out` (NULL: count only). Returns the number of atoms, or cap + 1 when there are more. */
    static int64_t sc_atoms_rec(int d, int pos, int rem, int maxv, int8_t *row,
                                int8_t *out, int64_t n, int64_t cap) {
        if (pos == d) {
            if (rem != 0) return n;
            if (n < cap && out) memcpy(out + n * d, row, d);
            return n + 1;
        }
        int slots = d - pos;
        for (int v = 0; v <= maxv && v * v <= rem; ++v) {
            if ((int64_t)slots * v * v < rem) continue;       /* rest cannot reach rem */
            row[pos] = (int8_t)v;
            n = sc_atoms_rec(d, pos + 1, rem - v * v, v, row, out, n, cap);
            if (n > cap) return n;
        }
        return n;
    }
    static int64_t sc_enumerate_atoms(int d, int r2, int8_t *out, int64_t cap) {
        int8_t row[SC_MAX_D];
        int maxv = 0;
        while ((maxv + 1) * (maxv + 1) <= r2) ++maxv;
        return sc_atoms_rec(d, 0, r2, maxv, row, out, 0, cap);
    }

    /* ---- bit masks over coordinate positions ---------------------------------------
       A layer's positions are a 64-bit mask; the j-th free position is the j-th set bit of
       the free mask, so pdep / pext map between entry numbers in F_j and positions. BMI2
       provides them in hardware (used where it is fast); the loops below are the fallback. */
    static uint64_t sc_pdep_soft(uint64_t src, uint64_t mask) {
        uint64_t out = 0;
        for (uint64_t bit = 1; mask; bit <<= 1, mask &= mask - 1)
            if (src & bit) out |= mask & -mask;
        return out;
    }
    static uint64_t sc_pext_soft(uint64_t src, uint64_t mask) {
        uint64_t out = 0;
        for (uint64_t bit = 1; mask; bit <<= 1, mask &= mask - 1)
            if (src & mask & -mask) out |= bit;
        return out;
    }
    #if defined(__x86_64__) && defined(__GNUC__)
    #include <immintrin.h>
    __attribute__((target("bmi2"))) static uint64_t sc_pdep_hw(uint64_t s, uint64_t m) { return _pdep_u64(s, m); }
    __attribute__((target("bmi2"))) static uint64_t sc_pext_hw(uint64_t s, uint64_t m) { return _pext_u64(s, m); }
    #endif
    static uint64_t (*sc_pdep)(uint64_t, uint64_t) = sc_pdep_soft;
    static uint64_t (*sc_pext)(uint64_t, uint64_t) = sc_pext_soft;
    static void sc_init_bits(void) {
    #if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();                  /* microcoded (slow) pdep on AMD before Zen 3 */
        if (__builtin_cpu_supports("bmi2") && !__builtin_cpu_is("amdfam17h")) {
            sc_pdep = sc_pdep_hw;
            sc_pext = sc_pext_hw;
        }
    #endif
    }
    SC_INLINE uint64_t sc_low_bits(int n) { return n >= 64 ? ~0ULL : (1ULL << n) - 1; }

    /* ---- encode: (atom, positions of each layer, negative positions) -> code ---------- */
    SC_INLINE void sc_rank_w(const sc_lattice *L, int a, const uint64_t *layer, uint64_t negative,
                             uint64_t *code, const int W) {
        const int d = L->d, nl = L->nlev[a], nnz = L->nnz[a];
        const int8_t *vals = L->lev_val + (size_t)a * L->nlevmax;
        const uint8_t *mult = L->lev_mult + (size_t)a * L->nlevmax;
        uint64_t acc[SC_MAX_W] = {0};
        uint64_t free_mask = sc_low_bits(d);
        int nfree = d;
        for (int j = 0; j + 1 < nl; ++j) {           /* the last layer is implied */
            uint64_t entries = sc_pext(layer[j], free_mask), rho = 0;
            for (int t = 1; entries; ++t, entries &= entries - 1)
                rho += sc_binom[t][__builtin_ctzll(entries)];
            scw_muladd_word(acc, sc_binom[mult[j]][nfree], rho, W);   /* Horner, radix C(n_j, m_j) */
            free_mask &= ~layer[j];
            nfree -= mult[j];
        }
        const uint64_t nonzero = vals[nl - 1] ? sc_low_bits(d) : sc_low_bits(d) & ~layer[nl - 1];
        scw_shl(acc, nnz, W);
        acc[0] |= sc_pext(negative & nonzero, nonzero);
        scw_add(acc, L->offsets + (size_t)a * W, W);
        memcpy(code, acc, sizeof(uint64_t) * W);
    }

    /* ---- decode: code -> lattice point ------------------------------------------ */
    /* the last atom whose first code is <= code (branch-free binary search) */
    SC_INLINE int sc_find_atom(const sc_lattice *L, const uint64_t *code, const int W) {
        int base = 0, len = L->natom;
        while (len > 1) {
            int half = len >> 1;
            base = scw_cmp(L->offsets + (size_t)(base + half) * W, code, W) <= 0 ? base + half : base;
            len -= half;
        }
        return base;
    }

    /* #{p < width : C(p, i) <= rho}. While rho < C(lim, i) (the colex invariant), no p >= lim
       is counted, so a fixed width >= lim gives max{p < lim : C(p, i) <= rho} + 1 without
       loop bounds that depend on the data; narrow tables put more entries in a vector. */
    SC_INLINE int sc_count_below(uint64_t rho, int i, const int width) {
        int cnt = 0;
        if (rho < UINT16_MAX) {
            const uint16_t *col = sc_binom16[i], r16 = (uint16_t)rho;
            for (int p = 0; p < width; ++p) cnt += col[p] <= r16;
        } else if (rho < UINT32_MAX) {
            const uint32_t *col = sc_binom32[i], r32 = (uint32_t)rho;
            for (int p = 0; p < width; ++p) cnt += col[p] <= r32;
        } else {
            const uint64_t *col = sc_binom[i];
            for (int p = 0; p < width; ++p) cnt += col[p] <= rho;
        }
        return cnt;
    }

    /* The m-subset of {0..n-1} (n <= width) with colex rank rho, as a bit mask. */
    SC_INLINE uint64_t sc_colex_unrank(uint64_t rho, int m, int n, const int width) {
        uint64_t chosen = 0;
        int lim = n;                                   /* the remaining entries lie below lim */
        for (int i = m; i > 1; --i) {
            if (lim == i) return chosen | sc_low_bits(lim);
            lim = sc_count_below(rho, i, width) - 1;   /* max{p < lim : C(p, i) <= rho} */
            rho -= sc_binom[i][lim];
            chosen |= 1ULL << lim;
        }
        return m ? chosen | 1ULL << rho : chosen;      /* C(p, 1) = p */
    }

    SC_INLINE void sc_unrank_w(const sc_lattice *L, const uint64_t *code, int8_t *z, const int W) {
        const int d = L->d;
        const int a = sc_find_atom(L, code, W), nl = L->nlev[a], nnz = L->nnz[a];
        const int8_t *vals = L->lev_val + (size_t)a * L->nlevmax;
        const uint8_t *mult = L->lev_mult + (size_t)a * L->nlevmax;
        uint64_t rem[SC_MAX_W];
        memcpy(rem, code, sizeof(uint64_t) * W);
        scw_sub(rem, L->offsets + (size_t)a * W, W);
        const uint64_t sign = nnz == 64 ? rem[0] : rem[0] & ((1ULL << nnz) - 1);
        scw_shr(rem, nnz, W);
        uint64_t rho[SC_MAX_D];                        /* mixed-radix digits, last first */
        int nfree[SC_MAX_D + 1];
        nfree[0] = d;
        for (int j = 0; j + 1 < nl; ++j) nfree[j + 1] = nfree[j] - mult[j];
        for (int j = nl - 2; j > 0; --j) rho[j] = scw_divmod_word(rem, sc_binom[mult[j]][nfree[j]], W);
        rho[0] = rem[0];
        /* z is built 8 coordinates per word: byte masks select the layer's positions */
        const int nw = (d + 7) >> 3;
        uint64_t zw[SC_MAX_D / 8];
        const uint64_t ones = 0x0101010101010101ULL;
        for (int w = 0; w < nw; ++w) zw[w] = ones * (uint8_t)vals[nl - 1];
        uint64_t free_mask = sc_low_bits(d);
        for (int j = 0; j + 1 < nl; ++j) {
            const uint64_t chosen = d <= 16 ? sc_colex_unrank(rho[j], mult[j], nfree[j], 16)
                                  : d <= 32 ? sc_colex_unrank(rho[j], mult[j], nfree[j], 32)
                                            : sc_colex_unrank(rho[j], mult[j], nfree[j], 64);
            const uint64_t pos = sc_pdep(chosen, free_mask);
            const uint64_t val = ones * (uint8_t)vals[j];
            free_mask &= ~pos;
            for (int w = 0; w < nw; ++w) {
                const uint64_t sel = sc_byte_mask[(pos >> (8 * w)) & 0xFF];
                zw[w] = (zw[w] & ~sel) | (val & sel);
            }
        }
        /* negate the selected (non-zero) bytes: ~x + 1 never carries out of a byte x != 0 */
        const uint64_t nonzero = vals[nl - 1] ? sc_low_bits(d) : sc_low_bits(d) & ~free_mask;
        const uint64_t neg = sc_pdep(sign, nonzero);
        for (int w = 0; w < nw; ++w) {
            const uint64_t sel = sc_byte_mask[(neg >> (8 * w)) & 0xFF];
            zw[w] = (zw[w] ^ sel) + (sel & ones);
        }
        memcpy(z, zw, d);
    }

    #define SC_DISPATCH_W(W, CALL) \\
        switch (W) { case 1: CALL(1); break; case 2: CALL(2); break; \\
                     case 3: CALL(3); break; default: CALL(4); break; }

    static void sc_unrank(const sc_lattice *L, const uint64_t *code, int8_t *z) {
        #define SC_CALL(w) sc_unrank_w(L, code, z, w)
        SC_DISPATCH_W(L->W, SC_CALL)
        #undef SC_CALL
    }
    static void sc_rank(const sc_lattice *L, int a, const uint64_t *layer, uint64_t negative,
                        uint64_t *code) {
        #define SC_CALL(w) sc_rank_w(L, a, layer, negative, code, w)
        SC_DISPATCH_W(L->W, SC_CALL)
        #undef SC_CALL
    }

    /* ---- nearest point: best atom for a small block of vectors -------------------- */
    #define SC_VB 8                                    /* vectors scored together */

    /* For nv <= SC_VB rows of y (row stride d): `order` (nv, d) lists coordinates by
       decreasing |y| (ties: lower index first); best[v] = atom maximising <|y| sorted, atom>. */
    static void sc_best_atoms(const sc_lattice *L, const float *y, int nv, int *best, uint8_t *order) {
        const int d = L->d;
        float P[(SC_MAX_D + 1) * SC_VB];               /* P[c][v]: sum of the c largest |y_v| */
        for (int v = 0; v < SC_VB; ++v) {
            if (v >= nv) { for (int c = 0; c <= d; ++c) P[c * SC_VB + v] = 0.f; continue; }
            const float *yv = y + (size_t)v * d;
            uint64_t key[SC_MAX_D];
            for (int i = 0; i < d; ++i) {
                float f = fabsf(yv[i]);
                uint32_t bits;
                memcpy(&bits, &f, 4);
                key[i] = ((uint64_t)bits << 32) | (uint32_t)(0xFFFFFFFFu - (uint32_t)i);
            }
            uint8_t *ov = order + (size_t)v * d;
            for (int i = 0; i < d; ++i) {
                int r = 0;
                for (int j = 0; j < d; ++j) r += key[j] > key[i];
                ov[r] = (uint8_t)i;
            }
            P[v] = 0.f;
            for (int c = 0; c < d; ++c) P[(c + 1) * SC_VB + v] = P[c * SC_VB + v] + fabsf(yv[ov[c]]);
        }
        float best_s[SC_VB];
        int best_a[SC_VB];
        for (int v = 0; v < SC_VB; ++v) { best_s[v] = -INFINITY; best_a[v] = 0; }
        const int tmax = L->tmax;
        for (int a = 0; a < L->natom; ++a) {
            const uint8_t *cj = L->conj + (size_t)a * tmax;
            const int len = L->atoms[(size_t)a * d];
            float s[SC_VB] = {0};
            for (int t = 0; t < len; ++t) {
                const float *row = P + cj[t] * SC_VB;
                for (int v = 0; v < SC_VB; ++v) s[v] += row[v];
            }
            for (int v = 0; v < SC_VB; ++v) {
                int better = s[v] > best_s[v];
                best_s[v] = better ? s[v] : best_s[v];
                best_a[v] = better ? a : best_a[v];
            }
        }
        for (int v = 0; v < nv; ++v) best[v] = best_a[v];
    }

    static void sc_nearest(const sc_lattice *L, const float *y, int64_t n, int8_t *z, int threads) {
        const int d = L->d;
        const int64_t nblk = (n + SC_VB - 1) / SC_VB;
        #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
        for (int64_t blk = 0; blk < nblk; ++blk) {
            int64_t v0 = blk * SC_VB;
            int nv = (int)(n - v0 < SC_VB ? n - v0 : SC_VB);
            int best[SC_VB];
            uint8_t order[SC_VB * SC_MAX_D];
            sc_best_atoms(L, y + v0 * d, nv, best, order);
            for (int v = 0; v < nv; ++v) {
                const int8_t *atom = L->atoms + (size_t)best[v] * d;
                const float *yv = y + (v0 + v) * d;
                int8_t *zv = z + (v0 + v) * d;
                for (int i = 0; i < d; ++i) {
                    int p = order[v * d + i];
                    zv[p] = yv[p] < 0.f ? (int8_t)-atom[i] : atom[i];
                }
            }
        }
    }

    /* nearest point and its code in one pass (no intermediate lattice point) */
    static void sc_quantize(const sc_lattice *L, const float *y, int64_t n, uint64_t *codes, int threads) {
        const int d = L->d, W = L->W;
        const int64_t nblk = (n + SC_VB - 1) / SC_VB;
        #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
        for (int64_t blk = 0; blk < nblk; ++blk) {
            int64_t v0 = blk * SC_VB;
            int nv = (int)(n - v0 < SC_VB ? n - v0 : SC_VB);
            int best[SC_VB];
            uint8_t order[SC_VB * SC_MAX_D];
            sc_best_atoms(L, y + v0 * d, nv, best, order);
            for (int v = 0; v < nv; ++v) {
                const uint8_t *plev = L->pos_lev + (size_t)best[v] * d;
                const float *yv = y + (v0 + v) * d;
                uint64_t layer[SC_MAX_D] = {0}, negative = 0;
                for (int i = 0; i < d; ++i) layer[plev[i]] |= 1ULL << order[v * d + i];
                for (int p = 0; p < d; ++p) negative |= (uint64_t)(yv[p] < 0.f) << p;
                sc_rank(L, best[v], layer, negative, codes + (v0 + v) * W);
            }
        }
    }

    /* lattice points -> codes. Returns -1, or the first row that is not in S(d, r2). */
    static int64_t sc_encode(const sc_lattice *L, const int8_t *z, int64_t n, int r2,
                             uint64_t *codes, int threads) {
        const int d = L->d, W = L->W, amax = L->atoms[(size_t)(L->natom - 1) * d];
        int64_t bad = n;
        #pragma omp parallel for schedule(static) num_threads(threads) reduction(min:bad)
        for (int64_t v = 0; v < n; ++v) {
            const int8_t *zv = z + v * d;
            int cnt[128] = {0};
            int64_t sq = 0;
            int ok = 1;
            for (int p = 0; p < d; ++p) {
                int x = zv[p] < 0 ? -zv[p] : zv[p];
                if (x > amax) { ok = 0; break; }
                ++cnt[x];
                sq += x * x;
            }
            if (!ok || sq != r2) { if (v < bad) bad = v; continue; }
            int8_t atom[SC_MAX_D];
            int i = 0;
            for (int x = amax; x >= 0; --x)
                for (int c = 0; c < cnt[x]; ++c) atom[i++] = (int8_t)x;
            int lo = 0, hi = L->natom;                 /* the atom row equal to `atom` */
            while (hi - lo > 1) {
                int mid = (lo + hi) >> 1;
                if (memcmp(L->atoms + (size_t)mid * d, atom, d) <= 0) lo = mid; else hi = mid;
            }
            uint8_t levmap[128];
            uint64_t layer[SC_MAX_D] = {0}, negative = 0;
            const int8_t *vals = L->lev_val + (size_t)lo * L->nlevmax;
            for (int j = 0; j < L->nlev[lo]; ++j) levmap[vals[j]] = (uint8_t)j;
            for (int p = 0; p < d; ++p) {
                layer[levmap[zv[p] < 0 ? -zv[p] : zv[p]]] |= 1ULL << p;
                negative |= (uint64_t)(zv[p] < 0) << p;
            }
            sc_rank(L, lo, layer, negative, codes + v * W);
        }
        return bad == n ? -1 : bad;
    }

    /* Returns -1, or the first row whose code is >= count. */
    static int64_t sc_first_invalid(const sc_lattice *L, const uint64_t *codes, int64_t n) {
        const int W = L->W;
        const uint64_t *count = L->offsets + (size_t)L->natom * W;
        for (int64_t v = 0; v < n; ++v)
            if (scw_cmp(codes + v * W, count, W) >= 0) return v;
        return -1;
    }

    static void sc_decode(const sc_lattice *L, const uint64_t *codes, int64_t n, int8_t *z, int threads) {
        const int d = L->d, W = L->W;
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t v = 0; v < n; ++v) sc_unrank(L, codes + v * W, z + v * d);
    }

    /* ------------------------------------------------------------------------------
       Sign codes: bit i of a code (byte i / 8, bit i % 8, least significant first) is 1
       when x_i > 0. Padding bits of the last byte are 0.
       ------------------------------------------------------------------------------ */
    static void sc_sign_pack(const float *x, int64_t n, int d, uint8_t *out, int threads) {
        const int nb = (d + 7) / 8;
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t v = 0; v < n; ++v) {
            const float *xv = x + v * d;
            uint8_t *o = out + v * nb;
            memset(o, 0, nb);
            for (int i = 0; i < d; ++i) o[i >> 3] |= (uint8_t)((xv[i] > 0.f) << (i & 7));
        }
    }
    static void sc_sign_unpack(const uint8_t *codes, int64_t n, int d, float *out, int threads) {
        const int nb = (d + 7) / 8;
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t v = 0; v < n; ++v)
            for (int i = 0; i < d; ++i)
                out[v * d + i] = ((codes[v * nb + (i >> 3)] >> (i & 7)) & 1) ? 1.f : -1.f;
    }
    SC_INLINE int sc_popcount_xor(const uint8_t *a, const uint8_t *b, int nb) {
        int h = 0, i = 0;
        for (; i + 8 <= nb; i += 8) {
            uint64_t x, y;
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            h += __builtin_popcountll(x ^ y);
        }
        for (; i < nb; ++i) h += __builtin_popcount((unsigned)(a[i] ^ b[i]));
        return h;
    }
    /* row-wise Hamming distances; a row of a stride 0 operand is reused */
    static void sc_hamming(const uint8_t *a, int64_t sa, const uint8_t *b, int64_t sb,
                           int64_t n, int nb, int32_t *out, int threads) {
        #pragma omp parallel for schedule(static) num_threads(threads)
        for (int64_t v = 0; v < n; ++v) out[v] = sc_popcount_xor(a + v * sa, b + v * sb, nb);
    }

    /* ------------------------------------------------------------------------------
       Scans: score every (query, code) pair block by block and keep per-query results.
       Threads split the codes into contiguous ranges (or the queries when there are
       too few blocks); each code block is decoded once into a float buffer of (d, SC_BLOCK)
       (layout SC_ZT) and scored against every query of the batch, SC_QG queries at a time.
       ------------------------------------------------------------------------------ */
    #define SC_BLOCK 256
    #define SC_QG 4
    /* element (i, c) of a decoded block: columns in chunks of 16, each chunk (d, 16) contiguous */
    #define SC_ZT(d, i, c) ((((c) >> 4) * (d) + (i)) * 16 + ((c) & 15))
    enum { SC_LATTICE = 0, SC_SIGN_DOT = 1, SC_HAMMING = 2 };
    typedef float sc_v8 __attribute__((vector_size(32)));

    typedef struct {
        int kind, d;
        int64_t n;                   /* codes */
        const sc_lattice *lat;       /* SC_LATTICE */
        const uint64_t *lcodes;
        const uint8_t *scodes;       /* SC_SIGN_DOT, SC_HAMMING: (n, nb) */
        int nb;
        int nq;
        const float *queries;        /* (nq, d) for the dot kinds */
        const uint8_t *qcodes;       /* (nq, nb) for SC_HAMMING */
        float scale2;                /* dot kinds: distance = 2 - <q, code vector> * scale2 */
    } sc_scan;

    /* zT (d, SC_BLOCK) <- code vectors of codes [start, start + cnt), columns zero-padded
       to a multiple of 16 */
    static void sc_prepare_block(const sc_scan *S, int64_t start, int cnt, float *zT) {
        const int d = S->d, padded = (cnt + 15) & ~15;
        if (S->kind == SC_LATTICE) {
            const int W = S->lat->W;
            for (int c = 0; c < cnt; ++c) {
                int8_t z[SC_MAX_D];
                sc_unrank(S->lat, S->lcodes + (start + c) * W, z);
                for (int i = 0; i < d; ++i) zT[SC_ZT(d, i, c)] = (float)z[i];
            }
        } else if (S->kind == SC_SIGN_DOT) {
            for (int c = 0; c < cnt; ++c) {
                const uint8_t *b = S->scodes + (start + c) * S->nb;
                for (int i = 0; i < d; ++i)
                    zT[SC_ZT(d, i, c)] = ((b[i >> 3] >> (i & 7)) & 1) ? 1.f : -1.f;
            }
        } else return;
        for (int i = 0; i < d; ++i)
            for (int c = cnt; c < padded; ++c) zT[SC_ZT(d, i, c)] = 0.f;
    }

    /* dist (SC_QG, SC_BLOCK) <- 2 - <q, column> * s2 for SC_QG queries q (SC_QG, d) and the
       first `cols` (a multiple of 16) columns of zT, in 4 x 16 register tiles; hot[g][c / 16]
       is 0 when none of the 16 distances of query g is <= limit[g]. */
    SC_MULTIVERSION static void sc_dot_tile(const float *q, int d, const float *zT, int cols, float s2,
                                            const float *limit, float *dist, uint8_t *hot) {
        typedef int64_t sc_v4l __attribute__((vector_size(32)));
        for (int c = 0; c < cols; c += 16) {
            sc_v8 acc[SC_QG][2];
            for (int g = 0; g < SC_QG; ++g) acc[g][0] = acc[g][1] = (sc_v8){0};
            for (int i = 0; i < d; ++i) {
                sc_v8 z0, z1;
                memcpy(&z0, zT + SC_ZT(d, i, c), sizeof z0);
                memcpy(&z1, zT + SC_ZT(d, i, c) + 8, sizeof z1);
                for (int g = 0; g < SC_QG; ++g) {
                    const float qi = q[g * d + i];
                    acc[g][0] += qi * z0;
                    acc[g][1] += qi * z1;
                }
            }
            for (int g = 0; g < SC_QG; ++g) {
                const sc_v8 d0 = 2.f - acc[g][0] * s2, d1 = 2.f - acc[g][1] * s2;
                const sc_v8 t = (sc_v8){0} + limit[g];
                const sc_v4l below = (sc_v4l)((d0 <= t) | (d1 <= t));
                memcpy(dist + g * SC_BLOCK + c, &d0, sizeof d0);
                memcpy(dist + g * SC_BLOCK + c + 8, &d1, sizeof d1);
                hot[g * (SC_BLOCK / 16) + c / 16] = (below[0] | below[1] | below[2] | below[3]) != 0;
            }
        }
    }

    /* distances of queries [q0, q0 + nqg) to codes [start, start + cnt): dist (SC_QG, SC_BLOCK),
       and hot (SC_QG, SC_BLOCK / 16) flags marking the groups of 16 with a distance <= limit */
    static void sc_score(const sc_scan *S, const float *zT, int64_t start, int cnt, int q0, int nqg,
                         const float *limit, float *qbuf, float *dist, uint8_t *hot) {
        if (S->kind == SC_HAMMING) {
            for (int g = 0; g < nqg; ++g) {
                const uint8_t *qc = S->qcodes + (size_t)(q0 + g) * S->nb;
                for (int c = 0; c < cnt; ++c)
                    dist[g * SC_BLOCK + c] = (float)sc_popcount_xor(qc, S->scodes + (start + c) * S->nb, S->nb);
                memset(hot + g * (SC_BLOCK / 16), 1, SC_BLOCK / 16);
            }
            return;
        }
        const int d = S->d;                            /* qbuf (SC_QG, d): queries, zero-padded */
        memcpy(qbuf, S->queries + (size_t)q0 * d, sizeof(float) * nqg * d);
        memset(qbuf + (size_t)nqg * d, 0, sizeof(float) * (SC_QG - nqg) * d);
        sc_dot_tile(qbuf, d, zT, (cnt + 15) & ~15, S->scale2, limit, dist, hot);
    }

    SC_INLINE int sc_before(float da, int64_t ia, float db, int64_t ib) {
        return da < db || (da == db && ia < ib);
    }

    /* max-heap of k (distance, id) pairs, ordered by (distance, id); root = worst kept */
    SC_INLINE void sc_heap_offer(float *hd, int64_t *hi, int k, float dist, int64_t id) {
        if (!sc_before(dist, id, hd[0], hi[0])) return;
        int i = 0;
        for (;;) {
            int l = 2 * i + 1;
            if (l >= k) break;
            int c = l;
            if (l + 1 < k && sc_before(hd[l], hi[l], hd[l + 1], hi[l + 1])) c = l + 1;
            if (!sc_before(dist, id, hd[c], hi[c])) break;
            hd[i] = hd[c]; hi[i] = hi[c];
            i = c;
        }
        hd[i] = dist; hi[i] = id;
    }

    typedef struct { float d; int64_t id; } sc_pair;
    static int sc_pair_cmp(const void *x, const void *y) {
        const sc_pair *a = (const sc_pair *)x, *b = (const sc_pair *)y;
        if (sc_before(a->d, a->id, b->d, b->id)) return -1;
        if (sc_before(b->d, b->id, a->d, a->id)) return 1;
        return 0;
    }

    /* growable per-query list of range results */
    typedef struct { sc_pair *e; int64_t n, cap; } sc_list;
    static int sc_list_push(sc_list *l, float d, int64_t id) {
        if (l->n == l->cap) {
            int64_t cap = l->cap ? 2 * l->cap : 16;
            sc_pair *e = (sc_pair *)realloc(l->e, sizeof(sc_pair) * cap);
            if (!e) return -1;
            l->e = e; l->cap = cap;
        }
        l->e[l->n].d = d; l->e[l->n].id = id; ++l->n;
        return 0;
    }

    /* One thread's work: codes [c0, c1) against queries [q0, q1), results into its sink. */
    typedef struct { int64_t c0, c1; int q0, q1, slot; } sc_share;
    typedef struct {
        int k;                      /* > 0: top-k heaps (nq, k) ... */
        float *hd; int64_t *hi;
        float radius;               /* k == 0: range lists (nq) */
        sc_list *lists;
    } sc_sink;

    static sc_share sc_split(const sc_scan *S, int t, int nt, int split_codes) {
        sc_share sh;
        if (split_codes) {
            sh.c0 = S->n * t / nt; sh.c1 = S->n * (t + 1) / nt;
            sh.q0 = 0; sh.q1 = S->nq; sh.slot = t;
        } else {
            sh.c0 = 0; sh.c1 = S->n;
            sh.q0 = (int)((int64_t)S->nq * t / nt); sh.q1 = (int)((int64_t)S->nq * (t + 1) / nt);
            sh.slot = 0;
        }
        return sh;
    }
    static int sc_split_codes(const sc_scan *S, int threads) {
        return S->n >= (int64_t)SC_BLOCK * 2 * threads || S->nq < threads;
    }

    /* Returns 0, or -1 when out of memory. */
    static int sc_scan_share(const sc_scan *S, sc_share sh, const sc_sink *sink) {
        float *zT = (float *)aligned_alloc(64, sizeof(float) * (S->d > 0 ? S->d : 1) * SC_BLOCK);
        float *dist = (float *)aligned_alloc(64, sizeof(float) * SC_QG * SC_BLOCK);
        float *qbuf = (float *)malloc(sizeof(float) * SC_QG * (S->d > 0 ? S->d : 1));
        uint8_t hot[SC_QG * SC_BLOCK / 16];
        float limit[SC_QG];
        int failed = !zT || !dist || !qbuf;
        for (int64_t c0 = sh.c0; c0 < sh.c1 && sh.q1 > sh.q0 && !failed; c0 += SC_BLOCK) {
            int cnt = (int)(sh.c1 - c0 < SC_BLOCK ? sh.c1 - c0 : SC_BLOCK);
            sc_prepare_block(S, c0, cnt, zT);
            for (int q0 = sh.q0; q0 < sh.q1 && !failed; q0 += SC_QG) {
                int nqg = sh.q1 - q0 < SC_QG ? sh.q1 - q0 : SC_QG;
                for (int g = 0; g < SC_QG; ++g)     /* a distance must reach this to count */
                    limit[g] = g >= nqg ? -INFINITY : sink->k ? sink->hd[(size_t)(q0 + g) * sink->k] : sink->radius;
                sc_score(S, zT, c0, cnt, q0, nqg, limit, qbuf, dist, hot);
                for (int g = 0; g < nqg && !failed; ++g) {
                    const float *row = dist + g * SC_BLOCK;
                    const size_t q = (size_t)(q0 + g);
                    float *hd = sink->hd + q * sink->k;
                    int64_t *hi = sink->hi + q * sink->k;
                    for (int c16 = 0; c16 < cnt && !failed; c16 += 16) {
                        if (!hot[g * (SC_BLOCK / 16) + c16 / 16]) continue;
                        const int end = c16 + 16 < cnt ? c16 + 16 : cnt;
                        for (int c = c16; c < end; ++c) {
                            if (sink->k) sc_heap_offer(hd, hi, sink->k, row[c], c0 + c);
                            else if (row[c] <= sink->radius && sc_list_push(sink->lists + q, row[c], c0 + c)) {
                                failed = 1;
                                break;
                            }
                        }
                    }
                }
            }
        }
        free(zT);
        free(dist);
        free(qbuf);
        return failed ? -1 : 0;
    }

    /* Top-k of every query: out_d, out_i (nq, k). Returns 0, or -1 when out of memory. */
    static int sc_scan_topk(const sc_scan *S, int k, int threads, float *out_d, int64_t *out_i) {
        const int split_codes = sc_split_codes(S, threads);
        const int slots = split_codes ? threads : 1;
        const size_t per = (size_t)S->nq * k;
        float *hd = (float *)malloc(sizeof(float) * per * slots);
        int64_t *hi = (int64_t *)malloc(sizeof(int64_t) * per * slots);
        int failed = !hd || !hi;
        int used = 1;
        if (!failed) {
            for (size_t e = 0; e < per * slots; ++e) { hd[e] = INFINITY; hi[e] = INT64_MAX; }
            #pragma omp parallel num_threads(threads) reduction(|:failed)
            {
                const int nt = SC_NUM_THREADS(), t = SC_THREAD_ID();
                if (t == 0) used = nt;
                sc_share sh = sc_split(S, t, nt, split_codes);
                sc_sink sink = {k, hd + per * sh.slot, hi + per * sh.slot, 0.f, NULL};
                failed = sc_scan_share(S, sh, &sink) != 0;
            }
        }
        if (!failed) {
            const int ns = split_codes ? used : 1;
            #pragma omp parallel for schedule(dynamic, 16) num_threads(threads) reduction(|:failed)
            for (int q = 0; q < S->nq; ++q) {
                sc_pair *cand = (sc_pair *)malloc(sizeof(sc_pair) * (size_t)k * ns);
                if (!cand) { failed = 1; continue; }
                for (int s = 0; s < ns; ++s)
                    for (int e = 0; e < k; ++e) {
                        size_t src = per * s + (size_t)q * k + e;
                        cand[s * k + e].d = hd[src];
                        cand[s * k + e].id = hi[src];
                    }
                qsort(cand, (size_t)k * ns, sizeof(sc_pair), sc_pair_cmp);
                for (int e = 0; e < k; ++e) {
                    int pad = cand[e].id == INT64_MAX;
                    out_d[(size_t)q * k + e] = pad ? INFINITY : cand[e].d;
                    out_i[(size_t)q * k + e] = pad ? -1 : cand[e].id;
                }
                free(cand);
            }
        }
        free(hd);
        free(hi);
        return failed ? -1 : 0;
    }

    /* Range search: every code with distance <= radius, gathered per (slot, query). */
    typedef struct { sc_list *lists; int slots, nq; } sc_range_result;

    static void sc_range_free(sc_range_result *R) {
        if (!R->lists) return;
        for (int64_t i = 0; i < (int64_t)R->slots * R->nq; ++i) free(R->lists[i].e);
        free(R->lists);
        R->lists = NULL;
    }
    /* Fills R and the per-query totals lims[q + 1]. Returns 0, or -1 when out of memory. */
    static int sc_scan_range(const sc_scan *S, float radius, int threads, sc_range_result *R,
                             int64_t *lims) {
        const int split_codes = sc_split_codes(S, threads);
        R->slots = split_codes ? threads : 1;
        R->nq = S->nq;
        R->lists = (sc_list *)calloc((size_t)R->slots * (S->nq > 0 ? S->nq : 1), sizeof(sc_list));
        if (!R->lists) return -1;
        int failed = 0;
        #pragma omp parallel num_threads(threads) reduction(|:failed)
        {
            const int nt = SC_NUM_THREADS(), t = SC_THREAD_ID();
            sc_share sh = sc_split(S, t, nt, split_codes);
            sc_sink sink = {0, NULL, NULL, radius, R->lists + (size_t)sh.slot * S->nq};
            failed = sc_scan_share(S, sh, &sink) != 0;
        }
        if (failed) { sc_range_free(R); return -1; }
        lims[0] = 0;
        for (int q = 0; q < S->nq; ++q) {
            int64_t tot = 0;
            for (int s = 0; s < R->slots; ++s) tot += R->lists[(size_t)s * S->nq + q].n;
            lims[q + 1] = lims[q] + tot;
        }
        return 0;
    }
    /* Writes each query's results sorted by (distance, id) and frees R. */
    static void sc_range_finish(sc_range_result *R, const int64_t *lims, int64_t *ids, float *dists,
                                int threads) {
        #pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
        for (int q = 0; q < R->nq; ++q) {
            sc_pair *seg = (sc_pair *)malloc(sizeof(sc_pair) * (size_t)(lims[q + 1] - lims[q] + 1));
            int64_t m = 0;
            for (int s = 0; s < R->slots; ++s) {
                const sc_list *l = R->lists + (size_t)s * R->nq + q;
                if (l->n) memcpy(seg + m, l->e, sizeof(sc_pair) * l->n);
                m += l->n;
            }
            qsort(seg, m, sizeof(sc_pair), sc_pair_cmp);
            for (int64_t e = 0; e < m; ++e) { ids[lims[q] + e] = seg[e].id; dists[lims[q] + e] = seg[e].d; }
            free(seg);
        }
        sc_range_free(R);
    }
    """
    int SC_MAX_D
    int SC_MAX_W
    int SC_BINOM_N
    int SC_LATTICE, SC_SIGN_DOT, SC_HAMMING
    int SC_MAX_THREADS() nogil

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

    ctypedef struct sc_scan:
        int kind, d
        int64_t n
        const sc_lattice *lat
        const uint64_t *lcodes
        const uint8_t *scodes
        int nb
        int nq
        const float *queries
        const uint8_t *qcodes
        float scale2

    ctypedef struct sc_range_result:
        int slots, nq

    void sc_init_tables()
    void sc_init_bits()
    int64_t sc_enumerate_atoms(int d, int r2, int8_t *out, int64_t cap) nogil
    void sc_nearest(const sc_lattice *L, const float *y, int64_t n, int8_t *z, int threads) nogil
    void sc_quantize(const sc_lattice *L, const float *y, int64_t n, uint64_t *codes, int threads) nogil
    int64_t sc_encode(const sc_lattice *L, const int8_t *z, int64_t n, int r2, uint64_t *codes,
                      int threads) nogil
    int64_t sc_first_invalid(const sc_lattice *L, const uint64_t *codes, int64_t n) nogil
    void sc_decode(const sc_lattice *L, const uint64_t *codes, int64_t n, int8_t *z, int threads) nogil
    void sc_sign_pack(const float *x, int64_t n, int d, uint8_t *out, int threads) nogil
    void sc_sign_unpack(const uint8_t *codes, int64_t n, int d, float *out, int threads) nogil
    void sc_hamming(const uint8_t *a, int64_t sa, const uint8_t *b, int64_t sb, int64_t n, int nb,
                    int32_t *out, int threads) nogil
    int sc_scan_topk(const sc_scan *S, int k, int threads, float *D, int64_t *I) nogil
    int sc_scan_range(const sc_scan *S, float radius, int threads, sc_range_result *R,
                      int64_t *lims) nogil
    void sc_range_finish(sc_range_result *R, const int64_t *lims, int64_t *ids, float *dists,
                         int threads) nogil

MAX_DIM = SC_MAX_D
MAX_WORDS = SC_MAX_W
TOPK_HEAP_ENTRIES = 1 << 24       # (distance, id) heap entries of one top-k query batch
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
# Scans (lattice dot, sign dot, Hamming) with top-k and range collection
# ---------------------------------------------------------------------------------------

cdef class Scan:
    """One prepared scan: codes, queries and the scoring rule (see the C sc_scan struct)."""
    cdef sc_scan s
    cdef object keep

    def topk(self, int k, int threads):
        """(distances float32 (nq, k), ids int64 (nq, k)) sorted by (distance, id).

        Queries go in batches whose heaps (batch * k * threads entries) stay below
        TOPK_HEAP_ENTRIES; the codes are decoded once per batch."""
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
                rc = sc_scan_topk(&part, k, threads, &dv[q0, 0], &iv[q0, 0])
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
