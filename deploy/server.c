/* The server's control loop: deploy_server_run starts libmicrohttpd
 * (deploy/http.c), loads the current revision, then watches the source
 * for a new revision and swaps to it without dropping a request: the new
 * one is loaded beside the old, new requests go to it, and the old one is
 * freed once its last request has ended and its grace period is over. A
 * request holds its revision (users) from the moment it picks it until
 * its response is gone, so every response comes whole from one. */
#define _GNU_SOURCE
#include "deploy/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* ---- the control loop ------------------------------------------------------------------ */

static int load_revision(srv *s, int64_t revision, srv_rev **out, owl_err *err)
{
	deploy_spec *spec = NULL;
	int rc = s->o.source.load(s->o.source.ctx, revision, &spec, err);
	if (rc)
		return rc;
	if (!spec->threads)
		spec->threads = s->o.threads;
	spec->device = s->o.device;
	spec->first_gpu = s->o.first_gpu;
	if (!spec->threads) {
		/* Every core but one: the HTTP threads that stream tokens wake
		 * once per token, and on a core the engine's OpenMP team needs
		 * they stall every barrier of the forward pass (on 2 cores, 1
		 * engine thread served a client 35% faster than 2). */
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		spec->threads = n > 1 ? (int)n - 1 : 1;
	}
	return srv_rev_load(spec, &s->ro, &s->met, out, err);
}

static void set_serving(srv *s)
{
	pthread_mutex_lock(&s->met.mu);
	s->met.revision = s->cur ? s->cur->revision : 0;
	s->met.ready = s->cur != NULL;
	pthread_mutex_unlock(&s->met.mu);
}

/* Puts r on the list of revisions freed once idle; NULL is fine. The
 * caller has made sure there is room (swap waits while the list is full). */
static void retire(srv *s, srv_rev *r)
{
	if (r)
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
	/* Every retired revision still held by a request (a slow reader) has a
	 * slot; with none free the swap waits for the next poll, after reap()
	 * has freed what went idle, rather than blocking the control loop. */
	int full = s->prev && s->nretiring == MAX_RETIRING;
	pthread_mutex_unlock(&s->mu);
	if (full) {
		if (forced)
			srv_say("revision %lld waits: %d older revisions still serve requests in flight",
				(long long)want, MAX_RETIRING);
		return;
	}
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

/* Every loaded revision: the current, the previous, the retiring ones.
 * Under s->mu; all has room for MAX_RETIRING + 2. */
static int loaded_revisions(srv *s, srv_rev **all)
{
	int n = 0;
	if (s->cur)
		all[n++] = s->cur;
	if (s->prev)
		all[n++] = s->prev;
	for (int i = 0; i < s->nretiring; i++)
		all[n++] = s->retiring[i];
	return n;
}

static int all_idle(srv *s)
{
	pthread_mutex_lock(&s->mu);
	srv_rev *all[MAX_RETIRING + 2];
	int n = loaded_revisions(s, all);
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
	int n = loaded_revisions(s, all);
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
	if (s->o.drain_timeout_s == 0)
		s->o.drain_timeout_s = 30;
	else if (s->o.drain_timeout_s < 0)
		s->o.drain_timeout_s = 0; /* asked for: stop at once */
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
				MHD_USE_POLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, http_on_request, s,
				MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
				http_on_completed, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)1024,
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
	srv_say("serving revision %lld (%s) on the %s backend", (long long)first,
		r->spec->model_ref ? r->spec->model_ref : r->spec->model_dir,
		engine_model_get_info(r->model)->backend);
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
