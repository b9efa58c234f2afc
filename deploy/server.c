/* The HTTP side of the server: libmicrohttpd with a thread per connection
 * (a request's thread waits for its job; a streaming response's reader
 * waits for the next tokens), the routes, bearer auth, the access log, and
 * the control loop in deploy_server_run that watches the source for a new
 * revision and swaps to it without dropping a request.
 *
 * Revisions: `cur` takes new requests; `prev` finished being current most
 * recently and stays loaded for grace_s, so that a rollback to it is a
 * pointer swap; older ones wait in `retiring` until their last request
 * ends. A request holds its revision (users) from the moment it picks it
 * until its response is gone, so every response comes whole from one. */
#define _GNU_SOURCE
#include "deploy/server.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "deploy/api.h"
#include "deploy/metrics.h"
#include "deploy/sched.h"

enum { MAX_RETIRING = 16 };

typedef struct srv {
	deploy_server_opts o;
	srv_rev_opts ro;
	struct MHD_Daemon *d;
	pthread_mutex_t mu;
	srv_rev *cur, *prev;
	srv_rev *retiring[MAX_RETIRING];
	int nretiring;
	int draining;
	srv_metrics met;
	FILE *log;
	pthread_mutex_t log_mu;
	uint64_t next_id;
} srv;

static volatile sig_atomic_t got_term, got_hup;
static void on_signal(int sig)
{
	if (sig == SIGHUP)
		got_hup = 1;
	else
		got_term = 1;
}

