/* Deployment verbs: deploy (create, set, pin, unpin, rollback, history,
 * list, show, rm) and keys (create, list, revoke, rm). */
#define _GNU_SOURCE
#include "cmd.h"
#include "deploy/deploy.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ADAPTERS 32

/* A whole number in [lo, hi] for option `opt`; 0 when it is one. */
static int parse_int(const char *verb, const char *opt, const char *s, long lo, long hi, int *out)
{
	char *end = NULL;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v < lo || v > hi)
		return cmd_usage_error(verb, "%s takes a whole number from %ld to %ld (got '%s')", opt,
				       lo, hi, s);
	*out = (int)v;
	return 0;
}

/* Tag moves observed by a verb are said on stderr, so that the output of
 * the verb itself stays what it always is. */
static void say_follow(void *c, const char *name, int moved, const owl_err *err)
{
	owl_ctx *ctx = c;
	if (err)
		fprintf(stderr, "owl: warning: deployment '%s' did not follow its tag: %s\n", name,
			err->msg);
	else if (moved && !ctx->quiet)
		fprintf(stderr, "owl: deployment '%s' followed its tag to a new revision\n", name);
}

static void follow_one(owl_ctx *ctx, registry_store *s, const char *name)
{
	owl_err e = {0};
	int moved = 0;
	if (deploy_follow(s, name, NULL, &moved, &e) != 0)
		say_follow(ctx, name, 0, &e);
	else if (moved)
		say_follow(ctx, name, 1, NULL);
}

/* ---- JSON and text forms ---------------------------------------------------- */

static json_t *adapters_json(const deploy_revision *r)
{
	json_t *a = json_array();
	for (size_t i = 0; i < r->nadapters; i++)
		json_array_append_new(a, json_pack("{s:s, s:s}", "ref", r->adapters[i].ref, "digest",
						   r->adapters[i].digest));
	return a;
}

static json_t *revision_json(const deploy_revision *r)
{
	json_t *o = json_pack("{s:I, s:s, s:s, s:o, s:i, s:i, s:i, s:s, s:s, s:I, s:s, s:s}",
			      "revision", (json_int_t)r->revision, "model", r->model_ref,
			      "model_digest", r->model_digest, "adapters", adapters_json(r), "tp",
			      r->tp, "ctx", r->ctx, "port", r->port, "use", r->use, "who", r->who,
			      "at", (json_int_t)r->at, "why", r->why, "license", r->license);
	return o;
}

static json_t *info_json(const deploy_info *d)
{
	json_t *o = json_pack("{s:s, s:I, s:b, s:I, s:s, s:I}", "name", d->name, "revision",
			      (json_int_t)d->current, "pinned", d->pinned, "revisions",
			      (json_int_t)d->nrevisions, "created_by", d->created_by, "created_at",
			      (json_int_t)d->created_at);
	json_object_set_new(o, "follows", d->follow ? json_string(d->follow) : json_null());
	json_object_set_new(o, "follow_blocked_at",
			    d->follow_blocked ? json_string(d->follow_blocked) : json_null());
	if (d->pinned)
		json_object_set_new(o, "pin", json_pack("{s:s, s:I, s:s}", "by", d->pinned_by, "at",
							(json_int_t)d->pinned_at, "reason",
							d->pin_reason));
	json_object_set_new(o, "current", revision_json(&d->cur));
	return o;
}

static void adapters_text(const deploy_revision *r, int with_digest, owl_buf *b)
{
	if (!r->nadapters)
		owl_buf_printf(b, "-");
	for (size_t i = 0; i < r->nadapters; i++) {
		owl_buf_printf(b, "%s%s", i ? "," : "", r->adapters[i].ref);
		if (with_digest)
			owl_buf_printf(b, "(%.12s)", r->adapters[i].digest);
	}
}

