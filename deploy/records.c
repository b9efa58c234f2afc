/* Deployments: revisions, events, pinning, rollback and tag following.
 *
 * Every change is one transaction: the checks, the license gate (whose
 * decision joins the transaction as a SAVEPOINT), the revision and the
 * event. A denied change rolls back whole and its denial is then recorded
 * alone, as an import's is (licenses/admit.c). */
#include "deploy.h"
#include "licenses/licenses.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

static char *col_dup(sqlite3_stmt *q, int i)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	return t ? owl_xstrdup((const char *)t) : NULL;
}

static int db_fail(registry_store *s, owl_err *err, const char *what)
{
	return owl_err_set(err, OWL_EFAIL, "cannot %s: %s", what,
			   sqlite3_errmsg(registry_store_db(s)));
}

static int prepare(registry_store *s, const char *sql, sqlite3_stmt **q, owl_err *err)
{
	if (sqlite3_prepare_v2(registry_store_db(s), sql, -1, q, NULL) != SQLITE_OK) {
		int rc = db_fail(s, err, "prepare a statement on the deployment tables");
		sqlite3_finalize(*q);
		*q = NULL;
		return rc;
	}
	return 0;
}

void deploy_change_init(deploy_change *c)
{
	memset(c, 0, sizeof *c);
	c->tp = c->ctx = c->port = DEPLOY_KEEP;
}

void deploy_version_digest(const registry_version *v, char hex[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char d[32];
	unsigned int dl = 0;
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	/* The files come sorted by path (registry_resolve orders them). */
	for (size_t i = 0; i < v->nfiles; i++) {
		EVP_DigestUpdate(md, v->files[i].path, strlen(v->files[i].path));
		EVP_DigestUpdate(md, "\t", 1);
		EVP_DigestUpdate(md, v->files[i].digest, strlen(v->files[i].digest));
		EVP_DigestUpdate(md, "\n", 1);
	}
	EVP_DigestFinal_ex(md, d, &dl);
	EVP_MD_CTX_free(md);
	owl_hex(d, 32, hex);
}

/* ---- the deployment row ------------------------------------------------- */

typedef struct drow {
	int64_t id, current;
	char *follow_model, *follow_tag;
	int64_t seen, blocked;
	int pinned;
	char *pinned_by, *pin_reason;
	int64_t pinned_at;
	int64_t created_at;
	char *created_by;
} drow;

static void drow_release(drow *d)
{
	free(d->follow_model);
	free(d->follow_tag);
	free(d->pinned_by);
	free(d->pin_reason);
	free(d->created_by);
	memset(d, 0, sizeof *d);
}

/* 0 with the row, OWL_EFAIL "no deployment" when missing. */
static int drow_get(registry_store *s, const char *name, drow *d, owl_err *err)
{
	memset(d, 0, sizeof *d);
	sqlite3_stmt *q = NULL;
	int rc = prepare(s, "SELECT id, current_revision, follow_model, follow_tag,"
			 " COALESCE(follow_seen_version_id,0), COALESCE(follow_blocked_version_id,0),"
			 " pinned, pinned_by, pin_reason, COALESCE(pinned_at,0), created_at, created_by"
			 " FROM deployments WHERE name=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(q) != SQLITE_ROW) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "no deployment named '%s' (see 'owl deploy list')",
				   name);
	}
	d->id = sqlite3_column_int64(q, 0);
	d->current = sqlite3_column_int64(q, 1);
	d->follow_model = col_dup(q, 2);
	d->follow_tag = col_dup(q, 3);
	d->seen = sqlite3_column_int64(q, 4);
	d->blocked = sqlite3_column_int64(q, 5);
	d->pinned = sqlite3_column_int(q, 6);
	d->pinned_by = col_dup(q, 7);
	d->pin_reason = col_dup(q, 8);
	d->pinned_at = sqlite3_column_int64(q, 9);
	d->created_at = sqlite3_column_int64(q, 10);
	d->created_by = col_dup(q, 11);
	sqlite3_finalize(q);
	return 0;
}

static int pinned_refusal(const char *name, const drow *d, const char *what, owl_err *err)
{
	char when[32];
	owl_fmt_time(d->pinned_at, when, sizeof when);
	return owl_err_set(err, OWL_EFAIL, "deployment '%s' is pinned (by %s at %s%s%s) and refuses "
			   "%s; unpin it first: owl deploy unpin %s", name,
			   d->pinned_by ? d->pinned_by : "?", when,
			   d->pin_reason && *d->pin_reason ? ": " : "",
			   d->pin_reason ? d->pin_reason : "", what, name);
}

/* ---- revisions ---------------------------------------------------------- */

void deploy_revision_release(deploy_revision *r)
{
	if (!r)
		return;
	free(r->model_ref);
	free(r->model_digest);
	for (size_t i = 0; i < r->nadapters; i++) {
		free(r->adapters[i].ref);
		free(r->adapters[i].digest);
	}
	free(r->adapters);
	free(r->use);
	free(r->who);
	free(r->why);
	free(r->license);
	memset(r, 0, sizeof *r);
}

