/* The CPU backend's training ops: the forward attention over packed
 * segments, and the backward of every op the forward pass uses. Large
 * products are OpenBLAS sgemm calls, single-threaded inside OpenMP's threads
 * as in the rest of the backend; frozen weights are widened to f32 a band of
 * rows at a time into the caller's scratch, never whole. */
/* Kernels know no models: only the kernel layer's interface. */
#include "engine/kernels/cpu/cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include <immintrin.h>

#include "backward.h"
#include "vexp.h"

/* ---- the frozen projection: dx = dy W ------------------------------------- */

/* Rows per band of a widened weight: a multiple of the 16-row groups of the
 * repacked layouts, wide enough for sgemm to run near its peak. */
enum { MB_BAND = 256 };

/* matmul_widened: each thread widens whole bands of output rows into its
 * own tile. matmul_backward: the threads widen each band together into one
 * shared tile, and each multiplies its own rows of dy by it; a thread's
 * rows of dx are summed by it alone, band after band, so the sums are the
 * same bits on every run whatever the threads' timing (a resumed training
 * run must equal an uninterrupted one). */
size_t kernels_matmul_backward_scratch(int n, int cols, int threads)
{
	return (size_t)threads * MB_BAND * (size_t)cols;
}

/* Rows [r0, r0 + nr) of w as f32 into tile [nr][cols]. */
static void widen_rows(const kernels_weight *w, int r0, int nr, float *tile)
{
	const int cols = w->cols;
	if (w_r16_is_float(w)) {
		/* A 16-row group is stored column by column: [cols][16], the
		 * transpose of the tile's rows. */
		int es = w->type == KERNELS_F32 ? 4 : 2;
		for (int g = 0; g < nr / 16; g++) {
			const uint8_t *src = w->data + (size_t)(r0 / 16 + g) * 16 * w->row_bytes;
			float *dst = tile + (size_t)g * 16 * cols;
			for (int c = 0; c < cols; c++) {
				const uint8_t *p = src + (size_t)c * 16 * es;
				for (int lane = 0; lane < 16; lane++) {
					float v;
					if (es == 4) {
						memcpy(&v, p + 4 * lane, 4);
					} else {
						uint16_t h;
						memcpy(&h, p + 2 * lane, 2);
						if (w->type == KERNELS_F16) {
							v = _cvtsh_ss(h);
						} else {
							uint32_t bits = (uint32_t)h << 16;
							memcpy(&v, &bits, 4);
						}
					}
					dst[(size_t)lane * cols + c] = v;
				}
			}
		}
		return;
	}
	for (int r = 0; r < nr; r++)
		w_row_to_f32(w, r0 + r, tile + (size_t)r * cols);
}

/* f32 rows in the file's layout are multiplied in place. */
static int direct_f32(const kernels_weight *w)
{
	return w->type == KERNELS_F32 && !w->layout && w->row_bytes % 4 == 0;
}

static int widen_check(const kernels_weight *w, int n, const kernels_scratch *scratch,
		       int threads, const char *op, owl_err *err)
{
	if ((w_r16_is_float(w)) &&
	    w->rows % 16)
		return owl_err_set(err, OWL_EUSAGE, "%s: a repacked weight of %d rows", op, w->rows);
	size_t need = kernels_matmul_backward_scratch(n, w->cols, threads);
	if (!scratch || scratch->n < need)
		return owl_err_set(err, OWL_EFAIL, "%s of %d rows over %d columns needs %zu floats of "
				   "scratch, %zu given", op, n, w->cols, need, scratch ? scratch->n : 0);
	return 0;
}