static void print_show(const deploy_info *d)
{
	char when[32];
	printf("deployment  %s\n", d->name);
	printf("revision    %lld of %lld\n", (long long)d->current, (long long)d->nrevisions);
	printf("model       %s  sha256:%s\n", d->cur.model_ref, d->cur.model_digest);
	for (size_t i = 0; i < d->cur.nadapters; i++)
		printf("adapter     %s  sha256:%s\n", d->cur.adapters[i].ref, d->cur.adapters[i].digest);
	printf("follows     %s\n", d->follow ? d->follow : "- (a fixed version)");
	if (d->follow_blocked)
		printf("            (the tag points at %s, which the license gate refused)\n",
		       d->follow_blocked);
	if (d->pinned) {
		owl_fmt_time(d->pinned_at, when, sizeof when);
		printf("pinned      by %s at %s%s%s\n", d->pinned_by, when, *d->pin_reason ? ": " : "",
		       d->pin_reason);
	} else {
		printf("pinned      no\n");
	}
	printf("tp          %d\n", d->cur.tp);
	if (d->cur.ctx)
		printf("ctx         %d\n", d->cur.ctx);
	else
		printf("ctx         the model's own\n");
	if (d->cur.port)
		printf("port        %d\n", d->cur.port);
	else
		printf("port        the server's default\n");
	printf("use         %s\n", d->cur.use);
	printf("license     %s\n", d->cur.license);
	owl_fmt_time(d->cur.at, when, sizeof when);
	printf("changed     %s by %s%s%s\n", when, d->cur.who, *d->cur.why ? ": " : "", d->cur.why);
}

/* ---- deploy create / set ------------------------------------------------------- */

static int parse_change(const char *verb, int argc, char **argv, deploy_change *c,
			const char **adapters, const char **name)
{
	static const struct option opts[] = {
		{"model", required_argument, 0, 'm'}, {"adapter", required_argument, 0, 'a'},
		{"no-adapters", no_argument, 0, 'N'}, {"tp", required_argument, 0, 't'},
		{"ctx", required_argument, 0, 'c'}, {"use", required_argument, 0, 'u'},
		{"port", required_argument, 0, 'p'}, {"reason", required_argument, 0, 'r'},
		{0, 0, 0, 0},
	};
	int o, no_adapters = 0;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		int rc = 0;
		switch (o) {
		case 'm': c->model = optarg; break;
		case 'a':
			if (c->nadapters == MAX_ADAPTERS)
				return cmd_usage_error(verb, "at most %d adapters", MAX_ADAPTERS);
			adapters[c->nadapters++] = optarg;
			c->set_adapters = 1;
			break;
		case 'N': no_adapters = 1; c->set_adapters = 1; break;
		case 't': rc = parse_int(verb, "--tp", optarg, 1, 64, &c->tp); break;
		case 'c': rc = parse_int(verb, "--ctx", optarg, 0, 1 << 24, &c->ctx); break;
		case 'p': rc = parse_int(verb, "--port", optarg, 0, 65535, &c->port); break;
		case 'u': c->use = optarg; break;
		case 'r': c->reason = optarg; break;
		default: return cmd_usage_error(verb, "unknown option");
		}
		if (rc)
			return rc;
	}
	if (no_adapters && c->nadapters)
		return cmd_usage_error(verb, "--no-adapters and --adapter exclude each other");
	if (optind != argc - 1)
		return cmd_usage_error(verb, "expected one deployment NAME");
	*name = argv[optind];
	c->adapters = adapters;
	return 0;
}

