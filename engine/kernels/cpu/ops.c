/* CPU kernels: matrix-vector products that read f32, f16, bf16 and
 * quantised weights in place (decode), and GEMM through OpenBLAS with
 * weights widened to f32 a block of rows at a time (prompt processing), so
 * no full f32 copy of a quantised model ever exists. */
#include "engine/internal.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

size_t wtype_row_bytes(wtype t, int cols)
{
	switch (t) {
	case W_F32: return (size_t)cols * 4;
	case W_F16:
	case W_BF16: return (size_t)cols * 2;
	case W_Q8_0: return cols % 32 ? 0 : (size_t)cols / 32 * 34;
	case W_Q4_0: return cols % 32 ? 0 : (size_t)cols / 32 * 18;
	case W_Q4_1: return cols % 32 ? 0 : (size_t)cols / 32 * 20;
	case W_Q4_K: return cols % 256 ? 0 : (size_t)cols / 256 * 144;
	case W_Q6_K: return cols % 256 ? 0 : (size_t)cols / 256 * 210;
	}
	return 0;
}

const char *wtype_name(wtype t)
{
	static const char *const names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k",
					    "q6_k"};
	return names[t];
}

static gguf_type to_gguf(wtype t)
{
	static const gguf_type m[] = {GGUF_T_F32, GGUF_T_F16, GGUF_T_BF16, GGUF_T_Q8_0,
				      GGUF_T_Q4_0, GGUF_T_Q4_1, GGUF_T_Q4_K, GGUF_T_Q6_K};
	return m[t];
}

static inline float f16(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

void w_row_to_f32(const wmat *w, int row, float *dst)
{
	const uint8_t *p = w->data + (size_t)row * w->row_bytes;
	if (w->type == W_F16) {
		int i = 0;
		for (; i + 8 <= w->cols; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
		for (; i < w->cols; i++)
			dst[i] = f16(p + 2 * i);
		return;
	}
	gguf_dequantize_row(to_gguf(w->type), p, dst, (size_t)w->cols, NULL);
}

/* ---- dot products of one weight row with an f32 vector ------------------- */

static inline float hsum(__m256 v)
{
	__m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
	lo = _mm_add_ps(lo, hi);
	lo = _mm_hadd_ps(lo, lo);
	lo = _mm_hadd_ps(lo, lo);
	return _mm_cvtss_f32(lo);
}

static float dot_f32(const float *w, const float *x, int n);

float vec_dot(const float *a, const float *b, int n)
{
	return dot_f32(a, b, n);
}

void vec_axpy(float *y, float a, const float *x, int n)
{
	__m256 va = _mm256_set1_ps(a);
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
	for (; i < n; i++)
		y[i] += a * x[i];
}

/* Four accumulators: one FMA chain waits 4 cycles per step, four chains keep
 * the unit busy, so a row streams at memory speed instead of FMA latency. */
static float dot_f32(const float *w, const float *x, int n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
	float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (; i < n; i++)
		s += w[i] * x[i];
	return s;
}

static inline __m256 ld_f16(const uint8_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static float dot_f16(const uint8_t *w, const float *x, int n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		a0 = _mm256_fmadd_ps(ld_f16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(ld_f16(w + 2 * i + 16), _mm256_loadu_ps(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(ld_f16(w + 2 * i + 32), _mm256_loadu_ps(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(ld_f16(w + 2 * i + 48), _mm256_loadu_ps(x + i + 24), a3);
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_fmadd_ps(ld_f16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
	float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (; i < n; i++)
		s += f16(w + 2 * i) * x[i];
	return s;
}

static inline __m256 ld_bf16(const uint8_t *p)
{
	__m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

static float dot_bf16(const uint8_t *w, const float *x, int n)
{
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int i = 0;
	for (; i + 32 <= n; i += 32) {
		a0 = _mm256_fmadd_ps(ld_bf16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
		a1 = _mm256_fmadd_ps(ld_bf16(w + 2 * i + 16), _mm256_loadu_ps(x + i + 8), a1);
		a2 = _mm256_fmadd_ps(ld_bf16(w + 2 * i + 32), _mm256_loadu_ps(x + i + 16), a2);
		a3 = _mm256_fmadd_ps(ld_bf16(w + 2 * i + 48), _mm256_loadu_ps(x + i + 24), a3);
	}
	for (; i + 8 <= n; i += 8)
		a0 = _mm256_fmadd_ps(ld_bf16(w + 2 * i), _mm256_loadu_ps(x + i), a0);
	float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (; i < n; i++) {
		uint16_t h;
		memcpy(&h, w + 2 * i, 2);
		uint32_t bits = (uint32_t)h << 16;
		float v;
		memcpy(&v, &bits, 4);
		s += v * x[i];
	}
	return s;
}

/* 32 signed bytes times 32 floats, as floats. */
static inline __m256 dot32_i8(const int8_t *q, const float *x)
{
	__m256 acc = _mm256_setzero_ps();
	for (int k = 0; k < 32; k += 8) {
		__m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + k))));
		acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + k), acc);
	}
	return acc;
}

static float dot_q8_0(const uint8_t *w, const float *x, int n)
{
	__m256 acc = _mm256_setzero_ps();
	for (int b = 0; b < n / 32; b++, w += 34, x += 32)
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w)), dot32_i8((const int8_t *)(w + 2), x), acc);
	return hsum(acc);
}

/* Q4_0 / Q4_1: low nibbles are elements 0-15, high nibbles 16-31. */
static inline void unpack_q4(const uint8_t *qs, int8_t *out, int offset)
{
	for (int i = 0; i < 16; i++) {
		out[i] = (int8_t)((qs[i] & 0xF) - offset);
		out[i + 16] = (int8_t)((qs[i] >> 4) - offset);
	}
}

static float dot_q4_0(const uint8_t *w, const float *x, int n)
{
	__m256 acc = _mm256_setzero_ps();
	int8_t q[32];
	for (int b = 0; b < n / 32; b++, w += 18, x += 32) {
		unpack_q4(w + 2, q, 8);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w)), dot32_i8(q, x), acc);
	}
	return hsum(acc);
}

