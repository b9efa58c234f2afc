/* The CPU backend: the kernels_backend table filled with OpenMP loops,
 * OpenBLAS GEMM and the products of ops.c, qgemm.c, int256.c and repack.c
 * on the kernel path cpupath.c chooses, and the shared-memory comm
 * that tensor-parallel ranks on one machine use. */
#include "engine/kernels/cpu/cpu.h"
#include "backward.h"
#include "vexp.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <immintrin.h>

/* A buffer: small ones on the heap, large ones (the KV pool, activations
 * of big models) mapped, so that memory is occupied only as it is used. */
struct kernels_buffer {
	size_t size;
	int mapped;
	void *data;
};

enum { MAP_AT = 1 << 20 };

static int cpu_alloc(kernels_backend *be, size_t bytes, kernels_buffer **out, owl_err *err)
{
	*out = calloc(1, sizeof **out);
	if (!*out)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a buffer");
	kernels_buffer *b = *out;
	b->size = bytes;
	if (bytes >= MAP_AT) {
		void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		b->data = p == MAP_FAILED ? NULL : p;
		b->mapped = b->data != NULL;
	} else {
		b->data = calloc(1, bytes ? bytes : 1);
	}
	if (!b->data) {
		free(b);
		*out = NULL;
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB", bytes >> 20);
	}
	return 0;
}

static void cpu_free(kernels_backend *be, kernels_buffer *b)
{
	if (!b)
		return;
	if (b->mapped)
		munmap(b->data, b->size);
	else
		free(b->data);
	free(b);
}

static void *cpu_data(kernels_buffer *b) { return b->data; }

static int cpu_to_device(kernels_backend *be, kernels_buffer *dst, size_t off, const void *src,
			 size_t n, owl_err *err)
{
	if (off > dst->size || n > dst->size - off)
		return owl_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				   n, off, dst->size);
	memcpy((uint8_t *)dst->data + off, src, n);
	return 0;
}

static int cpu_to_host(kernels_backend *be, void *dst, const kernels_buffer *src, size_t off,
		       size_t n, owl_err *err)
{
	if (off > src->size || n > src->size - off)
		return owl_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				   n, off, src->size);
	memcpy(dst, (const uint8_t *)src->data + off, n);
	return 0;
}

/* Within backend memory: on the CPU, plain memory. */
static int cpu_copy(kernels_backend *be, void *dst, const void *src, size_t n, owl_err *err)
{
	if (n)
		memmove(dst, src, n);
	return 0;
}

static int cpu_fill_zero(kernels_backend *be, void *dst, size_t n, owl_err *err)
{
	if (n)
		memset(dst, 0, n);
	return 0;
}

/* Whole rows of w (a column shard's strided rows made contiguous). */
static int cpu_contiguous(const kernels_weight *w, uint8_t **out, owl_err *err)
{
	size_t rb = kernels_row_bytes(w->type, w->cols);
	*out = malloc((size_t)w->rows * rb + 1);
	if (!*out)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu MiB for a %dx%d weight shard",
				   (size_t)w->rows * rb >> 20, w->rows, w->cols);
	for (int r = 0; r < w->rows; r++)
		memcpy(*out + (size_t)r * rb, w->data + (size_t)r * w->row_bytes, rb);
	return 0;
}

/* Drops the pages of a file mapping that w's rows cover; they are read
 * back from the page cache if anyone touches them again. */
static void drop_file_pages(const kernels_weight *w)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)w->data + page - 1) / page * page;
	uintptr_t e = ((uintptr_t)w->data + (size_t)w->rows * w->row_bytes) / page * page;
	if (e > a)
		madvise((void *)a, e - a, MADV_DONTNEED);
}