static int print_changed(owl_ctx *ctx, registry_store *s, const char *name, const char *what)
{
	owl_err err = {0};
	deploy_info d;
	if (deploy_get(s, name, &d, &err))
		return cmd_fail(&err);
	if (ctx->json) {
		cmd_print_json(info_json(&d));
	} else if (!ctx->quiet) {
		owl_buf b;
		owl_buf_init(&b, 1 << 14);
		adapters_text(&d.cur, 0, &b);
		printf("%s %s: revision %lld serves %s%s%s (use %s)\n", what, name,
		       (long long)d.current, d.cur.model_ref, d.cur.nadapters ? " with " : "",
		       d.cur.nadapters ? b.data : "", d.cur.use);
		printf("license: %s\n", d.cur.license);
		owl_buf_release(&b);
	}
	deploy_info_release(&d);
	return OWL_OK;
}

static int deploy_create_or_set(owl_ctx *ctx, int argc, char **argv, int create)
{
	const char *verb = create ? "deploy create" : "deploy set";
	deploy_change c;
	deploy_change_init(&c);
	const char *adapters[MAX_ADAPTERS];
	const char *name = NULL;
	int rc = parse_change(verb, argc, argv, &c, adapters, &name);
	if (rc)
		return rc;
	if (create && !c.model)
		return cmd_usage_error(verb, "a deployment needs --model M@V or M:TAG");
	if (create && c.set_adapters && !c.nadapters)
		return cmd_usage_error(verb, "--no-adapters is for deploy set");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	if (!create)
		follow_one(ctx, s, name);
	int64_t rev = 0;
	rc = create ? deploy_create(s, name, &c, &rev, &err) : deploy_set(s, name, &c, &rev, &err);
	if (!rc)
		rc = print_changed(ctx, s, name, create ? "created" : "changed");
	else
		rc = cmd_fail(&err);
	registry_store_close(s);
	return rc;
}

/* ---- pin, unpin, rollback, rm ------------------------------------------------------ */

static int deploy_pin_verb(owl_ctx *ctx, int argc, char **argv, int pin)
{
	const char *verb = pin ? "deploy pin" : "deploy unpin";
	static const struct option opts[] = {{"reason", required_argument, 0, 'r'}, {0, 0, 0, 0}};
	const char *reason = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (o != 'r')
			return cmd_usage_error(verb, "unknown option");
		reason = optarg;
	}
	if (optind != argc - 1)
		return cmd_usage_error(verb, "expected one deployment NAME");
	const char *name = argv[optind];
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	/* Pinning holds what serves now, so a tag move waiting to be observed is
	 * made first; unpinning lets the deployment follow again at once. */
	if (pin)
		follow_one(ctx, s, name);
	int rc = pin ? deploy_pin(s, name, reason, NULL, &err) : deploy_unpin(s, name, reason, NULL, &err);
	if (rc) {
		registry_store_close(s);
		return cmd_fail(&err);
	}
	if (!pin)
		follow_one(ctx, s, name);
	rc = print_changed(ctx, s, name, pin ? "pinned" : "unpinned");
	registry_store_close(s);
	return rc;
}

static int deploy_rollback_verb(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"to", required_argument, 0, 't'}, {"reason", required_argument, 0, 'r'}, {0, 0, 0, 0},
	};
	const char *reason = NULL;
	int to = 0, o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (o == 't') {
			if (parse_int("deploy rollback", "--to", optarg, 1, 1000000000, &to))
				return OWL_EUSAGE;
		} else if (o == 'r') {
			reason = optarg;
		} else {
			return cmd_usage_error("deploy rollback", "unknown option");
		}
	}
	if (optind != argc - 1)
		return cmd_usage_error("deploy rollback", "expected one deployment NAME");
	const char *name = argv[optind];
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	int64_t rev = 0;
	int rc = deploy_rollback(s, name, to, reason, NULL, &rev, &err);
	rc = rc ? cmd_fail(&err) : print_changed(ctx, s, name, "rolled back");
	registry_store_close(s);
	return rc;
}

static int deploy_rm_verb(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-')
		return cmd_usage_error("deploy rm", "expected one deployment NAME");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	int rc = deploy_remove(s, argv[1], &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json)
		cmd_print_json(json_pack("{s:s, s:b}", "name", argv[1], "removed", 1));
	else if (!ctx->quiet)
		printf("removed deployment %s (its decisions stay in the audit log)\n", argv[1]);
	return OWL_OK;
}

