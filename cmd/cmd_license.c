/* License verbs: license (show, set, catalog), policy (add, list, rm, test,
 * export, import, org), approve, audit (list, verify). */
#define _GNU_SOURCE
#include "cmd.h"
#include "licenses/licenses.h"

#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *whoami(void)
{
	return owl_user_name();
}

/* Opens the store and resolves a reference in one step. */
static int open_and_resolve(owl_ctx *ctx, const char *ref, registry_store **s,
			    registry_version *v, owl_err *err)
{
	int rc = cmd_open_store(ctx, s, err);
	if (rc)
		return rc;
	rc = registry_resolve(*s, ref, v, err);
	if (rc) {
		registry_store_close(*s);
		*s = NULL;
	}
	return rc;
}

/* "30d", "12h", "90m", "45s" from now, or a UTC date "2026-12-31" (its
 * midnight) or time "2026-12-31T18:00[:SS][Z]" -> unix time. -1 when s is
 * none of these: a real calendar date is required (no 2026-02-31), and a
 * span at most a century long. */
static int parse_expiry(const char *s, int64_t *out)
{
	char *end = NULL;
	long long n = strtoll(s, &end, 10);
	if (end && end != s && end[0] && !end[1] && n > 0 && s[0] != '+') {
		int64_t unit = end[0] == 'd' ? 86400 : end[0] == 'h' ? 3600 : end[0] == 'm' ? 60
			     : end[0] == 's' ? 1 : 0;
		if (!unit || n > 100LL * 366 * 86400 / unit)
			return -1;
		*out = owl_unix_time() + n * unit;
		return 0;
	}
	int y, mo, d, h = 0, mi = 0, sec = 0, used = 0;
	if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &used) != 3 || used != 10)
		return -1;
	const char *rest = s + used;
	if (*rest == 'T') {
		int u2 = 0;
		if (sscanf(rest, "T%2d:%2d%n", &h, &mi, &u2) != 2 || u2 != 6)
			return -1;
		rest += u2;
		if (*rest == ':') {
			if (sscanf(rest, ":%2d%n", &sec, &u2) != 1 || u2 != 3)
				return -1;
			rest += u2;
		}
		if (*rest == 'Z')
			rest++;
	}
	if (*rest || y < 1970 || y > 9999 || h > 23 || mi > 59 || sec > 59)
		return -1;
	struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
			.tm_min = mi, .tm_sec = sec};
	time_t t = timegm(&tm);
	struct tm back;
	/* timegm normalises 2026-02-31 to March 3rd: refuse what is not a date. */
	if (!gmtime_r(&t, &back) || back.tm_year != y - 1900 || back.tm_mon != mo - 1 ||
	    back.tm_mday != d)
		return -1;
	*out = (int64_t)t;
	return 0;
}

/* ---- owl license ----------------------------------------------------------- */

static void print_facts(const license_facts *f)
{
	char mau[64] = "none";
	if (f->mau_limit)
		snprintf(mau, sizeof mau, "%lld monthly active users", (long long)f->mau_limit);
	printf("  %s: %s (%s)\n", f->id, f->name, f->category);
	printf("    commercial use:        %s\n", f->commercial ? "allowed" : "not allowed");
	printf("    user threshold:        %s\n", mau);
	printf("    derivatives:           %s\n", f->derivatives ? "allowed" : "not allowed");
	printf("    restrictions flow down: %s\n", f->flow_down ? "yes" : "no");
	printf("    outputs train others:  %s\n", f->outputs_train ? "allowed" : "not allowed");
	if (f->name_prefix[0])
		printf("    derived names:         must begin with \"%s\"\n", f->name_prefix);
	if (f->attribution[0])
		printf("    attribution:           %s\n", f->attribution);
	if (f->link[0])
		printf("    text:                  %s\n", f->link);
	if (f->summary[0])
		printf("    in short:              %s\n", f->summary);
}

static json_t *facts_json(const license_facts *f)
{
	return json_pack("{s:s, s:s, s:s, s:b, s:I, s:b, s:b, s:b, s:s, s:s, s:s, s:s}", "id", f->id,
			 "name", f->name, "category", f->category, "commercial", f->commercial,
			 "mau_limit", (json_int_t)f->mau_limit, "derivatives", f->derivatives,
			 "flow_down", f->flow_down, "outputs_train_other_models", f->outputs_train,
			 "derivative_name_prefix", f->name_prefix, "attribution", f->attribution,
			 "link", f->link, "summary", f->summary);
}

