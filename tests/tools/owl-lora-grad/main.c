/* owl-lora-grad: one training step's LoRA gradients for the oracle
 * (tests/oracle/ref_train.py) and the e2e checks (tests/e2e/train_grad.sh).
 *
 *   owl-lora-grad MODEL --adapter DIR --r R --alpha A [--rslora] --targets q_proj,v_proj
 *                 --tokens 1,2,3 --labels 2,3,-1 [--seg 0,0,1] [--micro K] [--ckpt]
 *                 [--dropout P] [--dropout-seed S] [--tp N] [--threads N] [--eval]
 *                 [--steps K [--lr LR] [--weight-decay W]] [--device cpu|cuda[:N]]
 *
 * The LoRA weights start from the adapter's tensors (PEFT's layout, B
 * non-zero), the micro-batch is the tokens with their labels (-1 = not
 * scored), packed by --seg (default one sample; positions restart at each
 * sample). --micro K splits the rows into K micro-batches at sample
 * boundaries and accumulates. Prints JSON: loss_sum, count, and each
 * tensor's gradient in PEFT's layout; with --eval also the eval loss, and
 * the loss through the serving path with the weights' adapter view, and
 * "frozen": whether every byte of the base's weights (as the trainer reads
 * them: prepared, repacked) is the same after the steps as before.
 * --steps K instead: K AdamW steps (the kernel table's adamw_step) on the
 * whole batch, printing the mean loss before each (on the CPU: the weights
 * it updates are host memory). --device: where the model and the trainer
 * run [cpu]; on a device the frozen check reads the weights back, and the
 * serving loss takes a copy of the weights there. */
#include "common/common.h"
#include "common/safetensors.h"
#include "engine/engine.h"
#include "engine/internal.h"
#include "engine/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_list(const char *s, int32_t **out)
{
	int n = 0, cap = 16;
	int32_t *v = owl_xmalloc((size_t)cap * sizeof *v);
	char *c = (char *)s;
	while (*c) {
		if (n == cap)
			v = owl_xrealloc(v, (size_t)(cap *= 2) * sizeof *v);
		v[n++] = (int32_t)strtol(c, &c, 10);
		if (*c == ',')
			c++;
	}
	*out = v;
	return n;
}

