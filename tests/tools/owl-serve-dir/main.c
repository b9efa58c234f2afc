/* Serves a model folder or .gguf through deploy_server_run, for the tests
 * and the benchmark: the deployment's revision comes from a small text file
 * that a test rewrites to swap revisions, and API keys from another.
 *
 * The revision file's first line is "REVISION [MODEL [NAME=ADAPTER_DIR ...]]";
 * a revision that names no model serves the one on the command line. The
 * keys file holds "KEY_ID SECRET" lines; without one (or empty) no key is
 * needed. The port bound (--port 0: any free one) is printed on stdout.
 * Usage: owl-serve-dir MODEL [NAME=ADAPTER_DIR ...] [--rev-file F] [--keys-file F]
 *        [--name DEPLOYMENT] [--port N] [--host H] [--max-batch N] [--max-queue N]
 *        [--queue-timeout S] [--max-body BYTES] [--max-tokens-limit N] [--ctx N]
 *        [--threads N] [--grace S] [--drain-timeout S] [--access-log F] [--log-prompts]
 *        [--load-delay S]   (each load takes S seconds longer, as a big model's does) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "deploy/server.h"

enum { MAX_ADAPTERS = 8, MAX_KEYS = 64 };

typedef struct source {
	const char *model, *name, *rev_file;
	const char *adapters[MAX_ADAPTERS];
	int nadapters, ctx, threads;
	double load_delay;
} source;

typedef struct keys {
	int n;
	char id[MAX_KEYS][64], secret[MAX_KEYS][128];
} keys;

/* The revision file's first line split into words (at most 1 + 1 + MAX_ADAPTERS). */
static int read_rev_file(const source *s, int64_t *rev, char words[][1024], int *nwords, owl_err *err)
{
	*nwords = 0;
	if (!s->rev_file) {
		*rev = 1;
		return 0;
	}
	FILE *f = fopen(s->rev_file, "r");
	if (!f)
		return owl_err_set(err, OWL_EFAIL, "cannot read %s", s->rev_file);
	char line[8192] = "";
	int got = fgets(line, sizeof line, f) != NULL;
	fclose(f);
	char *save = NULL;
	for (char *w = got ? strtok_r(line, " \t\r\n", &save) : NULL; w && *nwords < 2 + MAX_ADAPTERS;
	     w = strtok_r(NULL, " \t\r\n", &save))
		snprintf(words[(*nwords)++], 1024, "%s", w);
	char *end = NULL;
	if (*nwords == 0 || (*rev = strtoll(words[0], &end, 10)) <= 0 || *end)
		return owl_err_set(err, OWL_EFAIL, "%s does not start with a revision number", s->rev_file);
	return 0;
}

static int current(void *ctx, int64_t *revision, owl_err *err)
{
	char words[2 + MAX_ADAPTERS][1024];
	int n;
	return read_rev_file(ctx, revision, words, &n, err);
}

static int add_adapter(deploy_spec *sp, const char *arg, owl_err *err)
{
	const char *eq = strchr(arg, '=');
	if (!eq || eq == arg)
		return owl_err_set(err, OWL_EUSAGE, "adapter '%s' is not NAME=DIR", arg);
	deploy_adapter_spec *a = &sp->adapters[sp->nadapters++];
	a->name = strndup(arg, (size_t)(eq - arg));
	a->dir = strdup(eq + 1);
	a->ref = owl_xasprintf("dir:%s", eq + 1);
	return 0;
}