static int cpu_weight_prepare(kernels_backend *be, const kernels_weight *w, int from_file,
			      kernels_weight *out, kernels_buffer **owned, owl_err *err)
{
	*out = *w;
	*owned = NULL;
	size_t rb = kernels_row_bytes(w->type, w->cols);
	if (!rb)
		return owl_err_set(err, OWL_EUSAGE, "a %s weight of %d columns does not fill whole "
				   "blocks", kernels_dtype_name(w->type), w->cols);
	kernels_weight whole = *w;
	uint8_t *copy = NULL;
	int rc;
	if (w->row_bytes != rb) {
		if ((rc = cpu_contiguous(w, &copy, err)))
			return rc;
		if (from_file)
			drop_file_pages(w);
		whole.data = copy;
		whole.row_bytes = rb;
	}
	uint8_t *mem = copy;
	if (w_repack_supported(&whole)) {
		uint8_t *packed;
		if ((rc = w_repack(&whole, from_file && !copy, out, &packed, err))) {
			free(copy);
			return rc;
		}
		free(copy);
		mem = packed;
	} else {
		*out = whole;
	}
	if (!mem)
		return 0; /* the file's own rows: a view */
	kernels_buffer *b = calloc(1, sizeof *b);
	if (!b) {
		free(mem);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a buffer");
	}
	b->size = (size_t)out->rows * out->row_bytes;
	b->data = mem; /* malloc'd or posix_memalign'd: free() releases either */
	*owned = b;
	return 0;
}

/* A forced kernel path this CPU cannot run (OWL_CPU_PATH) fails every
 * product, so the caller learns it at first use; nothing ran on it. */
static int cpu_matmul(kernels_backend *be, float *y, const float *x, const kernels_weight *w, int n,
		      owl_err *err)
{
	int rc = cpu_path_check(err);
	if (rc)
		return rc;
	w_matmul(w, x, y, n);
	return 0;
}

static int cpu_matvec_multi(kernels_backend *be, float *const *ys, const kernels_weight *const *ws, int k,
			    const float *x, owl_err *err)
{
	int rc = cpu_path_check(err);
	if (rc)
		return rc;
	w_matvec_multi(ws, ys, k, x);
	return 0;
}

static int cpu_embedding(kernels_backend *be, float *out, const kernels_weight *table, const int32_t *ids, int n,
			 owl_err *err)
{
	for (int i = 0; i < n; i++) {
		if (ids[i] < 0 || ids[i] >= table->rows)
			return owl_err_set(err, OWL_EUSAGE, "token id %d is outside the vocabulary of %d",
					   ids[i], table->rows);
		w_row_to_f32(table, ids[i], out + (size_t)i * table->cols);
	}
	return 0;
}

static int cpu_rmsnorm(kernels_backend *be, float *out, const float *x, const float *weight, int rows, int dim,
		       float eps, owl_err *err)
{
	/* A few decoding rows are less work than waking the threads. */
#pragma omp parallel for schedule(static) if ((size_t)rows * dim > 32768)
	for (int i = 0; i < rows; i++)
		rmsnorm(out + (size_t)i * dim, x + (size_t)i * dim, weight, dim, eps);
	return 0;
}

static int cpu_rope(kernels_backend *be, float *x, int n_tok, const int32_t *pos, int n_heads, int hd,
		    const float *inv_freq, kernels_rope_layout layout, owl_err *err)
{
	int half = hd / 2, adjacent = layout == KERNELS_ROPE_ADJACENT;
#pragma omp parallel for schedule(static) if (n_tok > 16)
	for (int t = 0; t < n_tok; t++) {
		for (int i = 0; i < half; i++) {
			float a = (float)pos[t] * inv_freq[i], c = cosf(a), s = sinf(a);
			int i0 = adjacent ? 2 * i : i, i1 = adjacent ? 2 * i + 1 : i + half;
			for (int h = 0; h < n_heads; h++) {
				float *v = x + ((size_t)t * n_heads + h) * hd;
				float x0 = v[i0], x1 = v[i1];
				v[i0] = x0 * c - x1 * s;
				v[i1] = x0 * s + x1 * c;
			}
		}
	}
	return 0;
}

static int cpu_add_rows(kernels_backend *be, float *y, const float *b, int rows, int dim, owl_err *err)
{
	for (int r = 0; r < rows; r++) {
		float *yr = y + (size_t)r * dim;
		for (int j = 0; j < dim; j++)
			yr[j] += b[j];
	}
	return 0;
}

static int cpu_add(kernels_backend *be, float *y, const float *x, size_t n, owl_err *err)
{
	size_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n8; i += 8)
		_mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
	for (size_t i = n8; i < n; i++)
		y[i] += x[i];
	return 0;
}

/* ---- the paged KV cache ------------------------------------------------------ */

static size_t kv_elem_bytes(kernels_kv_type t) { return t == KERNELS_KV_F16 ? 2 : 4; }

