/* The scheduler of one loaded revision. Its thread alone drives the
 * revision's engine (the KV pool takes one thread at a time). Each step it
 * admits queued jobs into free slots of the batch, drops the cancelled
 * ones, and runs one engine_decode over the next token of every decoding
 * job together with chunks of new prompts (at most prefill_chunk prompt
 * tokens per step, so that a long prompt does not stall the others).
 * A job that cannot get KV blocks fails alone; the others go on. */
#include "deploy/sched.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- jobs ---------------------------------------------------------------------- */

srv_job *srv_job_new(int32_t *ids, size_t nids, engine_gen *gen, int adapter, int want_lp, int top_lp)
{
	srv_job *j = owl_xcalloc(1, sizeof *j);
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
	j->refs = 1;
	j->ids = ids;
	j->nids = nids;
	j->gen = gen;
	j->adapter = adapter;
	j->want_lp = want_lp;
	j->top_lp = top_lp;
	j->seq = -1;
	j->t_submit = owl_now();
	j->prompt_tokens = (int)nids;
	owl_buf_init(&j->text, 64u << 20);
	return j;
}

void srv_job_release(srv_job *j)
{
	if (!j)
		return;
	pthread_mutex_lock(&j->mu);
	int last = --j->refs == 0;
	pthread_mutex_unlock(&j->mu);
	if (!last)
		return;
	engine_gen_free(j->gen);
	free(j->ids);
	free(j->lps);
	owl_buf_release(&j->text);
	pthread_cond_destroy(&j->cv);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

void srv_job_emit(void *ctx, const char *text, size_t len)
{
	srv_job *j = ctx;
	/* No wakeup here: the scheduler wakes the waiting HTTP thread once the
	 * step's logprob is recorded too, so a chunk carries a token's text
	 * and its logprob together. */
	pthread_mutex_lock(&j->mu);
	owl_buf_append(&j->text, text, len);
	pthread_mutex_unlock(&j->mu);
}

/* Ends j with an error (under no lock); the scheduler's reference goes. */
static void job_fail(srv_job *j, int status, const char *type, const char *code, const char *msg)
{
	pthread_mutex_lock(&j->mu);
	api_error_set(&j->err, status, type, NULL, code, "%s", msg);
	j->state = SRV_FAILED;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	srv_job_release(j);
}

/* ---- revisions ------------------------------------------------------------------ */

static void met_add(srv_rev *r, int dqueue, int drunning)
{
	pthread_mutex_lock(&r->met->mu);
	r->met->queue_depth += dqueue;
	r->met->running += drunning;
	pthread_mutex_unlock(&r->met->mu);
}

int srv_rev_adapter(const srv_rev *r, const char *name)
{
	for (size_t i = 0; i < r->spec->nadapters; i++)
		if (!strcmp(r->spec->adapters[i].name, name))
			return (int)i;
	return -1;
}

int srv_rev_busy(srv_rev *r)
{
	pthread_mutex_lock(&r->mu);
	int n = r->nqueue + r->nrunning;
	pthread_mutex_unlock(&r->mu);
	return n;
}

void srv_rev_kick(srv_rev *r)
{
	pthread_mutex_lock(&r->mu);
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

int srv_rev_submit(srv_rev *r, srv_job *j, api_error *e)
{
	pthread_mutex_lock(&r->mu);
	int rc = 0;
	if (r->stopping || r->abort) {
		api_error_set(e, 503, "server_error", NULL, "unavailable", "the server is shutting down");
		rc = -1;
	} else if (r->nqueue >= r->o.max_queue) {
		api_error_set(e, 429, "rate_limit_error", NULL, "queue_full", "the server is busy: %d "
			      "requests are waiting already; retry later", r->nqueue);
		rc = -1;
	} else {
		pthread_mutex_lock(&j->mu);
		j->refs++;
		pthread_mutex_unlock(&j->mu);
		r->queue[r->nqueue++] = j;
		pthread_cond_broadcast(&r->cv);
	}
	pthread_mutex_unlock(&r->mu);
	if (!rc)
		met_add(r, 1, 0);
	return rc;
}

/* Frees a running job's sequence and takes it out of the batch. */
static void job_leave(srv_rev *r, int k)
{
	srv_job *j = r->running[k];
	if (j->seq >= 0)
		engine_kv_seq_free(r->kv, j->seq);
	j->seq = -1;
	pthread_mutex_lock(&r->mu);
	r->running[k] = r->running[--r->nrunning];
	pthread_mutex_unlock(&r->mu);
	met_add(r, 0, -1);
}

static void job_finish(srv_rev *r, int k)
{
	srv_job *j = r->running[k];
	const char *why = engine_gen_stop_reason(j->gen);
	job_leave(r, k);
	pthread_mutex_lock(&j->mu);
	snprintf(j->finish, sizeof j->finish, "%s",
		 !strcmp(why, "eos") || !strcmp(why, "stop") ? "stop" : "length");
	j->gen_tokens = engine_gen_count(j->gen);
	j->state = SRV_DONE;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	srv_job_release(j);
}

static void job_fail_running(srv_rev *r, int k, int status, const char *type, const char *code,
			     const char *msg)
{
	srv_job *j = r->running[k];
	job_leave(r, k);
	job_fail(j, status, type, code, msg);
}

/* A newly admitted job gets its sequence, its adapter and what the prefix
 * cache holds of its prompt. */
static int job_start(srv_rev *r, srv_job *j, owl_err *err)
{
	const engine_adapter *ad = j->adapter >= 0 ? r->adapters[j->adapter] : NULL;
	int rc = engine_kv_seq_new(r->kv, (uint64_t)(j->adapter + 1), &j->seq, err);
	if (!rc && (rc = engine_kv_seq_set_adapter(r->kv, j->seq, ad, err)))
		engine_kv_seq_free(r->kv, j->seq);
	if (rc) {
		j->seq = -1;
		return rc;
	}
	j->fed = (size_t)engine_kv_seq_reuse_prefix(r->kv, j->seq, j->ids, (int)j->nids);
	pthread_mutex_lock(&j->mu);
	j->state = SRV_RUNNING;
	j->cached_tokens = (int)j->fed;
	pthread_mutex_unlock(&j->mu);
	pthread_mutex_lock(&r->met->mu);
	r->met->prompt_tokens += j->nids;
	r->met->cached_prompt_tokens += j->fed;
	pthread_mutex_unlock(&r->met->mu);
	return 0;
}

/* The log probability of the sampled token and the best alternatives,
 * from the logits as the model gave them (before penalties). */
static void logprob_of(const float *lg, int vocab, int32_t id, int ntop, srv_logprob *out)
{
	float mx = -INFINITY;
	for (int i = 0; i < vocab; i++)
		mx = fmaxf(mx, lg[i]);
	double s = 0;
	for (int i = 0; i < vocab; i++)
		s += exp((double)lg[i] - mx);
	float lse = mx + (float)log(s);
	out->id = id;
	out->lp = lg[id] - lse;
	out->ntop = 0;
	for (int t = 0; t < ntop; t++) {
		int best = -1;
		for (int i = 0; i < vocab; i++) {
			int taken = 0;
			for (int q = 0; q < out->ntop && !taken; q++)
				taken = out->top_id[q] == i;
			if (!taken && (best < 0 || lg[i] > lg[best]))
				best = i;
		}
		if (best < 0)
			break;
		out->top_id[out->ntop] = best;
		out->top_lp[out->ntop++] = lg[best] - lse;
	}
}

static void record_lp(srv_job *j, const srv_logprob *lp)
{
	pthread_mutex_lock(&j->mu);
	if (j->nlps == j->caplps) {
		size_t cap = j->caplps ? j->caplps * 2 : 16;
		srv_logprob *n = realloc(j->lps, cap * sizeof *n);
		if (!n) {
			pthread_mutex_unlock(&j->mu);
			return;
		}
		j->lps = n, j->caplps = cap;
	}
	j->lps[j->nlps++] = *lp;
	pthread_mutex_unlock(&j->mu);
}

/* Takes queued jobs into free slots; fails those that waited too long or
 * whose client left. Under r->mu. */
static int admit(srv_rev *r, srv_job **newly)
{
	double now = owl_now();
	int nnew = 0, keep = 0;
	for (int i = 0; i < r->nqueue; i++) {
		srv_job *j = r->queue[i];
		pthread_mutex_lock(&j->mu);
		int gone = j->cancelled;
		pthread_mutex_unlock(&j->mu);
		if (gone || now - j->t_submit > r->o.queue_timeout_s || r->abort) {
			/* j->mu is not held: job_fail takes it. */
			job_fail(j, 503, "server_error", "queue_timeout", gone ? "the client went away" :
				 r->abort ? "the server is shutting down" :
				 "the request waited too long in the queue for a slot; retry later");
			continue;
		}
		if (r->nrunning + nnew < r->o.max_batch)
			newly[nnew++] = j;
		else
			r->queue[keep++] = j;
	}
	int dq = r->nqueue - keep;
	r->nqueue = keep;
	if (dq)
		met_add(r, -dq, 0);
	return nnew;
}

static void update_kv_metrics(srv_rev *r, int *last_used)
{
	engine_kv_stats st;
	engine_kv_get_stats(r->kv, &st);
	pthread_mutex_lock(&r->met->mu);
	r->met->kv_blocks_used += st.blocks_used - *last_used;
	pthread_mutex_unlock(&r->met->mu);
	*last_used = st.blocks_used;
}

static void *sched_main(void *arg)
{
	srv_rev *r = arg;
	int cap = r->o.max_batch + r->o.prefill_chunk;
	int32_t *tok = owl_xmalloc((size_t)cap * sizeof *tok), *seq = owl_xmalloc((size_t)cap * sizeof *seq);
	uint8_t *want = owl_xmalloc((size_t)cap);
	int *take = owl_xmalloc((size_t)r->o.max_batch * sizeof *take);
	float *logits = owl_xmalloc((size_t)r->o.max_batch * r->vocab * sizeof *logits);
	float *raw = owl_xmalloc((size_t)r->vocab * sizeof *raw);
	engine_row_sample *dev_rows = owl_xmalloc((size_t)r->o.max_batch * sizeof *dev_rows);
	int32_t *dev_ids = owl_xmalloc((size_t)r->o.max_batch * sizeof *dev_ids);
	srv_job **newly = owl_xmalloc((size_t)r->o.max_batch * sizeof *newly);
	int kv_used = 0;
	for (;;) {
		pthread_mutex_lock(&r->mu);
		while (!r->abort && r->nrunning == 0 && r->nqueue == 0 && !r->stopping) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 200 * 1000000L;
			if (ts.tv_nsec >= 1000000000L)
				ts.tv_sec++, ts.tv_nsec -= 1000000000L;
			pthread_cond_timedwait(&r->cv, &r->mu, &ts);
		}
		int nnew = admit(r, newly);
		int aborting = r->abort;
		int quit = aborting || (r->stopping && r->nrunning == 0 && r->nqueue == 0 && nnew == 0);
		pthread_mutex_unlock(&r->mu);
		for (int i = 0; i < nnew; i++) {
			owl_err err = {0};
			if (job_start(r, newly[i], &err)) {
				job_fail(newly[i], 500, "server_error", NULL, err.msg);
				continue;
			}
			pthread_mutex_lock(&r->mu);
			r->running[r->nrunning++] = newly[i];
			pthread_mutex_unlock(&r->mu);
			met_add(r, 0, 1);
		}
		if (aborting) {
			while (r->nrunning > 0)
				job_fail_running(r, 0, 503, "server_error", "unavailable",
						 "the server shut down before the request finished");
		}
		if (quit)
			break;
		/* The batch: one run per job, in slot order. */
		int n = 0, budget = r->o.prefill_chunk;
		for (int k = 0; k < r->nrunning;) {
			srv_job *j = r->running[k];
			pthread_mutex_lock(&j->mu);
			int gone = j->cancelled;
			pthread_mutex_unlock(&j->mu);
			if (gone) {
				engine_gen_stop(j->gen, "cancelled");
				job_fail_running(r, k, 499, "server_error", NULL, "the client went away");
				continue;
			}
			int m = 1;
			if (j->fed < j->nids) {
				size_t left = j->nids - j->fed;
				m = left < (size_t)budget ? (int)left : budget;
				if (m == 0) {
					take[k++] = 0; /* its prompt continues next step */
					continue;
				}
			}
			owl_err err = {0};
			int rc = engine_kv_reserve(r->kv, j->seq, m, &err);
			if (rc == OWL_EUSAGE && j->fed >= j->nids) {
				engine_gen_stop(j->gen, "context_full");
				job_finish(r, k);
				continue;
			}
			if (rc) {
				job_fail_running(r, k, 503, "server_error", "kv_cache_full", err.msg);
				continue;
			}
			if (j->fed < j->nids) {
				for (int i = 0; i < m; i++, n++)
					tok[n] = j->ids[j->fed + (size_t)i], seq[n] = j->seq,
					want[n] = j->fed + (size_t)i + 1 == j->nids;
				budget -= m;
			} else {
				tok[n] = j->next, seq[n] = j->seq, want[n] = 1, n++;
			}
			take[k++] = m;
		}
		if (n == 0)
			continue;
		/* On a device backend, the jobs whose options the backend's sample
		 * op takes (no penalties, no min_p, no logprobs, which need the
		 * logits) are sampled there: only their tokens come back. Their
		 * rows are those of the runs that want logits, in slot order. */
		engine_batch b = {.n = n, .tokens = tok, .seq = seq, .want = want};
		if (engine_kv_can_sample(r->kv)) {
			int nrow = 0;
			for (int k = 0; k < r->nrunning; k++) {
				srv_job *j = r->running[k];
				if (!take[k] || (j->fed < j->nids && j->fed + (size_t)take[k] < j->nids))
					continue;
				engine_row_sample *rs = &dev_rows[nrow++];
				if (j->want_lp)
					memset(rs, 0, sizeof *rs);
				else
					engine_gen_device_row(j->gen, rs);
			}
			b.sample = dev_rows;
			b.sampled = dev_ids;
		}
		owl_err err = {0};
		if (engine_decode(r->kv, &b, logits, &err)) {
			owl_log(1, "revision %lld: a batch of %d tokens failed: %s", (long long)r->revision, n,
				err.msg);
			for (int k = r->nrunning - 1; k >= 0; k--)
				if (take[k])
					job_fail_running(r, k, 500, "server_error", NULL, err.msg);
			continue;
		}
		/* Sample for every job whose run wanted logits, in batch order;
		 * walk backwards over slots by index so that finishing one (which
		 * moves the last slot into its place) does not skip another. */
		int row = 0, rows[r->o.max_batch];
		for (int k = 0; k < r->nrunning; k++) {
			srv_job *j = r->running[k];
			rows[k] = -1;
			if (!take[k])
				continue;
			if (j->fed < j->nids) {
				j->fed += (size_t)take[k];
				if (j->fed < j->nids)
					continue;
			}
			rows[k] = row++;
		}
		uint64_t gen_new = 0;
		double now = owl_now();
		for (int k = r->nrunning - 1; k >= 0; k--) {
			if (rows[k] < 0)
				continue;
			srv_job *j = r->running[k];
			float *lg = logits + (size_t)rows[k] * r->vocab;
			int on_dev = b.sample && dev_rows[rows[k]].device;
			if (j->want_lp)
				memcpy(raw, lg, (size_t)r->vocab * sizeof *raw);
			int before = engine_gen_count(j->gen);
			int go = on_dev ? engine_gen_step_token(j->gen, dev_ids[rows[k]], &j->next)
					: engine_gen_step(j->gen, lg, &j->next);
			int after = engine_gen_count(j->gen);
			if (after > before) {
				gen_new++;
				if (j->want_lp) {
					srv_logprob lp;
					logprob_of(raw, r->vocab, engine_gen_tokens(j->gen)[after - 1], j->top_lp,
						   &lp);
					record_lp(j, &lp);
				}
			}
			pthread_mutex_lock(&j->mu);
			int first = j->t_first == 0;
			if (first)
				j->t_first = now;
			j->gen_tokens = after;
			pthread_cond_broadcast(&j->cv);
			pthread_mutex_unlock(&j->mu);
			if (first)
				srv_metrics_observe(r->met, &r->met->ttft, now - j->t_submit);
			else
				srv_metrics_observe(r->met, &r->met->itl, now - j->t_prev);
			j->t_prev = now;
			if (!go)
				job_finish(r, k);
		}
		pthread_mutex_lock(&r->met->mu);
		r->met->generation_tokens += gen_new;
		pthread_mutex_unlock(&r->met->mu);
		update_kv_metrics(r, &kv_used);
	}
	update_kv_metrics(r, &kv_used);
	free(tok), free(seq), free(want), free(take), free(logits), free(raw), free(newly);
	free(dev_rows), free(dev_ids);
	return NULL;
}

int srv_rev_load(deploy_spec *spec, const srv_rev_opts *o, srv_metrics *met, srv_rev **out,
		 owl_err *err)
{
	srv_rev *r = owl_xcalloc(1, sizeof *r);
	r->revision = spec->revision;
	r->spec = spec;
	r->o = *o;
	r->met = met;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->queue = owl_xcalloc((size_t)o->max_queue, sizeof *r->queue);
	r->running = owl_xcalloc((size_t)o->max_batch, sizeof *r->running);
	r->adapters = owl_xcalloc(spec->nadapters + 1, sizeof *r->adapters);
	engine_model_opts mo = {.tp = spec->tp, .threads = spec->threads, .kv_type = spec->kv_type,
				.device = (engine_device)spec->device, .first_gpu = spec->first_gpu};
	int rc = engine_model_open(spec->model_dir, &mo, &r->model, err);
	if (rc)
		owl_err_wrap(err, "revision %lld: %s", (long long)spec->revision, spec->model_dir);
	if (!rc && (rc = engine_tokenizer_for_model(r->model, &r->tok, err)))
		owl_err_wrap(err, "revision %lld: tokenizer", (long long)spec->revision);
	for (size_t i = 0; !rc && i < spec->nadapters; i++)
		if ((rc = engine_adapter_load(r->model, spec->adapters[i].dir, &r->adapters[i], err)))
			owl_err_wrap(err, "revision %lld: adapter %s", (long long)spec->revision,
				     spec->adapters[i].name);
	if (!rc) {
		const engine_model_info *in = engine_model_get_info(r->model);
		r->vocab = in->vocab;
		r->max_seq = spec->ctx > 0 && spec->ctx < in->ctx_train ? spec->ctx : in->ctx_train;
		r->chat = engine_chat_detect(engine_tokenizer_chat_template(r->tok));
		long long tokens = o->kv_tokens > 0 ? o->kv_tokens : (long long)o->max_batch * r->max_seq;
		if (tokens < r->max_seq)
			r->max_seq = (int)tokens;
		engine_kv_opts ko = {.n_tokens = tokens > (1 << 24) ? 1 << 24 : (int)tokens,
				     .max_seq_tokens = r->max_seq, .type = spec->kv_type};
		if ((rc = engine_kv_new(r->model, &ko, &r->kv, err)))
			owl_err_wrap(err, "revision %lld", (long long)spec->revision);
	}
	if (!rc && pthread_create(&r->thread, NULL, sched_main, r) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "revision %lld: cannot start its scheduler thread",
				 (long long)spec->revision);
	if (rc) {
		srv_rev_free(r, 1);
		return rc;
	}
	r->started = 1;
	engine_kv_stats st;
	engine_kv_get_stats(r->kv, &st);
	pthread_mutex_lock(&met->mu);
	met->kv_blocks_total += st.blocks_total;
	met->loaded_revisions++;
	pthread_mutex_unlock(&met->mu);
	*out = r;
	return 0;
}

void srv_rev_free(srv_rev *r, int abort)
{
	if (!r)
		return;
	if (r->started) {
		pthread_mutex_lock(&r->mu);
		r->stopping = 1;
		if (abort)
			r->abort = 1;
		pthread_cond_broadcast(&r->cv);
		pthread_mutex_unlock(&r->mu);
		pthread_join(r->thread, NULL);
		engine_kv_stats st;
		engine_kv_get_stats(r->kv, &st);
		pthread_mutex_lock(&r->met->mu);
		r->met->kv_blocks_total -= st.blocks_total;
		r->met->loaded_revisions--;
		pthread_mutex_unlock(&r->met->mu);
	}
	engine_kv_free(r->kv);
	for (size_t i = 0; r->adapters && i < r->spec->nadapters; i++)
		engine_adapter_free(r->adapters[i]);
	free(r->adapters);
	engine_tokenizer_free(r->tok);
	engine_model_close(r->model);
	free(r->queue);
	free(r->running);
	pthread_cond_destroy(&r->cv);
	pthread_mutex_destroy(&r->mu);
	deploy_spec_free(r->spec);
	free(r);
}
