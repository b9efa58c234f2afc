/* The 256-bit integer kernels, compiled twice by int256.c: I256_VNNI 1 with
 * AVX-VNNI's vpdpbusd on ymm, I256_VNNI 0 with AVX2 alone, where one
 * vpdpbusd becomes maddubs (u8 x s8 pairs summed to 16 bits) and madd
 * (pairs of those to 32 bits). The 16-bit pair sums saturate past 32767, so
 * on AVX2 each operand pair is kept in range:
 *   Q4_0/Q4_1  nibbles 0..15 times x in -127..127: at most 3810 per pair;
 *   Q8_0       |w| times x with w's sign (psignb): at most 128*127*2. The
 *              VNNI form's x+128 would reach 255*127*2 and saturate.
 * I256_SUFFIX names each copy's functions (_avx2, _avxvnni). Only int256.c
 * includes this file. */

#define I256_CAT2(a, b) a##b
#define I256_CAT(a, b) I256_CAT2(a, b)
#define F(name) I256_CAT(name, I256_SUFFIX)
#define INL static inline __attribute__((always_inline))

/* acc + per 32-bit lane the sum of 4 products of unsigned u and signed s. */
INL __m256i F(dp)(__m256i acc, __m256i u, __m256i s)
{
#if I256_VNNI
	return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
	return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

INL float F(hsum)(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

INL float F(f16)(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

/* ---- the file's layout: a tile of rm rows (r0..) by rn tokens (j0..) -----
 * One block of 32 is one ymm; each row and token pair sums its 8 lanes once
 * at the end. Q4_0's -8 sum(x) and Q4_1's m sum(x) ride in lane 0. */
INL void F(qtile)(const wmat *w, int r0, int rm, const qact *a, int j0, int rn, float *y,
		  int ldy, const wtype t)
{
	const int bs = t == W_Q8_0 ? 34 : t == W_Q4_0 ? 18 : 20, nb = a->nb;
	const __m256i low = _mm256_set1_epi8(0x0F);
	__m256 acc[Q256_RM][Q256_RN];
#pragma GCC unroll 4
	for (int i = 0; i < Q256_RM; i++)
#pragma GCC unroll 4
		for (int j = 0; j < Q256_RN; j++)
			acc[i][j] = _mm256_setzero_ps();
	for (int b = 0; b < nb; b++) {
		/* wx: for Q8_0 the start value -128 sum(w) (VNNI) or |w| (AVX2). */
		__m256i wv[Q256_RM], wx[Q256_RM];
		float wsc[Q256_RM], wmn[Q256_RM];
#pragma GCC unroll 4
		for (int i = 0; i < rm; i++) {
			const uint8_t *p = w->data + (size_t)(r0 + i) * w->row_bytes + (size_t)b * bs;
			wsc[i] = F(f16)(p);
			wmn[i] = t == W_Q4_1 ? F(f16)(p + 2) : 0.0f;
			if (t == W_Q8_0) {
				wv[i] = _mm256_loadu_si256((const __m256i *)(p + 2));
#if I256_VNNI
				wx[i] = _mm256_sub_epi32(_mm256_setzero_si256(),
							 F(dp)(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), wv[i]));
#else
				wx[i] = _mm256_abs_epi8(wv[i]);
#endif
			} else {
				__m128i q = _mm_loadu_si128((const __m128i *)(p + (t == W_Q4_0 ? 2 : 4)));
				wv[i] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), low);
				wx[i] = wv[i];
			}
		}
#pragma GCC unroll 4
		for (int j = 0; j < rn; j++) {
			const size_t xi = (size_t)(j0 + j) * nb + b;
			__m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + (size_t)(j0 + j) * a->cols + 32 * b));
			const float dx = a->d[xi];
			__m256i start = _mm256_setzero_si256();
			__m256 xs = _mm256_setzero_ps();
			if (t == W_Q4_0)
				start = _mm256_zextsi128_si256(_mm_cvtsi32_si128(-8 * a->s[xi]));
			else if (t == W_Q4_1)
				xs = _mm256_zextps128_ps256(_mm_set_ss(dx * (float)a->s[xi]));
#if I256_VNNI
			if (t == W_Q8_0)
				xv = _mm256_xor_si256(xv, _mm256_set1_epi8((char)0x80)); /* x + 128, unsigned */
#endif
#pragma GCC unroll 4
			for (int i = 0; i < rm; i++) {
				__m256i dot;
				if (t == W_Q8_0) {
#if I256_VNNI
					dot = F(dp)(wx[i], xv, wv[i]);
#else
					dot = F(dp)(start, wx[i], _mm256_sign_epi8(xv, wv[i]));
#endif
				} else {
					dot = F(dp)(start, wv[i], xv);
				}
				acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(wsc[i] * dx),
							    acc[i][j]);
				if (t == W_Q4_1)
					acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(wmn[i]), xs, acc[i][j]);
			}
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < rm; i++)
#pragma GCC unroll 4
		for (int j = 0; j < rn; j++)
			y[(size_t)(j0 + j) * ldy + r0 + i] = F(hsum)(acc[i][j]);
}

