/* Every op of the kernel layer against a plain double-precision reference,
 * for every backend this build can run (the CPU backend here; the CUDA
 * backend joins the list when it implements the table), so that backends are
 * held to the same tests. */
#include "test.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include "common/gguf.h"
#include "engine/kernels/cpu/cpu.h"
#include "engine/kernels/kernels.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t to_f16(float f)
{
	/* round to nearest via the hardware-free path: good enough for test data */
	uint32_t b;
	memcpy(&b, &f, 4);
	uint32_t sign = (b >> 16) & 0x8000;
	int exp = (int)((b >> 23) & 0xff) - 127 + 15;
	uint32_t mant = b & 0x7fffff;
	if (exp <= 0)
		return (uint16_t)sign;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	uint32_t h = sign | ((uint32_t)exp << 10) | (mant >> 13);
	if (mant & 0x1000)
		h++;
	return (uint16_t)h;
}

/* Builds rows x cols weights of a type, and their exact f32 values. */
/* The backends this build can run; each passes the same tests. */
static kernels_backend *backends[2];

static void make_weight(kernels_dtype t, int rows, int cols, uint8_t **data, float **ref,
			kernels_weight *w)
{
	size_t rb = 0;
	switch (t) {
	case KERNELS_F32: rb = (size_t)cols * 4; break;
	case KERNELS_F16: case KERNELS_BF16: rb = (size_t)cols * 2; break;
	case KERNELS_Q8_0: rb = (size_t)cols / 32 * 34; break;
	case KERNELS_Q4_0: rb = (size_t)cols / 32 * 18; break;
	case KERNELS_Q4_1: rb = (size_t)cols / 32 * 20; break;
	case KERNELS_Q4_K: rb = (size_t)cols / 256 * 144; break;
	case KERNELS_Q6_K: rb = (size_t)cols / 256 * 210; break;
	}
	*data = calloc((size_t)rows, rb);
	*ref = malloc((size_t)rows * cols * sizeof **ref);
	for (int r = 0; r < rows; r++) {
		uint8_t *p = *data + (size_t)r * rb;
		if (t == KERNELS_Q4_K || t == KERNELS_Q6_K) {
			/* Any packed bits are valid codes (scales, mins, 4/6-bit q):
			 * random bytes with finite super-block scales cover them all. */
			for (size_t i = 0; i < rb; i++)
				p[i] = (uint8_t)(frand() * 1000);
			for (size_t sb = 0; sb < rb; sb += t == KERNELS_Q4_K ? 144 : 210) {
				uint16_t d = to_f16(t == KERNELS_Q4_K ? 0.003f : 0.0005f), dm = to_f16(0.002f);
				memcpy(p + sb + (t == KERNELS_Q4_K ? 0 : 208), &d, 2);
				if (t == KERNELS_Q4_K)
					memcpy(p + sb + 2, &dm, 2);
			}
			gguf_dequantize_row(t == KERNELS_Q4_K ? GGUF_T_Q4_K : GGUF_T_Q6_K, p,
					    *ref + (size_t)r * cols, (size_t)cols, NULL);
			continue;
		}
		for (int c = 0; c < cols; c++) {
			float v = frand();
			if (t == KERNELS_F32) {
				memcpy(p + 4 * c, &v, 4);
			} else if (t == KERNELS_F16) {
				uint16_t h = to_f16(v);
				memcpy(p + 2 * c, &h, 2);
			} else if (t == KERNELS_BF16) {
				uint32_t b;
				memcpy(&b, &v, 4);
				uint16_t h = (uint16_t)(b >> 16);
				memcpy(p + 2 * c, &h, 2);
			} else {
				int blk = c / 32, i = c % 32;
				size_t bb = t == KERNELS_Q8_0 ? 34 : t == KERNELS_Q4_0 ? 18 : 20;
				uint8_t *q = p + blk * bb;
				uint16_t d = to_f16(t == KERNELS_Q8_0 ? 0.01f : 0.1f), m = to_f16(-0.5f);
				memcpy(q, &d, 2);
				if (t == KERNELS_Q4_1)
					memcpy(q + 2, &m, 2);
				/* The whole code range: -127..127, nibbles 0..15. */
				int8_t val = (int8_t)((int)(frand() * 1000) % (t == KERNELS_Q8_0 ? 128 : 16));
				if (t == KERNELS_Q8_0) {
					q[2 + i] = (uint8_t)val;
				} else {
					uint8_t nib = (uint8_t)((val < 0 ? -val : val) & 0xF);
					uint8_t *qs = q + (t == KERNELS_Q4_0 ? 2 : 4);
					if (i < 16)
						qs[i] = (uint8_t)((qs[i] & 0xF0) | nib);
					else
						qs[i - 16] = (uint8_t)((qs[i - 16] & 0x0F) | (nib << 4));
				}
			}
		}
		gguf_type gt = t == KERNELS_F32 ? GGUF_T_F32 : t == KERNELS_F16 ? GGUF_T_F16
			     : t == KERNELS_BF16 ? GGUF_T_BF16 : t == KERNELS_Q8_0 ? GGUF_T_Q8_0
			     : t == KERNELS_Q4_0 ? GGUF_T_Q4_0 : GGUF_T_Q4_1;
		gguf_dequantize_row(gt, p, *ref + (size_t)r * cols, (size_t)cols, NULL);
	}
	*w = (kernels_weight){.type = t, .data = *data, .rows = rows, .cols = cols, .row_bytes = rb};
}

