// LoRA's dropout: the mask of kernels.h (splitmix64 of seed ^ i * phi),
// drawn where it is applied, so that the forward and the backward pass of a
// micro-batch draw the same mask from its seed, bit for bit as the CPU does.
#include "engine/kernels/cuda/cuda.cuh"

__device__ __forceinline__ int dropout_kept(uint64_t seed, size_t i, float p)
{
	uint64_t z = (seed ^ ((uint64_t)i * 0x9e3779b97f4a7c15ull)) + 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) * (1.0 / 9007199254740992.0) >= (double)p;
}

__global__ void dropout_kernel(float *y, const float *x, size_t n, uint64_t seed, float p,
			       float keep, int accumulate)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		int k = dropout_kept(seed, i, p);
		if (accumulate) {
			if (k)
				y[i] += x[i] * keep;
		} else {
			y[i] = k ? x[i] * keep : 0.0f;
		}
	}
}

extern "C" int cu_dropout(kernels_backend *be, float *y, const float *x, size_t n, uint64_t seed,
			  float p, int accumulate, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!(p >= 0 && p < 1))
		return cu_err_set(err, OWL_EUSAGE, "dropout: p %g is outside [0, 1)", p);
	if (!n)
		return 0;
	// The scale in float on the host, as the CPU forms it.
	float keep = 1.0f / (1.0f - p);
	CU_TRY("dropout", cudaSetDevice(c->device));
	CU_LAUNCH(dropout_kernel, cu_blocks(n, 256), 256, 0, c->stream)(y, x, n, seed, p, keep,
									  accumulate);
	CU_LAUNCHED("dropout");
	return 0;
}
