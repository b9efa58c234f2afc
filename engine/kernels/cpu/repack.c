/* Row-interleaved Q8_0, Q4_0 and Q4_1 for the integer kernels, and f16,
 * bf16 and f32 for the float ones.
 *
 * In the file's layout a block of 32 weights belongs to one row, so an
 * integer product of a weight block with an activation block ends in one
 * horizontal sum and one scale per row and token (qgemm.c). Repacked, the
 * 16 rows of a group lie side by side 4 bytes at a time: one 64-byte load
 * holds 4 weights of each of 16 rows, and one vpdpbusd against 4 activation
 * bytes broadcast to every lane advances all 16 rows' sums at once. The
 * lanes are the rows, so the 16 scales apply in one multiply and the result
 * is stored as is: no horizontal sums, no permutes.
 *
 * Layout per group of 16 rows, for each block b of 32 columns:
 *   16 f16 scales (row order), 32 bytes; for Q4_1 then its 16 f16 mins;
 *   Q8_0: 8 chunks k of 64 bytes: rows 0..15, bytes 4k..4k+3 of the block,
 *         stored as q+128 (vpdpbusd's unsigned operand);
 *   Q4_0: 4 chunks m of 64 bytes: rows 0..15, packed bytes 4m..4m+3 (low
 *         nibbles are elements 4m..4m+3, high nibbles 16+4m..16+4m+3).
 *   Q4_1: as Q4_0 (after the mins).
 * That is 544, 288 and 320 bytes per group and block: 16 rows of 34, 18 and
 * 20 bytes, the same size as the file's layout. The corrections for the
 * unsigned operand depend only on the activations (sum(q) of the block):
 *   Q8_0: sum((w+128) x) - 128 sum(x);  Q4_0: sum(q x) - 8 sum(x).
 *
 * This file holds the AVX-512 kernels. On the 256-bit paths (cpupath.c) a
 * group is two ymm of 8 rows: int256.c multiplies the same layout with
 * AVX-VNNI or AVX2, and the float groups below have AVX2/FMA twins. */
#include "engine/kernels/cpu/cpu.h"

#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RP_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c")))
#define RP_INLINE static inline __attribute__((always_inline)) RP_TARGET

enum { GROUP = 16, TN = 8, CHUNK = 128 };

int w_is_r16(const wmat *w)
{
	return w->layout == CPU_LAYOUT_R16;
}

int w_r16_is_float(const wmat *w)
{
	return w_r16_of(w, W_F16) || w_r16_of(w, W_BF16) || w_r16_of(w, W_F32);
}

int w_repack_supported(const wmat *w)
{
	if (getenv("OWL_NO_REPACK") || w->layout || w->rows % GROUP ||
	    w->row_bytes != kernels_row_bytes(w->type, w->cols))
		return 0;
	/* Every kernel path has 16-row kernels (AVX-512, or two ymm of 8 rows). */
	if (w->type == W_F16 || w->type == W_BF16 || w->type == W_F32)
		return w->cols % 16 == 0;
	return cpu_int_kernels() && (w->type == W_Q8_0 || w->type == W_Q4_0 || w->type == W_Q4_1) &&
	       w->cols % 32 == 0;
}

/* Groups g0..g1 of f16/bf16/f32 w into dst: column by column, 16 rows each.
 * Element sizes are constants in each loop so the copies compile to moves. */
static void repack_groups_h(const wmat *w, uint8_t *dst, int g0, int g1)
{
	const size_t gbytes = (size_t)GROUP * w->row_bytes;
	const int cols = w->cols;
#pragma omp parallel for schedule(static)
	for (int g = g0; g < g1; g++) {
		const uint8_t *rows = w->data + (size_t)g * GROUP * w->row_bytes;
		if (w->type == W_F32) {
			uint32_t *o = (uint32_t *)(void *)(dst + (size_t)g * gbytes);
			for (int c = 0; c < cols; c++)
				for (int r = 0; r < GROUP; r++)
					memcpy(&o[(size_t)c * GROUP + r], rows + (size_t)r * w->row_bytes + 4 * (size_t)c, 4);
		} else {
			uint16_t *o = (uint16_t *)(void *)(dst + (size_t)g * gbytes);
			for (int c = 0; c < cols; c++)
				for (int r = 0; r < GROUP; r++)
					memcpy(&o[(size_t)c * GROUP + r], rows + (size_t)r * w->row_bytes + 2 * (size_t)c, 2);
		}
	}
}