static double max_rel_err(const float *a, const double *b, size_t n)
{
	double worst = 0, scale = 1e-6;
	for (size_t i = 0; i < n; i++)
		scale = fmax(scale, fabs(b[i]));
	for (size_t i = 0; i < n; i++)
		worst = fmax(worst, fabs(a[i] - b[i]) / scale);
	return worst;
}

/* Every dtype, through matmul (prompt processing) and matvec (decode).
 * Quantised types multiply Q8 activations on both paths, so they are held to
 * the Q8 rounding tolerance against the exact product, and to each other
 * closely. Shapes: rows not a multiple of the 4-row tiles, token counts
 * below and above the 128-token chunks, and an odd number of 32-column
 * blocks (the integer GEMM takes blocks in pairs). */
static void matmul_and_matvec_every_dtype(kernels_backend *be)
{
	static const kernels_dtype types[] = {KERNELS_F32, KERNELS_F16, KERNELS_BF16,
					      KERNELS_Q8_0, KERNELS_Q4_0, KERNELS_Q4_1,
					      KERNELS_Q4_K, KERNELS_Q6_K};
	static const int shapes[][3] = {{96, 256, 5}, {98, 256, 131}, {7, 96, 6}, {5, 64, 3},
					{9, 512, 4}};
	owl_err err = {0};
	for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
		const int rows = shapes[si][0], cols = shapes[si][1], n = shapes[si][2];
		const int quant = types[ti] >= KERNELS_Q8_0;
		if ((types[ti] == KERNELS_Q4_K || types[ti] == KERNELS_Q6_K) && cols % 256)
			continue; /* super-blocks of 256 */
		uint8_t *data;
		float *ref;
		kernels_weight w;
		make_weight(types[ti], rows, cols, &data, &ref, &w);
		float *x = malloc((size_t)n * cols * sizeof *x), *y = malloc((size_t)n * rows * sizeof *y);
		float *y1 = malloc((size_t)rows * sizeof *y1);
		double *want = malloc((size_t)n * rows * sizeof *want);
		for (int i = 0; i < n * cols; i++)
			x[i] = frand();
		for (int i = 0; i < n; i++)
			for (int r = 0; r < rows; r++) {
				double s = 0;
				for (int c = 0; c < cols; c++)
					s += (double)ref[(size_t)r * cols + c] * x[(size_t)i * cols + c];
				want[(size_t)i * rows + r] = s;
			}
		CHECK_INT(be->iface->matmul(be, y, x, &w, n, &err), 0);
		double tol = quant ? 2e-2 : 1e-5;
		for (int i = 0; i < n; i++) {
			double e = max_rel_err(y + (size_t)i * rows, want + (size_t)i * rows, (size_t)rows);
			CHECK(e < tol, "%s matmul type %d %dx%d n=%d token %d: relative error %g", be->iface->name,
			      (int)types[ti], rows, cols, n, i, e);
		}
		/* One token at a time: the decode path. */
		const kernels_weight *ws[1] = {&w};
		float *ys[1] = {y1};
		for (int i = 0; i < n; i += n > 8 ? 13 : 1) {
			CHECK_INT(be->iface->matvec_multi(be, ys, ws, 1, x + (size_t)i * cols, &err), 0);
			double e = max_rel_err(y1, want + (size_t)i * rows, (size_t)rows), ed = 0;
			CHECK(e < tol, "%s matvec type %d relative error %g (tolerance %g)", be->iface->name,
			      (int)types[ti], e, tol);
			for (int r = 0; r < rows; r++)
				ed = fmax(ed, fabs((double)y1[r] - y[(size_t)i * rows + r]));
			double scale = 0;
			for (int r = 0; r < rows; r++)
				scale = fmax(scale, fabs(want[(size_t)i * rows + r]));
			/* Where the integer GEMM ran (not on the f32 path that
			 * machines without AVX-512 VNNI take), both paths
			 * round the activations the same way. */
			int same_rounding = quant && qgemm_supported(&w, n);
			CHECK(ed <= 1e-3 * scale || !same_rounding, "%s type %d %dx%d token %d: matmul "
			      "and matvec differ by %g (scale %g)", be->iface->name, (int)types[ti], rows, cols, i,
			      ed, scale);
		}
		free(data);
		free(ref);
		free(x);
		free(y);
		free(y1);
		free(want);
	}
}

/* Q8_0/Q4_0/Q4_1/f16/bf16/f32 repacked into 16-row groups (the layout the model
 * loader uses on CPUs with AVX-512) give what the file's layout gives: the
 * same rounding of the activations, so agreement to float summation order,
 * and the exact product (within Q8 rounding for the integer types). Shapes: several groups, an odd
 * block count, token counts around the 8-token tiles and the 128-token
 * chunks; and q/k/v-like matrices of different heights sharing one decode
 * pass, whose groups the threads split across matrix boundaries. */
