/* The kernel layer's training ops against central finite differences in
 * double precision on tiny shapes: each op's forward is written here again
 * as a plain double loop, a scalar L = sum(dout * f(inputs)) is
 * differentiated numerically, and the op's backward must give the same
 * gradients. The projection's dx is checked through every stored weight
 * type, in the file's layout and repacked; attention over packed segments
 * (GQA, sliding window, more rows than a band); cross-entropy with ignored
 * rows. */
#include "test.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include "common/gguf.h"
#include "engine/kernels/cpu/cpu.h"
#include "engine/kernels/kernels.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *rand_vec(size_t n, float scale)
{
	float *v = malloc(n * sizeof *v);
	for (size_t i = 0; i < n; i++)
		v[i] = frand() * scale;
	return v;
}

static kernels_backend *be;

/* The worst |got - want| relative to the largest |want|. */
static double rel_err(const float *got, const double *want, size_t n)
{
	double worst = 0, scale = 1e-9;
	for (size_t i = 0; i < n; i++)
		scale = fmax(scale, fabs(want[i]));
	for (size_t i = 0; i < n; i++)
		worst = fmax(worst, fabs(got[i] - want[i]) / scale);
	return worst;
}

static double max_abs(const double *v, size_t n)
{
	double m = 0;
	for (size_t i = 0; i < n; i++)
		m = fmax(m, fabs(v[i]));
	return m;
}

/* The central difference of loss() with respect to each of the n floats at
 * p, in doubles: the inputs are widened, perturbed by h and put back. */
typedef double (*loss_fn)(void *ctx);
static void numeric_grad(double *g, double *p, size_t n, loss_fn loss, void *ctx)
{
	const double h = 1e-4;
	for (size_t i = 0; i < n; i++) {
		double keep = p[i];
		p[i] = keep + h;
		double up = loss(ctx);
		p[i] = keep - h;
		double down = loss(ctx);
		p[i] = keep;
		g[i] = (up - down) / (2 * h);
	}
}

static double *widen(const float *v, size_t n)
{
	double *d = malloc(n * sizeof *d);
	for (size_t i = 0; i < n; i++)
		d[i] = v[i];
	return d;
}

/* ---- projections ------------------------------------------------------------ */

static uint16_t to_f16(float f) { return _cvtss_sh(f, 0); }

/* rows x cols weights of type t and their exact values (as in test_kernels.c). */
static void make_weight(kernels_dtype t, int rows, int cols, uint8_t **data, float **ref,
			kernels_weight *w)
{
	size_t rb = kernels_row_bytes(t, cols);
	*data = calloc((size_t)rows, rb);
	*ref = malloc((size_t)rows * cols * sizeof **ref);
	for (int r = 0; r < rows; r++) {
		uint8_t *p = *data + (size_t)r * rb;
		if (t == KERNELS_Q4_K || t == KERNELS_Q6_K) {
			for (size_t i = 0; i < rb; i++)
				p[i] = (uint8_t)(frand() * 1000);
			for (size_t sb = 0; sb < rb; sb += t == KERNELS_Q4_K ? 144 : 210) {
				uint16_t d = to_f16(t == KERNELS_Q4_K ? 0.003f : 0.0005f), dm = to_f16(0.002f);
				memcpy(p + sb + (t == KERNELS_Q4_K ? 0 : 208), &d, 2);
				if (t == KERNELS_Q4_K)
					memcpy(p + sb + 2, &dm, 2);
			}
		} else if (t == KERNELS_F32 || t == KERNELS_F16 || t == KERNELS_BF16) {
			for (int c = 0; c < cols; c++) {
				float v = frand();
				uint32_t b;
				memcpy(&b, &v, 4);
				uint16_t h = t == KERNELS_F16 ? to_f16(v) : (uint16_t)(b >> 16);
				if (t == KERNELS_F32)
					memcpy(p + 4 * c, &v, 4);
				else
					memcpy(p + 2 * c, &h, 2);
			}
		} else {
			size_t bb = kernels_row_bytes(t, 32);
			for (int blk = 0; blk < cols / 32; blk++) {
				uint8_t *q = p + blk * bb;
				uint16_t d = to_f16(t == KERNELS_Q8_0 ? 0.01f : 0.1f), m = to_f16(-0.5f);
				memcpy(q, &d, 2);
				if (t == KERNELS_Q4_1)
					memcpy(q + 2, &m, 2);
				size_t qs = t == KERNELS_Q4_1 ? 4 : 2;
				for (size_t i = qs; i < bb; i++)
					q[i] = (uint8_t)(frand() * 1000);
			}
		}
		gguf_type gt = t == KERNELS_F32 ? GGUF_T_F32 : t == KERNELS_F16 ? GGUF_T_F16
			     : t == KERNELS_BF16 ? GGUF_T_BF16 : t == KERNELS_Q8_0 ? GGUF_T_Q8_0
			     : t == KERNELS_Q4_0 ? GGUF_T_Q4_0 : t == KERNELS_Q4_1 ? GGUF_T_Q4_1
			     : t == KERNELS_Q4_K ? GGUF_T_Q4_K : GGUF_T_Q6_K;
		gguf_dequantize_row(gt, p, *ref + (size_t)r * cols, (size_t)cols, NULL);
	}
	*w = (kernels_weight){.type = t, .data = *data, .rows = rows, .cols = cols, .row_bytes = rb};
}

