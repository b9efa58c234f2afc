/* Policy: rules in SQLite, evaluated in order (priority high to low; at equal
 * priority the stricter effect first), the first matching rule decides. A
 * decision always names its rule and says why every earlier rule did not
 * apply, so that `owl policy test` can teach the policy to its readers. */
#define _GNU_SOURCE
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

const char *const license_conditions[][2] = {
	{"mau-over-limit", "the organisation's 'mau' attribute exceeds the license's user threshold"},
	{"non-commercial", "the license does not allow commercial use"},
	{"no-derivatives", "the license does not allow derivative models"},
	{"derived", "the subject is a derived model (adapter, merge, fine-tune)"},
	{"derived-name-violation", "a derived model's name lacks the prefix the license requires"},
	{"flow-down", "the license's use restrictions must be passed on to users"},
	{"outputs-train-forbidden", "the license forbids using outputs to train other models"},
	{"pickle", "the checkpoint contains pickle files"},
	{0, 0},
};

const char *license_effect_name(license_effect e)
{
	return e == LICENSE_DENY ? "deny" : e == LICENSE_REQUIRE_APPROVAL ? "require_approval"
									   : "allow";
}

/* A statement of the gate's, or an error: a query that cannot be prepared
 * must refuse, never read as "no row" (no pickle, no conclusion ...). */
static int prep(registry_store *s, const char *sql, sqlite3_stmt **q, owl_err *err)
{
	*q = NULL;
	if (sqlite3_prepare_v2(registry_store_db(s), sql, -1, q, NULL) != SQLITE_OK)
		return owl_err_set(err, OWL_EFAIL, "the license database cannot be read (%s): refusing",
				   sqlite3_errmsg(registry_store_db(s)));
	return 0;
}

static license_effect effect_from(const char *s)
{
	if (strcmp(s, "deny") == 0)
		return LICENSE_DENY;
	if (strcmp(s, "require_approval") == 0)
		return LICENSE_REQUIRE_APPROVAL;
	return LICENSE_ALLOW;
}

static int known_condition(const char *c, size_t n)
{
	for (size_t i = 0; license_conditions[i][0]; i++)
		if (strlen(license_conditions[i][0]) == n && strncmp(license_conditions[i][0], c, n) == 0)
			return 1;
	return 0;
}

int license_rule_add(registry_store *s, const license_rule *r, owl_err *err)
{
	if (!r->name[0] || strchr(r->name, ' '))
		return owl_err_set(err, OWL_EUSAGE, "a rule needs a name without spaces");
	for (const char *c = r->when; *c;) {
		size_t n = strcspn(c, ",");
		if (n && !known_condition(c, n))
			return owl_err_set(err, OWL_EUSAGE, "unknown condition '%.*s' (see 'owl policy "
					   "add --help' for the list)", (int)n, c);
		c += n;
		if (*c == ',')
			c++;
	}
	static const char *const actions[] = {"import", "finetune", "deploy", "export"};
	for (const char *c = r->action; *c;) {
		size_t n = strcspn(c, ",");
		int ok = strchr(c, '*') && (size_t)(strchr(c, '*') - c) < n;
		for (size_t i = 0; !ok && i < 4; i++)
			ok = strlen(actions[i]) == n && strncmp(actions[i], c, n) == 0;
		if (n && !ok)
			return owl_err_set(err, OWL_EUSAGE, "unknown action '%.*s' (import, finetune, "
					   "deploy, export)", (int)n, c);
		c += n;
		if (*c == ',')
			c++;
	}
	sqlite3_stmt *q = NULL;
	int prc = registry_store_prepare(s,
			   "INSERT INTO policy_rules(name, effect, priority, license, category, action,"
			   " use, model, cond, message, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
			   &q, err);
	if (prc)
		return prc;
	sqlite3_bind_text(q, 1, r->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, license_effect_name(r->effect), -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 3, r->priority);
	sqlite3_bind_text(q, 4, r->license, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, r->category, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 6, r->action, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 7, r->use, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 8, r->model, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 9, r->when, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 10, r->message, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 11, owl_unix_time());
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc == SQLITE_CONSTRAINT)
		return owl_err_set(err, OWL_EUSAGE, "a rule named '%s' exists already (remove it "
				   "first: owl policy rm %s)", r->name, r->name);
	if (rc != SQLITE_DONE)
		return owl_err_set(err, OWL_EFAIL, "cannot add rule '%s': %s", r->name,
				   sqlite3_errmsg(registry_store_db(s)));
	return 0;
}

