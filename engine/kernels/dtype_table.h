/* The row sizes and names of the stored weight types, written once for the
 * host (engine/kernels/dtype.c) and for the CUDA object (cuda.cuh), which
 * links nothing of owl's: a new type added here reaches both. C and C++. */
#ifndef OWL_KERNELS_DTYPE_TABLE_H
#define OWL_KERNELS_DTYPE_TABLE_H

#include "engine/kernels/kernels.h"

/* Bytes of a row of cols elements, 0 when cols does not fill whole blocks. */
static inline size_t kernels_dtype_row_bytes(kernels_dtype t, int cols)
{
	switch (t) {
	case KERNELS_F32: return (size_t)cols * 4;
	case KERNELS_F16:
	case KERNELS_BF16: return (size_t)cols * 2;
	case KERNELS_Q8_0: return cols % 32 ? 0 : (size_t)cols / 32 * 34;
	case KERNELS_Q4_0: return cols % 32 ? 0 : (size_t)cols / 32 * 18;
	case KERNELS_Q4_1: return cols % 32 ? 0 : (size_t)cols / 32 * 20;
	case KERNELS_Q4_K: return cols % 256 ? 0 : (size_t)cols / 256 * 144;
	case KERNELS_Q6_K: return cols % 256 ? 0 : (size_t)cols / 256 * 210;
	}
	return 0;
}

static inline const char *kernels_dtype_short_name(kernels_dtype t)
{
	static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k",
					    "q6_k"};
	return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

#endif
