/* CPU kernels: matrix-vector products that read f32, f16, bf16 and
 * quantised weights in place (decode), and GEMM through OpenBLAS with
 * weights widened to f32 a block of rows at a time (prompt processing), so
 * no full f32 copy of a quantised model ever exists. Weights repacked into
 * 16-row groups (repack.c, int256.c) and Q8_0/Q4_0/Q4_1 prompts (qgemm.c,
 * int256.c) are dispatched to their own kernels from here, on the kernel
 * path cpupath.c chose. */
#include "engine/kernels/cpu/cpu.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static inline float f16(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

/* One row out of a 16-row group (layout in kernels.h and repack.c). */
static void r16_row_to_f32(const wmat *w, int row, float *dst)
{
	const int q8 = w_r16_of(w, W_Q8_0), q41 = w_r16_of(w, W_Q4_1), lane = row % 16;
	const int bs = (int)kernels_row_bytes(w->type, 32), qoff = q41 ? 64 : 32;
	const uint8_t *g = w->data + (size_t)(row / 16) * 16 * w->row_bytes;
	for (int b = 0; b < w->cols / 32; b++) {
		const uint8_t *p = g + (size_t)b * 16 * bs;
		float d = f16(p + 2 * lane), m = q41 ? f16(p + 32 + 2 * lane) : 0.0f, *o = dst + 32 * b;
		int off = q41 ? 0 : 8; /* Q4_0 stores q+8 */
		for (int k = 0; k < (q8 ? 8 : 4); k++)
			for (int i = 0; i < 4; i++) {
				uint8_t v = p[qoff + 64 * k + 4 * lane + i];
				if (q8) {
					o[4 * k + i] = d * (float)((int)v - 128);
				} else {
					o[4 * k + i] = d * (float)((v & 0xF) - off) + m;
					o[16 + 4 * k + i] = d * (float)((v >> 4) - off) + m;
				}
			}
	}
}

void w_row_to_f32(const wmat *w, int row, float *dst)
{
	if (w_r16_of(w, W_F32)) {
		const uint8_t *g = w->data + (size_t)(row / 16) * 16 * w->row_bytes + 4 * (row % 16);
		for (int c = 0; c < w->cols; c++)
			memcpy(&dst[c], g + (size_t)c * 64, 4);
		return;
	}
	if (w_r16_of(w, W_F16) || w_r16_of(w, W_BF16)) {
		const uint8_t *g = w->data + (size_t)(row / 16) * 16 * w->row_bytes + 2 * (row % 16);
		for (int c = 0; c < w->cols; c++) {
			uint16_t h;
			memcpy(&h, g + (size_t)c * 32, 2);
			if (w_r16_of(w, W_F16)) {
				dst[c] = _cvtsh_ss(h);
			} else {
				uint32_t bits = (uint32_t)h << 16;
				memcpy(&dst[c], &bits, 4);
			}
		}
		return;
	}
	if (w_r16_of(w, W_Q8_0) || w_r16_of(w, W_Q4_0) || w_r16_of(w, W_Q4_1)) {
		r16_row_to_f32(w, row, dst);
		return;
	}
	const uint8_t *p = w->data + (size_t)row * w->row_bytes;
	if (w->type == W_F16) {
		int i = 0;
		for (; i + 8 <= w->cols; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
		for (; i < w->cols; i++)
			dst[i] = f16(p + 2 * i);
		return;
	}
	kernels_row_to_f32(w, row, dst);
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

/* The same 16 at a time where AVX-512 is there: decode on f16 weights is
 * bound by the conversion (one vcvtph2ps per 8 weights on AVX2), not by
 * memory, so converting twice as many per instruction is what speeds it up. */
__attribute__((target("avx512f,f16c,fma"))) static float dot_f16_512(const uint8_t *w,
								     const float *x, int n)
{
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int i = 0;
	for (; i + 64 <= n; i += 64) {
		a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i))),
				     _mm512_loadu_ps(x + i), a0);
		a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i + 32))),
				     _mm512_loadu_ps(x + i + 16), a1);
		a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i + 64))),
				     _mm512_loadu_ps(x + i + 32), a2);
		a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i + 96))),
				     _mm512_loadu_ps(x + i + 48), a3);
	}
	for (; i + 16 <= n; i += 16)
		a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 2 * i))),
				     _mm512_loadu_ps(x + i), a0);
	float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
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

/* K-quants: super-blocks of 256 with a scale per sub-block, read straight
 * from their packed bytes against the same Q8 activation blocks. */
