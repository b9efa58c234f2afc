/* owl-cuda-bench: figures of the CUDA backend's ops on model-shaped inputs,
 * for scripts/gpu-check.sh while the engine has no CUDA forward pass of
 * its own: the projections of one decoding token (batch 1 and 32) of a
 * TinyLlama-1.1B-shaped and a Llama-8B-shaped model in bf16 and Q4_K, as
 * the bandwidth they reach and its fraction of the device's; prompt GEMMs
 * (512 tokens) as TFLOP/s; decoding attention over a 4096-token f16 cache;
 * sampling over a 128k vocabulary. The weights are random (speed does not
 * depend on values) and spread over enough copies of a layer that the
 * device's L2 cache cannot hold them.
 *
 * Usage: owl-cuda-bench [--bandwidth GBPS]   (default 4800, the H200's)
 * Exits 3 when there is no CUDA device. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/kernels/kernels.h"

static kernels_backend *be;
static double bandwidth = 4800; /* GB/s */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void *dev(size_t bytes)
{
	owl_err err = {0};
	kernels_buffer *b;
	void *p;
	if (kernels_alloc(be, bytes, &b, &p, &err)) {
		fprintf(stderr, "owl-cuda-bench: %s\n", err.msg);
		exit(1);
	}
	/* random-looking bytes without a host copy of every buffer: a fixed
	 * pattern of finite bf16/f16 values and block scales is enough */
	static uint8_t pat[1 << 16];
	static int init;
	if (!init) {
		for (size_t i = 0; i < sizeof pat; i += 2) {
			uint16_t h = (uint16_t)(0x3c00 ^ ((i * 2654435761u) >> 20 & 0x01ff));
			memcpy(pat + i, &h, 2);
		}
		init = 1;
	}
	for (size_t off = 0; off < bytes; off += sizeof pat) {
		size_t n = bytes - off < sizeof pat ? bytes - off : sizeof pat;
		if (be->iface->copy_to_device(be, b, off, pat, n, &err)) {
			fprintf(stderr, "owl-cuda-bench: %s\n", err.msg);
			exit(1);
		}
	}
	return p;
}

static void sync_or_die(void)
{
	owl_err err = {0};
	if (be->iface->synchronize(be, &err)) {
		fprintf(stderr, "owl-cuda-bench: %s\n", err.msg);
		exit(1);
	}
}

static void die_on(int rc, const owl_err *err)
{
	if (rc) {
		fprintf(stderr, "owl-cuda-bench: %s\n", err->msg);
		exit(1);
	}
}

typedef struct shape {
	const char *name;
	int dim, ffn, kv, vocab, layers;
} shape;

/* The seven projections of a layer, [rows, cols]. */
static void layer_mats(const shape *s, int rows[7], int cols[7])
{
	int r[7] = {s->dim, s->kv, s->kv, s->dim, s->ffn, s->ffn, s->dim};
	int c[7] = {s->dim, s->dim, s->dim, s->dim, s->dim, s->dim, s->ffn};
	memcpy(rows, r, sizeof r);
	memcpy(cols, c, sizeof c);
}

/* Seconds per token of all layers' projections and the output head for n
 * tokens at once, and the weight bytes one pass reads. */
