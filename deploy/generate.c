/* The completion endpoints: a request is parsed (api.c), its prompt
 * tokenized on the HTTP thread with the revision's tokenizer, its
 * generation state made, and the job queued on the revision's scheduler;
 * the thread then waits for the whole answer, or streams it as
 * server-sent events in OpenAI's chunk shapes. */
#define _GNU_SOURCE
#include "deploy/http.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct gen_req {
	srv *s;
	conn *c;
	srv_rev *rev;
	srv_job *job;
	api_request req;
	char id[48];
	int64_t created;
	int fd;
	/* streaming */
	owl_buf pending;
	size_t pend_off, text_sent, lp_sent;
	int role_sent, ended;
} gen_req;

static void gen_req_free(gen_req *g)
{
	if (g->job) {
		pthread_mutex_lock(&g->job->mu);
		int live = g->job->state == SRV_QUEUED || g->job->state == SRV_RUNNING;
		if (live)
			g->job->cancelled = 1;
		pthread_mutex_unlock(&g->job->mu);
		if (live)
			srv_rev_kick(g->rev);
		srv_job_release(g->job);
	}
	if (g->rev)
		http_rev_put(g->s, g->rev);
	api_request_free(&g->req);
	owl_buf_release(&g->pending);
	free(g);
}

static json_t *utf8_json(const char *s, size_t n)
{
	char *clean = owl_utf8_sanitize(s, n);
	json_t *j = json_string(clean);
	free(clean);
	return j ? j : json_string("");
}

static json_t *token_json(const engine_tokenizer *tok, int32_t id, json_t **bytes_out)
{
	owl_buf b;
	owl_buf_init(&b, 4096);
	engine_token_bytes(tok, id, &b);
	if (bytes_out) {
		*bytes_out = json_array();
		for (size_t i = 0; i < b.len; i++)
			json_array_append_new(*bytes_out, json_integer((unsigned char)b.data[i]));
	}
	json_t *t = utf8_json(b.data ? b.data : "", b.len);
	owl_buf_release(&b);
	return t;
}

/* Logprobs of lps[from, to) in the shape of the request's endpoint. */
static json_t *logprobs_json(const gen_req *g, const srv_logprob *lps, size_t from, size_t to,
			     size_t text_offset)
{
	const engine_tokenizer *tok = g->rev->tok;
	if (g->req.kind == API_CHAT) {
		json_t *content = json_array();
		for (size_t i = from; i < to; i++) {
			json_t *bytes, *o = json_object();
			json_object_set_new(o, "token", token_json(tok, lps[i].id, &bytes));
			json_object_set_new(o, "logprob", json_real(lps[i].lp));
			json_object_set_new(o, "bytes", bytes);
			json_t *top = json_array();
			for (int k = 0; k < lps[i].ntop; k++) {
				json_t *tb, *t = json_object();
				json_object_set_new(t, "token", token_json(tok, lps[i].top_id[k], &tb));
				json_object_set_new(t, "logprob", json_real(lps[i].top_lp[k]));
				json_object_set_new(t, "bytes", tb);
				json_array_append_new(top, t);
			}
			json_object_set_new(o, "top_logprobs", top);
			json_array_append_new(content, o);
		}
		return json_pack("{s:o}", "content", content);
	}
	json_t *tokens = json_array(), *tlp = json_array(), *top = json_array(), *off = json_array();
	size_t at = text_offset;
	for (size_t i = from; i < to; i++) {
		json_t *t = token_json(tok, lps[i].id, NULL);
		json_array_append_new(off, json_integer((json_int_t)at));
		at += strlen(json_string_value(t));
		json_array_append_new(tokens, t);
		json_array_append_new(tlp, json_real(lps[i].lp));
		json_t *alt = json_object();
		for (int k = 0; k < lps[i].ntop; k++) {
			json_t *tt = token_json(tok, lps[i].top_id[k], NULL);
			json_object_set_new(alt, json_string_value(tt), json_real(lps[i].top_lp[k]));
			json_decref(tt);
		}
		json_array_append_new(top, alt);
	}
	return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", tlp,
			 "top_logprobs", top, "text_offset", off);
}