/* ---- list, show, history ---------------------------------------------------------- */

static int deploy_list_verb(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 1)
		return cmd_usage_error("deploy list", "unexpected argument '%s'", argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	deploy_follow_all(s, NULL, NULL, say_follow, ctx, NULL);
	deploy_info *d = NULL;
	size_t n = 0;
	int rc = deploy_list(s, &d, &n, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json) {
		json_t *arr = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(arr, info_json(&d[i]));
		cmd_print_json(arr);
	} else if (n == 0) {
		printf("no deployments (create one with: owl deploy create NAME --model M@V)\n");
	} else {
		printf("%-20s %-4s %-24s %-24s %-10s %-6s %s\n", "NAME", "REV", "MODEL", "ADAPTERS",
		       "USE", "PINNED", "FOLLOWS");
		for (size_t i = 0; i < n; i++) {
			owl_buf b;
			owl_buf_init(&b, 1 << 14);
			adapters_text(&d[i].cur, 0, &b);
			printf("%-20s %-4lld %-24s %-24s %-10s %-6s %s\n", d[i].name,
			       (long long)d[i].current, d[i].cur.model_ref, b.data, d[i].cur.use,
			       d[i].pinned ? "yes" : "no", d[i].follow ? d[i].follow : "-");
			owl_buf_release(&b);
		}
	}
	deploy_list_free(d, n);
	return OWL_OK;
}

static int deploy_show_verb(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-')
		return cmd_usage_error("deploy show", "expected one deployment NAME");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	follow_one(ctx, s, argv[1]);
	deploy_info d;
	int rc = deploy_get(s, argv[1], &d, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json)
		cmd_print_json(info_json(&d));
	else
		print_show(&d);
	deploy_info_release(&d);
	return OWL_OK;
}

static const deploy_revision *find_revision(const deploy_revision *r, size_t n, int64_t rev)
{
	for (size_t i = 0; i < n; i++)
		if (r[i].revision == rev)
			return &r[i];
	return NULL;
}

static int deploy_history_verb(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 2 || argv[1][0] == '-')
		return cmd_usage_error("deploy history", "expected one deployment NAME");
	const char *name = argv[1];
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	follow_one(ctx, s, name);
	deploy_event *ev = NULL;
	deploy_revision *revs = NULL;
	size_t nev = 0, nrev = 0;
	deploy_info d;
	int rc = deploy_get(s, name, &d, &err);
	if (!rc)
		rc = deploy_history(s, name, &ev, &nev, &err);
	if (!rc)
		rc = deploy_revisions(s, name, &revs, &nrev, &err);
	registry_store_close(s);
	if (rc) {
		deploy_history_free(ev, nev);
		return cmd_fail(&err);
	}
	if (ctx->json) {
		json_t *ea = json_array(), *ra = json_array();
		for (size_t i = 0; i < nev; i++)
			json_array_append_new(ea, json_pack("{s:I, s:s, s:s, s:s, s:I, s:I, s:s}", "at",
							    (json_int_t)ev[i].at, "who", ev[i].who,
							    "action", ev[i].action, "why", ev[i].why,
							    "revision", (json_int_t)ev[i].revision,
							    "from", (json_int_t)ev[i].from, "license",
							    ev[i].license));
		for (size_t i = 0; i < nrev; i++)
			json_array_append_new(ra, revision_json(&revs[i]));
		cmd_print_json(json_pack("{s:s, s:I, s:b, s:o, s:o}", "name", name, "current",
					 (json_int_t)d.current, "pinned", d.pinned, "revisions", ra,
					 "events", ea));
	} else {
		printf("deployment %s: revision %lld is current%s\n", name, (long long)d.current,
		       d.pinned ? " (pinned)" : "");
		printf("%-3s %-8s %-8s %-20s %-10s %-22s %-24s %s\n", "REV", "ACTION", "FROM", "WHEN",
		       "WHO", "MODEL (DIGEST)", "ADAPTERS", "WHY");
		for (size_t i = 0; i < nev; i++) {
			const deploy_revision *r = find_revision(revs, nrev, ev[i].revision);
			char when[32], from[16] = "-", model[160] = "?";
			owl_fmt_time(ev[i].at, when, sizeof when);
			if (ev[i].from && ev[i].from != ev[i].revision)
				snprintf(from, sizeof from, "%lld", (long long)ev[i].from);
			owl_buf b;
			owl_buf_init(&b, 1 << 14);
			if (r) {
				snprintf(model, sizeof model, "%s (%.8s)", r->model_ref, r->model_digest);
				adapters_text(r, 1, &b);
			}
			printf("%-3lld %-8s %-8s %-20s %-10s %-22s %-24s %s\n",
			       (long long)ev[i].revision, ev[i].action, from, when, ev[i].who, model,
			       b.len ? b.data : "-", *ev[i].why ? ev[i].why : "-");
			if (*ev[i].license)
				printf("    license: %s\n", ev[i].license);
			owl_buf_release(&b);
		}
	}
	deploy_info_release(&d);
	deploy_history_free(ev, nev);
	deploy_revisions_free(revs, nrev);
	return OWL_OK;
}