/* Row pos of a sequence's keys (or values, with base = kv->v). */
static inline const uint8_t *kv_row(const kernels_kv_layer *kv, const uint8_t *base,
				    const int32_t *blocks, int pos)
{
	size_t rb = (size_t)kv->row_elems * kv_elem_bytes(kv->type);
	return base + (size_t)blocks[pos / kv->block_tokens] * kv->block_stride +
	       (size_t)(pos % kv->block_tokens) * rb;
}

static void f32_to_f16_row(uint16_t *dst, const float *src, int n)
{
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i),
				 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

static void f16_to_f32_row(float *dst, const uint16_t *src, int n)
{
	int i = 0;
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
	for (; i < n; i++)
		dst[i] = _cvtsh_ss(src[i]);
}

static int cpu_kv_store(kernels_backend *be, const kernels_kv_layer *kv, const float *k, const float *v,
			const int32_t *slots, int n_tok, owl_err *err)
{
	size_t rb = (size_t)kv->row_elems * kv_elem_bytes(kv->type);
	for (int i = 0; i < n_tok; i++) {
		size_t off = (size_t)(slots[i] / kv->block_tokens) * kv->block_stride +
			     (size_t)(slots[i] % kv->block_tokens) * rb;
		const float *ki = k + (size_t)i * kv->row_elems, *vi = v + (size_t)i * kv->row_elems;
		if (kv->type == KERNELS_KV_F16) {
			f32_to_f16_row((uint16_t *)(kv->k + off), ki, kv->row_elems);
			f32_to_f16_row((uint16_t *)(kv->v + off), vi, kv->row_elems);
		} else {
			memcpy(kv->k + off, ki, rb);
			memcpy(kv->v + off, vi, rb);
		}
	}
	return 0;
}

/* Prompt processing: per head, S = Q K^T and O = P V as two GEMMs over the
 * keys and values gathered into contiguous rows [position][kv_stride], the
 * causal and sliding-window mask applied to S in between. The work is
 * split into (head, band of query rows) tasks, each GEMM single-threaded:
 * heads alone are too few to share evenly (SmolLM2 has 9 on 2 threads), and
 * causal rows grow with their position, so the tasks are handed out
 * dynamically. sbuf holds ATT_ROWS x n_ctx floats per thread. */
enum { ATT_ROWS = 32 };

size_t kernels_attention_scratch(int max_ctx, int kv_elems, int threads)
{
	/* gathered keys and values, then the score rows of every thread */
	return 2 * (size_t)max_ctx * (size_t)kv_elems + (size_t)threads * ATT_ROWS * (size_t)max_ctx;
}

static void attention_gemm(float *out, const float *q, const float *kc, const float *vc, int n_tok,
			   int pos0, int n_heads, int head0, int group, int kv_head0, int kv_stride,
			   int hd, int window, float *sbuf)
{
	const float scale = 1.0f / sqrtf((float)hd);
	int n_ctx = pos0 + n_tok, qstride = n_heads * hd;
	int bands = (n_tok + ATT_ROWS - 1) / ATT_ROWS;
#pragma omp parallel for schedule(dynamic, 1)
	for (int task = 0; task < n_heads * bands; task++) {
		/* Last bands first: they see the most keys. */
		int h = task % n_heads, b = bands - 1 - task / n_heads;
		int r0 = b * ATT_ROWS, nr = n_tok - r0 < ATT_ROWS ? n_tok - r0 : ATT_ROWS;
		int kv_end = pos0 + r0 + nr; /* keys past the band's last row are masked anyway */
		float *S = sbuf + (size_t)omp_get_thread_num() * ATT_ROWS * n_ctx;
		int kvh = (head0 + h) / group - kv_head0;
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, kv_end, hd, scale,
			    q + (size_t)r0 * qstride + (size_t)h * hd, qstride, kc + (size_t)kvh * hd,
			    kv_stride, 0.0f, S, n_ctx);
		for (int i = 0; i < nr; i++) {
			float *row = S + (size_t)i * n_ctx;
			int p = pos0 + r0 + i, lo = window ? p - window + 1 : 0;
			if (lo < 0)
				lo = 0;
			float mx = -INFINITY;
			for (int j = lo; j <= p; j++)
				if (row[j] > mx)
					mx = row[j];
			float inv = 1.0f / exp_sub_sum(row, lo, p, mx);
			for (int j = 0; j < lo; j++)
				row[j] = 0.0f;
			for (int j = lo; j <= p; j++)
				row[j] *= inv;
			for (int j = p + 1; j < kv_end; j++)
				row[j] = 0.0f;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, kv_end, 1.0f, S, n_ctx,
			    vc + (size_t)kvh * hd, kv_stride, 0.0f,
			    out + (size_t)r0 * qstride + (size_t)h * hd, qstride);
	}
}