int license_rule_remove(registry_store *s, const char *name, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "DELETE FROM policy_rules WHERE name=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	sqlite3_finalize(q);
	if (step != SQLITE_DONE)
		return owl_err_set(err, OWL_EFAIL, "cannot remove rule '%s': %s", name,
				   sqlite3_errmsg(registry_store_db(s)));
	if (sqlite3_changes(registry_store_db(s)) == 0)
		return owl_err_set(err, OWL_EUSAGE, "no rule named '%s' (see 'owl policy list')", name);
	return 0;
}

static void col_copy(sqlite3_stmt *q, int i, char *dst, size_t n)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	snprintf(dst, n, "%s", t ? (const char *)t : "");
}

int license_rules_list(registry_store *s, license_rule **out, size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(registry_store_db(s),
			       "SELECT id, name, effect, priority, license, category, action, use, model,"
			       " cond, message FROM policy_rules ORDER BY priority DESC,"
			       " CASE effect WHEN 'deny' THEN 0 WHEN 'require_approval' THEN 1 ELSE 2 END,"
			       " id", -1, &q, NULL) != SQLITE_OK)
		return owl_err_set(err, OWL_EFAIL, "cannot read the policy: %s", sqlite3_errmsg(registry_store_db(s)));
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 32;
			*out = owl_xrealloc(*out, cap * sizeof **out);
		}
		license_rule *r = &(*out)[(*n)++];
		memset(r, 0, sizeof *r);
		r->id = sqlite3_column_int64(q, 0);
		col_copy(q, 1, r->name, sizeof r->name);
		r->effect = effect_from((const char *)sqlite3_column_text(q, 2));
		r->priority = sqlite3_column_int(q, 3);
		col_copy(q, 4, r->license, sizeof r->license);
		col_copy(q, 5, r->category, sizeof r->category);
		col_copy(q, 6, r->action, sizeof r->action);
		col_copy(q, 7, r->use, sizeof r->use);
		col_copy(q, 8, r->model, sizeof r->model);
		col_copy(q, 9, r->when, sizeof r->when);
		col_copy(q, 10, r->message, sizeof r->message);
	}
	sqlite3_finalize(q);
	/* A policy read in part is no policy: the gate must not judge by it. */
	if (step != SQLITE_DONE) {
		free(*out);
		*out = NULL;
		*n = 0;
		return owl_err_set(err, OWL_EFAIL, "cannot read the policy: %s",
				   sqlite3_errmsg(registry_store_db(s)));
	}
	return 0;
}

int license_org_set(registry_store *s, const char *key, const char *value, owl_err *err)
{
	if (!*key)
		return owl_err_set(err, OWL_EUSAGE, "an attribute needs a name");
	if (strcmp(key, "mau") == 0) {
		char *end = NULL;
		long long v = strtoll(value, &end, 10);
		if (!end || *end || v < 0)
			return owl_err_set(err, OWL_EUSAGE, "mau (monthly active users) must be a "
					   "non-negative whole number, not '%s'", value);
	}
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "INSERT OR REPLACE INTO org_attributes(key, value,"
					" updated_at) VALUES (?,?,?)", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 3, owl_unix_time());
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot set '%s': %s", key, sqlite3_errmsg(registry_store_db(s)));
}