static int revision_fill(registry_store *s, sqlite3_stmt *q, deploy_revision *r, owl_err *err)
{
	int64_t rid = sqlite3_column_int64(q, 0);
	r->revision = sqlite3_column_int64(q, 1);
	r->model_version_id = sqlite3_column_int64(q, 2);
	r->model_ref = col_dup(q, 3);
	r->model_digest = col_dup(q, 4);
	r->tp = sqlite3_column_int(q, 5);
	r->ctx = sqlite3_column_int(q, 6);
	r->port = sqlite3_column_int(q, 7);
	r->use = col_dup(q, 8);
	r->who = col_dup(q, 9);
	r->at = sqlite3_column_int64(q, 10);
	r->why = col_dup(q, 11);
	r->license = col_dup(q, 12);
	sqlite3_stmt *a = NULL;
	int rc = prepare(s, "SELECT version_id, ref, digest FROM deploy_revision_adapters"
			 " WHERE revision_id=? ORDER BY position", &a, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(a, 1, rid);
	size_t cap = 0;
	while (sqlite3_step(a) == SQLITE_ROW) {
		if (r->nadapters == cap) {
			cap = cap ? 2 * cap : 4;
			r->adapters = owl_xrealloc(r->adapters, cap * sizeof *r->adapters);
		}
		deploy_adapter_info *ai = &r->adapters[r->nadapters++];
		ai->version_id = sqlite3_column_int64(a, 0);
		ai->ref = col_dup(a, 1);
		ai->digest = col_dup(a, 2);
	}
	sqlite3_finalize(a);
	return 0;
}

#define REVISION_COLS                                                                      \
	"SELECT id, revision, model_version_id, model_ref, model_digest, tp, ctx, port, use," \
	" who, at, why, license FROM deploy_revisions"

static int revision_by_number(registry_store *s, int64_t dep_id, const char *name,
			      int64_t revision, deploy_revision *r, owl_err *err)
{
	memset(r, 0, sizeof *r);
	sqlite3_stmt *q = NULL;
	int rc = prepare(s, REVISION_COLS " WHERE deployment_id=? AND revision=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, dep_id);
	sqlite3_bind_int64(q, 2, revision);
	if (sqlite3_step(q) != SQLITE_ROW) {
		sqlite3_finalize(q);
		/* Say which revisions exist. */
		owl_buf have;
		owl_buf_init(&have, 1024);
		if (!prepare(s, "SELECT revision FROM deploy_revisions WHERE deployment_id=?"
			     " ORDER BY revision", &q, NULL)) {
			sqlite3_bind_int64(q, 1, dep_id);
			int n = 0;
			while (sqlite3_step(q) == SQLITE_ROW && n < 30)
				owl_buf_printf(&have, "%s%lld", n++ ? ", " : "",
					       (long long)sqlite3_column_int64(q, 0));
			sqlite3_finalize(q);
		}
		rc = owl_err_set(err, OWL_EFAIL, "deployment '%s' has no revision %lld (revisions: %s)",
				 name, (long long)revision, have.len ? have.data : "none");
		owl_buf_release(&have);
		return rc;
	}
	rc = revision_fill(s, q, r, err);
	sqlite3_finalize(q);
	if (rc)
		deploy_revision_release(r);
	return rc;
}

/* ---- what a revision holds, before it is written ------------------------ */

typedef struct content {
	registry_version model;
	registry_version *adapters;
	size_t nadapters;
	int tp, ctx, port;
	char use[16];
	char *follow_model, *follow_tag; /* NULL: a fixed version */
	int64_t follow_seen;             /* the version the tag was last followed to */
} content;

static void content_release(content *c)
{
	registry_version_release(&c->model);
	for (size_t i = 0; i < c->nadapters; i++)
		registry_version_release(&c->adapters[i]);
	free(c->adapters);
	free(c->follow_model);
	free(c->follow_tag);
	memset(c, 0, sizeof *c);
}

/* Resolves --model: "M@V", "M:TAG" (followed) or "M" (latest, fixed). */
static int resolve_model(registry_store *s, const char *ref, content *c, owl_err *err)
{
	int rc = registry_resolve(s, ref, &c->model, err);
	if (rc)
		return rc;
	if (strcmp(c->model.format, "adapter") == 0)
		return owl_err_set(err, OWL_EUSAGE, "%s@%d is an adapter, not a model: deploy its base "
				   "and give the adapter with --adapter", c->model.model,
				   c->model.number);
	const char *colon = strrchr(ref, ':');
	if (colon && !strchr(colon, '@')) {
		c->follow_model = owl_xasprintf("%.*s", (int)(colon - ref), ref);
		c->follow_tag = owl_xstrdup(colon + 1);
		c->follow_seen = c->model.id;
	}
	return 0;
}

/* An adapter must be a derived version of exactly the deployment's model. */
static int check_adapter(registry_store *s, const registry_version *a, const registry_version *m,
			 const char *hint, owl_err *err)
{
	if (strcmp(a->format, "adapter") != 0)
		return owl_err_set(err, OWL_EUSAGE, "%s@%d is a %s version, not an adapter", a->model,
				   a->number, a->format);
	if (a->parent_id == m->id)
		return 0;
	registry_version base;
	char *bl = NULL;
	if (a->parent_id && registry_version_by_id(s, a->parent_id, &base, NULL) == 0) {
		bl = owl_xasprintf("%s@%d", base.model, base.number);
		registry_version_release(&base);
	}
	int rc = bl ? owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d derives from %s, not from the "
				  "deployment's model %s@%d%s", a->model, a->number, bl, m->model,
				  m->number, hint)
		    : owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d names no base model, so it "
				  "cannot be checked against the deployment's model %s@%d (register it "
				  "with owl pull DIR --base %s@%d)", a->model, a->number, m->model,
				  m->number, m->model, m->number);
	free(bl);
	return rc;
}