/* Positions [0, n) of a sequence's keys and values as contiguous f32 rows. */
static void kv_gather(const kernels_kv_layer *kv, const int32_t *blocks, int n, float *kd, float *vd)
{
	size_t re = (size_t)kv->row_elems;
#pragma omp parallel for schedule(static) if (n > 256)
	for (int j = 0; j < n; j++) {
		const uint8_t *kr = kv_row(kv, kv->k, blocks, j), *vr = kv_row(kv, kv->v, blocks, j);
		if (kv->type == KERNELS_KV_F16) {
			f16_to_f32_row(kd + j * re, (const uint16_t *)kr, kv->row_elems);
			f16_to_f32_row(vd + j * re, (const uint16_t *)vr, kv->row_elems);
		} else {
			memcpy(kd + j * re, kr, re * sizeof(float));
			memcpy(vd + j * re, vr, re * sizeof(float));
		}
	}
}

/* Widens an f16 row of the cache into dst, or points at an f32 row. */
static const float *kv_row_f32(const kernels_kv_layer *kv, const uint8_t *r, int n, float *dst)
{
	if (kv->type != KERNELS_KV_F16)
		return (const float *)r;
	f16_to_f32_row(dst, (const uint16_t *)r, n);
	return dst;
}

enum { ATT_MAX_HD = 512 };

/* The same with AVX-512 for head sizes 64 and 128: a chunk of heads keeps
 * its queries and its output rows in registers, so each key and value row is
 * loaded (and widened) once per chunk and the output is not re-read per
 * position. HD is a constant after inlining. */
#define A5_TARGET __attribute__((target("avx512f,f16c,fma")))
#define A5_INLINE static inline __attribute__((always_inline)) A5_TARGET

A5_INLINE __m512 a5_load(const kernels_kv_layer *kv, const uint8_t *r, int v)
{
	if (kv->type == KERNELS_KV_F16)
		return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r + v));
	return _mm512_loadu_ps((const float *)r + 16 * v);
}

A5_INLINE void a5_rows(float *o, const float *q, int nh, const kernels_kv_layer *kv,
		       const int32_t *blocks, int lo, int p, int kvh, const int HD, float *sc, int ld)
{
	enum { HC_MAX = 4, V_MAX = 8 }; /* at most 16 registers of queries or outputs */
	const int nv = HD / 16, hc_max = 16 / nv;
	const float scale = 1.0f / sqrtf((float)HD);
	size_t eb = kv_elem_bytes(kv->type);
	for (int i0 = 0; i0 < nh; i0 += hc_max) {
		int hc = nh - i0 < hc_max ? nh - i0 : hc_max;
		__m512 qr[HC_MAX][V_MAX], acc[HC_MAX][V_MAX];
		float mx[HC_MAX], sum[HC_MAX];
		for (int i = 0; i < hc; i++) {
			mx[i] = -INFINITY;
			for (int v = 0; v < nv; v++)
				qr[i][v] = _mm512_loadu_ps(q + (size_t)(i0 + i) * HD + 16 * v);
		}
		for (int j = lo; j <= p; j++) {
			const uint8_t *kr = kv_row(kv, kv->k, blocks, j) + (size_t)kvh * HD * eb;
			__m512 kx[V_MAX];
			for (int v = 0; v < nv; v++)
				kx[v] = a5_load(kv, kr, v);
			for (int i = 0; i < hc; i++) {
				__m512 d = _mm512_mul_ps(qr[i][0], kx[0]);
				for (int v = 1; v < nv; v++)
					d = _mm512_fmadd_ps(qr[i][v], kx[v], d);
				float x = _mm512_reduce_add_ps(d) * scale;
				sc[(size_t)i * ld + j] = x;
				mx[i] = x > mx[i] ? x : mx[i];
			}
		}
		for (int i = 0; i < hc; i++) {
			sum[i] = 1.0f / exp_sub_sum(sc + (size_t)i * ld, lo, p, mx[i]);
			for (int v = 0; v < nv; v++)
				acc[i][v] = _mm512_setzero_ps();
		}
		for (int j = lo; j <= p; j++) {
			const uint8_t *vr = kv_row(kv, kv->v, blocks, j) + (size_t)kvh * HD * eb;
			__m512 vx[V_MAX];
			for (int v = 0; v < nv; v++)
				vx[v] = a5_load(kv, vr, v);
			for (int i = 0; i < hc; i++) {
				__m512 pj = _mm512_set1_ps(sc[(size_t)i * ld + j]);
				for (int v = 0; v < nv; v++)
					acc[i][v] = _mm512_fmadd_ps(pj, vx[v], acc[i][v]);
			}
		}
		for (int i = 0; i < hc; i++)
			for (int v = 0; v < nv; v++)
				_mm512_storeu_ps(o + (size_t)(i0 + i) * HD + 16 * v,
						 _mm512_mul_ps(acc[i][v], _mm512_set1_ps(sum[i])));
	}
}