static int load(void *ctx, int64_t revision, deploy_spec **out, owl_err *err)
{
	source *s = ctx;
	char words[2 + MAX_ADAPTERS][1024];
	int n;
	int64_t have;
	if (s->load_delay > 0)
		usleep((useconds_t)(s->load_delay * 1e6));
	int rc = read_rev_file(s, &have, words, &n, err);
	if (rc)
		return rc;
	if (have != revision)
		return owl_err_set(err, OWL_EFAIL, "revision %lld is gone: the file holds %lld",
				   (long long)revision, (long long)have);
	deploy_spec *sp = owl_xcalloc(1, sizeof *sp);
	sp->deployment = owl_xstrdup(s->name);
	sp->revision = revision;
	sp->model_dir = owl_xstrdup(n >= 2 ? words[1] : s->model);
	sp->model_ref = owl_xasprintf("dir:%s", sp->model_dir);
	sp->model_digest = owl_xstrdup("-");
	sp->ctx = s->ctx;
	sp->threads = s->threads;
	sp->adapters = owl_xcalloc(MAX_ADAPTERS, sizeof *sp->adapters);
	for (int i = 2; !rc && i < n; i++)
		rc = add_adapter(sp, words[i], err);
	for (int i = 0; !rc && n < 2 && i < s->nadapters; i++)
		rc = add_adapter(sp, s->adapters[i], err);
	if (rc) {
		deploy_spec_free(sp);
		return rc;
	}
	*out = sp;
	return 0;
}

static deploy_auth authorise(void *ctx, const char *bearer, char *key_id, size_t key_id_len)
{
	const keys *k = ctx;
	if (k->n == 0)
		return DEPLOY_AUTH_OPEN;
	for (int i = 0; bearer && i < k->n; i++)
		if (!strcmp(bearer, k->secret[i])) {
			snprintf(key_id, key_id_len, "%s", k->id[i]);
			return DEPLOY_AUTH_OK;
		}
	return DEPLOY_AUTH_DENIED;
}

static void on_listen(void *ctx, int port)
{
	printf("%d\n", port);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	static source src = {.name = "fixture"};
	static keys ks;
	const char *keys_file = NULL;
	deploy_server_opts o = {.port = 0, .grace_s = -1};
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(name) (!strcmp(a, name) && v && ++i)
		if (OPT("--rev-file")) src.rev_file = v;
		else if (OPT("--keys-file")) keys_file = v;
		else if (OPT("--name")) src.name = v;
		else if (OPT("--port")) o.port = atoi(v);
		else if (OPT("--host")) o.host = v;
		else if (OPT("--max-batch")) o.max_batch = atoi(v);
		else if (OPT("--max-queue")) o.max_queue = atoi(v);
		else if (OPT("--queue-timeout")) o.queue_timeout_s = atof(v);
		else if (OPT("--max-body")) o.max_body = strtoull(v, NULL, 10);
		else if (OPT("--max-tokens-limit")) o.max_tokens_limit = atoi(v);
		else if (OPT("--ctx")) src.ctx = atoi(v);
		else if (OPT("--threads")) src.threads = atoi(v);
		else if (OPT("--grace")) o.grace_s = atof(v);
		else if (OPT("--drain-timeout")) o.drain_timeout_s = atof(v);
		else if (OPT("--access-log")) o.access_log = v;
		else if (OPT("--load-delay")) src.load_delay = atof(v);
		else if (!strcmp(a, "--log-prompts")) o.log_prompts = 1;
		else if (a[0] == '-') {
			fprintf(stderr, "owl-serve-dir: unknown option %s\n", a);
			return 2;
		} else if (!src.model) src.model = a;
		else if (src.nadapters < MAX_ADAPTERS) src.adapters[src.nadapters++] = a;
#undef OPT
	}
	if (!src.model) {
		fprintf(stderr, "usage: owl-serve-dir MODEL [NAME=ADAPTER_DIR ...] [--rev-file F] "
			"[--keys-file F] [--port N] ...\n");
		return 2;
	}
	if (keys_file) {
		FILE *f = fopen(keys_file, "r");
		char id[64], secret[128];
		while (f && ks.n < MAX_KEYS && fscanf(f, "%63s %127s", id, secret) == 2) {
			snprintf(ks.id[ks.n], sizeof ks.id[ks.n], "%s", id);
			snprintf(ks.secret[ks.n], sizeof ks.secret[ks.n], "%s", secret);
			ks.n++;
		}
		if (f)
			fclose(f);
	}
	o.source = (deploy_source){.ctx = &src, .current = current, .load = load};
	o.auth = (deploy_authoriser){.ctx = &ks, .authorise = authorise};
	o.on_listen = on_listen;
	owl_err err = {0};
	if (deploy_server_run(&o, &err)) {
		fprintf(stderr, "owl-serve-dir: %s\n", err.msg);
		return 1;
	}
	return 0;
}
