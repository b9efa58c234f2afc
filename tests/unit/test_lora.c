/* The kernel layer's LoRA op (y += scale * (x A^T) B^T) against a plain
 * double-precision loop, for every backend this build can run, including
 * the bands tensor-parallel ranks take (a column band of A, a row band of
 * B); and the GGUF row permutation of the role table. */
#include "test.h"

#include "engine/kernels/kernels.h"
#include "engine/lora.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *rand_vec(size_t n)
{
	float *v = malloc(n * sizeof *v);
	for (size_t i = 0; i < n; i++)
		v[i] = frand();
	return v;
}

/* y[i][o] += scale * sum_k B[o][k] * sum_j A[k][j] x[i][j], in doubles. */
static void naive(double *y, const float *x, int n, int in, int out, int r, const float *a,
		  int lda, const float *b, int ldb, float scale)
{
	for (int i = 0; i < n; i++)
		for (int o = 0; o < out; o++) {
			double s = 0;
			for (int k = 0; k < r; k++) {
				double ax = 0;
				for (int j = 0; j < in; j++)
					ax += (double)a[(size_t)k * lda + j] * x[(size_t)i * in + j];
				s += (double)b[(size_t)o * ldb + k] * ax;
			}
			y[(size_t)i * out + o] += scale * s;
		}
}

static kernels_backend *backends[] = {NULL};
static int nbackends(void)
{
	owl_err err = {0};
	if (!backends[0] && kernels_cpu_backend_new(0, &backends[0], &err)) {
		printf("FAIL cpu_backend: %s\n", err.msg);
		exit(1);
	}
	return 1;
}

static void lora_matches_naive_loop(void)
{
	static const int shapes[][4] = {{1, 64, 48, 4}, {7, 64, 96, 16}, {33, 128, 40, 1},
					{16, 96, 128, 8}, {65, 48, 64, 32}};
	for (int bi = 0; bi < nbackends(); bi++) {
		kernels_backend *be = backends[bi];
		CHECK(be->iface->lora != NULL, "%s: no lora op", be->iface->name);
		if (!be->iface->lora)
			continue;
		for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
			int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2], r = shapes[s][3];
			float *x = rand_vec((size_t)n * in), *a = rand_vec((size_t)r * in);
			float *b = rand_vec((size_t)out * r), *y = rand_vec((size_t)n * out);
			float *tmp = malloc((size_t)n * r * sizeof *tmp);
			double *want = malloc((size_t)n * out * sizeof *want);
			for (size_t i = 0; i < (size_t)n * out; i++)
				want[i] = y[i]; /* the op adds to what y holds */
			naive(want, x, n, in, out, r, a, in, b, r, 0.75f);
			owl_err err = {0};
			int rc = be->iface->lora(be, y, x, n, in, out, r, a, in, b, r, 0.75f, tmp, &err);
			CHECK_INT(rc, 0);
			double worst = 0;
			for (size_t i = 0; i < (size_t)n * out; i++)
				worst = fmax(worst, fabs(y[i] - want[i]) / (1 + fabs(want[i])));
			CHECK(worst < 1e-5, "%s n %d in %d out %d r %d: relative error %g", be->iface->name, n,
			      in, out, r, worst);
			free(x), free(a), free(b), free(y), free(tmp), free(want);
		}
	}
}

/* Tensor parallelism: rank shards of a column-split projection (o, down)
 * take a column band of A (lda = the full width) and their partials add up
 * to the whole; a row-split one (q/k/v, gate/up) takes a row band of B and
 * gives those rows of the whole. */