int cpu_matmul_backward(kernels_backend *be, float *dx, const float *dy, const kernels_weight *w,
			int n, int accumulate, const kernels_scratch *scratch, owl_err *err)
{
	const int rows = w->rows, cols = w->cols, bands = (rows + MB_BAND - 1) / MB_BAND;
	if (n <= 0)
		return 0;
	int nt = omp_get_max_threads();
	nt = nt < n ? nt : n;
	int rc = widen_check(w, n, scratch, nt, "matmul_backward", err);
	if (rc)
		return rc;
	if (direct_f32(w)) {
		/* One product per thread over all of W's rows. */
		const float *wp = (const float *)(const void *)w->data;
		int ldw = (int)(w->row_bytes / 4);
#pragma omp parallel num_threads(nt)
		{
			int t = omp_get_thread_num(), n0 = (int)((long)n * t / nt), n1 = (int)((long)n * (t + 1) / nt);
			if (n1 > n0)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n1 - n0, cols, rows, 1.0f,
					    dy + (size_t)n0 * rows, rows, wp, ldw, accumulate ? 1.0f : 0.0f,
					    dx + (size_t)n0 * cols, cols);
		}
		return 0;
	}
	float *tile = scratch->data;
#pragma omp parallel num_threads(nt)
	{
		int t = omp_get_thread_num(), n0 = (int)((long)n * t / nt), n1 = (int)((long)n * (t + 1) / nt);
		for (int b = 0; b < bands; b++) {
			int r0 = b * MB_BAND, nr = rows - r0 < MB_BAND ? rows - r0 : MB_BAND;
			/* this thread's share of the band, whole 16-row groups */
			int groups = (nr + 15) / 16;
			int a0 = 16 * (int)((long)groups * t / nt);
			int a1 = t == nt - 1 ? nr : 16 * (int)((long)groups * (t + 1) / nt);
			a0 = a0 < nr ? a0 : nr;
			a1 = a1 < nr ? a1 : nr;
			if (a1 > a0)
				widen_rows(w, r0 + a0, a1 - a0, tile + (size_t)a0 * cols);
#pragma omp barrier
			if (n1 > n0)
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n1 - n0, cols, nr, 1.0f,
					    dy + (size_t)n0 * rows + r0, rows, tile, cols,
					    b == 0 && !accumulate ? 0.0f : 1.0f, dx + (size_t)n0 * cols, cols);
#pragma omp barrier
		}
	}
	return 0;
}

/* y = x W^T with W widened to f32 a band of rows at a time: for the
 * quantised types this is the exact product that matmul_backward
 * differentiates (matmul rounds x to 8 bits for the integer kernels). */
int cpu_matmul_widened(kernels_backend *be, float *y, const float *x, const kernels_weight *w, int n,
		       const kernels_scratch *scratch, owl_err *err)
{
	const int rows = w->rows, cols = w->cols, bands = (rows + MB_BAND - 1) / MB_BAND;
	if (n <= 0)
		return 0;
	int nt = omp_get_max_threads();
	nt = nt < bands ? nt : bands;
	int rc = widen_check(w, n, scratch, nt, "matmul_widened", err);
	if (rc)
		return rc;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
	for (int b = 0; b < bands; b++) {
		int r0 = b * MB_BAND, nr = rows - r0 < MB_BAND ? rows - r0 : MB_BAND;
		float *tile = scratch->data + (size_t)omp_get_thread_num() * MB_BAND * cols;
		const float *wp = tile;
		int ldw = cols;
		if (direct_f32(w)) {
			wp = (const float *)(const void *)(w->data + (size_t)r0 * w->row_bytes);
			ldw = (int)(w->row_bytes / 4);
		} else {
			widen_rows(w, r0, nr, tile);
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, cols, 1.0f, x, cols, wp, ldw,
			    0.0f, y + r0, rows);
	}
	return 0;
}

/* ---- LoRA ---------------------------------------------------------------------- */

