// Training's attention over packed segments: the forward (attention.cu's
// flash kernel on contiguous keys) and its backward, FlashAttention-2's
// way: the forward is run again for the rows' log-sum-exp L and output O,
// D = rowsum(dO * O), then
//  - dQ: per query row, over its keys: P = exp(s - L), dP = dO . v,
//    dS = P (dP - D), dq += dS k, times the scale;
//  - dK, dV: per key row, over the queries that see it (every query head
//    of its group): dv += P dO, dk += dS q, times the scale.
// Each output row is written by one warp: no atomics, no races.
// The segments are read on the host first (they are few) to size the work
// and to check them as the CPU does.
#include "engine/kernels/cuda/attn.cuh"

#include <stdlib.h>

enum { AB_WARPS = 4, AB_RPW = 4, AB_ROWS = AB_WARPS * AB_RPW, AB_T = 32, AB_DPL = AT_HD_MAX / 32 };

// The segments on the host, checked: rows in order, none empty, none
// overlapping. *n_tok: where the last one ends.
static int host_segs(cu_ctx *c, const kernels_attn_seg *segs, int nseg, int n_heads, int n_kv_heads,
		     kernels_attn_seg **out, int *n_tok, const char *op, owl_err *err)
{
	*out = NULL;
	if (n_kv_heads <= 0 || n_heads % n_kv_heads)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: %d query heads over %d kv heads", op,
				  n_heads, n_kv_heads);
	kernels_attn_seg *h = (kernels_attn_seg *)malloc((size_t)(nseg > 0 ? nseg : 1) * sizeof *h);
	if (!h)
		return cu_err_set(err, OWL_EFAIL, "cuda %s: cannot allocate %d segments", op, nseg);
	cudaError_t e = cudaMemcpyAsync(h, segs, (size_t)nseg * sizeof *h, cudaMemcpyDeviceToHost,
					c->stream);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(c->stream);
	if (e != cudaSuccess) {
		free(h);
		return cu_err_set(err, OWL_EFAIL, "cuda %s: reading the segments: %s", op,
				  cudaGetErrorString(e));
	}
	int end = 0;
	for (int s = 0; s < nseg; s++) {
		if (h[s].ntok <= 0 || h[s].tok0 < end) {
			int t0 = h[s].tok0, nt = h[s].ntok;
			free(h);
			return cu_err_set(err, OWL_EUSAGE, "cuda %s: segment %d (rows %d + %d) is empty or "
					  "overlaps the one before", op, s, t0, nt);
		}
		end = h[s].tok0 + h[s].ntok;
	}
	*out = h;
	*n_tok = end;
	return 0;
}

extern "C" int cu_attention_packed(kernels_backend *be, float *out, const float *q, const float *k,
				   const float *v, const kernels_attn_seg *segs, int nseg,
				   int n_heads, int n_kv_heads, int head_dim, int window,
				   const kernels_scratch *scratch, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	CU_TRY("attention_packed", cudaSetDevice(c->device));
	kernels_attn_seg *hs;
	int n_tok;
	int rc = host_segs(c, segs, nseg, n_heads, n_kv_heads, &hs, &n_tok, "attention_packed", err);
	if (rc)
		return rc;
	free(hs);
	return cu_attn_packed_forward(c, out, NULL, q, k, v, segs, nseg, n_heads, n_kv_heads,
				      head_dim, window, err);
}

// D[t][h] = dO . O over the head's columns; a warp per (token, head), the
// warps striding over the rows.
__global__ void ab_delta_kernel(float *D, const float *dout, const float *o, size_t rows, int hd)
{
	const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
	const int lane = threadIdx.x % 32;
	for (size_t r = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
		float s = 0.0f;
		for (int d = lane; d < hd; d += 32)
			s += dout[r * hd + d] * o[r * hd + d];
		for (int off = 16; off > 0; off /= 2)
			s += __shfl_xor_sync(0xffffffffu, s, off);
		if (lane == 0)
			D[r] = s;
	}
}

struct ab_args {
	float *dq, *dk, *dv;
	const float *dout, *q, *k, *v, *lse, *D;
	const kernels_attn_seg *segs;
	int n_heads, n_kv_heads, group, hd, window;
	float scale;
};

__device__ __forceinline__ int ab_lo(int p, int window)
{
	int lo = window ? p - window + 1 : 0;
	return lo < 0 ? 0 : lo;
}

