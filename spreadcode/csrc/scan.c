/* Scan kernels (interface in scan.h). */
#include "scan.h"
#include "signs.h"
#if SC_X86_TARGETS
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------------
   Scans: score every (query, code) pair block by block and keep per-query results.
   Threads split the codes into contiguous ranges (or the queries when there are
   too few blocks); each code block is decoded once into a float buffer of (d, SC_BLOCK)
   (layout SC_ZT) and scored against every query of the batch, SC_QG queries at a time.
   ------------------------------------------------------------------------------ */
#define SC_BLOCK 256
#define SC_QG 6
/* element (i, c) of a decoded block: columns in chunks of 16, each chunk (d, 16) contiguous */
#define SC_ZT(d, i, c) ((((c) >> 4) * (d) + (i)) * 16 + ((c) & 15))
typedef float sc_v8 __attribute__((vector_size(32)));

/* byte j of dimension group i4 of column c in an SC_INT8_L2 block for sc_int8_tile_vnni */
#define SC_ZT8(d4, i4, c, j) (((((size_t)(c) >> 4) * (d4) + (i4)) * 16 + ((c) & 15)) * 4 + (j))

static int sc_has_vnni(void);

/* zT (d, SC_BLOCK) <- code vectors of codes [start, start + cnt), columns zero-padded
   to a multiple of 16; SC_FLOAT_L2 also norms (SC_BLOCK) <- their squared norms.
   SC_INT8_L2: norms <- the squared norms of s * c, scales <- s, and zT <- the int8 c as
   floats (layout SC_ZT; sc_int8_tile) or, for sc_int8_tile_vnni, zT's bytes <- c + 128
   (uint8), columns in chunks of 16, dimensions in groups of 4 (SC_ZT8: one chunk's group
   is the 64 bytes one VNNI instruction reads; padding holds 128, c = 0). */
