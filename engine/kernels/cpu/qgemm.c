/* Prompt processing on quantised weights (Q8_0, Q4_0, Q4_1) in integers.
 *
 * Widening quantised weights to f32 for sgemm costs a conversion per weight
 * and then multiplies in f32; here the activations are quantised instead (per
 * token, blocks of 32 int8 with one f32 scale, as for decode) and each pair
 * of weight and activation blocks is multiplied with AVX-512 VNNI's
 * vpdpbusd, 64 byte products per instruction, straight from the weights'
 * own bytes, two blocks per vector (an odd last block in a half). A 4 x 4 tile of weight rows and tokens shares each load four
 * ways; block scales are applied in f32 once per pair of blocks.
 *
 * vpdpbusd multiplies unsigned by signed bytes, so each type is brought to
 * that form with a correction folded into the accumulator's start value:
 *   Q4_0  q in 0..15 means q-8: sum((q-8)x) = sum(qx) - 8 sum(x)
 *   Q8_0  signed weights: x+128 is unsigned, sum((x+128)w) - 128 sum(w)
 *   Q4_1  d q + m: the m part is m sum(x), added in f32.
 *
 * This file holds the AVX-512 VNNI kernels; CPUs without them run the same
 * products on 256-bit vectors (int256.c), chosen by cpupath.c. OWL_NO_QGEMM=1
 * sends quantised prompts to the exact f32 path (ops.c) instead. */
#include "engine/kernels/cpu/cpu.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define QG_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")))
#define QG_INLINE static inline __attribute__((always_inline)) QG_TARGET

enum { RM = 4, RN = 4, CHUNK = 128 };

int qgemm_supported(const wmat *w, int n)
{
	return cpu_int_kernels() && !w->layout && (w->type == W_Q8_0 || w->type == W_Q4_0 || w->type == W_Q4_1) &&
	       w->cols % 32 == 0 && n >= 2;
}

/* One token's row of floats to blocks of 32 int8, a scale and a sum of q
 * each: AVX2, for every path, so that all paths round alike. */
static void quantize_row(const float *x, int cols, int8_t *q, float *d, int32_t *qs)
{
	const __m256 sign = _mm256_set1_ps(-0.0f);
	const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
	for (int b = 0; b < cols / 32; b++) {
		__m256 v[4];
		for (int k = 0; k < 4; k++)
			v[k] = _mm256_loadu_ps(x + 32 * b + 8 * k);
		__m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
					 _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
		__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
		m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
		m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
		float amax = _mm_cvtss_f32(m4);
		float s = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
		d[b] = s;
		__m256 vi = _mm256_set1_ps(inv);
		__m256i i[4];
		for (int k = 0; k < 4; k++)
			i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], vi));
		/* packs works within 128-bit lanes: the permute puts the 4-byte
		 * groups back in element order. */
		__m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
		_mm256_storeu_si256((__m256i *)(q + 32 * b), _mm256_permutevar8x32_epi32(p, order));
		__m256i sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
		__m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
		s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
		s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
		qs[b] = _mm_cvtsi128_si32(s4);
	}
}

/* Lanes 0-7 hold block 2p, lanes 8-15 block 2p+1: the same two scales spread. */
QG_INLINE __m512 spread2(__m128 two)
{
	const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
	return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(two));
}

QG_INLINE __m512 f16_pair(const uint8_t *a, const uint8_t *b)
{
	uint16_t ha, hb;
	memcpy(&ha, a, 2);
	memcpy(&hb, b, 2);
	return spread2(_mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)ha | (uint32_t)hb << 16))));
}

/* 2 x 16 bytes of nibbles -> 64 bytes in element order: block a's 32, then b's. */
QG_INLINE __m512i nibbles2(const uint8_t *a, const uint8_t *b)
{
	__m256i ab = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)),
					     _mm_loadu_si128((const __m128i *)b), 1);
	__m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(ab), _mm256_srli_epi16(ab, 4), 1);
	v = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
	/* [a lo, b lo, a hi, b hi] -> [a lo, a hi, b lo, b hi] */
	return _mm512_permutexvar_epi64(_mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0), v);
}

/* A tile of rm weight rows (r0..) and rn tokens (j0..) over all columns;
 * rm, rn are constants after inlining, so the accumulators live in registers. */