static int add_adapter(registry_store *s, content *c, const char *ref, const char *hint,
		       owl_err *err)
{
	registry_version a;
	int rc = registry_resolve(s, ref, &a, err);
	if (rc)
		return rc;
	if ((rc = check_adapter(s, &a, &c->model, hint, err))) {
		registry_version_release(&a);
		return rc;
	}
	for (size_t i = 0; i < c->nadapters; i++)
		if (c->adapters[i].id == a.id) {
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d is given twice", a.model,
					 a.number);
			registry_version_release(&a);
			return rc;
		}
	c->adapters = owl_xrealloc(c->adapters, (c->nadapters + 1) * sizeof *c->adapters);
	c->adapters[c->nadapters++] = a;
	return 0;
}

static int check_numbers(const deploy_change *ch, owl_err *err)
{
	if (ch->tp != DEPLOY_KEEP && (ch->tp < 1 || ch->tp > 64))
		return owl_err_set(err, OWL_EUSAGE, "--tp is the number of tensor-parallel ranks, 1 to "
				   "64 (got %d)", ch->tp);
	if (ch->ctx != DEPLOY_KEEP && (ch->ctx < 0 || ch->ctx > (1 << 24)))
		return owl_err_set(err, OWL_EUSAGE, "--ctx is the context length in tokens, 0 (the "
				   "model's own) to 16777216 (got %d)", ch->ctx);
	if (ch->port != DEPLOY_KEEP && (ch->port < 0 || ch->port > 65535))
		return owl_err_set(err, OWL_EUSAGE, "--port must be 0 to 65535 (got %d)", ch->port);
	if (ch->use && !deploy_valid_use(ch->use))
		return owl_err_set(err, OWL_EUSAGE, "--use is commercial, internal or research (got "
				   "'%s')", ch->use);
	return 0;
}

/* The new revision's content: the change over base (NULL for create). For
 * a set that keeps the model, the followed tag stays. */
static int content_build(registry_store *s, const deploy_change *ch, const deploy_revision *base,
			 const drow *d, content *c, owl_err *err)
{
	memset(c, 0, sizeof *c);
	int rc = check_numbers(ch, err);
	if (rc)
		return rc;
	if (ch->model) {
		rc = resolve_model(s, ch->model, c, err);
	} else if (base) {
		rc = registry_version_by_id(s, base->model_version_id, &c->model, err);
		/* Still following; a rolled-back deployment stays where it is
		 * until the tag moves again. */
		if (!rc && d->follow_model) {
			c->follow_model = owl_xstrdup(d->follow_model);
			c->follow_tag = owl_xstrdup(d->follow_tag);
			c->follow_seen = d->seen;
		}
	} else {
		rc = owl_err_set(err, OWL_EUSAGE, "a deployment needs --model M@V or M:TAG");
	}
	if (rc)
		return rc;
	if (ch->set_adapters || !base) {
		for (size_t i = 0; !rc && i < ch->nadapters; i++)
			rc = add_adapter(s, c, ch->adapters[i], "", err);
	} else {
		const char *hint = ch->model ? " (give the adapters for the new model with --adapter, "
					       "or --no-adapters)" : "";
		for (size_t i = 0; !rc && i < base->nadapters; i++)
			rc = add_adapter(s, c, base->adapters[i].ref, hint, err);
	}
	if (rc)
		return rc;
	c->tp = ch->tp != DEPLOY_KEEP ? ch->tp : base ? base->tp : 1;
	c->ctx = ch->ctx != DEPLOY_KEEP ? ch->ctx : base ? base->ctx : 0;
	c->port = ch->port != DEPLOY_KEEP ? ch->port : base ? base->port : 0;
	snprintf(c->use, sizeof c->use, "%s", ch->use ? ch->use : base ? base->use : "internal");
	return 0;
}

/* A revision's content again, from its rows (rollback, follow). */
static int content_from_revision(registry_store *s, const deploy_revision *r, content *c,
				 owl_err *err)
{
	memset(c, 0, sizeof *c);
	int rc = registry_version_by_id(s, r->model_version_id, &c->model, err);
	for (size_t i = 0; !rc && i < r->nadapters; i++) {
		registry_version a;
		if ((rc = registry_version_by_id(s, r->adapters[i].version_id, &a, err)))
			break;
		c->adapters = owl_xrealloc(c->adapters, (c->nadapters + 1) * sizeof *c->adapters);
		c->adapters[c->nadapters++] = a;
	}
	c->tp = r->tp;
	c->ctx = r->ctx;
	c->port = r->port;
	snprintf(c->use, sizeof c->use, "%s", r->use);
	return rc;
}

/* ---- the gate ------------------------------------------------------------- */

static void gate_request(const registry_version *v, const char *use, const char *actor,
			 license_request *rq)
{
	memset(rq, 0, sizeof *rq);
	rq->model = v->model;
	rq->version_id = v->id;
	rq->derived = v->parent_id != 0;
	rq->action = "deploy";
	rq->use = use;
	rq->actor = actor;
}

static void describe_decision(const registry_version *v, const license_decision *d, owl_buf *b)
{
	owl_buf_printf(b, "%s%s@%d: %s (rule %s, license %s", b->len ? "; " : "", v->model,
		       v->number, d->approval[0] ? "approved" : license_effect_name(d->effect),
		       d->rule, d->license_id);
	if (d->approval[0])
		owl_buf_printf(b, ", %s", d->approval);
	owl_buf_printf(b, ")");
}