static void sc_prepare_block(const sc_scan *S, int64_t start, int cnt, float *zT, float *norms,
                             float *scales) {
    const int d = S->d, padded = (cnt + 15) & ~15;
    if (S->kind == SC_FLOAT_L2) {
        for (int c = 0; c < cnt; ++c) {
            const float *x = S->vectors + (start + c) * d;
            float norm = 0.f;
            for (int i = 0; i < d; ++i) {
                zT[SC_ZT(d, i, c)] = x[i];
                norm += x[i] * x[i];
            }
            norms[c] = norm;
        }
        for (int c = cnt; c < padded; ++c) norms[c] = INFINITY;
    } else if (S->kind == SC_INT8_L2) {
        const int d4 = SC_INT8_WIDTH(d) / 4, vnni = !S->portable && sc_has_vnni();
        uint8_t *z8 = (uint8_t *)zT;
        if (vnni) memset(z8, 128, (size_t)padded * d4 * 4);
        for (int c = 0; c < cnt; ++c) {
            const uint8_t *row = S->rows + (size_t)(start + c) * (size_t)(d + 4);
            float scale, norm = 0.f;
            memcpy(&scale, row + d, sizeof scale);
            for (int i = 0; i < d; ++i) {
                const float x = scale * (float)(int8_t)row[i];
                if (vnni) z8[SC_ZT8(d4, i >> 2, c, i & 3)] = (uint8_t)(row[i] ^ 0x80);
                else zT[SC_ZT(d, i, c)] = (float)(int8_t)row[i];
                norm += x * x;
            }
            norms[c] = norm;
            scales[c] = scale;
        }
        for (int c = cnt; c < padded; ++c) norms[c] = INFINITY, scales[c] = 0.f;
        if (vnni) return;
    } else if (S->kind == SC_LATTICE) {
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

/* acc[g] <- the sums over dimensions [i0, i1) of q[g][i] times the 16 columns c.. of zT
   (layout SC_ZT) for SC_QG queries q (SC_QG, d), as two vectors of 8 per query: the inner
   loop of sc_dot_tile and sc_int8_tile. */
SC_INLINE void sc_tile_sums(const float *q, int d, const float *zT, int c, int i0, int i1,
                            sc_v8 acc[SC_QG][2]) {
    for (int g = 0; g < SC_QG; ++g) acc[g][0] = acc[g][1] = (sc_v8){0};
    for (int i = i0; i < i1; ++i) {
        sc_v8 z0, z1;
        memcpy(&z0, zT + SC_ZT(d, i, c), sizeof z0);
        memcpy(&z1, zT + SC_ZT(d, i, c) + 8, sizeof z1);
        for (int g = 0; g < SC_QG; ++g) {
            const float qi = q[g * d + i];
            acc[g][0] += qi * z0;
            acc[g][1] += qi * z1;
        }
    }
}

/* dist (SC_QG, SC_BLOCK) <- 2 - <q, column> * s2 for SC_QG queries q (SC_QG, d) and the
   first `cols` (a multiple of 16) columns of zT, or norms[c] - 2 <q, column> when norms is
   not NULL, in 6 x 16 register tiles (12 accumulators, more independent FMAs than 4 x 16:
   2-9 % faster on a 2-core AVX2 EPYC, BENCHMARKS.md run J); hot[g][c / 16] is 0 when none
   of the 16 distances of query g is <= limit[g]. */
SC_MULTIVERSION static void sc_dot_tile(const float *q, int d, const float *zT, int cols, float s2,
                                        const float *norms, const float *limit, float *dist,
                                        uint8_t *hot) {
    typedef int64_t sc_v4l __attribute__((vector_size(32)));
    for (int c = 0; c < cols; c += 16) {
        sc_v8 acc[SC_QG][2];
        sc_tile_sums(q, d, zT, c, 0, d, acc);
        sc_v8 n0 = (sc_v8){0} + 2.f, n1 = n0, m = (sc_v8){0} + s2;
        if (norms) {
            memcpy(&n0, norms + c, sizeof n0);
            memcpy(&n1, norms + c + 8, sizeof n1);
            m = (sc_v8){0} + 2.f;
        }
        for (int g = 0; g < SC_QG; ++g) {
            const sc_v8 d0 = n0 - acc[g][0] * m, d1 = n1 - acc[g][1] * m;
            const sc_v8 t = (sc_v8){0} + limit[g];
            const sc_v4l below = (sc_v4l)((d0 <= t) | (d1 <= t));
            memcpy(dist + g * SC_BLOCK + c, &d0, sizeof d0);
            memcpy(dist + g * SC_BLOCK + c + 8, &d1, sizeof d1);
            hot[g * (SC_BLOCK / 16) + c / 16] = (below[0] | below[1] | below[2] | below[3]) != 0;
        }
    }
}

/* One (query, chunk of 16 codes) of an SC_INT8_L2 tile from the exact integer sums
   dot[l] = <b, c_l>: dist[l] = norms[l] - (2 t scales[l]) dot[l] in one fused multiply-add
   (a single rounding, as sc_int8_tile_vnni's), so that every kernel gives the same float
   (on an x86 CPU without FMA, the "default" clone, fmaf is a slower library call);
   returns whether one is <= limit. */
SC_INLINE int sc_int8_finish(const int32_t *dot, float qscale2, const float *norms,
                             const float *scales, float limit, float *dist) {
    int below = 0;
    for (int l = 0; l < 16; ++l) {
        dist[l] = __builtin_fmaf(-(qscale2 * scales[l]), (float)dot[l], norms[l]);
        below |= dist[l] <= limit;
    }
    return below;
}

/* The SC_INT8_L2 tile without VNNI: dist (SC_QG, SC_BLOCK) and hot as in sc_dot_tile, for
   SC_QG int8 query rows b as floats (SC_QG, d) and their scales qs, against the first `cols` (a
   multiple of 16) columns of zT, the rows' int8 c as floats (layout SC_ZT). The sums run
   in float over slices of SC_INT8_SLICE dimensions, where every partial sum is an integer
   below 2^24 (127 * 127 * 1024), hence exact in any order, and add up in int32. */
#define SC_INT8_SLICE 1024
SC_MULTIVERSION static void sc_int8_tile(const float *b, const float *qs, int d,
                                         const float *zT, int cols, const float *norms,
                                         const float *scales, const float *limit, float *dist,
                                         uint8_t *hot) {
    for (int c = 0; c < cols; c += 16) {
        int32_t dot[SC_QG][16] = {{0}};
        for (int i0 = 0; i0 < d; i0 += SC_INT8_SLICE) {
            const int i1 = d - i0 < SC_INT8_SLICE ? d : i0 + SC_INT8_SLICE;
            sc_v8 acc[SC_QG][2];
            sc_tile_sums(b, d, zT, c, i0, i1, acc);
            for (int g = 0; g < SC_QG; ++g)
                for (int l = 0; l < 8; ++l) {
                    dot[g][l] += (int32_t)acc[g][0][l];
                    dot[g][l + 8] += (int32_t)acc[g][1][l];
                }
        }
        for (int g = 0; g < SC_QG; ++g)
            hot[g * (SC_BLOCK / 16) + c / 16] = (uint8_t)sc_int8_finish(
                dot[g], 2.f * qs[g], norms + c, scales + c, limit[g], dist + g * SC_BLOCK + c);
    }
}

#if SC_X86_TARGETS
/* sc_int8_tile with AVX512-VNNI on the block's bytes (SC_ZT8): one vpdpbusd multiplies a
   chunk's group of 4 dimensions (16 codes x 4 bytes, c + 128) by 4 bytes of a query and
   adds them into 16 int32 sums (64 multiply-adds, 4x the float tile's 16 per
   instruction); the 128 is taken back as 128 * sum(b). sc_int8_finish's arithmetic in
   vectors (the same integer sums, the same fused multiply-add: the same floats). */
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void sc_int8_tile_vnni(const int8_t *b, const float *qs, const int32_t *qsum, int dp,
                              const uint8_t *z8, int cols, const float *norms,
                              const float *scales, const float *limit, float *dist,
                              uint8_t *hot) {
    const int d4 = dp / 4;
    for (int c = 0; c < cols; c += 16) {
        const uint8_t *z = z8 + SC_ZT8(d4, 0, c, 0);
        __m512i acc[SC_QG];
        for (int g = 0; g < SC_QG; ++g) acc[g] = _mm512_setzero_si512();
        for (int i4 = 0; i4 < d4; ++i4) {
            const __m512i group = _mm512_loadu_si512((const void *)(z + (size_t)i4 * 64));
            for (int g = 0; g < SC_QG; ++g) {
                int32_t b4;
                memcpy(&b4, b + g * dp + i4 * 4, sizeof b4);
                acc[g] = _mm512_dpbusd_epi32(acc[g], group, _mm512_set1_epi32(b4));
            }
        }
        const __m512 s = _mm512_loadu_ps(scales + c), n = _mm512_loadu_ps(norms + c);
        for (int g = 0; g < SC_QG; ++g) {
            const __m512i dot = _mm512_sub_epi32(acc[g], _mm512_set1_epi32(128 * qsum[g]));
            const __m512 w = _mm512_mul_ps(_mm512_set1_ps(2.f * qs[g]), s);
            const __m512 f = _mm512_fnmadd_ps(w, _mm512_cvtepi32_ps(dot), n);
            _mm512_storeu_ps(dist + g * SC_BLOCK + c, f);
            hot[g * (SC_BLOCK / 16) + c / 16] =
                _mm512_cmp_ps_mask(f, _mm512_set1_ps(limit[g]), _CMP_LE_OQ) != 0;
        }
    }
}
#endif

/* Whether this CPU runs sc_int8_tile_vnni (AVX512-VNNI and BW, as the compiler's runtime
   check reports them); asked once, before any scan's threads start. */
static int sc_has_vnni(void) {
#if SC_X86_TARGETS
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    }
    return has;
#else
    return 0;
#endif
}

/* One vector x (d) rounded to int8 as the SC_INT8_L2 kernels hold their rows and queries:
   returns t = max|x| / 127 and writes b = rint(x / t) (0 where t = 0), x ~ t * b. */
SC_INLINE float int8_round_row(const float *x, int64_t d, int8_t *b) {
    float top = 0.f;
    for (int64_t i = 0; i < d; ++i) top = fabsf(x[i]) > top ? fabsf(x[i]) : top;
    const float scale = top / 127.f;
    for (int64_t i = 0; i < d; ++i) b[i] = scale > 0.f ? (int8_t)lrintf(x[i] / scale) : 0;
    return scale;
}

void sc_int8_rows(const float *x, int64_t n, int d, uint8_t *rows, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        uint8_t *row = rows + i * (int64_t)(d + 4);
        const float scale = int8_round_row(x + i * (int64_t)d, d, (int8_t *)row);
        memcpy(row + d, &scale, sizeof scale);
    }
}

