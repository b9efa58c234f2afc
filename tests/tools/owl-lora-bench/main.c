/* owl-lora-bench: trained tokens per second of the LoRA trainer (forward
 * and backward of one micro-batch, gradients added) and the process's peak
 * memory, for scripts/bench-train.sh.
 *
 *   owl-lora-bench MODEL [--r 16] [--seq 512] [--steps 3] [--targets LIST|all]
 *                  [--ckpt] [--threads N]
 *
 * The micro-batch is one sample of seq tokens (fixed pseudo-random ids),
 * every row scored. Prints one JSON object. */
#include "common/common.h"
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	const char *path = NULL, *targets = "q_proj,k_proj,v_proj,o_proj";
	engine_lora_opts lo = {.rank = 16, .alpha = 32, .seed = 1};
	engine_model_opts mo = {0};
	int seq = 512, steps = 3, ckpt = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--r") && i + 1 < argc) lo.rank = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seq") && i + 1 < argc) seq = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--targets") && i + 1 < argc) targets = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc) mo.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--ckpt")) ckpt = 1;
		else path = argv[i];
	}
	if (!path || seq < 2 || steps < 1) {
		fprintf(stderr, "usage: owl-lora-bench MODEL [--r R] [--seq N] [--steps N] [--targets LIST] "
			"[--ckpt] [--threads N]\n");
		return 2;
	}
	for (int r = 0; r < 7; r++) {
		const char *p = strstr(targets, engine_lora_module_names[r]);
		if (!strcmp(targets, "all") || (p && (p == targets || p[-1] == ',')))
			lo.targets |= 1u << r;
	}
	owl_err err = {0};
	engine_model *m = NULL;
	engine_lora_weights *w = NULL;
	engine_trainer *t = NULL;
	double t_open = now();
	if (engine_model_open(path, &mo, &m, &err) || engine_lora_weights_new(m, &lo, &w, &err) ||
	    engine_trainer_new(m, w, seq, ckpt, &t, &err)) {
		fprintf(stderr, "owl-lora-bench: %s\n", err.msg);
		return 1;
	}
	t_open = now() - t_open;
	const engine_model_info *in = engine_model_get_info(m);
	int32_t *tok = owl_xmalloc((size_t)seq * 4), *tgt = owl_xmalloc((size_t)seq * 4);
	int32_t *seg = owl_xcalloc((size_t)seq, 4), *pos = owl_xmalloc((size_t)seq * 4);
	uint64_t s = 12345;
	for (int i = 0; i < seq; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		tok[i] = (int32_t)((s >> 33) % (uint64_t)in->vocab);
		pos[i] = i;
	}
	for (int i = 0; i < seq; i++)
		tgt[i] = i + 1 < seq ? tok[i + 1] : -1;
	engine_train_batch b = {.n = seq, .tokens = tok, .targets = tgt, .seg = seg, .pos = pos};
	double loss = 0, best = 1e30, total = 0;
	int64_t count;
	for (int k = 0; k <= steps; k++) { /* the first is a warm-up */
		double t0 = now();
		if (engine_train_step(t, &b, 1.0f / (float)seq, &loss, &count, &err)) {
			fprintf(stderr, "owl-lora-bench: %s\n", err.msg);
			return 1;
		}
		double dt = now() - t0;
		if (k) {
			total += dt;
			best = dt < best ? dt : best;
		}
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"tokens_per_s\": %.1f, \"best_tokens_per_s\": %.1f, \"step_s\": %.3f, \"loss\": %.4f, "
	       "\"peak_rss_mib\": %.0f, \"weight_mib\": %.0f, \"open_s\": %.2f, \"threads\": %d, "
	       "\"rank\": %d, \"seq\": %d, \"ckpt\": %d, \"dtype\": \"%s\"}\n",
	       seq * steps / total, seq / best, total / steps, loss / (double)count,
	       (double)ru.ru_maxrss / 1024.0, (double)in->weight_bytes / (1 << 20), t_open, in->threads,
	       lo.rank, seq, ckpt, in->weight_dtype);
	engine_trainer_free(t);
	engine_lora_weights_free(w);
	engine_model_close(m);
	free(tok), free(tgt), free(seg), free(pos);
	return 0;
}
