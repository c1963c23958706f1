/* Row-scaled int8 kernels (interface in int8.h). Rounding is to nearest, halves away from
   zero for signed rows and up for the unsigned ones: the same integers on every machine for
   the same floats. One row per call of the (AVX2-cloned) row functions, rows in parallel.
   Indices are int64_t: Python's -fwrapv makes int indices wrap, which keeps these loops
   from vectorizing (5× slower). */
#include "int8.h"

#define SC_LANES 16  /* independent maxima per row, so that the reductions vectorize */
/* the row kernels also get an AVX-512 clone: the fused MLP runs them as its epilogues */
#if SC_X86_TARGETS
#define SC_ROWS_MULTIVERSION \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SC_ROWS_MULTIVERSION
#endif

SC_INLINE float sc_max(float a, float b) { return a > b ? a : b; }

/* y[j] of sc_dequantize for one row's sums acc */
SC_INLINE float layer_output(const int32_t *acc, int64_t j, float row_scale,
                             const float *col_scale, const int32_t *col_offset,
                             const float *bias) {
    return (float)(acc[j] + col_offset[j]) * (row_scale * col_scale[j]) + bias[j];
}

/* flip 0x80 stores q + 128 as uint8 (the first layer's rows for the VNNI products) */
SC_ROWS_MULTIVERSION static void quantize_row(const float *x, int k, uint8_t flip, uint8_t *out,
                                              float *scale) {
    float lanes[SC_LANES] = {0};
    int64_t j = 0;
    for (; j + SC_LANES <= k; j += SC_LANES)
        for (int64_t l = 0; l < SC_LANES; ++l) lanes[l] = sc_max(lanes[l], fabsf(x[j + l]));
    float top = 0.f;
    for (; j < k; ++j) top = sc_max(top, fabsf(x[j]));
    for (int64_t l = 0; l < SC_LANES; ++l) top = sc_max(top, lanes[l]);
    const float inv = top > 0.f ? 127.f / top : 0.f;
    for (j = 0; j < k; ++j) {
        const float v = x[j] * inv;  /* |v| <= 127: truncating |v| + 0.5 rounds half away */
        const int q = (int)(fabsf(v) + 0.5f);
        out[j] = (uint8_t)(v < 0.f ? -q : q) ^ flip;
    }
    *scale = top / 127.f;
}

SC_ROWS_MULTIVERSION static void dequantize_row(const int32_t *acc, int m, float row_scale,
                                                const float *col_scale,
                                                const int32_t *col_offset, const float *bias,
                                                float *out) {
    for (int64_t j = 0; j < m; ++j)
        out[j] = layer_output(acc, j, row_scale, col_scale, col_offset, bias);
}

/* flip 0x80 stores u - 128 as int8 (the rows int8_products reads), 0 stores u as uint8 (the
   rows the VNNI products read): the same bits but the top one */
SC_ROWS_MULTIVERSION static void requantize_relu_row(const int32_t *acc, int m,
                                                     float row_scale, const float *col_scale,
                                                     const int32_t *col_offset,
                                                     const float *bias, uint8_t flip,
                                                     uint8_t *out, float *out_scale) {
    float y[m];  /* m <= SC_INT8_MAX_WIDTH: at most 64 KiB of stack */
    float lanes[SC_LANES] = {0};
    int64_t j = 0;
    for (; j + SC_LANES <= m; j += SC_LANES)
        for (int64_t l = 0; l < SC_LANES; ++l) {
            y[j + l] = layer_output(acc, j + l, row_scale, col_scale, col_offset, bias);
            lanes[l] = sc_max(lanes[l], y[j + l]);
        }
    float top = 0.f;
    for (; j < m; ++j) {
        y[j] = layer_output(acc, j, row_scale, col_scale, col_offset, bias);
        top = sc_max(top, y[j]);
    }
    for (int64_t l = 0; l < SC_LANES; ++l) top = sc_max(top, lanes[l]);
    const float inv = top > 0.f ? 255.f / top : 0.f;
    for (j = 0; j < m; ++j) out[j] = (uint8_t)(int)(sc_max(y[j], 0.f) * inv + 0.5f) ^ flip;
    *out_scale = top / 255.f;
}

