/* Sign code kernels (layout and interface in signs.h). */
#include "signs.h"

void sc_sign_pack(const float *x, int64_t n, int d, uint8_t *out, int threads) {
    const int nb = (d + 7) / 8;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t v = 0; v < n; ++v) {
        const float *xv = x + v * d;
        uint8_t *o = out + v * nb;
        memset(o, 0, nb);
        for (int i = 0; i < d; ++i) o[i >> 3] |= (uint8_t)((xv[i] > 0.f) << (i & 7));
    }
}
void sc_sign_unpack(const uint8_t *codes, int64_t n, int d, float *out, int threads) {
    const int nb = (d + 7) / 8;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t v = 0; v < n; ++v)
        for (int i = 0; i < d; ++i)
            out[v * d + i] = ((codes[v * nb + (i >> 3)] >> (i & 7)) & 1) ? 1.f : -1.f;
}
void sc_hamming(const uint8_t *a, int64_t sa, const uint8_t *b, int64_t sb,
                int64_t n, int nb, int32_t *out, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t v = 0; v < n; ++v) out[v] = sc_popcount_xor(a + v * sa, b + v * sb, nb);
}
