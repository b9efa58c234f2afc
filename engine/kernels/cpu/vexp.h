/* Vector e^x for the CPU kernels (backend.c, backward.c). */
#ifndef OWL_KERNELS_CPU_VEXP_H
#define OWL_KERNELS_CPU_VEXP_H

#include <immintrin.h>
#include <math.h>

/* e^x for 8 floats (Cephes' expf: range reduction by ln 2, a degree-5
 * polynomial, the exponent put in by integer add); relative error ~1e-7,
 * inputs below -87 give 0 after the clamp's tiny value. */
static inline __m256 exp8(__m256 x)
{
	x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
	__m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f),
						    _mm256_set1_ps(0.5f)));
	x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
	x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
	__m256 y = _mm256_set1_ps(1.9875691500e-4f);
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
	y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
	y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
	__m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* row[j] = exp(row[j] - mx) for j in [lo, hi], returning their sum. */
static inline float exp_sub_sum(float *row, int lo, int hi, float mx)
{
	__m256 vm = _mm256_set1_ps(mx), acc = _mm256_setzero_ps();
	int j = lo;
	for (; j + 8 <= hi + 1; j += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
		_mm256_storeu_ps(row + j, e);
		acc = _mm256_add_ps(acc, e);
	}
	float buf[8], sum = 0;
	_mm256_storeu_ps(buf, acc);
	for (int i = 0; i < 8; i++)
		sum += buf[i];
	for (; j <= hi; j++) {
		row[j] = expf(row[j] - mx);
		sum += row[j];
	}
	return sum;
}

#endif