A5_TARGET static void a5_rows_64(float *o, const float *q, int nh, const kernels_kv_layer *kv,
				 const int32_t *blocks, int lo, int p, int kvh, float *sc, int ld)
{
	a5_rows(o, q, nh, kv, blocks, lo, p, kvh, 64, sc, ld);
}

A5_TARGET static void a5_rows_128(float *o, const float *q, int nh, const kernels_kv_layer *kv,
				  const int32_t *blocks, int lo, int p, int kvh, float *sc, int ld)
{
	a5_rows(o, q, nh, kv, blocks, lo, p, kvh, 128, sc, ld);
}

/* One query row of the nh heads that share kv head kvh, against their
 * sequence's keys read in place from the blocks: each key and value row is
 * read (and widened from f16) once for all heads of the group, which is
 * what grouped-query attention lets a decoder save. q and o hold the nh
 * heads side by side; sc has room for nh x ld scores (ld > p). */
static void attention_rows(float *o, const float *q, int nh, const kernels_kv_layer *kv,
			   const int32_t *blocks, int p, int kvh, int hd, int window, float *sc,
			   int ld)
{
	const float scale = 1.0f / sqrtf((float)hd);
	size_t eb = kv_elem_bytes(kv->type);
	float row[ATT_MAX_HD], mx[ATT_ROWS], sum[ATT_ROWS];
	int lo = window ? p - window + 1 : 0;
	if (lo < 0)
		lo = 0;
	if (cpu_has_avx512() && (hd == 64 || hd == 128)) {
		(hd == 64 ? a5_rows_64 : a5_rows_128)(o, q, nh, kv, blocks, lo, p, kvh, sc, ld);
		return;
	}
	for (int i = 0; i < nh; i++)
		mx[i] = -INFINITY;
	for (int j = lo; j <= p; j++) {
		const float *kr = kv_row_f32(kv, kv_row(kv, kv->k, blocks, j) + (size_t)kvh * hd * eb,
					     hd, row);
		for (int i = 0; i < nh; i++) {
			float v = vec_dot(q + (size_t)i * hd, kr, hd) * scale;
			sc[(size_t)i * ld + j] = v;
			if (v > mx[i])
				mx[i] = v;
		}
	}
	for (int i = 0; i < nh; i++)
		sum[i] = exp_sub_sum(sc + (size_t)i * ld, lo, p, mx[i]);
	memset(o, 0, (size_t)nh * hd * sizeof *o);
	for (int j = lo; j <= p; j++) {
		const float *vr = kv_row_f32(kv, kv_row(kv, kv->v, blocks, j) + (size_t)kvh * hd * eb,
					     hd, row);
		for (int i = 0; i < nh; i++)
			vec_axpy(o + (size_t)i * hd, sc[(size_t)i * ld + j] / sum[i], vr, hd);
	}
}

/* Segments of 16 tokens and more (prompts) take the GEMM path one after the
 * other; the rows of all shorter segments (decoding many sequences) are
 * shared by the threads in one loop. */
enum { ATT_GEMM_MIN = 16 };