static void repacked_match_file_layout(kernels_backend *be)
{
	static const kernels_dtype types[] = {KERNELS_Q8_0, KERNELS_Q4_0, KERNELS_Q4_1, KERNELS_F16,
					      KERNELS_BF16, KERNELS_F32};
	static const int shapes[][3] = {{96, 256, 5}, {48, 96, 131}, {16, 64, 9}, {32, 160, 17}};
	owl_err err = {0};
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
	for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
		const int rows = shapes[si][0], cols = shapes[si][1], n = shapes[si][2];
		const int quant = types[ti] == KERNELS_Q8_0 || types[ti] == KERNELS_Q4_0 ||
				  types[ti] == KERNELS_Q4_1;
		kernels_weight probe = {.type = types[ti], .rows = 16, .cols = 32,
					.row_bytes = types[ti] == KERNELS_Q8_0 ? 34 : types[ti] == KERNELS_Q4_0 ? 18
						   : types[ti] == KERNELS_Q4_1 ? 20 : types[ti] == KERNELS_F32 ? 128 : 64};
		if (!w_repack_supported(&probe))
			continue; /* this CPU (or OWL_NO_QGEMM / OWL_NO_AVX512) repacks nothing of it */
		uint8_t *data, *packed;
		float *ref;
		kernels_weight w, r;
		make_weight(types[ti], rows, cols, &data, &ref, &w);
		CHECK(w_repack_supported(&w), "type %d %dx%d can be repacked", (int)types[ti], rows, cols);
		CHECK_INT(w_repack(&w, 0, &r, &packed, &err), 0);
		float *x = malloc((size_t)n * cols * sizeof *x);
		float *y0 = malloc((size_t)n * rows * sizeof *y0), *y1 = malloc((size_t)n * rows * sizeof *y1);
		for (int i = 0; i < n * cols; i++)
			x[i] = frand();
		CHECK_INT(be->iface->matmul(be, y0, x, &w, n, &err), 0);
		CHECK_INT(be->iface->matmul(be, y1, x, &r, n, &err), 0);
		double worst = 0, scale = 1e-6;
		for (int i = 0; i < n * rows; i++) {
			worst = fmax(worst, fabs((double)y0[i] - y1[i]));
			scale = fmax(scale, fabs((double)y0[i]));
		}
		CHECK(worst <= 1e-5 * scale, "type %d %dx%d n=%d: repacked matmul differs by %g "
		      "(scale %g)", (int)types[ti], rows, cols, n, worst, scale);
		double tol = quant ? 2e-2 : 1e-5;
		for (int i = 0; i < n; i++) {
			double e = 0, sc = 1e-6;
			for (int rr = 0; rr < rows; rr++) {
				double want = 0;
				for (int c = 0; c < cols; c++)
					want += (double)ref[(size_t)rr * cols + c] * x[(size_t)i * cols + c];
				e = fmax(e, fabs(y1[(size_t)i * rows + rr] - want));
				sc = fmax(sc, fabs(want));
			}
			CHECK(e <= tol * sc, "type %d token %d: repacked matmul off the exact product "
			      "by %g (scale %g)", (int)types[ti], i, e, sc);
		}
		/* Prompt and decode kernels of the groups round x alike: each
		 * token decoded alone gives its row of the prompt's product. */
		for (int i = 0; i < n; i += n > 20 ? 13 : 1) {
			float *yd = malloc((size_t)rows * sizeof *yd);
			const kernels_weight *one[1] = {&r};
			float *yo[1] = {yd};
			CHECK_INT(be->iface->matvec_multi(be, yo, one, 1, x + (size_t)i * cols, &err), 0);
			double dd = 0, sd = 1e-6;
			for (int rr = 0; rr < rows; rr++) {
				dd = fmax(dd, fabs((double)yd[rr] - y1[(size_t)i * rows + rr]));
				sd = fmax(sd, fabs((double)y1[(size_t)i * rows + rr]));
			}
			CHECK(dd <= 1e-5 * sd, "type %d %dx%d token %d of %d: repacked decode differs from "
			      "the repacked prompt by %g (scale %g)", (int)types[ti], rows, cols, i, n, dd, sd);
			free(yd);
		}
		/* Decode: one token through three matrices at once. */
		uint8_t *d2, *d3, *p2, *p3;
		float *r2, *r3;
		kernels_weight w2, w3, k2, k3;
		make_weight(types[ti], 16, cols, &d2, &r2, &w2);
		make_weight(types[ti], 32, cols, &d3, &r3, &w3);
		CHECK_INT(w_repack(&w2, 0, &k2, &p2, &err), 0);
		CHECK_INT(w_repack(&w3, 0, &k3, &p3, &err), 0);
		float *a0 = malloc((size_t)rows * sizeof *a0), *a1 = malloc((size_t)rows * sizeof *a1);
		float b0[32], b1[32], c0[32], c1[32];
		const kernels_weight *plain[3] = {&w, &w2, &w3}, *pk[3] = {&r, &k2, &k3};
		float *ys0[3] = {a0, b0, c0}, *ys1[3] = {a1, b1, c1};
		CHECK_INT(be->iface->matvec_multi(be, ys0, plain, 3, x, &err), 0);
		CHECK_INT(be->iface->matvec_multi(be, ys1, pk, 3, x, &err), 0);
		double dv = 0, sv = 1e-6;
		for (int i = 0; i < rows; i++) {
			dv = fmax(dv, fabs((double)a0[i] - a1[i]));
			sv = fmax(sv, fabs((double)a0[i]));
		}
		for (int i = 0; i < 16; i++) {
			dv = fmax(dv, fabs((double)b0[i] - b1[i]));
			sv = fmax(sv, fabs((double)b0[i]));
		}
		for (int i = 0; i < 32; i++) {
			dv = fmax(dv, fabs((double)c0[i] - c1[i]));
			sv = fmax(sv, fabs((double)c0[i]));
		}
		CHECK(dv <= (quant ? 2e-3 : 1e-5) * sv, "type %d %dx%d: repacked decode differs by %g (scale %g)",
		      (int)types[ti], rows, cols, dv, sv);
		/* Embedding lookups read rows back out of the groups exactly. */
		int ids[3] = {0, rows / 2 + 1, rows - 1};
		float *e0 = malloc(3 * (size_t)cols * sizeof *e0), *e1 = malloc(3 * (size_t)cols * sizeof *e1);
		CHECK_INT(be->iface->embedding(be, e0, &w, ids, 3, &err), 0);
		CHECK_INT(be->iface->embedding(be, e1, &r, ids, 3, &err), 0);
		CHECK(memcmp(e0, e1, 3 * (size_t)cols * sizeof *e0) == 0,
		      "type %d: rows read from the repacked groups differ", (int)types[ti]);
		free(e0), free(e1);
		free(a0), free(a1), free(d2), free(d3), free(p2), free(p3), free(r2), free(r3);
		free(data), free(packed), free(ref), free(x), free(y0), free(y1);
	}
}