static int license_show(owl_ctx *ctx, const char *ref)
{
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version v;
	if (open_and_resolve(ctx, ref, &s, &v, &err))
		return cmd_fail(&err);
	license_status st;
	license_status_for(s, v.id, NULL, 0, &st, &err);
	int64_t src = st.from_version ? st.from_version : v.id;
	license_findings *lf = NULL;
	license_conclusion *cs = NULL;
	size_t ncs = 0;
	int rc = license_findings_of(s, src, &lf, &err);
	if (!rc)
		rc = license_conclusions_of(s, src, &cs, &ncs, &err);
	if (rc) {
		license_findings_free(lf);
		registry_version_release(&v);
		registry_store_close(s);
		return cmd_fail(&err);
	}
	json_t *findings = json_array();
	for (size_t i = 0; i < lf->n; i++)
		json_array_append_new(findings, json_pack("{s:s, s:s, s:s, s:f}", "license",
							  lf->items[i].license_id, "source",
							  lf->items[i].source, "evidence",
							  lf->items[i].evidence, "confidence",
							  lf->items[i].confidence));
	license_findings_free(lf);
	json_t *conclusions = json_array();
	for (size_t i = 0; i < ncs; i++)
		json_array_append_new(conclusions, json_pack("{s:s, s:s, s:s, s:I}", "license",
							     cs[i].license_id, "reason", cs[i].reason,
							     "by", cs[i].by, "at", (json_int_t)cs[i].at));
	license_conclusions_free(cs, ncs);
	license_facts facts;
	int have_facts = license_catalog_get(s, st.license_id, &facts, NULL) == 0;
	registry_version base = {0};
	int inherited = st.from_version && st.from_version != v.id &&
			registry_version_by_id(s, st.from_version, &base, NULL) == 0;
	if (ctx->json) {
		json_t *o = json_pack("{s:s, s:i, s:s, s:s, s:s}", "model", v.model, "version",
				      v.number, "license", st.license_id, "status", st.status,
				      "detail", st.detail);
		json_object_set_new(o, "inherited_from",
				    inherited ? json_sprintf("%s@%d", base.model, base.number)
					      : json_null());
		json_object_set_new(o, "findings", findings);
		json_object_set_new(o, "conclusions", conclusions);
		json_object_set_new(o, "facts", have_facts ? facts_json(&facts) : json_null());
		cmd_print_json(o);
	} else {
		printf("%s@%d: %s (%s)\n", v.model, v.number, st.license_id, st.status);
		printf("  %s\n", st.detail);
		if (inherited)
			printf("  inherited from its base %s@%d\n", base.model, base.number);
		printf("findings:\n");
		size_t i;
		json_t *f;
		json_array_foreach(findings, i, f)
			printf("  %-14s %-12s %3.0f%%  %s\n",
			       json_string_value(json_object_get(f, "license"))[0]
				       ? json_string_value(json_object_get(f, "license"))
				       : "(supporting)",
			       json_string_value(json_object_get(f, "source")),
			       json_real_value(json_object_get(f, "confidence")) * 100,
			       json_string_value(json_object_get(f, "evidence")));
		if (!json_array_size(findings))
			printf("  (none)\n");
		json_array_foreach(conclusions, i, f)
			printf("conclusion: %s by %s: %s\n",
			       json_string_value(json_object_get(f, "license")),
			       json_string_value(json_object_get(f, "by")),
			       json_string_value(json_object_get(f, "reason")));
		if (have_facts) {
			printf("facts and obligations:\n");
			print_facts(&facts);
		}
		json_decref(findings);
		json_decref(conclusions);
	}
	registry_version_release(&base);
	registry_version_release(&v);
	registry_store_close(s);
	return OWL_OK;
}