// dQ: block (segment, query head, z) over tiles of AB_ROWS query rows;
// keys in tiles of 32 (lane j scores key j).
__global__ void __launch_bounds__(32 * AB_WARPS) ab_dq_kernel(ab_args a)
{
	CU_DYN_SHARED(float, sh);
	const int hd = a.hd, ld = hd + 1;
	float *sk = sh, *sv = sk + AB_T * ld;
	const kernels_attn_seg g = a.segs[blockIdx.x];
	const int h = blockIdx.y, u = h / a.group, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int qs = a.n_heads * hd, ks = a.n_kv_heads * hd;
	const int ntiles = (g.ntok + AB_ROWS - 1) / AB_ROWS;
	for (int tile = blockIdx.z; tile < ntiles; tile += gridDim.z) {
		const int i_first = tile * AB_ROWS;
		const int i_last = g.ntok - 1 < i_first + AB_ROWS - 1 ? g.ntok - 1 : i_first + AB_ROWS - 1;
		float acc[AB_RPW][AB_DPL], qv[AB_RPW][AB_DPL], dov[AB_RPW][AB_DPL], L[AB_RPW], Dr[AB_RPW];
#pragma unroll
		for (int r = 0; r < AB_RPW; r++) {
			int i = i_first + warp + AB_WARPS * r;
			size_t off = (size_t)(g.tok0 + (i <= i_last ? i : i_last)) * qs + (size_t)h * hd;
#pragma unroll
			for (int x = 0; x < AB_DPL; x++) {
				int d = lane + 32 * x;
				acc[r][x] = 0.0f;
				qv[r][x] = d < hd ? a.q[off + d] : 0.0f;
				dov[r][x] = d < hd ? a.dout[off + d] : 0.0f;
			}
			size_t li = (size_t)(g.tok0 + (i <= i_last ? i : i_last)) * a.n_heads + h;
			L[r] = a.lse[li];
			Dr[r] = a.D[li];
		}
		for (int j0 = ab_lo(i_first, a.window); j0 <= i_last; j0 += AB_T) {
			const int nk = i_last - j0 + 1 < AB_T ? i_last - j0 + 1 : AB_T;
			__syncthreads();
			for (int e = threadIdx.x; e < nk * hd; e += blockDim.x) {
				int jj = e / hd, d = e % hd;
				size_t off = (size_t)(g.tok0 + j0 + jj) * ks + (size_t)u * hd + d;
				sk[jj * ld + d] = a.k[off];
				sv[jj * ld + d] = a.v[off];
			}
			__syncthreads();
#pragma unroll
			for (int r = 0; r < AB_RPW; r++) {
				int i = i_first + warp + AB_WARPS * r;
				if (i > i_last)
					break;
				// lane's key: s = q . k, dP = dO . v (columns spread over lanes:
				// each lane forms its partial sums, the warp adds them per key)
				float ds_mine = 0.0f;
				for (int jj = 0; jj < nk; jj++) {
					float sp = 0.0f, dpp = 0.0f;
#pragma unroll
					for (int x = 0; x < AB_DPL; x++) {
						int d = lane + 32 * x;
						if (d < hd) {
							sp += qv[r][x] * sk[jj * ld + d];
							dpp += dov[r][x] * sv[jj * ld + d];
						}
					}
					for (int off = 16; off > 0; off /= 2) {
						sp += __shfl_xor_sync(0xffffffffu, sp, off);
						dpp += __shfl_xor_sync(0xffffffffu, dpp, off);
					}
					if (lane == jj)
						ds_mine = (j0 + jj >= ab_lo(i, a.window) && j0 + jj <= i)
								  ? expf(sp * a.scale - L[r]) * (dpp - Dr[r])
								  : 0.0f;
				}
				for (int jj = 0; jj < nk; jj++) {
					float dsb = __shfl_sync(0xffffffffu, ds_mine, jj);
#pragma unroll
					for (int x = 0; x < AB_DPL; x++) {
						int d = lane + 32 * x;
						if (d < hd)
							acc[r][x] += dsb * sk[jj * ld + d];
					}
				}
			}
		}
#pragma unroll
		for (int r = 0; r < AB_RPW; r++) {
			int i = i_first + warp + AB_WARPS * r;
			if (i > i_last)
				break;
			float *o = a.dq + (size_t)(g.tok0 + i) * qs + (size_t)h * hd;
#pragma unroll
			for (int x = 0; x < AB_DPL; x++) {
				int d = lane + 32 * x;
				if (d < hd)
					o[d] = acc[r][x] * a.scale;
			}
		}
		__syncthreads();
	}
}

