/* The audit log: one row per decision, each row holding the SHA-256 of the
 * previous row's hash and its own content. Editing a row changes its hash;
 * deleting one breaks the next row's link; deleting the newest rows is
 * caught by the head (count and last hash) kept in license_meta. Triggers
 * refuse UPDATE and DELETE, but someone with the database file can drop
 * them: the chain is what makes tampering visible. */
#define _GNU_SOURCE
#include "internal.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define GENESIS "0000000000000000000000000000000000000000000000000000000000000000"

/* hash = SHA-256(prev_hash, then each field followed by a 0x1f separator). */
static void row_hash(const char *prev, int64_t id, int64_t at, const char *const fields[9],
		     int64_t version_id, char out[65])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	char num[64];
	EVP_DigestUpdate(md, prev, strlen(prev));
	snprintf(num, sizeof num, "\x1f%lld\x1f%lld\x1f%lld\x1f", (long long)id, (long long)at,
		 (long long)version_id);
	EVP_DigestUpdate(md, num, strlen(num));
	for (int i = 0; i < 9; i++) {
		const char *f = fields[i] ? fields[i] : "";
		EVP_DigestUpdate(md, f, strlen(f));
		EVP_DigestUpdate(md, "\x1f", 1);
	}
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int dl = 0;
	EVP_DigestFinal_ex(md, d, &dl);
	EVP_MD_CTX_free(md);
	owl_hex(d, dl, out);
}

static void meta_get(registry_store *s, const char *key, char *out, size_t n)
{
	sqlite3_stmt *q = NULL;
	out[0] = 0;
	sqlite3_prepare_v2(s->db, "SELECT value FROM license_meta WHERE key=?", -1, &q, NULL);
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW)
		snprintf(out, n, "%s", (const char *)sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
}

static int meta_set(registry_store *s, const char *key, const char *value, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO license_meta(key, value) VALUES (?,?)", -1,
			   &q, NULL);
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot update the audit head: %s",
				    sqlite3_errmsg(s->db));
}

int license_audit_append(registry_store *s, const license_audit_entry *e, owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	char prev[65] = GENESIS;
	int64_t id = 1;
	sqlite3_stmt *q = NULL;
	sqlite3_prepare_v2(s->db, "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1", -1, &q,
			   NULL);
	if (sqlite3_step(q) == SQLITE_ROW) {
		id = sqlite3_column_int64(q, 0) + 1;
		snprintf(prev, sizeof prev, "%s", (const char *)sqlite3_column_text(q, 1));
	}
	sqlite3_finalize(q);
	const char *fields[9] = {e->actor, e->action, e->subject, e->use, e->effect, e->rule,
				 e->license, e->evidence, ""};
	char hash[65];
	row_hash(prev, id, e->at, fields, e->version_id, hash);
	sqlite3_prepare_v2(s->db, "INSERT INTO audit_log(id, at, actor, action, subject, version_id,"
			   " use, effect, rule, license, evidence, prev_hash, hash)"
			   " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", -1, &q, NULL);
	sqlite3_bind_int64(q, 1, id);
	sqlite3_bind_int64(q, 2, e->at);
	for (int i = 0; i < 3; i++)
		sqlite3_bind_text(q, 3 + i, fields[i] ? fields[i] : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 6, e->version_id);
	for (int i = 3; i < 8; i++)
		sqlite3_bind_text(q, 4 + i, fields[i] ? fields[i] : "", -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 12, prev, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 13, hash, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	if (!ok) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write the audit log: %s", sqlite3_errmsg(s->db));
		registry_store_rollback(s);
		return rc;
	}
	char head[128];
	snprintf(head, sizeof head, "%lld:%s", (long long)id, hash);
	if ((rc = meta_set(s, "audit_head", head, err)) || (rc = registry_store_commit(s, err)))
		registry_store_rollback(s);
	return rc;
}

int license_audit_verify(registry_store *s, int64_t *rows, owl_err *err)
{
	*rows = 0;
	sqlite3_stmt *q = NULL;
	sqlite3_prepare_v2(s->db, "SELECT id, at, actor, action, subject, version_id, use, effect,"
			   " rule, license, evidence, prev_hash, hash FROM audit_log ORDER BY id",
			   -1, &q, NULL);
	char prev[65] = GENESIS;
	int64_t expect_id = 1;
	int rc = 0;
	while (rc == 0 && sqlite3_step(q) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(q, 0);
		const char *fields[9];
		int cols[8] = {2, 3, 4, 6, 7, 8, 9, 10};
		for (int i = 0; i < 8; i++)
			fields[i] = (const char *)sqlite3_column_text(q, cols[i]);
		fields[8] = "";
		const char *stored_prev = (const char *)sqlite3_column_text(q, 11);
		const char *stored = (const char *)sqlite3_column_text(q, 12);
		char hash[65];
		row_hash(prev, id, sqlite3_column_int64(q, 1), fields, sqlite3_column_int64(q, 5), hash);
		if (id != expect_id)
			rc = owl_err_set(err, OWL_EINTEGRITY, "audit log broken at row %lld: row%s "
					 "%lld%s deleted", (long long)id, id - expect_id > 1 ? "s" : "",
					 (long long)expect_id, id - expect_id > 1 ? " onward were" : " was");
		else if (!stored_prev || strcmp(stored_prev, prev) != 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "audit log broken at row %lld: it does not "
					 "link to the row before it (a row was deleted or inserted)",
					 (long long)id);
		else if (!stored || strcmp(stored, hash) != 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "audit log broken at row %lld: its content "
					 "does not match its hash (the row was edited)", (long long)id);
		snprintf(prev, sizeof prev, "%s", stored ? stored : "");
		expect_id = id + 1;
		(*rows)++;
	}
	sqlite3_finalize(q);
	if (rc)
		return rc;
	char head[128], want[128];
	meta_get(s, "audit_head", head, sizeof head);
	if (*rows == 0 && !head[0])
		return 0;
	snprintf(want, sizeof want, "%lld:%s", (long long)(expect_id - 1), prev);
	if (strcmp(head, want) != 0)
		return owl_err_set(err, OWL_EINTEGRITY, "audit log broken at its end: the newest rows "
				   "were deleted (the log ends at row %lld, the recorded head is %s)",
				   (long long)(expect_id - 1), head[0] ? head : "missing");
	return 0;
}