static float dot_q4_1(const uint8_t *w, const float *x, int n)
{
	__m256 acc = _mm256_setzero_ps();
	float mins = 0;
	int8_t q[32];
	for (int b = 0; b < n / 32; b++, w += 20, x += 32) {
		unpack_q4(w + 4, q, 0);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(f16(w)), dot32_i8(q, x), acc);
		/* d*q + m summed against x: the m part is m * sum(x). */
		__m256 sx = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
					  _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
		mins += f16(w + 2) * hsum(sx);
	}
	return hsum(acc) + mins;
}

/* ---- decode: integer dot products against activations quantised to Q8 ----
 * One matrix-vector product reads every weight once, so its speed is the
 * speed of reading the weights: x is quantised once to blocks of 32 int8 with
 * one scale, and each weight block is multiplied with it in integers
 * (maddubs), as compact as the weights themselves. */

typedef struct q8x {
	float d;     /* scale: x ~= d * q */
	float sum;   /* d * qsum: the block's sum as quantised, for Q4_1's offsets
		      * (the quantised sum, not the exact one, keeps the error of
		      * d*q*x and m*x consistent, as the prompt path does) */
	int qsum;    /* sum of q, for Q4_0's offset of 8 */
	int8_t q[32];
} q8x;

static void quantize_x(const float *x, int n, q8x *out)
{
	for (int b = 0; b < n / 32; b++) {
		const float *v = x + 32 * b;
		float amax = 0;
		for (int i = 0; i < 32; i++) {
			float a = fabsf(v[i]);
			if (a > amax)
				amax = a;
		}
		float d = amax / 127.0f, id = d ? 1.0f / d : 0;
		out[b].d = d;
		out[b].qsum = 0;
		for (int i = 0; i < 32; i++) {
			out[b].q[i] = (int8_t)lrintf(v[i] * id);
			out[b].qsum += out[b].q[i];
		}
		out[b].sum = d * (float)out[b].qsum;
	}
}

/* Sum of 32 signed products, as 8 int32 lanes. */
static inline __m256i dot_i8(__m256i w, __m256i x)
{
	__m256i aw = _mm256_sign_epi8(w, w), sx = _mm256_sign_epi8(x, w);
	return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles first (elements 0-15), then high. */
static inline __m256i nibbles(const uint8_t *q)
{
	__m128i b = _mm_loadu_si128((const __m128i *)q);
	__m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
	return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

static float qdot_q8_0(const uint8_t *w, const q8x *x, int nb)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int b = 0;
	for (; b + 1 < nb; b += 2, w += 68) {
		__m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)(w + 2)),
				    _mm256_loadu_si256((const __m256i *)x[b].q));
		__m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)(w + 36)),
				    _mm256_loadu_si256((const __m256i *)x[b + 1].q));
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w + 34) * x[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; b < nb; b++, w += 34) {
		__m256i p = dot_i8(_mm256_loadu_si256((const __m256i *)(w + 2)),
				   _mm256_loadu_si256((const __m256i *)x[b].q));
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w) * x[b].d), _mm256_cvtepi32_ps(p), acc0);
	}
	return hsum(_mm256_add_ps(acc0, acc1));
}