static inline void q4k_scale_min(int j, const uint8_t *q, int *d, int *m)
{
	if (j < 4) {
		*d = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
		*m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/* Q4_K: value = d*sc*q - dmin*m per 32-element sub-block; nibbles of each 32
 * bytes are two sub-blocks (low first). */
static float qdot_q4_k(const uint8_t *w, const q8x *x, int nb)
{
	__m256 acc = _mm256_setzero_ps();
	const __m256i ones = _mm256_set1_epi16(1), low = _mm256_set1_epi8(0x0F);
	float mins = 0;
	for (int sb = 0; sb < nb / 8; sb++, w += 144, x += 8) {
		float d = f16(w), dmin = f16(w + 2);
		const uint8_t *scales = w + 4, *q = w + 16;
		for (int j = 0; j < 4; j++, q += 32) {
			__m256i raw = _mm256_loadu_si256((const __m256i *)q);
			__m256i lo = _mm256_and_si256(raw, low);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
			int sc0, m0, sc1, m1;
			q4k_scale_min(2 * j, scales, &sc0, &m0);
			q4k_scale_min(2 * j + 1, scales, &sc1, &m1);
			const q8x *x0 = &x[2 * j], *x1 = &x[2 * j + 1];
			__m256i p0 = _mm256_madd_epi16(
				_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)x0->q)), ones);
			__m256i p1 = _mm256_madd_epi16(
				_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)x1->q)), ones);
			acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc0 * x0->d), _mm256_cvtepi32_ps(p0), acc);
			acc = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)sc1 * x1->d), _mm256_cvtepi32_ps(p1), acc);
			mins += dmin * ((float)m0 * x0->sum + (float)m1 * x1->sum);
		}
	}
	return hsum(acc) - mins;
}

/* Q6_K: 6-bit q (low 4 bits in ql, high 2 in qh) minus 32, a signed scale
 * per 16 elements. Each 128 elements are four 32-element groups. */
static float qdot_q6_k(const uint8_t *w, const q8x *x, int nb)
{
	__m256 acc = _mm256_setzero_ps();
	const __m256i low = _mm256_set1_epi8(0x0F), two = _mm256_set1_epi8(3);
	const __m256i k32 = _mm256_set1_epi8(32);
	for (int sb = 0; sb < nb / 8; sb++, w += 210) {
		float d = f16(w + 208);
		const uint8_t *ql = w, *qh = w + 128;
		const int8_t *sc = (const int8_t *)(w + 192);
		for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, x += 4) {
			__m256i a = _mm256_loadu_si256((const __m256i *)ql);
			__m256i b = _mm256_loadu_si256((const __m256i *)(ql + 32));
			__m256i hb = _mm256_loadu_si256((const __m256i *)qh);
			__m256i q[4] = {
				_mm256_and_si256(a, low), _mm256_and_si256(b, low),
				_mm256_and_si256(_mm256_srli_epi16(a, 4), low),
				_mm256_and_si256(_mm256_srli_epi16(b, 4), low)};
			for (int g = 0; g < 4; g++) {
				__m256i hbits = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * g), two);
				__m256i qg = _mm256_or_si256(q[g], _mm256_slli_epi16(hbits, 4));
				__m256i xq = _mm256_loadu_si256((const __m256i *)x[g].q);
				/* (q - 32) * x in 16-bit pairs: q*x - 32*x, both within range. */
				__m256i pr = _mm256_sub_epi16(_mm256_maddubs_epi16(qg, xq),
							      _mm256_maddubs_epi16(k32, xq));
				/* Pairs 0-7 are elements 0-15 (scale sc[2g]), 8-15 the rest. */
				__m256i s16 = _mm256_set_m128i(_mm_set1_epi16(sc[2 * g + 1]), _mm_set1_epi16(sc[2 * g]));
				acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x[g].d),
						      _mm256_cvtepi32_ps(_mm256_madd_epi16(pr, s16)), acc);
			}
		}
	}
	return hsum(acc);
}

/* Rows of float types; quantised types go through qdot_for. */
static float dot_row(const wmat *w, int r, const float *x)
{
	const uint8_t *p = w->data + (size_t)r * w->row_bytes;
	switch (w->type) {
	case W_F32: return dot_f32((const float *)p, x, w->cols);
	case W_F16: return cpu_has_avx512() ? dot_f16_512(p, x, w->cols) : dot_f16(p, x, w->cols);
	case W_BF16: return dot_bf16(p, x, w->cols);
	default: return 0; /* unreachable: quantised types take qdot_for */
	}
}

