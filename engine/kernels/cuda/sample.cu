// Sampling on the device, so that only the chosen tokens cross to the host.
// One block per row, no sort: the candidates' order (logit descending,
// index ascending) is the order of a key made of the logit's bits, and
// every set the CPU reference (engine/kernels/cpu/sample.c) walks - the
// top_k, the top_p prefix, the draw's prefix - is a prefix of that order.
// A prefix is named by its last element (key, index) and found by
// bisection: on the key, then on the index among equal keys, each step a
// block reduction of the count and of the mass exp((l - max) / T) in
// double over the elements of the prefix. Built with nvcc, and with g++
// on the host emulator (tests/cuda-emu/), which has no CUB.
#include "engine/kernels/cuda/cuda.cuh"

#include <limits.h>
#include <string.h>

// The emulator's threads are host threads and its barriers system calls:
// a smaller block there keeps the many reductions quick (the same code).
#ifdef OWL_CUDA_EMU
enum { SM_THREADS = 32 };
#else
enum { SM_THREADS = 256 };
#endif

// A larger logit, a larger key; -0 and +0 one key (the CPU compares them equal).
__device__ static inline unsigned order_key(float x)
{
	x += 0.0f;
	unsigned b;
	memcpy(&b, &x, sizeof b);
	return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

// The elements up to (key, idx) in the order: a larger key, or the same key
// and an index at most idx. {0, INT_MAX} is the whole row.
typedef struct prefix {
	unsigned key;
	int idx;
} prefix;

__device__ static inline bool in_prefix(unsigned k, int i, prefix p)
{
	return k > p.key || (k == p.key && i <= p.idx);
}

// How many elements of the row are in both a and b, and their mass; every
// thread of the block calls it and gets the answer.
__device__ static void reduce_in(const float *l, const double *e, int vocab, prefix a, prefix b,
				 int *count, double *mass)
{
	__shared__ double sm[SM_THREADS];
	__shared__ int sc[SM_THREADS];
	const int t = threadIdx.x;
	double m = 0;
	int c = 0;
	for (int v = t; v < vocab; v += SM_THREADS) {
		unsigned k = order_key(l[v]);
		if (in_prefix(k, v, a) && in_prefix(k, v, b)) {
			c++;
			m += e[v];
		}
	}
	sm[t] = m;
	sc[t] = c;
	__syncthreads();
	for (int s = SM_THREADS / 2; s > 0; s /= 2) {
		if (t < s) {
			sm[t] += sm[t + s];
			sc[t] += sc[t + s];
		}
		__syncthreads();
	}
	*count = sc[0];
	*mass = sm[0];
	__syncthreads(); // read by all before the next call writes
}

// What a prefix must reach: a count (the top_k), a mass reached (>=, the
// top_p) or a mass exceeded (>, the draw).
enum { BY_COUNT, MASS_GE, MASS_GT };

__device__ static inline bool reaches(int mode, int count, double mass, int want, double thr)
{
	return mode == BY_COUNT ? count >= want : mode == MASS_GE ? mass >= thr : mass > thr;
}

// The shortest prefix of the order within p that reaches the goal, and its
// mass; p itself when none does (rounding aside, p reaches every goal it is
// given: the goals are below its own count and mass).
__device__ static prefix first_reaching(const float *l, const double *e, int vocab, prefix p,
					int mode, int want, double thr, double *mass_at)
{
	int c;
	double m;
	reduce_in(l, e, vocab, p, p, &c, &m);
	if (!reaches(mode, c, m, want, thr)) {
		*mass_at = m;
		return p;
	}
	// the largest key t whose prefix {t, all indices} within p reaches it
	unsigned long long lo = p.key, hi = UINT_MAX;
	while (lo < hi) {
		unsigned long long mid = lo + (hi - lo + 1) / 2;
		reduce_in(l, e, vocab, p, prefix{(unsigned)mid, INT_MAX}, &c, &m);
		if (reaches(mode, c, m, want, thr))
			lo = mid;
		else
			hi = mid - 1;
	}
	// then the smallest index among that key's elements
	const unsigned key = (unsigned)lo;
	int ilo = 0, ihi = key == p.key && p.idx < vocab - 1 ? p.idx : vocab - 1;
	while (ilo < ihi) {
		int mid = ilo + (ihi - ilo) / 2;
		reduce_in(l, e, vocab, p, prefix{key, mid}, &c, &m);
		if (reaches(mode, c, m, want, thr))
			ihi = mid;
		else
			ilo = mid + 1;
	}
	reduce_in(l, e, vocab, p, prefix{key, ihi}, &c, &m);
	*mass_at = m;
	return prefix{key, ihi};
}

// e is [rows][vocab] of workspace for the masses.
__global__ void sample_kernel(int32_t *out, const float *logits, double *e_all,
			      const kernels_sample_row *params, int vocab)
{
	__shared__ float sv[SM_THREADS];
	__shared__ int si[SM_THREADS];
	const int t = threadIdx.x;
	const float *l = logits + (size_t)blockIdx.x * vocab;
	double *e = e_all + (size_t)blockIdx.x * vocab;
	// the argmax (the lowest index on ties): the greedy answer, and the
	// largest logit, which the masses are taken relative to
	float best = -INFINITY;
	int bi = -1;
	for (int v = t; v < vocab; v += SM_THREADS)
		if (bi < 0 || l[v] > best) {
			best = l[v];
			bi = v;
		}
	sv[t] = best;
	si[t] = bi;
	__syncthreads();
	for (int s = SM_THREADS / 2; s > 0; s /= 2) {
		if (t < s) {
			float ov = sv[t + s];
			int oi = si[t + s];
			if (oi >= 0 && (si[t] < 0 || ov > sv[t] || (ov == sv[t] && oi < si[t]))) {
				sv[t] = ov;
				si[t] = oi;
			}
		}
		__syncthreads();
	}
	const int top = si[0] < 0 ? 0 : si[0];
	const kernels_sample_row p = params[blockIdx.x];
	if (!(p.temperature > 0)) {
		if (t == 0)
			out[blockIdx.x] = top;
		return;
	}
	// each thread's masses are its own elements': no barrier needed
	const double mx = l[top];
	for (int v = t; v < vocab; v += SM_THREADS)
		e[v] = exp(((double)l[v] - mx) / p.temperature);
	prefix all = {0, INT_MAX}, cand = all;
	double z, mass;
	int count;
	if (p.top_k > 0 && p.top_k < vocab)
		cand = first_reaching(l, e, vocab, all, BY_COUNT, p.top_k, 0, &z);
	else
		reduce_in(l, e, vocab, all, all, &count, &z);
	mass = z;
	if (p.top_p > 0 && p.top_p < 1)
		cand = first_reaching(l, e, vocab, cand, MASS_GE, 0, (double)p.top_p * z, &mass);
	prefix pick = first_reaching(l, e, vocab, cand, MASS_GT, 0, (double)p.u * mass, &z);
	if (t == 0)
		out[blockIdx.x] = pick.idx < vocab ? pick.idx : top;
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
	// workspace: out [rows], params [rows], then the masses [rows][vocab]
	size_t a_out = (rows * sizeof(int32_t) + 255) / 256 * 256;
	size_t a_par = (rows * sizeof(kernels_sample_row) + 255) / 256 * 256;
	size_t need = a_out + a_par + (any ? (size_t)rows * vocab * sizeof(double) : 0);
	void *work, *host;
	int rc;
	if ((rc = cu_work(c, need, &work, err)) ||
	    (rc = cu_pinned(c, rows * (sizeof(int32_t) + sizeof(kernels_sample_row)), &host, err)))
		return rc;
	uint8_t *w = (uint8_t *)work;
	int32_t *d_out = (int32_t *)w;
	kernels_sample_row *d_par = (kernels_sample_row *)(w + a_out);
	double *d_e = (double *)(w + a_out + a_par);
	kernels_sample_row *h_par = (kernels_sample_row *)((int32_t *)host + rows);
	memcpy(h_par, params_host, rows * sizeof *h_par);
	CU_TRY("sample", cudaMemcpyAsync(d_par, h_par, rows * sizeof *h_par, cudaMemcpyHostToDevice,
					 c->stream));
	CU_LAUNCH(sample_kernel, (unsigned)rows, SM_THREADS, 0, c->stream)(d_out, logits, d_e, d_par,
									  vocab);
	CU_LAUNCHED("sample");
	CU_TRY("sample", cudaMemcpyAsync(host, d_out, rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
					 c->stream));
	CU_TRY("sample", cudaStreamSynchronize(c->stream));
	memcpy(out_host, host, rows * sizeof(int32_t));
	return 0;
}
