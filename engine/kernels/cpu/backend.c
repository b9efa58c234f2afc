/* The CPU backend: the kernels_backend table filled with OpenMP loops,
 * OpenBLAS GEMM and the products of ops.c, qgemm.c, int256.c and repack.c
 * on the kernel path cpupath.c chooses, and the shared-memory comm
 * that tensor-parallel ranks on one machine use. */
#include "engine/internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>

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
static float exp_sub_sum(float *row, int lo, int hi, float mx)
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

struct kernels_buffer {
	size_t size;
	unsigned char data[];
};

static int cpu_alloc(size_t bytes, kernels_buffer **out, owl_err *err)
{
	*out = malloc(sizeof **out + bytes);
	if (!*out)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate %zu bytes", bytes);
	(*out)->size = bytes;
	return 0;
}

static void cpu_free(kernels_buffer *b) { free(b); }
static void *cpu_data(kernels_buffer *b) { return b->data; }

static int cpu_to_device(kernels_buffer *dst, size_t off, const void *src, size_t n, owl_err *err)
{
	if (off > dst->size || n > dst->size - off)
		return owl_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				   n, off, dst->size);
	memcpy(dst->data + off, src, n);
	return 0;
}

static int cpu_to_host(void *dst, const kernels_buffer *src, size_t off, size_t n, owl_err *err)
{
	if (off > src->size || n > src->size - off)
		return owl_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				   n, off, src->size);
	memcpy(dst, src->data + off, n);
	return 0;
}

/* A forced kernel path this CPU cannot run (OWL_CPU_PATH) fails every
 * product, so the caller learns it at first use; nothing ran on it. */
static int cpu_matmul(float *y, const float *x, const kernels_weight *w, int n, owl_err *err)
{
	int rc = cpu_path_check(err);
	if (rc)
		return rc;
	w_matmul(w, x, y, n);
	return 0;
}

static int cpu_matvec_multi(float *const *ys, const kernels_weight *const *ws, int k,
			    const float *x, owl_err *err)
{
	int rc = cpu_path_check(err);
	if (rc)
		return rc;
	w_matvec_multi(ws, ys, k, x);
	return 0;
}