static int license_set(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"reason", required_argument, 0, 'r'}, {"by", required_argument, 0, 'b'}, {0, 0, 0, 0},
	};
	const char *reason = NULL, *by = whoami();
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'r')
			reason = optarg;
		else if (c == 'b')
			by = optarg;
		else
			return cmd_usage_error("license", "unknown option");
	}
	if (optind != argc - 2)
		return cmd_usage_error("license", "expected: license set NAME@V ID --reason TEXT");
	if (!reason)
		return cmd_usage_error("license", "a conclusion needs --reason TEXT");
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version v;
	if (open_and_resolve(ctx, argv[optind], &s, &v, &err))
		return cmd_fail(&err);
	int rc = license_conclude_audited(s, v.id, argv[optind], argv[optind + 1], reason, by, &err);
	if (!rc && !ctx->quiet)
		printf("%s@%d: license concluded as %s (kept beside the detected findings)\n", v.model,
		       v.number, argv[optind + 1]);
	registry_version_release(&v);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

static int license_catalog(owl_ctx *ctx)
{
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	license_facts *all = NULL;
	size_t n = 0;
	int rc = license_catalog_list(s, &all, &n, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	json_t *arr = json_array();
	if (!ctx->json)
		printf("%-26s %-17s %-10s %-14s %s\n", "ID", "CATEGORY", "COMMERCIAL", "USER LIMIT",
		       "NAME");
	for (size_t i = 0; i < n; i++) {
		const license_facts *f = &all[i];
		if (ctx->json) {
			json_array_append_new(arr, facts_json(f));
		} else {
			char lim[32] = "-";
			if (f->mau_limit)
				snprintf(lim, sizeof lim, "%lldM", (long long)(f->mau_limit / 1000000));
			printf("%-26s %-17s %-10s %-14s %s\n", f->id, f->category,
			       f->commercial ? "yes" : "no", lim, f->name);
		}
	}
	free(all);
	if (ctx->json)
		cmd_print_json(arr);
	else
		json_decref(arr);
	return OWL_OK;
}

static int run_license(owl_ctx *ctx, int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "show") == 0 && argc == 3)
		return license_show(ctx, argv[2]);
	if (argc >= 2 && strcmp(argv[1], "set") == 0)
		return license_set(ctx, argc - 1, argv + 1);
	if (argc == 2 && strcmp(argv[1], "catalog") == 0)
		return license_catalog(ctx);
	return cmd_usage_error("license", "expected: license show NAME@V | license set NAME@V ID "
			       "--reason TEXT | license catalog");
}

/* ---- owl policy ------------------------------------------------------------ */

static int policy_add(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"effect", required_argument, 0, 'e'}, {"priority", required_argument, 0, 'p'},
		{"license", required_argument, 0, 'l'}, {"category", required_argument, 0, 'c'},
		{"action", required_argument, 0, 'a'}, {"use", required_argument, 0, 'u'},
		{"model", required_argument, 0, 'm'}, {"when", required_argument, 0, 'w'},
		{"message", required_argument, 0, 'M'}, {0, 0, 0, 0},
	};
	license_rule r = {0};
	const char *effect = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'e': effect = optarg; break;
		case 'p': {
			char *end = NULL;
			long p = strtol(optarg, &end, 10);
			if (!*optarg || *end || p < -1000000 || p > 1000000)
				return cmd_usage_error("policy", "--priority takes a whole number from "
						       "-1000000 to 1000000, not '%s'", optarg);
			r.priority = (int)p;
			break;
		}
		case 'l': snprintf(r.license, sizeof r.license, "%s", optarg); break;
		case 'c': snprintf(r.category, sizeof r.category, "%s", optarg); break;
		case 'a': snprintf(r.action, sizeof r.action, "%s", optarg); break;
		case 'u': snprintf(r.use, sizeof r.use, "%s", optarg); break;
		case 'm': snprintf(r.model, sizeof r.model, "%s", optarg); break;
		case 'w': snprintf(r.when, sizeof r.when, "%s", optarg); break;
		case 'M': snprintf(r.message, sizeof r.message, "%s", optarg); break;
		default: return cmd_usage_error("policy", "unknown option");
		}
	}
	if (optind != argc - 1)
		return cmd_usage_error("policy", "expected: policy add NAME --effect EFFECT [matchers]");
	snprintf(r.name, sizeof r.name, "%s", argv[optind]);
	if (!effect)
		return cmd_usage_error("policy", "a rule needs --effect allow|deny|require-approval");
	if (strcmp(effect, "allow") == 0)
		r.effect = LICENSE_ALLOW;
	else if (strcmp(effect, "deny") == 0)
		r.effect = LICENSE_DENY;
	else if (strcmp(effect, "require-approval") == 0 || strcmp(effect, "require_approval") == 0)
		r.effect = LICENSE_REQUIRE_APPROVAL;
	else
		return cmd_usage_error("policy", "--effect is allow, deny or require-approval");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	int rc = license_rule_add(s, &r, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (!ctx->quiet)
		printf("added rule %s (%s, priority %d)\n", r.name, license_effect_name(r.effect),
		       r.priority);
	return OWL_OK;
}