static void srv_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void srv_say(const char *fmt, ...)
{
	char when[32];
	owl_fmt_time(owl_unix_time(), when, sizeof when);
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s owl serve: ", when);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ---- connections and the access log ---------------------------------------------- */

typedef struct conn {
	srv *s;
	int refs; /* the connection, and a streaming response */
	owl_buf body;
	int too_big;
	double t0;
	char key_id[64];
	char method[16], path[128];
	int status;
	size_t out_bytes;
	int prompt_tokens, gen_tokens;
	int64_t revision;
	char *prompt_text; /* only with log_prompts */
} conn;

static void conn_put(conn *c)
{
	if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	srv *s = c->s;
	double dt = owl_now() - c->t0;
	srv_metrics_request(&s->met, c->status, dt);
	char when[32];
	owl_fmt_time(owl_unix_time(), when, sizeof when);
	char *pt = NULL;
	if (c->prompt_text) {
		json_t *js = json_string(c->prompt_text);
		pt = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
		json_decref(js);
	}
	pthread_mutex_lock(&s->log_mu);
	fprintf(s->log, "%s key=%s %s %s status=%d in=%zu out=%zu prompt_tokens=%d "
		"completion_tokens=%d revision=%lld ms=%.1f%s%s\n", when, *c->key_id ? c->key_id : "-",
		c->method, c->path, c->status, c->body.len, c->out_bytes, c->prompt_tokens, c->gen_tokens,
		(long long)c->revision, dt * 1000, pt ? " prompt=" : "", pt ? pt : "");
	fflush(s->log);
	pthread_mutex_unlock(&s->log_mu);
	free(pt);
	free(c->prompt_text);
	owl_buf_release(&c->body);
	free(c);
}

static enum MHD_Result send_body(conn *c, struct MHD_Connection *mc, int status, const char *ctype,
				 char *body)
{
	size_t n = strlen(body);
	struct MHD_Response *r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(r, "Content-Type", ctype);
	if (status == 401)
		MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
	c->status = status;
	c->out_bytes = n;
	enum MHD_Result rc = MHD_queue_response(mc, (unsigned)status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result send_json(conn *c, struct MHD_Connection *mc, int status, json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return send_body(c, mc, status, "application/json", s);
}

static enum MHD_Result send_error(conn *c, struct MHD_Connection *mc, const api_error *e)
{
	return send_body(c, mc, e->status, "application/json", api_error_json(e));
}

static enum MHD_Result send_err(conn *c, struct MHD_Connection *mc, int status, const char *type,
				const char *param, const char *code, const char *msg)
{
	api_error e;
	api_error_set(&e, status, type, param, code, "%s", msg);
	return send_error(c, mc, &e);
}

/* Whether the peer closed its side (a request waiting for its job). */
static int client_gone(int fd)
{
	if (fd < 0)
		return 0;
	struct pollfd p = {.fd = fd, .events = POLLRDHUP};
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static int conn_fd(struct MHD_Connection *mc)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
	return ci ? ci->connect_fd : -1;
}

/* ---- revisions as the HTTP side sees them ----------------------------------------- */

static srv_rev *rev_take(srv *s)
{
	pthread_mutex_lock(&s->mu);
	srv_rev *r = s->draining ? NULL : s->cur;
	if (r)
		r->users++;
	pthread_mutex_unlock(&s->mu);
	return r;
}

static void rev_put(srv *s, srv_rev *r)
{
	pthread_mutex_lock(&s->mu);
	r->users--;
	pthread_mutex_unlock(&s->mu);
}

/* ---- generation requests ------------------------------------------------------------ */

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
		rev_put(g->s, g->rev);
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
	if (j->text.len > g->text_sent || (g->req.logprobs && j->nlps > g->lp_sent)) {
		json_t *lp = g->req.logprobs ? logprobs_json(g, j->lps, g->lp_sent, j->nlps, g->text_sent)
					     : NULL;
		json_t *text = utf8_json(j->text.data + g->text_sent, j->text.len - g->text_sent);
		sse(&g->pending, chunk_json(g, text, lp, NULL, 0));
		g->text_sent = j->text.len;
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
			if (client_gone(g->fd)) {
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
	conn_put(c);
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
		if (client_gone(g->fd)) {
			gone = 1;
			break;
		}
		wait_a_little(j);
	}
	pthread_mutex_unlock(&j->mu);
	return gone;
}

static enum MHD_Result handle_generate(srv *s, conn *c, struct MHD_Connection *mc, api_kind kind)
{
	api_error e = {0};
	gen_req *g = owl_xcalloc(1, sizeof *g);
	g->s = s, g->c = c;
	g->fd = conn_fd(mc);
	g->created = owl_unix_time();
	owl_buf_init(&g->pending, 64u << 20);
	snprintf(g->id, sizeof g->id, "%s-%llx%04llx", kind == API_CHAT ? "chatcmpl" : "cmpl",
		 (unsigned long long)g->created,
		 (unsigned long long)__atomic_add_fetch(&s->next_id, 1, __ATOMIC_RELAXED));
	enum MHD_Result res;
	if (api_parse_request(kind, c->body.data ? c->body.data : "", c->body.len, &g->req, &e))
		goto fail;
	if (!(g->rev = rev_take(s))) {
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
		res = send_json(c, mc, 200, o);
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
	res = send_error(c, mc, &e);
	gen_req_free(g);
	return res;
}

/* ---- the other routes -------------------------------------------------------------- */

/* GET /v1/models, or GET /v1/models/ID when one is non-NULL. */
static enum MHD_Result handle_models(srv *s, conn *c, struct MHD_Connection *mc, const char *one)
{
	srv_rev *r = rev_take(s);
	if (!r)
		return send_err(c, mc, 503, "server_error", NULL, "unavailable", "no revision is loaded yet");
	const deploy_spec *sp = r->spec;
	json_t *data = json_array();
	json_int_t created = owl_unix_time();
	json_t *lin = json_pack("{s:I, s:s?, s:s?}", "revision", (json_int_t)sp->revision, "model",
				sp->model_ref, "digest", sp->model_digest);
	json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s?, s:n, s:o}", "id", sp->deployment,
					      "object", "model", "created", created, "owned_by", "owl",
					      "root", sp->model_ref, "parent", "lineage", lin));
	for (size_t i = 0; i < sp->nadapters; i++) {
		json_t *al = json_pack("{s:I, s:s?, s:s?, s:s?}", "revision", (json_int_t)sp->revision,
				       "model", sp->model_ref, "digest", sp->model_digest, "adapter",
				       sp->adapters[i].ref);
		json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s, s:s?, s:s, s:o}", "id",
						      sp->adapters[i].name, "object", "model", "created",
						      created, "owned_by", "owl", "root", sp->model_ref,
						      "parent", sp->deployment, "lineage", al));
	}
	c->revision = r->revision;
	rev_put(s, r);
	if (!one)
		return send_json(c, mc, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
	size_t i;
	json_t *m;
	json_array_foreach(data, i, m) {
		if (!strcmp(json_string_value(json_object_get(m, "id")), one)) {
			json_incref(m);
			json_decref(data);
			return send_json(c, mc, 200, m);
		}
	}
	json_decref(data);
	return send_err(c, mc, 404, "invalid_request_error", "model", "model_not_found",
			"no such model here (see /v1/models)");
}