int cpu_lora_backward(kernels_backend *be, float *dx, float *da, float *db, const float *dy,
			     const float *x, int n, int in, int out, int r, const float *a, int lda,
			     const float *b, int ldb, float scale, float *tmp, owl_err *err)
{
	if (n <= 0 || in <= 0 || out <= 0 || r <= 0 || lda < in || ldb < r)
		return owl_err_set(err, OWL_EUSAGE, "lora_backward: bad shapes n %d in %d out %d r %d "
				   "lda %d ldb %d", n, in, out, r, lda, ldb);
	float *xa = tmp, *g = tmp + (size_t)n * r; /* x A^T and scale dy B, [n, r] each */
	size_t work = (size_t)n * r * ((size_t)in + (size_t)out);
#pragma omp parallel if (work >= 65536)
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		int k0 = (int)((long)r * t / nt), k1 = (int)((long)r * (t + 1) / nt);
		if (k1 > k0) {
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, k1 - k0, in, 1.0f, x, in,
				    a + (size_t)k0 * lda, lda, 0.0f, xa + k0, r);
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, k1 - k0, out, scale, dy,
				    out, b + k0, ldb, 0.0f, g + k0, r);
			/* da[k0..k1) += g^T x */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k1 - k0, in, n, 1.0f, g + k0,
				    r, x, in, 1.0f, da + (size_t)k0 * lda, lda);
		}
#pragma omp barrier
		int o0 = (int)((long)out * t / nt), o1 = (int)((long)out * (t + 1) / nt);
		/* db[o0..o1) += scale dy^T xa */
		if (o1 > o0)
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, r, n, scale, dy + o0,
				    out, xa, r, 1.0f, db + (size_t)o0 * ldb, ldb);
		int i0 = (int)((long)in * t / nt), i1 = (int)((long)in * (t + 1) / nt);
		/* dx[:, i0..i1) += g A */
		if (dx && i1 > i0)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, i1 - i0, r, 1.0f, g, r,
				    a + i0, lda, 1.0f, dx + i0, in);
	}
	return 0;
}

/* ---- elementwise and row ops ------------------------------------------------ */

int cpu_embedding_backward(kernels_backend *be, float *dtable, const float *dy,
				  const int32_t *ids, int n, int dim, owl_err *err)
{
	for (int i = 0; i < n; i++) {
		if (ids[i] < 0)
			return owl_err_set(err, OWL_EUSAGE, "token id %d is negative", ids[i]);
		float *row = dtable + (size_t)ids[i] * dim;
		for (int j = 0; j < dim; j++)
			row[j] += dy[(size_t)i * dim + j];
	}
	return 0;
}

/* y = x s w with s = 1 / sqrt(mean(x^2) + eps):
 * dx = s (w dy) - x s^3 / dim * sum(w dy x). */
int cpu_rmsnorm_backward(kernels_backend *be, float *dx, float *dweight, const float *dout,
				const float *x, const float *weight, int rows, int dim, float eps,
				owl_err *err)
{
#pragma omp parallel for schedule(static) if (rows > 1)
	for (int i = 0; i < rows; i++) {
		const float *xr = x + (size_t)i * dim, *dr = dout + (size_t)i * dim;
		double ss = 0, dot = 0;
		for (int j = 0; j < dim; j++) {
			ss += (double)xr[j] * xr[j];
			dot += (double)weight[j] * dr[j] * xr[j];
		}
		float s = 1.0f / sqrtf((float)(ss / dim) + eps);
		float c = (float)(dot * s * s * s / dim);
		float *o = dx + (size_t)i * dim;
		for (int j = 0; j < dim; j++)
			o[j] += s * weight[j] * dr[j] - c * xr[j];
	}
	if (dweight)
		for (int i = 0; i < rows; i++) {
			const float *xr = x + (size_t)i * dim, *dr = dout + (size_t)i * dim;
			double ss = 0;
			for (int j = 0; j < dim; j++)
				ss += (double)xr[j] * xr[j];
			float s = 1.0f / sqrtf((float)(ss / dim) + eps);
			for (int j = 0; j < dim; j++)
				dweight[j] += dr[j] * xr[j] * s;
		}
	return 0;
}

/* The rotation's transpose is the rotation by minus the angle. The angles
 * are computed exactly as the forward rope computes them. */
