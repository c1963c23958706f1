/* Greedy encoding of a residual model (spreadcode.residual.ResidualCatalyzer) in one call
   per batch, on AVX512-VNNI CPUs: each tile of rows runs every stage while it stays in
   cache — the encoder f_m (sc_int8_mlp_tile), the nearest point of the stage's sphere and
   its code (sc_nearest_rows), the decoder g_m that updates the running reconstruction x̂ —
   where the Python loop ran each step over the whole batch. The arithmetic is that loop's
   with int8 MLPs (spreadcode.int8), step for step, so the codes are the same. */
#ifndef SPREADCODE_GREEDY_H
#define SPREADCODE_GREEDY_H

#include "common.h"
#include "int8.h"
#include "lattice.h"

typedef struct {
    const sc_int8_layer *f;     /* the encoder f_m: inputs d_in (the first stage) or
                                   2 d_in (the rows [x − x̂, x̂]), outputs d_m */
    int f_layers;
    const sc_lattice *lattice;  /* the stage's sphere S(d_m, r2_m), codes of one word */
    float unit;                 /* 1 / sqrt(r2_m) in float32: a point z's unit point is z · unit */
    const sc_int8_layer *g;     /* the decoder g_m: inputs d_m (the first stage) or d_m + d_in
                                   (the rows [z · unit, x̂]), outputs d_in; unused by the last
                                   stage and where `table` */
    int g_layers;
    const float *table;         /* first stage: g_0 of every point in code order
                                   (count, d_in), looked up instead of running g; or NULL */
    uint64_t *codes;            /* out (n,): the stage's codes */
} sc_greedy_stage;

/* The codes of every stage for xs (n, d_in) float32, the model's preprocessed inputs: the
   first stage reads x alone and sets x̂ = g_0(z_0), each later one reads [x − x̂, x̂] and
   adds g_m([z_m, x̂]) to x̂ (the last stage only chooses its point). 0, or -1 when a
   thread's buffers could not be allocated, -2 where the fused int8 MLP is not built. */
SC_API int sc_greedy_encode(const sc_greedy_stage *stages, int nstages, const float *xs,
                            int64_t n, int d_in, int threads);

#endif
