/* The store: one SQLite database (owl.db) in the data home, in WAL mode with
 * foreign keys on and a busy handler, plus the folders blobs/, tmp/, runs/,
 * logs/. Each module owns an ordered list of schema steps and records how
 * many it applied in the migrations table, so that modules evolve their
 * schema independently and a database written by a newer owl is refused.
 *
 * Three situations are handled on purpose here rather than by SQLite's
 * defaults:
 *  - another process holds the write lock: writers wait (up to
 *    $OWL_LOCK_TIMEOUT seconds) and say who they wait for, instead of
 *    failing with "database is locked";
 *  - owl.db is missing or empty while blobs/ holds blobs: the database was
 *    lost, and a fresh one would make every blob look like garbage to gc, so
 *    the home is refused until `owl recover` or a restored backup;
 *  - the home is read-only: readers open the database read-only (or
 *    immutable when SQLite cannot create its WAL index), writers are told. */
#define _GNU_SOURCE
#include "store_impl.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_LOCK_TIMEOUT_S 600.0

/* The removal guards modules registered (registry_store_add_remove_guard). */
struct registry_remove_guards {
	registry_remove_guard_fn *fn;
	int n;
};

/* The process holding SQLite's WAL write lock on db_path, or 0. SQLite
 * takes that lock as a POSIX lock on byte 120 of the -shm file (the first
 * WAL lock slot); /proc/locks lists such locks with their owner. Reading
 * /proc/locks, unlike opening the -shm file ourselves, cannot disturb the
 * POSIX locks this process's own connection holds. */
static int lock_holder_pid(const char *db_path)
{
	char *shm = owl_xasprintf("%s-shm", db_path);
	struct stat sb;
	int found = 0;
	if (stat(shm, &sb) == 0) {
		FILE *f = fopen("/proc/locks", "r");
		char line[256];
		while (f && !found && fgets(line, sizeof line, f)) {
			char kind[16], mode[16];
			int pid = 0;
			unsigned maj = 0, min = 0;
			unsigned long long ino = 0;
			char start[32], end[32];
			/* "1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 120 120" */
			const char *p = strchr(line, ':');
			if (!p || sscanf(p + 1, " %15s %*s %15s %d %x:%x:%llu %31s %31s", kind, mode, &pid,
					 &maj, &min, &ino, start, end) != 8)
				continue;
			if (strcmp(kind, "POSIX") != 0 || strcmp(mode, "WRITE") != 0 ||
			    ino != (unsigned long long)sb.st_ino || pid == (int)getpid())
				continue;
			long long a = atoll(start);
			long long b = strcmp(end, "EOF") == 0 ? -1 : atoll(end);
			if (a <= 120 && (b < 0 || b >= 120))
				found = pid;
		}
		if (f)
			fclose(f);
	}
	free(shm);
	return found;
}

/* SQLite calls this while the lock it needs is held elsewhere: sleep a
 * little (growing up to 100 ms), tell the caller after a second and then
 * every 5 s, give up after lock_timeout_s. */
static int busy_handler(void *ctx, int count)
{
	registry_store *s = ctx;
	double now = owl_now();
	if (count == 0) {
		s->wait_started = now;
		s->wait_notified = 0;
	}
	double waited = now - s->wait_started;
	if (waited >= s->lock_timeout_s)
		return 0;
	if (s->wait_fn && waited >= 1.0 &&
	    (s->wait_notified == 0 || now - s->wait_notified >= 5.0)) {
		s->wait_notified = now;
		s->wait_fn(s->wait_ctx, s->db_path, lock_holder_pid(s->db_path), waited);
	}
	long ms = count < 7 ? 1L << count : 100;
	struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
	nanosleep(&ts, NULL);
	return 1;
}

