/* Scan kernels (interface in scan.h). */
#include "scan.h"
#include "signs.h"

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

/* zT (d, SC_BLOCK) <- code vectors of codes [start, start + cnt), columns zero-padded
   to a multiple of 16; SC_FLOAT_L2 and SC_INT8_L2 also norms (SC_BLOCK) <- their squared
   norms (of the vectors as scanned: an int8 row's s * c) */
static void sc_prepare_block(const sc_scan *S, int64_t start, int cnt, float *zT, float *norms) {
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
        for (int c = 0; c < cnt; ++c) {
            const uint8_t *row = S->rows + (size_t)(start + c) * (size_t)(d + 4);
            float scale, norm = 0.f;
            memcpy(&scale, row + d, sizeof scale);
            for (int i = 0; i < d; ++i) {
                const float x = scale * (float)(int8_t)row[i];
                zT[SC_ZT(d, i, c)] = x;
                norm += x * x;
            }
            norms[c] = norm;
        }
        for (int c = cnt; c < padded; ++c) norms[c] = INFINITY;
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

/* distances of queries [q0, q0 + nqg) to codes [start, start + cnt): dist (SC_QG, SC_BLOCK),
   and hot (SC_QG, SC_BLOCK / 16) flags marking the groups of 16 with a distance <= limit */
static void sc_score(const sc_scan *S, const float *zT, const float *norms, int64_t start,
                     int cnt, int q0, int nqg, const float *limit, float *qbuf, float *dist,
                     uint8_t *hot) {
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
    float norms[SC_BLOCK];
    float *qbuf = (float *)malloc(sizeof(float) * SC_QG * (S->d > 0 ? S->d : 1));
    uint8_t hot[SC_QG * SC_BLOCK / 16];
    float limit[SC_QG];
    int failed = !zT || !dist || !qbuf;
    for (int64_t c0 = sh.c0; c0 < sh.c1 && sh.q1 > sh.q0 && !failed; c0 += SC_BLOCK) {
        int cnt = (int)(sh.c1 - c0 < SC_BLOCK ? sh.c1 - c0 : SC_BLOCK);
        sc_prepare_block(S, c0, cnt, zT, norms);
        for (int q0 = sh.q0; q0 < sh.q1 && !failed; q0 += SC_QG) {
            int nqg = sh.q1 - q0 < SC_QG ? sh.q1 - q0 : SC_QG;
            for (int g = 0; g < SC_QG; ++g)     /* a distance must reach this to count */
                limit[g] = g >= nqg ? -INFINITY : sink->k ? sink->hd[(size_t)(q0 + g) * sink->k] : sink->radius;
            sc_score(S, zT, norms, c0, cnt, q0, nqg, limit, qbuf, dist, hot);
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
