/* Versions: resolving references, snapshots, tags, removal, gc and verify. */
#define _GNU_SOURCE
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/safetensors.h"

static char *col_dup(sqlite3_stmt *q, int i)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	return t ? owl_xstrdup((const char *)t) : NULL;
}

/* "NAME", "NAME@3" or "NAME:TAG" -> parts. Names may contain '/', never '@' or ':'. */
static void split_ref(const char *ref, char **name, int *number, char **tag)
{
	*number = 0;
	*tag = NULL;
	const char *at = strrchr(ref, '@');
	const char *colon = strrchr(ref, ':');
	if (at) {
		*name = owl_xasprintf("%.*s", (int)(at - ref), ref);
		char *end = NULL;
		long n = strtol(at + 1, &end, 10);
		*number = (end && *end == 0 && n > 0 && n < 1000000000) ? (int)n : -1;
	} else if (colon) {
		*name = owl_xasprintf("%.*s", (int)(colon - ref), ref);
		*tag = owl_xstrdup(colon + 1);
	} else {
		*name = owl_xstrdup(ref);
	}
}

/* "3 versions: 1, 2, 3" or "tags: stable, canary" for error messages. */
static void list_for_error(registry_store *s, const char *sql, int64_t mid, owl_buf *out)
{
	sqlite3_stmt *q = NULL;
	if (registry_store_prepare(s, sql, &q, NULL)) {
		owl_buf_printf(out, "unknown");
		return;
	}
	sqlite3_bind_int64(q, 1, mid);
	int n = 0;
	while (sqlite3_step(q) == SQLITE_ROW && n < 20)
		owl_buf_printf(out, "%s%s", n++ ? ", " : "", sqlite3_column_text(q, 0));
	if (n == 0)
		owl_buf_printf(out, "none");
	sqlite3_finalize(q);
}

static int load_version(registry_store *s, int64_t vid, registry_version *v, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s,
			   "SELECT v.id, v.model_id, m.name, v.version, v.source, v.revision, v.format,"
			   " COALESCE(v.parent_version_id,0), v.config_json, v.total_bytes, v.created_at"
			   " FROM versions v JOIN models m ON m.id = v.model_id WHERE v.id=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, vid);
	if (sqlite3_step(q) != SQLITE_ROW) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "version id %lld does not exist", (long long)vid);
	}
	v->id = sqlite3_column_int64(q, 0);
	v->model_id = sqlite3_column_int64(q, 1);
	v->model = col_dup(q, 2);
	v->number = sqlite3_column_int(q, 3);
	v->source = col_dup(q, 4);
	v->revision = col_dup(q, 5);
	v->format = col_dup(q, 6);
	v->parent_id = sqlite3_column_int64(q, 7);
	v->config_json = col_dup(q, 8);
	v->total_bytes = (uint64_t)sqlite3_column_int64(q, 9);
	v->created_at = sqlite3_column_int64(q, 10);
	sqlite3_finalize(q);

	rc = registry_store_prepare(s, "SELECT path, digest, size FROM version_files WHERE"
				    " version_id=? ORDER BY path", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, vid);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		if (v->nfiles == cap) {
			cap = cap ? 2 * cap : 8;
			v->files = owl_xrealloc(v->files, cap * sizeof *v->files);
		}
		registry_file *f = &v->files[v->nfiles++];
		f->path = col_dup(q, 0);
		snprintf(f->digest, sizeof f->digest, "%s", (const char *)sqlite3_column_text(q, 1));
		f->size = (uint64_t)sqlite3_column_int64(q, 2);
		f->blob_path = registry_blob_path(s, f->digest);
	}
	sqlite3_finalize(q);
	if (step != SQLITE_DONE)
		return owl_err_set(err, OWL_EFAIL, "cannot read the files of version id %lld: %s",
				   (long long)vid, sqlite3_errmsg(s->db));
	return 0;
}

int registry_version_by_id(registry_store *s, int64_t vid, registry_version *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	int rc = load_version(s, vid, out, err);
	if (rc)
		registry_version_release(out);
	return rc;
}