/* Row i of the concatenation [x_i - y_i, y_i] (difference) or [x_i, y_i] into row (kx + ky,) */
SC_ROWS_MULTIVERSION static void concat_row(const float *x, int kx, const float *y, int ky,
                                            int difference, float *row) {
    for (int64_t j = 0; j < kx; ++j) row[j] = difference ? x[j] - y[j] : x[j];
    for (int64_t j = 0; j < ky; ++j) row[kx + j] = y[j];
}

void sc_quantize_row(const float *x, int kx, const float *y, int ky, int difference,
                     int plus_128, uint8_t *out, float *scale) {
    const uint8_t flip = plus_128 ? 0x80 : 0;
    if (!ky) {
        quantize_row(x, kx, flip, out, scale);
        return;
    }
    float row[kx + ky];  /* kx + ky <= SC_INT8_MAX_WIDTH: at most 64 KiB of stack */
    concat_row(x, kx, y, ky, difference, row);
    quantize_row(row, kx + ky, flip, out, scale);
}

void sc_quantize_rows(const float *x, int kx, const float *y, int ky, int difference,
                      int64_t n, int plus_128, int8_t *out_rows, float *scale, int threads) {
    uint8_t *out = (uint8_t *)out_rows;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i)
        sc_quantize_row(x + i * kx, kx, ky ? y + i * ky : NULL, ky, difference, plus_128,
                        out + i * (kx + ky), scale + i);
}

void sc_dequantize(const int32_t *acc, int64_t n, int m, const float *row_scale,
                   const float *col_scale, const int32_t *col_offset, const float *bias,
                   float *out, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i)
        dequantize_row(acc + i * m, m, row_scale[i], col_scale, col_offset, bias, out + i * m);
}

void sc_requantize_relu(const int32_t *acc, int64_t n, int m, const float *row_scale,
                        const float *col_scale, const int32_t *col_offset, const float *bias,
                        int8_t *out, float *out_scale, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i)
        requantize_relu_row(acc + i * m, m, row_scale[i], col_scale, col_offset, bias, 0x80,
                            (uint8_t *)out + i * m, out_scale + i);
}

/* ---- The fused MLP: VNNI products over row tiles, each layer's requantization as the
   tile's epilogue. Weights are packed in panels of SC_PANEL output columns (the last one
   16, 32, 48 or 64 wide): for each group of 4 inputs, a panel's columns x 4 bytes in
   vectors of 16 columns, the operand layout of vpdpbusd (uint8 rows times int8 weights, 4
   products summed into each int32 lane). A micro-tile of SC_MICRO_ROWS rows x one panel
   keeps its (up to 24) sums in registers over all the inputs; a row tile (<= SC_TILE_ROWS
   rows) runs every panel of a layer, then its epilogue writes the next layer's uint8 rows,
   so the activations of a tile stay in cache through the MLP. */

#define SC_PANEL 64
#define SC_MICRO_ROWS 6
#define SC_TILE_ROWS 48

/* a layer's sums per row: its outputs rounded up to whole vectors of 16 */
SC_INLINE int64_t sums_width(int m) { return (m + 15) / 16 * 16; }

/* columns of panel p of a layer of m outputs: SC_PANEL, the last one 16, 32, 48 or 64 */
SC_INLINE int64_t panel_width(int m, int64_t p) {
    const int64_t left = sums_width(m) - p * SC_PANEL;
    return left < SC_PANEL ? left : SC_PANEL;
}

int64_t sc_int8_pack_size(int k, int m) { return (int64_t)(k / 4) * 4 * sums_width(m); }

