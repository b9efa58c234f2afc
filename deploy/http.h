/* deploy/http: what the server's HTTP files share (server.c: the control
 * loop; http.c: connections, routes, the access log; generate.c: the
 * completion endpoints and their streaming). Internal to deploy/. */
#ifndef OWL_DEPLOY_HTTP_H
#define OWL_DEPLOY_HTTP_H

#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>

#include "deploy/api.h"
#include "deploy/metrics.h"
#include "deploy/sched.h"
#include "deploy/server.h"

enum { MAX_RETIRING = 16 };

/* The server: revisions, metrics, the access log. Revisions: `cur` takes
 * new requests; `prev` finished being current most recently and stays
 * loaded for grace_s, so that a rollback to it is a pointer swap; older
 * ones wait in `retiring` until their last request ends. mu guards the
 * revision pointers, each revision's users, and draining. */
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

/* One HTTP request, from its first byte to its access log line. */
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

/* Drops a reference (the connection's, or a streaming response's); the
 * last writes the access log line and frees c. */
void http_conn_put(conn *c);
/* Queue a response: body (malloc'd) is taken. */
enum MHD_Result http_send_body(conn *c, struct MHD_Connection *mc, int status, const char *ctype,
			       char *body);
enum MHD_Result http_send_json(conn *c, struct MHD_Connection *mc, int status, json_t *o);
enum MHD_Result http_send_error(conn *c, struct MHD_Connection *mc, const api_error *e);
enum MHD_Result http_send_err(conn *c, struct MHD_Connection *mc, int status, const char *type,
			      const char *param, const char *code, const char *msg);
/* Whether the peer closed its side of fd (a request waiting for its job). */
int http_client_gone(int fd);
int http_conn_fd(struct MHD_Connection *mc);
/* The revision new requests go to, held (users) until http_rev_put; NULL
 * while loading or draining. */
srv_rev *http_rev_take(srv *s);
void http_rev_put(srv *s, srv_rev *r);

/* POST /v1/completions and /v1/chat/completions. */
enum MHD_Result http_generate(srv *s, conn *c, struct MHD_Connection *mc, api_kind kind);
/* libmicrohttpd's access handler and completion callback. */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *mc, const char *url,
				const char *method, const char *version, const char *upload,
				size_t *upload_size, void **con_cls);
void http_on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
		       enum MHD_RequestTerminationCode toe);

#endif