int registry_resolve(registry_store *s, const char *ref, registry_version *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	char *name = NULL, *tag = NULL;
	int number = 0;
	split_ref(ref, &name, &number, &tag);
	int rc = 0;
	int64_t mid = 0, vid = 0;
	sqlite3_stmt *q = NULL;
	if ((rc = registry_store_prepare(s, "SELECT id FROM models WHERE name=?", &q, err)))
		goto out;
	sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW)
		mid = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	if (!mid) {
		rc = owl_err_set(err, OWL_EFAIL, "no model named '%s' (see 'owl list')", name);
		goto out;
	}
	if (number < 0) {
		rc = owl_err_set(err, OWL_EUSAGE, "'%s': the version after '@' must be a number, "
				 "e.g. %s@1", ref, name);
		goto out;
	}
	if (tag)
		rc = registry_store_prepare(s, "SELECT version_id FROM tags WHERE model_id=?1 AND"
					    " tag=?2", &q, err);
	else if (number)
		rc = registry_store_prepare(s, "SELECT id FROM versions WHERE model_id=?1 AND"
					    " version=?3", &q, err);
	else
		rc = registry_store_prepare(s, "SELECT id FROM versions WHERE model_id=?1"
					    " ORDER BY version DESC LIMIT 1", &q, err);
	if (rc)
		goto out;
	sqlite3_bind_int64(q, 1, mid);
	if (tag)
		sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
	else if (number)
		sqlite3_bind_int(q, 3, number);
	if (sqlite3_step(q) == SQLITE_ROW)
		vid = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	if (!vid) {
		owl_buf have;
		owl_buf_init(&have, 1024);
		if (tag) {
			list_for_error(s, "SELECT tag FROM tags WHERE model_id=? ORDER BY tag", mid, &have);
			rc = owl_err_set(err, OWL_EFAIL, "model '%s' has no tag '%s' (tags: %s)", name,
					 tag, have.data);
		} else {
			list_for_error(s, "SELECT version FROM versions WHERE model_id=? ORDER BY version",
				       mid, &have);
			rc = owl_err_set(err, OWL_EFAIL, "model '%s' has no version %d (versions: %s)",
					 name, number, have.data);
		}
		owl_buf_release(&have);
		goto out;
	}
	rc = load_version(s, vid, out, err);
out:
	free(name);
	free(tag);
	if (rc)
		registry_version_release(out);
	return rc;
}

void registry_version_release(registry_version *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->nfiles; i++) {
		free(v->files[i].path);
		free(v->files[i].blob_path);
	}
	free(v->files);
	free(v->model);
	free(v->source);
	free(v->revision);
	free(v->format);
	free(v->config_json);
	memset(v, 0, sizeof *v);
}

const registry_file *registry_version_file(const registry_version *v, const char *path)
{
	for (size_t i = 0; i < v->nfiles; i++)
		if (strcmp(v->files[i].path, path) == 0)
			return &v->files[i];
	return NULL;
}

/* Makes dir hold one link per file of v, to its blob. With check_only,
 * changes nothing and fails unless every link is already right. */
static int link_snapshot(const registry_version *v, const char *dir, int check_only,
			 owl_err *err)
{
	int rc = check_only ? 0 : owl_mkdir_p(dir, err);
	for (size_t i = 0; rc == 0 && i < v->nfiles; i++) {
		char *link_path = owl_path_join(dir, v->files[i].path);
		char target[4096];
		ssize_t n = readlink(link_path, target, sizeof target - 1);
		int right = n > 0 && (size_t)n == strlen(v->files[i].blob_path) &&
			    memcmp(target, v->files[i].blob_path, (size_t)n) == 0;
		if (!right && check_only) {
			rc = OWL_EFAIL;
		} else if (!right) {
			char *parent = owl_xstrdup(link_path);
			*strrchr(parent, '/') = 0;
			rc = owl_mkdir_p(parent, err);
			free(parent);
			unlink(link_path);
			if (!rc && symlink(v->files[i].blob_path, link_path) != 0)
				rc = owl_err_set(err, OWL_EFAIL, "cannot link '%s': %s", link_path,
						 strerror(errno));
		}
		free(link_path);
	}
	return rc;
}