static double projections(const shape *s, kernels_dtype t, int n, double *bytes_out)
{
	owl_err err = {0};
	int rows[7], cols[7];
	layer_mats(s, rows, cols);
	size_t layer_bytes = 0;
	for (int i = 0; i < 7; i++)
		layer_bytes += (size_t)rows[i] * kernels_row_bytes(t, cols[i]);
	int copies = (int)((512ull << 20) / layer_bytes) + 1;
	copies = copies > 8 ? 8 : copies;
	kernels_weight w[8][7], head;
	for (int cp = 0; cp < copies; cp++)
		for (int i = 0; i < 7; i++)
			w[cp][i] = (kernels_weight){.type = t, .rows = rows[i], .cols = cols[i],
						    .row_bytes = kernels_row_bytes(t, cols[i]),
						    .data = dev((size_t)rows[i] * kernels_row_bytes(t, cols[i]))};
	head = (kernels_weight){.type = t, .rows = s->vocab, .cols = s->dim,
				.row_bytes = kernels_row_bytes(t, s->dim),
				.data = dev((size_t)s->vocab * kernels_row_bytes(t, s->dim))};
	float *x = dev((size_t)n * s->ffn * 4), *y = dev((size_t)n * (s->vocab > s->ffn ? s->vocab : s->ffn) * 4);
	/* warm-up, then enough passes for a quarter of a second */
	double t0 = 0, el = 0;
	int passes = 0;
	for (int rep = -1; rep < 1000 && el < 0.25; rep++) {
		if (rep == 0)
			t0 = now();
		for (int l = 0; l < s->layers; l++)
			for (int i = 0; i < 7; i++)
				die_on(be->iface->matmul(be, y, x, &w[l % copies][i], n, &err), &err);
		die_on(be->iface->matmul(be, y, x, &head, n, &err), &err);
		sync_or_die();
		if (rep >= 0) {
			passes++;
			el = now() - t0;
		}
	}
	*bytes_out = (double)layer_bytes * s->layers + (double)s->vocab * kernels_row_bytes(t, s->dim);
	return el / passes;
}

static void bench_decode(const shape *s, kernels_dtype t, int n)
{
	double bytes, sec = projections(s, t, n, &bytes);
	double gbs = bytes / sec / 1e9;
	printf("bench decode %s %s batch %d: %.1f tokens/s, weights %.2f GB at %.0f GB/s = %.0f%% of "
	       "%.0f GB/s (projections only, no attention)\n", s->name, kernels_dtype_name(t), n,
	       n / sec, bytes / 1e9, gbs, 100 * gbs / bandwidth, bandwidth);
}

static void bench_prompt(const shape *s, int n)
{
	owl_err err = {0};
	int rows[7], cols[7];
	layer_mats(s, rows, cols);
	double flops = 0, sec = 0;
	float *x = dev((size_t)n * s->ffn * 4), *y = dev((size_t)n * s->ffn * 4);
	for (int i = 0; i < 7; i++) {
		kernels_weight w = {.type = KERNELS_BF16, .rows = rows[i], .cols = cols[i],
				    .row_bytes = (size_t)cols[i] * 2, .data = dev((size_t)rows[i] * cols[i] * 2)};
		die_on(be->iface->matmul(be, y, x, &w, n, &err), &err);
		sync_or_die();
		double t0 = now();
		int reps = 10;
		for (int r = 0; r < reps; r++)
			die_on(be->iface->matmul(be, y, x, &w, n, &err), &err);
		sync_or_die();
		sec += (now() - t0) / reps;
		flops += 2.0 * n * rows[i] * cols[i];
	}
	printf("bench prompt %s bf16 %d tokens: %.1f TFLOP/s over one layer's projections (%.0f tokens/s "
	       "of projections for %d layers)\n", s->name, n, flops / sec / 1e12,
	       n / (sec * s->layers), s->layers);
}