typedef struct mm_ctx {
	const float *wref; /* [rows][cols] */
	const float *dy;   /* [n][rows] */
	double *x;         /* [n][cols] */
	int n, rows, cols;
} mm_ctx;

static double mm_loss(void *p)
{
	mm_ctx *c = p;
	double l = 0;
	for (int i = 0; i < c->n; i++)
		for (int r = 0; r < c->rows; r++) {
			double y = 0;
			for (int k = 0; k < c->cols; k++)
				y += c->x[(size_t)i * c->cols + k] * c->wref[(size_t)r * c->cols + k];
			l += c->dy[(size_t)i * c->rows + r] * y;
		}
	return l;
}

static void check_matmul_backward(const kernels_weight *w, const float *wref, const char *label)
{
	const int n = 3, rows = w->rows, cols = w->cols;
	float *x = rand_vec((size_t)n * cols, 1), *dy = rand_vec((size_t)n * rows, 1);
	float *dx = malloc((size_t)n * cols * sizeof *dx);
	double *g = malloc((size_t)n * cols * sizeof *g);
	mm_ctx c = {wref, dy, widen(x, (size_t)n * cols), n, rows, cols};
	numeric_grad(g, c.x, (size_t)n * cols, mm_loss, &c);
	size_t sn = kernels_matmul_backward_scratch(n, cols, omp_get_max_threads());
	kernels_scratch s = {malloc(sn * sizeof(float)), sn};
	owl_err err = {0};
	CHECK_INT(be->iface->matmul_backward(be, dx, dy, w, n, 0, &s, &err), 0);
	double e = rel_err(dx, g, (size_t)n * cols);
	CHECK(e < 1e-5, "%s %dx%d: dx relative error %g", label, rows, cols, e);
	/* accumulate adds to what dx holds */
	for (size_t i = 0; i < (size_t)n * cols; i++)
		g[i] *= 2;
	CHECK_INT(be->iface->matmul_backward(be, dx, dy, w, n, 1, &s, &err), 0);
	e = rel_err(dx, g, (size_t)n * cols);
	CHECK(e < 1e-5, "%s: accumulated dx relative error %g", label, e);
	/* the exact forward product that this backward differentiates */
	float *y = malloc((size_t)n * rows * sizeof *y);
	double *want = calloc((size_t)n * rows, sizeof *want);
	for (int i = 0; i < n; i++)
		for (int r = 0; r < rows; r++)
			for (int k = 0; k < cols; k++)
				want[(size_t)i * rows + r] += (double)x[(size_t)i * cols + k] * wref[(size_t)r * cols + k];
	CHECK_INT(be->iface->matmul_widened(be, y, x, w, n, &s, &err), 0);
	e = rel_err(y, want, (size_t)n * rows);
	CHECK(e < 1e-5, "%s: matmul_widened relative error %g", label, e);
	free(y), free(want);
	free(x), free(dy), free(dx), free(g), free(c.x), free(s.data);
}