/* *out = the attribute as a number, 0 when it is not set. */
static int org_int(registry_store *s, const char *key, int64_t *out, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	*out = 0;
	int rc = prep(s, "SELECT value FROM org_attributes WHERE key=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	if (step == SQLITE_ROW && sqlite3_column_text(q, 0))
		*out = strtoll((const char *)sqlite3_column_text(q, 0), NULL, 10);
	else if (step != SQLITE_ROW && step != SQLITE_DONE)
		rc = owl_err_set(err, OWL_EFAIL, "the license database cannot be read (%s): refusing",
				 sqlite3_errmsg(registry_store_db(s)));
	sqlite3_finalize(q);
	return rc;
}

/* ---- the license a version is under ------------------------------------ */

static void status_from_findings(const license_finding *items, size_t n, license_status *out)
{
	const char *first = NULL;
	owl_buf ids;
	owl_buf_init(&ids, 512);
	int conflict = 0;
	for (size_t i = 0; i < n; i++) {
		if (!items[i].license_id[0] || items[i].confidence < 0.5)
			continue;
		if (!first)
			first = items[i].license_id;
		else if (strcmp(first, items[i].license_id) != 0)
			conflict = 1;
		if (!ids.data || !strstr(ids.data, items[i].license_id))
			owl_buf_printf(&ids, "%s%s (%s)", ids.len ? ", " : "", items[i].license_id,
				       items[i].source);
	}
	if (!first) {
		snprintf(out->license_id, sizeof out->license_id, "unknown");
		snprintf(out->status, sizeof out->status, "unknown");
		snprintf(out->detail, sizeof out->detail, "no license statement was found");
	} else if (conflict) {
		snprintf(out->license_id, sizeof out->license_id, "conflict");
		snprintf(out->status, sizeof out->status, "conflict");
		snprintf(out->detail, sizeof out->detail, "findings disagree: %s", ids.data);
	} else {
		snprintf(out->license_id, sizeof out->license_id, "%s", first);
		snprintf(out->status, sizeof out->status, "detected");
		snprintf(out->detail, sizeof out->detail, "%s", ids.data);
	}
	owl_buf_release(&ids);
}

int license_status_for(registry_store *s, int64_t version_id, const license_findings *pending,
		       int64_t pending_parent, license_status *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	if (pending) {
		int meaningful = 0;
		for (size_t i = 0; i < pending->n; i++)
			meaningful |= pending->items[i].license_id[0] && pending->items[i].confidence >= 0.5;
		if (meaningful || !pending_parent) {
			status_from_findings(pending->items, pending->n, out);
			return 0;
		}
		/* A derived model that states nothing itself is under its base's license. */
		version_id = pending_parent;
	}
	/* A derived version is under its base's license: walk to the first
	 * ancestor that has a conclusion or findings. */
	int64_t vid = version_id;
	for (int depth = 0; vid && depth < 64; depth++) {
		sqlite3_stmt *q = NULL;
		int prc = prep(s, "SELECT license_id, reason, by FROM license_conclusions"
			       " WHERE version_id=? ORDER BY id DESC LIMIT 1", &q, err);
		if (prc)
			return prc;
		sqlite3_bind_int64(q, 1, vid);
		if (sqlite3_step(q) == SQLITE_ROW) {
			snprintf(out->license_id, sizeof out->license_id, "%s",
				 (const char *)sqlite3_column_text(q, 0));
			snprintf(out->status, sizeof out->status, "concluded");
			snprintf(out->detail, sizeof out->detail, "set by %s: %s",
				 (const char *)sqlite3_column_text(q, 2),
				 (const char *)sqlite3_column_text(q, 1));
			out->from_version = vid;
			sqlite3_finalize(q);
			return 0;
		}
		sqlite3_finalize(q);
		license_finding *items = NULL;
		size_t n = 0, cap = 0;
		if ((prc = prep(s, "SELECT license_id, source, evidence, confidence FROM"
				" license_findings WHERE version_id=? ORDER BY id", &q, err)))
			return prc;
		sqlite3_bind_int64(q, 1, vid);
		while (sqlite3_step(q) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? 2 * cap : 8;
				items = owl_xrealloc(items, cap * sizeof *items);
			}
			license_finding *x = &items[n++];
			memset(x, 0, sizeof *x);
			col_copy(q, 0, x->license_id, sizeof x->license_id);
			col_copy(q, 1, x->source, sizeof x->source);
			col_copy(q, 2, x->evidence, sizeof x->evidence);
			x->confidence = sqlite3_column_double(q, 3);
		}
		sqlite3_finalize(q);
		int64_t parent = 0;
		if ((prc = prep(s, "SELECT COALESCE(parent_version_id,0) FROM versions WHERE id=?", &q,
				err))) {
			free(items);
			return prc;
		}
		sqlite3_bind_int64(q, 1, vid);
		if (sqlite3_step(q) == SQLITE_ROW)
			parent = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
		int meaningful = 0;
		for (size_t i = 0; i < n; i++)
			meaningful |= items[i].license_id[0] && items[i].confidence >= 0.5;
		if (meaningful || !parent) {
			status_from_findings(items, n, out);
			out->from_version = vid;
			free(items);
			return 0;
		}
		free(items);
		vid = parent;
	}
	status_from_findings(NULL, 0, out);
	return 0;
}