QG_INLINE void tile(const wmat *w, int r0, int rm, const qact *a, int j0, int rn, float *y,
		    int ldy)
{
	const wtype t = w->type;
	const int bs = (int)kernels_row_bytes(t, 32), npairs = a->nb / 2; /* bytes per block */
	__m512 acc[RM][RN];
	#pragma GCC unroll 4
	for (int i = 0; i < RM; i++)
		#pragma GCC unroll 4
		for (int j = 0; j < RN; j++)
			acc[i][j] = _mm512_setzero_ps();
	const __m512i u8_8 = _mm512_set1_epi8(8), u8_128 = _mm512_set1_epi8((char)0x80);
	const __m512i u8_1 = _mm512_set1_epi8(1);
	for (int p = 0; p < npairs; p++) {
		__m512i wv[RM], wc[RM];
		__m512 ws[RM], wm[RM];
		#pragma GCC unroll 4
		for (int i = 0; i < rm; i++) {
			const uint8_t *b0 = w->data + (size_t)(r0 + i) * w->row_bytes + (size_t)(2 * p) * bs;
			const uint8_t *b1 = b0 + bs;
			ws[i] = f16_pair(b0, b1);
			if (t == W_Q8_0) {
				wv[i] = _mm512_inserti64x4(
					_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
					_mm256_loadu_si256((const __m256i *)(b1 + 2)), 1);
				/* -128 sum(w) per lane: the start value that undoes x + 128. */
				wc[i] = _mm512_sub_epi32(_mm512_setzero_si512(),
							 _mm512_dpbusd_epi32(_mm512_setzero_si512(), u8_128, wv[i]));
			} else if (t == W_Q4_0) {
				wv[i] = nibbles2(b0 + 2, b1 + 2);
			} else {
				wv[i] = nibbles2(b0 + 4, b1 + 4);
				wm[i] = f16_pair(b0 + 2, b1 + 2);
			}
		}
		#pragma GCC unroll 4
		for (int j = 0; j < rn; j++) {
			const int8_t *xq = a->q + (size_t)(j0 + j) * a->cols + 64 * p;
			__m512i xv = _mm512_loadu_si512((const void *)xq);
			const float *xd = a->d + (size_t)(j0 + j) * a->nb + 2 * p;
			__m512 dx = spread2(_mm_setr_ps(xd[0], xd[1], 0.0f, 0.0f));
			__m512i start = _mm512_setzero_si512();
			__m512 xs = _mm512_setzero_ps();
			if (t == W_Q4_0)
				start = _mm512_sub_epi32(start, _mm512_dpbusd_epi32(start, u8_8, xv));
			else if (t == W_Q8_0)
				xv = _mm512_xor_si512(xv, u8_128); /* x + 128, read as unsigned */
			else
				xs = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, u8_1, xv)), dx);
			#pragma GCC unroll 4
			for (int i = 0; i < rm; i++) {
				__m512i dot;
				if (t == W_Q8_0)
					dot = _mm512_dpbusd_epi32(wc[i], xv, wv[i]);
				else
					dot = _mm512_dpbusd_epi32(start, wv[i], xv);
				acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws[i], dx),
							    acc[i][j]);
				if (t == W_Q4_1)
					acc[i][j] = _mm512_fmadd_ps(wm[i], xs, acc[i][j]);
			}
		}
	}
	if (a->nb & 1) {
		/* An odd last block: the same in 256-bit halves, added to lanes 0-7. */
		const int b = a->nb - 1;
		__m256i wv[RM], wc[RM];
		__m256 ws[RM], wm[RM];
		const __m256i h8 = _mm256_set1_epi8(8), h128 = _mm256_set1_epi8((char)0x80);
		const __m256i h1 = _mm256_set1_epi8(1), h0 = _mm256_setzero_si256();
		#pragma GCC unroll 4
		for (int i = 0; i < rm; i++) {
			const uint8_t *b0 = w->data + (size_t)(r0 + i) * w->row_bytes + (size_t)b * bs;
			uint16_t h;
			memcpy(&h, b0, 2);
			ws[i] = _mm256_set1_ps(_cvtsh_ss(h));
			if (t == W_Q8_0) {
				wv[i] = _mm256_loadu_si256((const __m256i *)(b0 + 2));
				wc[i] = _mm256_sub_epi32(h0, _mm256_dpbusd_epi32(h0, h128, wv[i]));
			} else {
				__m128i q = _mm_loadu_si128((const __m128i *)(b0 + (t == W_Q4_0 ? 2 : 4)));
				wv[i] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q),
							 _mm256_set1_epi8(0x0F));
				memcpy(&h, b0 + 2, 2);
				wm[i] = _mm256_set1_ps(_cvtsh_ss(h));
			}
		}
		#pragma GCC unroll 4
		for (int j = 0; j < rn; j++) {
			__m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + (size_t)(j0 + j) * a->cols + 32 * b));
			__m256 dx = _mm256_set1_ps(a->d[(size_t)(j0 + j) * a->nb + b]);
			__m256i start = h0;
			__m256 xs = _mm256_setzero_ps();
			if (t == W_Q4_0)
				start = _mm256_sub_epi32(h0, _mm256_dpbusd_epi32(h0, h8, xv));
			else if (t == W_Q8_0)
				xv = _mm256_xor_si256(xv, h128);
			else
				xs = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_dpbusd_epi32(h0, h1, xv)), dx);
			#pragma GCC unroll 4
			for (int i = 0; i < rm; i++) {
				__m256i dot = t == W_Q8_0 ? _mm256_dpbusd_epi32(wc[i], xv, wv[i])
							  : _mm256_dpbusd_epi32(start, wv[i], xv);
				__m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(ws[i], dx));
				if (t == W_Q4_1)
					v = _mm256_fmadd_ps(wm[i], xs, v);
				acc[i][j] = _mm512_add_ps(acc[i][j], _mm512_zextps256_ps512(v));
			}
		}
	}
	#pragma GCC unroll 4
	for (int i = 0; i < rm; i++)
		#pragma GCC unroll 4
		for (int j = 0; j < rn; j++)
			y[(size_t)(j0 + j) * ldy + r0 + i] = _mm512_reduce_add_ps(acc[i][j]);
}