int registry_version_materialize(registry_store *s, const registry_version *v, char **dir_out,
				 owl_err *err)
{
	*dir_out = NULL;
	char *dir = owl_xasprintf("%s/snapshots/%s/%d", s->home, v->model, v->number);
	int rc;
	if (s->read_only && link_snapshot(v, dir, 1, NULL) != 0) {
		/* A read-only home cannot hold a new snapshot: build it in the
		 * temporary folder, keyed by the home so that two homes never
		 * share one. It holds links only. */
		uint64_t h = 1469598103934665603ull;
		for (const char *c = s->home; *c; c++)
			h = (h ^ (unsigned char)*c) * 1099511628211ull;
		const char *tmp = getenv("TMPDIR");
		free(dir);
		dir = owl_xasprintf("%s/owl-snapshots-%d/%016llx/%s/%d", tmp && *tmp ? tmp : "/tmp",
				    (int)getuid(), (unsigned long long)h, v->model, v->number);
		rc = link_snapshot(v, dir, 0, err);
	} else {
		rc = s->read_only ? 0 : link_snapshot(v, dir, 0, err);
	}
	if (rc) {
		free(dir);
		return rc;
	}
	*dir_out = dir;
	return 0;
}

/* ---- tags -------------------------------------------------------------- */

int registry_tag_set(registry_store *s, const registry_version *v, const char *tag, owl_err *err)
{
	if (!registry_valid_name(tag) || strchr(tag, '/'))
		return owl_err_set(err, OWL_EUSAGE, "invalid tag '%s': use letters, digits, '-', '_' "
				   "and '.'", tag);
	int64_t old = 0;
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "SELECT version_id FROM tags WHERE model_id=? AND tag=?",
					&q, err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, v->model_id);
	sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
	if (sqlite3_step(q) == SQLITE_ROW)
		old = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	if (old == v->id)
		return 0;
	rc = registry_store_exec(s, "SAVEPOINT tag_set", err);
	if (rc)
		return rc;
	int64_t now = owl_unix_time();
	int ok = sqlite3_prepare_v2(s->db, "INSERT INTO tags(model_id, tag, version_id, updated_at)"
				    " VALUES (?,?,?,?) ON CONFLICT(model_id, tag) DO UPDATE SET"
				    " version_id=excluded.version_id, updated_at=excluded.updated_at",
				    -1, &q, NULL) == SQLITE_OK;
	if (ok) {
		sqlite3_bind_int64(q, 1, v->model_id);
		sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 3, v->id);
		sqlite3_bind_int64(q, 4, now);
		ok = sqlite3_step(q) == SQLITE_DONE;
		sqlite3_finalize(q);
	}
	if (ok)
		ok = sqlite3_prepare_v2(s->db, "INSERT INTO tag_history(model_id, tag, old_version_id,"
					" new_version_id, at) VALUES (?,?,?,?,?)", -1, &q,
					NULL) == SQLITE_OK;
	if (ok) {
		sqlite3_bind_int64(q, 1, v->model_id);
		sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
		if (old)
			sqlite3_bind_int64(q, 3, old);
		sqlite3_bind_int64(q, 4, v->id);
		sqlite3_bind_int64(q, 5, now);
		ok = sqlite3_step(q) == SQLITE_DONE;
		sqlite3_finalize(q);
	}
	if (!ok) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot set tag '%s': %s", tag, sqlite3_errmsg(s->db));
		registry_store_exec(s, "ROLLBACK TO tag_set; RELEASE tag_set", NULL);
		return rc;
	}
	return registry_store_exec(s, "RELEASE tag_set", err);
}

