/* The audit log: one row per decision, each row holding the SHA-256 of the
 * previous row's hash and its own content. Editing a row changes its hash;
 * deleting one breaks the next row's link. Triggers refuse UPDATE and
 * DELETE, but someone with the database file can drop them: the chain is
 * what makes tampering visible.
 *
 * The chain alone cannot show that the newest rows were deleted, because the
 * head (count and last hash, in license_meta) lives in the same file and can
 * be rewound with them. So every row's sequence number and hash is also
 * appended, after its transaction commits, to logs/audit-head (fsync'd, one
 * line per row; optionally to syslog as well), and `owl audit checkpoint`
 * signs the head with an Ed25519 key for keeping elsewhere. Verify requires
 * the database to hold every anchored row with the anchored hash: the anchor
 * may lag the database (a crash between commit and anchor), never lead it. */
#define _GNU_SOURCE
#include "internal.h"
#include "common/ed25519.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

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

/* out = the value, "" when the key has none. */
static int meta_get(registry_store *s, const char *key, char *out, size_t n, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	out[0] = 0;
	int rc = registry_store_prepare(s, "SELECT value FROM license_meta WHERE key=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	if (step == SQLITE_ROW)
		snprintf(out, n, "%s", (const char *)sqlite3_column_text(q, 0));
	else if (step != SQLITE_DONE)
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the audit head: %s",
				 sqlite3_errmsg(registry_store_db(s)));
	sqlite3_finalize(q);
	return rc;
}

static int meta_set(registry_store *s, const char *key, const char *value, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "INSERT OR REPLACE INTO license_meta(key, value)"
					" VALUES (?,?)", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, value, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot update the audit head: %s",
				    sqlite3_errmsg(registry_store_db(s)));
}

/* ---- the anchor outside the database ------------------------------------ */

#define ANCHOR_FILE "logs/audit-head"
#define CHECKPOINT_MAGIC "owl audit checkpoint 1\n"

static char *anchor_path(registry_store *s)
{
	return owl_path_join(registry_store_home(s), ANCHOR_FILE);
}

/* Appends "seq hash time" to logs/audit-head in one write(2) of an O_APPEND
 * file, so that concurrent owl processes never interleave within a line, and
 * fsyncs it (and the folder, when the file is new). With OWL_AUDIT_SYSLOG
 * set, the same line goes to syslog, out of reach of the data home's owner. */
static int anchor_append(registry_store *s, int64_t id, const char *hash, int64_t at,
			 owl_err *err)
{
	char *path = anchor_path(s);
	char *dir = owl_path_join(registry_store_home(s), "logs");
	int rc = owl_mkdir_p(dir, err);
	int existed = owl_path_exists(path);
	char when[32], line[160];
	owl_fmt_time(at, when, sizeof when);
	int n = snprintf(line, sizeof line, "%lld %s %s\n", (long long)id, hash, when);
	int fd = rc ? -1 : open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (!rc && fd < 0)
		rc = owl_err_set(err, OWL_EFAIL, "decision recorded as audit row %lld, but cannot open "
				 "'%s' to anchor it: %s", (long long)id, path, strerror(errno));
	if (!rc && (write(fd, line, (size_t)n) != n || fsync(fd) != 0))
		rc = owl_err_set(err, OWL_EFAIL, "decision recorded as audit row %lld, but cannot "
				 "write its anchor to '%s': %s", (long long)id, path, strerror(errno));
	if (fd >= 0)
		close(fd);
	if (!rc && !existed)
		rc = owl_fsync_dir(dir, err);
	const char *sl = getenv("OWL_AUDIT_SYSLOG");
	if (!rc && sl && *sl && strcmp(sl, "0") != 0) {
		openlog("owl-audit", LOG_PID | LOG_NDELAY, LOG_AUTHPRIV);
		syslog(LOG_NOTICE, "audit head home=%s seq=%lld hash=%s at=%s", registry_store_home(s), (long long)id,
		       hash, when);
		closelog();
	}
	free(dir);
	free(path);
	return rc;
}

typedef struct anchor_job {
	int64_t id, at;
	char hash[65];
} anchor_job;

static int anchor_run(registry_store *s, void *ctx, owl_err *err)
{
	const anchor_job *j = ctx;
	return anchor_append(s, j->id, j->hash, j->at, err);
}

