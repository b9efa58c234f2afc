/* The training loop: epochs of packed micro-batches, gradient accumulation
 * normalised by the step's scored tokens, clipping, AdamW, the schedule,
 * eval, metrics, checkpoints and resume. */
#include "train/train.h"
#include "common/gguf.h"
#include "common/safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One epoch's order and micro-batches. */
typedef struct epoch_plan {
	int epoch;
	uint32_t *order;
	train_micro *mb;
	size_t nmb;
} epoch_plan;

static void plan_epoch(const train_dataset *d, const train_opts *o, int epoch, epoch_plan *p)
{
	free(p->order);
	free(p->mb);
	p->epoch = epoch;
	train_epoch_order(d, o->seed, epoch, 1, &p->order);
	train_pack(d, p->order, o->seq_len, o->batch, &p->mb, &p->nmb);
}

static int64_t steps_of(size_t nmb, int k) { return (int64_t)((nmb + (size_t)k - 1) / (size_t)k); }

int64_t train_total_steps(const train_dataset *d, const train_opts *o)
{
	if (o->max_steps > 0)
		return o->max_steps;
	int64_t total = 0;
	epoch_plan p = {0};
	for (int e = 0; e < o->epochs; e++) {
		plan_epoch(d, o, e, &p);
		total += steps_of(p.nmb, o->grad_accum);
	}
	free(p.order);
	free(p.mb);
	return total;
}

/* ---- state --------------------------------------------------------------------------- */

typedef struct loop_state {
	int64_t step;    /* steps done */
	int epoch;       /* the epoch of the next micro-batch */
	size_t micro;    /* its index in that epoch's plan */
	uint64_t rng;    /* dropout seeds */
	int64_t tokens;
	double elapsed;  /* seconds of earlier sessions */
	double first_loss, last_loss, eval_loss;
	int has_eval;
} loop_state;

typedef struct adam_state {
	size_t n;
	float **m, **v;
	size_t *len;
} adam_state;

static int adam_init(adam_state *a, engine_lora_weights *w, owl_err *err)
{
	a->n = engine_lora_weights_count(w);
	a->m = owl_xcalloc(a->n, sizeof *a->m);
	a->v = owl_xcalloc(a->n, sizeof *a->v);
	a->len = owl_xcalloc(a->n, sizeof *a->len);
	for (size_t i = 0; i < a->n; i++) {
		engine_lora_tensor t;
		engine_lora_weights_tensor(w, i, &t);
		a->len[i] = (size_t)t.rows * t.cols;
		a->m[i] = calloc(a->len[i], sizeof(float));
		a->v[i] = calloc(a->len[i], sizeof(float));
		if (!a->m[i] || !a->v[i])
			return owl_err_set(err, OWL_EFAIL, "cannot allocate the optimiser's state");
	}
	return 0;
}

static void adam_release(adam_state *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->m[i]);
		free(a->v[i]);
	}
	free(a->m), free(a->v), free(a->len);
}

/* ---- checkpoints ------------------------------------------------------------------------
 * run_dir/checkpoint/: adapter_config.json + adapter_model.safetensors (the
 * adapter as it is, loadable like the final one), optimizer.safetensors
 * (AdamW's moments, NAME.exp_avg and NAME.exp_avg_sq, in the engine's
 * layout: only a resume on the same base reads them) and state.json. It is
 * written beside the old one and renamed over it, so that a crash leaves
 * one whole checkpoint. */

static double or_zero(double x) { return isfinite(x) ? x : 0; }