/* Gates the model and each adapter inside the caller's transaction, the
 * decisions described in *license_out. On a denial *denied points at the
 * version refused (for recording it again after the rollback). */
static int gate_content(registry_store *s, const content *c, const char *actor,
			char **license_out, const registry_version **denied, owl_err *err)
{
	owl_buf b;
	owl_buf_init(&b, 1 << 16);
	*denied = NULL;
	int rc = 0;
	for (size_t i = 0; !rc && i <= c->nadapters; i++) {
		const registry_version *v = i == 0 ? &c->model : &c->adapters[i - 1];
		license_request rq;
		license_decision d;
		gate_request(v, c->use, actor, &rq);
		rc = license_gate(s, &rq, &d, err);
		if (rc == OWL_EDENIED)
			*denied = v;
		else if (!rc)
			describe_decision(v, &d, &b);
	}
	if (rc) {
		owl_buf_release(&b);
		return rc;
	}
	*license_out = owl_buf_steal(&b);
	return 0;
}

/* After the rollback took the denial with it: records it alone. */
static void record_denial(registry_store *s, const registry_version *v, const char *use,
			  const char *actor)
{
	license_request rq;
	license_decision d;
	owl_err again = {0};
	gate_request(v, use, actor, &rq);
	license_gate(s, &rq, &d, &again);
}

static void append_note(owl_err *err, const char *note)
{
	if (!err)
		return;
	size_t l = strlen(err->msg);
	snprintf(err->msg + l, sizeof err->msg - l, "%s", note);
}

/* ---- writing ---------------------------------------------------------------- */