// dK, dV: block (segment, kv head, z) over tiles of AB_ROWS key rows; the
// queries that see them (each query head of the group) in tiles of 32.
__global__ void __launch_bounds__(32 * AB_WARPS) ab_dkv_kernel(ab_args a)
{
	CU_DYN_SHARED(float, sh);
	const int hd = a.hd, ld = hd + 1;
	float *sq = sh, *sdo = sq + AB_T * ld, *sl = sdo + AB_T * ld, *sd = sl + AB_T;
	const kernels_attn_seg g = a.segs[blockIdx.x];
	const int u = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int qs = a.n_heads * hd, ks = a.n_kv_heads * hd;
	const int ntiles = (g.ntok + AB_ROWS - 1) / AB_ROWS;
	for (int tile = blockIdx.z; tile < ntiles; tile += gridDim.z) {
		const int j_first = tile * AB_ROWS;
		const int j_last = g.ntok - 1 < j_first + AB_ROWS - 1 ? g.ntok - 1 : j_first + AB_ROWS - 1;
		// the last query that sees a key of the tile
		int i_end = a.window ? j_last + a.window - 1 : g.ntok - 1;
		i_end = i_end > g.ntok - 1 ? g.ntok - 1 : i_end;
		float dk[AB_RPW][AB_DPL], dv[AB_RPW][AB_DPL], kv_[AB_RPW][AB_DPL], vv[AB_RPW][AB_DPL];
#pragma unroll
		for (int r = 0; r < AB_RPW; r++) {
			int j = j_first + warp + AB_WARPS * r;
			size_t off = (size_t)(g.tok0 + (j <= j_last ? j : j_last)) * ks + (size_t)u * hd;
#pragma unroll
			for (int x = 0; x < AB_DPL; x++) {
				int d = lane + 32 * x;
				dk[r][x] = dv[r][x] = 0.0f;
				kv_[r][x] = d < hd ? a.k[off + d] : 0.0f;
				vv[r][x] = d < hd ? a.v[off + d] : 0.0f;
			}
		}
		for (int h = u * a.group; h < (u + 1) * a.group; h++)
			for (int i0 = j_first; i0 <= i_end; i0 += AB_T) {
				const int ni = i_end - i0 + 1 < AB_T ? i_end - i0 + 1 : AB_T;
				__syncthreads();
				for (int e = threadIdx.x; e < ni * hd; e += blockDim.x) {
					int ii = e / hd, d = e % hd;
					size_t off = (size_t)(g.tok0 + i0 + ii) * qs + (size_t)h * hd + d;
					sq[ii * ld + d] = a.q[off];
					sdo[ii * ld + d] = a.dout[off];
				}
				for (int ii = threadIdx.x; ii < ni; ii += blockDim.x) {
					size_t li = (size_t)(g.tok0 + i0 + ii) * a.n_heads + h;
					sl[ii] = a.lse[li];
					sd[ii] = a.D[li];
				}
				__syncthreads();
#pragma unroll
				for (int r = 0; r < AB_RPW; r++) {
					int j = j_first + warp + AB_WARPS * r;
					if (j > j_last)
						break;
					// lane ii: query i0 + ii against key j
					float p_mine = 0.0f, ds_mine = 0.0f;
					for (int ii = 0; ii < ni; ii++) {
						float sp = 0.0f, dpp = 0.0f;
#pragma unroll
						for (int x = 0; x < AB_DPL; x++) {
							int d = lane + 32 * x;
							if (d < hd) {
								sp += sq[ii * ld + d] * kv_[r][x];
								dpp += sdo[ii * ld + d] * vv[r][x];
							}
						}
						for (int off = 16; off > 0; off /= 2) {
							sp += __shfl_xor_sync(0xffffffffu, sp, off);
							dpp += __shfl_xor_sync(0xffffffffu, dpp, off);
						}
						int i = i0 + ii;
						if (lane == ii && j <= i && j >= ab_lo(i, a.window)) {
							p_mine = expf(sp * a.scale - sl[ii]);
							ds_mine = p_mine * (dpp - sd[ii]);
						}
					}
					for (int ii = 0; ii < ni; ii++) {
						float pb = __shfl_sync(0xffffffffu, p_mine, ii);
						float db = __shfl_sync(0xffffffffu, ds_mine, ii);
#pragma unroll
						for (int x = 0; x < AB_DPL; x++) {
							int d = lane + 32 * x;
							if (d < hd) {
								dv[r][x] += pb * sdo[ii * ld + d];
								dk[r][x] += db * sq[ii * ld + d];
							}
						}
					}
				}
			}
#pragma unroll
		for (int r = 0; r < AB_RPW; r++) {
			int j = j_first + warp + AB_WARPS * r;
			if (j > j_last)
				break;
			size_t off = (size_t)(g.tok0 + j) * ks + (size_t)u * hd;
#pragma unroll
			for (int x = 0; x < AB_DPL; x++) {
				int d = lane + 32 * x;
				if (d < hd) {
					a.dk[off + d] = dk[r][x] * a.scale;
					a.dv[off + d] = dv[r][x];
				}
			}
		}
		__syncthreads();
	}
}