static int run_deploy(owl_ctx *ctx, int argc, char **argv)
{
	if (argc < 2)
		return cmd_usage_error("deploy", "expected a subcommand: create, set, pin, unpin, "
				       "rollback, history, list, show, rm");
	const char *sub = argv[1];
	argc--;
	argv++;
	if (strcmp(sub, "create") == 0)
		return deploy_create_or_set(ctx, argc, argv, 1);
	if (strcmp(sub, "set") == 0)
		return deploy_create_or_set(ctx, argc, argv, 0);
	if (strcmp(sub, "pin") == 0)
		return deploy_pin_verb(ctx, argc, argv, 1);
	if (strcmp(sub, "unpin") == 0)
		return deploy_pin_verb(ctx, argc, argv, 0);
	if (strcmp(sub, "rollback") == 0)
		return deploy_rollback_verb(ctx, argc, argv);
	if (strcmp(sub, "history") == 0)
		return deploy_history_verb(ctx, argc, argv);
	if (strcmp(sub, "list") == 0)
		return deploy_list_verb(ctx, argc, argv);
	if (strcmp(sub, "show") == 0)
		return deploy_show_verb(ctx, argc, argv);
	if (strcmp(sub, "rm") == 0)
		return deploy_rm_verb(ctx, argc, argv);
	return cmd_usage_error("deploy", "unknown subcommand '%s' (create, set, pin, unpin, "
			       "rollback, history, list, show, rm)", sub);
}

/* ---- keys ------------------------------------------------------------------------ */

static int keys_create(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {{"name", required_argument, 0, 'n'}, {0, 0, 0, 0}};
	const char *label = NULL;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (o != 'n')
			return cmd_usage_error("keys create", "unknown option");
		label = optarg;
	}
	if (optind != argc)
		return cmd_usage_error("keys create", "unexpected argument '%s'", argv[optind]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	char key[DEPLOY_KEY_LEN], id[DEPLOY_KEY_ID_LEN];
	int rc = deploy_key_create(s, label, NULL, key, id, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json) {
		cmd_print_json(json_pack("{s:s, s:s, s:s}", "id", id, "key", key, "name",
					 label ? label : ""));
	} else {
		printf("%s\n", key);
		fprintf(stderr, "created key %s%s%s; it is shown this once and stored only as a hash.\n"
			"Clients send it as: Authorization: Bearer <key>. While any key exists,\n"
			"every request to owl serve needs one.\n", id, label ? " " : "",
			label ? label : "");
	}
	memset(key, 0, sizeof key);
	return OWL_OK;
}