static void matmul_backward_every_type(void)
{
	static const kernels_dtype types[] = {KERNELS_F32, KERNELS_F16, KERNELS_BF16, KERNELS_Q8_0,
					      KERNELS_Q4_0, KERNELS_Q4_1, KERNELS_Q4_K, KERNELS_Q6_K};
	/* 272 rows: more than one band of widened rows, and whole 16-row groups */
	static const int shapes[][2] = {{32, 256}, {272, 256}};
	for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
		for (int si = 0; si < 2; si++) {
			uint8_t *data;
			float *ref;
			kernels_weight w;
			make_weight(types[ti], shapes[si][0], shapes[si][1], &data, &ref, &w);
			CHECK(be->iface->supports(be, KERNELS_OP_MATMUL_BACKWARD, w.type), "supports %s",
			      kernels_dtype_name(w.type));
			check_matmul_backward(&w, ref, kernels_dtype_name(w.type));
			if (w_repack_supported(&w)) {
				kernels_weight r;
				uint8_t *packed;
				owl_err err = {0};
				CHECK_INT(w_repack(&w, 0, &r, &packed, &err), 0);
				char label[64];
				snprintf(label, sizeof label, "%s repacked", kernels_dtype_name(w.type));
				check_matmul_backward(&r, ref, label);
				free(packed);
			}
			free(data), free(ref);
		}
}

/* ---- LoRA --------------------------------------------------------------------- */

typedef struct lora_ctx {
	double *x, *a, *b; /* [n][in], [r][in], [out][r] */
	const float *dy;
	int n, in, out, r;
	double scale;
} lora_ctx;

static double lora_loss(void *p)
{
	lora_ctx *c = p;
	double l = 0;
	for (int i = 0; i < c->n; i++)
		for (int o = 0; o < c->out; o++) {
			double y = 0;
			for (int k = 0; k < c->r; k++) {
				double ax = 0;
				for (int j = 0; j < c->in; j++)
					ax += c->a[(size_t)k * c->in + j] * c->x[(size_t)i * c->in + j];
				y += c->b[(size_t)o * c->r + k] * ax;
			}
			l += c->dy[(size_t)i * c->out + o] * c->scale * y;
		}
	return l;
}

static void lora_backward_matches(void)
{
	const int n = 5, in = 24, out = 20, r = 4;
	const float scale = 1.5f;
	float *x = rand_vec((size_t)n * in, 1), *a = rand_vec((size_t)r * in, 1);
	float *b = rand_vec((size_t)out * r, 1), *dy = rand_vec((size_t)n * out, 1);
	float *dx = calloc((size_t)n * in, sizeof *dx), *da = calloc((size_t)r * in, sizeof *da);
	float *db = calloc((size_t)out * r, sizeof *db), *tmp = malloc(2 * (size_t)n * r * sizeof *tmp);
	lora_ctx c = {widen(x, (size_t)n * in), widen(a, (size_t)r * in), widen(b, (size_t)out * r), dy,
		      n, in, out, r, scale};
	double *gx = malloc((size_t)n * in * sizeof *gx), *ga = malloc((size_t)r * in * sizeof *ga);
	double *gb = malloc((size_t)out * r * sizeof *gb);
	numeric_grad(gx, c.x, (size_t)n * in, lora_loss, &c);
	numeric_grad(ga, c.a, (size_t)r * in, lora_loss, &c);
	numeric_grad(gb, c.b, (size_t)out * r, lora_loss, &c);
	owl_err err = {0};
	CHECK_INT(be->iface->lora_backward(be, dx, da, db, dy, x, n, in, out, r, a, in, b, r, scale,
					    tmp, &err), 0);
	CHECK(rel_err(dx, gx, (size_t)n * in) < 1e-5, "dx error %g", rel_err(dx, gx, (size_t)n * in));
	CHECK(rel_err(da, ga, (size_t)r * in) < 1e-5, "dA error %g", rel_err(da, ga, (size_t)r * in));
	CHECK(rel_err(db, gb, (size_t)out * r) < 1e-5, "dB error %g", rel_err(db, gb, (size_t)out * r));
	/* The gradients are added: a second call doubles them. */
	CHECK_INT(be->iface->lora_backward(be, NULL, da, db, dy, x, n, in, out, r, a, in, b, r, scale,
					    tmp, &err), 0);
	for (size_t i = 0; i < (size_t)r * in; i++)
		ga[i] *= 2;
	CHECK(rel_err(da, ga, (size_t)r * in) < 1e-5, "accumulated dA error %g",
	      rel_err(da, ga, (size_t)r * in));
	free(x), free(a), free(b), free(dy), free(dx), free(da), free(db), free(tmp);
	free(c.x), free(c.a), free(c.b), free(gx), free(ga), free(gb);
}