int license_conclude(registry_store *s, int64_t version_id, const char *license_id,
		     const char *reason, const char *by, owl_err *err)
{
	license_facts facts;
	int rc = license_catalog_get(s, license_id, &facts, err);
	if (rc)
		return rc;
	if (!reason || !*reason)
		return owl_err_set(err, OWL_EUSAGE, "a conclusion needs a --reason");
	sqlite3_stmt *q = NULL;
	if ((rc = registry_store_prepare(s, "INSERT INTO license_conclusions(version_id, license_id,"
					 " reason, by, at) VALUES (?,?,?,?,?)", &q, err)))
		return rc;
	sqlite3_bind_int64(q, 1, version_id);
	sqlite3_bind_text(q, 2, license_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, reason, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 4, by, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 5, owl_unix_time());
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot record the conclusion: %s",
				    sqlite3_errmsg(registry_store_db(s)));
}

/* ---- evaluation ---------------------------------------------------------- */

/* "a,b*,c" against value. An empty list matches anything. */
static int list_match(const char *list, const char *value)
{
	if (!*list)
		return 1;
	char item[128];
	for (const char *c = list; *c;) {
		size_t n = strcspn(c, ",");
		snprintf(item, sizeof item, "%.*s", (int)n, c);
		if (owl_glob_match(item, value))
			return 1;
		c += n;
		if (*c == ',')
			c++;
	}
	return 0;
}

/* Lowercase letters and digits only, so that "Llama-3-acme" starts with
 * the "Llama 3" the license asks for. */
static void squash(const char *in, char *out, size_t n)
{
	size_t k = 0;
	for (; *in && k + 1 < n; in++) {
		char c = *in;
		if (c >= 'A' && c <= 'Z')
			c = (char)(c + 32);
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			out[k++] = c;
	}
	out[k] = 0;
}

typedef struct eval_ctx {
	const license_request *req;
	const license_facts *facts;
	const char *license_id;
	int64_t mau;
	int derived;
	int has_pickle;
} eval_ctx;

/* 1 when the condition holds; why receives the reason either way. */
static int condition_holds(const eval_ctx *e, const char *c, size_t n, char *why, size_t wn)
{
#define IS(name) (strlen(name) == n && strncmp(c, name, n) == 0)
	if (IS("mau-over-limit")) {
		if (!e->facts->mau_limit) {
			snprintf(why, wn, "%s has no user threshold", e->license_id);
			return 0;
		}
		snprintf(why, wn, "organisation mau %lld %s the threshold %lld", (long long)e->mau,
			 e->mau > e->facts->mau_limit ? "exceeds" : "is within",
			 (long long)e->facts->mau_limit);
		return e->mau > e->facts->mau_limit;
	}
	if (IS("non-commercial")) {
		snprintf(why, wn, "%s %s commercial use", e->license_id,
			 e->facts->commercial ? "allows" : "does not allow");
		return !e->facts->commercial;
	}
	if (IS("no-derivatives")) {
		snprintf(why, wn, "%s %s derivatives", e->license_id,
			 e->facts->derivatives ? "allows" : "does not allow");
		return !e->facts->derivatives;
	}
	if (IS("derived")) {
		snprintf(why, wn, "the subject is %sa derived model", e->derived ? "" : "not ");
		return e->derived;
	}
	if (IS("derived-name-violation")) {
		if (!e->derived || !e->facts->name_prefix[0]) {
			snprintf(why, wn, "%s", !e->derived ? "not a derived model"
							  : "the license has no naming rule");
			return 0;
		}
		char a[128], b[64];
		squash(e->req->model ? e->req->model : "", a, sizeof a);
		squash(e->facts->name_prefix, b, sizeof b);
		int ok = strncmp(a, b, strlen(b)) == 0;
		snprintf(why, wn, "derived name '%s' %s with \"%s\"", e->req->model ? e->req->model : "",
			 ok ? "begins" : "does not begin", e->facts->name_prefix);
		return !ok;
	}
	if (IS("flow-down")) {
		snprintf(why, wn, "%s %s use restrictions to flow down", e->license_id,
			 e->facts->flow_down ? "requires" : "does not require");
		return e->facts->flow_down;
	}
	if (IS("outputs-train-forbidden")) {
		snprintf(why, wn, "%s %s training other models on outputs", e->license_id,
			 e->facts->outputs_train ? "allows" : "forbids");
		return !e->facts->outputs_train;
	}
	if (IS("pickle")) {
		snprintf(why, wn, "%s", e->has_pickle ? "pickle files present" : "no pickle files");
		return e->has_pickle;
	}
#undef IS
	snprintf(why, wn, "unknown condition '%.*s'", (int)n, c);
	return 0;
}