/* T = *S with, for SC_INT8_L2, its queries rounded to int8 rows (int8_round_row, as
   sc_int8_rows rounds vectors): qint8,
   qscale, qsum, and T->queries replaced by the rows b as floats (what sc_int8_tile reads);
   release with sc_int8_queries_free. Returns 0, or -1 when out of memory. */
static int sc_int8_queries(const sc_scan *S, sc_scan *T) {
    *T = *S;
    if (S->kind != SC_INT8_L2) return 0;
    sc_has_vnni();
    const int d = S->d, dp = SC_INT8_WIDTH(d);
    const size_t nq = S->nq > 0 ? (size_t)S->nq : 1;
    int8_t *b = (int8_t *)calloc(nq * (dp > 0 ? dp : 4), 1);
    float *bf = (float *)calloc(nq * (d > 0 ? d : 1), sizeof(float));
    float *t = (float *)malloc(sizeof(float) * nq);
    int32_t *sums = (int32_t *)malloc(sizeof(int32_t) * nq);
    if (!b || !bf || !t || !sums) {
        free(b); free(bf); free(t); free(sums);
        return -1;
    }
    for (int q = 0; q < S->nq; ++q) {
        int8_t *bq = b + (size_t)q * dp;
        t[q] = int8_round_row(S->queries + (size_t)q * d, d, bq);
        int32_t sum = 0;
        for (int64_t i = 0; i < d; ++i) {
            bf[(size_t)q * d + i] = (float)bq[i];
            sum += bq[i];
        }
        sums[q] = sum;
    }
    T->qint8 = b; T->qscale = t; T->qsum = sums; T->queries = bf;
    return 0;
}
static void sc_int8_queries_free(sc_scan *T) {
    if (T->kind != SC_INT8_L2) return;
    free((void *)T->qint8); free((void *)T->qscale); free((void *)T->qsum);
    free((void *)T->queries);
}