static int cpu_embedding(float *out, const kernels_weight *table, const int32_t *ids, int n,
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

static int cpu_rmsnorm(float *out, const float *x, const float *weight, int rows, int dim,
		       float eps, owl_err *err)
{
#pragma omp parallel for schedule(static) if (rows > 1)
	for (int i = 0; i < rows; i++)
		rmsnorm(out + (size_t)i * dim, x + (size_t)i * dim, weight, dim, eps);
	return 0;
}

static int cpu_rope(float *x, int n_tok, int pos0, int n_heads, int hd, const float *inv_freq,
		    kernels_rope_layout layout, owl_err *err)
{
	int half = hd / 2, adjacent = layout == KERNELS_ROPE_ADJACENT;
#pragma omp parallel for schedule(static) if (n_tok > 1)
	for (int t = 0; t < n_tok; t++) {
		for (int i = 0; i < half; i++) {
			float a = (float)(pos0 + t) * inv_freq[i], c = cosf(a), s = sinf(a);
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

/* Prompt processing: per head, S = Q K^T and O = P V as two GEMMs over the
 * cached keys and values (strided views of the cache), the causal and
 * sliding-window mask applied to S in between. The work is split into
 * (head, band of query rows) tasks, each GEMM single-threaded: heads alone
 * are too few to share evenly (SmolLM2 has 9 on 2 threads), and causal rows
 * grow with their position, so the tasks are handed out dynamically. */
enum { ATT_ROWS = 32 };

static int attention_gemm(float *out, const float *q, const float *kc, const float *vc, int n_tok,
			  int pos0, int n_heads, int head0, int group, int kv_stride, int hd,
			  int window, owl_err *err)
{
	const float scale = 1.0f / sqrtf((float)hd);
	int n_ctx = pos0 + n_tok, qstride = n_heads * hd;
	int nthreads = omp_get_max_threads(), bands = (n_tok + ATT_ROWS - 1) / ATT_ROWS;
	float *sbuf = malloc((size_t)nthreads * ATT_ROWS * n_ctx * sizeof *sbuf);
	if (!sbuf)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate attention scores for %d x %d tokens",
				   n_tok, n_ctx);
	openblas_set_num_threads(1);
#pragma omp parallel for schedule(dynamic, 1)
	for (int task = 0; task < n_heads * bands; task++) {
		/* Last bands first: they see the most keys. */
		int h = task % n_heads, b = bands - 1 - task / n_heads;
		int r0 = b * ATT_ROWS, nr = n_tok - r0 < ATT_ROWS ? n_tok - r0 : ATT_ROWS;
		int kv_end = pos0 + r0 + nr; /* keys past the band's last row are masked anyway */
		float *S = sbuf + (size_t)omp_get_thread_num() * ATT_ROWS * n_ctx;
		int kvh = (head0 + h) / group;
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
	free(sbuf);
	return 0;
}

static int cpu_attention(float *out, const float *q, const float *kc, const float *vc, int n_tok,
			 int pos0, int n_heads, int head0, int group, int kv_stride, int hd,
			 int window, owl_err *err)
{
	if (n_tok >= 16)
		return attention_gemm(out, q, kc, vc, n_tok, pos0, n_heads, head0, group, kv_stride, hd,
				      window, err);
	const float scale = 1.0f / sqrtf((float)hd);
	int n_ctx = pos0 + n_tok;
	int nthreads = omp_get_max_threads();
	float *scores = malloc((size_t)nthreads * (size_t)n_ctx * sizeof *scores);
	if (!scores)
		return owl_err_set(err, OWL_EFAIL, "cannot allocate attention scores for %d tokens", n_ctx);
	/* Causal rows grow with their position: hand them out dynamically. */
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if (n_tok * n_heads > 1)
	for (int i = 0; i < n_tok; i++)
		for (int h = 0; h < n_heads; h++) {
			float *sc = scores + (size_t)omp_get_thread_num() * n_ctx;
			const float *qh = q + ((size_t)i * n_heads + h) * hd;
			int kvh = (head0 + h) / group, p = pos0 + i;
			int lo = window ? p - window + 1 : 0;
			if (lo < 0)
				lo = 0;
			float mx = -INFINITY;
			for (int j = lo; j <= p; j++) {
				sc[j] = vec_dot(qh, kc + (size_t)j * kv_stride + kvh * hd, hd) * scale;
				if (sc[j] > mx)
					mx = sc[j];
			}
			float sum = exp_sub_sum(sc, lo, p, mx);
			float *o = out + ((size_t)i * n_heads + h) * hd;
			memset(o, 0, (size_t)hd * sizeof *o);
			for (int j = lo; j <= p; j++)
				vec_axpy(o, sc[j] / sum, vc + (size_t)j * kv_stride + kvh * hd, hd);
		}
	free(scores);
	return 0;
}

static int cpu_swiglu(float *gate, const float *up, size_t n, owl_err *err)
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

static int cpu_cross_entropy(float *loss, const float *logits, const int32_t *targets, int rows,
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

/* engine/kernels/cpu/lora.c */
int cpu_lora(float *y, const float *x, int n, int in, int out, int r, const float *a, int lda,
	     const float *b, int ldb, float scale, float *tmp, owl_err *err);

static const kernels_backend cpu = {
	.name = "cpu",
	.buffer_alloc = cpu_alloc,
	.buffer_free = cpu_free,
	.buffer_data = cpu_data,
	.copy_to_device = cpu_to_device,
	.copy_to_host = cpu_to_host,
	.matmul = cpu_matmul,
	.matvec_multi = cpu_matvec_multi,
	.embedding = cpu_embedding,
	.rmsnorm = cpu_rmsnorm,
	.rope = cpu_rope,
	.attention = cpu_attention,
	.swiglu = cpu_swiglu,
	.cross_entropy = cpu_cross_entropy,
	.lora = cpu_lora,
};

const kernels_backend *kernels_cpu_backend(void)
{
	return &cpu;
}

/* Ranks share memory: the sum is read from each rank's buffer in place. */
static int cpu_all_reduce(const kernels_comm *c, float *x, float *const *partials, size_t n,
			  owl_err *err)
{
#pragma omp parallel for schedule(static) if (n > 16384)
	for (size_t i = 0; i < n; i++) {
		float s = 0;
		for (int r = 0; r < c->size; r++)
			s += partials[r][i];
		x[i] += s;
	}
	return 0;
}

const kernels_comm *kernels_cpu_comm(void)
{
	/* The size is set per model (tp); this is the template the engine copies. */
	static const kernels_comm comm = {.name = "cpu-shared", .size = 1,
					  .all_reduce_sum = cpu_all_reduce};
	return &comm;
}