/* The hash the database holds for row id, or "" when there is no such row. */
static int row_hash_of(registry_store *s, int64_t id, char out[65], owl_err *err)
{
	sqlite3_stmt *q = NULL;
	out[0] = 0;
	int rc = registry_store_prepare(s, "SELECT hash FROM audit_log WHERE id=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, id);
	int step = sqlite3_step(q);
	if (step == SQLITE_ROW && sqlite3_column_text(q, 0))
		snprintf(out, 65, "%s", (const char *)sqlite3_column_text(q, 0));
	else if (step != SQLITE_ROW && step != SQLITE_DONE)
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the audit log: %s",
				 sqlite3_errmsg(registry_store_db(s)));
	sqlite3_finalize(q);
	return rc;
}

/* Rows last+1 .. seq are gone although `where` recorded row seq. */
static int gap_error(int64_t seq, const char *when, const char *where, int64_t last,
		     owl_err *err)
{
	char rows[64];
	if (seq == last + 1)
		snprintf(rows, sizeof rows, "row %lld was", (long long)seq);
	else
		snprintf(rows, sizeof rows, "rows %lld to %lld were", (long long)last + 1,
			 (long long)seq);
	return owl_err_set(err, OWL_EINTEGRITY, "audit log broken at its end: %s removed (%s "
			   "records row %lld, written %s; the database ends at row %lld)", rows,
			   where, (long long)seq, when, (long long)last);
}

/* One anchored (seq, hash) against the database whose chain ends at last. */
static int check_anchored(registry_store *s, int64_t seq, const char *hash, const char *when,
			  const char *where, int64_t last, owl_err *err)
{
	if (seq > last)
		return gap_error(seq, when, where, last, err);
	char have[65];
	int rc = row_hash_of(s, seq, have, err);
	if (rc)
		return rc;
	if (strcmp(have, hash) != 0)
		return owl_err_set(err, OWL_EINTEGRITY, "audit log broken at row %lld: its hash %.16s... "
				   "differs from the %.16s... that %s recorded (the log was rewritten)",
				   (long long)seq, have[0] ? have : "(none)", hash, where);
	return 0;
}

/* Every complete line of logs/audit-head against the database. A last line
 * without its newline is a write a crash cut short, and is skipped. */
static int check_anchor_file(registry_store *s, int64_t last, license_audit_report *rep,
			     owl_err *err)
{
	char *path = anchor_path(s);
	char *text = NULL;
	size_t len = 0;
	int rc = 0;
	if (!owl_path_exists(path))
		goto out;
	if ((rc = owl_read_file(path, 1u << 30, &text, &len, err)))
		goto out;
	rep->anchor_found = 1;
	size_t lineno = 0;
	int64_t gap_seq = 0;
	char gap_where[96] = "", gap_when[33] = "";
	for (char *line = text; line < text + len;) {
		char *nl = memchr(line, '\n', (size_t)(text + len - line));
		if (!nl)
			break;
		*nl = 0;
		lineno++;
		long long seq = 0;
		char hash[65] = "", when[33] = "", where[96];
		int used = 0;
		if (sscanf(line, "%lld %64s %32s%n", &seq, hash, when, &used) != 3 ||
		    line[used] || seq < 1 || !owl_is_hex_digest(hash, 64)) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "%s line %zu is not \"SEQ HASH TIME\": "
					 "'%.80s'", ANCHOR_FILE, lineno, line);
			goto out;
		}
		/* Lines need not be in order (concurrent owl processes): the gap
		 * named is the one up to the newest anchored row. */
		snprintf(where, sizeof where, "%s line %zu", ANCHOR_FILE, lineno);
		if (seq > last && seq > gap_seq) {
			gap_seq = seq;
			snprintf(gap_where, sizeof gap_where, "%s", where);
			snprintf(gap_when, sizeof gap_when, "%s", when);
		} else if (seq <= last && (rc = check_anchored(s, seq, hash, when, where, last, err))) {
			goto out;
		}
		rep->anchor_lines++;
		if (seq > rep->anchored_seq)
			rep->anchored_seq = seq;
		line = nl + 1;
	}
	if (gap_seq)
		rc = gap_error(gap_seq, gap_when, gap_where, last, err);
out:
	free(text);
	free(path);
	return rc;
}

/* ---- signed checkpoints (Ed25519, the key format of signed bundles) ------- */

/* sig_hex (128 hex digits) over msg, under the public key at pub_path. */
static int verify_text(const char *pub_path, const char *msg, size_t n, const char *sig_hex,
		       const char *label, owl_err *err)
{
	unsigned char sig[64];
	if (!owl_is_hex_digest(sig_hex, 128))
		return owl_err_set(err, OWL_EINTEGRITY, "checkpoint '%s': the signature is not 128 "
				   "hex digits", label);
	for (size_t i = 0; i < 64; i++) {
		unsigned int b;
		sscanf(sig_hex + 2 * i, "%2x", &b);
		sig[i] = (unsigned char)b;
	}
	int rc = owl_ed25519_verify(pub_path, "public", msg, n, sig, err);
	if (rc == OWL_EINTEGRITY)
		return owl_err_set(err, OWL_EINTEGRITY, "checkpoint '%s': the signature does not verify "
				   "with '%s' (the checkpoint was forged or altered)", label, pub_path);
	return rc;
}