int registry_tag_delete(registry_store *s, const char *model, const char *tag, owl_err *err)
{
	registry_version v;
	char *ref = owl_xasprintf("%s:%s", model, tag);
	int rc = registry_resolve(s, ref, &v, err);
	free(ref);
	if (rc)
		return rc;
	if ((rc = registry_store_exec(s, "SAVEPOINT tag_del", err)))
		goto out;
	sqlite3_stmt *q = NULL;
	int ok = sqlite3_prepare_v2(s->db, "DELETE FROM tags WHERE model_id=? AND tag=?", -1, &q,
				    NULL) == SQLITE_OK;
	if (ok) {
		sqlite3_bind_int64(q, 1, v.model_id);
		sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
		ok = sqlite3_step(q) == SQLITE_DONE;
		sqlite3_finalize(q);
	}
	if (ok)
		ok = sqlite3_prepare_v2(s->db, "INSERT INTO tag_history(model_id, tag, old_version_id,"
					" new_version_id, at) VALUES (?,?,?,NULL,?)", -1, &q,
					NULL) == SQLITE_OK;
	if (ok) {
		sqlite3_bind_int64(q, 1, v.model_id);
		sqlite3_bind_text(q, 2, tag, -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 3, v.id);
		sqlite3_bind_int64(q, 4, owl_unix_time());
		ok = sqlite3_step(q) == SQLITE_DONE;
		sqlite3_finalize(q);
	}
	if (!ok) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot delete tag '%s': %s", tag,
				 sqlite3_errmsg(s->db));
		registry_store_exec(s, "ROLLBACK TO tag_del; RELEASE tag_del", NULL);
		goto out;
	}
	rc = registry_store_exec(s, "RELEASE tag_del", err);
out:
	registry_version_release(&v);
	return rc;
}

/* ---- removal ----------------------------------------------------------- */

/* What keeps a version: tags and derived versions, the registry's own
 * references. Other modules' rows (deployments) are checked by the removal
 * guards they register (registry_store_add_remove_guard). */
static const struct { const char *table, *column, *what; } pins[] = {
	{"tags", "version_id", "tag"},
	{"versions", "parent_version_id", "derived version"},
};

int registry_version_remove(registry_store *s, const registry_version *v, owl_err *err)
{
	/* The checks run inside the removal's transaction, so that nothing can
	 * start using the version between the check and the delete. */
	int rc = registry_store_begin(s, err);
	if (rc)
		return rc;
	for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
		char *sql = owl_xasprintf("SELECT COUNT(*) FROM %s WHERE %s=?", pins[i].table,
					  pins[i].column);
		sqlite3_stmt *q = NULL;
		long long n = -1;
		int prc = registry_store_prepare(s, sql, &q, err);
		free(sql);
		if (prc) {
			registry_store_rollback(s);
			return prc;
		}
		sqlite3_bind_int64(q, 1, v->id);
		if (sqlite3_step(q) == SQLITE_ROW)
			n = sqlite3_column_int64(q, 0);
		sqlite3_finalize(q);
		/* A count that cannot be read pins the version: refuse rather than guess. */
		if (n < 0) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot tell whether %s still reference "
					 "%s@%d: %s", pins[i].what, v->model, v->number,
					 sqlite3_errmsg(s->db));
			registry_store_rollback(s);
			return rc;
		}
		if (n > 0) {
			const char *hint = strcmp(pins[i].table, "tags") == 0
				? "; move or delete the tag first (owl tag --delete NAME:TAG)"
				: "";
			registry_store_rollback(s);
			return owl_err_set(err, OWL_EDENIED, "refusing to remove %s@%d: %lld %s%s "
					   "still reference%s it%s", v->model, v->number, n,
					   pins[i].what, n == 1 ? "" : "s", n == 1 ? "s" : "", hint);
		}
	}
	if ((rc = registry_store_check_remove(s, v, err))) {
		registry_store_rollback(s);
		return rc;
	}
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(s->db, "DELETE FROM versions WHERE id=?", -1, &q, NULL) != SQLITE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot remove %s@%d: %s", v->model, v->number,
				 sqlite3_errmsg(s->db));
		registry_store_rollback(s);
		return rc;
	}
	sqlite3_bind_int64(q, 1, v->id);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	if (!ok) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot remove %s@%d: %s", v->model, v->number,
				 sqlite3_errmsg(s->db));
		registry_store_rollback(s);
		return rc;
	}
	/* The snapshot folder holds links only; it is rebuilt on demand. */
	char *snap = owl_xasprintf("%s/snapshots/%s/%d", s->home, v->model, v->number);
	owl_remove_tree(snap, NULL);
	free(snap);
	return registry_store_commit(s, err);
}

/* ---- gc ---------------------------------------------------------------- */

/* A database that cannot answer counts as "referenced": gc keeps what it
 * cannot judge. */