static int cpu_attention(kernels_backend *be, float *out, const float *q, const kernels_attn_seg *segs, int nseg,
			 const kernels_kv_layer *kv, int n_heads, int head0, int group, int kv_head0,
			 int hd, int window, const kernels_scratch *scratch, owl_err *err)
{
	int qstride = n_heads * hd, threads = omp_get_max_threads(), max_ctx = 0, n_small = 0;
	for (int s = 0; s < nseg; s++) {
		int ctx = segs[s].pos0 + segs[s].ntok;
		max_ctx = ctx > max_ctx ? ctx : max_ctx;
		n_small += segs[s].ntok < ATT_GEMM_MIN ? segs[s].ntok : 0;
	}
	size_t need = kernels_attention_scratch(max_ctx, kv->row_elems, threads);
	if (!scratch || scratch->n < need)
		return owl_err_set(err, OWL_EFAIL, "attention over %d tokens needs %zu floats of "
				   "scratch, %zu given", max_ctx, need, scratch ? scratch->n : 0);
	for (int s = 0; s < nseg; s++) {
		const kernels_attn_seg *g = &segs[s];
		if (g->ntok < ATT_GEMM_MIN)
			continue;
		int ctx = g->pos0 + g->ntok;
		float *kd = scratch->data, *vd = kd + (size_t)ctx * kv->row_elems;
		kv_gather(kv, g->blocks, ctx, kd, vd);
		attention_gemm(out + (size_t)g->tok0 * qstride, q + (size_t)g->tok0 * qstride, kd, vd,
			       g->ntok, g->pos0, n_heads, head0, group, kv_head0, kv->row_elems, hd,
			       window, vd + (size_t)ctx * kv->row_elems);
	}
	if (!n_small)
		return 0;
	/* Rows of the short segments, flattened: (segment, token) pairs. */
	int pairs = 0;
	for (int s = 0; s < nseg; s++)
		pairs += segs[s].ntok < ATT_GEMM_MIN ? segs[s].ntok : 0;
	if (hd > ATT_MAX_HD || group > ATT_ROWS)
		return owl_err_set(err, OWL_EUSAGE, "attention: head size %d (at most %d) or %d query "
				   "heads per kv head (at most %d) not supported", hd, ATT_MAX_HD, group,
				   ATT_ROWS);
	/* The rank's heads [0, n_heads) read its kv heads [0, nkv): head h reads
	 * (head0 + h) / group - kv_head0, so a kv head's query heads are a run. */
	int nkv = (head0 + n_heads - 1) / group - kv_head0 + 1;
	float *sc_all = scratch->data;
	/* Causal rows grow with their position: hand them out dynamically. */
#pragma omp parallel for collapse(2) schedule(dynamic, 2) if (pairs * nkv > 1)
	for (int r = 0; r < pairs; r++)
		for (int u = 0; u < nkv; u++) {
			int s = 0, rest = r;
			while (segs[s].ntok >= ATT_GEMM_MIN || rest >= segs[s].ntok) {
				if (segs[s].ntok < ATT_GEMM_MIN)
					rest -= segs[s].ntok;
				s++;
			}
			const kernels_attn_seg *g = &segs[s];
			int t = g->tok0 + rest;
			int h0 = (u + kv_head0) * group - head0, h1 = h0 + group;
			h0 = h0 < 0 ? 0 : h0;
			h1 = h1 > n_heads ? n_heads : h1;
			float *sc = sc_all + (size_t)omp_get_thread_num() * ATT_ROWS * max_ctx;
			attention_rows(out + ((size_t)t * n_heads + h0) * hd,
				       q + ((size_t)t * n_heads + h0) * hd, h1 - h0, kv, g->blocks,
				       g->pos0 + rest, u, hd, window, sc, max_ctx);
		}
	return 0;
}

static int cpu_swiglu(kernels_backend *be, float *gate, const float *up, size_t n, owl_err *err)
{
	size_t n8 = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > 16384)
	for (size_t j = 0; j < n8; j += 8) {
		__m256 g = _mm256_loadu_ps(gate + j);
		__m256 sig = _mm256_div_ps(_mm256_set1_ps(1.0f),
					   _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
		_mm256_storeu_ps(gate + j, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + j)));
	}
	for (size_t j = n8; j < n; j++) {
		float g = gate[j];
		gate[j] = g / (1.0f + expf(-g)) * up[j];
	}
	return 0;
}