static int policy_list(owl_ctx *ctx, int export_file, const char *file)
{
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	license_policy *p = NULL;
	int rc = license_policy_read(s, &p, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (export_file) {
		char *text = license_policy_to_json(p, 1);
		rc = owl_write_file_atomic(file, text, strlen(text), &err);
		free(text);
		size_t n = p->nrules;
		license_policy_free(p);
		if (rc)
			return cmd_fail(&err);
		if (!ctx->quiet)
			printf("wrote %zu rules to %s\n", n, file);
		return OWL_OK;
	}
	if (ctx->json) {
		char *text = license_policy_to_json(p, 0);
		puts(text);
		free(text);
	} else {
		printf("%-26s %-16s %5s  %s\n", "RULE", "EFFECT", "PRIO", "MATCHES");
		for (size_t i = 0; i < p->nrules; i++) {
			const license_rule *r = &p->rules[i];
			owl_buf m;
			owl_buf_init(&m, 1024);
			if (r->license[0]) owl_buf_printf(&m, "license=%s ", r->license);
			if (r->category[0]) owl_buf_printf(&m, "category=%s ", r->category);
			if (r->action[0]) owl_buf_printf(&m, "action=%s ", r->action);
			if (r->use[0]) owl_buf_printf(&m, "use=%s ", r->use);
			if (r->model[0]) owl_buf_printf(&m, "model=%s ", r->model);
			if (r->when[0]) owl_buf_printf(&m, "when=%s ", r->when);
			printf("%-26s %-16s %5d  %s\n", r->name, license_effect_name(r->effect),
			       r->priority, m.len ? m.data : "everything");
			owl_buf_release(&m);
		}
		for (size_t i = 0; i < p->norg; i++)
			printf("org %s = %s\n", p->org[i].key, p->org[i].value);
	}
	license_policy_free(p);
	return OWL_OK;
}

static int policy_import(owl_ctx *ctx, int argc, char **argv)
{
	int replace = 0;
	const char *file = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--replace") == 0)
			replace = 1;
		else if (!file)
			file = argv[i];
		else
			return cmd_usage_error("policy", "unexpected argument '%s'", argv[i]);
	}
	if (!file)
		return cmd_usage_error("policy", "expected: policy import FILE [--replace]");
	owl_err err = {0};
	char *text = NULL;
	if (owl_read_file(file, 16u << 20, &text, NULL, &err))
		return cmd_fail(&err);
	/* The whole file is checked before the store is touched. */
	license_policy *p = NULL;
	int rc = license_policy_parse(text, strlen(text), file, &p, &err);
	free(text);
	if (rc)
		return cmd_fail(&err);
	registry_store *s = NULL;
	rc = cmd_open_store(ctx, &s, &err);
	if (!rc)
		rc = license_policy_apply(s, p, replace, &err);
	registry_store_close(s);
	size_t nrules = p->nrules;
	license_policy_free(p);
	if (rc)
		return cmd_fail(&err);
	if (!ctx->quiet)
		printf("imported %zu rules from %s%s\n", nrules, file, replace ? " (replacing the policy)" : "");
	return OWL_OK;
}

