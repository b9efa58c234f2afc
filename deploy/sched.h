/* deploy/sched: one loaded revision (model, tokenizer, adapters, KV pool)
 * and the scheduler thread that alone drives its engine. Requests (jobs)
 * wait in a bounded queue and join the running batch at the next step;
 * every step is one engine_decode over the next token of each decoding
 * job and a chunk of each new prompt. The HTTP threads and the scheduler
 * share a job through its mutex. */
#ifndef OWL_DEPLOY_SCHED_H
#define OWL_DEPLOY_SCHED_H

#include <pthread.h>

#include "common/common.h"
#include "deploy/api.h"
#include "deploy/metrics.h"
#include "deploy/server.h"
#include "engine/engine.h"

typedef struct srv_logprob {
	int32_t id;
	float lp;
	int ntop;
	int32_t top_id[API_MAX_TOP_LOGPROBS];
	float top_lp[API_MAX_TOP_LOGPROBS];
} srv_logprob;

typedef enum srv_job_state {
	SRV_QUEUED = 0,
	SRV_RUNNING,
	SRV_DONE,   /* finished: finish reason set */
	SRV_FAILED, /* err set */
} srv_job_state;

typedef struct srv_job {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs; /* the HTTP side and the scheduler */

	/* Set before submission, then read-only. */
	int32_t *ids;
	size_t nids;
	engine_gen *gen;       /* stepped by the scheduler only */
	int adapter;           /* index into the revision's adapters, -1 none */
	int want_lp, top_lp;
	double t_submit;

	/* Shared, under mu. */
	srv_job_state state;
	int cancelled;         /* the client went away */
	owl_buf text;          /* emitted text so far */
	srv_logprob *lps;      /* one per generated token when want_lp */
	size_t nlps, caplps;
	int prompt_tokens, cached_tokens, gen_tokens;
	char finish[16];       /* "stop" or "length" */
	api_error err;
	double t_first;        /* first token, owl_now() */

	/* The scheduler's own. */
	int seq;
	size_t fed;            /* prompt tokens in the cache */
	int32_t next;          /* sampled, to run next step */
	double t_prev;
} srv_job;

/* A new job holding the prompt ids (taken) and the generation state (taken). */
srv_job *srv_job_new(int32_t *ids, size_t nids, engine_gen *gen, int adapter, int want_lp, int top_lp);
void srv_job_release(srv_job *j); /* drops one reference; the last frees it */
/* The engine_emit_fn that appends text to a job. */
void srv_job_emit(void *ctx, const char *text, size_t len);

typedef struct srv_rev_opts {
	int max_batch, max_queue;
	double queue_timeout_s;
	int prefill_chunk;     /* prompt tokens per step, all jobs together */
	int kv_tokens;         /* KV pool capacity; 0 = every slot at the full context */
} srv_rev_opts;

typedef struct srv_rev {
	int64_t revision;
	deploy_spec *spec;
	engine_model *model;
	engine_tokenizer *tok;
	engine_chat_family chat;
	engine_kv *kv;
	engine_adapter **adapters; /* spec->nadapters */
	int max_seq, vocab;
	srv_rev_opts o;
	srv_metrics *met;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	srv_job **queue;           /* o.max_queue */
	int nqueue;
	srv_job **running;         /* o.max_batch */
	int nrunning;
	int stopping;              /* the thread ends once nothing is queued or running */
	int abort;                 /* fail what is left and end now */
	pthread_t thread;
	int started;
	double retired_at;         /* when it stopped being current; 0 while current */
	int users;                 /* HTTP requests holding it (the server's lock) */
} srv_rev;

/* Loads spec (taken) and starts its scheduler thread. */
int srv_rev_load(deploy_spec *spec, const srv_rev_opts *o, srv_metrics *met, srv_rev **out,
		 owl_err *err);
/* Queues j (the revision takes a reference), or fills e: 429 when full, 503 when stopping. */
int srv_rev_submit(srv_rev *r, srv_job *j, api_error *e);
/* Jobs queued or running. */
int srv_rev_busy(srv_rev *r);
/* Wakes the scheduler (a job was cancelled). */
void srv_rev_kick(srv_rev *r);
/* Stops the thread: with abort, queued and running jobs fail with 503;
 * otherwise it first waits for them. Then frees everything. */
void srv_rev_free(srv_rev *r, int abort);
/* The adapter of name, or -1. */
int srv_rev_adapter(const srv_rev *r, const char *name);

#endif