extern "C" int cu_attention_backward(kernels_backend *be, float *dq, float *dk, float *dv,
				     const float *dout, const float *q, const float *k,
				     const float *v, const kernels_attn_seg *segs, int nseg,
				     int n_heads, int n_kv_heads, int head_dim, int window,
				     const kernels_scratch *scratch, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	const char *op = "attention_backward";
	CU_TRY(op, cudaSetDevice(c->device));
	if (head_dim <= 0 || head_dim > AT_HD_MAX)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: head size %d (at most %d)", op, head_dim,
				  AT_HD_MAX);
	kernels_attn_seg *hs;
	int n_tok;
	int rc = host_segs(c, segs, nseg, n_heads, n_kv_heads, &hs, &n_tok, op, err);
	if (rc)
		return rc;
	int max_seg = 0;
	for (int s = 0; s < nseg; s++)
		max_seg = hs[s].ntok > max_seg ? hs[s].ntok : max_seg;
	free(hs);
	if (!n_tok)
		return 0;
	// workspace: O [n_tok][n_heads][hd], L and D [n_tok][n_heads]
	size_t rows = (size_t)n_tok * n_heads;
	void *work;
	if ((rc = cu_work(c, (rows * head_dim + 2 * rows) * sizeof(float), &work, err)))
		return rc;
	float *O = (float *)work, *L = O + rows * head_dim, *D = L + rows;
	if ((rc = cu_attn_packed_forward(c, O, L, q, k, v, segs, nseg, n_heads, n_kv_heads, head_dim,
					 window, err)))
		return rc;
	CU_LAUNCH(ab_delta_kernel, cu_blocks(rows, 8), 256, 0, c->stream)(D, dout, O, rows, head_dim);
	CU_LAUNCHED(op);
	// rows outside every segment get no key or value gradient
	CU_TRY(op, cudaMemsetAsync(dk, 0, (size_t)n_tok * n_kv_heads * head_dim * sizeof(float),
				   c->stream));
	CU_TRY(op, cudaMemsetAsync(dv, 0, (size_t)n_tok * n_kv_heads * head_dim * sizeof(float),
				   c->stream));
	ab_args a = {dq, dk, dv, dout, q, k, v, L, D, segs, n_heads, n_kv_heads,
		     n_heads / n_kv_heads, head_dim, window, 1.0f / sqrtf((float)head_dim)};
	int tiles = (max_seg + AB_ROWS - 1) / AB_ROWS;
	size_t smem_q = 2 * (size_t)AB_T * (head_dim + 1) * sizeof(float);
	size_t smem_kv = smem_q + 2 * (size_t)AB_T * sizeof(float);
	if (smem_kv > 48 * 1024) {
		CU_TRY(op, cudaFuncSetAttribute((const void *)ab_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						(int)smem_q));
		CU_TRY(op, cudaFuncSetAttribute((const void *)ab_dkv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						(int)smem_kv));
	}
	unsigned z = tiles > 64 ? 64u : (unsigned)tiles;
	CU_LAUNCH(ab_dq_kernel, dim3((unsigned)nseg, (unsigned)n_heads, z), 32 * AB_WARPS, smem_q, c->stream)(a);
	CU_LAUNCHED(op);
	CU_LAUNCH(ab_dkv_kernel, dim3((unsigned)nseg, (unsigned)n_kv_heads, z), 32 * AB_WARPS, smem_kv,
			c->stream)(a);
	CU_LAUNCHED(op);
	return 0;
}
