/* Row-scaled int8 arithmetic for the dense layers of an encoding chain
   (spreadcode/int8.py): each row of activations is quantized with its own scale, each
   output channel of a weight matrix with its own, the int8 products are summed exactly in
   int32 (int8.py's int8_products) and the kernels here turn those sums back into floats or into the
   next layer's int8 rows, a whole batch per call; on AVX512-VNNI CPUs sc_int8_mlp runs the
   products too, a whole MLP per call. */
#ifndef SPREADCODE_INT8_H
#define SPREADCODE_INT8_H

#include "common.h"

#define SC_INT8_MAX_WIDTH 16384  /* widest row of sc_requantize_relu's outputs and of a
                                    concatenation in sc_quantize_rows */

/* Signed rows: out[i, j] = round(v[i, j] / scale[i]) (halves away from 0) in [-127, 127],
   scale[i] = max_j |v[i, j]| / 127 (0 for a row of zeros, whose codes are 0), where row i of
   v (n, kx + ky) is x_i (n, kx) alone (ky = 0, y unused), the concatenation [x_i, y_i] with
   y (n, ky), or [x_i - y_i, y_i] when `difference` (kx = ky): a stage's input quantized
   without building it in memory (then kx + ky <= SC_INT8_MAX_WIDTH). With plus_128 the
   bytes are out[i, j] + 128 as uint8, the rows sc_int8_mlp reads. */
SC_API void sc_quantize_rows(const float *x, int kx, const float *y, int ky, int difference,
                             int64_t n, int plus_128, int8_t *out, float *scale, int threads);
/* One row of sc_quantize_rows (y NULL when ky = 0) into out (kx + ky,), on the calling thread */
SC_API void sc_quantize_row(const float *x, int kx, const float *y, int ky, int difference,
                            int plus_128, uint8_t *out, float *scale);

/* A layer's outputs from its int32 sums acc (n, m) of int8 rows (scales row_scale (n,))
   times int8 weights (scales col_scale (m,)): y[i, j] = (acc[i, j] + col_offset[j]) *
   row_scale[i] * col_scale[j] + bias[j]; col_offset (m,) corrects rows stored shifted by
   -128 (sc_requantize_relu), zeros for signed rows. */
SC_API void sc_dequantize(const int32_t *acc, int64_t n, int m, const float *row_scale,
                          const float *col_scale, const int32_t *col_offset, const float *bias,
                          float *out, int threads);

/* relu(y) of sc_dequantize as the next layer's rows: u[i, j] = round(relu(y[i, j]) /
   out_scale[i]) (halves up) in [0, 255] with out_scale[i] = max_j relu(y[i, j]) / 255 (0 for
   a row of zeros), stored as u - 128 in out (n, m) int8 (the next layer adds 128 × its
   weight column sums back as col_offset). */
SC_API void sc_requantize_relu(const int32_t *acc, int64_t n, int m, const float *row_scale,
                               const float *col_scale, const int32_t *col_offset,
                               const float *bias, int8_t *out, float *out_scale, int threads);

/* The fused MLP (x86 CPUs with AVX512-VNNI: sc_int8_fused_available()): a layer's weights
   codes (k, m) int8 (k inputs, a multiple of 4; m outputs; row-major, as Int8Mlp stores
   them) packed once by sc_int8_pack into sc_int8_pack_size(k, m) bytes. */
typedef struct {
    int k, m;                   /* inputs (a multiple of 4), outputs */
    const int8_t *packed;       /* sc_int8_pack of the layer's codes */
    const float *col_scale;     /* (m,) the weights' scales */
    const int32_t *col_offset;  /* (m,) added to the sums of uint8 rows (−128 × the column
                                   sums for the first layer's signed rows stored + 128) */
    const float *bias;          /* (m,) */
} sc_int8_layer;

SC_API int sc_int8_fused_available(void);
SC_API int64_t sc_int8_pack_size(int k, int m);
SC_API void sc_int8_pack(const int8_t *w, int k, int m, int8_t *out);

/* A thread's buffers for sc_int8_mlp_tile: the int32 sums and two uint8 activations of up
   to `rows` rows through layers of at most `widest` outputs. init returns 0, or -1 when
   they could not be allocated (free them all the same). */
typedef struct {
    int32_t *acc;
    uint8_t *act;
    float *scale;
    int64_t rows, widest;
} sc_int8_scratch;
SC_API int sc_int8_scratch_init(sc_int8_scratch *s, int64_t rows, int widest);
SC_API void sc_int8_scratch_free(sc_int8_scratch *s);
/* How sc_int8_mlp splits n rows between `threads`: the tile count (a multiple of the
   threads, so that each gets the same rows) and *tile_rows (<= 48) per tile. */
SC_API int64_t sc_int8_tiles(int64_t n, int threads, int64_t *tile_rows);
/* the rows of tile t of that split (0 for the tiles past the last row) */
SC_INLINE int sc_int8_tile_count(int64_t t, int64_t tile_rows, int64_t n) {
    const int64_t r0 = t * tile_rows;
    return r0 >= n ? 0 : (int)(n - r0 < tile_rows ? n - r0 : tile_rows);
}
/* sc_int8_mlp of one tile of count <= s->rows rows on the calling thread (VNNI CPUs only):
   out (count, m of the last layer). */
SC_API void sc_int8_mlp_tile(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                             const float *row_scale, int count, float *out,
                             sc_int8_scratch *s);

/* out (n, m of the last layer) float32 <- the layers on rows (n, layers[0].k) uint8 with
   scales row_scale (n,): each hidden layer's output requantized as sc_requantize_relu does
   (stored unshifted), the last dequantized as sc_dequantize does — the same floats as the
   int8_products route. 0, or -1 when a thread's buffers could not be allocated, -2 where
   the fused MLP is not built. */
SC_API int sc_int8_mlp(const sc_int8_layer *layers, int nlayers, const uint8_t *rows,
                       const float *row_scale, int64_t n, float *out, int threads);

#endif