/* Q4_0 stores q in 0..15 meaning q - 8: sum((q-8)*x) = sum(q*x) - 8*sum(x),
 * so the unsigned nibbles go straight into maddubs (u8 x i8). */
static float qdot_q4_0(const uint8_t *w, const q8x *x, int nb)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	const __m256i ones = _mm256_set1_epi16(1);
	float off = 0;
	int b = 0;
	for (; b + 1 < nb; b += 2, w += 36) {
		__m256i p0 = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 2), _mm256_loadu_si256((const __m256i *)x[b].q)), ones);
		__m256i p1 = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 20), _mm256_loadu_si256((const __m256i *)x[b + 1].q)), ones);
		float s0 = f16(w) * x[b].d, s1 = f16(w + 18) * x[b + 1].d;
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s1), _mm256_cvtepi32_ps(p1), acc1);
		off += s0 * (float)x[b].qsum + s1 * (float)x[b + 1].qsum;
	}
	for (; b < nb; b++, w += 18) {
		__m256i p = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 2), _mm256_loadu_si256((const __m256i *)x[b].q)), ones);
		float s0 = f16(w) * x[b].d;
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0), _mm256_cvtepi32_ps(p), acc0);
		off += s0 * (float)x[b].qsum;
	}
	return hsum(_mm256_add_ps(acc0, acc1)) - 8.0f * off;
}

static float qdot_q4_1(const uint8_t *w, const q8x *x, int nb)
{
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	float mins = 0;
	const __m256i ones = _mm256_set1_epi16(1);
	int b = 0;
	/* Two blocks per step: two independent chains keep the FMA units busy. */
	for (; b + 1 < nb; b += 2, w += 40) {
		__m256i p0 = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 4), _mm256_loadu_si256((const __m256i *)x[b].q)), ones);
		__m256i p1 = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 24), _mm256_loadu_si256((const __m256i *)x[b + 1].q)), ones);
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w) * x[b].d), _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w + 20) * x[b + 1].d), _mm256_cvtepi32_ps(p1), acc1);
		mins += f16(w + 2) * x[b].sum + f16(w + 22) * x[b + 1].sum;
	}
	for (; b < nb; b++, w += 20) {
		/* Unsigned nibbles times signed bytes: maddubs takes them as they are. */
		__m256i p = _mm256_madd_epi16(
			_mm256_maddubs_epi16(nibbles(w + 4), _mm256_loadu_si256((const __m256i *)x[b].q)), ones);
		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16(w) * x[b].d), _mm256_cvtepi32_ps(p), acc0);
		mins += f16(w + 2) * x[b].sum;
	}
	return hsum(_mm256_add_ps(acc0, acc1)) + mins;
}

static float dot_row(const wmat *w, int r, const float *x, float *scratch)
{
	const uint8_t *p = w->data + (size_t)r * w->row_bytes;
	switch (w->type) {
	case W_F32: return dot_f32((const float *)p, x, w->cols);
	case W_F16: return dot_f16(p, x, w->cols);
	case W_BF16: return dot_bf16(p, x, w->cols);
	case W_Q8_0: return dot_q8_0(p, x, w->cols);
	case W_Q4_0: return dot_q4_0(p, x, w->cols);
	case W_Q4_1: return dot_q4_1(p, x, w->cols);
	default:
		/* K-quants: one row widened into the caller's scratch, then dotted. */
		w_row_to_f32(w, r, scratch);
		return dot_f32(scratch, x, w->cols);
	}
}

typedef float (*qdot_fn)(const uint8_t *, const q8x *, int);

static qdot_fn qdot_for(wtype t)
{
	return t == W_Q8_0 ? qdot_q8_0 : t == W_Q4_0 ? qdot_q4_0 : t == W_Q4_1 ? qdot_q4_1 : NULL;
}