static float half_to_f32(uint16_t h, int bf16)
{
	uint32_t bits;
	if (bf16) {
		bits = (uint32_t)h << 16;
	} else {
		uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, mnt = h & 1023;
		if (e == 0 && mnt == 0) bits = s;
		else if (e == 31) bits = s | 0x7f800000u | (mnt << 13);
		else if (e == 0) {
			e = 113;
			while (!(mnt & 1024)) mnt <<= 1, e--;
			bits = s | (e << 23) | ((mnt & 1023) << 13);
		} else bits = s | ((e + 112) << 23) | (mnt << 13);
	}
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

/* The hash of n bytes of the backend's memory at p: read in place on the
 * CPU, through a buffer of the device's and a copy to the host otherwise. */
static uint64_t bsum(const engine_model *m, uint64_t h, const void *p, size_t n)
{
	kernels_backend *be = m->be;
	const kernels_backend_iface *f = be->iface;
	if (f->host_memory)
		return fnv(h, p, n);
	kernels_buffer *buf = NULL;
	void *dev;
	uint8_t *host = owl_xmalloc(n);
	owl_err err = {0};
	if (kernels_alloc(be, n, &buf, &dev, &err) || f->copy(be, dev, p, n, &err) ||
	    f->copy_to_host(be, host, buf, 0, n, &err)) {
		fprintf(stderr, "owl-lora-grad: cannot read the weights back: %s\n", err.msg);
		exit(1);
	}
	h = fnv(h, host, n);
	f->buffer_free(be, buf);
	free(host);
	return h;
}

static uint64_t wsum(const engine_model *m, uint64_t h, const wmat *w)
{
	return bsum(m, h, w->data, (size_t)w->rows * w->row_bytes);
}

/* A hash of every weight the trainer reads. */
static uint64_t base_hash(const engine_model *m)
{
	const engine_model_info *in = &m->info;
	uint64_t h = 0xcbf29ce484222325ull;
	for (int l = 0; l < in->n_layers; l++) {
		layer *R = &m->rank_layers[0][l];
		for (int r = 0; r < ENGINE_ROLE_COUNT; r++)
			h = wsum(m, h, engine_layer_weight(R, r));
		h = bsum(m, h, R->attn_norm, (size_t)in->dim * sizeof(float));
		h = bsum(m, h, R->ffn_norm, (size_t)in->dim * sizeof(float));
	}
	h = wsum(m, wsum(m, h, &m->tok_embd), &m->output);
	return bsum(m, h, m->rank_out_norm, (size_t)in->dim * sizeof(float));
}

int main(int argc, char **argv)
{
	const char *path = NULL, *adapter = NULL, *targets = "q_proj,k_proj,v_proj,o_proj";
	const char *toks = NULL, *labs = NULL, *segs = NULL;
	engine_lora_opts lo = {.rank = 8, .alpha = 16};
	engine_model_opts mo = {.device = ENGINE_DEVICE_CPU}; /* the trainer runs on the CPU */
	int micro = 1, ckpt = 0, eval = 0, steps = 0;
	float lr = 1e-3f, wd = 0.0f;
	uint64_t dseed = 1;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--adapter") && i + 1 < argc) adapter = argv[++i];
		else if (!strcmp(argv[i], "--r") && i + 1 < argc) lo.rank = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--alpha") && i + 1 < argc) lo.alpha = (float)atof(argv[++i]);
		else if (!strcmp(argv[i], "--rslora")) lo.rslora = 1;
		else if (!strcmp(argv[i], "--targets") && i + 1 < argc) targets = argv[++i];
		else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) toks = argv[++i];
		else if (!strcmp(argv[i], "--labels") && i + 1 < argc) labs = argv[++i];
		else if (!strcmp(argv[i], "--seg") && i + 1 < argc) segs = argv[++i];
		else if (!strcmp(argv[i], "--micro") && i + 1 < argc) micro = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc) mo.threads = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--ckpt")) ckpt = 1;
		else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--lr") && i + 1 < argc) lr = (float)atof(argv[++i]);
		else if (!strcmp(argv[i], "--weight-decay") && i + 1 < argc) wd = (float)atof(argv[++i]);
		else if (!strcmp(argv[i], "--dropout") && i + 1 < argc) lo.dropout = (float)atof(argv[++i]);
		else if (!strcmp(argv[i], "--dropout-seed") && i + 1 < argc) dseed = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--tp") && i + 1 < argc) mo.tp = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--eval")) eval = 1;
		else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
			owl_err e = {0};
			if (engine_device_parse(argv[++i], &mo.device, &mo.first_gpu, &e)) {
				fprintf(stderr, "owl-lora-grad: --device: %s\n", e.msg);
				return 2;
			}
		} else path = argv[i];
	}
	if (!path || !toks || !labs) {
		fprintf(stderr, "usage: owl-lora-grad MODEL [--adapter DIR] --r R --alpha A [--rslora] "
			"--targets LIST --tokens IDS --labels IDS [--seg IDS] [--micro K] [--ckpt]\n");
		return 2;
	}
	for (int r = 0; r < 7; r++) {
		const char *p = strstr(targets, engine_lora_module_names[r]);
		if (!strcmp(targets, "all") || (p && (p == targets || p[-1] == ',')))
			lo.targets |= 1u << r;
	}
	int32_t *tokens, *labels, *seg = NULL;
	int n = parse_list(toks, &tokens), nl = parse_list(labs, &labels);
	if (nl != n || (segs && parse_list(segs, &seg) != n)) {
		fprintf(stderr, "owl-lora-grad: --tokens, --labels and --seg differ in length\n");
		return 2;
	}
	if (!seg)
		seg = owl_xcalloc((size_t)n, sizeof *seg);
	int32_t *pos = owl_xmalloc((size_t)n * sizeof *pos);
	for (int i = 0; i < n; i++)
		pos[i] = i && seg[i] == seg[i - 1] ? pos[i - 1] + 1 : 0;

	owl_err err = {0};
	engine_model *m = NULL;
	engine_lora_weights *w = NULL;
	engine_trainer *t = NULL;
	st_file *st = NULL;
	if (engine_model_open(path, &mo, &m, &err) || engine_lora_weights_new(m, &lo, &w, &err) ||
	    engine_trainer_new(m, w, n, ckpt, &t, &err))
		goto fail;
	size_t nt = engine_lora_weights_count(w);
	if (adapter) {
		char file[4096];
		snprintf(file, sizeof file, "%s/adapter_model.safetensors", adapter);
		if (st_open(file, &st, &err))
			goto fail;
		for (size_t i = 0; i < nt; i++) {
			engine_lora_tensor ti;
			engine_lora_weights_tensor(w, i, &ti);
			const st_tensor *s = st_find(st, ti.name);
			if (!s) {
				owl_err_set(&err, OWL_EFAIL, "%s has no tensor %s", file, ti.name);
				goto fail;
			}
			size_t cnt = (size_t)ti.rows * ti.cols;
			float *v = owl_xmalloc(cnt * sizeof *v);
			for (size_t k = 0; k < cnt; k++)
				v[k] = s->dtype == ST_F32 ? ((const float *)s->data)[k]
					: half_to_f32(((const uint16_t *)s->data)[k], s->dtype == ST_BF16);
			engine_lora_tensor_set(w, i, v);
			free(v);
		}
	}
	uint64_t before = base_hash(m);
	if (steps > 0 && !m->be->iface->host_memory) {
		owl_err_set(&err, OWL_EUSAGE, "--steps updates the weights with the %s backend's "
			    "adamw_step in place, where they are host memory: run it on the CPU",
			    m->be->iface->name);
		goto fail;
	}
	if (steps > 0) {
		/* --steps K: K AdamW steps on the whole batch, the loss the mean
		 * over the scored rows; prints the loss before each update. */
		int scored = 0;
		for (int i = 0; i < n; i++)
			scored += labels[i] >= 0;
		size_t total = 0;
		for (size_t i = 0; i < nt; i++) {
			engine_lora_tensor ti;
			engine_lora_weights_tensor(w, i, &ti);
			total += (size_t)ti.rows * ti.cols;
		}
		float *mom = owl_xcalloc(2 * total, sizeof *mom);
		kernels_backend *be = m->be;
		printf("{\"losses\": [");
		for (int k = 1; k <= steps; k++) {
			engine_train_batch b = {.n = n, .tokens = tokens, .targets = labels, .seg = seg,
						.pos = pos};
			double ls;
			int64_t c;
			engine_lora_weights_zero_grad(w);
			if (engine_train_step(t, &b, 1.0f / (float)scored, &ls, &c, &err))
				goto fail;
			printf("%s%.9g", k > 1 ? ", " : "", ls / (double)c);
			size_t off = 0;
			for (size_t i = 0; i < nt; i++) {
				engine_lora_tensor ti;
				engine_lora_weights_tensor(w, i, &ti);
				size_t cnt = (size_t)ti.rows * ti.cols;
				if (be->iface->adamw_step(be, ti.value, ti.grad, mom + off, mom + total + off, cnt,
							  lr, 0.9f, 0.999f, 1e-8f, wd, k, &err))
					goto fail;
				off += cnt;
			}
		}
		printf("], \"frozen\": %s}\n", base_hash(m) == before ? "true" : "false");
		free(mom);
		goto done;
	}
	/* Micro-batches cut at sample boundaries, about n / micro rows each. */
	double loss = 0;
	int64_t count = 0;
	int start = 0;
	for (int k = 0; k < micro && start < n; k++) {
		int end = k + 1 == micro ? n : (int)((long)n * (k + 1) / micro);
		while (end < n && end > start && seg[end] == seg[end - 1])
			end++;
		if (end <= start)
			continue;
		engine_train_batch b = {.n = end - start, .tokens = tokens + start, .targets = labels + start,
					.seg = seg + start, .pos = pos + start,
					.dropout_seed = dseed + (uint64_t)k};
		double ls;
		int64_t c;
		if (engine_train_step(t, &b, 1.0f, &ls, &c, &err))
			goto fail;
		loss += ls, count += c;
		start = end;
	}
	printf("{\"loss_sum\": %.9g, \"count\": %lld, \"frozen\": %s", loss, (long long)count,
	       base_hash(m) == before ? "true" : "false");
	if (eval) {
		engine_train_batch b = {.n = n, .tokens = tokens, .targets = labels, .seg = seg, .pos = pos};
		double ls;
		int64_t c;
		if (engine_train_eval(t, &b, &ls, &c, &err))
			goto fail;
		printf(", \"eval_loss_sum\": %.9g, \"eval_count\": %lld", ls, (long long)c);
		/* The same loss through the serving path: a session per sample with
		 * the weights' adapter view, the cross-entropy from its logits. */
		engine_adapter *ad = NULL;
		if (engine_lora_weights_adapter(w, &ad, &err) || engine_adapter_upload(m, ad, &err))
			goto fail;
		int vocab = engine_model_get_info(m)->vocab;
		double serve = 0;
		for (int i = 0; i < n;) {
			int j = i;
			while (j < n && seg[j] == seg[i])
				j++;
			engine_session *sess = NULL;
			float *lg = owl_xmalloc((size_t)(j - i) * vocab * sizeof *lg);
			if (engine_session_new(m, 0, &sess, &err) || engine_session_set_adapter(sess, ad, &err) ||
			    engine_forward(sess, tokens + i, j - i, lg, 1, &err))
				goto fail;
			for (int r = i; r < j; r++) {
				if (labels[r] < 0)
					continue;
				const float *row = lg + (size_t)(r - i) * vocab;
				double mx = row[0], sum = 0;
				for (int v = 1; v < vocab; v++)
					mx = row[v] > mx ? row[v] : mx;
				for (int v = 0; v < vocab; v++)
					sum += exp(row[v] - mx);
				serve += log(sum) + mx - row[labels[r]];
			}
			engine_session_free(sess);
			free(lg);
			i = j;
		}
		engine_adapter_free(ad);
		printf(", \"serve_loss_sum\": %.9g", serve);
	}
	printf(", \"grads\": {");
	for (size_t i = 0; i < nt; i++) {
		engine_lora_tensor ti;
		engine_lora_weights_tensor(w, i, &ti);
		/* the gradient in PEFT's layout: set it as the value, read it back */
		size_t cnt = (size_t)ti.rows * ti.cols;
		float *save = owl_xmalloc(cnt * sizeof *save), *g = owl_xmalloc(cnt * sizeof *g);
		memcpy(save, ti.value, cnt * sizeof *save);
		memcpy(ti.value, ti.grad, cnt * sizeof *save);
		engine_lora_tensor_get(w, i, g);
		memcpy(ti.value, save, cnt * sizeof *save);
		printf("%s\"%s\": [", i ? ", " : "", ti.name);
		for (size_t k = 0; k < cnt; k++)
			printf("%s%.9g", k ? "," : "", g[k]);
		printf("]");
		free(save), free(g);
	}
	printf("}}\n");
done:
	st_close(st);
	engine_trainer_free(t);
	engine_lora_weights_free(w);
	engine_model_close(m);
	free(tokens), free(labels), free(seg), free(pos);
	return 0;
fail:
	fprintf(stderr, "owl-lora-grad: %s\n", err.msg);
	return 1;
}
