/* Registry verbs: pull, list, show, tag, rm, gc, verify, export, import. */
#define _GNU_SOURCE
#include "cmd.h"
#include "common/gguf.h"
#include "common/modelcfg.h"
#include "deploy/deploy.h"
#include "licenses/licenses.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>

/* ---- shared output helpers --------------------------------------------- */

static json_t *config_summary(const char *config_json)
{
	json_t *c = config_json ? json_loads(config_json, 0, NULL) : NULL;
	return c ? c : json_object();
}

static void fmt_params(uint64_t n, char *out, size_t len)
{
	if (n >= 1000000000ull)
		snprintf(out, len, "%.2fB", (double)n / 1e9);
	else if (n >= 1000000ull)
		snprintf(out, len, "%.1fM", (double)n / 1e6);
	else
		snprintf(out, len, "%llu", (unsigned long long)n);
}

/* "LlamaForCausalLM, 135.0M parameters, bf16, context 8192" */
static void describe_config(const char *config_json, char *out, size_t len)
{
	json_t *c = config_summary(config_json);
	owl_buf b;
	owl_buf_init(&b, 1024);
	const char *arch = json_string_value(json_object_get(c, "architecture"));
	if (arch)
		owl_buf_printf(&b, "%s", arch);
	json_int_t params = json_integer_value(json_object_get(c, "parameters"));
	if (params > 0) {
		char p[32];
		fmt_params((uint64_t)params, p, sizeof p);
		owl_buf_printf(&b, "%s%s parameters", b.len ? ", " : "", p);
	}
	const char *dtype = json_string_value(json_object_get(c, "dtype"));
	if (dtype)
		owl_buf_printf(&b, "%s%s", b.len ? ", " : "", dtype);
	json_int_t ctxlen = json_integer_value(json_object_get(c, "context_length"));
	if (ctxlen > 0)
		owl_buf_printf(&b, "%scontext %lld", b.len ? ", " : "", (long long)ctxlen);
	snprintf(out, len, "%s", b.len ? b.data : "no config summary");
	owl_buf_release(&b);
	json_decref(c);
}

/* ---- pull ---------------------------------------------------------------- */

/* --min-rate: "0" (off), "512", "10k", "10KiB", "1M", "1MiB/s"; bytes/s in
 * *out (-1 for off). 0 when the value is understood. */
static int parse_rate(const char *s, int64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (end == s || errno || s[0] == '-')
		return -1;
	uint64_t mult = 1;
	if (*end == 'k' || *end == 'K')
		mult = 1024, end++;
	else if (*end == 'm' || *end == 'M')
		mult = 1024 * 1024, end++;
	else if (*end == 'g' || *end == 'G')
		mult = 1024 * 1024 * 1024, end++;
	if (mult > 1 && strncmp(end, "iB", 2) == 0)
		end += 2;
	else if (*end == 'B')
		end++;
	if (strcmp(end, "/s") == 0)
		end += 2;
	if (*end || v > (uint64_t)INT64_MAX / mult)
		return -1;
	*out = v == 0 ? -1 : (int64_t)(v * mult);
	return 0;
}

/* Ctrl-C (or SIGTERM) during a pull asks the library to stop at its next
 * check; a second one ends the process at once. */
static volatile sig_atomic_t pull_interrupted;

static void on_pull_signal(int sig)
{
	if (pull_interrupted)
		_exit(130);
	pull_interrupted = 1;
}

static int pull_cancelled(void *ctx) { return pull_interrupted != 0; }

static void say_tag_follow(void *c, const char *name, int moved, const owl_err *err)
{
	owl_ctx *ctx = c;
	if (err)
		fprintf(stderr, "owl: warning: deployment '%s' did not follow the tag: %s\n", name,
			err->msg);
	else if (moved && !ctx->quiet)
		fprintf(ctx->json ? stderr : stdout, "deployment %s follows it: new revision made (owl "
			"deploy history %s)\n", name, name);
}