static int write_state_json(const char *path, const loop_state *s, const train_opts *o,
			    int64_t total, owl_err *err)
{
	/* adam_step and schedule_step are the step: AdamW's t and the
	 * schedule's position both count optimiser steps. */
	json_t *j = json_pack("{s:I, s:i, s:I, s:I, s:f, s:f, s:f, s:I, s:I, s:I}", "step",
			      (json_int_t)s->step, "epoch", s->epoch, "micro_batch", (json_int_t)s->micro,
			      "tokens", (json_int_t)s->tokens, "elapsed_s", s->elapsed, "first_loss",
			      or_zero(s->first_loss), "last_loss", or_zero(s->last_loss), "total_steps",
			      (json_int_t)total, "adam_step", (json_int_t)s->step, "schedule_step",
			      (json_int_t)s->step);
	/* 64-bit values as hex text: JSON numbers stop being exact at 2^53. */
	char hex[17];
	snprintf(hex, sizeof hex, "%016llx", (unsigned long long)s->rng);
	json_object_set_new(j, "rng", json_string(hex));
	snprintf(hex, sizeof hex, "%016llx", (unsigned long long)o->seed);
	json_object_set_new(j, "seed", json_string(hex));
	if (s->has_eval)
		json_object_set_new(j, "eval_loss", json_real(or_zero(s->eval_loss)));
	char *text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
	json_decref(j);
	int rc = owl_write_file_atomic(path, text, strlen(text), err);
	free(text);
	return rc;
}