static json_t *usage_json(const srv_job *j)
{
	return json_pack("{s:i, s:i, s:i, s:{s:i}}", "prompt_tokens", j->prompt_tokens,
			 "completion_tokens", j->gen_tokens, "total_tokens", j->prompt_tokens + j->gen_tokens,
			 "prompt_tokens_details", "cached_tokens", j->cached_tokens);
}

static json_t *envelope(const gen_req *g, int chunk)
{
	char fp[40];
	snprintf(fp, sizeof fp, "owl-rev-%lld", (long long)g->rev->revision);
	const char *object = g->req.kind == API_CHAT ? chunk ? "chat.completion.chunk" : "chat.completion"
						     : "text_completion";
	return json_pack("{s:s, s:s, s:I, s:s, s:s}", "id", g->id, "object", object, "created",
			 (json_int_t)g->created, "model", g->req.model, "system_fingerprint", fp);
}

/* The whole response of a finished job (under the job's lock). */
static json_t *final_json(const gen_req *g)
{
	const srv_job *j = g->job;
	json_t *o = envelope(g, 0), *choice = json_object();
	json_object_set_new(choice, "index", json_integer(0));
	json_t *text = utf8_json(j->text.data ? j->text.data : "", j->text.len);
	if (g->req.kind == API_CHAT)
		json_object_set_new(choice, "message", json_pack("{s:s, s:o}", "role", "assistant",
								 "content", text));
	else
		json_object_set_new(choice, "text", text);
	json_object_set_new(choice, "logprobs", g->req.logprobs ? logprobs_json(g, j->lps, 0, j->nlps, 0)
							       : json_null());
	json_object_set_new(choice, "finish_reason", json_string(j->finish));
	json_object_set_new(o, "choices", json_pack("[o]", choice));
	json_object_set_new(o, "usage", usage_json(j));
	return o;
}

static void sse(owl_buf *b, json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	owl_buf_printf(b, "data: %s\n\n", s);
	free(s);
}

/* The chunk of a streaming response: delta text, logprobs, finish reason. */
static json_t *chunk_json(const gen_req *g, json_t *text, json_t *lp, const char *finish, int role)
{
	json_t *o = envelope(g, 1), *choice = json_object();
	json_object_set_new(choice, "index", json_integer(0));
	if (g->req.kind == API_CHAT) {
		json_t *delta = json_object();
		if (role)
			json_object_set_new(delta, "role", json_string("assistant"));
		if (text)
			json_object_set_new(delta, "content", text);
		json_object_set_new(choice, "delta", delta);
	} else {
		json_object_set_new(choice, "text", text ? text : json_string(""));
	}
	json_object_set_new(choice, "logprobs", lp ? lp : json_null());
	json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
	json_object_set_new(o, "choices", json_pack("[o]", choice));
	if (g->req.include_usage)
		json_object_set_new(o, "usage", json_null());
	return o;
}

/* How many of the n bytes at p end on a character boundary: a UTF-8
 * sequence cut short at the end is left for later. */
static size_t utf8_whole(const char *p, size_t n)
{
	const unsigned char *u = (const unsigned char *)p;
	for (size_t back = 1; back <= 4 && back <= n; back++) {
		unsigned char ch = u[n - back];
		if ((ch & 0xC0) == 0x80)
			continue; /* a continuation byte: look further back */
		size_t need = ch >= 0xF0 ? 4 : ch >= 0xE0 ? 3 : ch >= 0xC0 ? 2 : 1;
		return need > back ? n - back : n;
	}
	return n; /* not UTF-8 at all: nothing to wait for */
}

/* Appends what the job has produced since the last call as SSE events
 * (under the job's lock); returns whether anything was added. */
