/* Greedy residual encoding in one call per batch (interface in greedy.h). */
#include "greedy.h"

#if SC_X86_TARGETS
SC_INLINE int sc_imax(int a, int b) { return a > b ? a : b; }

int sc_greedy_encode(const sc_greedy_stage *stages, int nstages, const float *xs,
                     int64_t n, int d_in, int threads) {
    int widest = 0, widest_in = 0, widest_d = 0;
    for (int s = 0; s < nstages; ++s) {
        const sc_greedy_stage *S = stages + s;
        widest_d = sc_imax(widest_d, S->lattice->d);
        widest_in = sc_imax(widest_in, S->f[0].k);
        for (int l = 0; l < S->f_layers; ++l) widest = sc_imax(widest, S->f[l].m);
        if (S->g) {
            widest_in = sc_imax(widest_in, S->g[0].k);
            for (int l = 0; l < S->g_layers; ++l) widest = sc_imax(widest, S->g[l].m);
        }
    }
    int64_t tile_rows;
    const int64_t tiles = sc_int8_tiles(n, threads, &tile_rows);
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        sc_int8_scratch scratch;
        int ok = sc_int8_scratch_init(&scratch, tile_rows, widest) == 0;
        float *xh = malloc((size_t)(tile_rows * d_in) * sizeof(float));
        /* an MLP's outputs: f_m's (d_m) or g_m's (d_in) */
        float *out = malloc((size_t)(tile_rows * sc_imax(d_in, widest_d)) * sizeof(float));
        uint8_t *rows = malloc((size_t)(tile_rows * widest_in));
        float *row_scale = malloc((size_t)tile_rows * sizeof(float));
        int8_t *z = malloc((size_t)(tile_rows * widest_d));
        float *unit = malloc((size_t)(tile_rows * widest_d) * sizeof(float));
        ok = ok && xh && out && rows && row_scale && z && unit;
        if (!ok) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t r0 = t * tile_rows;
            const int count = sc_int8_tile_count(t, tile_rows, n);
            if (!count || !ok) continue;
            const float *x = xs + r0 * d_in;
            for (int s = 0; s < nstages; ++s) {
                const sc_greedy_stage *S = stages + s;
                const int d = S->lattice->d, kf = S->f[0].k, last = s == nstages - 1;
                for (int64_t r = 0; r < count; ++r)   /* x, then [x − x̂, x̂] */
                    sc_quantize_row(x + r * d_in, d_in, s ? xh + r * d_in : NULL, s ? d_in : 0,
                                    1, 1, rows + r * kf, row_scale + r);
                sc_int8_mlp_tile(S->f, S->f_layers, rows, row_scale, count, out, &scratch);
                uint64_t *codes = S->codes + r0;
                sc_nearest_rows(S->lattice, out, count, last ? NULL : z, codes);
                if (last) break;
                if (S->table) {                       /* x̂ = g_0's row of the point */
                    for (int64_t r = 0; r < count; ++r)
                        memcpy(xh + r * d_in, S->table + codes[r] * d_in,
                               (size_t)d_in * sizeof(float));
                    continue;
                }
                for (int64_t i = 0; i < (int64_t)count * d; ++i) unit[i] = (float)z[i] * S->unit;
                const int kg = S->g[0].k;
                for (int64_t r = 0; r < count; ++r)   /* z, then [z, x̂] */
                    sc_quantize_row(unit + r * d, d, s ? xh + r * d_in : NULL, s ? d_in : 0,
                                    0, 1, rows + r * kg, row_scale + r);
                sc_int8_mlp_tile(S->g, S->g_layers, rows, row_scale, count, out, &scratch);
                if (s == 0)
                    memcpy(xh, out, (size_t)(count * d_in) * sizeof(float));
                else
                    for (int64_t i = 0; i < (int64_t)count * d_in; ++i) xh[i] += out[i];
            }
        }
        sc_int8_scratch_free(&scratch);
        free(xh);
        free(out);
        free(rows);
        free(row_scale);
        free(z);
        free(unit);
    }
    return failed ? -1 : 0;
}
#else
int sc_greedy_encode(const sc_greedy_stage *stages, int nstages, const float *xs,
                     int64_t n, int d_in, int threads) {
    (void)stages; (void)nstages; (void)xs; (void)n; (void)d_in; (void)threads;
    return -2;
}
#endif