static int save_checkpoint(const char *run_dir, engine_lora_weights *w, const adam_state *a,
			   const loop_state *s, const train_opts *o, int64_t total,
			   const char *base_model, owl_err *err)
{
	char *dir = owl_path_join(run_dir, "checkpoint");
	char *fresh = owl_path_join(run_dir, "checkpoint.new");
	char *old = owl_path_join(run_dir, "checkpoint.old");
	char *p = NULL;
	st_write_tensor *t = owl_xcalloc(2 * a->n, sizeof *t);
	char **names = owl_xcalloc(2 * a->n, sizeof *names);
	int rc = owl_remove_tree(fresh, err);
	if (!rc)
		rc = owl_mkdir_p(fresh, err);
	if (!rc)
		rc = train_peft_save(fresh, w, base_model, NULL, err);
	for (size_t i = 0; !rc && i < a->n; i++) {
		engine_lora_tensor lt;
		engine_lora_weights_tensor(w, i, &lt);
		names[2 * i] = owl_xasprintf("%s.exp_avg", lt.name);
		names[2 * i + 1] = owl_xasprintf("%s.exp_avg_sq", lt.name);
		t[2 * i] = (st_write_tensor){.name = names[2 * i], .dtype = ST_F32, .n_dims = 2,
					     .shape = {lt.rows, lt.cols}, .data = a->m[i],
					     .nbytes = a->len[i] * sizeof(float)};
		t[2 * i + 1] = t[2 * i];
		t[2 * i + 1].name = names[2 * i + 1];
		t[2 * i + 1].data = a->v[i];
	}
	static const char *const meta[] = {"format", "owl-adamw", "layout", "engine"};
	if (!rc) {
		p = owl_path_join(fresh, "optimizer.safetensors");
		rc = st_write_file(p, t, 2 * a->n, meta, 2, err);
		free(p);
	}
	if (!rc) {
		p = owl_path_join(fresh, "state.json");
		rc = write_state_json(p, s, o, total, err);
		free(p);
	}
	if (!rc)
		rc = owl_remove_tree(old, err);
	if (!rc && owl_path_exists(dir) && rename(dir, old) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot move '%s' aside: %s", dir, strerror(errno));
	if (!rc && rename(fresh, dir) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot rename '%s': %s", fresh, strerror(errno));
	if (!rc)
		rc = owl_fsync_dir(run_dir, err);
	if (!rc)
		owl_remove_tree(old, NULL);
	if (rc)
		owl_err_wrap(err, "cannot write the checkpoint of step %lld", (long long)s->step);
	for (size_t i = 0; i < 2 * a->n; i++)
		free(names[i]);
	free(names), free(t), free(dir), free(fresh), free(old);
	return rc;
}

static int read_u64_hex(json_t *j, const char *key, uint64_t *out)
{
	const char *s = json_string_value(json_object_get(j, key));
	char *end = NULL;
	if (!s || strlen(s) != 16)
		return -1;
	*out = strtoull(s, &end, 16);
	return *end ? -1 : 0;
}

static int load_checkpoint(const char *run_dir, engine_lora_weights *w, adam_state *a,
			   loop_state *s, const train_opts *o, int64_t total, owl_err *err)
{
	char *dir = owl_path_join(run_dir, "checkpoint");
	if (!owl_is_dir(dir)) {
		/* A crash between the two renames leaves the previous one aside. */
		char *old = owl_path_join(run_dir, "checkpoint.old");
		if (owl_is_dir(old) && rename(old, dir) != 0) {
			int rc = owl_err_set(err, OWL_EFAIL, "cannot restore '%s': %s", old, strerror(errno));
			free(old);
			free(dir);
			return rc;
		}
		free(old);
	}
	json_t *j = NULL;
	st_file *ad = NULL, *op = NULL;
	char *p = NULL;
	int rc = owl_read_json_object(dir, "state.json", 1 << 20, (void **)&j, err);
	uint64_t seed = 0;
	if (!rc) {
		s->step = json_integer_value(json_object_get(j, "step"));
		s->epoch = (int)json_integer_value(json_object_get(j, "epoch"));
		s->micro = (size_t)json_integer_value(json_object_get(j, "micro_batch"));
		s->tokens = json_integer_value(json_object_get(j, "tokens"));
		s->elapsed = json_number_value(json_object_get(j, "elapsed_s"));
		s->first_loss = json_number_value(json_object_get(j, "first_loss"));
		s->last_loss = json_number_value(json_object_get(j, "last_loss"));
		json_t *ev = json_object_get(j, "eval_loss");
		s->has_eval = ev != NULL;
		s->eval_loss = json_number_value(ev);
		if (read_u64_hex(j, "rng", &s->rng) || read_u64_hex(j, "seed", &seed))
			rc = owl_err_set(err, OWL_EINTEGRITY, "%s/state.json: rng or seed is not 16 hex "
					 "digits", dir);
		else if (seed != o->seed || json_integer_value(json_object_get(j, "total_steps")) != total)
			rc = owl_err_set(err, OWL_EUSAGE, "the checkpoint in %s was taken with another "
					 "seed or another number of steps (%lld, now %lld)", dir,
					 (long long)json_integer_value(json_object_get(j, "total_steps")),
					 (long long)total);
		else if (s->step < 0 || s->step > total)
			rc = owl_err_set(err, OWL_EINTEGRITY, "%s/state.json: step %lld is outside the run",
					 dir, (long long)s->step);
	}
	if (!rc) {
		p = owl_path_join(dir, "adapter_model.safetensors");
		rc = st_open(p, &ad, err);
		free(p);
	}
	if (!rc) {
		p = owl_path_join(dir, "optimizer.safetensors");
		rc = st_open(p, &op, err);
		free(p);
	}
	for (size_t i = 0; !rc && i < a->n; i++) {
		engine_lora_tensor lt;
		engine_lora_weights_tensor(w, i, &lt);
		char *mn = owl_xasprintf("%s.exp_avg", lt.name), *vn = owl_xasprintf("%s.exp_avg_sq", lt.name);
		const st_tensor *tv = st_find(ad, lt.name), *tm = st_find(op, mn), *tq = st_find(op, vn);
		size_t bytes = a->len[i] * sizeof(float);
		if (!tv || !tm || !tq || tv->dtype != ST_F32 || tm->dtype != ST_F32 || tq->dtype != ST_F32 ||
		    tv->nbytes != bytes || tm->nbytes != bytes || tq->nbytes != bytes) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "the checkpoint in %s lacks '%s' or its "
					 "moments, or holds them in another shape", dir, lt.name);
		} else {
			/* safetensors data need not be aligned for floats: copy first. */
			float *tmp = owl_xmalloc(bytes);
			memcpy(tmp, tv->data, bytes);
			engine_lora_tensor_set(w, i, tmp);
			free(tmp);
			memcpy(a->m[i], tm->data, bytes);
			memcpy(a->v[i], tq->data, bytes);
		}
		free(mn);
		free(vn);
	}
	if (!rc && st_count(ad) != a->n)
		rc = owl_err_set(err, OWL_EINTEGRITY, "the checkpoint in %s holds %zu tensors, the run "
				 "%zu", dir, st_count(ad), a->n);
	st_close(ad);
	st_close(op);
	json_decref(j);
	if (rc)
		owl_err_wrap(err, "cannot resume");
	free(dir);
	return rc;
}

/* Starts from the adapter in dir: every tensor of w must be there, in PEFT's
 * shape, and nothing else. */