static int stream_events(gen_req *g)
{
	srv_job *j = g->job;
	size_t before = g->pending.len;
	if (g->req.kind == API_CHAT && !g->role_sent) {
		sse(&g->pending, chunk_json(g, json_string(""), NULL, NULL, 1));
		g->role_sent = 1;
	}
	/* Text goes out in whole characters: the generator may hold back the
	 * last bytes of a character while a stop string could be starting, and
	 * half a character sent alone would reach the client as U+FFFD. */
	int ended = j->state == SRV_DONE || j->state == SRV_FAILED;
	size_t ready = ended ? j->text.len : g->text_sent + utf8_whole(j->text.data + g->text_sent,
								      j->text.len - g->text_sent);
	if (ready > g->text_sent || (g->req.logprobs && j->nlps > g->lp_sent)) {
		json_t *lp = g->req.logprobs ? logprobs_json(g, j->lps, g->lp_sent, j->nlps, g->text_sent)
					     : NULL;
		json_t *text = utf8_json(j->text.data + g->text_sent, ready - g->text_sent);
		sse(&g->pending, chunk_json(g, text, lp, NULL, 0));
		g->text_sent = ready;
		g->lp_sent = j->nlps;
	}
	if (j->state == SRV_DONE) {
		sse(&g->pending, chunk_json(g, g->req.kind == API_CHAT ? NULL : json_string(""), NULL,
					    j->finish, 0));
		if (g->req.include_usage) {
			json_t *o = envelope(g, 1);
			json_object_set_new(o, "choices", json_array());
			json_object_set_new(o, "usage", usage_json(j));
			sse(&g->pending, o);
		}
	} else if (j->state == SRV_FAILED) {
		char *e = api_error_json(&j->err);
		owl_buf_printf(&g->pending, "data: %s\n\n", e);
		free(e);
	}
	if (j->state == SRV_DONE || j->state == SRV_FAILED) {
		owl_buf_printf(&g->pending, "data: [DONE]\n\n");
		g->ended = 1;
		g->c->prompt_tokens = j->prompt_tokens;
		g->c->gen_tokens = j->gen_tokens;
	}
	return g->pending.len > before;
}

static void wait_a_little(srv_job *j)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 50 * 1000000L;
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_sec++, ts.tv_nsec -= 1000000000L;
	pthread_cond_timedwait(&j->cv, &j->mu, &ts);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	gen_req *g = cls;
	for (;;) {
		if (g->pend_off < g->pending.len) {
			size_t n = g->pending.len - g->pend_off;
			if (n > max)
				n = max;
			memcpy(buf, g->pending.data + g->pend_off, n);
			g->pend_off += n;
			g->c->out_bytes += n;
			return (ssize_t)n;
		}
		if (g->ended)
			return MHD_CONTENT_READER_END_OF_STREAM;
		g->pending.len = 0;
		g->pend_off = 0;
		srv_job *j = g->job;
		pthread_mutex_lock(&j->mu);
		while (!stream_events(g)) {
			if (http_client_gone(g->fd)) {
				pthread_mutex_unlock(&j->mu);
				g->c->status = 499;
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			wait_a_little(j);
		}
		pthread_mutex_unlock(&j->mu);
	}
}

static void stream_free(void *cls)
{
	gen_req *g = cls;
	conn *c = g->c;
	if (!g->ended) {
		c->status = 499;
		pthread_mutex_lock(&g->job->mu);
		c->prompt_tokens = g->job->prompt_tokens;
		c->gen_tokens = g->job->gen_tokens;
		pthread_mutex_unlock(&g->job->mu);
	}
	gen_req_free(g);
	http_conn_put(c);
}