int cpu_rope_backward(kernels_backend *be, float *dx, int n_tok, const int32_t *pos,
			     int n_heads, int hd, const float *inv_freq, kernels_rope_layout layout,
			     owl_err *err)
{
	int half = hd / 2, adjacent = layout == KERNELS_ROPE_ADJACENT;
#pragma omp parallel for schedule(static) if (n_tok > 1)
	for (int t = 0; t < n_tok; t++)
		for (int i = 0; i < half; i++) {
			float a = (float)pos[t] * inv_freq[i], c = cosf(a), s = sinf(a);
			int i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
			for (int h = 0; h < n_heads; h++) {
				float *v = dx + ((size_t)t * n_heads + h) * hd;
				float g0 = v[i0], g1 = v[i1];
				v[i0] = g0 * c + g1 * s;
				v[i1] = -g0 * s + g1 * c;
			}
		}
	return 0;
}

/* h = g sig(g) u: dg = dh u sig(g) (1 + g (1 - sig(g))), du = dh g sig(g). */
int cpu_swiglu_backward(kernels_backend *be, float *dgate, float *dup, const float *dout,
			       const float *gate, const float *up, size_t n, owl_err *err)
{
	size_t n8 = n / 8 * 8;
	const __m256 one = _mm256_set1_ps(1.0f);
#pragma omp parallel for schedule(static) if (n > 16384)
	for (size_t i = 0; i < n8; i += 8) {
		__m256 g = _mm256_loadu_ps(gate + i), d = _mm256_loadu_ps(dout + i);
		__m256 sg = _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
		__m256 dsg = _mm256_mul_ps(sg, _mm256_fmadd_ps(g, _mm256_sub_ps(one, sg), one));
		_mm256_storeu_ps(dgate + i, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(up + i)), dsg));
		_mm256_storeu_ps(dup + i, _mm256_mul_ps(d, _mm256_mul_ps(g, sg)));
	}
	for (size_t i = n8; i < n; i++) {
		float g = gate[i], sg = 1.0f / (1.0f + expf(-g)), d = dout[i];
		dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
		dup[i] = d * g * sg;
	}
	return 0;
}

int cpu_cross_entropy_backward(kernels_backend *be, float *dlogits, const float *logits,
				      const int32_t *targets, int rows, int vocab, float scale,
				      double *loss_sum, int64_t *count, owl_err *err)
{
	for (int r = 0; r < rows; r++)
		if (targets[r] < -1 || targets[r] >= vocab)
			return owl_err_set(err, OWL_EUSAGE, "target %d of row %d is outside the vocabulary "
					   "of %d", targets[r], r, vocab);
	double total = 0;
	int64_t cnt = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, cnt) if (rows > 1)
	for (int r = 0; r < rows; r++) {
		const float *row = logits + (size_t)r * vocab;
		float *d = dlogits + (size_t)r * vocab;
		int tgt = targets[r];
		if (tgt < 0) {
			memset(d, 0, (size_t)vocab * sizeof *d);
			continue;
		}
		float mx = row[0], lt = row[tgt];
		for (int v = 1; v < vocab; v++)
			mx = row[v] > mx ? row[v] : mx;
		/* the exponentials go to d (which may be the logits themselves) */
		if (d != row)
			memcpy(d, row, (size_t)vocab * sizeof *d);
		float sum = exp_sub_sum(d, 0, vocab - 1, mx);
		total += log((double)sum) + mx - lt;
		cnt++;
		__m256 k = _mm256_set1_ps(scale / sum);
		int v = 0;
		for (; v + 8 <= vocab; v += 8)
			_mm256_storeu_ps(d + v, _mm256_mul_ps(_mm256_loadu_ps(d + v), k));
		for (; v < vocab; v++)
			d[v] *= scale / sum;
		d[tgt] -= scale;
	}
	*loss_sum = total;
	*count = cnt;
	return 0;
}