/* Does rule r apply? why says which matcher failed, or what matched. */
static int rule_matches(const eval_ctx *e, const license_rule *r, char *why, size_t wn)
{
	const license_request *q = e->req;
	const char *use = q->use ? q->use : "internal";
	if (!list_match(r->license, e->license_id)) {
		snprintf(why, wn, "license %s is not %s", e->license_id, r->license);
		return 0;
	}
	if (!list_match(r->category, e->facts->category)) {
		snprintf(why, wn, "category %s is not %s", e->facts->category, r->category);
		return 0;
	}
	if (!list_match(r->action, q->action)) {
		snprintf(why, wn, "action %s is not %s", q->action, r->action);
		return 0;
	}
	if (!list_match(r->use, use)) {
		snprintf(why, wn, "use %s is not %s", use, r->use);
		return 0;
	}
	if (!list_match(r->model, q->model ? q->model : "")) {
		snprintf(why, wn, "model %s is not %s", q->model ? q->model : "", r->model);
		return 0;
	}
	owl_buf held;
	owl_buf_init(&held, 1024);
	for (const char *c = r->when; *c;) {
		size_t n = strcspn(c, ",");
		char cwhy[256];
		if (n && !condition_holds(e, c, n, cwhy, sizeof cwhy)) {
			snprintf(why, wn, "%s", cwhy);
			owl_buf_release(&held);
			return 0;
		}
		if (n)
			owl_buf_printf(&held, "%s%s", held.len ? "; " : "", cwhy);
		c += n;
		if (*c == ',')
			c++;
	}
	snprintf(why, wn, "%s", held.len ? held.data : "all matchers apply");
	owl_buf_release(&held);
	return 1;
}

static int version_has_pickle(registry_store *s, int64_t vid, int *yes, owl_err *err)
{
	*yes = 0;
	if (!vid)
		return 0;
	sqlite3_stmt *q = NULL;
	int rc = prep(s, "SELECT 1 FROM version_files WHERE version_id=? AND ("
		      " path LIKE '%.bin' OR path LIKE '%.pt' OR path LIKE '%.pth' OR"
		      " path LIKE '%.ckpt' OR path LIKE '%.pkl') LIMIT 1", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, vid);
	*yes = sqlite3_step(q) == SQLITE_ROW;
	sqlite3_finalize(q);
	return 0;
}

/* A valid approval for the action (*found), described in desc. */
static int find_approval(registry_store *s, int64_t vid, const char *action, const char *use,
			 char *desc, size_t dn, int *found_out, owl_err *err)
{
	*found_out = 0;
	if (!vid)
		return 0;
	sqlite3_stmt *q = NULL;
	int rc = prep(s, "SELECT by, reason, expires_at FROM approvals WHERE version_id=?"
		      " AND action=? AND (use=? OR use='*') AND (expires_at=0 OR expires_at>?)"
		      " ORDER BY id DESC LIMIT 1", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, vid);
	sqlite3_bind_text(q, 2, action, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, use, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 4, owl_unix_time());
	int found = sqlite3_step(q) == SQLITE_ROW;
	if (found) {
		int64_t exp = sqlite3_column_int64(q, 2);
		char when[32] = "never";
		if (exp)
			owl_fmt_time(exp, when, sizeof when);
		snprintf(desc, dn, "approved by %s (expires %s): %s",
			 (const char *)sqlite3_column_text(q, 0), when,
			 (const char *)sqlite3_column_text(q, 1));
	}
	sqlite3_finalize(q);
	*found_out = found;
	return 0;
}