static int run_pull(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"name", required_argument, 0, 'n'}, {"tag", required_argument, 0, 't'},
		{"sha256", required_argument, 0, 's'}, {"ca-cert", required_argument, 0, 'c'},
		{"include", required_argument, 0, 'i'}, {"base", required_argument, 0, 'b'},
		{"min-rate", required_argument, 0, 'r'}, {0, 0, 0, 0},
	};
	const char *name = NULL, *tag = NULL, *sha = NULL, *ca = NULL, *base = NULL;
	int64_t min_rate = 0;
	const char *include[33] = {0};
	int ninclude = 0, c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 't': tag = optarg; break;
		case 's': sha = optarg; break;
		case 'c': ca = optarg; break;
		case 'b': base = optarg; break;
		case 'r':
			if (parse_rate(optarg, &min_rate) != 0)
				return cmd_usage_error("pull", "--min-rate wants bytes per second, e.g. "
						       "10k, 1M or 0 (no minimum), not '%s'", optarg);
			break;
		case 'i':
			if (ninclude == 32)
				return cmd_usage_error("pull", "at most 32 --include patterns");
			include[ninclude++] = optarg;
			break;
		default: return cmd_usage_error("pull", "unknown option");
		}
	}
	if (optind != argc - 1)
		return cmd_usage_error("pull", "expected one SOURCE");
	const char *source = argv[optind];
	if (sha && !owl_is_hex_digest(sha, 64))
		return cmd_usage_error("pull", "--sha256 wants 64 lowercase hex digits");
	if (name && !registry_valid_name(name))
		return cmd_usage_error("pull", "invalid --name '%s': use letters, digits, '-', '_', "
				       "'.' and '/'", name);

	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	/* A derived version (an adapter, a merge) names its base. */
	int64_t parent_id = 0;
	if (base) {
		registry_version bv;
		if (registry_resolve(s, base, &bv, &err)) {
			registry_store_close(s);
			owl_err_wrap(&err, "--base");
			return cmd_fail(&err);
		}
		parent_id = bv.id;
		registry_version_release(&bv);
	}
	owl_progress prog;
	cmd_progress_init(ctx, &prog);
	registry_source_opts so = {
		.expected_sha256 = sha, .ca_cert = ca, .include = ninclude ? include : NULL,
		.min_rate = min_rate, .progress = owl_progress_update, .progress_ctx = &prog,
		.cancelled = pull_cancelled,
	};
	struct sigaction sa = {.sa_handler = on_pull_signal}, old_int, old_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	if (!ctx->quiet && !ctx->json)
		fprintf(stderr, "pulling %s\n", source);
	registry_stage *st = NULL;
	int rc = registry_stage_from_source(s, source, &so, &st, &err);
	owl_progress_finish(&prog);
	/* Past the download, the commit is quick and all or nothing. */
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	if (rc) {
		registry_store_close(s);
		return cmd_fail(&err);
	}
	const char *model = name ? name : st->default_name;
	license_admit_result adm;
	rc = license_admit_stage(s, st, model, parent_id, tag, &adm, &err);
	if (rc) {
		registry_stage_free(st);
		registry_store_close(s);
		return cmd_fail(&err);
	}
	const registry_commit_result res = adm.commit;
	char desc[256], total[32], fresh[32];
	describe_config(st->config_json, desc, sizeof desc);
	owl_fmt_bytes(st->total_bytes, total, sizeof total);
	owl_fmt_bytes(res.new_bytes, fresh, sizeof fresh);
	if (ctx->json) {
		json_t *o = json_object();
		json_object_set_new(o, "model", json_string(model));
		json_object_set_new(o, "version", json_integer(res.number));
		json_object_set_new(o, "ref", json_sprintf("%s@%d", model, res.number));
		json_object_set_new(o, "source", json_string(st->source));
		json_object_set_new(o, "revision", st->revision ? json_string(st->revision) : json_null());
		json_object_set_new(o, "format", json_string(st->format));
		json_object_set_new(o, "files", json_integer((json_int_t)st->nfiles));
		json_object_set_new(o, "bytes", json_integer((json_int_t)st->total_bytes));
		json_object_set_new(o, "new_bytes", json_integer((json_int_t)res.new_bytes));
		json_object_set_new(o, "downloaded_bytes", json_integer((json_int_t)st->downloaded_bytes));
		json_object_set_new(o, "self_checked_files", json_integer((json_int_t)st->self_checked_files));
		json_object_set_new(o, "config", config_summary(st->config_json));
		json_object_set_new(o, "license", json_string(adm.license));
		if (tag)
			json_object_set_new(o, "tag", json_string(tag));
		cmd_print_json(o);
	} else {
		printf("registered %s@%d: %zu files, %s (%s new), format %s\n", model, res.number,
		       st->nfiles, total, fresh, st->format);
		printf("  %s\n", desc);
		printf("  license: %s\n", adm.license);
		if (st->revision)
			printf("  revision %s\n", st->revision);
		if (tag)
			printf("  tagged %s:%s\n", model, tag);
		if (st->self_checked_files)
			printf("  checked only against itself: the source published no digest for %zu "
			       "file%s%s\n", st->self_checked_files, st->self_checked_files == 1 ? "" : "s",
			       strncmp(source, "hf://", 5) != 0 ? " (--sha256 HEX pins it)" : "");
	}
	/* A pull that moves a tag moves the deployments following it, as owl tag does. */
	if (tag)
		deploy_follow_all(s, model, NULL, say_tag_follow, ctx, NULL);
	license_admit_result_release(&adm);
	registry_stage_free(st);
	registry_store_close(s);
	return OWL_OK;
}

/* ---- list ---------------------------------------------------------------- */