int cpu_adamw_step(kernels_backend *be, float *p, const float *g, float *m, float *v, size_t n,
			  float lr, float beta1, float beta2, float eps, float weight_decay, int step,
			  owl_err *err)
{
	if (step < 1)
		return owl_err_set(err, OWL_EUSAGE, "adamw: step %d, steps count from 1", step);
	/* torch.optim.AdamW's order of operations (its non-foreach path). */
	float bc1 = 1.0f - powf(beta1, (float)step), bc2 = 1.0f - powf(beta2, (float)step);
	float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2);
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++) {
		p[i] *= 1.0f - lr * weight_decay;
		m[i] += (g[i] - m[i]) * (1.0f - beta1);
		v[i] = v[i] * beta2 + (1.0f - beta2) * g[i] * g[i];
		float denom = sqrtf(v[i]) / bc2_sqrt + eps;
		p[i] -= step_size * m[i] / denom;
	}
	return 0;
}

/* ---- attention over packed segments ------------------------------------- */

/* Query rows per band: a band's scores are ATT_BAND x (its segment's
 * tokens) floats. */
enum { ATT_BAND = 64 };

size_t kernels_attention_packed_scratch(int n_tok, int max_seg, int q_elems, int threads)
{
	/* per thread two score bands; then per query head its own dk and dv
	 * (summed over the group at the end) */
	return (size_t)threads * 2 * ATT_BAND * (size_t)max_seg + 2 * (size_t)n_tok * (size_t)q_elems;
}

/* The rows the segments end at, and the longest segment. */
static int check_segs(const kernels_attn_seg *segs, int nseg, int n_heads, int n_kv_heads,
		      int *n_tok, int *max_seg, owl_err *err)
{
	int end = 0;
	*max_seg = 0;
	if (n_kv_heads <= 0 || n_heads % n_kv_heads)
		return owl_err_set(err, OWL_EUSAGE, "attention: %d query heads over %d kv heads", n_heads,
				   n_kv_heads);
	for (int s = 0; s < nseg; s++) {
		if (segs[s].ntok <= 0 || segs[s].tok0 < end)
			return owl_err_set(err, OWL_EUSAGE, "attention: segment %d (rows %d + %d) is empty "
					   "or overlaps the one before", s, segs[s].tok0, segs[s].ntok);
		end = segs[s].tok0 + segs[s].ntok;
		*max_seg = segs[s].ntok > *max_seg ? segs[s].ntok : *max_seg;
	}
	*n_tok = end;
	return 0;
}

/* Scores of query rows [r0, r0 + nr) of a segment (one head) against keys
 * [0, kend): S = scale q k^T, masked (causal, window) and softmaxed in
 * place into P, rows kend floats apart. */
static void band_probs(float *S, const float *q, int qstride, const float *k, int kstride, int r0,
		       int nr, int kend, int hd, int window)
{
	const float scale = 1.0f / sqrtf((float)hd);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, kend, hd, scale, q + (size_t)r0 * qstride,
		    qstride, k, kstride, 0.0f, S, kend);
	for (int i = 0; i < nr; i++) {
		float *row = S + (size_t)i * kend;
		int p = r0 + i, lo = window && p - window + 1 > 0 ? p - window + 1 : 0;
		float mx = -INFINITY;
		for (int j = lo; j <= p; j++)
			mx = row[j] > mx ? row[j] : mx;
		float inv = 1.0f / exp_sub_sum(row, lo, p, mx);
		for (int j = 0; j < lo; j++)
			row[j] = 0.0f;
		for (int j = lo; j <= p; j++)
			row[j] *= inv;
		for (int j = p + 1; j < kend; j++)
			row[j] = 0.0f;
	}
}