/* Reads one checkpoint file: the signed text, then "signature HEX". */
static int check_checkpoint(registry_store *s, const char *path, const char *pub, int64_t last,
			    license_audit_report *rep, owl_err *err)
{
	char *text = NULL;
	size_t len = 0;
	int rc = owl_read_file(path, 1u << 16, &text, &len, err);
	if (rc)
		return rc;
	char *sigline = strstr(text, "signature ");
	long long seq = 0, at = 0;
	char hash[65] = "", sig[129] = "", when[32];
	int used = 0;
	size_t ml = strlen(CHECKPOINT_MAGIC);
	if (strncmp(text, CHECKPOINT_MAGIC, ml) != 0 || !sigline ||
	    sscanf(text + ml, "seq %lld\nhash %64s\nat %lld\n%n", &seq, hash, &at, &used) != 3 ||
	    text + ml + used != sigline || sscanf(sigline, "signature %128s", sig) != 1 || seq < 1) {
		free(text);
		return owl_err_set(err, OWL_EINTEGRITY, "'%s' is not an owl audit checkpoint", path);
	}
	if (pub && (rc = verify_text(pub, text, (size_t)(sigline - text), sig, path, err))) {
		free(text);
		return rc;
	}
	owl_fmt_time(at, when, sizeof when);
	char where[1100];
	snprintf(where, sizeof where, "checkpoint '%s'", path);
	rc = check_anchored(s, seq, hash, when, where, last, err);
	if (!rc) {
		rep->checkpoints++;
		if (seq > rep->anchored_seq)
			rep->anchored_seq = seq;
	}
	free(text);
	return rc;
}

int license_audit_checkpoint(registry_store *s, const char *key_path, const char *out_path,
			     char **path_out, int64_t *seq_out, owl_err *err)
{
	*path_out = NULL;
	license_audit_report rep;
	/* A checkpoint vouches for the log as it is: never sign a broken one. */
	int rc = license_audit_check(s, NULL, NULL, 0, &rep, err);
	if (rc)
		return rc;
	if (rep.rows == 0)
		return owl_err_set(err, OWL_EUSAGE, "the audit log is empty: nothing to checkpoint");
	char hash[65];
	if ((rc = row_hash_of(s, rep.rows, hash, err)))
		return rc;
	owl_buf b;
	owl_buf_init(&b, 1024);
	int64_t now = owl_unix_time();
	owl_buf_printf(&b, "%sseq %lld\nhash %s\nat %lld\n", CHECKPOINT_MAGIC, (long long)rep.rows,
		       hash, (long long)now);
	char sig[129];
	if ((rc = owl_ed25519_sign(key_path, b.data, b.len, sig, err))) {
		owl_buf_release(&b);
		return rc;
	}
	owl_buf_printf(&b, "signature %s\n", sig);
	char *path = NULL;
	if (out_path) {
		path = owl_xstrdup(out_path);
	} else {
		char *dir = owl_path_join(registry_store_home(s), "logs/audit-checkpoints");
		if ((rc = owl_mkdir_p(dir, err))) {
			free(dir);
			owl_buf_release(&b);
			return rc;
		}
		char name[64];
		snprintf(name, sizeof name, "%08lld-%lld.ckpt", (long long)rep.rows, (long long)now);
		path = owl_path_join(dir, name);
		free(dir);
	}
	rc = owl_write_file_atomic(path, b.data, b.len, err);
	owl_buf_release(&b);
	if (rc) {
		free(path);
		return rc;
	}
	*path_out = path;
	*seq_out = rep.rows;
	return 0;
}

