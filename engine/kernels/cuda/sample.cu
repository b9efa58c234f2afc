// Sampling on the device, so that only the chosen tokens cross to the host.
// Greedy rows: a block's argmax (the lowest index on ties). Rows with a
// temperature: the row sorted once in the order (logit descending, index
// ascending) by a stable segmented radix sort, then one block walks the
// sorted row in chunks with prefix sums in double: the mass of the top_k,
// the top_p prefix, the draw with u, exactly as the CPU reference
// (engine/kernels/cpu/sample.c) takes those steps.
#include "engine/kernels/cuda/cuda.cuh"

#include <cub/cub.cuh>
#include <limits.h>
#include <string.h>

enum { SM_THREADS = 256 };

__global__ void argmax_kernel(int32_t *out, const float *logits, int vocab)
{
	__shared__ float sv[SM_THREADS];
	__shared__ int si[SM_THREADS];
	const float *row = logits + (size_t)blockIdx.x * vocab;
	float best = -INFINITY;
	int bi = -1;
	for (int v = threadIdx.x; v < vocab; v += blockDim.x)
		if (bi < 0 || row[v] > best) {
			best = row[v];
			bi = v;
		}
	sv[threadIdx.x] = best;
	si[threadIdx.x] = bi;
	__syncthreads();
	for (int s = blockDim.x / 2; s > 0; s /= 2) {
		if (threadIdx.x < s) {
			float ov = sv[threadIdx.x + s];
			int oi = si[threadIdx.x + s];
			if (oi >= 0 && (si[threadIdx.x] < 0 || ov > sv[threadIdx.x] ||
					(ov == sv[threadIdx.x] && oi < si[threadIdx.x]))) {
				sv[threadIdx.x] = ov;
				si[threadIdx.x] = oi;
			}
		}
		__syncthreads();
	}
	if (threadIdx.x == 0)
		out[blockIdx.x] = si[0] < 0 ? 0 : si[0];
}

// Sort keys (+0.0 for -0.0, so that the radix order equals the CPU's
// comparison) and the indices they came from; segment offsets.
__global__ void sort_init_kernel(float *keys, int32_t *vals, int *offsets, const float *logits,
				 int rows, int vocab)
{
	size_t total = (size_t)rows * vocab;
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		keys[i] = logits[i] + 0.0f;
		vals[i] = (int32_t)(i % vocab);
	}
	for (size_t r = blockIdx.x * (size_t)blockDim.x + threadIdx.x; r <= (size_t)rows;
	     r += (size_t)gridDim.x * blockDim.x)
		offsets[r] = (int)(r * vocab);
}

typedef cub::BlockScan<double, SM_THREADS> sm_scan;

// The first index i < limit of the sorted row whose inclusive prefix sum
// of exp((s_i - s_0) / T) passes thr (>= when ge, else >), and that prefix
// sum; limit - 1 and the whole sum when none does. Every thread of the
// block calls it and gets the answer.
__device__ void first_passing(const float *s, int limit, double inv_t, double thr, int ge,
			      int *at, double *cum_at, sm_scan::TempStorage *tmp, int *s_at,
			      double *s_cum, double *s_run)
{
	if (threadIdx.x == 0) {
		*s_at = INT_MAX;
		*s_run = 0;
	}
	__syncthreads();
	for (int base = 0; base < limit; base += SM_THREADS) {
		int i = base + threadIdx.x;
		double e = i < limit ? exp(((double)s[i] - s[0]) * inv_t) : 0.0;
		double inc;
		sm_scan(*tmp).InclusiveSum(e, inc);
		double cum = *s_run + inc;
		bool pass = i < limit && (ge ? cum >= thr : cum > thr);
		if (pass)
			atomicMin(s_at, i);
		__syncthreads(); // s_run read, the chunk's winner known, tmp free again
		if (*s_at != INT_MAX) {
			if (i == *s_at)
				*s_cum = cum;
			__syncthreads();
			*at = *s_at;
			*cum_at = *s_cum;
			__syncthreads(); // read before the next call resets them
			return;
		}
		if (threadIdx.x == SM_THREADS - 1)
			*s_run = cum;
		__syncthreads();
	}
	*at = limit - 1;
	*cum_at = *s_run;
	__syncthreads();
}