void sc_int8_pack(const int8_t *w, int k, int m, int8_t *out) {
    const int64_t k4s = k / 4;
    memset(out, 0, (size_t)sc_int8_pack_size(k, m));
    for (int64_t i = 0; i < k; ++i)
        for (int64_t j = 0; j < m; ++j) {
            const int64_t p = j / SC_PANEL;
            out[p * k4s * 4 * SC_PANEL + (i / 4) * 4 * panel_width(m, p) + (j % SC_PANEL) * 4
                + i % 4] = w[i * m + j];
        }
}

int sc_int8_scratch_init(sc_int8_scratch *s, int64_t rows, int widest) {
    s->rows = rows;
    s->widest = widest;
    s->acc = malloc((size_t)(rows * sums_width(widest)) * sizeof(int32_t));
    s->act = malloc((size_t)(2 * rows * widest));
    s->scale = malloc((size_t)(2 * rows) * sizeof(float));
    return s->acc && s->act && s->scale ? 0 : -1;
}

void sc_int8_scratch_free(sc_int8_scratch *s) {
    free(s->acc);
    free(s->act);
    free(s->scale);
}

int64_t sc_int8_tiles(int64_t n, int threads, int64_t *tile_rows) {
    const int64_t per_tile = (n + SC_TILE_ROWS - 1) / SC_TILE_ROWS;
    const int64_t tiles = (per_tile + threads - 1) / threads * threads;
    *tile_rows = (n + tiles - 1) / tiles;
    return tiles;
}

#if SC_X86_TARGETS
#include <immintrin.h>
#define SC_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

int sc_int8_fused_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vnni");
}

/* sums (mr, 16 vecs) int32 at acc (row stride ldc) of rows a (mr, 4 k4s) uint8 (row stride
   lda) times one packed panel b of 16 vecs columns; mr and vecs are constants at every
   call, so the sums live in registers */
SC_VNNI SC_INLINE void micro_tile(const uint8_t *a, int64_t lda, const int8_t *b, int64_t k4s,
                                  int32_t *acc, int64_t ldc, const int mr, const int vecs) {
    __m512i sum[SC_MICRO_ROWS][4];
    #pragma GCC unroll 6
    for (int r = 0; r < mr; ++r)
        #pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) sum[r][c] = _mm512_setzero_si512();
    for (int64_t q = 0; q < k4s; ++q, b += 64 * vecs) {
        __m512i w[4];
        #pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) w[c] = _mm512_loadu_si512(b + 64 * c);
        #pragma GCC unroll 6
        for (int r = 0; r < mr; ++r) {
            int32_t four;
            memcpy(&four, a + r * lda + 4 * q, 4);
            const __m512i x = _mm512_set1_epi32(four);
            #pragma GCC unroll 4
            for (int c = 0; c < vecs; ++c) sum[r][c] = _mm512_dpbusd_epi32(sum[r][c], x, w[c]);
        }
    }
    #pragma GCC unroll 6
    for (int r = 0; r < mr; ++r)
        #pragma GCC unroll 4
        for (int c = 0; c < vecs; ++c) _mm512_storeu_si512(acc + r * ldc + 16 * c, sum[r][c]);
}

/* one compiled micro_tile per (rows, vectors): the tile's last rows (< SC_MICRO_ROWS) and
   the layer's last panel (< 4 vectors) each take their own unrolled kernel */
typedef void (*micro_kernel)(const uint8_t *, int64_t, const int8_t *, int64_t, int32_t *,
                             int64_t);
#define SC_MICRO(R, V) \
    SC_VNNI static void micro_##R##_##V(const uint8_t *a, int64_t lda, const int8_t *b, \
                                        int64_t k4s, int32_t *acc, int64_t ldc) { \
        micro_tile(a, lda, b, k4s, acc, ldc, R, V); \
    }
#define SC_MICRO_ROWS_1_TO_6(V) \
    SC_MICRO(1, V) SC_MICRO(2, V) SC_MICRO(3, V) SC_MICRO(4, V) SC_MICRO(5, V) SC_MICRO(6, V)