static int write_revision(registry_store *s, int64_t dep_id, int64_t revision, const content *c,
			  const char *who, const char *why, const char *license, owl_err *err)
{
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	char digest[65];
	deploy_version_digest(&c->model, digest);
	char *ref = owl_xasprintf("%s@%d", c->model.model, c->model.number);
	int rc = prepare(s, "INSERT INTO deploy_revisions(deployment_id, revision, model_version_id,"
			 " model_ref, model_digest, tp, ctx, port, use, who, at, why, license)"
			 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", &q, err);
	if (rc) {
		free(ref);
		return rc;
	}
	sqlite3_bind_int64(q, 1, dep_id);
	sqlite3_bind_int64(q, 2, revision);
	sqlite3_bind_int64(q, 3, c->model.id);
	sqlite3_bind_text(q, 4, ref, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, digest, -1, SQLITE_STATIC);
	sqlite3_bind_int(q, 6, c->tp);
	sqlite3_bind_int(q, 7, c->ctx);
	sqlite3_bind_int(q, 8, c->port);
	sqlite3_bind_text(q, 9, c->use, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 10, who, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 11, owl_unix_time());
	sqlite3_bind_text(q, 12, why ? why : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 13, license, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	free(ref);
	if (!ok)
		return db_fail(s, err, "record the revision");
	int64_t rid = sqlite3_last_insert_rowid(db);
	if ((rc = prepare(s, "INSERT INTO deploy_revision_adapters(revision_id, position, version_id,"
			  " ref, digest) VALUES (?,?,?,?,?)", &q, err)))
		return rc;
	for (size_t i = 0; ok && i < c->nadapters; i++) {
		char ad[65];
		deploy_version_digest(&c->adapters[i], ad);
		char *aref = owl_xasprintf("%s@%d", c->adapters[i].model, c->adapters[i].number);
		sqlite3_reset(q);
		sqlite3_bind_int64(q, 1, rid);
		sqlite3_bind_int64(q, 2, (int64_t)i);
		sqlite3_bind_int64(q, 3, c->adapters[i].id);
		sqlite3_bind_text(q, 4, aref, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(q, 5, ad, -1, SQLITE_TRANSIENT);
		ok = sqlite3_step(q) == SQLITE_DONE;
		free(aref);
	}
	sqlite3_finalize(q);
	return ok ? 0 : db_fail(s, err, "record the revision's adapters");
}

static int write_event(registry_store *s, int64_t dep_id, const char *who, const char *action,
		       const char *why, int64_t revision, int64_t from, const char *license,
		       owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = prepare(s, "INSERT INTO deploy_events(deployment_id, at, who, action, why, revision,"
			 " from_revision, license) VALUES (?,?,?,?,?,?,?,?)", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, dep_id);
	sqlite3_bind_int64(q, 2, owl_unix_time());
	sqlite3_bind_text(q, 3, who, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 4, action, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, why ? why : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, revision);
	sqlite3_bind_int64(q, 7, from);
	sqlite3_bind_text(q, 8, license ? license : "", -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : db_fail(s, err, "record the deployment's history");
}

/* Makes `revision` current, and sets what the deployment follows when
 * follow_too (set, create: from c; a follow: the version seen). */
static int update_deployment(registry_store *s, int64_t dep_id, int64_t revision,
			     const content *c, int follow_too, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc;
	if (follow_too) {
		rc = prepare(s, "UPDATE deployments SET current_revision=?, follow_model=?, follow_tag=?,"
			     " follow_seen_version_id=?, follow_blocked_version_id=NULL WHERE id=?",
			     &q, err);
		if (rc)
			return rc;
		sqlite3_bind_int64(q, 1, revision);
		if (c->follow_model) {
			sqlite3_bind_text(q, 2, c->follow_model, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 3, c->follow_tag, -1, SQLITE_STATIC);
			if (c->follow_seen)
				sqlite3_bind_int64(q, 4, c->follow_seen);
		}
		sqlite3_bind_int64(q, 5, dep_id);
	} else {
		rc = prepare(s, "UPDATE deployments SET current_revision=? WHERE id=?", &q, err);
		if (rc)
			return rc;
		sqlite3_bind_int64(q, 1, revision);
		sqlite3_bind_int64(q, 2, dep_id);
	}
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : db_fail(s, err, "update the deployment");
}

static int64_t next_revision(registry_store *s, int64_t dep_id)
{
	sqlite3_stmt *q = NULL;
	int64_t n = 1;
	if (prepare(s, "SELECT COALESCE(MAX(revision),0)+1 FROM deploy_revisions"
		    " WHERE deployment_id=?", &q, NULL))
		return 0;
	sqlite3_bind_int64(q, 1, dep_id);
	if (sqlite3_step(q) == SQLITE_ROW)
		n = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	return n;
}

/* The revision change inside an open transaction: gate, write, event. On
 * a denial the caller rolls back and records *denied alone. */
static int commit_revision(registry_store *s, int64_t dep_id, int64_t from, const content *c,
			   const char *who, const char *action, const char *why, int follow_too,
			   int64_t *revision_out, const registry_version **denied, owl_err *err)
{
	char *license = NULL;
	int rc = gate_content(s, c, who, &license, denied, err);
	if (rc)
		return rc;
	int64_t rev = next_revision(s, dep_id);
	if (!rev)
		rc = db_fail(s, err, "number the revision");
	if (!rc)
		rc = write_revision(s, dep_id, rev, c, who, why, license, err);
	if (!rc)
		rc = update_deployment(s, dep_id, rev, c, follow_too, err);
	if (!rc)
		rc = write_event(s, dep_id, who, action, why, rev, from, license, err);
	free(license);
	if (!rc && revision_out)
		*revision_out = rev;
	return rc;
}

/* Ends a change's transaction: commit, or roll back (recording a denial
 * alone, and saying that nothing changed). */
static int finish(registry_store *s, int rc, const registry_version *denied, const char *use,
		  const char *actor, const char *nothing, owl_err *err)
{
	if (!rc)
		return registry_store_commit(s, err);
	registry_store_rollback(s);
	if (rc == OWL_EDENIED && denied)
		record_denial(s, denied, use, actor);
	if (rc == OWL_EDENIED && nothing)
		append_note(err, nothing);
	return rc;
}

static const char *who_is(const char *actor)
{
	const char *u = actor ? actor : owl_user_name();
	return u && *u ? u : "unknown";
}

int deploy_create(registry_store *s, const char *name, const deploy_change *ch,
		  int64_t *revision_out, owl_err *err)
{
	if (!deploy_valid_name(name))
		return owl_err_set(err, OWL_EUSAGE, "invalid deployment name '%s': use 1 to 64 letters, "
				   "digits, '-', '_' and '.', starting with a letter or digit", name);
	if (!ch->model)
		return owl_err_set(err, OWL_EUSAGE, "a deployment needs --model M@V or M:TAG");
	const char *who = who_is(ch->actor);
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	content c = {0};
	const registry_version *denied = NULL;
	drow d;
	if (drow_get(s, name, &d, NULL) == 0) {
		drow_release(&d);
		rc = owl_err_set(err, OWL_EFAIL, "a deployment named '%s' exists already (change it "
				 "with owl deploy set %s ...)", name, name);
	}
	if (!rc)
		rc = content_build(s, ch, NULL, NULL, &c, err);
	int64_t dep_id = 0;
	if (!rc) {
		sqlite3_stmt *q = NULL;
		rc = prepare(s, "INSERT INTO deployments(name, current_revision, created_at, created_by)"
			     " VALUES (?,0,?,?)", &q, err);
		if (!rc) {
			sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 2, owl_unix_time());
			sqlite3_bind_text(q, 3, who, -1, SQLITE_STATIC);
			if (sqlite3_step(q) != SQLITE_DONE)
				rc = db_fail(s, err, "create the deployment");
			sqlite3_finalize(q);
			dep_id = sqlite3_last_insert_rowid(registry_store_db(s));
		}
	}
	if (!rc)
		rc = commit_revision(s, dep_id, 0, &c, who, "create", ch->reason, 1, revision_out,
				     &denied, err);
	rc = finish(s, rc, denied, c.use, who, " No deployment was created.", err);
	content_release(&c);
	return rc;
}

int deploy_set(registry_store *s, const char *name, const deploy_change *ch,
	       int64_t *revision_out, owl_err *err)
{
	const char *who = who_is(ch->actor);
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	drow d = {0};
	deploy_revision base = {0};
	content c = {0};
	const registry_version *denied = NULL;
	rc = drow_get(s, name, &d, err);
	if (!rc && d.pinned)
		rc = pinned_refusal(name, &d, "changes", err);
	if (!rc)
		rc = revision_by_number(s, d.id, name, d.current, &base, err);
	if (!rc)
		rc = content_build(s, ch, &base, &d, &c, err);
	if (!rc)
		rc = commit_revision(s, d.id, d.current, &c, who, "set", ch->reason, 1, revision_out,
				     &denied, err);
	rc = finish(s, rc, denied, c.use, who, " No revision was created.", err);
	content_release(&c);
	deploy_revision_release(&base);
	drow_release(&d);
	return rc;
}

/* The revision that was current before the current one. */
static int64_t previous_revision(registry_store *s, const drow *d)
{
	sqlite3_stmt *q = NULL;
	int64_t prev = 0;
	if (prepare(s, "SELECT from_revision FROM deploy_events WHERE deployment_id=? AND"
		    " revision=? AND from_revision<>revision ORDER BY id DESC LIMIT 1", &q, NULL))
		return 0;
	sqlite3_bind_int64(q, 1, d->id);
	sqlite3_bind_int64(q, 2, d->current);
	if (sqlite3_step(q) == SQLITE_ROW)
		prev = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	return prev;
}

int deploy_rollback(registry_store *s, const char *name, int64_t to, const char *reason,
		    const char *actor, int64_t *revision_out, owl_err *err)
{
	const char *who = who_is(actor);
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	drow d = {0};
	deploy_revision target = {0};
	content c = {0};
	const registry_version *denied = NULL;
	char *license = NULL;
	rc = drow_get(s, name, &d, err);
	if (!rc && d.pinned)
		rc = pinned_refusal(name, &d, "a rollback", err);
	if (!rc && to == 0 && (to = previous_revision(s, &d)) == 0)
		rc = owl_err_set(err, OWL_EFAIL, "deployment '%s' has no earlier revision to roll back "
				 "to (revision %lld is its first)", name, (long long)d.current);
	if (!rc && to == d.current)
		rc = owl_err_set(err, OWL_EUSAGE, "revision %lld of '%s' is already current", (long long)to,
				 name);
	if (!rc)
		rc = revision_by_number(s, d.id, name, to, &target, err);
	if (!rc)
		rc = content_from_revision(s, &target, &c, err);
	/* The policy may have changed since the revision was made. */
	if (!rc)
		rc = gate_content(s, &c, who, &license, &denied, err);
	if (!rc)
		rc = update_deployment(s, d.id, to, &c, 0, err);
	if (!rc)
		rc = write_event(s, d.id, who, "rollback", reason, to, d.current, license, err);
	if (!rc && revision_out)
		*revision_out = to;
	rc = finish(s, rc, denied, c.use, who, " The deployment was not rolled back.", err);
	free(license);
	content_release(&c);
	deploy_revision_release(&target);
	drow_release(&d);
	return rc;
}

static int set_pinned(registry_store *s, const char *name, int pin, const char *reason,
		      const char *actor, owl_err *err)
{
	const char *who = who_is(actor);
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	drow d = {0};
	rc = drow_get(s, name, &d, err);
	if (!rc && d.pinned == pin) {
		/* Already as asked: nothing to record. */
		drow_release(&d);
		registry_store_rollback(s);
		return 0;
	}
	sqlite3_stmt *q = NULL;
	if (!rc)
		rc = prepare(s, pin ? "UPDATE deployments SET pinned=1, pinned_by=?, pinned_at=?,"
				      " pin_reason=? WHERE id=?"
				    : "UPDATE deployments SET pinned=0, pinned_by=NULL, pinned_at=NULL,"
				      " pin_reason=NULL WHERE id=?", &q, err);
	if (!rc) {
		if (pin) {
			sqlite3_bind_text(q, 1, who, -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 2, owl_unix_time());
			sqlite3_bind_text(q, 3, reason ? reason : "", -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 4, d.id);
		} else {
			sqlite3_bind_int64(q, 1, d.id);
		}
		if (sqlite3_step(q) != SQLITE_DONE)
			rc = db_fail(s, err, "pin the deployment");
		sqlite3_finalize(q);
	}
	if (!rc)
		rc = write_event(s, d.id, who, pin ? "pin" : "unpin", reason, d.current, d.current, "",
				 err);
	rc = finish(s, rc, NULL, NULL, who, NULL, err);
	drow_release(&d);
	return rc;
}

int deploy_pin(registry_store *s, const char *name, const char *reason, const char *actor,
	       owl_err *err)
{
	return set_pinned(s, name, 1, reason, actor, err);
}

int deploy_unpin(registry_store *s, const char *name, const char *reason, const char *actor,
		 owl_err *err)
{
	return set_pinned(s, name, 0, reason, actor, err);
}

int deploy_remove(registry_store *s, const char *name, owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	drow d = {0};
	rc = drow_get(s, name, &d, err);
	sqlite3_stmt *q = NULL;
	if (!rc)
		rc = prepare(s, "DELETE FROM deployments WHERE id=?", &q, err);
	if (!rc) {
		sqlite3_bind_int64(q, 1, d.id);
		if (sqlite3_step(q) != SQLITE_DONE)
			rc = db_fail(s, err, "remove the deployment");
		sqlite3_finalize(q);
	}
	rc = finish(s, rc, NULL, NULL, NULL, NULL, err);
	drow_release(&d);
	return rc;
}

/* ---- following a tag ------------------------------------------------------------ */

/* The version the followed tag points at now (0: the tag is gone). */
static int64_t tag_target(registry_store *s, const drow *d, registry_version *v)
{
	char *ref = owl_xasprintf("%s:%s", d->follow_model, d->follow_tag);
	int ok = registry_resolve(s, ref, v, NULL) == 0;
	free(ref);
	return ok ? v->id : 0;
}

/* Whether the gate would allow the content now, without recording. */
static int would_allow(registry_store *s, const content *c, const char *who)
{
	for (size_t i = 0; i <= c->nadapters; i++) {
		const registry_version *v = i == 0 ? &c->model : &c->adapters[i - 1];
		license_request rq;
		license_decision d;
		gate_request(v, c->use, who, &rq);
		if (license_evaluate(s, &rq, &d, NULL) != 0 || !d.allowed)
			return 0;
	}
	return 1;
}

static int mark_blocked(registry_store *s, int64_t dep_id, int64_t vid, owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	sqlite3_stmt *q = NULL;
	rc = prepare(s, "UPDATE deployments SET follow_blocked_version_id=? WHERE id=?", &q, err);
	if (!rc) {
		sqlite3_bind_int64(q, 1, vid);
		sqlite3_bind_int64(q, 2, dep_id);
		if (sqlite3_step(q) != SQLITE_DONE)
			rc = db_fail(s, err, "record the refused tag move");
		sqlite3_finalize(q);
	}
	return finish(s, rc, NULL, NULL, NULL, NULL, err);
}

/* Whether the deployment has a tag move to make: reads only. */
static int follow_pending(registry_store *s, const char *name, owl_err *err)
{
	drow d;
	int rc = drow_get(s, name, &d, err);
	if (rc)
		return -rc;
	int pending = 0;
	if (d.follow_model && !d.pinned) {
		registry_version v;
		int64_t vid = tag_target(s, &d, &v);
		pending = vid && vid != d.seen;
		registry_version_release(&v);
	}
	drow_release(&d);
	return pending;
}

int deploy_follow(registry_store *s, const char *name, const char *actor, int *moved,
		  owl_err *err)
{
	if (moved)
		*moved = 0;
	/* Most calls find nothing to do: they take no write lock. */
	int pending = follow_pending(s, name, err);
	if (pending < 0)
		return -pending;
	if (!pending || registry_store_is_read_only(s))
		return 0;
	const char *who = who_is(actor);
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	drow d = {0};
	deploy_revision base = {0};
	registry_version tv = {0};
	content c = {0};
	const registry_version *denied = NULL;
	int64_t vid = 0;
	rc = drow_get(s, name, &d, err);
	/* Checked again under the lock: another process may have followed. */
	int go = !rc && d.follow_model && !d.pinned && (vid = tag_target(s, &d, &tv)) &&
		 vid != d.seen;
	if (go)
		rc = revision_by_number(s, d.id, name, d.current, &base, err);
	if (go && !rc) {
		rc = content_from_revision(s, &base, &c, err);
		if (!rc) {
			registry_version_release(&c.model);
			rc = registry_version_by_id(s, vid, &c.model, err);
		}
		c.follow_model = owl_xstrdup(d.follow_model);
		c.follow_tag = owl_xstrdup(d.follow_tag);
		c.follow_seen = vid;
		char hint[512];
		snprintf(hint, sizeof hint, " (the deployment follows %s:%s, which now points at "
			 "%s@%d: give its adapters with owl deploy set %s --adapter ...)",
			 d.follow_model, d.follow_tag, tv.model, tv.number, name);
		for (size_t i = 0; !rc && i < c.nadapters; i++)
			rc = check_adapter(s, &c.adapters[i], &c.model, hint, err);
	}
	/* A move the gate refused before is tried again only once the policy
	 * would allow it, so that the audit log records the refusal once. */
	if (go && !rc && vid == d.blocked && !would_allow(s, &c, who))
		go = 0;
	if (go && !rc) {
		char why[512];
		snprintf(why, sizeof why, "%s:%s moved to %s@%d", d.follow_model, d.follow_tag,
			 c.model.model, c.model.number);
		rc = commit_revision(s, d.id, d.current, &c, who, "follow", why, 1, NULL, &denied,
				     err);
	}
	if (!go && !rc) {
		registry_store_rollback(s);
	} else {
		int was_denied = rc == OWL_EDENIED && denied;
		rc = finish(s, rc, denied, c.use, who, NULL, err);
		if (was_denied) {
			char note[256];
			snprintf(note, sizeof note, " (deployment '%s' stays at revision %lld; the "
				 "move is made once the policy allows it)", name,
				 (long long)d.current);
			append_note(err, note);
			mark_blocked(s, d.id, vid, NULL);
		} else if (!rc && moved) {
			*moved = 1;
		}
	}
	content_release(&c);
	registry_version_release(&tv);
	deploy_revision_release(&base);
	drow_release(&d);
	return rc;
}

int deploy_follow_all(registry_store *s, const char *model, const char *actor,
		      deploy_report_fn report, void *report_ctx, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = prepare(s, "SELECT name FROM deployments WHERE follow_model IS NOT NULL AND"
			 " (?1 IS NULL OR follow_model=?1) ORDER BY name", &q, err);
	if (rc)
		return rc;
	if (model)
		sqlite3_bind_text(q, 1, model, -1, SQLITE_STATIC);
	char **names = NULL;
	size_t n = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		names = owl_xrealloc(names, (n + 1) * sizeof *names);
		names[n++] = col_dup(q, 0);
	}
	sqlite3_finalize(q);
	int first = 0;
	for (size_t i = 0; i < n; i++) {
		owl_err e = {0};
		int moved = 0;
		int r = deploy_follow(s, names[i], actor, &moved, &e);
		if (report && (r || moved))
			report(report_ctx, names[i], moved, r ? &e : NULL);
		if (r && !first) {
			first = r;
			if (err)
				*err = e;
		}
		free(names[i]);
	}
	free(names);
	return first;
}

/* ---- reading -------------------------------------------------------------------- */

void deploy_info_release(deploy_info *d)
{
	if (!d)
		return;
	free(d->name);
	free(d->pinned_by);
	free(d->pin_reason);
	free(d->follow);
	free(d->follow_blocked);
	free(d->created_by);
	deploy_revision_release(&d->cur);
	memset(d, 0, sizeof *d);
}

int deploy_get(registry_store *s, const char *name, deploy_info *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	drow d;
	int rc = drow_get(s, name, &d, err);
	if (rc)
		return rc;
	out->name = owl_xstrdup(name);
	out->current = d.current;
	out->pinned = d.pinned;
	out->pinned_by = d.pinned ? owl_xstrdup(d.pinned_by ? d.pinned_by : "") : NULL;
	out->pin_reason = d.pinned ? owl_xstrdup(d.pin_reason ? d.pin_reason : "") : NULL;
	out->pinned_at = d.pinned_at;
	if (d.follow_model)
		out->follow = owl_xasprintf("%s:%s", d.follow_model, d.follow_tag);
	if (d.blocked) {
		registry_version v;
		if (registry_version_by_id(s, d.blocked, &v, NULL) == 0) {
			out->follow_blocked = owl_xasprintf("%s@%d", v.model, v.number);
			registry_version_release(&v);
		}
	}
	out->created_at = d.created_at;
	out->created_by = owl_xstrdup(d.created_by ? d.created_by : "");
	sqlite3_stmt *q = NULL;
	if (!(rc = prepare(s, "SELECT COUNT(*) FROM deploy_revisions WHERE deployment_id=?", &q,
			   err))) {
		sqlite3_bind_int64(q, 1, d.id);
		if (sqlite3_step(q) == SQLITE_ROW)
			out->nrevisions = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
	}
	if (!rc)
		rc = revision_by_number(s, d.id, name, d.current, &out->cur, err);
	drow_release(&d);
	if (rc)
		deploy_info_release(out);
	return rc;
}

void deploy_list_free(deploy_info *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		deploy_info_release(&d[i]);
	free(d);
}

int deploy_list(registry_store *s, deploy_info **out, size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q = NULL;
	int rc = prepare(s, "SELECT name FROM deployments ORDER BY name", &q, err);
	if (rc)
		return rc;
	char **names = NULL;
	size_t k = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		names = owl_xrealloc(names, (k + 1) * sizeof *names);
		names[k++] = col_dup(q, 0);
	}
	sqlite3_finalize(q);
	deploy_info *all = owl_xcalloc(k ? k : 1, sizeof *all);
	for (size_t i = 0; i < k; i++) {
		if (!rc)
			rc = deploy_get(s, names[i], &all[i], err);
		free(names[i]);
	}
	free(names);
	if (rc) {
		deploy_list_free(all, k);
		return rc;
	}
	*out = all;
	*n = k;
	return 0;
}

int deploy_revision_get(registry_store *s, const char *name, int64_t revision,
			deploy_revision *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	drow d;
	int rc = drow_get(s, name, &d, err);
	if (!rc)
		rc = revision_by_number(s, d.id, name, revision, out, err);
	drow_release(&d);
	return rc;
}

void deploy_revisions_free(deploy_revision *r, size_t n)
{
	for (size_t i = 0; i < n; i++)
		deploy_revision_release(&r[i]);
	free(r);
}

int deploy_revisions(registry_store *s, const char *name, deploy_revision **out, size_t *n,
		     owl_err *err)
{
	*out = NULL;
	*n = 0;
	drow d;
	int rc = drow_get(s, name, &d, err);
	if (rc)
		return rc;
	sqlite3_stmt *q = NULL;
	rc = prepare(s, REVISION_COLS " WHERE deployment_id=? ORDER BY revision", &q, err);
	deploy_revision *all = NULL;
	size_t k = 0;
	if (!rc) {
		sqlite3_bind_int64(q, 1, d.id);
		while (!rc && sqlite3_step(q) == SQLITE_ROW) {
			all = owl_xrealloc(all, (k + 1) * sizeof *all);
			memset(&all[k], 0, sizeof all[k]);
			rc = revision_fill(s, q, &all[k++], err);
		}
		sqlite3_finalize(q);
	}
	drow_release(&d);
	if (rc) {
		deploy_revisions_free(all, k);
		return rc;
	}
	*out = all;
	*n = k;
	return 0;
}

void deploy_history_free(deploy_event *e, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(e[i].who);
		free(e[i].action);
		free(e[i].why);
		free(e[i].license);
	}
	free(e);
}

int deploy_history(registry_store *s, const char *name, deploy_event **out, size_t *n,
		   owl_err *err)
{
	*out = NULL;
	*n = 0;
	drow d;
	int rc = drow_get(s, name, &d, err);
	if (rc)
		return rc;
	sqlite3_stmt *q = NULL;
	rc = prepare(s, "SELECT at, who, action, why, revision, from_revision, license"
		     " FROM deploy_events WHERE deployment_id=? ORDER BY id", &q, err);
	deploy_event *all = NULL;
	size_t k = 0;
	if (!rc) {
		sqlite3_bind_int64(q, 1, d.id);
		while (sqlite3_step(q) == SQLITE_ROW) {
			all = owl_xrealloc(all, (k + 1) * sizeof *all);
			deploy_event *e = &all[k++];
			e->at = sqlite3_column_int64(q, 0);
			e->who = col_dup(q, 1);
			e->action = col_dup(q, 2);
			e->why = col_dup(q, 3);
			e->revision = sqlite3_column_int64(q, 4);
			e->from = sqlite3_column_int64(q, 5);
			e->license = col_dup(q, 6);
		}
		sqlite3_finalize(q);
	}
	drow_release(&d);
	*out = all;
	*n = k;
	return rc;
}