int license_evaluate(registry_store *s, const license_request *req, license_decision *out,
		     owl_err *err)
{
	memset(out, 0, sizeof *out);
	license_status st;
	int rc = license_status_for(s, req->version_id, req->findings, req->parent_version_id, &st,
				    err);
	if (rc)
		return rc;
	license_facts facts;
	if (strcmp(st.license_id, "conflict") == 0) {
		license_catalog_get(s, "other", &facts, NULL);
		snprintf(facts.id, sizeof facts.id, "conflict");
		snprintf(facts.category, sizeof facts.category, "conflict");
	} else if (license_catalog_get(s, st.license_id, &facts, NULL) != 0) {
		license_catalog_get(s, "other", &facts, NULL);
	}
	int derived = req->derived || req->parent_version_id;
	if (req->version_id && !derived) {
		sqlite3_stmt *q = NULL;
		if ((rc = prep(s, "SELECT parent_version_id IS NOT NULL FROM versions WHERE id=?", &q,
			       err)))
			return rc;
		sqlite3_bind_int64(q, 1, req->version_id);
		if (sqlite3_step(q) == SQLITE_ROW)
			derived = sqlite3_column_int(q, 0);
		sqlite3_finalize(q);
	}
	int has_pickle;
	if ((rc = version_has_pickle(s, req->version_id, &has_pickle, err)))
		return rc;
	int64_t mau;
	if ((rc = org_int(s, "mau", &mau, err)))
		return rc;
	eval_ctx e = {.req = req, .facts = &facts, .license_id = st.license_id,
		      .mau = mau, .derived = derived, .has_pickle = has_pickle};
	snprintf(out->license_id, sizeof out->license_id, "%s", st.license_id);
	snprintf(out->license_status, sizeof out->license_status, "%s", st.status);

	license_rule *rules = NULL;
	size_t n = 0;
	if ((rc = license_rules_list(s, &rules, &n, err)))
		return rc;
	owl_buf ex;
	owl_buf_init(&ex, sizeof out->explanation - 1);
	owl_buf_printf(&ex, "license: %s (%s; %s)\n", st.license_id, st.status, st.detail);
	owl_buf_printf(&ex, "request: %s, use %s, model %s%s\n", req->action,
		       req->use ? req->use : "internal", req->model ? req->model : "?",
		       derived ? " (derived)" : "");
	const license_rule *decided = NULL;
	for (size_t i = 0; i < n; i++) {
		char why[512];
		int m = rule_matches(&e, &rules[i], why, sizeof why);
		owl_buf_printf(&ex, "  %s %-26s p%-5d %-16s %s\n", m ? "=>" : "  ", rules[i].name,
			       rules[i].priority, license_effect_name(rules[i].effect), why);
		if (m) {
			decided = &rules[i];
			break;
		}
	}
	if (decided) {
		out->effect = decided->effect;
		snprintf(out->rule, sizeof out->rule, "%s", decided->name);
		snprintf(out->message, sizeof out->message, "%s", decided->message);
	} else {
		/* No rule at all applies: the careful answer is to ask a human. */
		out->effect = LICENSE_REQUIRE_APPROVAL;
		snprintf(out->rule, sizeof out->rule, "(no rule matched)");
		snprintf(out->message, sizeof out->message, "no policy rule applies; an approval is "
			 "required");
	}
	out->allowed = out->effect == LICENSE_ALLOW;
	int approved = 0;
	if (out->effect == LICENSE_REQUIRE_APPROVAL &&
	    (rc = find_approval(s, req->version_id, req->action, req->use ? req->use : "internal",
				out->approval, sizeof out->approval, &approved, err))) {
		out->allowed = 0;
		owl_buf_release(&ex);
		free(rules);
		return rc;
	}
	if (approved) {
		out->allowed = 1;
		owl_buf_printf(&ex, "  approval: %s\n", out->approval);
	}
	owl_buf_printf(&ex, "decision: %s%s by rule %s\n",
		       out->allowed ? "allowed" : out->effect == LICENSE_DENY ? "denied"
									      : "approval required",
		       out->allowed && out->effect == LICENSE_REQUIRE_APPROVAL ? " (approved)" : "",
		       out->rule);
	snprintf(out->explanation, sizeof out->explanation, "%s", ex.data ? ex.data : "");
	owl_buf_release(&ex);
	free(rules);
	return 0;
}