static int exec_sql_store(registry_store *s, sqlite3 *db, const char *sql, owl_err *err)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	if (rc == SQLITE_OK)
		return 0;
	int ret;
	if (s && (rc & 0xff) == SQLITE_BUSY) {
		int pid = lock_holder_pid(s->db_path);
		char who[64] = "another owl process";
		if (pid)
			snprintf(who, sizeof who, "another owl process (pid %d)", pid);
		ret = owl_err_set(err, OWL_EFAIL, "the database '%s' is locked by %s (waited up to "
				  "%.0f s, OWL_LOCK_TIMEOUT); try again when it is done", s->db_path,
				  who, s->lock_timeout_s);
	} else if (s && s->read_only && ((rc & 0xff) == SQLITE_READONLY)) {
		ret = owl_err_set(err, OWL_EFAIL, "the data home '%s' is read-only: this needs write "
				  "access", s->home);
	} else {
		ret = owl_err_set(err, OWL_EFAIL, "database error: %s", msg ? msg : "unknown");
	}
	sqlite3_free(msg);
	return ret;
}

int registry_store_exec(registry_store *s, const char *sql, owl_err *err)
{
	return exec_sql_store(s, s->db, sql, err);
}

struct registry_after_commit {
	registry_after_commit_fn fn;
	void *ctx;  /* owned copy */
	int depth;  /* the transaction depth that queued it */
};

static void drop_after(registry_store *s, int from_depth)
{
	int keep = 0;
	for (int i = 0; i < s->nafter; i++) {
		if (s->after[i].depth >= from_depth)
			free(s->after[i].ctx);
		else
			s->after[keep++] = s->after[i];
	}
	s->nafter = keep;
}

int registry_store_begin(registry_store *s, owl_err *err)
{
	if (s->read_only)
		return owl_err_set(err, OWL_EFAIL, "the data home '%s' is read-only: this needs write "
				   "access", s->home);
	if (s->tx_depth == 0 && !sqlite3_get_autocommit(s->db))
		s->tx_depth = 1; /* a transaction begun with plain SQL */
	int rc;
	if (s->tx_depth == 0) {
		rc = exec_sql_store(s, s->db, "BEGIN IMMEDIATE", err);
	} else {
		char sql[48];
		snprintf(sql, sizeof sql, "SAVEPOINT owl_sp%d", s->tx_depth);
		rc = exec_sql_store(s, s->db, sql, err);
	}
	if (!rc)
		s->tx_depth++;
	return rc;
}

int registry_store_commit(registry_store *s, owl_err *err)
{
	if (s->tx_depth > 1) {
		char sql[48];
		snprintf(sql, sizeof sql, "RELEASE owl_sp%d", s->tx_depth - 1);
		int rc = exec_sql_store(s, s->db, sql, err);
		if (!rc) {
			/* the inner transaction's actions now wait for the outer one */
			for (int i = 0; i < s->nafter; i++)
				if (s->after[i].depth == s->tx_depth)
					s->after[i].depth = s->tx_depth - 1;
			s->tx_depth--;
		}
		return rc;
	}
	int rc = exec_sql_store(s, s->db, "COMMIT", err);
	if (rc)
		return rc;
	s->tx_depth = 0;
	/* The rows are durable: now what must follow them. */
	int n = s->nafter;
	struct registry_after_commit *a = s->after;
	s->after = NULL;
	s->nafter = s->after_cap = 0;
	for (int i = 0; i < n; i++) {
		owl_err e = {0};
		int r = a[i].fn(s, a[i].ctx, &e);
		if (r && !rc) {
			rc = r;
			if (err)
				*err = e;
		}
		free(a[i].ctx);
	}
	free(a);
	return rc;
}

void registry_store_rollback(registry_store *s)
{
	if (s->tx_depth > 1) {
		char sql[96];
		snprintf(sql, sizeof sql, "ROLLBACK TO owl_sp%d; RELEASE owl_sp%d", s->tx_depth - 1,
			 s->tx_depth - 1);
		sqlite3_exec(s->db, sql, NULL, NULL, NULL);
		drop_after(s, s->tx_depth);
		s->tx_depth--;
		return;
	}
	if (!sqlite3_get_autocommit(s->db))
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
	drop_after(s, 0);
	s->tx_depth = 0;
}

