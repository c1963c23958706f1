/* Lattice kernels (interface in lattice.h): the tables they share, pdep / pext, rank and
   unrank for 1..SC_MAX_W code words, nearest point, encode and decode. */
#include "lattice.h"
#include "words.h"

/* sc_binom[k][n] = C(n, k) (0 when k > n); the 32- and 16-bit copies saturate, so
   they compare exactly against values below their maximum (narrower = more lanes). */
static uint64_t sc_binom[SC_BINOM_N][SC_BINOM_N];
static uint32_t sc_binom32[SC_BINOM_N][SC_BINOM_N];
static uint16_t sc_binom16[SC_BINOM_N][SC_BINOM_N];
/* sc_byte_mask[b]: byte i is 0xFF when bit i of b is set */
static uint64_t sc_byte_mask[256];
void sc_init_tables(void) {
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
int64_t sc_enumerate_atoms(int d, int r2, int8_t *out, int64_t cap) {
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
void sc_init_bits(void) {
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

#define SC_DISPATCH_W(W, CALL) \
    switch (W) { case 1: CALL(1); break; case 2: CALL(2); break; \
                 case 3: CALL(3); break; default: CALL(4); break; }

void sc_unrank(const sc_lattice *L, const uint64_t *code, int8_t *z) {
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

/* The nearest points of nv <= SC_VB rows of y (n, d): z (nv, d) <- the points when z is
   given, codes (nv, W) <- their codes when codes is (either or both). */
static void sc_nearest_block(const sc_lattice *L, const float *y, int nv, int8_t *z,
                             uint64_t *codes) {
    const int d = L->d, W = L->W;
    int best[SC_VB];
    uint8_t order[SC_VB * SC_MAX_D];
    sc_best_atoms(L, y, nv, best, order);
    for (int v = 0; v < nv; ++v) {
        const float *yv = y + (size_t)v * d;
        const uint8_t *ov = order + (size_t)v * d;
        if (z) {                     /* the atom's entries at the positions `order`, y's signs */
            const int8_t *atom = L->atoms + (size_t)best[v] * d;
            int8_t *zv = z + (size_t)v * d;
            for (int i = 0; i < d; ++i) {
                int p = ov[i];
                zv[p] = yv[p] < 0.f ? (int8_t)-atom[i] : atom[i];
            }
        }
        if (codes) {                 /* the positions of each layer and the negative ones */
            const uint8_t *plev = L->pos_lev + (size_t)best[v] * d;
            uint64_t layer[SC_MAX_D] = {0}, negative = 0;
            for (int i = 0; i < d; ++i) layer[plev[i]] |= 1ULL << ov[i];
            for (int p = 0; p < d; ++p) negative |= (uint64_t)(yv[p] < 0.f) << p;
            sc_rank(L, best[v], layer, negative, codes + (size_t)v * W);
        }
    }
}

void sc_nearest_rows(const sc_lattice *L, const float *y, int64_t n, int8_t *z, uint64_t *codes) {
    const int d = L->d, W = L->W;
    for (int64_t v0 = 0; v0 < n; v0 += SC_VB)
        sc_nearest_block(L, y + v0 * d, (int)(n - v0 < SC_VB ? n - v0 : SC_VB),
                         z ? z + v0 * d : NULL, codes ? codes + v0 * W : NULL);
}

/* sc_nearest_rows over SC_VB-row blocks in parallel */
static void sc_nearest_blocks(const sc_lattice *L, const float *y, int64_t n, int8_t *z,
                              uint64_t *codes, int threads) {
    const int d = L->d, W = L->W;
    const int64_t nblk = (n + SC_VB - 1) / SC_VB;
    #pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
    for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t v0 = blk * SC_VB;
        sc_nearest_block(L, y + v0 * d, (int)(n - v0 < SC_VB ? n - v0 : SC_VB),
                         z ? z + v0 * d : NULL, codes ? codes + v0 * W : NULL);
    }
}

void sc_nearest(const sc_lattice *L, const float *y, int64_t n, int8_t *z, int threads) {
    sc_nearest_blocks(L, y, n, z, NULL, threads);
}

void sc_quantize(const sc_lattice *L, const float *y, int64_t n, uint64_t *codes, int threads) {
    sc_nearest_blocks(L, y, n, NULL, codes, threads);
}

int64_t sc_encode(const sc_lattice *L, const int8_t *z, int64_t n, int r2,
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

int64_t sc_first_invalid(const sc_lattice *L, const uint64_t *codes, int64_t n) {
    const int W = L->W;
    const uint64_t *count = L->offsets + (size_t)L->natom * W;
    for (int64_t v = 0; v < n; ++v)
        if (scw_cmp(codes + v * W, count, W) >= 0) return v;
    return -1;
}

void sc_decode(const sc_lattice *L, const uint64_t *codes, int64_t n, int8_t *z, int threads) {
    const int d = L->d, W = L->W;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t v = 0; v < n; ++v) sc_unrank(L, codes + v * W, z + v * d);
}