static enum MHD_Result handle_health(srv *s, conn *c, struct MHD_Connection *mc)
{
	pthread_mutex_lock(&s->mu);
	const char *state = s->draining ? "draining" : s->cur ? "ok" : "loading";
	json_int_t rev = s->cur ? s->cur->revision : 0;
	pthread_mutex_unlock(&s->mu);
	return send_json(c, mc, strcmp(state, "ok") ? 503 : 200,
			 json_pack("{s:s, s:I}", "status", state, "revision", rev));
}

static enum MHD_Result handle_metrics(srv *s, conn *c, struct MHD_Connection *mc)
{
	owl_buf b;
	owl_buf_init(&b, 1u << 20);
	srv_metrics_render(&s->met, &b);
	char *body = owl_buf_steal(&b);
	return send_body(c, mc, 200, "text/plain; version=0.0.4", body ? body : owl_xstrdup(""));
}

static const char *bearer_of(struct MHD_Connection *mc)
{
	const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization");
	if (!h)
		return NULL;
	if (strncasecmp(h, "Bearer ", 7) != 0)
		return NULL;
	h += 7;
	while (*h == ' ')
		h++;
	return *h ? h : NULL;
}

static enum MHD_Result route(srv *s, conn *c, struct MHD_Connection *mc)
{
	const char *p = c->path, *m = c->method;
	int get = !strcmp(m, "GET"), post = !strcmp(m, "POST");
	if (!strcmp(p, "/health"))
		return get ? handle_health(s, c, mc) : send_err(c, mc, 405, "invalid_request_error", NULL,
								  NULL, "use GET /health");
	if (!strcmp(p, "/metrics"))
		return get ? handle_metrics(s, c, mc) : send_err(c, mc, 405, "invalid_request_error", NULL,
								   NULL, "use GET /metrics");
	if (strncmp(p, "/v1/", 4) != 0)
		return send_err(c, mc, 404, "invalid_request_error", NULL, "not_found", "no such route "
				"(/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)");
	if (s->o.auth.authorise) {
		deploy_auth a = s->o.auth.authorise(s->o.auth.ctx, bearer_of(mc), c->key_id,
						    sizeof c->key_id);
		if (a == DEPLOY_AUTH_DENIED)
			return send_err(c, mc, 401, "invalid_request_error", NULL, "invalid_api_key",
					"a valid API key is required: send it as 'Authorization: Bearer KEY'");
	}
	if (c->too_big) {
		api_error e;
		api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large", "the request "
			      "body is larger than this server's limit of %zu bytes", s->o.max_body);
		return send_error(c, mc, &e);
	}
	if (!strcmp(p, "/v1/models") || !strncmp(p, "/v1/models/", 11))
		return get ? handle_models(s, c, mc, p[10] == '/' ? p + 11 : NULL)
			   : send_err(c, mc, 405, "invalid_request_error", NULL, NULL, "use GET /v1/models");
	int chat = !strcmp(p, "/v1/chat/completions");
	if (chat || !strcmp(p, "/v1/completions")) {
		if (!post)
			return send_err(c, mc, 405, "invalid_request_error", NULL, NULL, "use POST");
		return handle_generate(s, c, mc, chat ? API_CHAT : API_COMPLETIONS);
	}
	return send_err(c, mc, 404, "invalid_request_error", NULL, "not_found", "no such route "
			"(/v1/models, /v1/completions, /v1/chat/completions)");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	srv *s = cls;
	conn *c = *con_cls;
	if (!c) {
		c = owl_xcalloc(1, sizeof *c);
		c->s = s;
		c->refs = 1;
		c->t0 = owl_now();
		c->status = 500;
		snprintf(c->method, sizeof c->method, "%s", method);
		snprintf(c->path, sizeof c->path, "%s", url);
		owl_buf_init(&c->body, s->o.max_body);
		*con_cls = c;
		return MHD_YES;
	}
	if (*upload_size) {
		if (!c->too_big && owl_buf_append(&c->body, upload, *upload_size))
			c->too_big = 1;
		*upload_size = 0;
		return MHD_YES;
	}
	return route(s, c, mc);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	conn *c = *con_cls;
	if (!c)
		return;
	*con_cls = NULL;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->status < 400)
		c->status = 499;
	conn_put(c);
}