static int policy_test(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"action", required_argument, 0, 'a'}, {"use", required_argument, 0, 'u'},
		{"as", required_argument, 0, 'n'}, {0, 0, 0, 0},
	};
	const char *action = NULL, *use = "internal", *as = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'a')
			action = optarg;
		else if (c == 'u')
			use = optarg;
		else if (c == 'n')
			as = optarg;
		else
			return cmd_usage_error("policy", "unknown option");
	}
	if (optind != argc - 1 || !action)
		return cmd_usage_error("policy", "expected: policy test NAME@V --action ACTION [--use USE]");
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version v;
	if (open_and_resolve(ctx, argv[optind], &s, &v, &err))
		return cmd_fail(&err);
	license_request rq = {.model = as ? as : v.model, .version_id = v.id, .action = action,
			      .use = use, .derived = as != NULL};
	license_decision d;
	int rc = license_evaluate(s, &rq, &d, &err);
	registry_version_release(&v);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json)
		cmd_print_json(json_pack("{s:b, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "allowed",
					 d.allowed, "effect", license_effect_name(d.effect), "rule",
					 d.rule, "message", d.message, "license", d.license_id,
					 "license_status", d.license_status, "approval", d.approval,
					 "explanation", d.explanation));
	else
		printf("%s  %s\n", d.explanation, d.message);
	/* The test changes nothing; its status says what the gate would do. */
	return d.allowed ? OWL_OK : OWL_EDENIED;
}

static int policy_org(owl_ctx *ctx, int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "set") == 0) {
		owl_err err = {0};
		registry_store *s = NULL;
		if (cmd_open_store(ctx, &s, &err))
			return cmd_fail(&err);
		int rc = license_org_set(s, argv[2], argv[3], &err);
		registry_store_close(s);
		if (rc)
			return cmd_fail(&err);
		if (!ctx->quiet)
			printf("org %s = %s\n", argv[2], argv[3]);
		return OWL_OK;
	}
	if (argc == 2 && strcmp(argv[1], "show") == 0)
		return policy_list(ctx, 0, NULL);
	return cmd_usage_error("policy", "expected: policy org set KEY VALUE | policy org show");
}

static int run_policy(owl_ctx *ctx, int argc, char **argv)
{
	if (argc < 2)
		return cmd_usage_error("policy", "expected a subcommand: add, list, rm, test, export, "
				       "import, org");
	const char *sub = argv[1];
	if (strcmp(sub, "add") == 0)
		return policy_add(ctx, argc - 1, argv + 1);
	if (strcmp(sub, "list") == 0 && argc == 2)
		return policy_list(ctx, 0, NULL);
	if (strcmp(sub, "export") == 0 && argc == 3)
		return policy_list(ctx, 1, argv[2]);
	if (strcmp(sub, "import") == 0)
		return policy_import(ctx, argc - 1, argv + 1);
	if (strcmp(sub, "test") == 0)
		return policy_test(ctx, argc - 1, argv + 1);
	if (strcmp(sub, "org") == 0)
		return policy_org(ctx, argc - 1, argv + 1);
	if (strcmp(sub, "rm") == 0 && argc == 3) {
		owl_err err = {0};
		registry_store *s = NULL;
		if (cmd_open_store(ctx, &s, &err))
			return cmd_fail(&err);
		int rc = license_rule_remove(s, argv[2], &err);
		registry_store_close(s);
		if (rc)
			return cmd_fail(&err);
		if (!ctx->quiet)
			printf("removed rule %s\n", argv[2]);
		return OWL_OK;
	}
	return cmd_usage_error("policy", "unknown subcommand or arguments: '%s'", sub);
}

/* ---- owl approve -------------------------------------------------------------- */