int cpu_attention_packed(kernels_backend *be, float *out, const float *q, const float *k,
				const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
				int n_kv_heads, int hd, int window, const kernels_scratch *scratch,
				owl_err *err)
{
	int n_tok, max_seg, threads = omp_get_max_threads();
	int rc = check_segs(segs, nseg, n_heads, n_kv_heads, &n_tok, &max_seg, err);
	if (rc)
		return rc;
	size_t need = (size_t)threads * ATT_BAND * (size_t)max_seg;
	if (!scratch || scratch->n < need)
		return owl_err_set(err, OWL_EFAIL, "attention over segments of %d tokens needs %zu floats "
				   "of scratch, %zu given", max_seg, need, scratch ? scratch->n : 0);
	int group = n_heads / n_kv_heads, qs = n_heads * hd, ks = n_kv_heads * hd;
	/* tasks: (segment, head, band), the last bands of a segment first */
	int ntask = 0;
	for (int s = 0; s < nseg; s++)
		ntask += n_heads * ((segs[s].ntok + ATT_BAND - 1) / ATT_BAND);
#pragma omp parallel for schedule(dynamic, 1)
	for (int task = 0; task < ntask; task++) {
		int s = 0, rest = task;
		while (rest >= n_heads * ((segs[s].ntok + ATT_BAND - 1) / ATT_BAND)) {
			rest -= n_heads * ((segs[s].ntok + ATT_BAND - 1) / ATT_BAND);
			s++;
		}
		int bands = (segs[s].ntok + ATT_BAND - 1) / ATT_BAND;
		int h = rest % n_heads, b = bands - 1 - rest / n_heads;
		int t0 = segs[s].tok0, r0 = b * ATT_BAND;
		int nr = segs[s].ntok - r0 < ATT_BAND ? segs[s].ntok - r0 : ATT_BAND, kend = r0 + nr;
		int kvh = h / group;
		float *S = scratch->data + (size_t)omp_get_thread_num() * ATT_BAND * max_seg;
		band_probs(S, q + (size_t)t0 * qs + (size_t)h * hd, qs, k + (size_t)t0 * ks + (size_t)kvh * hd,
			   ks, r0, nr, kend, hd, window);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, kend, 1.0f, S, kend,
			    v + (size_t)t0 * ks + (size_t)kvh * hd, ks, 0.0f,
			    out + (size_t)(t0 + r0) * qs + (size_t)h * hd, qs);
	}
	return 0;
}

/* Per (segment, query head): for each band of query rows, P again, then
 * dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K, and the head's
 * own dK += scale dS^T Q, dV += P^T dO; the heads of a group are summed
 * into dk, dv at the end (no two tasks write the same memory). */
int cpu_attention_backward(kernels_backend *be, float *dq, float *dk, float *dv,
				  const float *dout, const float *q, const float *k, const float *v,
				  const kernels_attn_seg *segs, int nseg, int n_heads, int n_kv_heads,
				  int hd, int window, const kernels_scratch *scratch, owl_err *err)
{
	int n_tok, max_seg, threads = omp_get_max_threads();
	int rc = check_segs(segs, nseg, n_heads, n_kv_heads, &n_tok, &max_seg, err);
	if (rc)
		return rc;
	int group = n_heads / n_kv_heads, qs = n_heads * hd, ks = n_kv_heads * hd;
	size_t need = kernels_attention_packed_scratch(n_tok, max_seg, qs, threads);
	if (!scratch || scratch->n < need)
		return owl_err_set(err, OWL_EFAIL, "attention_backward over %d tokens needs %zu floats "
				   "of scratch, %zu given", n_tok, need, scratch ? scratch->n : 0);
	const float scale = 1.0f / sqrtf((float)hd);
	float *hk = scratch->data + (size_t)threads * 2 * ATT_BAND * max_seg; /* [n_tok][n_heads][hd] */
	float *hv = hk + (size_t)n_tok * qs;
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
	for (int s = 0; s < nseg; s++)
		for (int h = 0; h < n_heads; h++) {
			int t0 = segs[s].tok0, nt = segs[s].ntok, kvh = h / group;
			float *P = scratch->data + (size_t)omp_get_thread_num() * 2 * ATT_BAND * max_seg;
			float *dP = P + (size_t)ATT_BAND * max_seg;
			const float *qh = q + (size_t)t0 * qs + (size_t)h * hd;
			const float *doh = dout + (size_t)t0 * qs + (size_t)h * hd;
			const float *kh = k + (size_t)t0 * ks + (size_t)kvh * hd;
			const float *vh = v + (size_t)t0 * ks + (size_t)kvh * hd;
			float *dkh = hk + (size_t)t0 * qs + (size_t)h * hd, *dvh = hv + (size_t)t0 * qs + (size_t)h * hd;
			for (int i = 0; i < nt; i++) {
				memset(dkh + (size_t)i * qs, 0, (size_t)hd * sizeof(float));
				memset(dvh + (size_t)i * qs, 0, (size_t)hd * sizeof(float));
			}
			for (int r0 = 0; r0 < nt; r0 += ATT_BAND) {
				int nr = nt - r0 < ATT_BAND ? nt - r0 : ATT_BAND, kend = r0 + nr;
				band_probs(P, qh, qs, kh, ks, r0, nr, kend, hd, window);
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, kend, hd, 1.0f,
					    doh + (size_t)r0 * qs, qs, vh, ks, 0.0f, dP, kend);
				for (int i = 0; i < nr; i++) {
					float *pr = P + (size_t)i * kend, *dr = dP + (size_t)i * kend;
					int p = r0 + i;
					float dsum = 0;
					for (int j = 0; j <= p; j++)
						dsum += pr[j] * dr[j];
					for (int j = 0; j < kend; j++)
						dr[j] = pr[j] * (dr[j] - dsum);
				}
				/* dP now holds dS */
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, kend, scale, dP,
					    kend, kh, ks, 0.0f, dq + (size_t)(t0 + r0) * qs + (size_t)h * hd, qs);
				cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hd, nr, scale, dP, kend,
					    qh + (size_t)r0 * qs, qs, 1.0f, dkh, qs);
				cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kend, hd, nr, 1.0f, P, kend,
					    doh + (size_t)r0 * qs, qs, 1.0f, dvh, qs);
			}
		}
	/* rows outside every segment get no gradient */
