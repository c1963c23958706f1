#ifndef SPREADCODE_SIGNS_H
#define SPREADCODE_SIGNS_H

#include "common.h"

/* ------------------------------------------------------------------------------
   Sign codes: bit i of a code (byte i / 8, bit i % 8, least significant first) is 1
   when x_i > 0. Padding bits of the last byte are 0.
   ------------------------------------------------------------------------------ */

/* out (n, ceil(d/8)) <- sign codes of x (n, d) */
SC_API void sc_sign_pack(const float *x, int64_t n, int d, uint8_t *out, int threads);
/* out (n, d) of +-1 <- sign codes (n, ceil(d/8)) */
SC_API void sc_sign_unpack(const uint8_t *codes, int64_t n, int d, float *out, int threads);
/* row-wise Hamming distances; a row of a stride 0 operand is reused */
SC_API void sc_hamming(const uint8_t *a, int64_t sa, const uint8_t *b, int64_t sb,
                       int64_t n, int nb, int32_t *out, int threads);

/* Hamming distance of two nb-byte codes (inline: the Hamming scan calls it per pair) */
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

#endif