static int run_approve(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"action", required_argument, 0, 'a'}, {"use", required_argument, 0, 'u'},
		{"by", required_argument, 0, 'b'}, {"reason", required_argument, 0, 'r'},
		{"expires", required_argument, 0, 'e'}, {0, 0, 0, 0},
	};
	const char *action = NULL, *use = NULL, *by = NULL, *reason = NULL, *expires = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'a': action = optarg; break;
		case 'u': use = optarg; break;
		case 'b': by = optarg; break;
		case 'r': reason = optarg; break;
		case 'e': expires = optarg; break;
		default: return cmd_usage_error("approve", "unknown option");
		}
	}
	if (optind != argc - 1 || !action || !by || !reason)
		return cmd_usage_error("approve", "expected: approve NAME@V --action ACTION --by NAME "
				       "--reason TEXT [--use USE] [--expires 30d|DATE]");
	int64_t exp = 0;
	if (expires && parse_expiry(expires, &exp) != 0)
		return cmd_usage_error("approve", "--expires '%s' is not a span (30d, 12h, 90m) or a "
				       "UTC date YYYY-MM-DD[THH:MM[:SS]]", expires);
	/* An approval that has already expired would be recorded and audited,
	 * yet allow nothing: surely a typo. */
	if (expires && exp <= owl_unix_time()) {
		char when[32], now[32];
		owl_fmt_time(exp, when, sizeof when);
		owl_fmt_time(owl_unix_time(), now, sizeof now);
		return cmd_usage_error("approve", "--expires %s is in the past (%s, now is %s); give a "
				       "later date or a span such as 30d", expires, when, now);
	}
	owl_err err = {0};
	registry_store *s = NULL;
	registry_version v;
	if (open_and_resolve(ctx, argv[optind], &s, &v, &err))
		return cmd_fail(&err);
	int rc = license_approve_audited(s, &v, action, use, by, reason, exp, &err);
	if (!rc && !ctx->quiet) {
		char when[32] = "never";
		if (exp)
			owl_fmt_time(exp, when, sizeof when);
		printf("approved %s of %s@%d for %s use by %s (expires %s)\n", action, v.model, v.number,
		       use ? use : "any", by, when);
	}
	registry_version_release(&v);
	registry_store_close(s);
	return rc ? cmd_fail(&err) : OWL_OK;
}

/* ---- owl audit ------------------------------------------------------------------ */

static int audit_verify(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"pub", required_argument, 0, 'p'}, {"checkpoint", required_argument, 0, 'c'},
		{0, 0, 0, 0},
	};
	const char *pub = NULL;
	const char *ckpts[32];
	size_t nck = 0;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'p') {
			pub = optarg;
		} else if (c == 'c') {
			if (nck == 32)
				return cmd_usage_error("audit", "at most 32 --checkpoint files");
			ckpts[nck++] = optarg;
		} else {
			return cmd_usage_error("audit", "unknown option");
		}
	}
	if (optind != argc)
		return cmd_usage_error("audit", "expected: audit verify [--pub KEY.pub] "
				       "[--checkpoint FILE]...");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	license_audit_report rep;
	int rc = license_audit_check(s, pub, ckpts, nck, &rep, &err);
	registry_store_close(s);
	if (ctx->json) {
		cmd_print_json(json_pack("{s:b, s:I, s:b, s:I, s:I, s:I, s:b, s:s}", "ok", rc == 0,
					 "rows", (json_int_t)rep.rows, "anchor_file", rep.anchor_found,
					 "anchor_lines", (json_int_t)rep.anchor_lines, "anchored_row",
					 (json_int_t)rep.anchored_seq, "checkpoints",
					 (json_int_t)rep.checkpoints, "signatures_verified",
					 rep.checkpoints_signed, "error", rc ? err.msg : ""));
		return rc;
	}
	if (rc)
		return cmd_fail(&err);
	printf("ok: %lld audit rows, hash chain intact\n", (long long)rep.rows);
	if (rep.anchor_found)
		printf("  logs/audit-head: %lld lines, every one matches; it vouches up to row %lld%s\n",
		       (long long)rep.anchor_lines, (long long)rep.anchored_seq,
		       rep.anchored_seq < rep.rows ? " (newer rows are not anchored yet)" : "");
	else if (rep.rows)
		fprintf(stderr, "owl: warning: there is no logs/audit-head, so rows removed from the "
			"end of the log cannot be detected (it is written from now on)\n");
	if (rep.checkpoints)
		printf("  %lld signed checkpoint%s match%s the log%s\n", (long long)rep.checkpoints,
		       rep.checkpoints > 1 ? "s" : "", rep.checkpoints > 1 ? "" : "es",
		       rep.checkpoints_signed ? ", signatures verified"
					      : " (signatures not checked: pass --pub KEY.pub)");
	return OWL_OK;
}

