// Causal attention with GQA and an optional sliding window, flash-style:
// one block takes a tile of query rows that share a kv head (a few tokens
// times the query heads of that kv head), walks the keys in tiles of 32
// staged in shared memory, and keeps an online softmax per row (running
// max, running sum, output accumulator in registers). Scores are never
// written out. The same kernel serves
//  - decoding: a segment of one token gives a block all the query heads of
//    one kv head, so each key and value row is read once for the group;
//  - prompts: tiles of tokens, handed out over gridDim.z;
//  - training's packed segments (attention_packed.cu), whose keys are the
//    segment's own contiguous rows, with the rows' log-sum-exp kept for the
//    backward pass.
// Lane j of a warp scores key j of the tile (its dot product reads the
// query row from shared memory, broadcast), then every lane accumulates its
// own output columns d = lane, lane + 32, ... over the tile's keys.
#include "engine/kernels/cuda/attn.cuh"

enum {
	AT_WARPS = 4,
	AT_ROWS = 16, // query rows per block
	AT_RPW = AT_ROWS / AT_WARPS,
	AT_KT = 32,   // keys per tile: one per lane
	AT_DPL = AT_HD_MAX / 32,
};

struct at_args {
	float *out;
	const float *q;
	float *lse; // [n_tok][n_heads] or NULL
	const kernels_attn_seg *segs;
	int n_heads, head0, group, kv_head0, hd, window, nkv;
	float scale;
	// paged keys
	int paged, f16;
	const uint8_t *kc, *vc;
	size_t block_stride;
	int block_tokens, row_elems;
	// packed keys: [n_tok][kstride] floats
	const float *pk, *pv;
	int kstride;
};

// Element d of key (or value) j of kv head u, as f32.
__device__ __forceinline__ float at_load(const at_args &a, const uint8_t *base, const float *pbase,
					 const kernels_attn_seg &g, int u, int j, int d)
{
	if (!a.paged)
		return pbase[(size_t)(g.tok0 + j) * a.kstride + (size_t)u * a.hd + d];
	size_t eb = a.f16 ? 2 : 4;
	const uint8_t *row = base + (size_t)g.blocks[j / a.block_tokens] * a.block_stride +
			     ((size_t)(j % a.block_tokens) * a.row_elems + (size_t)u * a.hd + d) * eb;
	return a.f16 ? __half2float(*(const __half *)row) : *(const float *)row;
}

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o /= 2)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__global__ void __launch_bounds__(32 * AT_WARPS) attn_kernel(at_args a)
{
	CU_DYN_SHARED(float, sh);
	const int hd = a.hd, ldk = hd + 1; // padded rows: lanes reading one column hit distinct banks
	float *sq = sh, *sk = sq + AT_ROWS * hd, *sv = sk + AT_KT * ldk;
	const kernels_attn_seg g = a.segs[blockIdx.x];
	const int u = blockIdx.y; // the rank's kv head
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int pos0 = a.paged ? g.pos0 : 0;
	// The rank's query heads [ha, hb) read kv head u.
	int ha = (u + a.kv_head0) * a.group - a.head0, hb = ha + a.group;
	ha = ha < 0 ? 0 : ha;
	hb = hb > a.n_heads ? a.n_heads : hb;
	const int gh = hb - ha;
	if (gh <= 0 || g.ntok <= 0)
		return;
	const int hc_size = gh < AT_ROWS ? gh : AT_ROWS, nhc = (gh + hc_size - 1) / hc_size;
	const int tq = AT_ROWS / hc_size; // tokens per tile
	const int ntiles = (g.ntok + tq - 1) / tq * nhc;
	for (int tile = blockIdx.z; tile < ntiles; tile += gridDim.z) {
		const int hc = tile % nhc, t_first = tile / nhc * tq;
		const int h_first = ha + hc * hc_size;
		const int hcn = hb - h_first < hc_size ? hb - h_first : hc_size;
		const int nt = g.ntok - t_first < tq ? g.ntok - t_first : tq;
		const int nrows = nt * hcn;
		for (int e = threadIdx.x; e < nrows * hd; e += blockDim.x) {
			int r = e / hd, d = e % hd;
			int tok = g.tok0 + t_first + r / hcn, h = h_first + r % hcn;
			sq[e] = a.q[((size_t)tok * a.n_heads + h) * hd + d];
		}
		// Keys of the tile's rows: from the first row's window start to
		// the last row's position.
		const int p_first = pos0 + t_first, p_last = pos0 + t_first + nt - 1;
		int jlo = a.window ? p_first - a.window + 1 : 0;
		jlo = jlo < 0 ? 0 : jlo;
		float m[AT_RPW], l[AT_RPW], o[AT_RPW][AT_DPL];
		int rp[AT_RPW], rlo[AT_RPW];
#pragma unroll
		for (int k = 0; k < AT_RPW; k++) {
			m[k] = -INFINITY;
			l[k] = 0.0f;
			int r = warp + AT_WARPS * k;
			rp[k] = pos0 + t_first + r / hcn;
			rlo[k] = a.window ? rp[k] - a.window + 1 : 0;
			rlo[k] = rlo[k] < 0 ? 0 : rlo[k];
#pragma unroll
			for (int i = 0; i < AT_DPL; i++)
				o[k][i] = 0.0f;
		}
		for (int j0 = jlo; j0 <= p_last; j0 += AT_KT) {
			const int nk = p_last - j0 + 1 < AT_KT ? p_last - j0 + 1 : AT_KT;
			__syncthreads(); // the previous tile (and the query rows) are in place or done with
			for (int e = threadIdx.x; e < nk * hd; e += blockDim.x) {
				int jj = e / hd, d = e % hd;
				sk[jj * ldk + d] = at_load(a, a.kc, a.pk, g, u, j0 + jj, d);
				sv[jj * hd + d] = at_load(a, a.vc, a.pv, g, u, j0 + jj, d);
			}
			__syncthreads();
#pragma unroll
			for (int k = 0; k < AT_RPW; k++) {
				int r = warp + AT_WARPS * k;
				if (r >= nrows)
					break;
				int j = j0 + lane;
				float s = -INFINITY;
				if (lane < nk && j >= rlo[k] && j <= rp[k]) {
					const float *qr = sq + r * hd, *kr = sk + lane * ldk;
					float dot = 0.0f;
					for (int d = 0; d < hd; d++)
						dot += qr[d] * kr[d];
					s = dot * a.scale;
				}
				float mt = warp_max(s);
				if (mt == -INFINITY)
					continue; // every key of the tile is masked for this row
				float mnew = fmaxf(m[k], mt);
				float alpha = expf(m[k] - mnew);
				float pj = s == -INFINITY ? 0.0f : expf(s - mnew);
				l[k] = l[k] * alpha + warp_sum(pj);
				m[k] = mnew;
#pragma unroll
				for (int i = 0; i < AT_DPL; i++)
					o[k][i] *= alpha;
				for (int jj = 0; jj < nk; jj++) {
					float pb = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
					for (int i = 0; i < AT_DPL; i++) {
						int d = lane + 32 * i;
						if (d < hd)
							o[k][i] += pb * sv[jj * hd + d];
					}
				}
			}
		}
#pragma unroll
		for (int k = 0; k < AT_RPW; k++) {
			int r = warp + AT_WARPS * k;
			if (r >= nrows)
				break;
			int tok = g.tok0 + t_first + r / hcn, h = h_first + r % hcn;
			float *orow = a.out + ((size_t)tok * a.n_heads + h) * hd;
			float inv = 1.0f / l[k];
#pragma unroll
			for (int i = 0; i < AT_DPL; i++) {
				int d = lane + 32 * i;
				if (d < hd)
					orow[d] = o[k][i] * inv;
			}
			if (a.lse && lane == 0)
				a.lse[(size_t)tok * a.n_heads + h] = m[k] + logf(l[k]);
		}
		__syncthreads(); // sq is rewritten by the next tile
	}
}