static void lora_bands_match_whole(void)
{
	int n = 5, in = 64, out = 32, r = 8, half = in / 2;
	float *x = rand_vec((size_t)n * in), *a = rand_vec((size_t)r * in), *b = rand_vec((size_t)out * r);
	float *tmp = malloc((size_t)n * r * sizeof *tmp);
	float *whole = calloc((size_t)n * out, sizeof(float)), *sum = calloc((size_t)n * out, sizeof(float));
	float *xb = malloc((size_t)n * half * sizeof *xb);
	for (int bi = 0; bi < nbackends(); bi++) {
		kernels_backend *be = backends[bi];
		if (!be->iface->lora)
			continue;
		memset(whole, 0, (size_t)n * out * sizeof *whole);
		memset(sum, 0, (size_t)n * out * sizeof *sum);
		CHECK_INT(be->iface->lora(be, whole, x, n, in, out, r, a, in, b, r, 2.0f, tmp, NULL), 0);
		for (int band = 0; band < 2; band++) {
			for (int i = 0; i < n; i++)
				memcpy(xb + (size_t)i * half, x + (size_t)i * in + band * half,
				       (size_t)half * sizeof *xb);
			CHECK_INT(be->iface->lora(be, sum, xb, n, half, out, r, a + band * half, in, b, r, 2.0f,
					   tmp, NULL), 0);
		}
		double worst = 0;
		for (size_t i = 0; i < (size_t)n * out; i++)
			worst = fmax(worst, fabs(sum[i] - whole[i]));
		CHECK(worst < 1e-4, "%s: column bands of A sum to the whole within %g", be->iface->name, worst);
		int row0 = 8, rows = 16;
		float *part = calloc((size_t)n * rows, sizeof(float));
		CHECK_INT(be->iface->lora(be, part, x, n, in, rows, r, a, in, b + (size_t)row0 * r, r, 2.0f, tmp,
				   NULL), 0);
		worst = 0;
		for (int i = 0; i < n; i++)
			for (int o = 0; o < rows; o++)
				worst = fmax(worst, fabs(part[(size_t)i * rows + o] -
							 whole[(size_t)i * out + row0 + o]));
		CHECK(worst < 1e-5, "%s: a row band of B gives those rows, off by %g", be->iface->name, worst);
		free(part);
	}
	free(x), free(a), free(b), free(tmp), free(whole), free(sum), free(xb);
}

static void lora_bad_shapes_refused(void)
{
	float y[4] = {0}, x[4] = {0}, a[4] = {0}, b[4] = {0}, tmp[4];
	for (int bi = 0; bi < nbackends(); bi++) {
		kernels_backend *be = backends[bi];
		if (!be->iface->lora)
			continue;
		owl_err err = {0};
		CHECK(be->iface->lora(be, y, x, 1, 4, 1, 0, a, 4, b, 0, 1.0f, tmp, &err) != 0, "r = 0 accepted");
		CHECK(strstr(err.msg, "bad shapes") != NULL, "message: %s", err.msg);
		CHECK(be->iface->lora(be, y, x, 1, 4, 1, 1, a, 2, b, 1, 1.0f, tmp, NULL) != 0, "lda < in accepted");
	}
}

/* llama.cpp's converter within each head: GGUF rows (2j, 2j+1) are HF rows
 * (j, j + head_dim/2). Head dim 4, two heads: 0 2 1 3 | 4 6 5 7. */
static void gguf_row_permutation(void)
{
	engine_model_info in = {.n_heads = 2, .n_kv_heads = 1, .head_dim = 4};
	static const int q[8] = {0, 2, 1, 3, 4, 6, 5, 7};
	for (int i = 0; i < 8; i++)
		CHECK_INT(engine_row_perm_src(ENGINE_PERM_HEADS, &in, 8, i), q[i]);
	/* k: one kv head of 4 rows */
	static const int k[4] = {0, 2, 1, 3};
	for (int i = 0; i < 4; i++)
		CHECK_INT(engine_row_perm_src(ENGINE_PERM_KV_HEADS, &in, 4, i), k[i]);
	for (int i = 0; i < 8; i++)
		CHECK_INT(engine_row_perm_src(ENGINE_PERM_NONE, &in, 8, i), i);
	CHECK_INT(engine_roles[ENGINE_ROLE_Q].perm, ENGINE_PERM_HEADS);
	CHECK_INT(engine_roles[ENGINE_ROLE_K].perm, ENGINE_PERM_KV_HEADS);
	CHECK_STR(engine_roles[ENGINE_ROLE_DOWN].gguf, "ffn_down");
	CHECK_STR(engine_roles[ENGINE_ROLE_O].hf, "self_attn.o_proj");
	CHECK_INT(engine_roles[ENGINE_ROLE_O].split_cols, 1);
	CHECK_INT(engine_roles[ENGINE_ROLE_UP].split_cols, 0);
}

int main(void)
{
	RUN_TEST(lora_matches_naive_loop);
	RUN_TEST(lora_bands_match_whole);
	RUN_TEST(lora_bad_shapes_refused);
	RUN_TEST(gguf_row_permutation);
	kernels_backend_free(backends[0]);
	TEST_MAIN_END();
}
