/* owl serve: runs a deployment's OpenAI-compatible HTTP server in the
 * foreground. The deployment records (deploy/deploy.h) say what to serve
 * and which keys may ask; the server (deploy/server.h) follows the
 * deployment's revision while it runs. */
#define _GNU_SOURCE
#include "cmd.h"
#include "deploy/deploy.h"
#include "deploy/server.h"
#include "engine/dist.h"
#include "engine/engine.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

/* A number in [lo, hi] for option opt; whole: it must have no fraction. */
static int parse_value(const char *opt, const char *s, double lo, double hi, int whole,
		       double *out)
{
	char *end = NULL;
	double v = strtod(s, &end);
	if (!*s || *end || !(v >= lo && v <= hi) || (whole && v != (double)(long long)v))
		return cmd_usage_error("serve", "%s takes a %s from %g to %g (got '%s')", opt,
				       whole ? "whole number" : "number", lo, hi, s);
	*out = v;
	return 0;
}

static int parse_num(const char *opt, const char *s, double lo, double hi, double *out)
{
	return parse_value(opt, s, lo, hi, 0, out);
}

static int parse_whole(const char *opt, const char *s, double lo, double hi, double *out)
{
	return parse_value(opt, s, lo, hi, 1, out);
}

typedef struct listen_ctx {
	const char *host, *name;
	int quiet;
} listen_ctx;

static void say_listening(void *c, int port)
{
	listen_ctx *l = c;
	if (!l->quiet)
		fprintf(stderr, "owl: serving deployment '%s' on http://%s:%d/v1 (Ctrl-C or SIGTERM "
			"drains and stops; SIGHUP re-reads the deployment)\n", l->name, l->host, port);
	/* A script waiting for the port reads it on stdout. */
	printf("%d\n", port);
	fflush(stdout);
}

static int run_serve(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"host", required_argument, 0, 'H'},      {"port", required_argument, 0, 'p'},
		{"max-batch", required_argument, 0, 'b'},
		{"threads", required_argument, 0, 'T'}, {"max-queue", required_argument, 0, 'q'},
		{"queue-timeout", required_argument, 0, 't'},
		{"max-body", required_argument, 0, 'B'},  {"max-tokens", required_argument, 0, 'm'},
		{"drain-timeout", required_argument, 0, 'd'},
		{"grace", required_argument, 0, 'g'},     {"log-prompts", no_argument, 0, 'L'},
		{"access-log", required_argument, 0, 'a'}, {"device", required_argument, 0, 'D'},
		{0, 0, 0, 0},
	};
	deploy_server_opts o = {.host = "127.0.0.1", .port = -1};
	double v;
	int c, rc;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'H': o.host = optarg; break;
		case 'p':
			if ((rc = parse_whole("--port", optarg, 0, 65535, &v)))
				return rc;
			o.port = (int)v;
			break;
		case 'b':
			if ((rc = parse_whole("--max-batch", optarg, 1, 256, &v)))
				return rc;
			o.max_batch = (int)v;
			break;
		case 'T':
			if ((rc = parse_whole("--threads", optarg, 1, 1024, &v)))
				return rc;
			o.threads = (int)v;
			break;
		case 'q':
			if ((rc = parse_whole("--max-queue", optarg, 1, 100000, &v)))
				return rc;
			o.max_queue = (int)v;
			break;
		case 't':
			if ((rc = parse_num("--queue-timeout", optarg, 0.1, 86400, &v)))
				return rc;
			o.queue_timeout_s = v;
			break;
		case 'B':
			if ((rc = parse_whole("--max-body", optarg, 1024, 1 << 30, &v)))
				return rc;
			o.max_body = (size_t)v;
			break;
		case 'm':
			if ((rc = parse_whole("--max-tokens", optarg, 1, 1 << 20, &v)))
				return rc;
			o.max_tokens_limit = (int)v;
			break;
		case 'd':
			if ((rc = parse_num("--drain-timeout", optarg, 0, 86400, &v)))
				return rc;
			o.drain_timeout_s = v > 0 ? v : -1; /* 0: stop at once */
			break;
		case 'g':
			if ((rc = parse_num("--grace", optarg, 1, 86400, &v)))
				return rc;
			o.grace_s = v;
			break;
		case 'L': o.log_prompts = 1; break;
		case 'a': o.access_log = optarg; break;
		case 'D': {
			engine_device dev;
			owl_err err = {0};
			if (engine_device_parse(optarg, &dev, &o.first_gpu, &err))
				return cmd_usage_error("serve", "%s", err.msg);
			o.device = (int)dev;
			break;
		}
		default: return cmd_usage_error("serve", "unknown option");
		}
	}
	if (optind + 1 != argc)
		return cmd_usage_error("serve", "give one deployment name");
	const char *name = argv[optind];

	owl_err err = {0};
	/* The scheduler steps one process's engine: the other ranks of a launch
	 * would have to follow each of its steps (the batch, the KV pool's
	 * changes), which is not built yet. */
	engine_dist_env env;
	if ((rc = engine_dist_detect(&env, &err)))
		return cmd_fail(&err);
	if (env.size != 1) {
		owl_err_set(&err, OWL_EUSAGE, "owl serve does not run across processes yet (the %s "
			    "launcher started %d): serve in one process, with the deployment's --tp "
			    "over this machine's cores or GPUs; 'owl run', 'owl perplexity' and 'owl "
			    "bench' run across processes (docs/distributed.md)",
			    engine_dist_launcher_name(env.launcher), env.size);
		return cmd_fail(&err);
	}
	registry_store *s = NULL;
	if ((rc = cmd_open_store(ctx, &s, &err)))
		return cmd_fail(&err);
	deploy_info d = {0};
	rc = deploy_get(s, name, &d, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (o.port < 0)
		o.port = d.cur.port > 0 ? d.cur.port : 8080;
	deploy_info_release(&d);

	if ((rc = deploy_source_new(ctx->home, name, &o.source, &err)))
		return cmd_fail(&err);
	if ((rc = deploy_authoriser_new(ctx->home, &o.auth, &err))) {
		deploy_source_free(&o.source);
		return cmd_fail(&err);
	}
	listen_ctx l = {.host = o.host, .name = name, .quiet = ctx->quiet};
	o.on_listen = say_listening;
	o.on_listen_ctx = &l;
	rc = deploy_server_run(&o, &err);
	deploy_authoriser_free(&o.auth);
	deploy_source_free(&o.source);
	if (rc)
		return cmd_fail(&err);
	return 0;
}