/* Full tiles get the unrolled kernel, edges the smaller ones: one function
 * per type and tile shape, so that type and shape are constants inside. */
typedef void (*tile_fn)(const wmat *, int, const qact *, int, float *, int);
#define DEF_TILE(NAME, T, RMc, RNc)                                                             \
	QG_TARGET static void NAME(const wmat *w, int r0, const qact *a, int j0, float *y, int ldy) \
	{                                                                                       \
		wmat v = *w;                                                                    \
		v.type = T;                                                                     \
		tile(&v, r0, RMc, a, j0, RNc, y, ldy);                                          \
	}
#define DEF_TYPE(S, T)                                                                          \
	DEF_TILE(S##_44, T, RM, RN)                                                             \
	DEF_TILE(S##_41, T, RM, 1)                                                              \
	DEF_TILE(S##_14, T, 1, RN)                                                              \
	DEF_TILE(S##_11, T, 1, 1)                                                               \
	static const tile_fn S[4] = {S##_44, S##_41, S##_14, S##_11};
DEF_TYPE(tiles_q8_0, W_Q8_0)
DEF_TYPE(tiles_q4_0, W_Q4_0)
DEF_TYPE(tiles_q4_1, W_Q4_1)

QG_TARGET static void run_band(const wmat *w, const qact *a, int n, float *y, int rt0, int rt1)
{
	const tile_fn *f = w->type == W_Q8_0 ? tiles_q8_0 : w->type == W_Q4_0 ? tiles_q4_0 : tiles_q4_1;
	tile_fn f44 = f[0], f41 = f[1], f14 = f[2], f11 = f[3];
	/* Tokens in chunks whose activations stay in L2 while the band's rows
	 * stream past them. */
	for (int c0 = 0; c0 < n; c0 += CHUNK) {
		int c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
		for (int rt = rt0; rt < rt1; rt++) {
			int r0 = rt * RM, rm = w->rows - r0 < RM ? w->rows - r0 : RM;
			int j = c0;
			if (rm == RM) {
				for (; j + RN <= c1; j += RN)
					f44(w, r0, a, j, y, w->rows);
				for (; j < c1; j++)
					f41(w, r0, a, j, y, w->rows);
			} else {
				for (int r = r0; r < r0 + rm; r++) {
					int jj = c0;
					for (; jj + RN <= c1; jj += RN)
						f14(w, r, a, jj, y, w->rows);
					for (; jj < c1; jj++)
						f11(w, r, a, jj, y, w->rows);
				}
			}
		}
	}
}

static void quantize_rows(qact *a, const float *x, int n)
{
#pragma omp for schedule(static)
	for (int i = 0; i < n; i++)
		quantize_row(x + (size_t)i * a->cols, a->cols, a->q + (size_t)i * a->cols,
			     a->d + (size_t)i * a->nb, a->s + (size_t)i * a->nb);
}

void qact_init(qact *a, const float *x, int n, int cols)
{
	a->cols = cols;
	a->nb = cols / 32;
	a->q = owl_xmalloc((size_t)n * cols);
	a->d = owl_xmalloc((size_t)n * a->nb * sizeof *a->d);
	a->s = owl_xmalloc((size_t)n * a->nb * sizeof *a->s);
	if (n == 1) {
		quantize_row(x, cols, a->q, a->d, a->s);
	} else {
		/* A decoding batch's few rows take less than waking the threads. */
#pragma omp parallel if ((size_t)n * cols > 32768)
		quantize_rows(a, x, n);
	}
}

void qact_release(qact *a)
{
	free(a->q);
	free(a->d);
	free(a->s);
}

void qgemm(const wmat *w, const float *x, float *y, int n)
{
	qact a;
	qact_init(&a, x, n, w->cols);
	const cpu_path path = cpu_path_get();
	/* Threads take whole tiles: 4 rows on AVX-512, 2 on the 256-bit paths. */
	const int rm = path == CPU_PATH_AVX512VNNI ? RM : 2, ntiles = (w->rows + rm - 1) / rm;
#pragma omp parallel
	{
		int nt = omp_get_num_threads(), t = omp_get_thread_num();
		int t0 = (int)((long long)ntiles * t / nt), t1 = (int)((long long)ntiles * (t + 1) / nt);
		int r0 = t0 * rm, r1 = t1 * rm < w->rows ? t1 * rm : w->rows;
		if (path == CPU_PATH_AVX512VNNI)
			run_band(w, &a, n, y, t0, t1);
		else if (path == CPU_PATH_AVXVNNI)
			qgemm_rows_avxvnni(w, &a, n, y, r0, r1);
		else
			qgemm_rows_avx2(w, &a, n, y, r0, r1);
	}
	qact_release(&a);
}
