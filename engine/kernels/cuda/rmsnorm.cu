// RMSNorm and its backward: one block per row, the sums of squares in
// double as the CPU reference takes them.
#include "engine/kernels/cuda/cuda.cuh"

enum { RN_THREADS = 256 };

// The block's sum of v (every thread gets it).
__device__ double block_sum(double v, double *sh)
{
	for (int o = 16; o > 0; o /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
	__syncthreads(); // sh may still be read by an earlier call
	if (lane == 0)
		sh[warp] = v;
	__syncthreads();
	double s = 0;
	for (int i = 0; i < nw; i++)
		s += sh[i];
	return s;
}

__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int dim, float eps)
{
	__shared__ double sh[RN_THREADS / 32];
	const float *xr = x + (size_t)blockIdx.x * dim;
	float *o = out + (size_t)blockIdx.x * dim;
	double ss = 0;
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
		ss += (double)xr[j] * xr[j];
	ss = block_sum(ss, sh);
	float s = 1.0f / sqrtf((float)(ss / dim) + eps);
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
		o[j] = xr[j] * s * w[j];
}

extern "C" int cu_rmsnorm(kernels_backend *be, float *out, const float *x, const float *weight,
			  int rows, int dim, float eps, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (rows <= 0)
		return 0;
	CU_TRY("rmsnorm", cudaSetDevice(c->device));
	CU_LAUNCH(rmsnorm_kernel, (unsigned)rows, RN_THREADS, 0, c->stream)(out, x, weight, dim, eps);
	CU_LAUNCHED("rmsnorm");
	return 0;
}

// dx += s (w dy) - x s^3 / dim * sum(w dy x), s = 1 / sqrt(mean(x^2) + eps);
// the rows' s into srow for the weight gradient.
__global__ void rmsnorm_backward_kernel(float *dx, float *srow, const float *dout, const float *x,
					const float *w, int dim, float eps)
{
	__shared__ double sh[RN_THREADS / 32];
	size_t off = (size_t)blockIdx.x * dim;
	double ss = 0, dot = 0;
	for (int j = threadIdx.x; j < dim; j += blockDim.x) {
		ss += (double)x[off + j] * x[off + j];
		dot += (double)w[j] * dout[off + j] * x[off + j];
	}
	ss = block_sum(ss, sh);
	dot = block_sum(dot, sh);
	float s = 1.0f / sqrtf((float)(ss / dim) + eps);
	float cc = (float)(dot * s * s * s / dim);
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
		dx[off + j] += s * w[j] * dout[off + j] - cc * x[off + j];
	if (threadIdx.x == 0)
		srow[blockIdx.x] = s;
}

// dweight[j] += sum over rows of dout x s: one thread per column, rows in order.
__global__ void rmsnorm_dweight_kernel(float *dweight, const float *srow, const float *dout,
				       const float *x, int rows, int dim)
{
	int j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j >= dim)
		return;
	float acc = dweight[j];
	for (int i = 0; i < rows; i++)
		acc += dout[(size_t)i * dim + j] * x[(size_t)i * dim + j] * srow[i];
	dweight[j] = acc;
}

extern "C" int cu_rmsnorm_backward(kernels_backend *be, float *dx, float *dweight,
				   const float *dout, const float *x, const float *weight, int rows,
				   int dim, float eps, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (rows <= 0)
		return 0;
	CU_TRY("rmsnorm_backward", cudaSetDevice(c->device));
	void *work;
	int rc = cu_work(c, (size_t)rows * sizeof(float), &work, err);
	if (rc)
		return rc;
	float *srow = (float *)work;
	CU_LAUNCH(rmsnorm_backward_kernel, (unsigned)rows, RN_THREADS, 0, c->stream)(dx, srow, dout, x,
									    weight, dim, eps);
	CU_LAUNCHED("rmsnorm_backward");
	if (dweight) {
		CU_LAUNCH(rmsnorm_dweight_kernel, (unsigned)((dim + 255) / 256), 256, 0, c->stream)(
			dweight, srow, dout, x, rows, dim);
		CU_LAUNCHED("rmsnorm_backward");
	}
	return 0;
}