static void bench_attention(void)
{
	owl_err err = {0};
	int ctx = 4096, heads = 32, kvh = 8, hd = 128, bt = 16, nblocks = ctx / bt;
	kernels_kv_layer kv = {.type = KERNELS_KV_F16, .block_tokens = bt, .row_elems = kvh * hd,
			       .block_stride = (size_t)bt * kvh * hd * 2};
	for (int batch = 1; batch <= 32; batch *= 32) {
		kv.k = dev(kv.block_stride * nblocks * batch);
		kv.v = dev(kv.block_stride * nblocks * batch);
		int32_t *tables = malloc((size_t)batch * nblocks * 4);
		for (int i = 0; i < batch * nblocks; i++)
			tables[i] = i;
		kernels_attn_seg *segs = malloc((size_t)batch * sizeof *segs);
		float *q = dev((size_t)batch * heads * hd * 4), *o = dev((size_t)batch * heads * hd * 4);
		/* the tables and segments as the engine would upload them */
		kernels_buffer *tb, *sb;
		void *tp, *sp;
		die_on(kernels_alloc(be, (size_t)batch * nblocks * 4, &tb, &tp, &err), &err);
		die_on(be->iface->copy_to_device(be, tb, 0, tables, (size_t)batch * nblocks * 4, &err), &err);
		for (int b = 0; b < batch; b++)
			segs[b] = (kernels_attn_seg){.tok0 = b, .ntok = 1, .pos0 = ctx - 1,
						     .blocks = (const int32_t *)tp + (size_t)b * nblocks};
		die_on(kernels_alloc(be, (size_t)batch * sizeof *segs, &sb, &sp, &err), &err);
		die_on(be->iface->copy_to_device(be, sb, 0, segs, (size_t)batch * sizeof *segs, &err), &err);
		die_on(be->iface->attention(be, o, q, sp, batch, &kv, heads, 0, heads / kvh, 0, hd, 0, NULL,
					    &err), &err);
		sync_or_die();
		int reps = 20;
		double t0 = now();
		for (int r = 0; r < reps; r++)
			die_on(be->iface->attention(be, o, q, sp, batch, &kv, heads, 0, heads / kvh, 0, hd, 0,
						    NULL, &err), &err);
		sync_or_die();
		double sec = (now() - t0) / reps, bytes = 2.0 * ctx * kvh * hd * 2 * batch;
		printf("bench attention decode batch %d ctx %d (32 heads, 8 kv, hd 128, f16): %.1f us per "
		       "layer, %.0f GB/s of KV\n", batch, ctx, sec * 1e6, bytes / sec / 1e9);
		free(tables);
		free(segs);
	}
}

static void bench_sample(void)
{
	owl_err err = {0};
	int rows = 32, vocab = 128256;
	float *l = dev((size_t)rows * vocab * 4);
	kernels_sample_row p[32];
	for (int r = 0; r < rows; r++)
		p[r] = (kernels_sample_row){0.8f, 0.9f, 0, (float)r / rows};
	int32_t out[32];
	for (int greedy = 0; greedy < 2; greedy++) {
		if (greedy)
			for (int r = 0; r < rows; r++)
				p[r].temperature = 0;
		die_on(be->iface->sample(be, out, l, rows, vocab, p, &err), &err);
		int reps = 10;
		double t0 = now();
		for (int r = 0; r < reps; r++)
			die_on(be->iface->sample(be, out, l, rows, vocab, p, &err), &err);
		printf("bench sample %d rows of %d (%s): %.1f us\n", rows, vocab,
		       greedy ? "greedy" : "T 0.8, top_p 0.9", (now() - t0) / reps * 1e6);
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--bandwidth") == 0)
		bandwidth = atof(argv[2]);
	else if (argc != 1) {
		fprintf(stderr, "usage: owl-cuda-bench [--bandwidth GBPS]\n");
		return 2;
	}
	owl_err err = {0};
	if (engine_cuda_backend_new(0, &be, &err)) {
		printf("owl-cuda-bench: no CUDA device: %s\n", err.msg);
		return 3;
	}
	static const shape tiny = {"tinyllama-1.1b", 2048, 5632, 256, 32000, 22};
	static const shape llama8 = {"llama-8b", 4096, 14336, 1024, 128256, 32};
	bench_decode(&tiny, KERNELS_BF16, 1);
	bench_decode(&llama8, KERNELS_BF16, 1);
	bench_decode(&llama8, KERNELS_BF16, 32);
	bench_decode(&tiny, KERNELS_Q4_K, 1);
	bench_decode(&llama8, KERNELS_Q4_K, 1);
	bench_decode(&llama8, KERNELS_Q8_0, 1);
	bench_prompt(&tiny, 512);
	bench_prompt(&llama8, 512);
	bench_attention();
	bench_sample();
	/* the buffers are the process's until exit: one run, then gone */
	return 0;
}