/* distances of queries [q0, q0 + nqg) to codes [start, start + cnt): dist (SC_QG, SC_BLOCK),
   and hot (SC_QG, SC_BLOCK / 16) flags marking the groups of 16 with a distance <= limit */
static void sc_score(const sc_scan *S, const float *zT, const float *norms, const float *scales,
                     int64_t start, int cnt, int q0, int nqg, const float *limit, float *qbuf,
                     float *dist, uint8_t *hot) {
    if (S->kind == SC_HAMMING) {
        for (int g = 0; g < nqg; ++g) {
            const uint8_t *qc = S->qcodes + (size_t)(q0 + g) * S->nb;
            for (int c = 0; c < cnt; ++c)
                dist[g * SC_BLOCK + c] = (float)sc_popcount_xor(qc, S->scodes + (start + c) * S->nb, S->nb);
            memset(hot + g * (SC_BLOCK / 16), 1, SC_BLOCK / 16);
        }
        return;
    }
    if (S->kind == SC_INT8_L2) {    /* qbuf: the int8 query rows, as bytes (SC_QG, dp) for
                                       VNNI, else as floats (SC_QG, d); zero-padded */
        const int d = S->d, dp = SC_INT8_WIDTH(d);
        float qs[SC_QG] = {0};
        int32_t qsum[SC_QG] = {0};
        memcpy(qs, S->qscale + q0, sizeof(float) * nqg);
        memcpy(qsum, S->qsum + q0, sizeof(int32_t) * nqg);
#if SC_X86_TARGETS
        if (!S->portable && sc_has_vnni()) {
            int8_t *b = (int8_t *)qbuf;
            memcpy(b, S->qint8 + (size_t)q0 * dp, (size_t)nqg * dp);
            memset(b + (size_t)nqg * dp, 0, (size_t)(SC_QG - nqg) * dp);
            sc_int8_tile_vnni(b, qs, qsum, dp, (const uint8_t *)zT, (cnt + 15) & ~15, norms,
                              scales, limit, dist, hot);
            return;
        }
#endif
        memcpy(qbuf, S->queries + (size_t)q0 * d, sizeof(float) * nqg * d);
        memset(qbuf + (size_t)nqg * d, 0, sizeof(float) * (SC_QG - nqg) * d);
        sc_int8_tile(qbuf, qs, d, zT, (cnt + 15) & ~15, norms, scales, limit, dist, hot);
        return;
    }
    const int d = S->d;                            /* qbuf (SC_QG, d): queries, zero-padded */
    memcpy(qbuf, S->queries + (size_t)q0 * d, sizeof(float) * nqg * d);
    memset(qbuf + (size_t)nqg * d, 0, sizeof(float) * (SC_QG - nqg) * d);
    sc_dot_tile(qbuf, d, zT, (cnt + 15) & ~15, S->scale2,
                S->kind == SC_FLOAT_L2 || S->kind == SC_INT8_L2 ? norms : NULL, limit, dist, hot);
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
struct sc_list { sc_pair *e; int64_t n, cap; };
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
    float norms[SC_BLOCK], scales[SC_BLOCK];
    float *qbuf = (float *)malloc(sizeof(float) * SC_QG * (S->d > 0 ? S->d + 3 : 1));
    uint8_t hot[SC_QG * SC_BLOCK / 16];
    float limit[SC_QG];
    int failed = !zT || !dist || !qbuf;
    for (int64_t c0 = sh.c0; c0 < sh.c1 && sh.q1 > sh.q0 && !failed; c0 += SC_BLOCK) {
        int cnt = (int)(sh.c1 - c0 < SC_BLOCK ? sh.c1 - c0 : SC_BLOCK);
        sc_prepare_block(S, c0, cnt, zT, norms, scales);
        for (int q0 = sh.q0; q0 < sh.q1 && !failed; q0 += SC_QG) {
            int nqg = sh.q1 - q0 < SC_QG ? sh.q1 - q0 : SC_QG;
            for (int g = 0; g < SC_QG; ++g)     /* a distance must reach this to count */
                limit[g] = g >= nqg ? -INFINITY : sink->k ? sink->hd[(size_t)(q0 + g) * sink->k] : sink->radius;
            sc_score(S, zT, norms, scales, c0, cnt, q0, nqg, limit, qbuf, dist, hot);
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

int sc_scan_topk(const sc_scan *S, int k, int threads, const float *bound, float *out_d,
                 int64_t *out_i) {
    sc_scan T;
    if (sc_int8_queries(S, &T)) return -1;
    S = &T;
    const int split_codes = sc_split_codes(S, threads);
    const int slots = split_codes ? threads : 1;
    const size_t per = (size_t)S->nq * k;
    float *hd = (float *)malloc(sizeof(float) * per * slots);
    int64_t *hi = (int64_t *)malloc(sizeof(int64_t) * per * slots);
    int failed = !hd || !hi;
    int used = 1;
    if (!failed) {
        /* empty slots hold (bound, INT64_MAX): a code at the bound itself still enters */
        for (size_t e = 0; e < per * slots; ++e) {
            hd[e] = bound ? bound[(e % per) / k] : INFINITY;
            hi[e] = INT64_MAX;
        }
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
    sc_int8_queries_free(&T);
    return failed ? -1 : 0;
}


static void sc_range_free(sc_range_result *R) {
    if (!R->lists) return;
    for (int64_t i = 0; i < (int64_t)R->slots * R->nq; ++i) free(R->lists[i].e);
    free(R->lists);
    R->lists = NULL;
}
int sc_scan_range(const sc_scan *S, float radius, int threads, sc_range_result *R,
                  int64_t *lims) {
    sc_scan T;
    if (sc_int8_queries(S, &T)) return -1;
    S = &T;
    const int split_codes = sc_split_codes(S, threads);
    R->slots = split_codes ? threads : 1;
    R->nq = S->nq;
    R->lists = (sc_list *)calloc((size_t)R->slots * (S->nq > 0 ? S->nq : 1), sizeof(sc_list));
    if (!R->lists) {
        sc_int8_queries_free(&T);
        return -1;
    }
    int failed = 0;
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        const int nt = SC_NUM_THREADS(), t = SC_THREAD_ID();
        sc_share sh = sc_split(S, t, nt, split_codes);
        sc_sink sink = {0, NULL, NULL, radius, R->lists + (size_t)sh.slot * S->nq};
        failed = sc_scan_share(S, sh, &sink) != 0;
    }
    sc_int8_queries_free(&T);
    if (failed) { sc_range_free(R); return -1; }
    lims[0] = 0;
    for (int q = 0; q < S->nq; ++q) {
        int64_t tot = 0;
        for (int s = 0; s < R->slots; ++s) tot += R->lists[(size_t)s * S->nq + q].n;
        lims[q + 1] = lims[q] + tot;
    }
    return 0;
}
void sc_range_finish(sc_range_result *R, const int64_t *lims, int64_t *ids, float *dists,
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
