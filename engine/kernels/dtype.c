/* The stored weight types: their row sizes, names, and rows widened to f32
 * on the host. Shared by every backend and by the loader, which checks
 * shapes and converts small vectors (norms, biases) at load. */
#include "engine/kernels/kernels.h"
#include "common/gguf.h"

#include <string.h>

size_t kernels_row_bytes(kernels_dtype t, int cols)
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

const char *kernels_dtype_name(kernels_dtype t)
{
	static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k",
					    "q6_k"};
	return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

void kernels_row_to_f32(const kernels_weight *w, int row, float *dst)
{
	static const gguf_type m[] = {GGUF_T_F32, GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q8_0,
				      GGUF_T_Q4_0, GGUF_T_Q4_1, GGUF_T_Q4_K, GGUF_T_Q6_K};
	const uint8_t *p = w->data + (size_t)row * w->row_bytes;
	if (w->type == KERNELS_F32) {
		memcpy(dst, p, (size_t)w->cols * 4);
		return;
	}
	gguf_dequantize_row(m[w->type], p, dst, (size_t)w->cols, NULL);
}
