/* deploy/metrics: the server's counters, gauges and histograms, rendered in
 * the Prometheus text format for GET /metrics. Updated from the HTTP
 * threads, the scheduler threads and the control thread under one mutex. */
#ifndef OWL_DEPLOY_METRICS_H
#define OWL_DEPLOY_METRICS_H

#include <pthread.h>
#include <stdint.h>

#include "common/common.h"

enum { SRV_HIST_BUCKETS = 14 };

typedef struct srv_hist {
	uint64_t count[SRV_HIST_BUCKETS + 1]; /* per bucket; the last is +Inf */
	double sum;
	uint64_t n;
} srv_hist;

typedef struct srv_metrics {
	pthread_mutex_t mu;
	uint64_t requests[6];        /* by status class: 2xx, 400, 401, 429, 503, other */
	uint64_t prompt_tokens, cached_prompt_tokens, generation_tokens;
	srv_hist ttft, itl, duration;
	int queue_depth, running;    /* summed over loaded revisions */
	int kv_blocks_used, kv_blocks_total;
	int64_t revision;            /* being served */
	int64_t revision_failed;     /* the last revision that failed to load, 0 none */
	uint64_t swaps, swap_failures;
	int loaded_revisions;
	int ready;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_metrics_destroy(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, int status, double seconds);
void srv_metrics_observe(srv_metrics *m, srv_hist *h, double seconds);
/* The text format; into out. */
void srv_metrics_render(srv_metrics *m, owl_buf *out);

#endif