static int keys_list(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 1)
		return cmd_usage_error("keys list", "unexpected argument '%s'", argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	deploy_key *k = NULL;
	size_t n = 0;
	int rc = deploy_key_list(s, &k, &n, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json) {
		json_t *arr = json_array();
		for (size_t i = 0; i < n; i++) {
			json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:b}", "id", k[i].id, "name",
					      k[i].name, "created_by", k[i].created_by, "created_at",
					      (json_int_t)k[i].created_at, "revoked",
					      k[i].revoked_at != 0);
			if (k[i].revoked_at) {
				json_object_set_new(o, "revoked_at", json_integer(k[i].revoked_at));
				json_object_set_new(o, "revoked_by", json_string(k[i].revoked_by));
			}
			json_array_append_new(arr, o);
		}
		cmd_print_json(arr);
	} else if (n == 0) {
		printf("no keys: owl serve answers every request (create one with: owl keys create)\n");
	} else {
		printf("%-14s %-20s %-12s %-20s %s\n", "ID", "NAME", "CREATED BY", "CREATED", "STATE");
		for (size_t i = 0; i < n; i++) {
			char when[32], rev[64] = "valid";
			owl_fmt_time(k[i].created_at, when, sizeof when);
			if (k[i].revoked_at) {
				char rw[32];
				owl_fmt_time(k[i].revoked_at, rw, sizeof rw);
				snprintf(rev, sizeof rev, "revoked %s", rw);
			}
			printf("%-14s %-20s %-12s %-20s %s\n", k[i].id, *k[i].name ? k[i].name : "-",
			       k[i].created_by, when, rev);
		}
	}
	deploy_key_list_free(k, n);
	return OWL_OK;
}

static int keys_revoke_or_rm(owl_ctx *ctx, int argc, char **argv, int rm)
{
	const char *verb = rm ? "keys rm" : "keys revoke";
	if (argc != 2 || argv[1][0] == '-')
		return cmd_usage_error(verb, "expected one key ID (see owl keys list)");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	int rc = rm ? deploy_key_remove(s, argv[1], &err) : deploy_key_revoke(s, argv[1], NULL, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json)
		cmd_print_json(json_pack("{s:s, s:b}", "id", argv[1], rm ? "removed" : "revoked", 1));
	else if (!ctx->quiet)
		printf("%s key %s\n", rm ? "removed" : "revoked", argv[1]);
	return OWL_OK;
}

static int run_keys(owl_ctx *ctx, int argc, char **argv)
{
	if (argc < 2)
		return cmd_usage_error("keys", "expected a subcommand: create, list, revoke, rm");
	const char *sub = argv[1];
	argc--;
	argv++;
	if (strcmp(sub, "create") == 0)
		return keys_create(ctx, argc, argv);
	if (strcmp(sub, "list") == 0)
		return keys_list(ctx, argc, argv);
	if (strcmp(sub, "revoke") == 0)
		return keys_revoke_or_rm(ctx, argc, argv, 0);
	if (strcmp(sub, "rm") == 0)
		return keys_revoke_or_rm(ctx, argc, argv, 1);
	return cmd_usage_error("keys", "unknown subcommand '%s' (create, list, revoke, rm)", sub);
}