/* ---- RMSNorm, RoPE, SwiGLU, embedding ------------------------------------------ */

typedef struct norm_ctx {
	double *x, *w;
	const float *dy;
	int rows, dim;
	double eps;
} norm_ctx;

static double norm_loss(void *p)
{
	norm_ctx *c = p;
	double l = 0;
	for (int i = 0; i < c->rows; i++) {
		const double *x = c->x + (size_t)i * c->dim;
		double ss = 0;
		for (int j = 0; j < c->dim; j++)
			ss += x[j] * x[j];
		double s = 1.0 / sqrt(ss / c->dim + c->eps);
		for (int j = 0; j < c->dim; j++)
			l += c->dy[(size_t)i * c->dim + j] * x[j] * s * c->w[j];
	}
	return l;
}

static void rmsnorm_backward_matches(void)
{
	const int rows = 4, dim = 32;
	float *x = rand_vec((size_t)rows * dim, 2), *w = rand_vec(dim, 1), *dy = rand_vec((size_t)rows * dim, 1);
	float *dx = calloc((size_t)rows * dim, sizeof *dx), *dw = calloc(dim, sizeof *dw);
	norm_ctx c = {widen(x, (size_t)rows * dim), widen(w, dim), dy, rows, dim, 1e-5};
	double *gx = malloc((size_t)rows * dim * sizeof *gx), *gw = malloc(dim * sizeof *gw);
	numeric_grad(gx, c.x, (size_t)rows * dim, norm_loss, &c);
	numeric_grad(gw, c.w, dim, norm_loss, &c);
	owl_err err = {0};
	CHECK_INT(be->iface->rmsnorm_backward(be, dx, dw, dy, x, w, rows, dim, 1e-5f, &err), 0);
	CHECK(rel_err(dx, gx, (size_t)rows * dim) < 1e-4, "dx error %g", rel_err(dx, gx, (size_t)rows * dim));
	CHECK(rel_err(dw, gw, dim) < 1e-4, "dweight error %g", rel_err(dw, gw, dim));
	free(x), free(w), free(dy), free(dx), free(dw), free(c.x), free(c.w), free(gx), free(gw);
}

typedef struct rope_ctx {
	double *x;
	const float *dy, *inv_freq;
	const int32_t *pos;
	int n, heads, hd, adjacent;
} rope_ctx;

static double rope_loss(void *p)
{
	rope_ctx *c = p;
	double l = 0;
	int half = c->hd / 2;
	for (int t = 0; t < c->n; t++)
		for (int h = 0; h < c->heads; h++)
			for (int i = 0; i < half; i++) {
				double a = (double)(float)((float)c->pos[t] * c->inv_freq[i]);
				double co = cos(a), si = sin(a);
				size_t base = ((size_t)t * c->heads + h) * c->hd;
				int i0 = c->adjacent ? 2 * i : i, i1 = c->adjacent ? 2 * i + 1 : i + half;
				double x0 = c->x[base + i0], x1 = c->x[base + i1];
				l += c->dy[base + i0] * (x0 * co - x1 * si) + c->dy[base + i1] * (x0 * si + x1 * co);
			}
	return l;
}

static void rope_backward_matches(void)
{
	const int n = 5, heads = 3, hd = 8;
	int32_t pos[5] = {0, 1, 7, 2, 300};
	float inv_freq[4];
	for (int i = 0; i < hd / 2; i++)
		inv_freq[i] = 1.0f / powf(10000.0f, (float)(2 * i) / hd);
	for (int adjacent = 0; adjacent < 2; adjacent++) {
		size_t cnt = (size_t)n * heads * hd;
		float *x = rand_vec(cnt, 1), *dy = rand_vec(cnt, 1), *dx = malloc(cnt * sizeof *dx);
		rope_ctx c = {widen(x, cnt), dy, inv_freq, pos, n, heads, hd, adjacent};
		double *g = malloc(cnt * sizeof *g);
		numeric_grad(g, c.x, cnt, rope_loss, &c);
		memcpy(dx, dy, cnt * sizeof *dx);
		owl_err err = {0};
		CHECK_INT(be->iface->rope_backward(be, dx, n, pos, heads, hd, inv_freq,
						    adjacent ? KERNELS_ROPE_ADJACENT : KERNELS_ROPE_HALF, &err), 0);
		CHECK(rel_err(dx, g, cnt) < 1e-5, "layout %d: dx error %g", adjacent, rel_err(dx, g, cnt));
		free(x), free(dy), free(dx), free(c.x), free(g);
	}
}

