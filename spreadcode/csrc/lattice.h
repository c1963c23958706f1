/* The spherical lattice S(d, r2) = {z in Z^d : |z|^2 = r2}: its tables, nearest point,
   and the code <-> point bijection specified in the docstring of spreadcode.lattice. */
#ifndef SPREADCODE_LATTICE_H
#define SPREADCODE_LATTICE_H

#include "common.h"

/* ------------------------------------------------------------------------------
   Tables of one spherical lattice S(d, r2), built by spreadcode.lattice (see there).
   ------------------------------------------------------------------------------ */
typedef struct {
    int d, W, natom, tmax, nlevmax;
    const int8_t *atoms;       /* (natom, d): non-increasing rows, ascending lexicographic */
    const uint8_t *pos_lev;    /* (natom, d): level (distinct-value index) of each row entry */
    const uint8_t *conj;       /* (natom, tmax): conjugate partition #{i: a_i >= t}, t = 1.. */
    const uint8_t *nnz;        /* (natom,) non-zero entries */
    const uint8_t *nlev;       /* (natom,) distinct values */
    const int8_t *lev_val;     /* (natom, nlevmax) distinct values, decreasing */
    const uint8_t *lev_mult;   /* (natom, nlevmax) their multiplicities */
    const uint64_t *offsets;   /* (natom + 1, W) first code of each atom; last = count */
} sc_lattice;

/* Fills the binomial and byte-mask tables; called once at import, before any kernel. */
SC_API void sc_init_tables(void);
/* Picks the hardware (BMI2) or the portable pdep / pext; called once at import. */
SC_API void sc_init_bits(void);

/* Atoms of S(d, r2) in ascending lexicographic order; writes at most `cap` rows into
   `out` (NULL: count only). Returns the number of atoms, or cap + 1 when there are more. */
SC_API int64_t sc_enumerate_atoms(int d, int r2, int8_t *out, int64_t cap);

/* z (n, d) <- the nearest points of S(d, r2) to the rows of y (n, d). */
SC_API void sc_nearest(const sc_lattice *L, const float *y, int64_t n, int8_t *z, int threads);
/* codes (n, W) <- the codes of the nearest points of y's rows, in one pass (no
   intermediate lattice point) */
SC_API void sc_quantize(const sc_lattice *L, const float *y, int64_t n, uint64_t *codes, int threads);
/* sc_nearest and sc_quantize of n rows in one pass on the calling thread: z (n, d) <- the
   points when z is given, codes (n, W) <- their codes when codes is (either or both). */
SC_API void sc_nearest_rows(const sc_lattice *L, const float *y, int64_t n, int8_t *z,
                            uint64_t *codes);
/* lattice points -> codes. Returns -1, or the first row that is not in S(d, r2). */
SC_API int64_t sc_encode(const sc_lattice *L, const int8_t *z, int64_t n, int r2,
                         uint64_t *codes, int threads);
/* Returns -1, or the first row whose code is >= count. */
SC_API int64_t sc_first_invalid(const sc_lattice *L, const uint64_t *codes, int64_t n);
/* z (n, d) <- the points of the valid codes (n, W) */
SC_API void sc_decode(const sc_lattice *L, const uint64_t *codes, int64_t n, int8_t *z, int threads);
/* z (d,) <- the point of one valid code (W words); the scan kernels decode blocks with it */
SC_API void sc_unrank(const sc_lattice *L, const uint64_t *code, int8_t *z);

#endif