/* ---- the control loop ------------------------------------------------------------------ */

static int load_revision(srv *s, int64_t revision, srv_rev **out, owl_err *err)
{
	deploy_spec *spec = NULL;
	int rc = s->o.source.load(s->o.source.ctx, revision, &spec, err);
	if (rc)
		return rc;
	return srv_rev_load(spec, &s->ro, &s->met, out, err);
}

static void set_serving(srv *s)
{
	pthread_mutex_lock(&s->met.mu);
	s->met.revision = s->cur ? s->cur->revision : 0;
	s->met.ready = s->cur != NULL;
	pthread_mutex_unlock(&s->met.mu);
}

/* Puts r on the list of revisions freed once idle; NULL is fine. */
static void retire(srv *s, srv_rev *r)
{
	if (!r)
		return;
	if (s->nretiring == MAX_RETIRING) {
		/* Too many swaps in flight: wait for the oldest to end. */
		srv_rev *old = s->retiring[0];
		memmove(s->retiring, s->retiring + 1, (MAX_RETIRING - 1) * sizeof *s->retiring);
		s->nretiring--;
		pthread_mutex_unlock(&s->mu);
		for (;;) {
			pthread_mutex_lock(&s->mu);
			int users = old->users;
			pthread_mutex_unlock(&s->mu);
			if (!users)
				break;
			usleep(10000);
		}
		srv_rev_free(old, 0);
		pthread_mutex_lock(&s->mu);
	}
	s->retiring[s->nretiring++] = r;
}

static void check_revision(srv *s, int64_t *failed, int forced)
{
	owl_err err = {0};
	int64_t want = 0;
	if (s->o.source.current(s->o.source.ctx, &want, &err)) {
		if (forced)
			srv_say("cannot read the deployment's current revision: %s", err.msg);
		return;
	}
	pthread_mutex_lock(&s->mu);
	int64_t have = s->cur->revision;
	if (want == have) {
		pthread_mutex_unlock(&s->mu);
		return;
	}
	if (s->prev && s->prev->revision == want) {
		/* Rollback to the revision still in memory: a swap of pointers. */
		srv_rev *r = s->prev;
		s->prev = s->cur;
		s->prev->retired_at = owl_now();
		s->cur = r;
		r->retired_at = 0;
		pthread_mutex_unlock(&s->mu);
		set_serving(s);
		pthread_mutex_lock(&s->met.mu);
		s->met.swaps++;
		pthread_mutex_unlock(&s->met.mu);
		srv_say("revision %lld -> %lld (it was still loaded)", (long long)have, (long long)want);
		return;
	}
	pthread_mutex_unlock(&s->mu);
	if (want == *failed && !forced)
		return; /* reported already; SIGHUP or another revision tries again */
	srv_say("loading revision %lld beside %lld", (long long)want, (long long)have);
	double t0 = owl_now();
	srv_rev *r = NULL;
	if (load_revision(s, want, &r, &err)) {
		*failed = want;
		pthread_mutex_lock(&s->met.mu);
		s->met.swap_failures++;
		s->met.revision_failed = want;
		pthread_mutex_unlock(&s->met.mu);
		srv_say("revision %lld failed to load; revision %lld keeps serving: %s", (long long)want,
			(long long)have, err.msg);
		return;
	}
	pthread_mutex_lock(&s->mu);
	retire(s, s->prev);
	s->prev = s->cur;
	s->prev->retired_at = owl_now();
	s->cur = r;
	pthread_mutex_unlock(&s->mu);
	set_serving(s);
	pthread_mutex_lock(&s->met.mu);
	s->met.swaps++;
	pthread_mutex_unlock(&s->met.mu);
	srv_say("revision %lld -> %lld (loaded in %.1f s); requests in flight finish on %lld",
		(long long)have, (long long)want, owl_now() - t0, (long long)have);
}