/* Groups g0..g1 of w into dst (Q8_0/Q4_0/Q4_1 here, the float types above). */
static void repack_groups(const wmat *w, uint8_t *dst, int g0, int g1)
{
	if (w->type == W_F16 || w->type == W_BF16 || w->type == W_F32) {
		repack_groups_h(w, dst, g0, g1);
		return;
	}
	const int q8 = w->type == W_Q8_0, q41 = w->type == W_Q4_1;
	const int bs = (int)kernels_row_bytes(w->type, 32), nb = w->cols / 32, qoff = q41 ? 64 : 32;
	const size_t gbytes = (size_t)GROUP * w->row_bytes, bgbytes = (size_t)GROUP * bs;
#pragma omp parallel for schedule(static)
	for (int g = g0; g < g1; g++)
		for (int b = 0; b < nb; b++) {
			uint8_t *o = dst + (size_t)g * gbytes + (size_t)b * bgbytes;
			for (int r = 0; r < GROUP; r++) {
				const uint8_t *blk = w->data + (size_t)(g * GROUP + r) * w->row_bytes +
						     (size_t)b * bs;
				memcpy(o + 2 * r, blk, 2);
				if (q41)
					memcpy(o + 32 + 2 * r, blk + 2, 2);
				const uint8_t *qs = blk + (q41 ? 4 : 2);
				for (int k = 0; k < (q8 ? 8 : 4); k++)
					for (int i = 0; i < 4; i++)
						o[qoff + 64 * k + 4 * r + i] =
							q8 ? (uint8_t)(qs[4 * k + i] ^ 0x80) : qs[4 * k + i];
			}
		}
}

int w_repack(const wmat *w, int drop_source, wmat *out, uint8_t **owned, owl_err *err)
{
	const size_t gbytes = (size_t)GROUP * w->row_bytes, total = (size_t)w->rows / GROUP * gbytes;
	const int ngroups = w->rows / GROUP;
	/* Huge pages where they fit whole: decoding streams every weight once
	 * per token, and 4 KiB pages would cost a TLB miss every 4 KiB. Only
	 * the 2 MiB-aligned interior is advised, so no matrix is rounded up
	 * (a small model has hundreds of matrices under 2 MiB). */
	const size_t huge = 2u << 20;
	void *mem = NULL;
	/* posix_memalign: aligned_alloc wants the size a multiple of the alignment. */
	if (posix_memalign(&mem, total >= huge ? huge : 64, total ? total : 1))
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB to repack a %dx%d weight",
				   total >> 20, w->rows, w->cols);
	uint8_t *dst = mem;
	if (total >= huge)
		madvise(dst, total / huge * huge, MADV_HUGEPAGE);
	/* A few MiB at a time, dropping each slab's source pages once it is
	 * copied: the process never holds both copies of a matrix. */
	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	const int slab = (int)((4u << 20) / gbytes) + 1;
	uintptr_t dropped = ((uintptr_t)w->data + page - 1) / page * page;
	for (int g0 = 0; g0 < ngroups; g0 += slab) {
		int g1 = g0 + slab < ngroups ? g0 + slab : ngroups;
		if (drop_source) {
			/* Map the slab's file pages in one call rather than a fault per page. */
			uintptr_t a = (uintptr_t)w->data + (size_t)g0 * gbytes, e = (uintptr_t)w->data + (size_t)g1 * gbytes;
			a = a / page * page;
			madvise((void *)a, e - a, MADV_POPULATE_READ);
		}
		repack_groups(w, dst, g0, g1);
		if (!drop_source)
			continue;
		uintptr_t done = ((uintptr_t)w->data + (size_t)g1 * gbytes) / page * page;
		if (done > dropped) {
			madvise((void *)dropped, done - dropped, MADV_DONTNEED);
			dropped = done;
		}
	}
	*out = *w;
	out->layout = CPU_LAYOUT_R16;
	out->data = dst;
	*owned = dst;
	return 0;
}

/* The 8 weight vectors of one group and block: vector k holds elements
 * 4k..4k+3 of the block for each of the 16 rows. */
