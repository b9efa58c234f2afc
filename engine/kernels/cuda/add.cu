// The residual stream's sum and a projection's bias.
#include "engine/kernels/cuda/cuda.cuh"

__global__ void add_kernel(float *y, const float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] += x[i];
}

__global__ void add_rows_kernel(float *y, const float *b, size_t total, int dim)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] += b[i % dim];
}

extern "C" int cu_add(kernels_backend *be, float *y, const float *x, size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!n)
		return 0;
	CU_TRY("add", cudaSetDevice(c->device));
	CU_LAUNCH(add_kernel, cu_blocks(n, 256), 256, 0, c->stream)(y, x, n);
	CU_LAUNCHED("add");
	return 0;
}

extern "C" int cu_add_rows(kernels_backend *be, float *y, const float *b, int rows, int dim,
			   owl_err *err)
{
	cu_ctx *c = cu_of(be);
	size_t total = (size_t)rows * dim;
	if (rows <= 0 || dim <= 0)
		return 0;
	CU_TRY("add_rows", cudaSetDevice(c->device));
	CU_LAUNCH(add_rows_kernel, cu_blocks(total, 256), 256, 0, c->stream)(y, b, total, dim);
	CU_LAUNCHED("add_rows");
	return 0;
}
