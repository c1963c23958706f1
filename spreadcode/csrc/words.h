#ifndef SPREADCODE_WORDS_H
#define SPREADCODE_WORDS_H

#include "common.h"

/* ------------------------------------------------------------------------------
   Multiword unsigned integers: W little-endian 64-bit words (word 0 least significant).
   The rank / unrank kernels (lattice.c) are written once for a word count W and
   instantiated for W = 1..4, so the W = 1 instance compiles to plain 64-bit arithmetic.
   ------------------------------------------------------------------------------ */
typedef unsigned __int128 sc_u128;

SC_INLINE int scw_cmp(const uint64_t *a, const uint64_t *b, const int W) {
    for (int w = W - 1; w >= 0; --w)
        if (a[w] != b[w]) return a[w] < b[w] ? -1 : 1;
    return 0;
}
SC_INLINE void scw_add(uint64_t *a, const uint64_t *b, const int W) {       /* a += b */
    uint64_t carry = 0;
    for (int w = 0; w < W; ++w) {
        uint64_t s = a[w] + carry;
        uint64_t c1 = s < carry;
        a[w] = s + b[w];
        carry = c1 | (a[w] < s);
    }
}
SC_INLINE void scw_sub(uint64_t *a, const uint64_t *b, const int W) {       /* a -= b, a >= b */
    uint64_t borrow = 0;
    for (int w = 0; w < W; ++w) {
        uint64_t bw = b[w] + borrow;
        uint64_t out = (bw < borrow) | (a[w] < bw);
        a[w] -= bw;
        borrow = out;
    }
}
SC_INLINE void scw_muladd_word(uint64_t *a, uint64_t m, uint64_t add, const int W) {
    sc_u128 carry = add;                                 /* a = a * m + add, truncated */
    for (int w = 0; w < W; ++w) {
        carry += (sc_u128)a[w] * m;
        a[w] = (uint64_t)carry;
        carry >>= 64;
    }
}
SC_INLINE uint64_t scw_divmod_word(uint64_t *a, uint64_t m, const int W) {
    if (W == 1) { uint64_t r = a[0] % m; a[0] /= m; return r; }     /* a /= m; a % m */
    sc_u128 r = 0;
    for (int w = W - 1; w >= 0; --w) {
        sc_u128 cur = (r << 64) | a[w];
        a[w] = (uint64_t)(cur / m);
        r = cur % m;
    }
    return (uint64_t)r;
}
SC_INLINE void scw_shl(uint64_t *a, int s, const int W) {    /* a <<= s, 0 <= s <= 64 */
    const int ws = s >> 6, bs = s & 63;
    for (int w = W - 1; w >= 0; --w) {
        int src = w - ws;
        uint64_t hi = src >= 0 ? a[src] << bs : 0;
        uint64_t lo = (bs && src >= 1) ? a[src - 1] >> (64 - bs) : 0;
        a[w] = hi | lo;
    }
}
SC_INLINE void scw_shr(uint64_t *a, int s, const int W) {    /* a >>= s, 0 <= s <= 64 */
    const int ws = s >> 6, bs = s & 63;
    for (int w = 0; w < W; ++w) {
        int src = w + ws;
        uint64_t lo = src < W ? a[src] >> bs : 0;
        uint64_t hi = (bs && src + 1 < W) ? a[src + 1] << (64 - bs) : 0;
        a[w] = lo | hi;
    }
}

#endif