typedef struct swiglu_ctx {
	double *g, *u;
	const float *dy;
	size_t n;
} swiglu_ctx;

static double swiglu_loss(void *p)
{
	swiglu_ctx *c = p;
	double l = 0;
	for (size_t i = 0; i < c->n; i++)
		l += c->dy[i] * c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
	return l;
}

static void swiglu_backward_matches(void)
{
	const size_t n = 40;
	float *g = rand_vec(n, 4), *u = rand_vec(n, 2), *dy = rand_vec(n, 1);
	float *dg = malloc(n * sizeof *dg), *du = malloc(n * sizeof *du);
	swiglu_ctx c = {widen(g, n), widen(u, n), dy, n};
	double *gg = malloc(n * sizeof *gg), *gu = malloc(n * sizeof *gu);
	numeric_grad(gg, c.g, n, swiglu_loss, &c);
	numeric_grad(gu, c.u, n, swiglu_loss, &c);
	owl_err err = {0};
	CHECK_INT(be->iface->swiglu_backward(be, dg, du, dy, g, u, n, &err), 0);
	CHECK(rel_err(dg, gg, n) < 1e-5, "dgate error %g", rel_err(dg, gg, n));
	CHECK(rel_err(du, gu, n) < 1e-5, "dup error %g", rel_err(du, gu, n));
	free(g), free(u), free(dy), free(dg), free(du), free(c.g), free(c.u), free(gg), free(gu);
}

static void embedding_backward_adds_rows(void)
{
	const int vocab = 6, dim = 5, n = 4;
	int32_t ids[4] = {2, 5, 2, 0};
	float *dy = rand_vec((size_t)n * dim, 1), *dt = calloc((size_t)vocab * dim, sizeof *dt);
	double *want = calloc((size_t)vocab * dim, sizeof *want);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < dim; j++)
			want[(size_t)ids[i] * dim + j] += dy[(size_t)i * dim + j];
	owl_err err = {0};
	CHECK_INT(be->iface->embedding_backward(be, dt, dy, ids, n, dim, &err), 0);
	CHECK(rel_err(dt, want, (size_t)vocab * dim) < 1e-6, "dtable error %g",
	      rel_err(dt, want, (size_t)vocab * dim));
	free(dy), free(dt), free(want);
}

/* ---- cross-entropy ---------------------------------------------------------------- */

typedef struct ce_ctx {
	double *logits;
	const int32_t *targets;
	int rows, vocab;
} ce_ctx;

static double ce_loss(void *p)
{
	ce_ctx *c = p;
	double l = 0;
	for (int r = 0; r < c->rows; r++) {
		if (c->targets[r] < 0)
			continue;
		const double *x = c->logits + (size_t)r * c->vocab;
		double mx = x[0], s = 0;
		for (int v = 1; v < c->vocab; v++)
			mx = fmax(mx, x[v]);
		for (int v = 0; v < c->vocab; v++)
			s += exp(x[v] - mx);
		l += log(s) + mx - x[c->targets[r]];
	}
	return l;
}