void w_matvec_multi(const wmat *const *ws, float *const *ys, int k, const float *x)
{
	/* Activations quantised once per distinct need; all matrices share x. */
	int cols = ws[0]->cols, nb = cols / 32, need_q = 0, need_scratch = 0, total = 0;
	for (int m = 0; m < k; m++) {
		need_q |= qdot_for(ws[m]->type) != NULL;
		need_scratch |= ws[m]->type == W_Q4_K || ws[m]->type == W_Q6_K;
		total += ws[m]->rows;
	}
	q8x *xq = NULL;
	if (need_q) {
		xq = malloc((size_t)nb * sizeof *xq);
		quantize_x(x, cols, xq);
	}
#pragma omp parallel
	{
		/* Each thread takes one contiguous run of rows across the matrices. */
		int nt = omp_get_num_threads(), t = omp_get_thread_num();
		int g0 = (int)((long long)total * t / nt), g1 = (int)((long long)total * (t + 1) / nt);
		float *scratch = need_scratch ? malloc((size_t)cols * sizeof *scratch) : NULL;
		int m = 0, r = g0;
		while (m < k && r >= ws[m]->rows)
			r -= ws[m++]->rows;
		for (int g = g0; g < g1 && m < k; m++, r = 0) {
			const wmat *w = ws[m];
			qdot_fn dot = qdot_for(w->type);
			int end = r + (g1 - g) < w->rows ? r + (g1 - g) : w->rows;
			if (dot)
				for (int rr = r; rr < end; rr++)
					ys[m][rr] = dot(w->data + (size_t)rr * w->row_bytes, xq, nb);
			else
				for (int rr = r; rr < end; rr++)
					ys[m][rr] = dot_row(w, rr, x, scratch);
			g += end - r;
		}
		free(scratch);
	}
	free(xq);
}

void w_matvec(const wmat *w, const float *x, float *y)
{
	w_matvec_multi(&w, &y, 1, x);
}

/* One thread pool, not two: OpenBLAS runs single-threaded inside OpenMP's
 * threads, each thread multiplying its own band of weight rows. Two pools
 * (OpenMP for the loops, OpenBLAS's pthreads for GEMM) would spin against
 * each other on two cores. */
void w_matmul(const wmat *w, const float *x, float *y, int n)
{
	if (n == 1) {
		w_matvec(w, x, y);
		return;
	}
	if (qgemm_supported(w, n)) {
		qgemm(w, x, y, n);
		return;
	}
	openblas_set_num_threads(1);
	int direct = w->type == W_F32 && w->row_bytes % 4 == 0;
	/* Bands wide enough for OpenBLAS to run near its peak (its packing cost
	 * is paid per call), and a whole number of them per thread so that no
	 * thread waits for another: a multiple of the thread count, at most 256
	 * rows each. */
	int nthreads = omp_get_max_threads();
	int nblocks = (w->rows + 255) / 256;
	nblocks = (nblocks + nthreads - 1) / nthreads * nthreads;
	int BLOCK = (w->rows + nblocks - 1) / nblocks;
	nblocks = (w->rows + BLOCK - 1) / BLOCK;
#pragma omp parallel
	{
		/* Non-f32 weights are widened a band at a time into a small tile. */
		float *tile = direct ? NULL : malloc((size_t)BLOCK * w->cols * sizeof *tile);
#pragma omp for schedule(static)
		for (int blk = 0; blk < nblocks; blk++) {
			int r0 = blk * BLOCK, nr = w->rows - r0 < BLOCK ? w->rows - r0 : BLOCK;
			const float *wp;
			int ldw;
			if (direct) {
				wp = (const float *)(w->data + (size_t)r0 * w->row_bytes);
				ldw = (int)(w->row_bytes / 4);
			} else {
				for (int r = 0; r < nr; r++)
					w_row_to_f32(w, r0 + r, tile + (size_t)r * w->cols);
				wp = tile;
				ldw = w->cols;
			}
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, w->cols, 1.0f, x,
				    w->cols, wp, ldw, 0.0f, y + r0, w->rows);
		}
		free(tile);
	}
}

void rmsnorm(float *out, const float *x, const float *w, int dim, float eps)
{
	double ss = 0;
	for (int i = 0; i < dim; i++)
		ss += (double)x[i] * x[i];
	float s = 1.0f / sqrtf((float)(ss / dim) + eps);
	for (int i = 0; i < dim; i++)
		out[i] = x[i] * s * w[i];
}