/* The reference: query row qrow (at position p) of head h against keys
 * and values [position][kvd], in doubles. */
static double attention_ref_worst(const float *q, const float *k, const float *v, const float *out,
				  int t_q, int t_out, int p, int H, int KV, int HD, int window)
{
	int kvd = KV * HD;
	double worst = 0;
	for (int h = 0; h < H; h++) {
		int kvh = h / (H / KV), lo = window ? (p - window + 1 > 0 ? p - window + 1 : 0) : 0;
		double sc[256], mx = -1e30, sum = 0;
		for (int j = lo; j <= p; j++) {
			double d = 0;
			for (int e = 0; e < HD; e++)
				d += (double)q[(t_q * H + h) * HD + e] * k[j * kvd + kvh * HD + e];
			sc[j] = d / sqrt(HD);
			mx = fmax(mx, sc[j]);
		}
		for (int j = lo; j <= p; j++)
			sum += (sc[j] = exp(sc[j] - mx));
		for (int e = 0; e < HD; e++) {
			double o = 0;
			for (int j = lo; j <= p; j++)
				o += sc[j] / sum * v[j * kvd + kvh * HD + e];
			worst = fmax(worst, fabs(o - out[(t_out * H + h) * HD + e]));
		}
	}
	return worst;
}

/* Attention over a paged cache whose blocks are out of order in the pool,
 * in f32 and f16: one prompt, a prompt continued after earlier tokens
 * (pos0 > 0, as chat turns do), one token at a time, and several
 * sequences' segments in one call, each against the reference. */
/* x rounded to Q8 blocks as the integer kernels round it: d = amax/127,
 * q = x*127/amax to nearest (ties to even), each value then d*q. */
static void q8_round(const float *x, int cols, double *out)
{
	for (int b = 0; b < cols / 32; b++) {
		float amax = 0;
		for (int i = 0; i < 32; i++)
			amax = fmaxf(amax, fabsf(x[32 * b + i]));
		float d = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
		for (int i = 0; i < 32; i++)
			out[32 * b + i] = (double)d * nearbyintf(x[32 * b + i] * inv);
	}
}

/* The integer kernels of the running path (OWL_CPU_PATH: tests/run.sh runs
 * this binary once per path the CPU has) against a scalar product of the
 * exact weights with the same Q8-rounded activations, for Q8_0, Q4_0 and
 * Q4_1 in the file's layout and repacked, prompts and decoding: equal to
 * float summation order, so a wrong offset, scale or lane shows. Shapes: odd
 * block counts, rows and tokens that leave partial tiles (2 or 4 rows, 4 or
 * 8 tokens, 16-row groups) and more than one 128-token chunk. */
