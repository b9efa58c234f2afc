/* Reading what the licenses module has recorded: a version's findings and
 * conclusions, the catalog, the organisation's attributes and the audit
 * log, as plain structs the caller frees (for the CLI and a server alike). */
#include "licenses.h"

#include <stdlib.h>
#include <string.h>

static char *col_dup(sqlite3_stmt *q, int i)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	return owl_xstrdup(t ? (const char *)t : "");
}

static void col_copy(sqlite3_stmt *q, int i, char *dst, size_t n)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	snprintf(dst, n, "%s", t ? (const char *)t : "");
}

/* The statement stopped on an error rather than after its last row. */
static int read_failed(registry_store *s, int step, const char *what, owl_err *err)
{
	if (step == SQLITE_DONE)
		return 0;
	return owl_err_set(err, OWL_EFAIL, "cannot read %s: %s", what,
			   sqlite3_errmsg(registry_store_db(s)));
}

/* Grows an array of n elements of size sz to hold one more. */
static void *grow(void *a, size_t n, size_t *cap, size_t sz)
{
	if (n < *cap)
		return a;
	*cap = *cap ? 2 * *cap : 16;
	return owl_xrealloc(a, *cap * sz);
}

int license_findings_of(registry_store *s, int64_t version_id, license_findings **out,
			owl_err *err)
{
	*out = NULL;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT license_id, source, evidence, confidence FROM"
					" license_findings WHERE version_id=? ORDER BY id", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, version_id);
	license_findings *f = owl_xcalloc(1, sizeof *f);
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		f->items = grow(f->items, f->n, &f->cap, sizeof *f->items);
		license_finding *it = &f->items[f->n++];
		memset(it, 0, sizeof *it);
		col_copy(q, 0, it->license_id, sizeof it->license_id);
		col_copy(q, 1, it->source, sizeof it->source);
		col_copy(q, 2, it->evidence, sizeof it->evidence);
		it->confidence = sqlite3_column_double(q, 3);
	}
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "the license findings", err))) {
		license_findings_free(f);
		return rc;
	}
	*out = f;
	return 0;
}

void license_conclusions_free(license_conclusion *c, size_t n)
{
	for (size_t i = 0; c && i < n; i++) {
		free(c[i].license_id);
		free(c[i].reason);
		free(c[i].by);
	}
	free(c);
}

int license_conclusions_of(registry_store *s, int64_t version_id, license_conclusion **out,
			   size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT license_id, reason, by, at FROM"
					" license_conclusions WHERE version_id=? ORDER BY id", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, version_id);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		*out = grow(*out, *n, &cap, sizeof **out);
		license_conclusion *c = &(*out)[(*n)++];
		c->license_id = col_dup(q, 0);
		c->reason = col_dup(q, 1);
		c->by = col_dup(q, 2);
		c->at = sqlite3_column_int64(q, 3);
	}
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "the license conclusions", err))) {
		license_conclusions_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

int license_catalog_list(registry_store *s, license_facts **out, size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT id FROM license_catalog ORDER BY category, id",
					&q, err);
	if (rc)
		return rc;
	size_t cap = 0;
	int step = SQLITE_DONE;
	while (!rc && (step = sqlite3_step(q)) == SQLITE_ROW) {
		*out = grow(*out, *n, &cap, sizeof **out);
		rc = license_catalog_get(s, (const char *)sqlite3_column_text(q, 0), &(*out)[*n], err);
		if (!rc)
			(*n)++;
	}
	sqlite3_finalize(q);
	if (!rc)
		rc = read_failed(s, step, "the license catalog", err);
	if (rc) {
		free(*out);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

void license_org_attrs_free(license_org_attr *a, size_t n)
{
	for (size_t i = 0; a && i < n; i++) {
		free(a[i].key);
		free(a[i].value);
	}
	free(a);
}

int license_org_list(registry_store *s, license_org_attr **out, size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT key, value FROM org_attributes ORDER BY key", &q,
					err);
	if (rc)
		return rc;
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		*out = grow(*out, *n, &cap, sizeof **out);
		(*out)[*n].key = col_dup(q, 0);
		(*out)[*n].value = col_dup(q, 1);
		(*n)++;
	}
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "the organisation's attributes", err))) {
		license_org_attrs_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

void license_audit_rows_free(license_audit_row *r, size_t n)
{
	for (size_t i = 0; r && i < n; i++) {
		free(r[i].actor);
		free(r[i].action);
		free(r[i].subject);
		free(r[i].use);
		free(r[i].effect);
		free(r[i].rule);
		free(r[i].license);
		free(r[i].evidence);
	}
	free(r);
}

int license_audit_list(registry_store *s, int64_t since, license_audit_row **out, size_t *n,
		       owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT id, at, COALESCE(version_id,0), actor, action,"
					" subject, use, effect, rule, license, evidence FROM audit_log"
					" WHERE at >= ? ORDER BY id", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, since);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		*out = grow(*out, *n, &cap, sizeof **out);
		license_audit_row *r = &(*out)[(*n)++];
		r->id = sqlite3_column_int64(q, 0);
		r->at = sqlite3_column_int64(q, 1);
		r->version_id = sqlite3_column_int64(q, 2);
		r->actor = col_dup(q, 3);
		r->action = col_dup(q, 4);
		r->subject = col_dup(q, 5);
		r->use = col_dup(q, 6);
		r->effect = col_dup(q, 7);
		r->rule = col_dup(q, 8);
		r->license = col_dup(q, 9);
		r->evidence = col_dup(q, 10);
	}
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "the audit log", err))) {
		license_audit_rows_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}