static int audit_checkpoint(owl_ctx *ctx, int argc, char **argv)
{
	static const struct option opts[] = {
		{"sign", required_argument, 0, 's'}, {"out", required_argument, 0, 'o'},
		{0, 0, 0, 0},
	};
	const char *key = NULL, *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 's')
			key = optarg;
		else if (c == 'o')
			out = optarg;
		else
			return cmd_usage_error("audit", "unknown option");
	}
	if (optind != argc || !key)
		return cmd_usage_error("audit", "expected: audit checkpoint --sign KEY.pem [--out FILE]");
	owl_err err = {0};
	registry_store *s = NULL;
	if (cmd_open_store(ctx, &s, &err))
		return cmd_fail(&err);
	char *path = NULL;
	int64_t seq = 0;
	int rc = license_audit_checkpoint(s, key, out, &path, &seq, &err);
	registry_store_close(s);
	if (rc)
		return cmd_fail(&err);
	if (ctx->json)
		cmd_print_json(json_pack("{s:s, s:I}", "checkpoint", path, "row", (json_int_t)seq));
	else if (!ctx->quiet)
		printf("signed the audit log's head (row %lld) into %s; keep a copy outside the data "
		       "home\n", (long long)seq, path);
	free(path);
	return OWL_OK;
}

static int run_audit(owl_ctx *ctx, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "verify") == 0)
		return audit_verify(ctx, argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "checkpoint") == 0)
		return audit_checkpoint(ctx, argc - 1, argv + 1);
	if (argc >= 2 && strcmp(argv[1], "list") == 0) {
		int64_t since = 0;
		for (int i = 2; i < argc; i++) {
			if (strcmp(argv[i], "--since") == 0 && i + 1 < argc) {
				int64_t t;
				if (parse_expiry(argv[++i], &t) == 0) {
					/* "7d" means the last seven days. */
					since = argv[i][strlen(argv[i]) - 1] >= 'a' ? 2 * owl_unix_time() - t : t;
				} else {
					return cmd_usage_error("audit", "--since takes 7d, 12h or YYYY-MM-DD");
				}
			} else {
				return cmd_usage_error("audit", "unexpected argument '%s'", argv[i]);
			}
		}
		owl_err err = {0};
		registry_store *s = NULL;
		if (cmd_open_store(ctx, &s, &err))
			return cmd_fail(&err);
		license_audit_row *rows = NULL;
		size_t n = 0;
		int rc = license_audit_list(s, since, &rows, &n, &err);
		registry_store_close(s);
		if (rc)
			return cmd_fail(&err);
		json_t *arr = json_array();
		for (size_t i = 0; i < n; i++) {
			const license_audit_row *r = &rows[i];
			if (ctx->json) {
				json_array_append_new(arr, json_pack("{s:I, s:I, s:s, s:s, s:s, s:s, s:s, "
								     "s:s, s:s, s:s}",
								     "id", (json_int_t)r->id,
								     "at", (json_int_t)r->at, "actor", r->actor,
								     "action", r->action, "subject", r->subject,
								     "use", r->use, "effect", r->effect, "rule",
								     r->rule, "license", r->license,
								     "evidence", r->evidence));
			} else {
				char when[32];
				owl_fmt_time(r->at, when, sizeof when);
				printf("%s  %-10s %-12s %-24s %-10s %-16s %-22s %s\n", when, r->actor,
				       r->action, r->subject, r->use, r->effect, r->rule, r->license);
			}
		}
		license_audit_rows_free(rows, n);
		if (ctx->json)
			cmd_print_json(arr);
		else
			json_decref(arr);
		return OWL_OK;
	}
	return cmd_usage_error("audit", "expected: audit list [--since 7d|DATE] | audit verify "
			       "[--pub KEY.pub] [--checkpoint FILE]... | audit checkpoint --sign KEY.pem "
			       "[--out FILE]");
}