#define DEF_QT(NAME, T, RMc, RNc)                                                              \
	static void F(NAME)(const wmat *w, int r0, const qact *a, int j0, float *y, int ldy)   \
	{                                                                                      \
		F(qtile)(w, r0, RMc, a, j0, RNc, y, ldy, T);                                   \
	}
#define DEF_QTYPE(S, T)                                                                        \
	DEF_QT(S##_mn, T, Q256_RM, Q256_RN)                                                    \
	DEF_QT(S##_m1, T, Q256_RM, 1)                                                          \
	DEF_QT(S##_1n, T, 1, Q256_RN)                                                          \
	DEF_QT(S##_11, T, 1, 1)
DEF_QTYPE(qt_q8_0, W_Q8_0)
DEF_QTYPE(qt_q4_0, W_Q4_0)
DEF_QTYPE(qt_q4_1, W_Q4_1)
#undef DEF_QTYPE
#undef DEF_QT

void F(qgemm_rows)(const wmat *w, const qact *a, int n, float *y, int r0, int r1)
{
	typedef void (*fn)(const wmat *, int, const qact *, int, float *, int);
	fn mn, m1, one_n, one_1;
	if (w->type == W_Q8_0) {
		mn = F(qt_q8_0_mn), m1 = F(qt_q8_0_m1), one_n = F(qt_q8_0_1n), one_1 = F(qt_q8_0_11);
	} else if (w->type == W_Q4_0) {
		mn = F(qt_q4_0_mn), m1 = F(qt_q4_0_m1), one_n = F(qt_q4_0_1n), one_1 = F(qt_q4_0_11);
	} else {
		mn = F(qt_q4_1_mn), m1 = F(qt_q4_1_m1), one_n = F(qt_q4_1_1n), one_1 = F(qt_q4_1_11);
	}
	/* Tokens in chunks whose activations stay in L2 while the rows stream past. */
	for (int c0 = 0; c0 < n; c0 += Q256_CHUNK) {
		int c1 = c0 + Q256_CHUNK < n ? c0 + Q256_CHUNK : n, r = r0;
		for (; r + Q256_RM <= r1; r += Q256_RM) {
			int j = c0;
			for (; j + Q256_RN <= c1; j += Q256_RN)
				mn(w, r, a, j, y, w->rows);
			for (; j < c1; j++)
				m1(w, r, a, j, y, w->rows);
		}
		for (; r < r1; r++) {
			int j = c0;
			for (; j + Q256_RN <= c1; j += Q256_RN)
				one_n(w, r, a, j, y, w->rows);
			for (; j < c1; j++)
				one_1(w, r, a, j, y, w->rows);
		}
	}
}

/* ---- 16-row groups (repack.c's layout), as two halves of 8 rows ----------
 * Lane r of a ymm is row 8h + r of the group: the 8 scales apply in one
 * multiply and the 8 sums are stored as they are. */
INL void F(gtile)(const wmat *w, int kind, int g, const qact *a, int j0, int tn, float *y, int ldy)
{
	const int bs = (int)kernels_row_bytes(w->type, 32), nb = a->nb;
	const int qoff = kind == K256_Q4_1 ? 64 : 32;
	const uint8_t *gp = w->data + (size_t)g * 16 * w->row_bytes;
	const __m256i low = _mm256_set1_epi8(0x0F);
	for (int h = 0; h < 2; h++) {
		__m256 acc[G256_TN];
#pragma GCC unroll 4
		for (int j = 0; j < G256_TN; j++)
			acc[j] = _mm256_setzero_ps();
		for (int b = 0; b < nb; b++) {
			const uint8_t *p = gp + (size_t)b * 16 * bs;
			__m256 ws = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * h)));
			__m256 wmin = kind == K256_Q4_1
				      ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 32 + 16 * h)))
				      : _mm256_setzero_ps();
			/* Vector k holds elements 4k..4k+3 of each of the 8 rows. */
			__m256i wv[8], wx[8];
			if (kind == K256_Q8_0) {
#pragma GCC unroll 8
				for (int k = 0; k < 8; k++) {
					wv[k] = _mm256_loadu_si256((const __m256i *)(p + 32 + 64 * k + 32 * h));
#if !I256_VNNI
					wv[k] = _mm256_xor_si256(wv[k], _mm256_set1_epi8((char)0x80)); /* signed w */
					wx[k] = _mm256_abs_epi8(wv[k]);
#endif
				}
			} else {
#pragma GCC unroll 4
				for (int m = 0; m < 4; m++) {
					__m256i v = _mm256_loadu_si256((const __m256i *)(p + qoff + 64 * m + 32 * h));
					wv[m] = _mm256_and_si256(v, low);
					wv[m + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
				}
			}
			(void)wx;
#pragma GCC unroll 4
			for (int j = 0; j < tn; j++) {
				const size_t xi = (size_t)(j0 + j) * nb + b;
				const int8_t *xq = a->q + (size_t)(j0 + j) * a->cols + 32 * b;
				int32_t x4[8];
				memcpy(x4, xq, 32);
				__m256i dot;
#if I256_VNNI
				/* Start values undo the unsigned operand: -128 sum(x) for
				 * Q8_0 (stored +128), -8 sum(x) for Q4_0 (q-8). */
				const int c = kind == K256_Q8_0 ? 128 : kind == K256_Q4_0 ? 8 : 0;
				dot = _mm256_set1_epi32(-c * a->s[xi]);
#pragma GCC unroll 8
				for (int k = 0; k < 8; k++)
					dot = F(dp)(dot, wv[k], _mm256_set1_epi32(x4[k]));
#else
				if (kind == K256_Q8_0) {
					dot = _mm256_setzero_si256();
#pragma GCC unroll 8
					for (int k = 0; k < 8; k++)
						dot = F(dp)(dot, wx[k], _mm256_sign_epi8(_mm256_set1_epi32(x4[k]), wv[k]));
				} else {
					/* 8 pair sums of at most 3810 fit in 16 bits: one madd per block. */
					__m256i s16 = _mm256_setzero_si256();
#pragma GCC unroll 8
					for (int k = 0; k < 8; k++)
						s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(wv[k], _mm256_set1_epi32(x4[k])));
					dot = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
					if (kind == K256_Q4_0)
						dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(8 * a->s[xi]));
				}
#endif
				acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
							 _mm256_mul_ps(ws, _mm256_set1_ps(a->d[xi])), acc[j]);
				if (kind == K256_Q4_1) /* m times the block's sum of x, as rounded */
					acc[j] = _mm256_fmadd_ps(wmin, _mm256_set1_ps(a->d[xi] * (float)a->s[xi]), acc[j]);
			}
		}