static void integer_kernels_match_q8_reference(kernels_backend *be)
{
	static const kernels_dtype types[] = {KERNELS_Q8_0, KERNELS_Q4_0, KERNELS_Q4_1};
	static const int shapes[][3] = {{7, 96, 5}, {48, 160, 131}, {33, 32, 3}, {16, 224, 9},
					{32, 64, 2}};
	owl_err err = {0};
	kernels_weight probe = {.type = KERNELS_Q8_0, .rows = 16, .cols = 32, .row_bytes = 34};
	if (!qgemm_supported(&probe, 2))
		return; /* OWL_NO_QGEMM: quantised prompts take the exact f32 path */
	for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
	for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
		const int rows = shapes[si][0], cols = shapes[si][1], n = shapes[si][2];
		uint8_t *data, *packed = NULL;
		float *ref;
		kernels_weight w, r;
		make_weight(types[ti], rows, cols, &data, &ref, &w);
		float *x = malloc((size_t)n * cols * sizeof *x), *y = malloc((size_t)n * rows * sizeof *y);
		float *y1 = malloc((size_t)rows * sizeof *y1);
		double *xr = malloc((size_t)cols * sizeof *xr), *want = malloc((size_t)n * rows * sizeof *want);
		for (int i = 0; i < n * cols; i++)
			x[i] = frand() * (i % 7 == 0 ? 3.0f : 1.0f);
		for (int i = 0; i < n; i++) {
			q8_round(x + (size_t)i * cols, cols, xr);
			for (int rr = 0; rr < rows; rr++) {
				double sum = 0;
				for (int c = 0; c < cols; c++)
					sum += (double)ref[(size_t)rr * cols + c] * xr[c];
				want[(size_t)i * rows + rr] = sum;
			}
		}
		const int can_pack = w_repack_supported(&w);
		if (can_pack)
			CHECK_INT(w_repack(&w, 0, &r, &packed, &err), 0);
		for (int layout = 0; layout < 1 + can_pack; layout++) {
			const kernels_weight *wl = layout ? &r : &w;
			const char *lname = layout ? "repacked" : "file layout";
			CHECK_INT(be->iface->matmul(be, y, x, wl, n, &err), 0);
			for (int i = 0; i < n; i++) {
				double e = max_rel_err(y + (size_t)i * rows, want + (size_t)i * rows, (size_t)rows);
				CHECK(e < 1e-5, "%s %s type %d %dx%d n=%d token %d: prompt off the Q8 reference "
				      "by %g", cpu_path_name(cpu_path_get()), lname, (int)types[ti], rows, cols, n,
				      i, e);
			}
			/* Decoding: the groups round x as the prompt does; the file's
			 * layout rounds with 1/d for 127/amax, an ulp apart. */
			const kernels_weight *ws[1] = {wl};
			float *ys[1] = {y1};
			for (int i = 0; i < n; i += n > 8 ? 13 : 1) {
				CHECK_INT(be->iface->matvec_multi(be, ys, ws, 1, x + (size_t)i * cols, &err), 0);
				double e = max_rel_err(y1, want + (size_t)i * rows, (size_t)rows);
				CHECK(e < (layout ? 1e-5 : 2e-3), "%s %s type %d %dx%d token %d: decode off the "
				      "Q8 reference by %g", cpu_path_name(cpu_path_get()), lname, (int)types[ti],
				      rows, cols, i, e);
			}
		}
		CHECK(can_pack == (rows % 16 == 0), "type %d %dx%d: repacked %d", (int)types[ti], rows,
		      cols, can_pack);
		free(packed), free(data), free(ref), free(x), free(y), free(y1), free(xr), free(want);
	}
}

/* OWL_CPU_PATH, when set, is the path that runs (tests/run.sh relies on it
 * to test each one), and the unsupported or unknown one is refused at the
 * first product with what was asked and what this CPU runs. */
static void forced_path_runs_or_is_refused(void)
{
	const char *want = getenv("OWL_CPU_PATH");
	if (!want || !*want) {
		CHECK_INT(cpu_path_check(NULL), 0);
		return;
	}
	int known = 0, supported = 0;
	for (int p = 0; p < CPU_PATH_COUNT; p++)
		if (strcmp(want, cpu_path_name((cpu_path)p)) == 0) {
			known = 1;
			supported = cpu_path_supported((cpu_path)p);
		}
	owl_err err = {0};
	float x[32] = {1}, y[16];
	uint8_t *data;
	float *ref;
	kernels_weight w;
	make_weight(KERNELS_Q8_0, 16, 32, &data, &ref, &w);
	int rc = backends[0]->iface->matmul(backends[0], y, x, &w, 1, &err);
	if (known && supported) {
		CHECK_STR(cpu_path_name(cpu_path_get()), want);
		CHECK_INT(rc, 0);
	} else {
		CHECK_INT(rc, OWL_EUSAGE);
		CHECK(strstr(err.msg, want) && strstr(err.msg, "this CPU runs: "),
		      "refusal names the path and the supported ones: %s", err.msg);
	}
	free(data), free(ref);
}

