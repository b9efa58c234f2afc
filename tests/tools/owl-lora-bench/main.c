/* owl-lora-bench: trained tokens per second of the LoRA trainer (forward
 * and backward of one micro-batch, gradients added) and the process's peak
 * memory, for scripts/bench-train.sh.
 *
 *   owl-lora-bench MODEL [--r 16] [--seq 512] [--steps 3] [--targets LIST|all]
 *                  [--ckpt] [--threads N] [--device cpu|cuda[:N]]
 *
 * The micro-batch is one sample of seq tokens (fixed pseudo-random ids),
 * every row scored; each step ends with the AdamW update, whose two moments
 * are held as `owl train` holds them, so that the peak memory is a training
 * run's. Prints one JSON object, with the parts of a memory budget: the
 * base weights, the trainer's workspace (activations), the adapter's own
 * size, and the process's resident memory before the model was opened
 * (libraries and runtimes). */
#include "common/common.h"
#include "engine/engine.h"
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double clock_s(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
/* Processor time of every thread: comparable on a machine others load. */
static double cpu_now(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* Resident memory now, from /proc/self/statm (pages). */
static double rss_mib(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, res = 0;
	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &res) != 2)
			res = 0;
		fclose(f);
	}
	return (double)res * 4096.0 / (1 << 20);
}

int main(int argc, char **argv)
{
	const char *path = NULL, *targets = "q_proj,k_proj,v_proj,o_proj";
	engine_lora_opts lo = {.rank = 16, .alpha = 32, .seed = 1};
	engine_model_opts mo = {.device = ENGINE_DEVICE_CPU}; /* as owl train's default */
	int seq = 512, steps = 3, ckpt = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--r") && i + 1 < argc) lo.rank = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seq") && i + 1 < argc) seq = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--targets") && i + 1 < argc) targets = argv[++i];
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc) mo.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--ckpt")) ckpt = 1;
		else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
			owl_err e = {0};
			if (engine_device_parse(argv[++i], &mo.device, &mo.first_gpu, &e)) {
				fprintf(stderr, "owl-lora-bench: --device: %s\n", e.msg);
				return 2;
			}
		} else path = argv[i];
	}
	if (!path || seq < 2 || steps < 1) {
		fprintf(stderr, "usage: owl-lora-bench MODEL [--r R] [--seq N] [--steps N] [--targets LIST] "
			"[--ckpt] [--threads N] [--device D]\n");
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
	double base_rss = rss_mib();
	double t_open = now();
	if (engine_model_open(path, &mo, &m, &err) || engine_lora_weights_new(m, &lo, &w, &err) ||
	    engine_trainer_new(m, w, seq, ckpt, &t, &err)) {
		fprintf(stderr, "owl-lora-bench: %s\n", err.msg);
		return 1;
	}
	t_open = now() - t_open;
	/* AdamW's moments, one pair per trainable tensor, as the loop holds them. */
	size_t nt = engine_lora_weights_count(w), adapter_floats = 0;
	float **mom = owl_xcalloc(2 * nt, sizeof *mom);
	for (size_t i = 0; i < nt; i++) {
		engine_lora_tensor lt;
		engine_lora_weights_tensor(w, i, &lt);
		size_t k = (size_t)lt.rows * lt.cols;
		adapter_floats += k;
		mom[2 * i] = owl_xcalloc(k, sizeof(float));
		mom[2 * i + 1] = owl_xcalloc(k, sizeof(float));
	}
	train_adamw_opts adam = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.0f};
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
	double loss = 0, best = 1e30, total = 0, cpu_total = 0;
	int64_t count;
	for (int k = 0; k <= steps; k++) { /* the first is a warm-up */
		double t0 = now(), c0 = cpu_now();
		engine_lora_weights_zero_grad(w);
		if (engine_train_step(t, &b, 1.0f / (float)seq, &loss, &count, &err)) {
			fprintf(stderr, "owl-lora-bench: %s\n", err.msg);
			return 1;
		}
		for (size_t i = 0; i < nt; i++) {
			engine_lora_tensor lt;
			engine_lora_weights_tensor(w, i, &lt);
			train_adamw_update(lt.value, lt.grad, mom[2 * i], mom[2 * i + 1],
					   (size_t)lt.rows * lt.cols, 2e-4f, &adam, k + 1);
		}
		double dt = now() - t0;
		if (k) {
			cpu_total += cpu_now() - c0;
			total += dt;
			best = dt < best ? dt : best;
		}
	}
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	printf("{\"tokens_per_s\": %.1f, \"best_tokens_per_s\": %.1f, \"step_s\": %.3f, \"loss\": %.4f, "
	       "\"peak_rss_mib\": %.0f, \"weight_mib\": %.0f, \"open_s\": %.2f, \"threads\": %d, "
	       "\"rank\": %d, \"seq\": %d, \"ckpt\": %d, \"dtype\": \"%s\", "
	       "\"workspace_mib\": %.1f, \"adapter_mib\": %.2f, \"base_rss_mib\": %.0f, "
	       "\"cpu_s_per_step\": %.3f}\n",
	       seq * steps / total, seq / best, total / steps, loss / (double)count,
	       (double)ru.ru_maxrss / 1024.0, (double)in->weight_bytes / (1 << 20), t_open, in->threads,
	       lo.rank, seq, ckpt, in->weight_dtype,
	       (double)engine_trainer_workspace_bytes(t) / (1 << 20),
	       (double)adapter_floats * sizeof(float) / (1 << 20), base_rss, cpu_total / steps);
	for (size_t i = 0; i < 2 * nt; i++)
		free(mom[i]);
	free(mom);
	engine_trainer_free(t);
	engine_lora_weights_free(w);
	engine_model_close(m);
	free(tok), free(tgt), free(seg), free(pos);
	return 0;
}