static void cross_entropy_backward_matches(void)
{
	const int rows = 5, vocab = 37;
	int32_t targets[5] = {3, -1, 36, 0, -1};
	float *logits = rand_vec((size_t)rows * vocab, 4), *d = malloc((size_t)rows * vocab * sizeof *d);
	ce_ctx c = {widen(logits, (size_t)rows * vocab), targets, rows, vocab};
	double want = ce_loss(&c), *g = malloc((size_t)rows * vocab * sizeof *g);
	numeric_grad(g, c.logits, (size_t)rows * vocab, ce_loss, &c);
	double loss;
	int64_t count;
	owl_err err = {0};
	CHECK_INT(be->iface->cross_entropy_backward(be, d, logits, targets, rows, vocab, 1.0f, &loss,
						     &count, &err), 0);
	CHECK_INT(count, 3);
	CHECK_NEAR(loss, want, 1e-5 * fabs(want));
	CHECK(rel_err(d, g, (size_t)rows * vocab) < 1e-5, "dlogits error %g",
	      rel_err(d, g, (size_t)rows * vocab));
	for (int v = 0; v < vocab; v++)
		CHECK(d[vocab + v] == 0 && d[4 * vocab + v] == 0, "ignored rows have no gradient");
	/* In place and scaled. */
	for (size_t i = 0; i < (size_t)rows * vocab; i++)
		g[i] *= 0.25;
	CHECK_INT(be->iface->cross_entropy_backward(be, logits, logits, targets, rows, vocab, 0.25f,
						     &loss, &count, &err), 0);
	CHECK(rel_err(logits, g, (size_t)rows * vocab) < 1e-5, "in place, scaled: error %g",
	      rel_err(logits, g, (size_t)rows * vocab));
	int32_t bad[1] = {vocab};
	CHECK_INT(be->iface->cross_entropy_backward(be, d, d, bad, 1, vocab, 1.0f, &loss, &count, &err),
		  OWL_EUSAGE);
	free(logits), free(d), free(c.logits), free(g);
}

/* ---- attention over packed segments --------------------------------------------- */

typedef struct att_ctx {
	double *q, *k, *v;
	const float *dy;
	const kernels_attn_seg *segs;
	int nseg, heads, kvh, hd, window;
	double *out; /* [n][heads][hd], when not NULL */
} att_ctx;

static double att_loss(void *p)
{
	att_ctx *c = p;
	int qs = c->heads * c->hd, ks = c->kvh * c->hd, group = c->heads / c->kvh;
	double l = 0, sc[256];
	for (int s = 0; s < c->nseg; s++)
		for (int h = 0; h < c->heads; h++)
			for (int i = 0; i < c->segs[s].ntok; i++) {
				int ti = c->segs[s].tok0 + i, lo = c->window && i - c->window + 1 > 0 ? i - c->window + 1 : 0;
				const double *qi = c->q + (size_t)ti * qs + h * c->hd;
				double mx = -INFINITY, sum = 0;
				for (int j = lo; j <= i; j++) {
					const double *kj = c->k + (size_t)(c->segs[s].tok0 + j) * ks + (h / group) * c->hd;
					double d = 0;
					for (int e = 0; e < c->hd; e++)
						d += qi[e] * kj[e];
					sc[j] = d / sqrt((double)c->hd);
					mx = fmax(mx, sc[j]);
				}
				for (int j = lo; j <= i; j++)
					sum += (sc[j] = exp(sc[j] - mx));
				for (int e = 0; e < c->hd; e++) {
					double o = 0;
					for (int j = lo; j <= i; j++)
						o += sc[j] / sum * c->v[(size_t)(c->segs[s].tok0 + j) * ks + (h / group) * c->hd + e];
					if (c->out)
						c->out[(size_t)ti * qs + h * c->hd + e] = o;
					l += c->dy[(size_t)ti * qs + h * c->hd + e] * o;
				}
			}
	return l;
}