static int run_list(owl_ctx *ctx, int argc, char **argv)
{
	const char *only = NULL;
	if (argc > 2)
		return cmd_usage_error("list", "expected at most one NAME");
	if (argc == 2)
		only = argv[1];
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version_info *vs = NULL;
	size_t nv = 0;
	int rc = registry_list_versions(s, only, &vs, &nv, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	json_t *arr = json_array();
	int n = 0;
	if (!ctx->json)
		printf("%-32s %-7s %-12s %10s  %-20s %s\n", "NAME", "FORMAT", "TAGS", "SIZE",
		       "CREATED", "SUMMARY");
	for (size_t i = 0; i < nv; i++) {
		const registry_version_info *v = &vs[i];
		n++;
		if (ctx->json) {
			json_t *o = json_object();
			json_object_set_new(o, "model", json_string(v->model));
			json_object_set_new(o, "version", json_integer(v->number));
			json_object_set_new(o, "ref", json_sprintf("%s@%d", v->model, v->number));
			json_object_set_new(o, "format", json_string(v->format));
			json_object_set_new(o, "bytes", json_integer((json_int_t)v->total_bytes));
			json_object_set_new(o, "created_at", json_integer(v->created_at));
			json_object_set_new(o, "source", json_string(v->source));
			json_t *ta = json_array();
			for (size_t k = 0; k < v->ntags; k++)
				json_array_append_new(ta, json_string(v->tags[k]));
			json_object_set_new(o, "tags", ta);
			json_object_set_new(o, "config", config_summary(v->config_json));
			json_array_append_new(arr, o);
		} else {
			char ref[160], size[32], when[32], desc[256];
			snprintf(ref, sizeof ref, "%s@%d", v->model, v->number);
			owl_fmt_bytes(v->total_bytes, size, sizeof size);
			owl_fmt_time(v->created_at, when, sizeof when);
			describe_config(v->config_json, desc, sizeof desc);
			owl_buf tags;
			owl_buf_init(&tags, 1u << 20);
			for (size_t k = 0; k < v->ntags; k++)
				owl_buf_printf(&tags, "%s%s", k ? "," : "", v->tags[k]);
			printf("%-32s %-7s %-12s %10s  %-20s %s\n", ref, v->format,
			       tags.len ? tags.data : "-", size, when, desc);
			owl_buf_release(&tags);
		}
	}
	registry_version_infos_free(vs, nv);
	if (ctx->json)
		cmd_print_json(arr);
	else {
		json_decref(arr);
		if (n == 0)
			printf("(no models yet: 'owl pull SOURCE' registers one)\n");
	}
	return OWL_OK;
}

/* ---- show ---------------------------------------------------------------- */

/* What `owl train` recorded of a trained adapter: its base, run, data and
 * hyperparameters. */
static void print_lineage(const char *config_json)
{
	json_t *c = config_summary(config_json);
	json_t *l = json_object_get(c, "lineage");
	if (json_is_object(l)) {
		json_t *d = json_object_get(l, "dataset"), *h = json_object_get(l, "hyperparameters");
		printf("  lineage:  trained from %s in run %s ('owl runs show %s')\n",
		       json_string_value(json_object_get(l, "base")),
		       json_string_value(json_object_get(l, "run")),
		       json_string_value(json_object_get(l, "run")));
		printf("            data sha256:%s, %lld lines, %lld samples (%s)\n",
		       json_string_value(json_object_get(d, "sha256")),
		       (long long)json_integer_value(json_object_get(d, "lines")),
		       (long long)json_integer_value(json_object_get(d, "samples")),
		       json_string_value(json_object_get(d, "format")));
		owl_buf t;
		owl_buf_init(&t, 256);
		size_t i;
		json_t *x;
		json_array_foreach(json_object_get(h, "targets"), i, x)
			owl_buf_printf(&t, "%s%s", i ? "," : "", json_string_value(x));
		printf("            rank %lld, alpha %g%s, targets %s, lr %g, %lld steps, final loss "
		       "%.4f\n", (long long)json_integer_value(json_object_get(h, "rank")),
		       json_number_value(json_object_get(h, "alpha")),
		       json_is_true(json_object_get(h, "rslora")) ? " (rsLoRA)" : "",
		       t.len ? t.data : "?", json_number_value(json_object_get(h, "lr")),
		       (long long)json_integer_value(json_object_get(l, "steps")),
		       json_number_value(json_object_get(l, "final_loss")));
		owl_buf_release(&t);
	}
	json_t *mf = json_object_get(c, "merged_from");
	if (json_is_object(mf))
		printf("  merged:   %s into %s\n", json_string_value(json_object_get(mf, "adapter")),
		       json_string_value(json_object_get(mf, "base")));
	json_decref(c);
}

static int run_show(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 2)
		return cmd_usage_error("show", "expected one NAME[@V|:TAG]");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version v;
	if (registry_resolve(s, argv[1], &v, &err)) {
		registry_store_close(s);
		return cmd_fail(&err);
	}
	/* Tags pointing here and the parent, for lineage. */
	char **tagv = NULL;
	size_t ntags = 0;
	if (registry_version_tags(s, v.id, &tagv, &ntags, &err)) {
		registry_version_release(&v);
		registry_store_close(s);
		return cmd_fail(&err);
	}
	json_t *tags = json_array();
	for (size_t i = 0; i < ntags; i++)
		json_array_append_new(tags, json_string(tagv[i]));
	registry_strings_free(tagv, ntags);
	registry_version parent = {0};
	int has_parent = v.parent_id && registry_version_by_id(s, v.parent_id, &parent, NULL) == 0;

	if (ctx->json) {
		json_t *o = json_object();
		json_object_set_new(o, "model", json_string(v.model));
		json_object_set_new(o, "version", json_integer(v.number));
		json_object_set_new(o, "ref", json_sprintf("%s@%d", v.model, v.number));
		json_object_set_new(o, "source", json_string(v.source));
		json_object_set_new(o, "revision", v.revision ? json_string(v.revision) : json_null());
		json_object_set_new(o, "format", json_string(v.format));
		json_object_set_new(o, "bytes", json_integer((json_int_t)v.total_bytes));
		json_object_set_new(o, "created_at", json_integer(v.created_at));
		json_object_set_new(o, "tags", json_incref(tags));
		json_object_set_new(o, "parent", has_parent ? json_sprintf("%s@%d", parent.model,
									parent.number)
							    : json_null());
		json_object_set_new(o, "config", config_summary(v.config_json));
		json_t *fa = json_array();
		for (size_t i = 0; i < v.nfiles; i++) {
			json_t *f = json_object();
			json_object_set_new(f, "path", json_string(v.files[i].path));
			json_object_set_new(f, "size", json_integer((json_int_t)v.files[i].size));
			json_object_set_new(f, "sha256", json_string(v.files[i].digest));
			json_array_append_new(fa, f);
		}
		json_object_set_new(o, "files", fa);
		cmd_print_json(o);
	} else {
		char when[32], size[32], desc[256];
		owl_fmt_time(v.created_at, when, sizeof when);
		owl_fmt_bytes(v.total_bytes, size, sizeof size);
		describe_config(v.config_json, desc, sizeof desc);
		printf("%s@%d\n", v.model, v.number);
		printf("  source:   %s\n", v.source);
		if (v.revision)
			printf("  revision: %s\n", v.revision);
		printf("  format:   %s\n", v.format);
		printf("  model:    %s\n", desc);
		printf("  size:     %s in %zu files\n", size, v.nfiles);
		printf("  created:  %s\n", when);
		if (json_array_size(tags)) {
			printf("  tags:    ");
			size_t i;
			json_t *t;
			json_array_foreach(tags, i, t) printf(" %s", json_string_value(t));
			printf("\n");
		}
		if (has_parent)
			printf("  parent:   %s@%d\n", parent.model, parent.number);
		print_lineage(v.config_json);
		printf("  files:\n");
		for (size_t i = 0; i < v.nfiles; i++) {
			char fs[32];
			owl_fmt_bytes(v.files[i].size, fs, sizeof fs);
			printf("    %-44s %10s  sha256:%s\n", v.files[i].path, fs, v.files[i].digest);
		}
	}
	json_decref(tags);
	registry_version_release(&parent);
	registry_version_release(&v);
	registry_store_close(s);
	return OWL_OK;
}