int license_gate(registry_store *s, const license_request *req, license_decision *out,
		 owl_err *err)
{
	int rc = license_evaluate(s, req, out, err);
	if (rc)
		return rc;
	const char *actor = req->actor ? req->actor : owl_user_name();
	char subject[256];
	snprintf(subject, sizeof subject, "%s", req->model ? req->model : "?");
	if (req->version_id) {
		registry_version v;
		if (registry_version_by_id(s, req->version_id, &v, NULL) == 0) {
			snprintf(subject, sizeof subject, "%s@%d", v.model, v.number);
			registry_version_release(&v);
		}
	}
	license_audit_entry a = {
		.at = owl_unix_time(), .actor = actor ? actor : "unknown", .action = req->action,
		.subject = subject, .use = req->use ? req->use : "internal",
		.effect = out->allowed ? (out->effect == LICENSE_REQUIRE_APPROVAL ? "approved"
										 : "allow")
				       : license_effect_name(out->effect),
		.rule = out->rule, .license = out->license_id,
		.evidence = out->approval[0] ? out->approval : out->message,
		.version_id = req->version_id,
	};
	if ((rc = license_audit_append(s, &a, err)))
		return rc;
	if (out->allowed)
		return 0;
	const char *use = req->use ? req->use : "internal";
	if (out->effect == LICENSE_DENY)
		return owl_err_set(err, OWL_EDENIED, "%s of %s (%s use) denied by policy rule '%s': %s "
				   "[license: %s, %s]. To proceed, change the policy (owl policy rm %s, "
				   "or add a higher-priority rule) or the license conclusion (owl "
				   "license set); explain with: owl policy test %s --action %s --use %s",
				   req->action, subject, use, out->rule, out->message, out->license_id,
				   out->license_status, out->rule, subject, req->action, use);
	return owl_err_set(err, OWL_EDENIED, "%s of %s (%s use) needs an approval under policy rule "
			   "'%s': %s [license: %s, %s]. Record one with: owl approve %s --action %s "
			   "--use %s --by NAME --reason TEXT [--expires 30d]", req->action, subject,
			   use, out->rule, out->message, out->license_id, out->license_status, subject,
			   req->action, use);
}

int license_approve(registry_store *s, int64_t version_id, const char *action, const char *use,
		    const char *by, const char *reason, int64_t expires_at, owl_err *err)
{
	if (!by || !*by || !reason || !*reason)
		return owl_err_set(err, OWL_EUSAGE, "an approval needs --by NAME and --reason TEXT");
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "INSERT INTO approvals(version_id, action, use, by,"
					" reason, created_at, expires_at) VALUES (?,?,?,?,?,?,?)",
					&q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, version_id);
	sqlite3_bind_text(q, 2, action, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, use ? use : "*", -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 4, by, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, reason, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, owl_unix_time());
	sqlite3_bind_int64(q, 7, expires_at);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot record the approval: %s",
				    sqlite3_errmsg(registry_store_db(s)));
}

int license_conclude_audited(registry_store *s, int64_t version_id, const char *subject,
			     const char *license_id, const char *reason, const char *by,
			     owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	rc = license_conclude(s, version_id, license_id, reason, by, err);
	if (!rc) {
		license_audit_entry a = {.at = owl_unix_time(), .actor = by, .action = "license-set",
					 .subject = subject, .use = "", .effect = "recorded",
					 .rule = "", .license = license_id, .evidence = reason,
					 .version_id = version_id};
		rc = license_audit_append(s, &a, err);
	}
	if (rc) {
		registry_store_rollback(s);
		return rc;
	}
	return registry_store_commit(s, err);
}

int license_approve_audited(registry_store *s, const registry_version *v, const char *action,
			    const char *use, const char *by, const char *reason,
			    int64_t expires_at, owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	rc = license_approve(s, v->id, action, use, by, reason, expires_at, err);
	if (!rc) {
		char subject[192];
		snprintf(subject, sizeof subject, "%s@%d", v->model, v->number);
		license_audit_entry a = {.at = owl_unix_time(), .actor = by, .action = "approve",
					 .subject = subject, .use = use ? use : "*",
					 .effect = "approval", .rule = action, .license = "",
					 .evidence = reason, .version_id = v->id};
		rc = license_audit_append(s, &a, err);
	}
	if (rc) {
		registry_store_rollback(s);
		return rc;
	}
	return registry_store_commit(s, err);
}