static int cpu_cross_entropy(kernels_backend *be, float *loss, const float *logits, const int32_t *targets, int rows,
			     int vocab, owl_err *err)
{
	double total = 0;
	for (int r = 0; r < rows; r++) {
		const float *row = logits + (size_t)r * vocab;
		if (targets[r] < 0 || targets[r] >= vocab)
			return owl_err_set(err, OWL_EUSAGE, "target %d is outside the vocabulary", targets[r]);
		float mx = row[0];
		for (int v = 1; v < vocab; v++)
			if (row[v] > mx)
				mx = row[v];
		double sum = 0;
		for (int v = 0; v < vocab; v++)
			sum += exp((double)row[v] - mx);
		total += log(sum) + mx - row[targets[r]];
	}
	*loss = (float)(total / rows);
	return 0;
}

/* The CPU runs every op on every weight type it has kernels for. */
static int cpu_supports(const kernels_backend *be, kernels_op op, int type)
{
	switch (op) {
	case KERNELS_OP_MATMUL:
	case KERNELS_OP_MATVEC_MULTI:
	case KERNELS_OP_EMBEDDING:
		return type >= KERNELS_F32 && type <= KERNELS_Q6_K;
	case KERNELS_OP_KV_STORE:
	case KERNELS_OP_ATTENTION:
		return type == KERNELS_KV_F32 || type == KERNELS_KV_F16;
	case KERNELS_OP_RMSNORM:
	case KERNELS_OP_ROPE:
	case KERNELS_OP_ADD:
	case KERNELS_OP_ADD_ROWS:
	case KERNELS_OP_SWIGLU:
	case KERNELS_OP_CROSS_ENTROPY:
	case KERNELS_OP_LORA:
	case KERNELS_OP_ATTENTION_PACKED:
	case KERNELS_OP_LORA_BACKWARD:
	case KERNELS_OP_EMBEDDING_BACKWARD:
	case KERNELS_OP_RMSNORM_BACKWARD:
	case KERNELS_OP_ROPE_BACKWARD:
	case KERNELS_OP_ATTENTION_BACKWARD:
	case KERNELS_OP_SWIGLU_BACKWARD:
	case KERNELS_OP_CROSS_ENTROPY_BACKWARD:
	case KERNELS_OP_ADAMW:
	case KERNELS_OP_SAMPLE:
	case KERNELS_OP_DROPOUT:
		return type == KERNELS_F32;
	case KERNELS_OP_MATMUL_WIDENED:
	case KERNELS_OP_MATMUL_BACKWARD:
		/* every type a row widens from (K-quants too, row by row) */
		return type >= KERNELS_F32 && type <= KERNELS_Q6_K;
	case KERNELS_OP_COUNT:
		break;
	}
	return 0;
}

static int cpu_synchronize(kernels_backend *be, owl_err *err) { return 0; }

typedef struct cpu_context {
	int threads;
} cpu_context;

static void cpu_backend_free(kernels_backend *be)
{
	free(be->context);
	free(be);
}

/* engine/kernels/cpu/lora.c */
int cpu_lora(kernels_backend *be, float *y, const float *x, int n, int in, int out, int r,
	     const float *a, int lda, const float *b, int ldb, float scale, float *tmp, owl_err *err);
/* engine/kernels/cpu/sample.c */
int cpu_sample(kernels_backend *be, int32_t *out, const float *logits, int rows, int vocab,
	       const kernels_sample_row *params, owl_err *err);