/* ---- tag ----------------------------------------------------------------- */


static int run_tag(owl_ctx *ctx, int argc, char **argv)
{
	owl_err err = {0};
	registry_store *s = NULL;
	if (argc == 3 && strcmp(argv[1], "--delete") == 0) {
		const char *colon = strrchr(argv[2], ':');
		if (!colon)
			return cmd_usage_error("tag", "--delete wants NAME:TAG");
		char *model = owl_xasprintf("%.*s", (int)(colon - argv[2]), argv[2]);
		int rc = cmd_open_store(ctx, &s, &err);
		if (!rc)
			rc = registry_tag_delete(s, model, colon + 1, &err);
		free(model);
		registry_store_close(s);
		if (rc)
			return cmd_fail(&err);
		if (!ctx->quiet)
			printf("deleted tag %s\n", argv[2]);
		return OWL_OK;
	}
	if (argc == 3 && strcmp(argv[1], "--history") == 0) {
		if (cmd_open_store(ctx, &s, &err))
			return cmd_fail(&err);
		registry_tag_move *moves = NULL;
		size_t nmoves = 0;
		int rc = registry_tag_history(s, argv[2], &moves, &nmoves, &err);
		registry_store_close(s);
		if (rc)
			return cmd_fail(&err);
		json_t *arr = json_array();
		for (size_t i = 0; i < nmoves; i++) {
			const char *tag = moves[i].tag;
			int64_t at = moves[i].at;
			int from = moves[i].from, to = moves[i].to;
			if (ctx->json) {
				json_t *o = json_pack("{s:s, s:I}", "tag", tag, "at", (json_int_t)at);
				json_object_set_new(o, "from", from ? json_integer(from) : json_null());
				json_object_set_new(o, "to", to ? json_integer(to) : json_null());
				json_array_append_new(arr, o);
			} else {
				char when[32], a[16] = "-", b[16] = "(deleted)";
				owl_fmt_time(at, when, sizeof when);
				if (from)
					snprintf(a, sizeof a, "@%d", from);
				if (to)
					snprintf(b, sizeof b, "@%d", to);
				printf("%s  %-12s %s -> %s\n", when, tag, a, b);
			}
		}
		registry_tag_moves_free(moves, nmoves);
		if (ctx->json)
			cmd_print_json(arr);
		else
			json_decref(arr);
		return OWL_OK;
	}
	if (argc != 3 || argv[1][0] == '-')
		return cmd_usage_error("tag", "expected NAME@V TAG, --delete NAME:TAG or --history NAME");
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version v;
	int rc = registry_resolve(s, argv[1], &v, &err);
	if (!rc)
		rc = registry_tag_set(s, &v, argv[2], &err);
	if (!rc && !ctx->quiet)
		printf("%s:%s -> %s@%d\n", v.model, argv[2], v.model, v.number);
	/* Deployments that follow the tag move now, each gated on its own: a
	 * refusal keeps that deployment where it is and is said, the tag moved. */
	if (!rc)
		deploy_follow_all(s, v.model, NULL, say_tag_follow, ctx, NULL);
	registry_version_release(&v);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

/* ---- rm, gc, verify -------------------------------------------------------- */

static int run_rm(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 2)
		return cmd_usage_error("rm", "expected one NAME@V");
	if (!strchr(argv[1], '@'))
		return cmd_usage_error("rm", "name the version to remove explicitly, e.g. %s@1",
				       argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version v;
	int rc = registry_resolve(s, argv[1], &v, &err);
	if (!rc)
		rc = registry_version_remove(s, &v, &err);
	if (!rc && !ctx->quiet)
		printf("removed %s@%d (its blobs are freed by 'owl gc' when nothing else uses them)\n",
		       v.model, v.number);
	registry_version_release(&v);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

static int run_gc(owl_ctx *ctx, int argc, char **argv)
{
	int dry = argc == 2 && strcmp(argv[1], "--dry-run") == 0;
	if (argc > 2 || (argc == 2 && !dry))
		return cmd_usage_error("gc", "unexpected argument '%s'", argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_gc_result r;
	int rc = registry_gc(s, dry, &r, &err);
	/* Partial downloads of killed pulls; a running pull's stay (its lock). */
	uint64_t parts = 0, part_bytes = 0;
	if (!rc)
		rc = registry_downloads_reclaim(s, dry, &parts, &part_bytes, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json) {
		json_t *o = json_pack("{s:b, s:I, s:I, s:I, s:I}", "dry_run", dry, "blobs_removed",
				      (json_int_t)r.blobs_removed, "bytes_freed",
				      (json_int_t)r.bytes_freed, "stale_staging_removed",
				      (json_int_t)r.stale_tmp_removed, "blobs_kept_unknown",
				      (json_int_t)r.blobs_kept_unknown);
		json_object_set_new(o, "partial_downloads_removed", json_integer((json_int_t)parts));
		json_object_set_new(o, "partial_bytes_freed", json_integer((json_int_t)part_bytes));
		cmd_print_json(o);
	} else {
		char pb[32];
		owl_fmt_bytes(part_bytes, pb, sizeof pb);
		printf("%s %llu partial downloads no running pull owns, %s freed\n",
		       dry ? "would remove" : "removed", (unsigned long long)parts, pb);
		char b[32];
		owl_fmt_bytes(r.bytes_freed, b, sizeof b);
		printf("%s %llu unreferenced blobs, %s freed; %llu stale staging folders\n",
		       dry ? "would remove" : "removed", (unsigned long long)r.blobs_removed, b,
		       (unsigned long long)r.stale_tmp_removed);
	}
	if (r.blobs_kept_unknown)
		fprintf(stderr, "owl: kept %llu blobs that are older than this database and were "
			"never recorded in it (an earlier database was lost?): 'owl recover' "
			"registers them again\n", (unsigned long long)r.blobs_kept_unknown);
	return OWL_OK;
}

static void print_problem(void *ctx, const char *model, int number, const char *path,
			  const char *digest, const char *problem)
{
	json_t *arr = ctx;
	if (arr)
		json_array_append_new(arr, json_pack("{s:s, s:i, s:s, s:s, s:s}", "model", model,
						     "version", number, "path", path, "sha256",
						     digest, "problem", problem));
	else
		fprintf(stderr, "%s@%d: %s: %s\n", model, number, path, problem);
}

static int run_verify(owl_ctx *ctx, int argc, char **argv)
{
	if (argc > 2)
		return cmd_usage_error("verify", "expected at most one NAME[@V]");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version v = {0};
	if (argc == 2 && registry_resolve(s, argv[1], &v, &err)) {
		registry_store_close(s);
		return cmd_fail(&err);
	}
	json_t *problems = ctx->json ? json_array() : NULL;
	uint64_t checked = 0;
	/* A name without @V verifies every version of that model. */
	int rc = 0;
	if (argc == 2 && !strchr(argv[1], '@') && !strchr(argv[1], ':')) {
		registry_version_info *vs = NULL;
		size_t nv = 0;
		uint64_t bad = 0;
		rc = registry_list_versions(s, v.model, &vs, &nv, &err);
		for (size_t i = 0; !rc && i < nv; i++) {
			registry_version one;
			uint64_t n = 0;
			owl_err e1 = {0};
			if (registry_version_by_id(s, vs[i].id, &one, &e1) == 0) {
				if (registry_verify(s, &one, print_problem, problems, &n, &e1))
					bad++;
				checked += n;
				registry_version_release(&one);
			}
		}
		registry_version_infos_free(vs, nv);
		if (!rc && bad)
			rc = owl_err_set(&err, OWL_EINTEGRITY, "%llu version(s) of '%s' have corrupt or "
					 "missing files", (unsigned long long)bad, v.model);
	} else {
		rc = registry_verify(s, argc == 2 ? &v : NULL, print_problem, problems, &checked, &err);
	}
	registry_version_release(&v);
	registry_store_close(s);
	if (ctx->json) {
		cmd_print_json(json_pack("{s:b, s:I, s:o}", "ok", rc == 0, "files_checked",
					 (json_int_t)checked, "problems", problems));
		return rc;
	}
	if (rc)
		return cmd_fail(&err);
	printf("ok: %llu files verified\n", (unsigned long long)checked);
	return OWL_OK;
}

/* ---- recover ------------------------------------------------------------- */

static int run_recover(owl_ctx *ctx, int argc, char **argv)
{
	if (argc != 1)
		return cmd_usage_error("recover", "unexpected argument '%s'", argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_recover_result r;
	int rc = registry_recover(s, &r, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json) {
		cmd_print_json(json_pack("{s:s?, s:i, s:I, s:I, s:I, s:I}", "model",
					 r.versions ? r.model : NULL, "versions", r.versions, "blobs",
					 (json_int_t)r.blobs, "bytes", (json_int_t)r.bytes, "gguf",
					 (json_int_t)r.gguf, "corrupt", (json_int_t)r.corrupt));
	} else if (r.versions == 0) {
		printf("nothing to recover: every blob belongs to a registered version\n");
	} else {
		char b[32];
		owl_fmt_bytes(r.bytes, b, sizeof b);
		printf("recovered %llu blobs (%s) as %d version%s of %s", (unsigned long long)r.blobs,
		       b, r.versions, r.versions == 1 ? "" : "s", r.model);
		printf(" (%llu GGUF model%s, one version each%s)\n", (unsigned long long)r.gguf,
		       r.gguf == 1 ? "" : "s", r.versions > (int)r.gguf ? "; the other files in one "
		       "version of format 'files', named by digest" : "");
		printf("  original names, tags and license findings were in the lost database and are "
		       "not invented; 'owl show %s@1' lists the files\n", r.model);
	}
	if (r.corrupt)
		fprintf(stderr, "owl: %llu blobs do not match their digest and were left alone "
			"(owl gc removes them)\n", (unsigned long long)r.corrupt);
	return OWL_OK;
}

/* ---- export / import ----------------------------------------------------- */

static int run_export(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {{"sign", required_argument, 0, 'k'}, {0, 0, 0, 0}};
	const char *key = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c != 'k')
			return cmd_usage_error("export", "unknown option");
		key = optarg;
	}
	argv += optind - 1;
	argc -= optind - 1;
	if (argc != 3)
		return cmd_usage_error("export", "expected NAME@V FILE.tar[.zst]");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	registry_version v;
	int rc = registry_resolve(s, argv[1], &v, &err);
	/* The bundle carries the license and its obligations to the other side. */
	if (!rc)
		rc = license_export_bundle(s, &v, argv[2], key, &err);
	if (!rc && !ctx->quiet) {
		char b[32];
		owl_fmt_bytes(v.total_bytes, b, sizeof b);
		printf("exported %s@%d to %s (%zu files, %s%s)\n", v.model, v.number, argv[2],
		       v.nfiles, b, key ? ", signed" : "");
	}
	registry_version_release(&v);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

static int run_import(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"name", required_argument, 0, 'n'}, {"tag", required_argument, 0, 't'},
		{"trust", required_argument, 0, 'k'}, {0, 0, 0, 0},
	};
	const char *name = NULL, *tag = NULL, *trust_key = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'n')
			name = optarg;
		else if (c == 't')
			tag = optarg;
		else if (c == 'k')
			trust_key = optarg;
		else
			return cmd_usage_error("import", "unknown option");
	}
	if (optind != argc - 1)
		return cmd_usage_error("import", "expected one FILE");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	license_import_result imp;
	int rc = license_import_bundle(s, argv[optind], trust_key, name, tag, &imp, &err);
	const char *model = imp.model;
	const registry_commit_result res = imp.admit.commit;
	const registry_bundle_trust trust = imp.trust;
	if (!rc) {
		if (ctx->json)
			cmd_print_json(json_pack("{s:s, s:i, s:o, s:I, s:s}", "model", model, "version",
						 res.number, "ref", json_sprintf("%s@%d", model, res.number),
						 "files", (json_int_t)imp.nfiles, "signature",
						 trust == REGISTRY_BUNDLE_SIGNATURE_OK ? "verified"
						 : trust == REGISTRY_BUNDLE_SIGNED_UNCHECKED ? "unchecked"
											     : "none"));
		else
			printf("imported %s@%d from %s (%zu files, every digest verified%s)\n", model,
			       res.number, argv[optind], imp.nfiles,
			       trust == REGISTRY_BUNDLE_SIGNATURE_OK ? ", signature verified"
			       : trust == REGISTRY_BUNDLE_SIGNED_UNCHECKED
				       ? "; signed, but not checked: pass --trust KEY.pub"
				       : "");
	}
	license_import_result_release(&imp);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

