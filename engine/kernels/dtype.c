/* The stored weight types: their row sizes, names, and rows widened to f32
 * on the host. Shared by every backend and by the loader, which checks
 * shapes and converts small vectors (norms, biases) at load. */
#include "engine/kernels/dtype_table.h"
#include "common/gguf.h"

#include <string.h>

size_t kernels_row_bytes(kernels_dtype t, int cols) { return kernels_dtype_row_bytes(t, cols); }

const char *kernels_dtype_name(kernels_dtype t) { return kernels_dtype_short_name(t); }

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
