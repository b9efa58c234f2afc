// SwiGLU, h = silu(gate) * up, in place in gate; and its backward.
#include "engine/kernels/cuda/cuda.cuh"

__global__ void swiglu_kernel(float *gate, const float *up, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float g = gate[i];
		gate[i] = g / (1.0f + expf(-g)) * up[i];
	}
}

// dg = dh u sig(g) (1 + g (1 - sig(g))), du = dh g sig(g)
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout,
				       const float *gate, const float *up, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float g = gate[i], sg = 1.0f / (1.0f + expf(-g)), d = dout[i], u = up[i];
		dgate[i] = d * u * sg * (1.0f + g * (1.0f - sg));
		dup[i] = d * g * sg;
	}
}

extern "C" int cu_swiglu(kernels_backend *be, float *gate, const float *up, size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!n)
		return 0;
	CU_TRY("swiglu", cudaSetDevice(c->device));
	CU_LAUNCH(swiglu_kernel, cu_blocks(n, 256), 256, 0, c->stream)(gate, up, n);
	CU_LAUNCHED("swiglu");
	return 0;
}

extern "C" int cu_swiglu_backward(kernels_backend *be, float *dgate, float *dup, const float *dout,
				  const float *gate, const float *up, size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!n)
		return 0;
	CU_TRY("swiglu_backward", cudaSetDevice(c->device));
	CU_LAUNCH(swiglu_backward_kernel, cu_blocks(n, 256), 256, 0, c->stream)(dgate, dup, dout, gate, up,
									 n);
	CU_LAUNCHED("swiglu_backward");
	return 0;
}