static int load_init(const char *dir, engine_lora_weights *w, owl_err *err)
{
	char *p = owl_path_join(dir, "adapter_model.safetensors");
	st_file *f = NULL;
	int rc = st_open(p, &f, err);
	free(p);
	size_t n = engine_lora_weights_count(w);
	for (size_t i = 0; !rc && i < n; i++) {
		engine_lora_tensor lt;
		engine_lora_weights_tensor(w, i, &lt);
		const st_tensor *t = st_find(f, lt.name);
		size_t cnt = (size_t)lt.rows * lt.cols;
		if (!t || t->n_dims != 2 || t->shape[0] != lt.rows || t->shape[1] != lt.cols ||
		    (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)) {
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter in %s has no %s of [%d, %d] (give "
					 "the same --rank and --targets it was made with)", dir, lt.name,
					 lt.rows, lt.cols);
			break;
		}
		float *x = owl_xmalloc(cnt * sizeof *x);
		const unsigned char *d = t->data;
		for (size_t j = 0; j < cnt; j++) {
			if (t->dtype == ST_F32) {
				memcpy(&x[j], d + 4 * j, 4);
			} else {
				uint16_t h;
				memcpy(&h, d + 2 * j, 2);
				uint32_t u = (uint32_t)h << 16;
				if (t->dtype == ST_BF16)
					memcpy(&x[j], &u, 4);
				else
					x[j] = gguf_f16_to_f32(h);
			}
		}
		engine_lora_tensor_set(w, i, x);
		free(x);
	}
	if (!rc && st_count(f) != n)
		rc = owl_err_set(err, OWL_EUSAGE, "the adapter in %s holds %zu tensors, a rank %d "
				 "adapter of these targets %zu", dir, st_count(f),
				 engine_lora_weights_opts(w)->rank, n);
	st_close(f);
	if (rc)
		owl_err_wrap(err, "--init");
	return rc;
}

/* Keeps the lines of metrics.jsonl up to step (what a resume continues from). */
static int trim_metrics(const char *path, int64_t step, owl_err *err)
{
	char *data = NULL;
	size_t len = 0;
	if (!owl_path_exists(path))
		return 0;
	int rc = owl_read_file(path, (size_t)1 << 30, &data, &len, err);
	if (rc)
		return rc;
	owl_buf out;
	owl_buf_init(&out, (size_t)1 << 30);
	for (char *p = data, *nl; p < data + len; p = nl + 1) {
		nl = memchr(p, '\n', (size_t)(data + len - p));
		if (!nl)
			break; /* a line cut short by a crash */
		json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
		if (j && json_integer_value(json_object_get(j, "step")) <= step)
			owl_buf_append(&out, p, (size_t)(nl - p + 1));
		json_decref(j);
	}
	rc = owl_write_file_atomic(path, out.len ? out.data : "", out.len, err);
	owl_buf_release(&out);
	free(data);
	return rc;
}

/* ---- eval ---------------------------------------------------------------------------------- */

static int run_eval(engine_trainer *tr, const train_dataset *ev, const train_opts *o,
		    train_batch_buf *buf, double *loss, owl_err *err)
{
	uint32_t *order = NULL;
	train_micro *mb = NULL;
	size_t nmb = 0;
	train_epoch_order(ev, 0, 0, 0, &order);
	train_pack(ev, order, o->seq_len, o->batch, &mb, &nmb);
	double sum = 0;
	int64_t count = 0;
	int rc = 0;
	for (size_t i = 0; i < nmb && !rc; i++) {
		engine_train_batch b;
		train_batch_fill(ev, order, &mb[i], buf, 0, &b);
		double ls = 0;
		int64_t c = 0;
		rc = engine_train_eval(tr, &b, &ls, &c, err);
		sum += ls;
		count += c;
	}
	free(order);
	free(mb);
	*loss = count ? sum / (double)count : NAN;
	return rc;
}

/* ---- the loop ------------------------------------------------------------------------------- */