const owl_command cmd_registry_commands[] = {
	{"pull", run_pull, "download or copy a checkpoint, verify it and register a new version",
	 "USAGE\n"
	 "  owl pull SOURCE [--name NAME] [--tag TAG] [--sha256 HEX] [--ca-cert FILE]\n"
	 "           [--include GLOB]... [--base NAME@V] [--min-rate RATE]\n"
	 "\n"
	 "Registers SOURCE as the next version of NAME (NAME@1, NAME@2, ...). SOURCE is:\n"
	 "  https://HOST/PATH/FILE   one file: a .gguf, a .safetensors or an archive\n"
	 "  hf://ORG/REPO[@REV]      a hub repository at a branch, tag or commit\n"
	 "                           (endpoint $OWL_HF_ENDPOINT, token $OWL_HF_TOKEN)\n"
	 "  ./folder                 a checkpoint folder (config.json, *.safetensors, ...)\n"
	 "  ./model.tar.zst          an archive: .tar, .tar.gz, .tar.zst or .zip\n"
	 "  ./model.gguf             a single local file\n"
	 "\n"
	 "Every file is hashed (SHA-256) while it streams and checked against the digest\n"
	 "the source promises (hub LFS metadata, --sha256); a mismatch stores nothing and\n"
	 "exits 4. Pickle files (.bin, .pt, .pth, .ckpt) are refused; safetensors and GGUF\n"
	 "headers are checked before anything is registered. Downloads run in parallel,\n"
	 "resume after an interruption (only where the server shows, by ETag or\n"
	 "Last-Modified, that the file is unchanged, or a digest decides) and retry\n"
	 "transient errors. A file with no published digest is reported as checked only\n"
	 "against itself. Paths a hub lists are checked before anything is written: one\n"
	 "that is absolute, has '..' or is too long refuses the pull (exit 4). Identical\n"
	 "files are stored once. A version is pinned to the commit the hub resolved.\n"
	 "The license is detected and the policy's import rules are applied before\n"
	 "anything is registered (exit 3 when denied). An archive may hold at most\n"
	 "$OWL_MAX_ARCHIVE_ENTRIES entries (default 100000); a repeated entry exits 4.\n"
	 "While another owl holds the database's lock, pull (like every writer) waits\n"
	 "up to $OWL_LOCK_TIMEOUT seconds (default 600) and says so.\n"
	 "\n"
	 "OPTIONS\n"
	 "  --name NAME      model name (default: derived from the source)\n"
	 "  --tag TAG        also point TAG at the new version\n"
	 "  --sha256 HEX     expected digest of a single-file source\n"
	 "  --ca-cert FILE   trust this CA (PEM) for HTTPS, e.g. a private mirror\n"
	 "  --include GLOB   hub: only files matching GLOB (repeatable), e.g. '*Q4_K_M.gguf'\n"
	 "  --base NAME@V    the version this one derives from (an adapter or a merge):\n"
	 "                   it inherits the base's license and its naming rules\n"
	 "  --min-rate RATE  give up on a server slower than RATE bytes/s over a minute\n"
	 "                   (twice), e.g. 100k or 1M; default 10k; 0 turns it off\n"
	 "                   (the window: $OWL_MIN_RATE_WINDOW seconds, default 60)\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl pull hf://HuggingFaceTB/SmolLM2-135M-Instruct@main --name smollm2 --tag stable\n"
	 "  owl pull https://mirror.internal/models/tinyllama.Q8_0.gguf --sha256 9f2c...\n"
	 "  owl pull ./checkpoints/support-bot-v3 --name support-bot\n"},
	{"list", run_list, "list registered models and versions",
	 "USAGE\n"
	 "  owl list [NAME] [--json]\n"
	 "\n"
	 "Lists every version (or those of NAME) with format, tags, size, creation time\n"
	 "and a summary of its config.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl list\n"
	 "  owl list smollm2 --json\n"},
	{"show", run_show, "show one version: files, digests, source, config summary",
	 "USAGE\n"
	 "  owl show NAME[@V|:TAG] [--json]\n"
	 "\n"
	 "Shows the version's source and pinned revision, format, architecture,\n"
	 "parameter count, dtype and context length, tags, parent (for derived\n"
	 "versions) and every file with its size and SHA-256. An adapter that 'owl\n"
	 "train' made also shows its lineage: base version, run, the data's SHA-256\n"
	 "and line count, and the hyperparameters (--json: config.lineage). NAME alone\n"
	 "is the latest version.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl show smollm2@1\n"
	 "  owl show smollm2:stable --json\n"},
	{"tag", run_tag, "point a tag at a version, delete a tag, or show tag history",
	 "USAGE\n"
	 "  owl tag NAME@V TAG\n"
	 "  owl tag --delete NAME:TAG\n"
	 "  owl tag --history NAME [--json]\n"
	 "\n"
	 "Tags are movable names for versions (stable, canary, prod). Every move is\n"
	 "recorded with its time; --history shows them. Deployments that follow the tag\n"
	 "(owl deploy create NAME --model M:TAG) get a new revision for the new version,\n"
	 "gated by the license policy; a refusal keeps that deployment where it is.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl tag smollm2@3 stable\n"
	 "  owl tag --history smollm2\n"},
	{"rm", run_rm, "remove a version (refused while a tag or derived version uses it)",
	 "USAGE\n"
	 "  owl rm NAME@V\n"
	 "\n"
	 "Removes the version's record. Its blobs stay until 'owl gc' finds nothing\n"
	 "else uses them. Refused while a tag, a derived version or a deployment's\n"
	 "revision (current or kept for a rollback) references the version; the message\n"
	 "names the deployments.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl rm smollm2@1 && owl gc\n"},
	{"gc", run_gc, "delete blobs no version references and stale staging folders",
	 "USAGE\n"
	 "  owl gc [--dry-run] [--json]\n"
	 "\n"
	 "Frees disk space: blobs no version references (after 'owl rm', or left by an\n"
	 "interrupted pull), staging folders of pulls whose process is gone, and partial\n"
	 "downloads no running pull holds (left by a killed pull or a full disk). A blob\n"
	 "the database never recorded and that is older than the database is kept (it\n"
	 "comes from an earlier, lost database: see 'owl recover').\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl gc --dry-run\n"
	 "  owl gc\n"},
	{"recover", run_recover, "register blobs again after owl.db was lost or truncated",
	 "USAGE\n"
	 "  owl recover [--json]\n"
	 "\n"
	 "When owl.db is lost, emptied or unreadable, owl refuses to open the home\n"
	 "(a new, empty database would make 'owl gc' treat every blob as garbage).\n"
	 "'owl recover' moves an unreadable owl.db aside (owl.db.broken-TIME), starts a\n"
	 "new database and registers every blob no version references under a new\n"
	 "model recovered-YYYYMMDD-HHMMSS: each GGUF file as its own version (format\n"
	 "gguf, runnable), every other blob in one version of format 'files', named by\n"
	 "its digest with an extension read from its content. Each blob is re-hashed\n"
	 "first; one that does not match its digest is left alone. Original model\n"
	 "names, tags and license findings lived in the lost database and are not\n"
	 "invented: re-pull or re-import to get them back, then 'owl rm' the recovered\n"
	 "versions. Restoring owl.db from a backup, when there is one, is better.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl recover\n"
	 "  owl list recovered-20260101-120000\n"},
	{"verify", run_verify, "re-hash stored files and report corrupt or missing ones (exit 4)",
	 "USAGE\n"
	 "  owl verify [NAME[@V]] [--json]\n"
	 "\n"
	 "Re-reads every blob of the version (all versions of NAME, or everything)\n"
	 "and compares its SHA-256 with the recorded digest. Every corrupt or missing\n"
	 "file is reported; the exit status is 4 if there was any.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl verify\n"
	 "  owl verify smollm2@2\n"},
	{"export", run_export, "write a version to a bundle for air-gapped transfer",
	 "USAGE\n"
	 "  owl export NAME@V FILE.tar[.zst] [--sign KEY.pem]\n"
	 "\n"
	 "Writes a bundle holding the version's files and a manifest (model, version,\n"
	 "source, revision, format, config, and each file's path, size and SHA-256).\n"
	 "A .zst suffix compresses with zstd. 'owl import' on the other side checks\n"
	 "every digest before it registers anything. --sign adds manifest.sig, an\n"
	 "Ed25519 signature of the manifest (openssl genpkey -algorithm ed25519 -out\n"
	 "KEY.pem makes a key).\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl export smollm2@2 /media/usb/smollm2-v2.tar.zst\n"
	 "  owl export smollm2@2 smollm2-v2.tar --sign /etc/owl/release.pem\n"},
	{"import", run_import, "register a version from a bundle, verifying every digest",
	 "USAGE\n"
	 "  owl import FILE [--name NAME] [--tag TAG] [--trust KEY.pub]\n"
	 "\n"
	 "Reads a bundle written by 'owl export', checks that its files match the\n"
	 "manifest exactly (no missing, extra or altered file), then registers it as\n"
	 "the next version of its model (or of NAME). A mismatch stores nothing, exit 4.\n"
	 "--trust requires a valid signature by that Ed25519 public key (PEM).\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl import /media/usb/smollm2-v2.tar.zst\n"
	 "  owl import bundle.tar --name smollm2-offline --tag stable\n"
	 "  owl import smollm2-v2.tar --trust /etc/owl/release.pub\n"},
	{0},
};