#pragma GCC unroll 4
		for (int j = 0; j < tn; j++)
			_mm256_storeu_ps(y + (size_t)(j0 + j) * ldy + (size_t)g * 16 + 8 * h, acc[j]);
	}
}

#define DEF_GT(NAME, KIND, TNc)                                                               \
	static void F(NAME)(const wmat *w, int g, const qact *a, int j0, float *y, int ldy)   \
	{                                                                                     \
		F(gtile)(w, KIND, g, a, j0, TNc, y, ldy);                                     \
	}
DEF_GT(gt_q8_n, K256_Q8_0, G256_TN)
DEF_GT(gt_q8_1, K256_Q8_0, 1)
DEF_GT(gt_q4_n, K256_Q4_0, G256_TN)
DEF_GT(gt_q4_1, K256_Q4_0, 1)
DEF_GT(gt_q41_n, K256_Q4_1, G256_TN)
DEF_GT(gt_q41_1, K256_Q4_1, 1)
#undef DEF_GT

void F(r16_groups)(const wmat *w, const qact *a, int j0, int j1, int g0, int g1, float *y)
{
	typedef void (*fn)(const wmat *, int, const qact *, int, float *, int);
	fn fn_n = w_r16_of(w, W_Q8_0) ? F(gt_q8_n) : w_r16_of(w, W_Q4_1) ? F(gt_q41_n) : F(gt_q4_n);
	fn fn_1 = w_r16_of(w, W_Q8_0) ? F(gt_q8_1) : w_r16_of(w, W_Q4_1) ? F(gt_q41_1) : F(gt_q4_1);
	for (int g = g0; g < g1; g++) {
		int j = j0;
		for (; j + G256_TN <= j1; j += G256_TN)
			fn_n(w, g, a, j, y, w->rows);
		for (; j < j1; j++)
			fn_1(w, g, a, j, y, w->rows);
	}
}

#undef INL
#undef F
#undef I256_CAT
#undef I256_CAT2