/* Kinds of integer group: Q4_0, Q8_0, Q4_1 (16 mins after the scales). */
enum { K_Q4_0, K_Q8_0, K_Q4_1 };

RP_INLINE void load_block(const uint8_t *p, int kind, __m512i *wv)
{
	if (kind == K_Q8_0) {
		for (int k = 0; k < 8; k++)
			wv[k] = _mm512_loadu_si512((const void *)(p + 32 + 64 * k));
		return;
	}
	const __m512i low = _mm512_set1_epi8(0x0F);
	const int qoff = kind == K_Q4_1 ? 64 : 32;
	for (int m = 0; m < 4; m++) {
		__m512i v = _mm512_loadu_si512((const void *)(p + qoff + 64 * m));
		wv[m] = _mm512_and_si512(v, low);
		wv[m + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
	}
}

/* Rows [16g, 16g+16) against tokens j0..j0+tn-1, every block; tn is a
 * constant after inlining so the sums stay in registers. */
RP_INLINE void group_tile(const wmat *w, int kind, int g, const qact *a, int j0, int tn, float *y,
			  int ldy)
{
	/* Start values undo the unsigned operand: -128 sum(x) for Q8_0 (stored
	 * +128), -8 sum(x) for Q4_0 (q-8); Q4_1 adds its mins in f32 instead. */
	const int bs = (int)kernels_row_bytes(w->type, 32), nb = a->nb; /* bytes per block */
	const int c = kind == K_Q8_0 ? 128 : kind == K_Q4_0 ? 8 : 0;
	const uint8_t *gp = w->data + (size_t)g * GROUP * w->row_bytes;
	__m512 acc[TN];
#pragma GCC unroll 8
	for (int j = 0; j < TN; j++)
		acc[j] = _mm512_setzero_ps();
	for (int b = 0; b < nb; b++) {
		const uint8_t *p = gp + (size_t)b * GROUP * bs;
		__m512 ws = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
		__m512 wmin = kind == K_Q4_1 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)))
					     : _mm512_setzero_ps();
		__m512i wv[8];
		if (tn > 1) /* the next blocks' weights arrive while these compute */
			for (int l = 0; l < GROUP * bs; l += 64)
				_mm_prefetch((const char *)p + 4 * GROUP * bs + l, _MM_HINT_T0);
		load_block(p, kind, wv);
#pragma GCC unroll 8
		for (int j = 0; j < tn; j++) {
			const size_t xi = (size_t)(j0 + j) * nb + b;
			const int32_t *xq = (const int32_t *)(a->q + (size_t)(j0 + j) * a->cols + 32 * b);
			__m512i dot = _mm512_set1_epi32(-c * a->s[xi]);
#pragma GCC unroll 8
			for (int k = 0; k < 8; k++) {
				int32_t x4;
				memcpy(&x4, xq + k, 4);
				dot = _mm512_dpbusd_epi32(dot, wv[k], _mm512_set1_epi32(x4));
			}
			acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
						 _mm512_mul_ps(ws, _mm512_set1_ps(a->d[xi])), acc[j]);
			if (kind == K_Q4_1) /* m times the block's sum of x, as rounded */
				acc[j] = _mm512_fmadd_ps(wmin, _mm512_set1_ps(a->d[xi] * (float)a->s[xi]),
							 acc[j]);
		}
	}
#pragma GCC unroll 8
	for (int j = 0; j < tn; j++)
		_mm512_storeu_ps(y + (size_t)(j0 + j) * ldy + (size_t)g * GROUP, acc[j]);
}

typedef void (*gtile_fn)(const wmat *, int, const qact *, int, float *, int);
#define DEF_GTILE(NAME, KIND, TNc)                                                              \
	RP_TARGET static void NAME(const wmat *w, int g, const qact *a, int j0, float *y, int ldy) \
	{                                                                                       \
		group_tile(w, KIND, g, a, j0, TNc, y, ldy);                                     \
	}
DEF_GTILE(q8_tile_n, K_Q8_0, TN)
DEF_GTILE(q8_tile_1, K_Q8_0, 1)
DEF_GTILE(q4_tile_n, K_Q4_0, TN)
DEF_GTILE(q4_tile_1, K_Q4_0, 1)
DEF_GTILE(q41_tile_n, K_Q4_1, TN)
DEF_GTILE(q41_tile_1, K_Q4_1, 1)