/* Tokenizes the request's prompt for revision r and checks it fits. */
static int prepare_prompt(gen_req *g, int32_t **ids, size_t *nids, api_error *e)
{
	srv_rev *r = g->rev;
	api_request *q = &g->req;
	owl_err err = {0};
	if (q->kind == API_COMPLETIONS && q->prompt_ids) {
		for (size_t i = 0; i < q->nprompt_ids; i++)
			if (q->prompt_ids[i] >= r->vocab) {
				api_error_set(e, 400, "invalid_request_error", "prompt", NULL, "token id %d is "
					      "outside the vocabulary of %d tokens", q->prompt_ids[i], r->vocab);
				return -1;
			}
		*ids = malloc(q->nprompt_ids * sizeof **ids);
		if (!*ids) {
			api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
			return -1;
		}
		memcpy(*ids, q->prompt_ids, q->nprompt_ids * sizeof **ids);
		*nids = q->nprompt_ids;
	} else {
		char *text = q->prompt;
		if (q->kind == API_CHAT) {
			engine_chat_msg *m = malloc(q->nmsgs * sizeof *m);
			if (!m) {
				api_error_set(e, 500, "server_error", NULL, NULL, "out of memory");
				return -1;
			}
			for (size_t i = 0; i < q->nmsgs; i++)
				m[i] = (engine_chat_msg){q->msgs[i].role, q->msgs[i].content};
			int bos = engine_token_bos(r->tok), eos = engine_token_eos(r->tok);
			text = engine_chat_render(r->chat, m, q->nmsgs, 1, bos >= 0 ? engine_token_text(r->tok, bos)
					: "", eos >= 0 ? engine_token_text(r->tok, eos) : "");
			free(m);
		}
		int rc = engine_tokenize(r->tok, text, strlen(text), q->kind == API_COMPLETIONS,
					 q->kind == API_CHAT, ids, nids, &err);
		if (g->s->o.log_prompts && !g->c->prompt_text)
			g->c->prompt_text = owl_xstrdup(text);
		if (text != q->prompt)
			free(text);
		if (rc) {
			api_error_set(e, 400, "invalid_request_error", "prompt", NULL, "%s", err.msg);
			return -1;
		}
	}
	if (*nids == 0)
		api_error_set(e, 400, "invalid_request_error", "prompt", NULL, "the prompt is empty");
	else if (*nids >= (size_t)r->max_seq)
		api_error_set(e, 400, "invalid_request_error", q->kind == API_CHAT ? "messages" : "prompt",
			      "context_length_exceeded", "this model's maximum context length is %d tokens; "
			      "the prompt has %zu tokens, which leaves no room to generate", r->max_seq, *nids);
	else
		return 0;
	free(*ids);
	*ids = NULL;
	return -1;
}

/* The generation state for the request's parameters. */
static int prepare_gen(gen_req *g, size_t nids, const int32_t *ids, api_error *e)
{
	srv_rev *r = g->rev;
	api_request *q = &g->req;
	int room = r->max_seq - (int)nids;
	int limit = g->s->o.max_tokens_limit > 0 ? g->s->o.max_tokens_limit : r->max_seq;
	const char *mt_param = q->kind == API_CHAT ? "max_completion_tokens" : "max_tokens";
	int mt = q->max_tokens;
	if (mt > limit) {
		api_error_set(e, 400, "invalid_request_error", mt_param, NULL, "max_tokens is %d: this "
			      "server allows at most %d", mt, limit);
		return -1;
	}
	if (mt > room) {
		api_error_set(e, 400, "invalid_request_error", mt_param, "context_length_exceeded",
			      "this model's maximum context length is %d tokens; the prompt has %zu tokens "
			      "and max_tokens asks for %d more", r->max_seq, nids, mt);
		return -1;
	}
	if (mt < 0) /* not given: OpenAI's 16 for completions, the room left for chat */
		mt = q->kind == API_CHAT ? room : 16;
	if (mt > room)
		mt = room;
	if (mt > limit)
		mt = limit;
	engine_gen_opts go = {.max_tokens = mt, .vocab = r->vocab, .nstop = q->nstop,
			      .stop = (const char *const *)q->stop};
	go.sampling = (engine_sampler_opts){.temperature = (float)q->temperature, .top_p = (float)q->top_p,
					    .repeat_penalty = 1.0f,
					    .frequency_penalty = (float)q->frequency_penalty,
					    .presence_penalty = (float)q->presence_penalty};
	if (q->has_seed)
		go.sampling.seed = q->seed;
	else
		go.sampling.seed = (uint64_t)owl_unix_time() * 0x9E3779B97F4A7C15ull ^
				   __atomic_add_fetch(&g->s->next_id, 1, __ATOMIC_RELAXED);
	owl_err err = {0};
	engine_gen *gen = NULL;
	if (engine_gen_new(r->tok, &go, ids, nids, srv_job_emit, g->job, &gen, &err)) {
		api_error_set(e, 400, "invalid_request_error", NULL, NULL, "%s", err.msg);
		return -1;
	}
	g->job->gen = gen;
	return 0;
}