const owl_command cmd_serve_commands[] = {
	{"serve", run_serve, "serve a deployment over OpenAI-compatible HTTP",
	 "USAGE\n"
	 "  owl serve NAME [--host H] [--port P] [options]\n"
	 "\n"
	 "Runs deployment NAME in the foreground: /v1/models, /v1/completions and\n"
	 "/v1/chat/completions (also streamed), /health and /metrics. Requests that arrive\n"
	 "while others generate join the running batch at the next step. When the\n"
	 "deployment's revision changes (owl deploy set, rollback, or a tag it follows),\n"
	 "the new revision is loaded beside the old, new requests go to it and in-flight\n"
	 "ones finish on the old; a revision that fails to load leaves the old one\n"
	 "serving. SIGHUP re-reads the deployment now; SIGTERM and Ctrl-C stop taking\n"
	 "requests, let running ones finish (--drain-timeout) and exit. The port bound is\n"
	 "printed on stdout. While any key exists (owl keys), every request needs\n"
	 "'Authorization: Bearer KEY'. See docs/http-api.md. A server runs in one\n"
	 "process: under mpirun, srun or LeaderWorkerSet with more than one process it\n"
	 "refuses to start (docs/distributed.md).\n"
	 "\n"
	 "OPTIONS\n"
	 "  --host H             address to bind (default 127.0.0.1: this machine only)\n"
	 "  --port P             port (default: the deployment's --port, else 8080; 0: any free)\n"
	 "  --max-batch N        sequences decoding together (default 16)\n"
	 "  --threads N          CPU threads of the engine (default: every core but one, which\n"
	 "                       the HTTP threads streaming tokens need)\n"
	 "  --device D           where the model runs: auto (default: the GPUs when this machine\n"
	 "                       has them and owl's CUDA backend, else the CPU), cpu, cuda or\n"
	 "                       cuda:N (first device N), as in 'owl run'\n"
	 "  --max-queue N        waiting requests before 429 (default 64)\n"
	 "  --queue-timeout S    a queued request gives up with 503 after S seconds (default 60)\n"
	 "  --max-body BYTES     request body limit (default 1048576)\n"
	 "  --max-tokens N       largest max_tokens a request may ask (default: the context)\n"
	 "  --drain-timeout S    how long running requests may finish at SIGTERM (default 30)\n"
	 "  --grace S            how long the previous revision stays loaded after a swap, so\n"
	 "                       that a rollback to it is instant (default 300)\n"
	 "  --access-log FILE    access log (default stderr); never prompt text unless\n"
	 "  --log-prompts        is given\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl serve support\n"
	 "  owl serve support --host 0.0.0.0 --port 8000 --access-log /var/log/owl/access.log\n"
	 "  curl -s localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
	 "      -d '{\"model\":\"support\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n"},
	{0},
};