void r16_gemv_groups(const wmat *w, const qact *a, int g0, int g1, float *y)
{
	const cpu_path path = cpu_path_get();
	if (path == CPU_PATH_AVXVNNI) {
		r16_groups_avxvnni(w, a, 0, 1, g0, g1, y);
		return;
	}
	if (path != CPU_PATH_AVX512VNNI) {
		r16_groups_avx2(w, a, 0, 1, g0, g1, y);
		return;
	}
	gtile_fn f = w_r16_of(w, W_Q8_0) ? q8_tile_1 : w_r16_of(w, W_Q4_1) ? q41_tile_1 : q4_tile_1;
	for (int g = g0; g < g1; g++)
		f(w, g, a, 0, y, w->rows);
}

void r16_gemm(const wmat *w, const qact *a, int n, float *y)
{
	const int ngroups = w->rows / GROUP;
	const cpu_path path = cpu_path_get();
	gtile_fn fn = w_r16_of(w, W_Q8_0) ? q8_tile_n : w_r16_of(w, W_Q4_1) ? q41_tile_n : q4_tile_n;
	gtile_fn f1 = w_r16_of(w, W_Q8_0) ? q8_tile_1 : w_r16_of(w, W_Q4_1) ? q41_tile_1 : q4_tile_1;
#pragma omp parallel
	{
		int nt = omp_get_num_threads(), t = omp_get_thread_num();
		int g0 = (int)((long long)ngroups * t / nt), g1 = (int)((long long)ngroups * (t + 1) / nt);
		/* Tokens in chunks whose activations stay in L2 while the band's
		 * groups stream past them. */
		for (int c0 = 0; c0 < n; c0 += CHUNK) {
			int c1 = c0 + CHUNK < n ? c0 + CHUNK : n;
			if (path == CPU_PATH_AVXVNNI) {
				r16_groups_avxvnni(w, a, c0, c1, g0, g1, y);
				continue;
			}
			if (path != CPU_PATH_AVX512VNNI) {
				r16_groups_avx2(w, a, c0, c1, g0, g1, y);
				continue;
			}
			for (int g = g0; g < g1; g++) {
				int j = c0;
				for (; j + TN <= c1; j += TN)
					fn(w, g, a, j, y, w->rows);
				for (; j < c1; j++)
					f1(w, g, a, j, y, w->rows);
			}
		}
	}
}

/* ---- f16 / bf16 / f32 groups ------------------------------------------------
 * Outer products: for each column k, the 16 rows' weights (one load, widened
 * to f32) times token j's x[k] broadcast, into token j's 16 sums. */

#define H_TARGET __attribute__((target("avx512f,avx512bw,f16c,fma")))
#define H_INLINE static inline __attribute__((always_inline)) H_TARGET

enum { HN = 16 };

/* Kinds of group: 0 f16, 1 bf16, 2 f32. Column k of a group starts at
 * k * col_bytes(kind). */
H_INLINE size_t col_bytes(int kind)
{
	return kind == 2 ? 64 : 32;
}

H_INLINE __m512 ld_h16(const uint8_t *p, int kind)
{
	if (kind == 2)
		return _mm512_loadu_ps((const float *)p);
	__m256i h = _mm256_loadu_si256((const __m256i *)p);
	if (kind == 1)
		return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
	return _mm512_cvtph_ps(h);
}

/* xt holds HN tokens interleaved column by column (xt[k][j]): the HN
 * broadcasts of one column come from one cache line. Read straight from x,
 * HN rows a whole number of pages apart would fight over the same L1 sets. */
H_INLINE void h_tile(const wmat *w, int kind, int g, const float *xt, int j0, int tn, float *y,
		     int ldy)
{
	const uint8_t *gp = w->data + (size_t)g * GROUP * w->row_bytes;
	const int cols = w->cols;
	__m512 acc[HN];
#pragma GCC unroll 16
	for (int j = 0; j < HN; j++)
		acc[j] = _mm512_setzero_ps();
	for (int k = 0; k < cols; k++) {
		__m512 wk = ld_h16(gp + (size_t)k * col_bytes(kind), kind);
		const float *xk = xt + (size_t)k * HN;
#pragma GCC unroll 16
		for (int j = 0; j < HN; j++)
			acc[j] = _mm512_fmadd_ps(wk, _mm512_set1_ps(xk[j]), acc[j]);
	}
	for (int j = 0; j < tn; j++)
		_mm512_storeu_ps(y + (size_t)(j0 + j) * ldy + (size_t)g * GROUP, acc[j]);
}