static int blob_referenced(registry_store *s, const char *digest)
{
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM version_files WHERE digest=? LIMIT 1", -1, &q,
			       NULL) != SQLITE_OK)
		return 1;
	sqlite3_bind_text(q, 1, digest, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	sqlite3_finalize(q);
	return step != SQLITE_DONE;
}

/* A staging folder tmp/stage-PID-N whose process no longer runs. */
static int stale_stage(const char *name)
{
	int pid = 0;
	if (sscanf(name, "stage-%d-", &pid) != 1 || pid <= 0)
		return 0;
	return kill(pid, 0) != 0 && errno == ESRCH;
}

/* As blob_referenced, an unanswerable database counts as "recorded" (so
 * that the blob is judged by its references, kept when in doubt). */
static int blob_recorded(registry_store *s, const char *digest)
{
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM blobs WHERE digest=?", -1, &q, NULL) !=
	    SQLITE_OK)
		return 1;
	sqlite3_bind_text(q, 1, digest, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	sqlite3_finalize(q);
	return step != SQLITE_DONE;
}

/* When this database was created: its first registry schema step (-1 when
 * the database cannot say, err set). */
static int64_t db_created_at(registry_store *s, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int64_t t = -1;
	if (registry_store_prepare(s, "SELECT COALESCE(MIN(applied_at),0) FROM migrations"
				   " WHERE module='" REGISTRY_SCHEMA_MODULE "'", &q, err))
		return -1;
	if (sqlite3_step(q) == SQLITE_ROW)
		t = sqlite3_column_int64(q, 0);
	else
		owl_err_set(err, OWL_EFAIL, "cannot read when the database was created: %s",
			    sqlite3_errmsg(s->db));
	sqlite3_finalize(q);
	return t;
}

