// RoPE and its backward (the rotation by minus the angle), both pair
// layouts, token t at position pos[t]. The angle is formed as the CPU forms
// it, float(pos) * inv_freq[i], so both backends rotate by the same angle.
#include "engine/kernels/cuda/cuda.cuh"

__global__ void rope_kernel(float *x, int n_tok, const int32_t *pos, int n_heads, int hd,
			    const float *inv_freq, int adjacent, float dir)
{
	int half = hd / 2;
	size_t total = (size_t)n_tok * n_heads * half;
	for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
	     e += (size_t)gridDim.x * blockDim.x) {
		int i = (int)(e % half);
		size_t th = e / half; // token * n_heads + head
		int t = (int)(th / n_heads);
		float a = (float)pos[t] * inv_freq[i], c = cosf(a), s = dir * sinf(a);
		int i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
		float *v = x + th * hd;
		float x0 = v[i0], x1 = v[i1];
		v[i0] = x0 * c - x1 * s;
		v[i1] = x0 * s + x1 * c;
	}
}

static int rope_launch(kernels_backend *be, float *x, int n_tok, const int32_t *pos, int n_heads,
		       int hd, const float *inv_freq, kernels_rope_layout layout, float dir,
		       const char *op, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (hd % 2)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: odd head size %d", op, hd);
	size_t total = (size_t)n_tok * n_heads * (hd / 2);
	if (!total)
		return 0;
	CU_TRY(op, cudaSetDevice(c->device));
	CU_LAUNCH(rope_kernel, cu_blocks(total, 256), 256, 0, c->stream)(
		x, n_tok, pos, n_heads, hd, inv_freq, layout == KERNELS_ROPE_ADJACENT, dir);
	CU_LAUNCHED(op);
	return 0;
}

extern "C" int cu_rope(kernels_backend *be, float *x, int n_tok, const int32_t *pos, int n_heads,
		       int hd, const float *inv_freq, kernels_rope_layout layout, owl_err *err)
{
	return rope_launch(be, x, n_tok, pos, n_heads, hd, inv_freq, layout, 1.0f, "rope", err);
}

extern "C" int cu_rope_backward(kernels_backend *be, float *dx, int n_tok, const int32_t *pos,
				int n_heads, int hd, const float *inv_freq,
				kernels_rope_layout layout, owl_err *err)
{
	return rope_launch(be, dx, n_tok, pos, n_heads, hd, inv_freq, layout, -1.0f,
			   "rope_backward", err);
}
