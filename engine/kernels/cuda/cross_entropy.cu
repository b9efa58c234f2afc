// Cross-entropy of logit rows against targets: the mean (perplexity) and
// training's loss with dlogits = scale (softmax - onehot). One block per
// row; the per-row losses come back to the host, which sums them in
// double as the CPU does (the callers keep these scalars on the host).
#include "engine/kernels/cuda/cuda.cuh"

#include <stdlib.h>

enum { CE_THREADS = 256 };

__device__ float ce_block_max(float v, float *sh)
{
	for (int o = 16; o > 0; o /= 2)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	__syncthreads();
	if (threadIdx.x % 32 == 0)
		sh[threadIdx.x / 32] = v;
	__syncthreads();
	float m = sh[0];
	for (int i = 1; i < (int)blockDim.x / 32; i++)
		m = fmaxf(m, sh[i]);
	return m;
}

__device__ double ce_block_sum(double v, double *sh)
{
	for (int o = 16; o > 0; o /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	if (threadIdx.x % 32 == 0)
		sh[threadIdx.x / 32] = v;
	__syncthreads();
	double s = 0;
	for (int i = 0; i < (int)blockDim.x / 32; i++)
		s += sh[i];
	return s;
}

// Row r's loss into row_loss[r] (0 and counted 0 when not scored); with
// dlogits, the gradient row too (dlogits may be logits: every element is
// read by the thread that writes it, after the row's sums).
__global__ void ce_kernel(double *row_loss, float *dlogits, const float *logits,
			  const int32_t *targets, int vocab, float scale, int allow_unscored,
			  int *bad)
{
	__shared__ float shf[CE_THREADS / 32];
	__shared__ double shd[CE_THREADS / 32];
	const size_t off = (size_t)blockIdx.x * vocab;
	const float *row = logits + off;
	int t = targets[blockIdx.x];
	if (t < (allow_unscored ? -1 : 0) || t >= vocab) {
		if (threadIdx.x == 0) {
			*bad = 1;
			row_loss[blockIdx.x] = 0;
		}
		t = -1;
	}
	if (t < 0) {
		if (dlogits)
			for (int v = threadIdx.x; v < vocab; v += blockDim.x)
				dlogits[off + v] = 0.0f;
		if (threadIdx.x == 0)
			row_loss[blockIdx.x] = nan("");
		return;
	}
	float mx = -INFINITY;
	for (int v = threadIdx.x; v < vocab; v += blockDim.x)
		mx = fmaxf(mx, row[v]);
	mx = ce_block_max(mx, shf);
	double s = 0;
	for (int v = threadIdx.x; v < vocab; v += blockDim.x)
		s += dlogits ? (double)expf(row[v] - mx) : exp((double)row[v] - mx);
	s = ce_block_sum(s, shd);
	float lt = row[t];
	if (dlogits) {
		float k = scale / (float)s;
		__syncthreads(); // every thread has read row[t] before it may be overwritten
		for (int v = threadIdx.x; v < vocab; v += blockDim.x)
			dlogits[off + v] = expf(row[v] - mx) * k - (v == t ? scale : 0.0f);
	}
	if (threadIdx.x == 0)
		row_loss[blockIdx.x] = log(s) + mx - lt;
}

static int ce_run(cu_ctx *c, float *dlogits, const float *logits, const int32_t *targets, int rows,
		  int vocab, float scale, int allow_unscored, double *sum, int64_t *count,
		  const char *op, owl_err *err)
{
	*sum = 0;
	*count = 0;
	if (rows <= 0)
		return 0;
	CU_TRY(op, cudaSetDevice(c->device));
	void *work, *host;
	int rc;
	if ((rc = cu_work(c, (size_t)rows * sizeof(double), &work, err)) ||
	    (rc = cu_pinned(c, (size_t)rows * sizeof(double), &host, err)))
		return rc;
	CU_LAUNCH(ce_kernel, (unsigned)rows, CE_THREADS, 0, c->stream)(
		(double *)work, dlogits, logits, targets, vocab, scale, allow_unscored,
		c->flags_dev + CU_FLAG_BAD_TARGET);
	CU_LAUNCHED(op);
	CU_TRY(op, cudaMemcpyAsync(host, work, (size_t)rows * sizeof(double), cudaMemcpyDeviceToHost,
				   c->stream));
	CU_TRY(op, cudaStreamSynchronize(c->stream));
	if (c->flags[CU_FLAG_BAD_TARGET]) {
		c->flags[CU_FLAG_BAD_TARGET] = 0;
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: a target is outside the vocabulary of %d",
				  op, vocab);
	}
	const double *rl = (const double *)host;
	for (int r = 0; r < rows; r++)
		if (rl[r] == rl[r]) { // NaN marks a row not scored
			*sum += rl[r];
			(*count)++;
		}
	return 0;
}

extern "C" int cu_cross_entropy(kernels_backend *be, float *loss, const float *logits,
				const int32_t *targets, int rows, int vocab, owl_err *err)
{
	double sum;
	int64_t count;
	int rc = ce_run(cu_of(be), NULL, logits, targets, rows, vocab, 0, 0, &sum, &count,
			"cross_entropy", err);
	if (rc)
		return rc;
	*loss = rows > 0 ? (float)(sum / rows) : 0.0f;
	return 0;
}

extern "C" int cu_cross_entropy_backward(kernels_backend *be, float *dlogits, const float *logits,
					 const int32_t *targets, int rows, int vocab, float scale,
					 double *loss_sum, int64_t *count, owl_err *err)
{
	return ce_run(cu_of(be), dlogits, logits, targets, rows, vocab, scale, 1, loss_sum, count,
		      "cross_entropy_backward", err);
}
