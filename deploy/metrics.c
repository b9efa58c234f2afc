/* Prometheus text format (version 0.0.4): # HELP / # TYPE lines, then the
 * samples; histograms as cumulative _bucket{le=...}, _sum and _count. */
#include "deploy/metrics.h"

#include <string.h>

static const double bounds[SRV_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
						 1,     2.5,  5,     10,   30,  60,   120};

void srv_metrics_init(srv_metrics *m)
{
	memset(m, 0, sizeof *m);
	pthread_mutex_init(&m->mu, NULL);
}

void srv_metrics_destroy(srv_metrics *m)
{
	pthread_mutex_destroy(&m->mu);
}

static void hist_add(srv_hist *h, double v)
{
	int b = 0;
	while (b < SRV_HIST_BUCKETS && v > bounds[b])
		b++;
	h->count[b]++;
	h->sum += v;
	h->n++;
}

void srv_metrics_observe(srv_metrics *m, srv_hist *h, double seconds)
{
	pthread_mutex_lock(&m->mu);
	hist_add(h, seconds);
	pthread_mutex_unlock(&m->mu);
}

void srv_metrics_request(srv_metrics *m, int status, double seconds)
{
	int k = status >= 200 && status < 300 ? 0 : status == 400 ? 1 : status == 401 ? 2 :
		status == 429 ? 3 : status == 503 ? 4 : 5;
	pthread_mutex_lock(&m->mu);
	m->requests[k]++;
	hist_add(&m->duration, seconds);
	pthread_mutex_unlock(&m->mu);
}

static void hist_render(owl_buf *o, const char *name, const char *help, const srv_hist *h)
{
	owl_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	uint64_t cum = 0;
	for (int b = 0; b < SRV_HIST_BUCKETS; b++) {
		cum += h->count[b];
		owl_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b], (unsigned long long)cum);
	}
	cum += h->count[SRV_HIST_BUCKETS];
	owl_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
		       (unsigned long long)cum, name, h->sum, name, (unsigned long long)h->n);
}

static void gauge(owl_buf *o, const char *name, const char *help, const char *type, double v)
{
	owl_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void srv_metrics_render(srv_metrics *m, owl_buf *o)
{
	static const char *const cls[6] = {"2xx", "400", "401", "429", "503", "other"};
	pthread_mutex_lock(&m->mu);
	owl_buf_printf(o, "# HELP owl_requests_total HTTP requests answered, by status.\n"
		       "# TYPE owl_requests_total counter\n");
	for (int k = 0; k < 6; k++)
		owl_buf_printf(o, "owl_requests_total{status=\"%s\"} %llu\n", cls[k],
			       (unsigned long long)m->requests[k]);
	gauge(o, "owl_prompt_tokens_total", "Prompt tokens of admitted requests.", "counter",
	      (double)m->prompt_tokens);
	gauge(o, "owl_prompt_tokens_cached_total", "Prompt tokens found in the prefix cache.", "counter",
	      (double)m->cached_prompt_tokens);
	gauge(o, "owl_generation_tokens_total", "Tokens generated.", "counter",
	      (double)m->generation_tokens);
	hist_render(o, "owl_time_to_first_token_seconds", "From arrival to the first generated token.",
		    &m->ttft);
	hist_render(o, "owl_inter_token_latency_seconds", "Between consecutive generated tokens.",
		    &m->itl);
	hist_render(o, "owl_request_duration_seconds", "From arrival to the last byte.", &m->duration);
	gauge(o, "owl_queue_depth", "Requests waiting for a slot in the batch.", "gauge", m->queue_depth);
	gauge(o, "owl_running_batch_size", "Sequences in the running batch.", "gauge", m->running);
	gauge(o, "owl_kv_blocks_used", "KV cache blocks held by sequences.", "gauge", m->kv_blocks_used);
	gauge(o, "owl_kv_blocks_total", "KV cache blocks of the pool.", "gauge", m->kv_blocks_total);
	gauge(o, "owl_revision", "The deployment revision new requests go to.", "gauge",
	      (double)m->revision);
	gauge(o, "owl_revisions_loaded", "Revisions in memory (serving, draining or kept for rollback).",
	      "gauge", m->loaded_revisions);
	gauge(o, "owl_revision_swaps_total", "Swaps to another revision.", "counter", (double)m->swaps);
	gauge(o, "owl_revision_load_failures_total", "Revisions that failed to load.", "counter",
	      (double)m->swap_failures);
	gauge(o, "owl_revision_failed", "The last revision that failed to load (0: none).", "gauge",
	      (double)m->revision_failed);
	gauge(o, "owl_ready", "1 once a revision is loaded and serving.", "gauge", m->ready);
	pthread_mutex_unlock(&m->mu);
}