static void attention_paged(kernels_backend *be)
{
	owl_err err = {0};
	enum { HD = 16, H = 4, KV = 2, T = 70, SPLIT = 30, BT = 8, NB = 12 };
	int kvd = KV * HD;
	static float q[T * H * HD], k[T * KV * HD], v[T * KV * HD], kr[T * KV * HD], vr[T * KV * HD];
	static float out[T * H * HD], out2[T * H * HD];
	for (int i = 0; i < T * H * HD; i++)
		q[i] = frand();
	for (int i = 0; i < T * KV * HD; i++) {
		k[i] = frand();
		v[i] = frand();
	}
	int32_t blocks[NB], slots[T];
	for (int i = 0; i < NB; i++)
		blocks[i] = (i * 5 + 3) % NB; /* 5 and 12 are coprime: a permutation */
	for (int j = 0; j < T; j++)
		slots[j] = blocks[j / BT] * BT + j % BT;
	size_t sn = kernels_attention_scratch(T, kvd, omp_get_max_threads());
	kernels_scratch scratch = {malloc(sn * sizeof(float)), sn};
	for (int type = 0; type < 2; type++) {
		size_t eb = type == KERNELS_KV_F16 ? 2 : 4, stride = (size_t)BT * kvd * eb;
		uint8_t *kp = calloc(NB, stride), *vp = calloc(NB, stride);
		kernels_kv_layer kv = {.type = (kernels_kv_type)type, .k = kp, .v = vp,
				       .block_stride = stride, .block_tokens = BT, .row_elems = kvd};
		CHECK_INT(be->iface->kv_store(be, &kv, k, v, slots, T, &err), 0);
		/* The reference reads what the cache holds: f16-rounded for f16. */
		for (int i = 0; i < T * kvd; i++) {
			kr[i] = type ? _cvtsh_ss(_cvtss_sh(k[i], _MM_FROUND_TO_NEAREST_INT)) : k[i];
			vr[i] = type ? _cvtsh_ss(_cvtss_sh(v[i], _MM_FROUND_TO_NEAREST_INT)) : v[i];
		}
		for (int window = 0; window <= 6; window += 6) {
			kernels_attn_seg all = {0, T, 0, blocks}, first = {0, SPLIT, 0, blocks};
			kernels_attn_seg rest = {0, T - SPLIT, SPLIT, blocks};
			CHECK_INT(be->iface->attention(be, out, q, &all, 1, &kv, H, 0, H / KV, 0, HD, window, &scratch,
						&err), 0);
			CHECK_INT(be->iface->attention(be, out2, q, &first, 1, &kv, H, 0, H / KV, 0, HD, window,
						&scratch, &err), 0);
			CHECK_INT(be->iface->attention(be, out2 + SPLIT * H * HD, q + SPLIT * H * HD, &rest, 1, &kv, H, 0,
						H / KV, 0, HD, window, &scratch, &err), 0);
			double worst = 0;
			for (int t = 0; t < T; t++) {
				float one[H * HD];
				kernels_attn_seg seg = {0, 1, t, blocks};
				CHECK_INT(be->iface->attention(be, one, q + t * H * HD, &seg, 1, &kv, H, 0, H / KV, 0, HD,
							window, &scratch, &err), 0);
				worst = fmax(worst, attention_ref_worst(q, kr, vr, out, t, t, t, H, KV, HD, window));
				worst = fmax(worst, attention_ref_worst(q, kr, vr, out2, t, t, t, H, KV, HD, window));
				worst = fmax(worst, attention_ref_worst(q + t * H * HD, kr, vr, one, 0, 0, t, H, KV,
									HD, window));
			}
			/* Segments of three sequences in one call: a 20-token prompt,
			 * one decoding token at 40, three tokens at 50. */
			static float qb[24 * H * HD], ob[24 * H * HD];
			memcpy(qb, q, 20 * H * HD * sizeof(float));
			memcpy(qb + 20 * H * HD, q + 40 * H * HD, H * HD * sizeof(float));
			memcpy(qb + 21 * H * HD, q + 50 * H * HD, 3 * H * HD * sizeof(float));
			kernels_attn_seg segs[3] = {{0, 20, 0, blocks}, {20, 1, 40, blocks}, {21, 3, 50, blocks}};
			CHECK_INT(be->iface->attention(be, ob, qb, segs, 3, &kv, H, 0, H / KV, 0, HD, window, &scratch,
						&err), 0);
			for (int t = 0; t < 20; t++)
				worst = fmax(worst, attention_ref_worst(q, kr, vr, ob, t, t, t, H, KV, HD, window));
			worst = fmax(worst, attention_ref_worst(q, kr, vr, ob, 40, 20, 40, H, KV, HD, window));
			for (int i = 0; i < 3; i++)
				worst = fmax(worst, attention_ref_worst(q, kr, vr, ob, 50 + i, 21 + i, 50 + i, H, KV,
									HD, window));
			CHECK(worst < 1e-5, "%s attention (%s cache, window %d) max error %g", be->iface->name,
			      type ? "f16" : "f32", window, worst);
		}
		/* Too little scratch is an error, not an overrun. */
		kernels_scratch small = {scratch.data, 16};
		kernels_attn_seg all = {0, T, 0, blocks};
		CHECK(be->iface->attention(be, out, q, &all, 1, &kv, H, 0, H / KV, 0, HD, 0, &small, &err) != 0,
		      "%s attention accepted too little scratch", be->iface->name);
		free(kp), free(vp);
	}
	free(scratch.data);
}