static void attention_packed_matches(void)
{
	/* three samples, the middle one longer than a band of 64 query rows;
	 * rows 0..1 belong to no segment */
	const kernels_attn_seg segs[3] = {{.tok0 = 2, .ntok = 5}, {.tok0 = 7, .ntok = 70},
					  {.tok0 = 77, .ntok = 3}};
	const int n = 80, heads = 4, kvh = 2, hd = 8;
	for (int window = 0; window <= 6; window += 6) {
		size_t nq = (size_t)n * heads * hd, nk = (size_t)n * kvh * hd;
		float *q = rand_vec(nq, 1), *k = rand_vec(nk, 1), *v = rand_vec(nk, 1), *dy = rand_vec(nq, 1);
		float *out = calloc(nq, sizeof *out), *dq = calloc(nq, sizeof *dq);
		float *dk = malloc(nk * sizeof *dk), *dv = malloc(nk * sizeof *dv);
		att_ctx c = {widen(q, nq), widen(k, nk), widen(v, nk), dy, segs, 3, heads, kvh, hd, window,
			     calloc(nq, sizeof(double))};
		att_loss(&c);
		size_t sn = kernels_attention_packed_scratch(n, 70, heads * hd, omp_get_max_threads());
		kernels_scratch s = {malloc(sn * sizeof(float)), sn};
		owl_err err = {0};
		CHECK_INT(be->iface->attention_packed(be, out, q, k, v, segs, 3, heads, kvh, hd, window, &s,
						       &err), 0);
		CHECK(rel_err(out, c.out, nq) < 1e-5, "window %d: forward error %g", window,
		      rel_err(out, c.out, nq));
		free(c.out);
		c.out = NULL;
		double *gq = malloc(nq * sizeof *gq), *gk = malloc(nk * sizeof *gk), *gv = malloc(nk * sizeof *gv);
		numeric_grad(gq, c.q, nq, att_loss, &c);
		numeric_grad(gk, c.k, nk, att_loss, &c);
		numeric_grad(gv, c.v, nk, att_loss, &c);
		CHECK(max_abs(gk, nk) > 0.1, "the check is not vacuous");
		CHECK_INT(be->iface->attention_backward(be, dq, dk, dv, dy, q, k, v, segs, 3, heads, kvh, hd,
							 window, &s, &err), 0);
		CHECK(rel_err(dq, gq, nq) < 1e-4, "window %d: dq error %g", window, rel_err(dq, gq, nq));
		CHECK(rel_err(dk, gk, nk) < 1e-4, "window %d: dk error %g", window, rel_err(dk, gk, nk));
		CHECK(rel_err(dv, gv, nk) < 1e-4, "window %d: dv error %g", window, rel_err(dv, gv, nk));
		/* scratch too small is an error, not an overrun */
		kernels_scratch small = {s.data, 16};
		CHECK_INT(be->iface->attention_backward(be, dq, dk, dv, dy, q, k, v, segs, 3, heads, kvh, hd,
							 window, &small, &err), OWL_EFAIL);
		free(q), free(k), free(v), free(dy), free(out), free(dq), free(dk), free(dv), free(s.data);
		free(c.q), free(c.k), free(c.v), free(gq), free(gk), free(gv);
	}
}

/* ---- AdamW ------------------------------------------------------------------------- */

static void adamw_matches_torch_formula(void)
{
	const size_t n = 9;
	float *p = rand_vec(n, 1), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
	double *pd = widen(p, n), *md = calloc(n, sizeof *md), *vd = calloc(n, sizeof *vd);
	const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
	owl_err err = {0};
	for (int step = 1; step <= 5; step++) {
		float *g = rand_vec(n, 1);
		CHECK_INT(be->iface->adamw_step(be, p, g, m, v, n, (float)lr, (float)b1, (float)b2,
						 (float)eps, (float)wd, step, &err), 0);
		for (size_t i = 0; i < n; i++) {
			pd[i] *= 1 - lr * wd;
			md[i] = b1 * md[i] + (1 - b1) * g[i];
			vd[i] = b2 * vd[i] + (1 - b2) * g[i] * g[i];
			double mh = md[i] / (1 - pow(b1, step)), vh = vd[i] / (1 - pow(b2, step));
			pd[i] -= lr * mh / (sqrt(vh) + eps);
		}
		free(g);
	}
	CHECK(rel_err(p, pd, n) < 1e-5, "AdamW after 5 steps: error %g", rel_err(p, pd, n));
	CHECK_INT(be->iface->adamw_step(be, p, p, m, v, n, 0.1f, 0.9f, 0.99f, 1e-8f, 0, 0, &err), OWL_EUSAGE);
	free(p), free(m), free(v), free(pd), free(md), free(vd);
}

int main(void)
{
	owl_err err = {0};
	if (kernels_cpu_backend_new(0, &be, &err)) {
		printf("FAIL cpu_backend: %s\n", err.msg);
		return 1;
	}
	RUN_TEST(matmul_backward_every_type);
	RUN_TEST(lora_backward_matches);
	RUN_TEST(rmsnorm_backward_matches);
	RUN_TEST(rope_backward_matches);
	RUN_TEST(swiglu_backward_matches);
	RUN_TEST(embedding_backward_adds_rows);
	RUN_TEST(cross_entropy_backward_matches);
	RUN_TEST(attention_packed_matches);
	RUN_TEST(adamw_matches_torch_formula);
	kernels_backend_free(be);
	return test_total_failed ? 1 : 0;
}