int registry_store_after_commit(registry_store *s, registry_after_commit_fn fn, const void *ctx,
				size_t ctx_size, owl_err *err)
{
	if (s->tx_depth == 0 && sqlite3_get_autocommit(s->db))
		return fn(s, (void *)ctx, err);
	if (s->nafter == s->after_cap) {
		int cap = s->after_cap ? 2 * s->after_cap : 4;
		struct registry_after_commit *a = realloc(s->after, (size_t)cap * sizeof *a);
		if (!a)
			return owl_err_set(err, OWL_EFAIL, "cannot queue an action after the commit");
		s->after = a;
		s->after_cap = cap;
	}
	void *copy = malloc(ctx_size ? ctx_size : 1);
	if (!copy)
		return owl_err_set(err, OWL_EFAIL, "cannot queue an action after the commit");
	memcpy(copy, ctx, ctx_size);
	s->after[s->nafter++] = (struct registry_after_commit){fn, copy, s->tx_depth};
	return 0;
}

/* *v = the number of steps applied for module; an error when the
 * migrations table cannot be read (a migration must not guess 0 and apply
 * every step again). */
static int schema_version(registry_store *s, const char *module, int *v, owl_err *err)
{
	sqlite3_stmt *st = NULL;
	*v = 0;
	int rc = registry_store_prepare(s, "SELECT COALESCE(MAX(version),0) FROM migrations"
					" WHERE module=?", &st, err);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, module, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW)
		*v = sqlite3_column_int(st, 0);
	else
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the schema version of '%s' in '%s': %s",
				 module, s->db_path, sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	return rc;
}

int registry_store_schema_version(registry_store *s, const char *module, int *version,
				 owl_err *err)
{
	*version = 0;
	return schema_version(s, module, version, err);
}

static int newer_owl(registry_store *s, const char *module, int have, int nsteps, owl_err *err)
{
	return owl_err_set(err, OWL_EFAIL,
			   "database '%s' was written by a newer owl (%s schema version %d, "
			   "this owl %s knows up to %d): upgrade owl or use another --home",
			   s->db_path, module, have, OWL_VERSION, nsteps);
}

int registry_store_migrate(registry_store *s, const char *module, const char *const *steps,
			   int nsteps, owl_err *err)
{
	/* The common case, an up-to-date schema, needs no lock at all. */
	int have = 0;
	int rc = schema_version(s, module, &have, err);
	if (rc)
		return rc;
	if (have > nsteps)
		return newer_owl(s, module, have, nsteps, err);
	if (have == nsteps)
		return 0;
	if (s->read_only)
		return owl_err_set(err, OWL_EFAIL, "the data home '%s' is read-only and its database "
				   "needs the %s schema brought up to date (version %d -> %d): run "
				   "owl once with write access to it", s->home, module, have, nsteps);
	/* Several processes may reach this point on a fresh home at once: the
	 * write lock serialises them, and the version is read again under it so
	 * that each step is applied exactly once. */
	if ((rc = registry_store_begin(s, err)))
		return rc;
	if ((rc = schema_version(s, module, &have, err))) {
		registry_store_rollback(s);
		return rc;
	}
	if (have > nsteps) {
		registry_store_rollback(s);
		return newer_owl(s, module, have, nsteps, err);
	}
	for (int v = have + 1; !rc && v <= nsteps; v++) {
		rc = exec_sql_store(s, s->db, steps[v - 1], err);
		if (!rc) {
			char *sql = owl_xasprintf("INSERT INTO migrations(module, version, applied_at, "
						  "owl_version) VALUES ('%s', %d, %lld, '%s')",
						  module, v, (long long)owl_unix_time(), OWL_VERSION);
			rc = exec_sql_store(s, s->db, sql, err);
			free(sql);
		}
		if (rc)
			owl_err_wrap(err, "cannot apply %s schema step %d", module, v);
	}
	if (!rc)
		rc = registry_store_commit(s, err);
	if (rc)
		registry_store_rollback(s);
	return rc;
}