const owl_command cmd_deploy_commands[] = {
	{"deploy", run_deploy, "manage deployments: what serves, pinned, rolled back, with history",
	 "USAGE\n"
	 "  owl deploy create NAME --model M@V|M:TAG [--adapter A@V]... [--tp N] [--ctx N]\n"
	 "                    [--use commercial|internal|research] [--port P] [--reason TEXT]\n"
	 "  owl deploy set NAME [--model M@V|M:TAG] [--adapter A@V]... [--no-adapters]\n"
	 "                    [--tp N] [--ctx N] [--use USE] [--port P] [--reason TEXT]\n"
	 "  owl deploy pin NAME [--reason TEXT]\n"
	 "  owl deploy unpin NAME [--reason TEXT]\n"
	 "  owl deploy rollback NAME [--to REVISION] [--reason TEXT]\n"
	 "  owl deploy history NAME [--json]\n"
	 "  owl deploy list [--json]\n"
	 "  owl deploy show NAME [--json]\n"
	 "  owl deploy rm NAME\n"
	 "\n"
	 "A deployment is a name for what 'owl serve NAME' serves: a model version, its\n"
	 "adapters (each a derived version of that model), tensor parallelism, context,\n"
	 "the declared use and the port. Every create, set and rollback passes the\n"
	 "license gate (action deploy, the declared use) and is written to the audit log;\n"
	 "a denied change creates nothing (exit 3).\n"
	 "\n"
	 "create makes revision 1. set makes a new revision from the current one: options\n"
	 "not given keep their values; --adapter replaces the adapters, --no-adapters\n"
	 "removes them. rollback makes an earlier revision current again (default: the one\n"
	 "current before the current one); it creates no revision.\n"
	 "\n"
	 "--model M:TAG follows the tag: when the tag moves (owl tag), the deployment gets\n"
	 "a new revision for the tag's version, gated like any change, as soon as owl sees\n"
	 "the move (owl tag itself, any deploy verb, a running owl serve). --model M@V is\n"
	 "that version, fixed; a bare M is its latest version, fixed. After a rollback a\n"
	 "following deployment stays where it is until the tag moves again.\n"
	 "\n"
	 "A pinned deployment refuses set and rollback and does not follow its tag until\n"
	 "unpinned. history lists every change: revision, action, who, when, why, the\n"
	 "model and adapter digests, and the license decision.\n"
	 "\n"
	 "OPTIONS\n"
	 "  --model REF      M@V (fixed), M:TAG (follow the tag) or M (latest, fixed)\n"
	 "  --adapter REF    a LoRA adapter registered with --base M@V; repeat for several\n"
	 "  --tp N           tensor-parallel ranks (default 1)\n"
	 "  --ctx N          context length in tokens (default 0: the model's own)\n"
	 "  --use USE        commercial, internal (default) or research: what the gate checks\n"
	 "  --port P         the port owl serve listens on (default 0: the server's default)\n"
	 "  --reason TEXT    why, kept in the history\n"
	 "  --to REVISION    rollback: the revision to make current\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl deploy create support --model llama:stable --adapter support-lora@2 \\\n"
	 "      --use commercial --reason 'first release'\n"
	 "  owl deploy set support --ctx 8192 --reason 'longer tickets'\n"
	 "  owl deploy rollback support --reason 'bad answers since 14:00'\n"
	 "  owl deploy pin support --reason 'freeze for the audit'\n"
	 "  owl deploy history support\n"},
	{"keys", run_keys, "create, list and revoke API keys for owl serve",
	 "USAGE\n"
	 "  owl keys create [--name LABEL] [--json]\n"
	 "  owl keys list [--json]\n"
	 "  owl keys revoke ID\n"
	 "  owl keys rm ID\n"
	 "\n"
	 "A key is printed once, when it is created; owl stores only its SHA-256 hash and\n"
	 "its public id (owl-XXXXXXXX), which lists and access logs show. While any key\n"
	 "exists, every request to owl serve needs 'Authorization: Bearer KEY'. A revoked\n"
	 "key is refused at the next request, also by a running server, and still counts\n"
	 "as a key (revoking the last one does not open the server); rm deletes a revoked\n"
	 "key, and once no key is left the server answers everyone again.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl keys create --name ci > ci.key\n"
	 "  owl keys list\n"
	 "  owl keys revoke owl-1a2b3c4d\n"},
	{0},
};
