/* deploy/server: the OpenAI-compatible HTTP server (libmicrohttpd) and its
 * scheduler, which batches every running request into one engine_decode
 * step (continuous batching). It serves whatever its source says is the
 * current revision, and swaps to a new revision without dropping a
 * request. It knows no SQLite: the deployment records (deploy/deploy.h)
 * give it a source and an authoriser through the callbacks below. */
#ifndef OWL_DEPLOY_SERVER_H
#define OWL_DEPLOY_SERVER_H

#include "common/common.h"

/* What one revision of a deployment serves. */
typedef struct deploy_adapter_spec {
	char *name; /* what clients put in "model": "support-bot@2" */
	char *dir;  /* materialised PEFT adapter folder */
	char *ref;  /* registry reference and digest, for /v1/models lineage */
} deploy_adapter_spec;

typedef struct deploy_spec {
	char *deployment;  /* deployment name; also the "model" clients ask for */
	int64_t revision;
	char *model_ref;   /* "llama@3" */
	char *model_digest;
	char *model_dir;   /* materialised checkpoint folder or .gguf */
	int tp, ctx, kv_type, threads;
	int device, first_gpu; /* engine_device and its first GPU: the server's choice */
	deploy_adapter_spec *adapters;
	size_t nadapters;
} deploy_spec;

void deploy_spec_free(deploy_spec *s); /* frees every field and s; accepts NULL */

/* Where the server learns what to serve. current() is cheap and is called
 * twice a second and on SIGHUP; when the revision it answers differs
 * from the one served, load() gives that revision's spec. Both are called
 * from the server's control thread only. */
typedef struct deploy_source {
	void *ctx;
	int (*current)(void *ctx, int64_t *revision, owl_err *err);
	int (*load)(void *ctx, int64_t revision, deploy_spec **out, owl_err *err);
} deploy_source;

/* API keys: authorise() answers whether a request may pass. With no key
 * configured every request passes; otherwise bearer must be a valid key.
 * key_id receives the key's public id for the access log. Called from the
 * HTTP threads, so it must be thread-safe. NULL: no keys. */
typedef enum deploy_auth {
	DEPLOY_AUTH_OPEN = 0,   /* no key exists: anyone may ask */
	DEPLOY_AUTH_OK,         /* a valid key */
	DEPLOY_AUTH_DENIED,     /* keys exist and bearer is missing, unknown or revoked */
} deploy_auth;

typedef struct deploy_authoriser {
	void *ctx;
	deploy_auth (*authorise)(void *ctx, const char *bearer, char *key_id, size_t key_id_len);
} deploy_authoriser;

typedef struct deploy_server_opts {
	const char *host;        /* default 127.0.0.1 */
	int port;                /* default 8080; 0 = any free port (tests) */
	int max_batch;           /* sequences decoding together (default 16) */
	int threads;             /* engine CPU threads where the revision says none (0 = every core but one) */
	int device, first_gpu;   /* where revisions run (engine_device: 0 = auto) and the first GPU */
	int max_queue;           /* waiting requests before 429 (default 64) */
	double queue_timeout_s;  /* a queued request gives up with 503 (default 60) */
	size_t max_body;         /* request body limit in bytes (default 1 MiB) */
	int max_tokens_limit;    /* largest max_tokens a request may ask (default: the context) */
	double drain_timeout_s;  /* SIGTERM: how long in-flight requests may finish (0: default 30; < 0: none) */
	double grace_s;          /* the previous revision stays loaded this long after a swap (default 300) */
	int log_prompts;         /* access log may contain prompt text */
	const char *access_log;  /* file; NULL = stderr */
	/* Called once the server listens, with the port it bound (tests, port 0). */
	void (*on_listen)(void *ctx, int port);
	void *on_listen_ctx;
	deploy_source source;
	deploy_authoriser auth;
} deploy_server_opts;

/* Loads the current revision, listens, and serves until SIGTERM or SIGINT,
 * then drains. Returns 0 after a clean drain, or an error (bind failure,
 * first revision failing to load). */
int deploy_server_run(const deploy_server_opts *o, owl_err *err);

#endif