#pragma omp parallel for schedule(static)
	for (int t = 0; t < n_tok; t++)
		for (int g = 0; g < n_kv_heads; g++) {
			float *ok = dk + (size_t)t * ks + (size_t)g * hd, *ov = dv + (size_t)t * ks + (size_t)g * hd;
			memset(ok, 0, (size_t)hd * sizeof(float));
			memset(ov, 0, (size_t)hd * sizeof(float));
		}
	for (int s = 0; s < nseg; s++) {
		int t0 = segs[s].tok0, nt = segs[s].ntok;
#pragma omp parallel for schedule(static)
		for (int t = t0; t < t0 + nt; t++)
			for (int h = 0; h < n_heads; h++) {
				float *ok = dk + (size_t)t * ks + (size_t)(h / group) * hd;
				float *ov = dv + (size_t)t * ks + (size_t)(h / group) * hd;
				const float *ik = hk + (size_t)t * qs + (size_t)h * hd;
				const float *iv = hv + (size_t)t * qs + (size_t)h * hd;
				for (int j = 0; j < hd; j++) {
					ok[j] += ik[j];
					ov[j] += iv[j];
				}
			}
	}
	return 0;
}


/* ---- LoRA dropout ------------------------------------------------------------- */

/* Whether element i is kept: kernels.h's mask, splitmix64 of seed ^ i * phi. */
static int dropout_kept(uint64_t seed, size_t i, float p)
{
	uint64_t z = (seed ^ ((uint64_t)i * 0x9e3779b97f4a7c15ull)) + 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) * (1.0 / 9007199254740992.0) >= p;
}

int cpu_dropout(kernels_backend *be, float *y, const float *x, size_t n, uint64_t seed, float p,
		int accumulate, owl_err *err)
{
	if (!(p >= 0 && p < 1))
		return owl_err_set(err, OWL_EUSAGE, "dropout: p %g is outside [0, 1)", p);
	float keep = 1.0f / (1.0f - p);
	if (accumulate) {
#pragma omp parallel for schedule(static) if (n > 65536)
		for (size_t i = 0; i < n; i++)
			if (dropout_kept(seed, i, p))
				y[i] += x[i] * keep;
		return 0;
	}
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++)
		y[i] = dropout_kept(seed, i, p) ? x[i] * keep : 0.0f;
	return 0;
}