static int check_opts(const train_dataset *d, const train_opts *o, owl_err *err)
{
	if (o->batch < 1 || o->grad_accum < 1 || o->seq_len < 2)
		return owl_err_set(err, OWL_EUSAGE, "batch %d, grad_accum %d and seq_len %d must be "
				   "positive (seq_len at least 2)", o->batch, o->grad_accum, o->seq_len);
	if (o->max_steps <= 0 && o->epochs < 1)
		return owl_err_set(err, OWL_EUSAGE, "neither epochs nor max_steps is positive");
	if (!(o->lr > 0) || !isfinite(o->lr))
		return owl_err_set(err, OWL_EUSAGE, "the learning rate %g is not positive", o->lr);
	if ((int64_t)o->batch * o->seq_len > (1 << 20))
		return owl_err_set(err, OWL_EUSAGE, "a micro-batch of %d x %d tokens is more than %d",
				   o->batch, o->seq_len, 1 << 20);
	return 0;
}

int train_run(engine_model *m, const train_dataset *train, const train_dataset *eval,
	      const train_opts *o, const char *run_dir, int resume, const char *base_model,
	      const train_hooks *hooks, train_result *res, owl_err *err)
{
	memset(res, 0, sizeof *res);
	int rc = check_opts(train, o, err);
	if (rc)
		return rc;
	engine_lora_weights *w = NULL;
	engine_trainer *tr = NULL;
	adam_state adam = {0};
	epoch_plan plan = {0};
	train_batch_buf buf = {0};
	FILE *metrics = NULL;
	char *metrics_path = owl_path_join(run_dir, "metrics.jsonl");
	int64_t total = train_total_steps(train, o);
	int64_t warmup = o->warmup >= 0 ? o->warmup : (int64_t)(0.03 * (double)total);
	train_schedule sched = {.lr = o->lr, .warmup = warmup, .total = total};
	loop_state s = {.rng = o->seed ^ 0xd1b54a32d192ed03ull, .first_loss = NAN, .last_loss = NAN};
	int cap = o->batch * o->seq_len;

	rc = engine_lora_weights_new(m, &o->lora, &w, err);
	if (!rc)
		rc = engine_trainer_new(m, w, cap, o->checkpoint_activations, &tr, err);
	if (!rc)
		rc = adam_init(&adam, w, err);
	if (!rc && o->init_adapter && !resume)
		rc = load_init(o->init_adapter, w, err);
	if (!rc && resume)
		rc = load_checkpoint(run_dir, w, &adam, &s, o, total, err);
	if (!rc && resume)
		rc = trim_metrics(metrics_path, s.step, err);
	if (rc)
		goto cleanup;
	metrics = fopen(metrics_path, resume ? "a" : "w");
	if (!metrics) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", metrics_path, strerror(errno));
		goto cleanup;
	}
	train_batch_buf_init(&buf, cap);
	plan_epoch(train, o, s.epoch, &plan);
	double session_start = owl_now();
	int64_t session_steps = 0;
	res->total_steps = total;

	while (s.step < total) {
		if (s.micro >= plan.nmb) {
			s.epoch++;
			s.micro = 0;
			plan_epoch(train, o, s.epoch, &plan);
		}
		double t0 = owl_now();
		size_t k = plan.nmb - s.micro < (size_t)o->grad_accum ? plan.nmb - s.micro
								     : (size_t)o->grad_accum;
		int64_t scored = 0, tokens = 0;
		for (size_t i = 0; i < k; i++) {
			scored += plan.mb[s.micro + i].scored;
			tokens += plan.mb[s.micro + i].tokens;
		}
		/* The loss of the step is the mean over every scored token of all
		 * its micro-batches, so each micro-batch's gradient is scaled by
		 * 1 / (the step's scored tokens), not by its own count. */
		float scale = scored ? 1.0f / (float)scored : 0.0f;
		engine_lora_weights_zero_grad(w);
		double loss_sum = 0;
		int64_t count = 0;
		for (size_t i = 0; i < k && !rc; i++) {
			engine_train_batch b;
			train_batch_fill(train, plan.order, &plan.mb[s.micro + i], &buf,
					 train_rng_next(&s.rng), &b);
			double ls = 0;
			int64_t c = 0;
			rc = engine_train_step(tr, &b, scale, &ls, &c, err);
			loss_sum += ls;
			count += c;
		}
		if (rc)
			goto cleanup;
		double sq = 0;
		for (size_t i = 0; i < adam.n; i++) {
			engine_lora_tensor t;
			engine_lora_weights_tensor(w, i, &t);
			sq += train_sum_squares(t.grad, adam.len[i]);
		}
		double norm = sqrt(sq);
		float clip = train_clip_factor(norm, o->max_grad_norm);
		float lr = train_lr_at(&sched, s.step);
		for (size_t i = 0; i < adam.n; i++) {
			engine_lora_tensor t;
			engine_lora_weights_tensor(w, i, &t);
			if (clip < 1.0f)
				for (size_t j = 0; j < adam.len[i]; j++)
					t.grad[j] *= clip;
			train_adamw_update(t.value, t.grad, adam.m[i], adam.v[i], adam.len[i], lr, &o->adam,
					   s.step + 1);
		}
		s.step++;
		s.micro += k;
		s.tokens += tokens;
		session_steps++;
		double loss = count ? loss_sum / (double)count : NAN;
		if (s.step == 1)
			s.first_loss = loss;
		s.last_loss = loss;

		train_progress p = {.step = s.step, .total = total, .epoch = s.epoch, .loss = loss,
				    .lr = lr, .grad_norm = norm, .tokens = tokens};
		double now = owl_now();
		p.tok_per_s = now > t0 ? (double)tokens / (now - t0) : 0;
		p.elapsed_s = s.elapsed + (now - session_start);
		p.eta_s = (now - session_start) / (double)session_steps * (double)(total - s.step);
		fprintf(metrics, "{\"step\": %lld, \"epoch\": %d, \"loss\": %.17g, \"lr\": %.9g, "
			"\"grad_norm\": %.9g, \"tokens\": %lld, \"scored\": %lld, \"tok_per_s\": %.1f, "
			"\"elapsed_s\": %.3f}\n", (long long)s.step, s.epoch, loss, lr, norm,
			(long long)tokens, (long long)count, p.tok_per_s, p.elapsed_s);
		if (eval && ((o->eval_every > 0 && s.step % o->eval_every == 0) || s.step == total)) {
			rc = run_eval(tr, eval, o, &buf, &s.eval_loss, err);
			if (rc)
				goto cleanup;
			s.has_eval = 1;
			p.has_eval = 1;
			p.eval_loss = s.eval_loss;
			fprintf(metrics, "{\"step\": %lld, \"eval_loss\": %.17g, \"eval_tokens\": %lld}\n",
				(long long)s.step, s.eval_loss, (long long)eval->trained_tokens);
		}
		fflush(metrics);
		if (hooks && hooks->step)
			hooks->step(hooks->ctx, &p);
		int stop = hooks && hooks->stop && hooks->stop(hooks->ctx) && s.step < total;
		if ((o->checkpoint_every > 0 && s.step % o->checkpoint_every == 0 && s.step < total) ||
		    stop) {
			loop_state cs = s;
			cs.elapsed = s.elapsed + (owl_now() - session_start);
			if (fsync(fileno(metrics)) != 0 ||
			    (rc = save_checkpoint(run_dir, w, &adam, &cs, o, total, base_model, err))) {
				if (!rc)
					rc = owl_err_set(err, OWL_EFAIL, "cannot sync '%s'", metrics_path);
				goto cleanup;
			}
		}
		if (stop) {
			res->stopped = 1;
			break;
		}
	}
	if (!res->stopped) {
		char *adir = owl_path_join(run_dir, "adapter");
		rc = owl_remove_tree(adir, err);
		if (!rc)
			rc = owl_mkdir_p(adir, err);
		if (!rc)
			rc = train_peft_save(adir, w, base_model, NULL, err);
		free(adir);
	}
	res->steps = s.step;
	res->first_loss = s.first_loss;
	res->last_loss = s.last_loss;
	res->has_eval = s.has_eval;
	res->eval_loss = s.eval_loss;
	res->tokens = s.tokens;
	res->seconds = s.elapsed + (owl_now() - session_start);
cleanup:
	if (metrics && fclose(metrics) != 0 && !rc)
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s'", metrics_path);
	free(metrics_path);
	free(plan.order);
	free(plan.mb);
	train_batch_buf_release(&buf);
	adam_release(&adam);
	engine_trainer_free(tr);
	engine_lora_weights_free(w);
	return rc;
}