int license_audit_append(registry_store *s, const license_audit_entry *e, owl_err *err)
{
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	char prev[65] = GENESIS;
	int64_t id = 1;
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(registry_store_db(s), "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1", -1,
			       &q, NULL) != SQLITE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the audit log: %s", sqlite3_errmsg(registry_store_db(s)));
		registry_store_rollback(s);
		return rc;
	}
	if (sqlite3_step(q) == SQLITE_ROW) {
		id = sqlite3_column_int64(q, 0) + 1;
		snprintf(prev, sizeof prev, "%s", (const char *)sqlite3_column_text(q, 1));
	}
	sqlite3_finalize(q);
	const char *fields[9] = {e->actor, e->action, e->subject, e->use, e->effect, e->rule,
				 e->license, e->evidence, ""};
	char hash[65];
	row_hash(prev, id, e->at, fields, e->version_id, hash);
	if (sqlite3_prepare_v2(registry_store_db(s), "INSERT INTO audit_log(id, at, actor, action, subject,"
			       " version_id, use, effect, rule, license, evidence, prev_hash, hash)"
			       " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", -1, &q, NULL) != SQLITE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write the audit log: %s", sqlite3_errmsg(registry_store_db(s)));
		registry_store_rollback(s);
		return rc;
	}
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
		rc = owl_err_set(err, OWL_EFAIL, "cannot write the audit log: %s", sqlite3_errmsg(registry_store_db(s)));
		registry_store_rollback(s);
		return rc;
	}
	char head[128];
	snprintf(head, sizeof head, "%lld:%s", (long long)id, hash);
	/* Only a committed row is anchored: when the caller's transaction (the
	 * change this decision allows) commits, or at once when there is none.
	 * A crash in between leaves the anchor one row behind the database,
	 * which verify accepts; a rolled-back decision is never anchored. */
	anchor_job job = {.id = id, .at = e->at};
	memcpy(job.hash, hash, sizeof job.hash);
	if ((rc = meta_set(s, "audit_head", head, err)) ||
	    (rc = registry_store_after_commit(s, anchor_run, &job, sizeof job, err)) ||
	    (rc = registry_store_commit(s, err))) {
		registry_store_rollback(s);
		return rc;
	}
	return 0;
}

/* The hash chain and the head kept beside it. */
static int check_chain(registry_store *s, int64_t *rows, owl_err *err)
{
	*rows = 0;
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "SELECT id, at, actor, action, subject, version_id, use,"
					" effect, rule, license, evidence, prev_hash, hash FROM audit_log"
					" ORDER BY id", &q, err);
	if (rc)
		return rc;
	char prev[65] = GENESIS;
	int64_t expect_id = 1;
	int step = SQLITE_DONE;
	while (rc == 0 && (step = sqlite3_step(q)) == SQLITE_ROW) {
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
	if (!rc && step != SQLITE_DONE)
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the audit log: %s",
				 sqlite3_errmsg(registry_store_db(s)));
	sqlite3_finalize(q);
	if (rc)
		return rc;
	char head[128], want[128];
	if ((rc = meta_get(s, "audit_head", head, sizeof head, err)))
		return rc;
	if (*rows == 0 && !head[0])
		return 0;
	snprintf(want, sizeof want, "%lld:%s", (long long)(expect_id - 1), prev);
	if (strcmp(head, want) != 0)
		return owl_err_set(err, OWL_EINTEGRITY, "audit log broken at its end: the newest rows "
				   "were deleted (the log ends at row %lld, the recorded head is %s)",
				   (long long)(expect_id - 1), head[0] ? head : "missing");
	return 0;
}

int license_audit_check(registry_store *s, const char *pub_key, const char *const *checkpoints,
			size_t ncheckpoints, license_audit_report *rep, owl_err *err)
{
	memset(rep, 0, sizeof *rep);
	int rc = check_chain(s, &rep->rows, err);
	if (!rc)
		rc = check_anchor_file(s, rep->rows, rep, err);
	/* Signed checkpoints: the ones given, else those kept in the home. */
	char **names = NULL;
	size_t nnames = 0;
	char *dir = owl_path_join(registry_store_home(s), "logs/audit-checkpoints");
	if (!rc && !ncheckpoints && owl_is_dir(dir))
		rc = owl_list_dir(dir, &names, &nnames, err);
	for (size_t i = 0; !rc && i < nnames; i++) {
		size_t nl = strlen(names[i]);
		if (nl < 5 || strcmp(names[i] + nl - 5, ".ckpt") != 0)
			continue;
		char *p = owl_path_join(dir, names[i]);
		rc = check_checkpoint(s, p, pub_key, rep->rows, rep, err);
		free(p);
	}
	for (size_t i = 0; !rc && i < ncheckpoints; i++)
		rc = check_checkpoint(s, checkpoints[i], pub_key, rep->rows, rep, err);
	rep->checkpoints_signed = !rc && pub_key && rep->checkpoints > 0;
	owl_free_names(names, nnames);
	free(dir);
	return rc;
}

int license_audit_verify(registry_store *s, int64_t *rows, owl_err *err)
{
	license_audit_report rep;
	int rc = license_audit_check(s, NULL, NULL, 0, &rep, err);
	*rows = rep.rows;
	return rc;
}