/* One token: four chains over k, so the FMA latency does not bound it. */
H_INLINE void h_row(const wmat *w, int kind, int g, const float *x, float *y)
{
	const uint8_t *gp = w->data + (size_t)g * GROUP * w->row_bytes;
	const size_t cb = col_bytes(kind);
	__m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	int k = 0;
	for (; k + 4 <= w->cols; k += 4) {
		a0 = _mm512_fmadd_ps(ld_h16(gp + (size_t)k * cb, kind), _mm512_set1_ps(x[k]), a0);
		a1 = _mm512_fmadd_ps(ld_h16(gp + (size_t)(k + 1) * cb, kind), _mm512_set1_ps(x[k + 1]), a1);
		a2 = _mm512_fmadd_ps(ld_h16(gp + (size_t)(k + 2) * cb, kind), _mm512_set1_ps(x[k + 2]), a2);
		a3 = _mm512_fmadd_ps(ld_h16(gp + (size_t)(k + 3) * cb, kind), _mm512_set1_ps(x[k + 3]), a3);
	}
	for (; k < w->cols; k++)
		a0 = _mm512_fmadd_ps(ld_h16(gp + (size_t)k * cb, kind), _mm512_set1_ps(x[k]), a0);
	_mm512_storeu_ps(y + (size_t)g * GROUP,
			 _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

H_TARGET static void f16_tile(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile(w, 0, g, xt, j0, tn, y, w->rows);
}
H_TARGET static void bf16_tile(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile(w, 1, g, xt, j0, tn, y, w->rows);
}
H_TARGET static void f32_tile(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile(w, 2, g, xt, j0, tn, y, w->rows);
}
H_TARGET static void f16_row(const wmat *w, int g, const float *x, float *y) { h_row(w, 0, g, x, y); }
H_TARGET static void bf16_row(const wmat *w, int g, const float *x, float *y) { h_row(w, 1, g, x, y); }
H_TARGET static void f32_row(const wmat *w, int g, const float *x, float *y) { h_row(w, 2, g, x, y); }

/* The same on AVX2/FMA/F16C: a group's column is two ymm of 8 rows, and a
 * tile takes 6 tokens (12 sums, 2 weights and a broadcast in 16 registers). */
enum { HN2 = 6 };
#define H2_INLINE static inline __attribute__((always_inline))

H2_INLINE __m256 ld_h8(const uint8_t *p, int kind)
{
	if (kind == 2)
		return _mm256_loadu_ps((const float *)p);
	__m128i h = _mm_loadu_si128((const __m128i *)p);
	if (kind == 1)
		return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
	return _mm256_cvtph_ps(h);
}

H2_INLINE void h_tile2(const wmat *w, int kind, int g, const float *xt, int j0, int tn, float *y)
{
	const uint8_t *gp = w->data + (size_t)g * GROUP * w->row_bytes;
	const size_t cb = kind == 2 ? 64 : 32, half = cb / 2;
	__m256 lo[HN2], hi[HN2];
#pragma GCC unroll 6
	for (int j = 0; j < HN2; j++)
		lo[j] = hi[j] = _mm256_setzero_ps();
	for (int k = 0; k < w->cols; k++) {
		__m256 wl = ld_h8(gp + (size_t)k * cb, kind), wh = ld_h8(gp + (size_t)k * cb + half, kind);
		const float *xk = xt + (size_t)k * HN2;
#pragma GCC unroll 6
		for (int j = 0; j < HN2; j++) {
			__m256 xb = _mm256_broadcast_ss(xk + j);
			lo[j] = _mm256_fmadd_ps(wl, xb, lo[j]);
			hi[j] = _mm256_fmadd_ps(wh, xb, hi[j]);
		}
	}
	for (int j = 0; j < tn; j++) {
		float *o = y + (size_t)(j0 + j) * w->rows + (size_t)g * GROUP;
		_mm256_storeu_ps(o, lo[j]);
		_mm256_storeu_ps(o + 8, hi[j]);
	}
}

/* One token: two chains per half over k, so the FMA latency does not bound it. */
H2_INLINE void h_row2(const wmat *w, int kind, int g, const float *x, float *y)
{
	const uint8_t *gp = w->data + (size_t)g * GROUP * w->row_bytes;
	const size_t cb = kind == 2 ? 64 : 32, half = cb / 2;
	__m256 l0 = _mm256_setzero_ps(), l1 = l0, h0 = l0, h1 = l0;
	for (int k = 0; k < w->cols; k += 2) { /* cols is a multiple of 16 (w_repack_supported) */
		const uint8_t *p = gp + (size_t)k * cb;
		__m256 x0 = _mm256_broadcast_ss(x + k), x1 = _mm256_broadcast_ss(x + k + 1);
		l0 = _mm256_fmadd_ps(ld_h8(p, kind), x0, l0);
		h0 = _mm256_fmadd_ps(ld_h8(p + half, kind), x0, h0);
		l1 = _mm256_fmadd_ps(ld_h8(p + cb, kind), x1, l1);
		h1 = _mm256_fmadd_ps(ld_h8(p + cb + half, kind), x1, h1);
	}
	_mm256_storeu_ps(y + (size_t)g * GROUP, _mm256_add_ps(l0, l1));
	_mm256_storeu_ps(y + (size_t)g * GROUP + 8, _mm256_add_ps(h0, h1));
}

static void f16_tile2(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile2(w, 0, g, xt, j0, tn, y);
}
static void bf16_tile2(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile2(w, 1, g, xt, j0, tn, y);
}
static void f32_tile2(const wmat *w, int g, const float *xt, int j0, int tn, float *y)
{
	h_tile2(w, 2, g, xt, j0, tn, y);
}
static void f16_row2(const wmat *w, int g, const float *x, float *y) { h_row2(w, 0, g, x, y); }
static void bf16_row2(const wmat *w, int g, const float *x, float *y) { h_row2(w, 1, g, x, y); }
static void f32_row2(const wmat *w, int g, const float *x, float *y) { h_row2(w, 2, g, x, y); }

void h16_gemv_groups(const wmat *w, const float *x, int g0, int g1, float *y)
{
	void (*f)(const wmat *, int, const float *, float *);
	if (cpu_has_avx512())
		f = w_r16_of(w, W_BF16) ? bf16_row : w_r16_of(w, W_F32) ? f32_row : f16_row;
	else
		f = w_r16_of(w, W_BF16) ? bf16_row2 : w_r16_of(w, W_F32) ? f32_row2 : f16_row2;
	for (int g = g0; g < g1; g++)
		f(w, g, x, y);
}

void h16_gemm(const wmat *w, const float *x, int n, float *y)
{
	const int avx512 = cpu_has_avx512(), hn = avx512 ? HN : HN2;
	const int ngroups = w->rows / GROUP, cols = w->cols, ntiles = (n + hn - 1) / hn;
	void (*f)(const wmat *, int, const float *, int, int, float *);
	if (avx512)
		f = w_r16_of(w, W_BF16) ? bf16_tile : w_r16_of(w, W_F32) ? f32_tile : f16_tile;
	else
		f = w_r16_of(w, W_BF16) ? bf16_tile2 : w_r16_of(w, W_F32) ? f32_tile2 : f16_tile2;
	/* Tokens interleaved hn at a time, the last tile padded with zeros. */
	float *xt = owl_xmalloc((size_t)ntiles * cols * hn * sizeof *xt);
#pragma omp parallel
	{
#pragma omp for schedule(static)
		for (int t = 0; t < ntiles; t++) {
			float *o = xt + (size_t)t * cols * hn;
			for (int j = 0; j < hn; j++) {
				int tok = t * hn + j;
				for (int k = 0; k < cols; k++)
					o[(size_t)k * hn + j] = tok < n ? x[(size_t)tok * cols + k] : 0.0f;
			}
		}
		int nt = omp_get_num_threads(), th = omp_get_thread_num();
		int g0 = (int)((long long)ngroups * th / nt), g1 = (int)((long long)ngroups * (th + 1) / nt);
		for (int g = g0; g < g1; g++)
			for (int t = 0; t < ntiles; t++)
				f(w, g, xt + (size_t)t * cols * hn, t * hn, n - t * hn < hn ? n - t * hn : hn, y);
	}
	free(xt);
}