const owl_command cmd_license_commands[] = {
	{"license", run_license, "show a version's license findings and obligations, or record one",
	 "USAGE\n"
	 "  owl license show NAME[@V] [--json]\n"
	 "  owl license set NAME@V LICENSE-ID --reason TEXT [--by NAME]\n"
	 "  owl license catalog [--json]\n"
	 "\n"
	 "show prints what was found where (model card front matter, LICENSE files\n"
	 "recognised by their text, GGUF and safetensors metadata), each with its\n"
	 "evidence and confidence; whether the findings agree or conflict; and the\n"
	 "license's facts and obligations from the catalog. A derived version shows\n"
	 "the license inherited from its base. set records a human conclusion beside\n"
	 "(never instead of) the findings; it is audited. catalog lists the licenses\n"
	 "owl knows.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl license show llama-3.1-8b@1\n"
	 "  owl license set acme-model@2 apache-2.0 --reason \"vendor email 2026-03-02\"\n"
	 "  owl license catalog\n"},
	{"policy", run_policy, "manage the license policy rules and test a decision",
	 "USAGE\n"
	 "  owl policy list [--json]\n"
	 "  owl policy add NAME --effect allow|deny|require-approval [--priority N]\n"
	 "                 [--license GLOBS] [--category GLOBS] [--action LIST] [--use LIST]\n"
	 "                 [--model GLOBS] [--when CONDITIONS] [--message TEXT]\n"
	 "  owl policy rm NAME\n"
	 "  owl policy test NAME@V --action ACTION [--use USE] [--as DERIVED-NAME] [--json]\n"
	 "  owl policy export FILE.json\n"
	 "  owl policy import FILE.json [--replace]\n"
	 "  owl policy org set KEY VALUE        (e.g. mau 900000000)\n"
	 "  owl policy org show\n"
	 "\n"
	 "Rules are tried from the highest priority down (at equal priority the\n"
	 "stricter effect first); the first rule whose matchers all apply decides.\n"
	 "Matchers are comma-separated globs: license ids (llama3*, cc-by-nc-*,\n"
	 "unknown, conflict), categories (permissive, copyleft, responsible-ai,\n"
	 "non-commercial, vendor-community), actions (import, finetune, deploy,\n"
	 "export), uses (internal, commercial, research), model names. Conditions:\n"
	 "mau-over-limit, non-commercial, no-derivatives, derived,\n"
	 "derived-name-violation, flow-down, outputs-train-forbidden, pickle.\n"
	 "test explains every step and changes nothing (exit 3 when the gate would\n"
	 "refuse). A fresh home starts with a default policy; see\n"
	 "docs/license-policy.md.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl policy add no-nc-anywhere --effect deny --category non-commercial --priority 950\n"
	 "  owl policy org set mau 900000000\n"
	 "  owl policy test llama-3.1-8b@1 --action deploy --use commercial\n"},
	{"approve", run_approve, "approve an action that a policy rule requires approval for",
	 "USAGE\n"
	 "  owl approve NAME@V --action ACTION --by NAME --reason TEXT [--use USE]\n"
	 "              [--expires 30d|12h|90m|YYYY-MM-DD[THH:MM[:SS]]]\n"
	 "\n"
	 "Records a human sign-off for a rule whose effect is require_approval. The\n"
	 "gate accepts it for that version and action (and use, if given) until it\n"
	 "expires (a UTC date means its midnight; a date in the past is refused).\n"
	 "Approvals are written to the audit log.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl approve research-model@1 --action deploy --use commercial --by legal \\\n"
	 "      --reason \"signed agreement #2291\" --expires 90d\n"},
	{"audit", run_audit, "list license decisions, verify the audit log, sign its head",
	 "USAGE\n"
	 "  owl audit list [--since 7d|YYYY-MM-DD] [--json]\n"
	 "  owl audit verify [--pub KEY.pub] [--checkpoint FILE]... [--json]\n"
	 "  owl audit checkpoint --sign KEY.pem [--out FILE] [--json]\n"
	 "\n"
	 "Every gate decision (who, when, action, subject, rule, effect, evidence),\n"
	 "approval and license conclusion is a row of an append-only table whose rows\n"
	 "are chained by SHA-256. Each row's number and hash is also appended to\n"
	 "logs/audit-head (and to syslog when OWL_AUDIT_SYSLOG=1), outside the\n"
	 "database. verify recomputes the chain and names the first edited, deleted\n"
	 "or inserted row, or the rows removed from the end that logs/audit-head or a\n"
	 "checkpoint still records (exit 4). checkpoint signs the current head with\n"
	 "an Ed25519 key (as for signed bundles) into logs/audit-checkpoints/ or\n"
	 "--out FILE; keep a copy elsewhere. verify checks those checkpoints, or the\n"
	 "--checkpoint files given, and with --pub their signatures.\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl audit list --since 7d\n"
	 "  owl audit verify\n"
	 "  owl audit checkpoint --sign audit.pem --out /mnt/worm/owl-$(date +%F).ckpt\n"
	 "  owl audit verify --pub audit.pub --checkpoint /mnt/worm/owl-2026-12-03.ckpt\n"},
	{0},
};