/* Frees retired revisions that no request holds any more, and the
 * previous one once its grace period is over. */
static void reap(srv *s)
{
	double now = owl_now();
	pthread_mutex_lock(&s->mu);
	if (s->prev && now - s->prev->retired_at > s->o.grace_s) {
		retire(s, s->prev);
		s->prev = NULL;
	}
	for (int i = 0; i < s->nretiring;) {
		srv_rev *r = s->retiring[i];
		if (r->users || srv_rev_busy(r)) {
			i++;
			continue;
		}
		s->retiring[i] = s->retiring[--s->nretiring];
		pthread_mutex_unlock(&s->mu);
		srv_say("revision %lld unloaded", (long long)r->revision);
		srv_rev_free(r, 0);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
}

static int all_idle(srv *s)
{
	pthread_mutex_lock(&s->mu);
	srv_rev *all[MAX_RETIRING + 2];
	int n = 0;
	if (s->cur)
		all[n++] = s->cur;
	if (s->prev)
		all[n++] = s->prev;
	for (int i = 0; i < s->nretiring; i++)
		all[n++] = s->retiring[i];
	int idle = 1;
	for (int i = 0; i < n; i++)
		if (all[i]->users)
			idle = 0;
	pthread_mutex_unlock(&s->mu);
	return idle;
}

static void abort_all(srv *s)
{
	pthread_mutex_lock(&s->mu);
	srv_rev *all[MAX_RETIRING + 2];
	int n = 0;
	if (s->cur)
		all[n++] = s->cur;
	if (s->prev)
		all[n++] = s->prev;
	for (int i = 0; i < s->nretiring; i++)
		all[n++] = s->retiring[i];
	for (int i = 0; i < n; i++) {
		pthread_mutex_lock(&all[i]->mu);
		all[i]->abort = 1;
		pthread_cond_broadcast(&all[i]->cv);
		pthread_mutex_unlock(&all[i]->mu);
	}
	pthread_mutex_unlock(&s->mu);
}

static void free_all(srv *s)
{
	srv_rev_free(s->cur, 1);
	srv_rev_free(s->prev, 1);
	for (int i = 0; i < s->nretiring; i++)
		srv_rev_free(s->retiring[i], 1);
	s->cur = s->prev = NULL;
	s->nretiring = 0;
}

static void defaults(srv *s, const deploy_server_opts *o)
{
	s->o = *o;
	if (!s->o.host)
		s->o.host = "127.0.0.1";
	if (s->o.port < 0)
		s->o.port = 8080;
	if (s->o.max_batch <= 0)
		s->o.max_batch = 16;
	if (s->o.max_queue <= 0)
		s->o.max_queue = 64;
	if (s->o.queue_timeout_s <= 0)
		s->o.queue_timeout_s = 60;
	if (s->o.max_body == 0)
		s->o.max_body = 1u << 20;
	if (s->o.drain_timeout_s <= 0)
		s->o.drain_timeout_s = 30;
	if (s->o.grace_s <= 0)
		s->o.grace_s = 300;
	s->ro = (srv_rev_opts){.max_batch = s->o.max_batch, .max_queue = s->o.max_queue,
			       .queue_timeout_s = s->o.queue_timeout_s, .prefill_chunk = 256};
}

int deploy_server_run(const deploy_server_opts *o, owl_err *err)
{
	if (!o->source.current || !o->source.load)
		return owl_err_set(err, OWL_EUSAGE, "the server needs a deployment source");
	srv *s = owl_xcalloc(1, sizeof *s);
	defaults(s, o);
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->log_mu, NULL);
	srv_metrics_init(&s->met);
	s->log = stderr;
	int rc = 0;
	if (s->o.access_log && !(s->log = fopen(s->o.access_log, "a"))) {
		s->log = stderr;
		rc = owl_err_set(err, OWL_EFAIL, "cannot open the access log %s", s->o.access_log);
		goto out;
	}
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->o.port)};
	if (inet_pton(AF_INET, s->o.host, &sa.sin_addr) != 1) {
		rc = owl_err_set(err, OWL_EUSAGE, "host '%s' is not an IPv4 address", s->o.host);
		goto out;
	}
	struct sigaction act = {.sa_handler = on_signal}, old_term, old_int, old_hup, old_pipe;
	struct sigaction ign = {.sa_handler = SIG_IGN};
	sigemptyset(&act.sa_mask);
	got_term = got_hup = 0;
	sigaction(SIGTERM, &act, &old_term);
	sigaction(SIGINT, &act, &old_int);
	sigaction(SIGHUP, &act, &old_hup);
	sigaction(SIGPIPE, &ign, &old_pipe);
	s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
				MHD_USE_POLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, s,
				MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
				on_completed, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
				MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)256,
				/* An idle keep-alive connection holds a thread: close it
				 * after five minutes of silence. */
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_END);
	if (!s->d) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot listen on %s:%d (in use, or not permitted)",
				 s->o.host, s->o.port);
		goto restore;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
	int port = di ? di->port : s->o.port;
	srv_say("listening on http://%s:%d", s->o.host, port);
	if (s->o.on_listen)
		s->o.on_listen(s->o.on_listen_ctx, port);
	int64_t first = 0, failed = 0;
	srv_rev *r = NULL;
	if ((rc = s->o.source.current(s->o.source.ctx, &first, err)) ||
	    (rc = load_revision(s, first, &r, err))) {
		owl_err_wrap(err, "cannot serve the deployment");
		MHD_stop_daemon(s->d);
		goto restore;
	}
	pthread_mutex_lock(&s->mu);
	s->cur = r;
	pthread_mutex_unlock(&s->mu);
	set_serving(s);
	srv_say("serving revision %lld (%s)", (long long)first, r->spec->model_ref ? r->spec->model_ref
									: r->spec->model_dir);
	double last_check = owl_now();
	while (!got_term) {
		usleep(50000);
		/* Twice a second, so that a rollback to a revision still in
		 * memory takes effect within a second of the change. */
		if (got_hup || owl_now() - last_check >= 0.5) {
			int forced = got_hup;
			got_hup = 0;
			check_revision(s, &failed, forced);
			last_check = owl_now();
		}
		reap(s);
	}
	/* Drain: new requests get 503, those in flight finish. */
	pthread_mutex_lock(&s->mu);
	s->draining = 1;
	pthread_mutex_unlock(&s->mu);
	set_serving(s);
	srv_say("draining: new requests get 503; waiting up to %.0f s for those in flight",
		s->o.drain_timeout_s);
	double t0 = owl_now();
	while (!all_idle(s) && owl_now() - t0 < s->o.drain_timeout_s)
		usleep(20000);
	if (!all_idle(s)) {
		srv_say("drain timeout: failing the requests still running");
		abort_all(s);
		for (double t1 = owl_now(); !all_idle(s) && owl_now() - t1 < 5;)
			usleep(20000);
	}
	MHD_stop_daemon(s->d);
	free_all(s);
	srv_say("stopped");
restore:
	sigaction(SIGTERM, &old_term, NULL);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGHUP, &old_hup, NULL);
	sigaction(SIGPIPE, &old_pipe, NULL);
out:
	if (s->log != stderr)
		fclose(s->log);
	srv_metrics_destroy(&s->met);
	pthread_mutex_destroy(&s->log_mu);
	pthread_mutex_destroy(&s->mu);
	free(s);
	return rc;
}