/* How many files blobs/sha256/<2 hex>/ holds (stops counting at `cap`). */
static uint64_t count_blob_files(const char *blobs_dir, uint64_t cap)
{
	uint64_t n = 0;
	DIR *top = opendir(blobs_dir);
	struct dirent *de;
	while (top && n < cap && (de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		char *sub = owl_path_join(blobs_dir, de->d_name);
		DIR *d = opendir(sub);
		struct dirent *be;
		while (d && n < cap && (be = readdir(d)))
			if (be->d_name[0] != '.')
				n++;
		if (d)
			closedir(d);
		free(sub);
	}
	if (top)
		closedir(top);
	return n;
}

/* "file:" URI of a path for sqlite3_open_v2, with the characters a URI
 * gives a meaning to escaped. */
static char *db_uri(const char *path, const char *params)
{
	owl_buf b;
	owl_buf_init(&b, 16384);
	owl_buf_printf(&b, "file:");
	for (const unsigned char *c = (const unsigned char *)path; *c; c++) {
		if (*c == '%' || *c == '?' || *c == '#' || *c <= ' ' || *c >= 0x7f)
			owl_buf_printf(&b, "%%%02X", *c);
		else
			owl_buf_printf(&b, "%c", *c);
	}
	owl_buf_printf(&b, "?%s", params);
	char *s = owl_xstrdup(b.data);
	owl_buf_release(&b);
	return s;
}

static int probe(sqlite3 *db)
{
	return sqlite3_exec(db, "SELECT COUNT(*) FROM sqlite_master", NULL, NULL, NULL);
}

/* Opens an existing owl.db without writing anything: read-only when SQLite
 * can use (or create) its WAL index beside it, else immutable, which is
 * only correct when no -wal file holds changes not yet in owl.db. */
static int open_read_only(registry_store *s, owl_err *err)
{
	if (!owl_path_exists(s->db_path))
		return owl_err_set(err, OWL_EFAIL, "the data home '%s' is read-only and holds no "
				   "database (owl.db): nothing is registered there", s->home);
	char *uri = db_uri(s->db_path, "mode=ro");
	int rc = sqlite3_open_v2(uri, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
	free(uri);
	if (rc == SQLITE_OK && probe(s->db) == SQLITE_OK)
		return 0;
	sqlite3_close_v2(s->db);
	s->db = NULL;
	char *wal = owl_xasprintf("%s-wal", s->db_path);
	struct stat sb;
	int pending = stat(wal, &sb) == 0 && sb.st_size > 0;
	free(wal);
	if (pending)
		return owl_err_set(err, OWL_EFAIL, "cannot read '%s' in the read-only data home '%s': "
				   "owl.db-wal holds changes not yet written into owl.db, which SQLite "
				   "cannot read without creating owl.db-shm; run owl once with write "
				   "access to the home", s->db_path, s->home);
	uri = db_uri(s->db_path, "immutable=1");
	rc = sqlite3_open_v2(uri, &s->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
	free(uri);
	if (rc == SQLITE_OK && (rc = probe(s->db)) == SQLITE_OK)
		return 0;
	return owl_err_set(err, OWL_EFAIL, "cannot open '%s' read-only: %s", s->db_path,
			   s->db ? sqlite3_errmsg(s->db) : "out of memory");
}

/* owl recover on an owl.db that is not a database: keep its bytes beside
 * it for a person to look at, and start a new one. */
static int move_broken_db_aside(registry_store *s, owl_err *err)
{
	char stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
	static const char *const suffix[] = {"", "-wal", "-shm"};
	for (size_t i = 0; i < 3; i++) {
		char *from = owl_xasprintf("%s%s", s->db_path, suffix[i]);
		char *to = owl_xasprintf("%s.broken-%s%s", s->db_path, stamp, suffix[i]);
		int bad = owl_path_exists(from) && rename(from, to) != 0;
		int e = errno;
		free(from);
		if (bad) {
			int rc = owl_err_set(err, OWL_EFAIL, "cannot move the unreadable database aside "
					     "to '%s': %s", to, strerror(e));
			free(to);
			return rc;
		}
		free(to);
	}
	return 0;
}

static double lock_timeout_from_env(void)
{
	const char *t = getenv("OWL_LOCK_TIMEOUT");
	char *end = NULL;
	double v = t && *t ? strtod(t, &end) : 0;
	return t && *t && end && *end == 0 && v >= 0 ? v : DEFAULT_LOCK_TIMEOUT_S;
}

int registry_store_open(const char *home, registry_store **out, owl_err *err)
{
	return registry_store_open_ex(home, NULL, out, err);
}

int registry_store_open_ex(const char *home, const registry_open_opts *o, registry_store **out,
			   owl_err *err)
{
	static const registry_open_opts defaults;
	if (!o)
		o = &defaults;
	*out = NULL;
	registry_store *s = owl_xcalloc(1, sizeof *s);
	s->home = owl_xstrdup(home);
	s->db_path = owl_path_join(home, "owl.db");
	s->blobs_dir = owl_path_join(home, "blobs/sha256");
	s->tmp_dir = owl_path_join(home, "tmp");
	s->wait_fn = o->wait_fn;
	s->wait_ctx = o->wait_ctx;
	s->lock_timeout_s = lock_timeout_from_env();
	int rc = 0;
	struct stat db_sb;
	int db_existed = stat(s->db_path, &db_sb) == 0;
	/* access() also reports a read-only mount (EROFS), even to root. */
	int writable = !owl_path_exists(home) ||
		       (access(home, W_OK) == 0 && (!db_existed || access(s->db_path, W_OK) == 0));
	if (!writable) {
		if (!o->read_only_ok) {
			rc = owl_err_set(err, OWL_EFAIL, "the data home '%s' is read-only: %s%s%s "
					 "needs write access (the read-only verbs list, show, verify, "
					 "license show and run work there)", home,
					 o->verb ? "'owl " : "this", o->verb ? o->verb : "",
					 o->verb ? "'" : "");
			goto fail;
		}
		s->read_only = 1;
		if ((rc = open_read_only(s, err)))
			goto fail;
		sqlite3_busy_handler(s->db, busy_handler, s);
		goto schema;
	}
	rc = owl_mkdir_p(home, err);
	const char *sub[] = {"blobs/sha256", "tmp", "runs", "logs"};
	for (size_t i = 0; !rc && i < sizeof sub / sizeof sub[0]; i++) {
		char *p = owl_path_join(home, sub[i]);
		rc = owl_mkdir_p(p, err);
		free(p);
	}
	if (rc)
		goto fail;
	/* A new, empty database beside existing blobs means the old one was
	 * lost or truncated: a fresh registry would call every blob garbage. */
	if ((!db_existed || db_sb.st_size == 0) && !o->recover) {
		uint64_t n = count_blob_files(s->blobs_dir, UINT64_MAX);
		if (n) {
			rc = owl_err_set(err, OWL_EFAIL, "the data home '%s' holds %llu blob%s but its "
					 "database owl.db is %s: it was lost or truncated. Nothing was "
					 "changed. Restore owl.db from a backup, or run 'owl recover' to "
					 "register the blobs again under a recovery name", home,
					 (unsigned long long)n, n == 1 ? "" : "s",
					 db_existed ? "empty (0 bytes)" : "missing");
			goto fail;
		}
	}
	for (int attempt = 0;; attempt++) {
		if (sqlite3_open_v2(s->db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
				    NULL) != SQLITE_OK) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot open database '%s': %s", s->db_path,
					 s->db ? sqlite3_errmsg(s->db) : "out of memory");
			goto fail;
		}
		sqlite3_busy_handler(s->db, busy_handler, s);
		int p = probe(s->db);
		if ((p == SQLITE_NOTADB || p == SQLITE_CORRUPT) && o->recover && attempt == 0) {
			sqlite3_close_v2(s->db);
			s->db = NULL;
			if ((rc = move_broken_db_aside(s, err)))
				goto fail;
			continue;
		}
		if (p == SQLITE_NOTADB || p == SQLITE_CORRUPT) {
			rc = owl_err_set(err, OWL_EFAIL, "'%s' is not a readable owl database (%s): "
					 "restore it from a backup, or run 'owl recover', which moves it "
					 "aside and registers the blobs again", s->db_path,
					 sqlite3_errmsg(s->db));
			goto fail;
		}
		break;
	}
	/* Switching a new database to WAL needs a lock that SQLite does not
	 * always wait for through the busy handler (a concurrent first use of
	 * the home): retry while it is busy. */
	double start = owl_now();
	for (;;) {
		rc = sqlite3_exec(s->db,
				  "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;"
				  " PRAGMA synchronous=NORMAL;"
				  "CREATE TABLE IF NOT EXISTS migrations ("
				  "  module TEXT NOT NULL, version INTEGER NOT NULL,"
				  "  applied_at INTEGER NOT NULL, owl_version TEXT NOT NULL,"
				  "  PRIMARY KEY (module, version));",
				  NULL, NULL, NULL);
		if ((rc & 0xff) != SQLITE_BUSY || owl_now() - start >= s->lock_timeout_s)
			break;
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
		nanosleep(&ts, NULL);
	}
	rc = rc == SQLITE_OK ? 0
			     : owl_err_set(err, OWL_EFAIL, "%s", sqlite3_errmsg(s->db));
	if (rc) {
		owl_err_wrap(err, "cannot open database '%s'", s->db_path);
		goto fail;
	}
schema:
	if (s->read_only)
		sqlite3_exec(s->db, "PRAGMA foreign_keys=ON", NULL, NULL, NULL);
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
	drop_after(s, 0);
	free(s->after);
	if (s->guards)
		free(s->guards->fn);
	free(s->guards);
	if (s->db)
		sqlite3_close_v2(s->db);
	free(s->home);
	free(s->db_path);
	free(s->blobs_dir);
	free(s->tmp_dir);
	free(s);
}

void registry_store_add_remove_guard(registry_store *s, registry_remove_guard_fn fn)
{
	if (!s->guards)
		s->guards = owl_xcalloc(1, sizeof *s->guards);
	for (int i = 0; i < s->guards->n; i++)
		if (s->guards->fn[i] == fn)
			return;
	s->guards->fn = owl_xrealloc(s->guards->fn, (size_t)(s->guards->n + 1) * sizeof *s->guards->fn);
	s->guards->fn[s->guards->n++] = fn;
}

int registry_store_check_remove(registry_store *s, const registry_version *v, owl_err *err)
{
	for (int i = 0; s->guards && i < s->guards->n; i++) {
		int rc = s->guards->fn[i](s, v, err);
		if (rc)
			return rc;
	}
	return 0;
}

sqlite3 *registry_store_db(registry_store *s)
{
	return s->db;
}

const char *registry_store_home(const registry_store *s)
{
	return s->home;
}

int registry_store_is_read_only(const registry_store *s)
{
	return s->read_only;
}

const char *registry_store_db_path(const registry_store *s)
{
	return s->db_path;
}

int registry_store_prepare(registry_store *s, const char *sql, sqlite3_stmt **q, owl_err *err)
{
	*q = NULL;
	if (sqlite3_prepare_v2(s->db, sql, -1, q, NULL) == SQLITE_OK)
		return 0;
	*q = NULL;
	return owl_err_set(err, OWL_EFAIL, "the database '%s' cannot be read (%s)", s->db_path,
			   sqlite3_errmsg(s->db));
}

int registry_store_stats(registry_store *s, registry_store_counts *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT (SELECT COUNT(*) FROM blobs),"
					" (SELECT COALESCE(SUM(size),0) FROM blobs),"
					" (SELECT COUNT(*) FROM models), (SELECT COUNT(*) FROM versions)",
					&q, err);
	if (rc)
		return rc;
	if (sqlite3_step(q) == SQLITE_ROW) {
		out->blobs = (uint64_t)sqlite3_column_int64(q, 0);
		out->blob_bytes = (uint64_t)sqlite3_column_int64(q, 1);
		out->models = (uint64_t)sqlite3_column_int64(q, 2);
		out->versions = (uint64_t)sqlite3_column_int64(q, 3);
	} else {
		rc = owl_err_set(err, OWL_EFAIL, "cannot count the store's rows: %s",
				 sqlite3_errmsg(s->db));
	}
	sqlite3_finalize(q);
	return rc;
}
