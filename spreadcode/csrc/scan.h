/* Scans: the distances of every (query, code) pair for lattice codes (dot product with
   the decoded point), sign codes (dot product with the +-1 vector), Hamming distance and
   decoded vectors, float or int8 rows (squared L2 less the query's own norm), collected as
   the top-k or every result within a radius of each query. */
#ifndef SPREADCODE_SCAN_H
#define SPREADCODE_SCAN_H

#include "common.h"
#include "lattice.h"

enum { SC_LATTICE = 0, SC_SIGN_DOT = 1, SC_HAMMING = 2, SC_FLOAT_L2 = 3, SC_INT8_L2 = 4 };

typedef struct {
    int kind, d;
    int64_t n;                   /* codes */
    const sc_lattice *lat;       /* SC_LATTICE */
    const uint64_t *lcodes;
    const uint8_t *scodes;       /* SC_SIGN_DOT, SC_HAMMING: (n, nb) */
    const float *vectors;        /* SC_FLOAT_L2: (n, d); distance = |x|^2 - 2 <q, x> */
    const uint8_t *rows;         /* SC_INT8_L2: n rows of d + 4 bytes, int8 c (d) then a
                                    float32 scale s: x = s * c; each query q is rounded the
                                    same way (q ~ t * b, t = max|q| / 127) and the distance is
                                    |x|^2 - 2 s t <b, c>, the integer sum exact */
    int nb;
    int nq;
    const float *queries;        /* (nq, d) for the dot and float kinds */
    const uint8_t *qcodes;       /* (nq, nb) for SC_HAMMING */
    float scale2;                /* dot kinds: distance = 2 - <q, code vector> * scale2 */
    int portable;                /* SC_INT8_L2: 1 = the portable kernel even where the CPU
                                    has AVX512-VNNI (the same results; for tests) */
    /* SC_INT8_L2, set by the scan itself: the queries' int8 rows b, SC_INT8_WIDTH(d) bytes
       each (zero-padded), scales t and column sums of b */
    const int8_t *qint8;
    const float *qscale;
    const int32_t *qsum;
} sc_scan;

/* bytes of an int8 row in the SC_INT8_L2 kernels: d rounded up to 4 (one VNNI group) */
#define SC_INT8_WIDTH(d) (((d) + 3) & ~3)

/* The SC_INT8_L2 rows of vectors x (n, d): rows (n, d + 4) bytes, each the d int8
   b = rint(x / t) then the float32 t = max|x| / 127 (b = 0 where t = 0); each query of an
   SC_INT8_L2 scan is rounded the same way. */
SC_API void sc_int8_rows(const float *x, int64_t n, int d, uint8_t *rows, int threads);

/* Top-k of every query: out_d, out_i (nq, k). bound (nq), or NULL for none: only codes at a
   distance <= bound[q] count for query q (a k-th distance already found elsewhere, so that
   a scan of the next part of a collection skips what cannot enter the top-k); slots left
   empty come back as (INFINITY, -1). Returns 0, or -1 when out of memory. */
SC_API int sc_scan_topk(const sc_scan *S, int k, int threads, const float *bound, float *out_d,
                        int64_t *out_i);

/* Range search: every code with distance <= radius, gathered per (slot, query). */
typedef struct sc_list sc_list;
typedef struct { sc_list *lists; int slots, nq; } sc_range_result;
/* Fills R and the per-query totals lims[q + 1]. Returns 0, or -1 when out of memory. */
SC_API int sc_scan_range(const sc_scan *S, float radius, int threads, sc_range_result *R,
                         int64_t *lims);
/* Writes each query's results sorted by (distance, id) and frees R. */
SC_API void sc_range_finish(sc_range_result *R, const int64_t *lims, int64_t *ids, float *dists,
                            int threads);

#endif