SC_MICRO_ROWS_1_TO_6(1)
SC_MICRO_ROWS_1_TO_6(2)
SC_MICRO_ROWS_1_TO_6(3)
SC_MICRO_ROWS_1_TO_6(4)
#define SC_MICRO_ROW(V) {micro_1_##V, micro_2_##V, micro_3_##V, micro_4_##V, micro_5_##V, \
                         micro_6_##V}
static const micro_kernel micro_kernels[4][SC_MICRO_ROWS] = {
    SC_MICRO_ROW(1), SC_MICRO_ROW(2), SC_MICRO_ROW(3), SC_MICRO_ROW(4)};

/* acc (rows, sums_width(m)) int32 = a (rows, k) uint8 times a layer's packed weights */
SC_VNNI static void tile_products(const uint8_t *a, int rows, int k, const int8_t *packed,
                                  int m, int32_t *acc) {
    const int64_t k4s = k / 4, width = sums_width(m);
    for (int64_t p = 0; p * SC_PANEL < width; ++p) {
        const int vecs = (int)(panel_width(m, p) / 16);
        const int8_t *b = packed + p * k4s * 4 * SC_PANEL;
        for (int64_t r = 0; r < rows; r += SC_MICRO_ROWS) {
            const int mr = rows - r < SC_MICRO_ROWS ? (int)(rows - r) : SC_MICRO_ROWS;
            micro_kernels[vecs - 1][mr - 1](a + r * k, k, b, k4s,
                                            acc + r * width + p * SC_PANEL, width);
        }
    }
}

void sc_int8_mlp_tile(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                      const float *row_scale, int count, float *out, sc_int8_scratch *s) {
    const uint8_t *in = rows;
    const float *in_scale = row_scale;
    for (int l = 0; l < nlayers; ++l) {
        const sc_int8_layer *L = layers + l;
        const int64_t width = sums_width(L->m);
        tile_products(in, count, L->k, L->packed, L->m, s->acc);
        uint8_t *next = s->act + (l % 2) * s->rows * s->widest;
        float *next_scale = s->scale + (l % 2) * s->rows;
        for (int64_t r = 0; r < count; ++r) {
            if (l == nlayers - 1)
                dequantize_row(s->acc + r * width, L->m, in_scale[r], L->col_scale,
                               L->col_offset, L->bias, out + r * L->m);
            else
                requantize_relu_row(s->acc + r * width, L->m, in_scale[r], L->col_scale,
                                    L->col_offset, L->bias, 0, next + r * L->m,
                                    next_scale + r);
        }
        in = next;
        in_scale = next_scale;
    }
}

int sc_int8_mlp(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                const float *row_scale, int64_t n, float *out, int threads) {
    int widest = 0;
    for (int l = 0; l < nlayers; ++l) widest = layers[l].m > widest ? layers[l].m : widest;
    int64_t tile_rows;
    const int64_t tiles = sc_int8_tiles(n, threads, &tile_rows);
    const int k = layers[0].k, m_out = layers[nlayers - 1].m;
    int failed = 0;
    #pragma omp parallel num_threads(threads)
    {
        sc_int8_scratch scratch;
        const int ok = sc_int8_scratch_init(&scratch, tile_rows, widest) == 0;
        if (!ok) {
            #pragma omp atomic write
            failed = 1;
        }
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; ++t) {
            const int64_t r0 = t * tile_rows;
            const int count = sc_int8_tile_count(t, tile_rows, n);
            if (count && ok)
                sc_int8_mlp_tile(layers, nlayers, rows + r0 * k, row_scale + r0, count,
                                 out + r0 * m_out, &scratch);
        }
        sc_int8_scratch_free(&scratch);
    }
    return failed ? -1 : 0;
}
#else
int sc_int8_fused_available(void) { return 0; }

int sc_int8_mlp(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                const float *row_scale, int64_t n, float *out, int threads) {
    (void)layers; (void)nlayers; (void)rows; (void)row_scale; (void)n; (void)out;
    (void)threads;
    return -2;
}
#endif