static size_t at_smem(int hd)
{
	return ((size_t)AT_ROWS * hd + (size_t)AT_KT * (hd + 1) + (size_t)AT_KT * hd) * sizeof(float);
}

// Blocks along z: enough for the device when there are few segments (one
// long prompt), one when many segments fill it already (decoding).
static unsigned at_chunks(const cu_ctx *c, int nseg, int nkv)
{
	long want = 4L * c->sm_count / ((long)nseg * nkv);
	return want < 1 ? 1u : want > 64 ? 64u : (unsigned)want;
}

static int at_launch(cu_ctx *c, const at_args &a, int nseg, const char *op, owl_err *err)
{
	if (a.hd <= 0 || a.hd > AT_HD_MAX)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: head size %d (at most %d)", op, a.hd,
				  AT_HD_MAX);
	if (nseg <= 0 || a.nkv <= 0)
		return 0;
	size_t smem = at_smem(a.hd);
	if (smem > 48 * 1024)
		CU_TRY(op, cudaFuncSetAttribute((const void *)attn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
						(int)smem));
	dim3 grid((unsigned)nseg, (unsigned)a.nkv, at_chunks(c, nseg, a.nkv));
	CU_LAUNCH(attn_kernel, grid, 32 * AT_WARPS, smem, c->stream)(a);
	CU_LAUNCHED(op);
	return 0;
}

extern "C" int cu_attention(kernels_backend *be, float *out, const float *q,
			    const kernels_attn_seg *segs, int nseg, const kernels_kv_layer *kv,
			    int n_heads, int head0, int group, int kv_head0, int head_dim, int window,
			    const kernels_scratch *scratch, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (group <= 0 || n_heads <= 0)
		return cu_err_set(err, OWL_EUSAGE, "cuda attention: %d heads in groups of %d", n_heads,
				  group);
	CU_TRY("attention", cudaSetDevice(c->device));
	at_args a = {};
	a.out = out;
	a.q = q;
	a.segs = segs;
	a.n_heads = n_heads;
	a.head0 = head0;
	a.group = group;
	a.kv_head0 = kv_head0;
	a.hd = head_dim;
	a.window = window;
	a.nkv = (head0 + n_heads - 1) / group - kv_head0 + 1;
	a.scale = 1.0f / sqrtf((float)head_dim);
	a.paged = 1;
	a.f16 = kv->type == KERNELS_KV_F16;
	a.kc = kv->k;
	a.vc = kv->v;
	a.block_stride = kv->block_stride;
	a.block_tokens = kv->block_tokens;
	a.row_elems = kv->row_elems;
	return at_launch(c, a, nseg, "attention", err);
}

int cu_attn_packed_forward(cu_ctx *c, float *out, float *lse, const float *q, const float *k,
			   const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
			   int n_kv_heads, int hd, int window, owl_err *err)
{
	at_args a = {};
	a.out = out;
	a.q = q;
	a.lse = lse;
	a.segs = segs;
	a.n_heads = n_heads;
	a.head0 = 0;
	a.group = n_heads / n_kv_heads;
	a.kv_head0 = 0;
	a.hd = hd;
	a.window = window;
	a.nkv = n_kv_heads;
	a.scale = 1.0f / sqrtf((float)hd);
	a.paged = 0;
	a.pk = k;
	a.pv = v;
	a.kstride = n_kv_heads * hd;
	return at_launch(c, a, nseg, "attention_packed", err);
}