__global__ void draw_kernel(int32_t *out, const float *sorted, const int32_t *ids,
			    const kernels_sample_row *params, int vocab)
{
	__shared__ sm_scan::TempStorage tmp;
	__shared__ int s_at;
	__shared__ double s_cum, s_run;
	const kernels_sample_row p = params[blockIdx.x];
	if (!(p.temperature > 0))
		return; // the argmax kernel answered this row
	const float *s = sorted + (size_t)blockIdx.x * vocab;
	const int32_t *id = ids + (size_t)blockIdx.x * vocab;
	const double inv_t = 1.0 / p.temperature;
	int k = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab, at;
	double z, mass;
	// the mass of the first k: the prefix "passing" an infinite threshold
	first_passing(s, k, inv_t, INFINITY, 1, &at, &z, &tmp, &s_at, &s_cum, &s_run);
	int m = k;
	mass = z;
	if (p.top_p > 0 && p.top_p < 1) {
		first_passing(s, k, inv_t, (double)p.top_p * z, 1, &at, &mass, &tmp, &s_at, &s_cum,
			      &s_run);
		m = at + 1;
	}
	first_passing(s, m, inv_t, (double)p.u * mass, 0, &at, &z, &tmp, &s_at, &s_cum, &s_run);
	if (threadIdx.x == 0)
		out[blockIdx.x] = id[at];
}

extern "C" int cu_sample(kernels_backend *be, int32_t *out_host, const float *logits, int rows,
			 int vocab, const kernels_sample_row *params_host, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (rows < 0 || vocab <= 0)
		return cu_err_set(err, OWL_EUSAGE, "sample: %d rows of %d logits", rows, vocab);
	if (!rows)
		return 0;
	CU_TRY("sample", cudaSetDevice(c->device));
	int any = 0;
	for (int r = 0; r < rows; r++)
		any |= params_host[r].temperature > 0;
	size_t total = (size_t)rows * vocab;
	if (any && total > INT_MAX)
		return cu_err_set(err, OWL_EUSAGE, "sample: %d rows of %d logits are more than one sort "
				  "takes", rows, vocab);
	// workspace: out [rows], params [rows], then for the sort keys and ids
	// in and out, offsets and cub's own
	size_t a_out = 256, a_par = (rows * sizeof(kernels_sample_row) + 255) / 256 * 256;
	size_t a_keys = (total * 4 + 255) / 256 * 256, a_off = ((rows + 1) * 4 + 255) / 256 * 256;
	size_t cub_bytes = 0;
	if (any)
		CU_TRY("sample", cub::DeviceSegmentedRadixSort::SortPairsDescending(
					 NULL, cub_bytes, (const float *)NULL, (float *)NULL,
					 (const int32_t *)NULL, (int32_t *)NULL, (int)total, rows,
					 (const int *)NULL, (const int *)NULL, 0, 32, c->stream));
	if (rows * sizeof(int32_t) > a_out)
		a_out = (rows * sizeof(int32_t) + 255) / 256 * 256;
	size_t need = a_out + a_par + (any ? 4 * a_keys + a_off + cub_bytes : 0);
	void *work, *host;
	int rc;
	if ((rc = cu_work(c, need, &work, err)) ||
	    (rc = cu_pinned(c, rows * (sizeof(int32_t) + sizeof(kernels_sample_row)), &host, err)))
		return rc;
	uint8_t *w = (uint8_t *)work;
	int32_t *d_out = (int32_t *)w;
	kernels_sample_row *d_par = (kernels_sample_row *)(w + a_out);
	kernels_sample_row *h_par = (kernels_sample_row *)((int32_t *)host + rows);
	CU_LAUNCH(argmax_kernel, (unsigned)rows, SM_THREADS, 0, c->stream)(d_out, logits, vocab);
	CU_LAUNCHED("sample");
	if (any) {
		float *k_in = (float *)(w + a_out + a_par), *k_out = (float *)((uint8_t *)k_in + a_keys);
		int32_t *v_in = (int32_t *)((uint8_t *)k_out + a_keys);
		int32_t *v_out = (int32_t *)((uint8_t *)v_in + a_keys);
		int *off = (int *)((uint8_t *)v_out + a_keys);
		void *cub_tmp = (uint8_t *)off + a_off;
		memcpy(h_par, params_host, rows * sizeof *h_par);
		CU_TRY("sample", cudaMemcpyAsync(d_par, h_par, rows * sizeof *h_par,
						 cudaMemcpyHostToDevice, c->stream));
		CU_LAUNCH(sort_init_kernel, cu_blocks(total, 256), 256, 0, c->stream)(k_in, v_in, off, logits,
									     rows, vocab);
		CU_LAUNCHED("sample");
		CU_TRY("sample", cub::DeviceSegmentedRadixSort::SortPairsDescending(
					 cub_tmp, cub_bytes, k_in, k_out, v_in, v_out, (int)total, rows,
					 off, off + 1, 0, 32, c->stream));
		CU_LAUNCH(draw_kernel, (unsigned)rows, SM_THREADS, 0, c->stream)(d_out, k_out, v_out, d_par,
									  vocab);
		CU_LAUNCHED("sample");
	}
	CU_TRY("sample", cudaMemcpyAsync(host, d_out, rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
					 c->stream));
	CU_TRY("sample", cudaStreamSynchronize(c->stream));
	memcpy(out_host, host, rows * sizeof(int32_t));
	return 0;
}
