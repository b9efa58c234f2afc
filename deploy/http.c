/* Connections, routes, bearer auth and the access log. libmicrohttpd runs
 * a thread per connection: a request's thread may wait for its job, and a
 * streaming response's reader for the next tokens. */
#define _GNU_SOURCE
#include "deploy/http.h"

#include <poll.h>
#include <stdlib.h>
#include <string.h>

void http_conn_put(conn *c)
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

enum MHD_Result http_send_body(conn *c, struct MHD_Connection *mc, int status, const char *ctype,
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

enum MHD_Result http_send_json(conn *c, struct MHD_Connection *mc, int status, json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return http_send_body(c, mc, status, "application/json", s);
}

enum MHD_Result http_send_error(conn *c, struct MHD_Connection *mc, const api_error *e)
{
	return http_send_body(c, mc, e->status, "application/json", api_error_json(e));
}

enum MHD_Result http_send_err(conn *c, struct MHD_Connection *mc, int status, const char *type,
				const char *param, const char *code, const char *msg)
{
	api_error e;
	api_error_set(&e, status, type, param, code, "%s", msg);
	return http_send_error(c, mc, &e);
}

/* Whether the peer closed its side (a request waiting for its job). */
int http_client_gone(int fd)
{
	if (fd < 0)
		return 0;
	struct pollfd p = {.fd = fd, .events = POLLRDHUP};
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

int http_conn_fd(struct MHD_Connection *mc)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
	return ci ? ci->connect_fd : -1;
}

/* ---- revisions as the HTTP side sees them ----------------------------------------- */

srv_rev *http_rev_take(srv *s)
{
	pthread_mutex_lock(&s->mu);
	srv_rev *r = s->draining ? NULL : s->cur;
	if (r)
		r->users++;
	pthread_mutex_unlock(&s->mu);
	return r;
}

void http_rev_put(srv *s, srv_rev *r)
{
	pthread_mutex_lock(&s->mu);
	r->users--;
	pthread_mutex_unlock(&s->mu);
}

/* ---- the other routes -------------------------------------------------------------- */

/* GET /v1/models, or GET /v1/models/ID when one is non-NULL. */
/* src as one token of an access-log line: the path arrives percent-decoded,
 * so a client could otherwise write a newline and forge a line of its own.
 * Bytes outside printable ASCII, and spaces, become '?'. */
static void log_token(char *dst, size_t cap, const char *src)
{
	size_t i = 0;
	for (; src[i] && i + 1 < cap; i++) {
		unsigned char ch = (unsigned char)src[i];
		dst[i] = ch > ' ' && ch < 0x7f ? (char)ch : '?';
	}
	dst[i] = 0;
}

static enum MHD_Result handle_models(srv *s, conn *c, struct MHD_Connection *mc, const char *one)
{
	srv_rev *r = http_rev_take(s);
	if (!r)
		return http_send_err(c, mc, 503, "server_error", NULL, "unavailable", "no revision is loaded yet");
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
	http_rev_put(s, r);
	if (!one)
		return http_send_json(c, mc, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
	size_t i;
	json_t *m;
	json_array_foreach(data, i, m) {
		if (!strcmp(json_string_value(json_object_get(m, "id")), one)) {
			json_incref(m);
			json_decref(data);
			return http_send_json(c, mc, 200, m);
		}
	}
	json_decref(data);
	return http_send_err(c, mc, 404, "invalid_request_error", "model", "model_not_found",
			"no such model here (see /v1/models)");
}

static enum MHD_Result handle_health(srv *s, conn *c, struct MHD_Connection *mc)
{
	pthread_mutex_lock(&s->mu);
	const char *state = s->draining ? "draining" : s->cur ? "ok" : "loading";
	json_int_t rev = s->cur ? s->cur->revision : 0;
	pthread_mutex_unlock(&s->mu);
	return http_send_json(c, mc, strcmp(state, "ok") ? 503 : 200,
			 json_pack("{s:s, s:I}", "status", state, "revision", rev));
}

static enum MHD_Result handle_metrics(srv *s, conn *c, struct MHD_Connection *mc)
{
	owl_buf b;
	owl_buf_init(&b, 1u << 20);
	srv_metrics_render(&s->met, &b);
	char *body = owl_buf_steal(&b);
	return http_send_body(c, mc, 200, "text/plain; version=0.0.4", body ? body : owl_xstrdup(""));
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
		return get ? handle_health(s, c, mc) : http_send_err(c, mc, 405, "invalid_request_error", NULL,
								  NULL, "use GET /health");
	if (!strcmp(p, "/metrics"))
		return get ? handle_metrics(s, c, mc) : http_send_err(c, mc, 405, "invalid_request_error", NULL,
								   NULL, "use GET /metrics");
	if (strncmp(p, "/v1/", 4) != 0)
		return http_send_err(c, mc, 404, "invalid_request_error", NULL, "not_found", "no such route "
				"(/v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)");
	if (s->o.auth.authorise) {
		deploy_auth a = s->o.auth.authorise(s->o.auth.ctx, bearer_of(mc), c->key_id,
						    sizeof c->key_id);
		if (a == DEPLOY_AUTH_DENIED)
			return http_send_err(c, mc, 401, "invalid_request_error", NULL, "invalid_api_key",
					"a valid API key is required: send it as 'Authorization: Bearer KEY'");
	}
	if (c->too_big) {
		api_error e;
		api_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large", "the request "
			      "body is larger than this server's limit of %zu bytes", s->o.max_body);
		return http_send_error(c, mc, &e);
	}
	if (!strcmp(p, "/v1/models") || !strncmp(p, "/v1/models/", 11))
		return get ? handle_models(s, c, mc, p[10] == '/' ? p + 11 : NULL)
			   : http_send_err(c, mc, 405, "invalid_request_error", NULL, NULL, "use GET /v1/models");
	int chat = !strcmp(p, "/v1/chat/completions");
	if (chat || !strcmp(p, "/v1/completions")) {
		if (!post)
			return http_send_err(c, mc, 405, "invalid_request_error", NULL, NULL, "use POST");
		return http_generate(s, c, mc, chat ? API_CHAT : API_COMPLETIONS);
	}
	return http_send_err(c, mc, 404, "invalid_request_error", NULL, "not_found", "no such route "
			"(/v1/models, /v1/completions, /v1/chat/completions)");
}

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *mc, const char *url,
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
		log_token(c->method, sizeof c->method, method);
		log_token(c->path, sizeof c->path, url);
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

void http_on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	conn *c = *con_cls;
	if (!c)
		return;
	*con_cls = NULL;
	if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->status < 400)
		c->status = 499;
	http_conn_put(c);
}