typedef float (*qdot_fn)(const uint8_t *, const q8x *, int);

static qdot_fn qdot_for(wtype t)
{
	switch (t) {
	case W_Q8_0: return qdot_q8_0;
	case W_Q4_0: return qdot_q4_0;
	case W_Q4_1: return qdot_q4_1;
	case W_Q4_K: return qdot_q4_k;
	case W_Q6_K: return qdot_q6_k;
	default: return NULL;
	}
}

/* The k matrices' rows taken end to end, in units of `unit` rows: the
 * calling thread's contiguous share [*u0, *u1) of them. Matrix m covers
 * [base, base + rows/unit) where base sums the matrices before it. */
static void thread_share(const wmat *const *ws, int k, int unit, int *u0, int *u1)
{
	int total = 0;
	for (int m = 0; m < k; m++)
		total += ws[m]->rows / unit;
	int nt = omp_get_num_threads(), t = omp_get_thread_num();
	*u0 = (int)((long long)total * t / nt);
	*u1 = (int)((long long)total * (t + 1) / nt);
}

/* Decode over repacked matrices sharing x: the pool splits their 16-row
 * groups, as it splits rows for the others. */
static void matvec_r16(const wmat *const *ws, float *const *ys, int k, const float *x)
{
	/* Integer groups round x to Q8 once; f16/bf16/f32 groups read x as is. */
	int need_q = 0;
	for (int m = 0; m < k; m++)
		need_q |= !w_r16_is_float(ws[m]);
	qact a = {0};
	if (need_q)
		qact_init(&a, x, 1, ws[0]->cols);
#pragma omp parallel
	{
		int u0, u1;
		thread_share(ws, k, 16, &u0, &u1);
		for (int m = 0, base = 0; m < k; base += ws[m++]->rows / 16) {
			int ng = ws[m]->rows / 16;
			int lo = u0 > base ? u0 - base : 0, hi = u1 - base < ng ? u1 - base : ng;
			if (lo >= hi)
				continue;
			if (w_r16_is_float(ws[m]))
				h16_gemv_groups(ws[m], x, lo, hi, ys[m]);
			else
				r16_gemv_groups(ws[m], &a, lo, hi, ys[m]);
		}
	}
	if (need_q)
		qact_release(&a);
}

void w_matvec_multi(const wmat *const *ws, float *const *ys, int k, const float *x)
{
	int n_r16 = 0;
	for (int m = 0; m < k; m++)
		n_r16 += w_is_r16(ws[m]);
	if (n_r16 == k) {
		matvec_r16(ws, ys, k, x);
		return;
	}
	if (n_r16) { /* mixed types: one matrix at a time */
		for (int m = 0; m < k; m++)
			w_matvec_multi(&ws[m], &ys[m], 1, x);
		return;
	}
	/* Activations quantised once per distinct need; all matrices share x. */
	int cols = ws[0]->cols, nb = cols / 32, need_q = 0;
	for (int m = 0; m < k; m++)
		need_q |= qdot_for(ws[m]->type) != NULL;
	q8x *xq = NULL;
	if (need_q) {
		xq = owl_xmalloc((size_t)nb * sizeof *xq);
		quantize_x(x, cols, xq);
	}
#pragma omp parallel
	{
		/* Each thread takes one contiguous run of rows across the matrices. */
		int u0, u1;
		thread_share(ws, k, 1, &u0, &u1);
		for (int m = 0, base = 0; m < k; base += ws[m++]->rows) {
			const wmat *w = ws[m];
			int lo = u0 > base ? u0 - base : 0, hi = u1 - base < w->rows ? u1 - base : w->rows;
			qdot_fn dot = qdot_for(w->type);
			if (dot)
				for (int r = lo; r < hi; r++)
					ys[m][r] = dot(w->data + (size_t)r * w->row_bytes, xq, nb);
			else
				for (int r = lo; r < hi; r++)
					ys[m][r] = dot_row(w, r, x);
		}
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
	if (w_r16_is_float(w)) {
		h16_gemm(w, x, n, y);
		return;
	}
	if (w_is_r16(w)) {
		qact a;
		qact_init(&a, x, n, w->cols);
		r16_gemm(w, &a, n, y);
		qact_release(&a);
		return;
	}
	if (qgemm_supported(w, n)) {
		qgemm(w, x, y, n);
		return;
	}
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
		float *tile = direct ? NULL : owl_xmalloc((size_t)BLOCK * w->cols * sizeof *tile);
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