int registry_gc(registry_store *s, int dry_run, registry_gc_result *res, owl_err *err)
{
	memset(res, 0, sizeof *res);
	/* The exclusive ingest lock waits for commits that have moved blobs in
	 * but not yet recorded them; the write lock keeps rows from changing
	 * while blobs are judged. */
	int lock = -1;
	int rc = registry_ingest_lock(s, 1, &lock, err);
	if (rc)
		return rc;
	if ((rc = registry_store_begin(s, err))) {
		registry_ingest_unlock(lock);
		return rc;
	}
	/* A blob file this database never recorded (no blobs row) was either
	 * moved in by a commit that failed (after the database was created:
	 * garbage) or comes from an earlier database that was lost (before it:
	 * keep it for owl recover). A ctime is set by the rename into blobs/. */
	int64_t created = db_created_at(s, err);
	if (created < 0) {
		registry_store_rollback(s);
		registry_ingest_unlock(lock);
		return OWL_EFAIL;
	}
	DIR *top = opendir(s->blobs_dir);
	struct dirent *de;
	while (top && (de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		char *sub = owl_path_join(s->blobs_dir, de->d_name);
		DIR *d = opendir(sub);
		struct dirent *be;
		while (d && (be = readdir(d))) {
			if (be->d_name[0] == '.' || blob_referenced(s, be->d_name))
				continue;
			char *p = owl_path_join(sub, be->d_name);
			struct stat sb;
			if (stat(p, &sb) == 0) {
				if ((int64_t)sb.st_ctime < created && !blob_recorded(s, be->d_name)) {
					res->blobs_kept_unknown++;
				} else {
					res->blobs_removed++;
					res->bytes_freed += (uint64_t)sb.st_size;
					if (!dry_run)
						unlink(p);
				}
			}
			free(p);
		}
		if (d)
			closedir(d);
		if (!dry_run)
			rmdir(sub); /* only succeeds when empty */
		free(sub);
	}
	if (top)
		closedir(top);
	if (!dry_run) {
		rc = registry_store_exec(s, "DELETE FROM blobs WHERE digest NOT IN"
					    " (SELECT digest FROM version_files)", err);
		if (rc) {
			registry_store_rollback(s);
			registry_ingest_unlock(lock);
			return rc;
		}
	}
	rc = registry_store_commit(s, err);
	registry_ingest_unlock(lock);
	if (rc)
		return rc;
	DIR *tmp = opendir(s->tmp_dir);
	while (tmp && (de = readdir(tmp))) {
		if (!stale_stage(de->d_name))
			continue;
		res->stale_tmp_removed++;
		if (!dry_run) {
			char *p = owl_path_join(s->tmp_dir, de->d_name);
			owl_remove_tree(p, NULL);
			free(p);
		}
	}
	if (tmp)
		closedir(tmp);
	return 0;
}

/* ---- recover ----------------------------------------------------------- */

/* An extension for a recovered blob, read from its content. */
static const char *sniff_extension(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return "";
	unsigned char head[16] = {0};
	size_t n = fread(head, 1, sizeof head, f);
	fclose(f);
	if (n >= 4 && memcmp(head, "GGUF", 4) == 0)
		return ".gguf";
	owl_err e = {0};
	if (n >= 9 && head[8] == '{' && st_validate_file(path, &e) == 0)
		return ".safetensors";
	size_t i = 0;
	while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\t' || head[i] == '\r'))
		i++;
	if (i < n && (head[i] == '{' || head[i] == '['))
		return ".json";
	return "";
}

/* One recovered version: the given blobs, linked into a stage under their
 * new names (a link, so that committing renames a blob onto itself). */
static int recover_version(registry_store *s, const char *model, char (*digests)[65],
			   const char **exts, size_t n, const char *format, int *number,
			   owl_err *err)
{
	registry_stage *st = NULL;
	char *source = owl_xasprintf("recovered from the blobs of %s", s->home);
	int rc = registry_stage_new(s, source, &st, err);
	free(source);
	if (rc)
		return rc;
	for (size_t i = 0; !rc && i < n; i++) {
		char *name = owl_xasprintf("%s%s", digests[i], exts[i]);
		char *blob = registry_blob_path(s, digests[i]);
		char *dst = owl_path_join(st->files_dir, name);
		struct stat sb;
		if (stat(blob, &sb) != 0 || link(blob, dst) != 0)
			rc = owl_err_set(err, OWL_EFAIL, "cannot stage blob '%s': %s", blob,
					 strerror(errno));
		else
			rc = registry_stage_add(st, name, digests[i], (uint64_t)sb.st_size, NULL, err);
		free(name);
		free(blob);
		free(dst);
	}
	if (!rc && strcmp(format, "gguf") == 0) {
		rc = registry_stage_validate(st, err);
	} else if (!rc) {
		st->format = owl_xstrdup(format);
		st->config_json = owl_xstrdup("{}");
	}
	registry_commit_result r;
	if (!rc)
		rc = registry_stage_commit(s, st, model, 0, NULL, NULL, NULL, &r, err);
	if (!rc)
		*number = r.number;
	registry_stage_free(st);
	return rc;
}

int registry_recover(registry_store *s, registry_recover_result *res, owl_err *err)
{
	memset(res, 0, sizeof *res);
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(res->model, sizeof res->model, "recovered-%Y%m%d-%H%M%S", &tm);
	char (*digests)[65] = NULL;
	const char **exts = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;
	DIR *top = opendir(s->blobs_dir);
	struct dirent *de;
	while (!rc && top && (de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		char *sub = owl_path_join(s->blobs_dir, de->d_name);
		DIR *d = opendir(sub);
		struct dirent *be;
		while (!rc && d && (be = readdir(d))) {
			if (be->d_name[0] == '.' || !owl_is_hex_digest(be->d_name, 64) ||
			    blob_referenced(s, be->d_name))
				continue;
			char *p = owl_path_join(sub, be->d_name);
			char hex[65];
			uint64_t size = 0;
			owl_err herr = {0};
			if (registry_hash_file(p, hex, &size, &herr) != 0 ||
			    strcmp(hex, be->d_name) != 0) {
				res->corrupt++;
			} else {
				if (n == cap) {
					cap = cap ? 2 * cap : 64;
					digests = owl_xrealloc(digests, cap * sizeof *digests);
					exts = owl_xrealloc(exts, cap * sizeof *exts);
				}
				snprintf(digests[n], 65, "%s", hex);
				exts[n++] = sniff_extension(p);
				res->blobs++;
				res->bytes += size;
			}
			free(p);
		}
		if (d)
			closedir(d);
		free(sub);
	}
	if (top)
		closedir(top);
	/* Each GGUF is a whole model: its own version, which runs. The rest
	 * (safetensors shards, configs, tokenizers of unknown grouping) goes
	 * into one version of plain files. */
	size_t nrest = 0;
	for (size_t i = 0; !rc && i < n; i++) {
		if (strcmp(exts[i], ".gguf") != 0) {
			memmove(digests[nrest], digests[i], 65);
			exts[nrest++] = exts[i];
			continue;
		}
		int number = 0;
		char one[1][65];
		memcpy(one[0], digests[i], 65);
		const char *ext1[1] = {".gguf"};
		owl_err verr = {0};
		if (recover_version(s, res->model, one, ext1, 1, "gguf", &number, &verr) == 0) {
			res->versions++;
			res->gguf++;
		} else {
			/* A GGUF the parser refuses still belongs to the user. */
			memmove(digests[nrest], one[0], 65);
			exts[nrest++] = "";
		}
	}
	if (!rc && nrest) {
		int number = 0;
		rc = recover_version(s, res->model, digests, exts, nrest, "files", &number, err);
		if (!rc)
			res->versions++;
	}
	free(digests);
	free(exts);
	return rc;
}

/* ---- verify ------------------------------------------------------------ */

int registry_verify(registry_store *s, const registry_version *v, registry_verify_report report,
		    void *report_ctx, uint64_t *files_checked, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int prc = registry_store_prepare(s,
			   "SELECT m.name, v.version, f.path, f.digest, f.size FROM version_files f"
			   " JOIN versions v ON v.id=f.version_id JOIN models m ON m.id=v.model_id"
			   " WHERE ?1=0 OR v.id=?1 ORDER BY m.name, v.version, f.path", &q, err);
	if (prc)
		return prc;
	sqlite3_bind_int64(q, 1, v ? v->id : 0);
	uint64_t checked = 0, bad = 0;
	/* Many versions share blobs: hash each blob once. */
	char (*seen)[65] = NULL;
	int *seen_ok = NULL;
	size_t nseen = 0, cap = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		const char *model = (const char *)sqlite3_column_text(q, 0);
		int number = sqlite3_column_int(q, 1);
		const char *path = (const char *)sqlite3_column_text(q, 2);
		const char *digest = (const char *)sqlite3_column_text(q, 3);
		uint64_t size = (uint64_t)sqlite3_column_int64(q, 4);
		checked++;
		const char *problem = NULL;
		char problem_buf[256];
		size_t k;
		for (k = 0; k < nseen; k++)
			if (strcmp(seen[k], digest) == 0)
				break;
		if (k < nseen) {
			if (!seen_ok[k])
				problem = "corrupt or missing (see above)";
		} else {
			char *blob = registry_blob_path(s, digest);
			char hex[65];
			uint64_t got = 0;
			owl_err herr = {0};
			if (!owl_path_exists(blob)) {
				problem = "missing: the blob file is gone";
			} else if (registry_hash_file(blob, hex, &got, &herr) != 0) {
				snprintf(problem_buf, sizeof problem_buf, "unreadable: %s", herr.msg);
				problem = problem_buf;
			} else if (strcmp(hex, digest) != 0 || got != size) {
				snprintf(problem_buf, sizeof problem_buf,
					 "corrupt: content hashes to %s (%llu bytes), expected %s "
					 "(%llu bytes)", hex, (unsigned long long)got, digest,
					 (unsigned long long)size);
				problem = problem_buf;
			}
			free(blob);
			if (nseen == cap) {
				cap = cap ? 2 * cap : 64;
				seen = owl_xrealloc(seen, cap * sizeof *seen);
				seen_ok = owl_xrealloc(seen_ok, cap * sizeof *seen_ok);
			}
			snprintf(seen[nseen], 65, "%s", digest);
			seen_ok[nseen++] = problem == NULL;
		}
		if (problem) {
			bad++;
			if (report)
				report(report_ctx, model, number, path, digest, problem);
		}
	}
	sqlite3_finalize(q);
	free(seen);
	free(seen_ok);
	if (files_checked)
		*files_checked = checked;
	if (bad)
		return owl_err_set(err, OWL_EINTEGRITY, "%llu of %llu files are corrupt or missing",
				   (unsigned long long)bad, (unsigned long long)checked);
	return 0;
}
