/* The store: one SQLite database (owl.db) in the data home, in WAL mode with
 * foreign keys on and a busy timeout, plus the folders blobs/, tmp/, runs/,
 * logs/. Each module owns an ordered list of schema steps and records how
 * many it applied in the migrations table, so that modules evolve their
 * schema independently and a database written by a newer owl is refused. */
#define _GNU_SOURCE
#include "registry.h"

#include <stdlib.h>
#include <string.h>

static int exec_sql(sqlite3 *db, const char *sql, owl_err *err)
{
	char *msg = NULL;
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		int rc = owl_err_set(err, OWL_EFAIL, "database error: %s", msg ? msg : "unknown");
		sqlite3_free(msg);
		return rc;
	}
	return 0;
}

int registry_store_exec(registry_store *s, const char *sql, owl_err *err)
{
	return exec_sql(s->db, sql, err);
}

int registry_store_begin(registry_store *s, owl_err *err)
{
	return exec_sql(s->db, "BEGIN IMMEDIATE", err);
}

int registry_store_commit(registry_store *s, owl_err *err)
{
	return exec_sql(s->db, "COMMIT", err);
}

void registry_store_rollback(registry_store *s)
{
	if (!sqlite3_get_autocommit(s->db))
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

int registry_store_schema_version(registry_store *s, const char *module)
{
	sqlite3_stmt *st = NULL;
	int v = 0;
	if (sqlite3_prepare_v2(s->db, "SELECT COALESCE(MAX(version),0) FROM migrations WHERE module=?",
			       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, module, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			v = sqlite3_column_int(st, 0);
	}
	sqlite3_finalize(st);
	return v;
}

int registry_store_migrate(registry_store *s, const char *module, const char *const *steps,
			   int nsteps, owl_err *err)
{
	int have = registry_store_schema_version(s, module);
	if (have > nsteps)
		return owl_err_set(err, OWL_EFAIL,
				   "database '%s' was written by a newer owl (%s schema version %d, "
				   "this owl %s knows up to %d): upgrade owl or use another --home",
				   s->db_path, module, have, OWL_VERSION, nsteps);
	for (int v = have + 1; v <= nsteps; v++) {
		int rc = registry_store_begin(s, err);
		if (rc)
			return rc;
		rc = exec_sql(s->db, steps[v - 1], err);
		if (!rc) {
			char *sql = owl_xasprintf("INSERT INTO migrations(module, version, applied_at, "
						  "owl_version) VALUES ('%s', %d, %lld, '%s')",
						  module, v, (long long)owl_unix_time(), OWL_VERSION);
			rc = exec_sql(s->db, sql, err);
			free(sql);
		}
		if (!rc)
			rc = registry_store_commit(s, err);
		if (rc) {
			registry_store_rollback(s);
			return owl_err_wrap(err, "cannot apply %s schema step %d", module, v);
		}
	}
	return 0;
}

int registry_store_open(const char *home, registry_store **out, owl_err *err)
{
	*out = NULL;
	registry_store *s = owl_xcalloc(1, sizeof *s);
	s->home = owl_xstrdup(home);
	s->db_path = owl_path_join(home, "owl.db");
	s->blobs_dir = owl_path_join(home, "blobs/sha256");
	s->tmp_dir = owl_path_join(home, "tmp");
	int rc = owl_mkdir_p(home, err);
	const char *sub[] = {"blobs/sha256", "tmp", "runs", "logs"};
	for (size_t i = 0; !rc && i < sizeof sub / sizeof sub[0]; i++) {
		char *p = owl_path_join(home, sub[i]);
		rc = owl_mkdir_p(p, err);
		free(p);
	}
	if (rc)
		goto fail;
	if (sqlite3_open_v2(s->db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot open database '%s': %s", s->db_path,
				 s->db ? sqlite3_errmsg(s->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(s->db, 10000);
	rc = exec_sql(s->db,
		      "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;"
		      "CREATE TABLE IF NOT EXISTS migrations ("
		      "  module TEXT NOT NULL, version INTEGER NOT NULL, applied_at INTEGER NOT NULL,"
		      "  owl_version TEXT NOT NULL, PRIMARY KEY (module, version));",
		      err);
	if (rc) {
		owl_err_wrap(err, "cannot open database '%s'", s->db_path);
		goto fail;
	}
	rc = registry_schema_migrate(s, err);
	if (rc)
		goto fail;
	*out = s;
	return 0;
fail:
	registry_store_close(s);
	return rc;
}

void registry_store_close(registry_store *s)
{
	if (!s)
		return;
	if (s->db)
		sqlite3_close_v2(s->db);
	free(s->home);
	free(s->db_path);
	free(s->blobs_dir);
	free(s->tmp_dir);
	free(s);
}