static void attention_rope_norm_swiglu(kernels_backend *be)
{
	owl_err err = {0};
	enum { HD = 16 };
	attention_paged(be);
	/* RoPE: both pair layouts rotate by pos * inv_freq. */
	float inv_freq[HD / 2];
	for (int i = 0; i < HD / 2; i++)
		inv_freq[i] = powf(10000.0f, -2.0f * i / HD);
	for (int layout = 0; layout < 2; layout++) {
		float x[2 * HD], x0[2 * HD];
		for (int i = 0; i < 2 * HD; i++)
			x0[i] = x[i] = frand();
		const int32_t pos[2] = {7, 8};
		CHECK_INT(be->iface->rope(be, x, 2, pos, 1, HD, inv_freq, (kernels_rope_layout)layout, &err), 0);
		double worst = 0;
		for (int t = 0; t < 2; t++)
			for (int i = 0; i < HD / 2; i++) {
				int a = layout ? 2 * i : i, b = layout ? 2 * i + 1 : i + HD / 2;
				double ang = (7 + t) * (double)inv_freq[i];
				double ra = x0[t * HD + a] * cos(ang) - x0[t * HD + b] * sin(ang);
				double rb = x0[t * HD + a] * sin(ang) + x0[t * HD + b] * cos(ang);
				worst = fmax(worst, fmax(fabs(ra - x[t * HD + a]), fabs(rb - x[t * HD + b])));
			}
		CHECK(worst < 1e-5, "%s rope layout %d error %g", be->iface->name, layout, worst);
	}
	/* RMSNorm, SwiGLU, cross-entropy. */
	float xs[64], g[64], o[64], up[64], gate[64];
	for (int i = 0; i < 64; i++) {
		xs[i] = frand();
		g[i] = frand();
		up[i] = frand();
		gate[i] = frand();
	}
	CHECK_INT(be->iface->rmsnorm(be, o, xs, g, 1, 64, 1e-5f, &err), 0);
	double ss = 0;
	for (int i = 0; i < 64; i++)
		ss += (double)xs[i] * xs[i];
	double worst = 0;
	for (int i = 0; i < 64; i++)
		worst = fmax(worst, fabs(o[i] - xs[i] / sqrt(ss / 64 + 1e-5) * g[i]));
	CHECK(worst < 1e-5, "%s rmsnorm error %g", be->iface->name, worst);
	/* The tails of the sigmoid too, where exp over- and underflows. */
	static const float big[8] = {-120, -60, -20, -5, 5, 20, 60, 120};
	memcpy(gate, big, sizeof big);
	float gate0[64];
	memcpy(gate0, gate, sizeof gate);
	CHECK_INT(be->iface->swiglu(be, gate, up, 64, &err), 0);
	worst = 0;
	for (int i = 0; i < 64; i++) {
		double want = gate0[i] / (1 + exp(-(double)gate0[i])) * up[i];
		worst = fmax(worst, fabs(gate[i] - want) / fmax(1.0, fabs(want)));
	}
	CHECK(worst < 1e-6, "%s swiglu error %g", be->iface->name, worst);
	float loss;
	int32_t tgt[2] = {3, 60};
	float logits[128];
	for (int i = 0; i < 128; i++)
		logits[i] = frand() * 4;
	CHECK_INT(be->iface->cross_entropy(be, &loss, logits, tgt, 2, 64, &err), 0);
	double want = 0;
	for (int r = 0; r < 2; r++) {
		double s = 0;
		for (int i = 0; i < 64; i++)
			s += exp(logits[r * 64 + i]);
		want += log(s) - logits[r * 64 + tgt[r]];
	}
	CHECK_NEAR(loss, want / 2, 1e-5);
}

/* The instance's own slots: ABI version, supports, synchronize, buffers
 * (heap and mapped), and the add op; the CPU comm's collectives. */
static void backend_instance(kernels_backend *be)
{
	owl_err err = {0};
	const kernels_backend_iface *f = be->iface;
	CHECK_INT(f->abi_version, KERNELS_ABI_VERSION);
	CHECK(f->supports(be, KERNELS_OP_MATMUL, KERNELS_Q4_K), "%s: no Q4_K matmul", f->name);
	CHECK(f->supports(be, KERNELS_OP_ATTENTION, KERNELS_KV_F16), "%s: no f16 KV", f->name);
	CHECK(!f->supports(be, KERNELS_OP_SWIGLU, KERNELS_Q8_0), "%s: swiglu on Q8_0?", f->name);
	CHECK(!f->supports(be, KERNELS_OP_COUNT, KERNELS_F32), "%s: supports a non-op", f->name);
	CHECK_INT(f->synchronize(be, &err), 0);
	for (size_t size = 100; size <= (8u << 20); size *= 1024) {
		kernels_buffer *b;
		void *p;
		CHECK_INT(kernels_alloc(be, size, &b, &p, &err), 0);
		float x[4] = {1, 2, 3, 4}, y[4];
		CHECK_INT(f->copy_to_device(be, b, size - sizeof x, x, sizeof x, &err), 0);
		CHECK_INT(f->copy_to_host(be, y, b, size - sizeof x, sizeof y, &err), 0);
		CHECK(memcmp(x, y, sizeof x) == 0, "%s: a %zu-byte buffer lost its data", f->name, size);
		CHECK(f->copy_to_device(be, b, size - 2, x, sizeof x, &err) != 0,
		      "%s: a copy past the end of the buffer was taken", f->name);
		f->buffer_free(be, b);
	}
	float y[19], x[19];
	for (int i = 0; i < 19; i++)
		y[i] = (float)i, x[i] = 0.5f;
	CHECK_INT(f->add(be, y, x, 19, &err), 0);
	CHECK_NEAR(y[18], 18.5, 0);
	/* Three ranks: all-reduce in place, all-gather, barrier. */
	kernels_comm c = *kernels_cpu_comm();
	c.size = c.local = 3;
	float b0[5], b1[5], b2[5], g0[15], g1[15], g2[15];
	for (int i = 0; i < 5; i++)
		b0[i] = (float)i, b1[i] = 10.0f * i, b2[i] = 100.0f * i;
	const float *in[3] = {b0, b1, b2};
	float *out[3] = {g0, g1, g2};
	CHECK_INT(c.all_gather(&c, out, in, 5, &err), 0);
	CHECK(g2[4] == 4 && g0[9] == 40 && g1[14] == 400, "all_gather put rows in the wrong place");
	float *bufs[3] = {b0, b1, b2};
	CHECK_INT(c.all_reduce(&c, bufs, 5, &err), 0);
	CHECK(b0[3] == 333 && b1[3] == 333 && b2[3] == 333, "all_reduce: %g %g %g", b0[3], b1[3], b2[3]);
	CHECK_INT(c.barrier(&c, &err), 0);
	/* ABI 4: copy and fill_zero within backend memory. */
	float *d;
	kernels_buffer *db;
	CHECK_INT(kernels_alloc(be, 8 * sizeof(float), &db, (void **)&d, &err), 0);
	float h[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8];
	CHECK_INT(f->copy_to_device(be, db, 0, h, 4 * sizeof(float), &err), 0);
	CHECK_INT(f->copy(be, d + 4, d, 4 * sizeof(float), &err), 0);
	CHECK_INT(f->fill_zero(be, d + 1, 2 * sizeof(float), &err), 0);
	CHECK_INT(f->copy_to_host(be, back, db, 0, sizeof back, &err), 0);
	CHECK(back[0] == 1 && back[1] == 0 && back[2] == 0 && back[3] == 4 && back[4] == 1 &&
	      back[7] == 4, "copy/fill_zero: %g %g %g %g %g %g", back[0], back[1], back[2], back[3],
	      back[4], back[7]);
	f->buffer_free(be, db);
}