/* Waits for the job to leave the queue (streaming) or to end; returns
 * whether the client went away meanwhile. */
static int wait_job(gen_req *g, int until_done)
{
	srv_job *j = g->job;
	int gone = 0;
	pthread_mutex_lock(&j->mu);
	while (until_done ? j->state < SRV_DONE : j->state == SRV_QUEUED) {
		if (http_client_gone(g->fd)) {
			gone = 1;
			break;
		}
		wait_a_little(j);
	}
	pthread_mutex_unlock(&j->mu);
	return gone;
}

enum MHD_Result http_generate(srv *s, conn *c, struct MHD_Connection *mc, api_kind kind)
{
	api_error e = {0};
	gen_req *g = owl_xcalloc(1, sizeof *g);
	g->s = s, g->c = c;
	g->fd = http_conn_fd(mc);
	g->created = owl_unix_time();
	owl_buf_init(&g->pending, 64u << 20);
	snprintf(g->id, sizeof g->id, "%s-%llx%04llx", kind == API_CHAT ? "chatcmpl" : "cmpl",
		 (unsigned long long)g->created,
		 (unsigned long long)__atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
	enum MHD_Result res;
	if (api_parse_request(kind, c->body.data ? c->body.data : "", c->body.len, &g->req, &e))
		goto fail;
	if (!(g->rev = http_rev_take(s))) {
		pthread_mutex_lock(&s->mu);
		int draining = s->draining;
		pthread_mutex_unlock(&s->mu);
		api_error_set(&e, 503, "server_error", NULL, "unavailable", draining ? "the server is "
			      "shutting down" : "the model is still loading; retry shortly");
		goto fail;
	}
	c->revision = g->rev->revision;
	int adapter = -1;
	if (strcmp(g->req.model, g->rev->spec->deployment) != 0 &&
	    (adapter = srv_rev_adapter(g->rev, g->req.model)) < 0) {
		api_error_set(&e, 404, "invalid_request_error", "model", "model_not_found", "the model "
			      "'%.200s' does not exist here: this server serves '%s'%s (see /v1/models)",
			      g->req.model, g->rev->spec->deployment, g->rev->spec->nadapters ?
			      " and its adapters" : "");
		goto fail;
	}
	int32_t *ids = NULL;
	size_t nids = 0;
	if (prepare_prompt(g, &ids, &nids, &e))
		goto fail;
	g->job = srv_job_new(ids, nids, NULL, adapter, g->req.logprobs, g->req.top_logprobs);
	g->job->t_submit = c->t0;
	if (prepare_gen(g, nids, ids, &e) || srv_rev_submit(g->rev, g->job, &e))
		goto fail;
	if (!g->req.stream) {
		if (wait_job(g, 1)) {
			c->status = 499;
			gen_req_free(g);
			return MHD_NO;
		}
		srv_job *j = g->job;
		pthread_mutex_lock(&j->mu);
		c->prompt_tokens = j->prompt_tokens, c->gen_tokens = j->gen_tokens;
		if (j->state == SRV_FAILED) {
			e = j->err;
			pthread_mutex_unlock(&j->mu);
			goto fail;
		}
		json_t *o = final_json(g);
		pthread_mutex_unlock(&j->mu);
		res = http_send_json(c, mc, 200, o);
		gen_req_free(g);
		return res;
	}
	/* Streaming: the status is known once the job runs or fails. */
	if (wait_job(g, 0)) {
		c->status = 499;
		gen_req_free(g);
		return MHD_NO;
	}
	pthread_mutex_lock(&g->job->mu);
	int failed = g->job->state == SRV_FAILED;
	if (failed)
		e = g->job->err;
	pthread_mutex_unlock(&g->job->mu);
	if (failed)
		goto fail;
	struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024,
								   stream_read, g, stream_free);
	MHD_add_response_header(r, "Content-Type", "text/event-stream");
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	c->status = 200;
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_ACQ_REL);
	res = MHD_queue_response(mc, 200, r);
	MHD_destroy_response(r);
	return res;
fail:
	res = http_send_error(c, mc, &e);
	gen_req_free(g);
	return res;
}