static const kernels_backend_iface cpu_iface = {
	.abi_version = KERNELS_ABI_VERSION,
	.name = "cpu",
	.host_memory = 1,
	.free = cpu_backend_free,
	.supports = cpu_supports,
	.synchronize = cpu_synchronize,
	.buffer_alloc = cpu_alloc,
	.buffer_free = cpu_free,
	.buffer_data = cpu_data,
	.copy = cpu_copy,
	.fill_zero = cpu_fill_zero,
	.copy_to_device = cpu_to_device,
	.copy_to_host = cpu_to_host,
	.weight_prepare = cpu_weight_prepare,
	.matmul = cpu_matmul,
	.matvec_multi = cpu_matvec_multi,
	.embedding = cpu_embedding,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.add = cpu_add,
	.add_rows = cpu_add_rows,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.swiglu = cpu_swiglu,
	.cross_entropy = cpu_cross_entropy,
	.lora = cpu_lora,
	.attention_packed = cpu_attention_packed,
	.matmul_widened = cpu_matmul_widened,
	.matmul_backward = cpu_matmul_backward,
	.lora_backward = cpu_lora_backward,
	.embedding_backward = cpu_embedding_backward,
	.rmsnorm_backward = cpu_rmsnorm_backward,
	.rope_backward = cpu_rope_backward,
	.attention_backward = cpu_attention_backward,
	.swiglu_backward = cpu_swiglu_backward,
	.cross_entropy_backward = cpu_cross_entropy_backward,
	.adamw_step = cpu_adamw_step,
	.sample = cpu_sample,
	.dropout = cpu_dropout,
};

/* The CPU's kernels call OpenBLAS from inside their own OpenMP threads,
 * each on its own band, so OpenBLAS must not start threads of its own. Its
 * thread count is process-wide: it is set once, when the first backend is
 * made, never per call. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_threaded(void)
{
	openblas_set_num_threads(1);
}

int kernels_cpu_backend_new(int threads, kernels_backend **out, owl_err *err)
{
	*out = NULL;
	pthread_once(&blas_once, blas_single_threaded);
	kernels_backend *be = calloc(1, sizeof *be);
	cpu_context *c = calloc(1, sizeof *c);
	if (!be || !c) {
		free(be), free(c);
		return owl_err_set(err, OWL_EFAIL, "cannot allocate a CPU backend");
	}
	c->threads = threads > 0 ? threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
	*be = (kernels_backend){.iface = &cpu_iface, .device = 0, .context = c};
	*out = be;
	return 0;
}

int kernels_cpu_backend_threads(const kernels_backend *be)
{
	if (be->iface != &cpu_iface)
		return 1; /* another backend's instance: one host thread drives it */
	return ((const cpu_context *)be->context)->threads;
}

void kernels_backend_free(kernels_backend *be)
{
	if (be)
		be->iface->free(be);
}

int kernels_alloc(kernels_backend *be, size_t bytes, kernels_buffer **buf, void **data,
		  owl_err *err)
{
	int rc = be->iface->buffer_alloc(be, bytes, buf, err);
	*data = rc ? NULL : be->iface->buffer_data(*buf);
	return rc;
}

/* Ranks share memory: rank r's slice of the sum is read from every rank's
 * buffer and written back to all of them (each slice by one thread). */
static int cpu_all_reduce(const kernels_comm *c, float *const *bufs, size_t n, owl_err *err)
{
	if (c->local != c->size)
		return owl_err_set(err, OWL_EUSAGE, "the shared-memory comm drives all %d ranks in "
				   "one process, not %d", c->size, c->local);
	if (c->size == 1)
		return 0;
#pragma omp parallel for schedule(static) if (n > 16384)
	for (size_t i = 0; i < n; i++) {
		float s = 0;
		for (int r = 0; r < c->size; r++)
			s += bufs[r][i];
		for (int r = 0; r < c->size; r++)
			bufs[r][i] = s;
	}
	return 0;
}

static int cpu_all_gather(const kernels_comm *c, float *const *out, const float *const *in,
			  size_t n, owl_err *err)
{
	if (c->local != c->size)
		return owl_err_set(err, OWL_EUSAGE, "the shared-memory comm drives all %d ranks in "
				   "one process, not %d", c->size, c->local);
	for (int r = 0; r < c->size; r++)
		for (int q = 0; q < c->size; q++)
			memcpy(out[r] + (size_t)q * n, in[q], n * sizeof(float));
	return 0;
}

/* One thread drives every rank between collectives: nothing to wait for. */
static int cpu_barrier(const kernels_comm *c, owl_err *err) { return 0; }

const kernels_comm *kernels_cpu_comm(void)
{
	/* The size is set per model (tp); this is the template the engine copies. */
	static const kernels_comm comm = {.name = "cpu-shared", .size = 1, .local = 1,
					  .all_reduce = cpu_all_reduce, .all_gather = cpu_all_gather,
					  .barrier = cpu_barrier};
	return &comm;
}