/* Sampling (ABI 4): argmax with the lowest index on ties, the top_k and
 * top_p cuts, and draws whose frequencies follow the softmax. */
static void sampling(kernels_backend *be)
{
	owl_err err = {0};
	const kernels_backend_iface *f = be->iface;
	if (!f->sample)
		return;
	float l[3 * 8] = {0, 3, 1, 3, -1, 2, 0, 0, /* tie at 1 and 3 */
			  1, 1, 1, 1, 1, 1, 1, 1,
			  0, 0, 0, 0, 5, 0, 0, 4};
	kernels_sample_row p[3] = {{0, 1, 0, 0.5f}, {1, 1, 0, 0.99f}, {1, 1, 2, 0.0f}};
	int32_t out[3];
	CHECK_INT(f->sample(be, out, l, 3, 8, p, &err), 0);
	CHECK_INT(out[0], 1);
	CHECK_INT(out[1], 7); /* uniform: u = 0.99 falls in the last eighth */
	CHECK_INT(out[2], 4);
	/* top_k 2 of row 2 keeps 4 and 7: p(7) = 1 / (1 + e) */
	p[2].u = 0.99f;
	CHECK_INT(f->sample(be, out, l, 3, 8, p, &err), 0);
	CHECK_INT(out[2], 7);
	/* top_p 0.5 keeps only 4 */
	p[2].top_p = 0.5f;
	CHECK_INT(f->sample(be, out, l, 3, 8, p, &err), 0);
	CHECK_INT(out[2], 4);
	/* frequencies over u on a grid follow softmax(l / T) */
	float row[4] = {0, 1, 2, 3};
	int hits[4] = {0};
	for (int i = 0; i < 1000; i++) {
		kernels_sample_row q = {2.0f, 1, 0, (i + 0.5f) / 1000};
		int32_t t;
		CHECK_INT(f->sample(be, &t, row, 1, 4, &q, &err), 0);
		hits[t]++;
	}
	double z = 0;
	for (int i = 0; i < 4; i++)
		z += exp(row[i] / 2.0);
	for (int i = 0; i < 4; i++)
		CHECK_NEAR(hits[i] / 1000.0, exp(row[i] / 2.0) / z, 0.002);
}


static void matmul_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		matmul_and_matvec_every_dtype(backends[i]);
}

static void repacked_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		repacked_match_file_layout(backends[i]);
}

static void backend_instance_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		backend_instance(backends[i]);
}

static void sampling_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		sampling(backends[i]);
}

static void other_ops_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		attention_rope_norm_swiglu(backends[i]);
}

static void integer_every_backend(void)
{
	for (size_t i = 0; backends[i]; i++)
		integer_kernels_match_q8_reference(backends[i]);
}

int main(int argc, char **argv)
{
	/* --cpu-paths: the kernel paths this CPU runs, one per line (tests/run.sh). */
	if (argc > 1 && strcmp(argv[1], "--cpu-paths") == 0) {
		for (int p = CPU_PATH_COUNT - 1; p >= 0; p--)
			if (cpu_path_supported((cpu_path)p))
				printf("%s\n", cpu_path_name((cpu_path)p));
		return 0;
	}
	owl_err err = {0};
	if (kernels_cpu_backend_new(0, &backends[0], &err)) {
		printf("FAIL cpu_backend: %s\n", err.msg);
		return 1;
	}
	RUN_TEST(forced_path_runs_or_is_refused);
	if (cpu_path_check(NULL))
		TEST_MAIN_END(); /* a refused path runs no kernels */
	RUN_TEST(integer_every_backend);
	RUN_TEST(matmul_every_backend);
	RUN_TEST(backend_instance_every_backend);
	RUN_TEST(other_ops_every_backend);
	RUN_TEST(sampling_every_backend);
	RUN_TEST(repacked_every_backend);
	kernels_backend_free(backends[0]);
	TEST_MAIN_END();
}
