/* Shared by every codec source: standard headers, OpenMP shims, the codec's size limits
   and the attribute macros (forced inlining, AVX2+FMA clones, hidden symbols). */
#ifndef SPREADCODE_COMMON_H
#define SPREADCODE_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#define SC_THREAD_ID() omp_get_thread_num()
#define SC_NUM_THREADS() omp_get_num_threads()
#define SC_MAX_THREADS() omp_get_max_threads()
#else
#define SC_THREAD_ID() 0
#define SC_NUM_THREADS() 1
#define SC_MAX_THREADS() 1
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the spreadcode codec kernels assume a little-endian machine"
#endif
#define SC_MAX_D 64          /* lattice dimension limit: every binomial C(n, k), n <= 64, fits a word */
#define SC_MAX_W 4           /* lattice codes up to 4 words = 256 bits */
#define SC_BINOM_N (SC_MAX_D + 1)
#define SC_INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SC_X86_TARGETS 1     /* x86 clones and target attributes (GCC) */
#define SC_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SC_X86_TARGETS 0
#define SC_MULTIVERSION
#endif
/* functions shared between the codec's C files, kept out of the extension's exported symbols */
#if defined(__GNUC__)
#define SC_API __attribute__((visibility("hidden")))
#else
#define SC_API
#endif

#endif
