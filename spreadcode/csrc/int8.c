/* Row-scaled int8 kernels (interface in int8.h). Rounding is to nearest, halves away from
   zero for signed rows and up for the unsigned ones: the same integers on every machine for
   the same floats. One row per call of the (AVX2-cloned) row functions, rows in parallel.
   Indices are int64_t: Python's -fwrapv makes int indices wrap, which keeps these loops
   from vectorizing (5× slower). */
#include "int8.h"

#define SC_LANES 16  /* independent maxima per row, so that the reductions vectorize */

SC_INLINE float sc_max(float a, float b) { return a > b ? a : b; }

/* y[j] of sc_dequantize for one row's sums acc */
SC_INLINE float layer_output(const int32_t *acc, int64_t j, float row_scale,
                             const float *col_scale, const int32_t *col_offset,
                             const float *bias) {
    return (float)(acc[j] + col_offset[j]) * (row_scale * col_scale[j]) + bias[j];
}

SC_MULTIVERSION static void quantize_row(const float *x, int k, int8_t *out, float *scale) {
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
        out[j] = (int8_t)(v < 0.f ? -q : q);
    }
    *scale = top / 127.f;
}

SC_MULTIVERSION static void dequantize_row(const int32_t *acc, int m, float row_scale,
                                           const float *col_scale, const int32_t *col_offset,
                                           const float *bias, float *out) {
    for (int64_t j = 0; j < m; ++j)
        out[j] = layer_output(acc, j, row_scale, col_scale, col_offset, bias);
}

SC_MULTIVERSION static void requantize_relu_row(const int32_t *acc, int m, float row_scale,
                                                const float *col_scale,
                                                const int32_t *col_offset, const float *bias,
                                                int8_t *out, float *out_scale) {
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
    for (j = 0; j < m; ++j) out[j] = (int8_t)((int)(sc_max(y[j], 0.f) * inv + 0.5f) - 128);
    *out_scale = top / 255.f;
}

/* Row i of the concatenation [x_i - y_i, y_i] (difference) or [x_i, y_i] into row (kx + ky,) */
SC_MULTIVERSION static void concat_row(const float *x, int kx, const float *y, int ky,
                                       int difference, float *row) {
    for (int64_t j = 0; j < kx; ++j) row[j] = difference ? x[j] - y[j] : x[j];
    for (int64_t j = 0; j < ky; ++j) row[kx + j] = y[j];
}

void sc_quantize_rows(const float *x, int kx, const float *y, int ky, int difference,
                      int64_t n, int8_t *out, float *scale, int threads) {
    const int k = kx + ky;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; ++i) {
        if (!ky) {
            quantize_row(x + i * kx, kx, out + i * k, scale + i);
            continue;
        }
        float row[k];  /* k <= SC_INT8_MAX_WIDTH: at most 64 KiB of stack */
        concat_row(x + i * kx, kx, y + i * ky, ky, difference, row);
        quantize_row(row, k, out + i * k, scale + i);
    }
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
        requantize_relu_row(acc + i * m, m, row_scale[i], col_scale, col_offset, bias,
                            out + i * m, out_scale + i);
}
