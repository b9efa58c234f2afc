/* Unit tests of the registry's crash-safety and reference rules: a failed
 * commit leaves no visible version, gc reclaims what it left, references
 * resolve or explain themselves, names are checked. */
#include "test.h"

#include <dirent.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "licenses/licenses.h"
#include "registry/registry.h"

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

/* A stage holding one small safetensors file and a config. */
static registry_stage *make_stage(registry_store *s, const char *dir)
{
	char *st_path = owl_path_join(dir, "model.safetensors");
	const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
	FILE *f = fopen(st_path, "wb");
	uint64_t n = strlen(hdr);
	fwrite(&n, 8, 1, f);
	fputs(hdr, f);
	float d[2] = {1, 2};
	fwrite(d, sizeof d, 1, f);
	fclose(f);
	char *cfg = owl_path_join(dir, "config.json");
	write_text(cfg, "{\"architectures\":[\"LlamaForCausalLM\"],\"max_position_embeddings\":64}");
	registry_stage *st = NULL;
	owl_err err = {0};
	CHECK_INT(registry_stage_new(s, dir, &st, &err), 0);
	CHECK_INT(registry_stage_copy(st, st_path, "model.safetensors", NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_copy(st, cfg, "config.json", NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_validate(st, &err), 0);
	free(st_path);
	free(cfg);
	return st;
}

static int failing_hook(void *ctx, registry_store *s, int64_t version_id, owl_err *err)
{
	*(int64_t *)ctx = version_id;
	return owl_err_set(err, OWL_EDENIED, "hook refused");
}

static long long count(registry_store *s, const char *sql)
{
	sqlite3_stmt *q = NULL;
	long long n = -1;
	if (sqlite3_prepare_v2(registry_store_db(s), sql, -1, &q, NULL) == SQLITE_OK &&
	    sqlite3_step(q) == SQLITE_ROW)
		n = sqlite3_column_int64(q, 0);
	sqlite3_finalize(q);
	return n;
}

static void failed_commit_leaves_nothing_visible_and_gc_reclaims(void)
{
	char *dir = test_tmpdir("reg");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	registry_stage *st = make_stage(s, dir);
	registry_commit_result res;
	int64_t seen = 0;
	int rc = registry_stage_commit(s, st, "m", 0, NULL, failing_hook, &seen, &res, &err);
	CHECK_INT(rc, OWL_EDENIED);
	CHECK(seen > 0, "the hook ran inside the transaction with a version id");
	CHECK_INT(count(s, "SELECT COUNT(*) FROM versions"), 0);
	CHECK_INT(count(s, "SELECT COUNT(*) FROM models"), 0);
	CHECK_INT(count(s, "SELECT COUNT(*) FROM blobs"), 0);
	registry_stage_free(st);
	/* The blobs were moved before the rollback: gc finds and removes them. */
	registry_gc_result g;
	CHECK_INT(registry_gc(s, 0, &g, &err), 0);
	CHECK_INT((long long)g.blobs_removed, 2);
	CHECK(g.bytes_freed > 0, "bytes freed reported");
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

static void resolve_explains_missing_versions_and_tags(void)
{
	char *dir = test_tmpdir("reg");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	for (int i = 0; i < 2; i++) {
		registry_stage *st = make_stage(s, dir);
		registry_commit_result res;
		CHECK_INT(registry_stage_commit(s, st, "acme/bot", 0, i ? "prod" : NULL, NULL, NULL,
						&res, &err), 0);
		CHECK_INT(res.number, i + 1);
		registry_stage_free(st);
	}
	registry_version v;
	CHECK_INT(registry_resolve(s, "acme/bot", &v, &err), 0);
	CHECK_INT(v.number, 2);
	CHECK_INT((long long)v.nfiles, 2);
	CHECK(registry_version_file(&v, "config.json") != NULL, "file lookup");
	char *snap = NULL;
	CHECK_INT(registry_version_materialize(s, &v, &snap, &err), 0);
	if (snap) {
		char *cfg = owl_path_join(snap, "config.json");
		char *text = NULL;
		CHECK_INT(owl_read_file(cfg, 4096, &text, NULL, &err), 0);
		CHECK(text && strstr(text, "LlamaForCausalLM"), "snapshot reads through to the blob");
		free(text);
		free(cfg);
		/* Idempotent. */
		char *again = NULL;
		CHECK_INT(registry_version_materialize(s, &v, &again, &err), 0);
		free(again);
		free(snap);
	}
	registry_version_release(&v);
	CHECK_INT(registry_resolve(s, "acme/bot:prod", &v, &err), 0);
	CHECK_INT(v.number, 2);
	registry_version_release(&v);
	CHECK_INT(registry_resolve(s, "acme/bot@7", &v, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "versions: 1, 2") != NULL, "lists versions: %s", err.msg);
	CHECK_INT(registry_resolve(s, "acme/bot:nope", &v, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "tags: prod") != NULL, "lists tags: %s", err.msg);
	CHECK_INT(registry_resolve(s, "acme/bot@x", &v, &err), OWL_EUSAGE);
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

static void names_are_checked(void)
{
	CHECK(registry_valid_name("smollm2-135m"), "plain");
	CHECK(registry_valid_name("acme/support-bot_v1.2"), "org/name");
	CHECK(!registry_valid_name(""), "empty");
	CHECK(!registry_valid_name("../etc"), "dot-dot");
	CHECK(!registry_valid_name("a//b"), "double slash");
	CHECK(!registry_valid_name("a/"), "trailing slash");
	CHECK(!registry_valid_name("-x"), "leading dash");
	CHECK(!registry_valid_name("a b"), "space");
	CHECK(!registry_valid_name("a@1"), "at sign");
}

/* Found by fuzz_hub_listing: the error message used a string the JSON
 * document had already freed. */
static void hub_listing_errors_name_the_file(void)
{
	const char *bad = "[{\"type\":\"file\",\"path\":\"w.safetensors\",\"size\":1,"
			  "\"lfs\":{\"oid\":\"zz\",\"size\":1}}]";
	registry_hub_listing l = {0};
	owl_err err = {0};
	CHECK_INT(registry_hub_parse_listing(bad, strlen(bad), &l, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "'w.safetensors'") != NULL, "names the file: %s", err.msg);
	const char *good = "[{\"type\":\"directory\",\"path\":\"d\",\"size\":0},"
			   "{\"type\":\"file\",\"path\":\"d/a.json\",\"size\":3,\"oid\":\"ab\"}]";
	CHECK_INT(registry_hub_parse_listing(good, strlen(good), &l, &err), 0);
	CHECK_INT((long long)l.n, 1);
	if (l.n)
		CHECK_STR(l.entries[0].path, "d/a.json");
	registry_hub_listing_release(&l);
}

/* A revision is one path segment on the hub (refs/pr/1 -> refs%2Fpr%2F1);
 * a file path keeps its '/' and escapes the rest. */
static void hub_urls_escape_revisions_whole_and_paths_by_segment(void)
{
	char *u = registry_hub_file_url("https://hub.example", "org/repo", "refs/pr/1",
					"sub dir/a b#1.json");
	CHECK_STR(u, "https://hub.example/org/repo/resolve/refs%2Fpr%2F1/sub%20dir/a%20b%231.json");
	free(u);
	u = registry_hub_file_url("https://hub.example", "org/repo", "main", "model.safetensors");
	CHECK_STR(u, "https://hub.example/org/repo/resolve/main/model.safetensors");
	free(u);
}

/* Files under blobs/sha256/<2 hex>/. */
static long count_blobs(const char *home)
{
	char *top = owl_path_join(home, "blobs/sha256");
	long n = 0;
	DIR *d = opendir(top);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *sub = owl_path_join(top, de->d_name);
		DIR *e = opendir(sub);
		struct dirent *be;
		while (e && (be = readdir(e)))
			if (be->d_name[0] != '.')
				n++;
		if (e)
			closedir(e);
		free(sub);
	}
	if (d)
		closedir(d);
	free(top);
	return n;
}

typedef struct commit_job {
	registry_store *s;
	registry_stage *st;
	int rc;
	owl_err err;
} commit_job;

static void *commit_thread(void *p)
{
	commit_job *j = p;
	registry_commit_result res;
	j->rc = registry_stage_commit(j->s, j->st, "many", 0, NULL, NULL, NULL, &res, &j->err);
	return NULL;
}

/* The file work of a commit (sync, rename into blobs/) happens before its
 * transaction: while another connection holds the write lock, every blob of
 * a many-file stage still arrives in blobs/, and the commit then waits for
 * the lock (rather than failing) and registers the version. */
static void commit_moves_blobs_before_taking_the_write_lock(void)
{
	char *dir = test_tmpdir("reg");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	registry_stage *st = make_stage(s, dir);
	enum { NEXTRA = 300 };
	for (int i = 0; i < NEXTRA; i++) {
		char src[64], rel[64];
		snprintf(src, sizeof src, "%s/x.txt", dir);
		snprintf(rel, sizeof rel, "extra/f%04d.txt", i);
		char text[32];
		snprintf(text, sizeof text, "file %d\n", i);
		write_text(src, text);
		CHECK_INT(registry_stage_copy(st, src, rel, NULL, NULL, &err), 0);
	}
	long want = (long)st->nfiles;
	sqlite3 *holder = NULL;
	sqlite3_open(registry_store_db_path(s), &holder);
	CHECK_INT(sqlite3_exec(holder, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	commit_job job = {.s = s, .st = st};
	pthread_t t;
	pthread_create(&t, NULL, commit_thread, &job);
	double start = owl_now();
	long n = 0;
	while ((n = count_blobs(home)) < want && owl_now() - start < 15)
		usleep(20000);
	CHECK(n == want, "all %ld blobs moved in while another connection held the write lock "
	      "(got %ld after %.1f s)", want, n, owl_now() - start);
	sleep(1); /* the commit now waits on the lock; it must not give up */
	sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(holder);
	pthread_join(t, NULL);
	CHECK(job.rc == 0, "the commit waited for the lock and succeeded: %s", job.err.msg);
	CHECK_INT(count(s, "SELECT COUNT(*) FROM version_files"), want);
	registry_stage_free(st);
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

/* Several processes opening a fresh home at once: every schema step and the
 * default policy are applied once, and no process fails. */
static void concurrent_first_use_of_a_home_never_fails(void)
{
	char *dir = test_tmpdir("reg");
	enum { ROUNDS = 30, PROCS = 6 };
	int failures = 0;
	char first_error[512] = "";
	for (int r = 0; r < ROUNDS; r++) {
		char *home = owl_xasprintf("%s/home%d", dir, r);
		int fds[PROCS][2];
		pid_t pids[PROCS];
		for (int p = 0; p < PROCS; p++) {
			if (pipe(fds[p]) != 0)
				return;
			pids[p] = fork();
			if (pids[p] == 0) {
				close(fds[p][0]);
				registry_store *s = NULL;
				owl_err err = {0};
				int rc = registry_store_open(home, &s, &err);
				if (!rc)
					rc = licenses_migrate(s, &err);
				registry_store_close(s);
				if (rc && write(fds[p][1], err.msg, strlen(err.msg)) < 0)
					_exit(3);
				_exit(rc ? 1 : 0);
			}
			close(fds[p][1]);
		}
		for (int p = 0; p < PROCS; p++) {
			int status = 0;
			char msg[512] = "";
			ssize_t k = read(fds[p][0], msg, sizeof msg - 1);
			msg[k > 0 ? k : 0] = 0;
			close(fds[p][0]);
			waitpid(pids[p], &status, 0);
			if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
				failures++;
				if (!first_error[0])
					snprintf(first_error, sizeof first_error, "%s", msg);
			}
		}
		/* Each default rule exists once, each schema step is recorded once. */
		registry_store *s = NULL;
		owl_err err = {0};
		if (registry_store_open(home, &s, &err) == 0) {
			CHECK_INT(count(s, "SELECT COUNT(*) FROM policy_rules WHERE name='deny-pickle'"), 1);
			CHECK_INT(count(s, "SELECT COUNT(*) FROM migrations WHERE module='registry'"), 1);
			registry_store_close(s);
		}
		free(home);
	}
	CHECK(failures == 0, "%d of %d processes failed; first: %s", failures, ROUNDS * PROCS,
	      first_error);
	owl_remove_tree(dir, NULL);
	free(dir);
}

/* A lost owl.db: the home is refused, gc on a recovery-opened store keeps
 * the blobs the new database never recorded, and recover registers them. */
static void lost_database_is_refused_and_recovered(void)
{
	char *dir = test_tmpdir("reg");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	registry_stage *st = make_stage(s, dir);
	registry_commit_result res;
	CHECK_INT(registry_stage_commit(s, st, "m", 0, NULL, NULL, NULL, &res, &err), 0);
	registry_stage_free(st);
	char *db = owl_xstrdup(registry_store_db_path(s));
	registry_store_close(s);
	sleep(1); /* the new database must be younger than the blobs */
	char *wal = owl_xasprintf("%s-wal", db), *shm = owl_xasprintf("%s-shm", db);
	unlink(db);
	unlink(wal);
	unlink(shm);
	CHECK_INT(registry_store_open(home, &s, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "2 blobs") && strstr(err.msg, "missing") &&
	      strstr(err.msg, "owl recover"), "says what happened and what to do: %s", err.msg);
	CHECK(!owl_path_exists(db), "refusing creates no database");
	CHECK_INT(count_blobs(home), 2);

	registry_open_opts o = {.recover = 1};
	CHECK_INT(registry_store_open_ex(home, &o, &s, &err), 0);
	registry_gc_result g;
	CHECK_INT(registry_gc(s, 0, &g, &err), 0);
	CHECK_INT((long long)g.blobs_removed, 0);
	CHECK_INT((long long)g.blobs_kept_unknown, 2);
	CHECK_INT(count_blobs(home), 2);
	registry_recover_result r;
	CHECK_INT(registry_recover(s, &r, &err), 0);
	CHECK_INT(r.versions, 1);
	CHECK_INT((long long)r.blobs, 2);
	CHECK_INT((long long)r.corrupt, 0);
	registry_version v;
	CHECK_INT(registry_resolve(s, r.model, &v, &err), 0);
	CHECK_INT((long long)v.nfiles, 2);
	int have_st = 0;
	for (size_t i = 0; i < v.nfiles; i++)
		have_st |= strstr(v.files[i].path, ".safetensors") != NULL;
	CHECK(have_st, "the safetensors blob is named by its content");
	registry_version_release(&v);
	CHECK_INT(registry_gc(s, 0, &g, &err), 0);
	CHECK_INT(count_blobs(home), 2);
	registry_store_close(s);
	free(db);
	free(wal);
	free(shm);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

/* Names are checked, and duplicates refused on purpose, before a byte is
 * written. */
static void stage_refuses_bad_and_duplicate_paths_before_writing(void)
{
	char *dir = test_tmpdir("reg");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	registry_stage *st = NULL;
	CHECK_INT(registry_stage_new(s, "test", &st, &err), 0);
	int fd = -1;
	CHECK_INT(registry_stage_create_file(st, "a/config.json", &fd, &err), 0);
	if (fd >= 0)
		close(fd);
	CHECK_INT(registry_stage_add(st, "a/config.json", "00", 0, NULL, &err), 0);
	CHECK_INT(registry_stage_create_file(st, "a/config.json", &fd, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "'a/config.json' appears twice"), "names the duplicate: %s", err.msg);
	static const char *const bad[] = {"/etc/x", "../x", "a/../../x", "a//b", "./a", "a/./b",
					  "", "a\nb", "a\x01b"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK_INT(registry_stage_create_file(st, bad[i], &fd, &err), OWL_EINTEGRITY);
		CHECK(fd < 0, "no file for '%s'", bad[i]);
	}
	char longp[1100];
	memset(longp, 'a', sizeof longp - 1);
	longp[sizeof longp - 1] = 0;
	CHECK_INT(registry_stage_create_file(st, longp, &fd, &err), OWL_EINTEGRITY);
	char **names = NULL;
	size_t n = 0;
	CHECK_INT(owl_list_dir(st->files_dir, &names, &n, &err), 0);
	CHECK_INT((long long)n, 1); /* only a/ */
	owl_free_names(names, n);
	/* A file where a folder is needed, or the other way round. */
	CHECK_INT(registry_stage_create_file(st, "a/config.json/x", &fd, &err), OWL_EINTEGRITY);
	registry_stage_free(st);
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

/* The listings cmd/ and a server read: versions with their tags, a model's
 * tag history, a reference checked out as a folder. */
static void listings_and_checkout(void)
{
	char *dir = test_tmpdir("reglist");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	const char *names[] = {"zed", "acme/bot", "acme/bot"};
	const char *tags[] = {NULL, "stable", "canary"};
	for (int i = 0; i < 3; i++) {
		registry_stage *st = make_stage(s, dir);
		registry_commit_result res;
		CHECK_INT(registry_stage_commit(s, st, names[i], 0, tags[i], NULL, NULL, &res, &err), 0);
		registry_stage_free(st);
	}
	registry_version v;
	CHECK_INT(registry_resolve(s, "acme/bot@2", &v, &err), 0);
	CHECK_INT(registry_tag_set(s, &v, "stable", &err), 0);
	CHECK_INT(registry_tag_delete(s, "acme/bot", "canary", &err), 0);
	registry_version_release(&v);

	registry_version_info *vs = NULL;
	size_t n = 0;
	CHECK_INT(registry_list_versions(s, NULL, &vs, &n, &err), 0);
	CHECK_INT((long long)n, 3);
	if (n == 3) {
		CHECK_STR(vs[0].model, "acme/bot");
		CHECK_INT(vs[0].number, 1);
		CHECK_INT((long long)vs[0].ntags, 0);
		CHECK_INT(vs[1].number, 2);
		CHECK_INT((long long)vs[1].ntags, 1);
		if (vs[1].ntags == 1)
			CHECK_STR(vs[1].tags[0], "stable");
		CHECK_STR(vs[2].model, "zed");
		CHECK_STR(vs[2].format, "hf");
		CHECK(vs[2].config_json && strstr(vs[2].config_json, "LlamaForCausalLM"),
		      "config summary listed");
	}
	registry_version_infos_free(vs, n);
	CHECK_INT(registry_list_versions(s, "zed", &vs, &n, &err), 0);
	CHECK_INT((long long)n, 1);
	registry_version_infos_free(vs, n);
	CHECK_INT(registry_list_versions(s, "nobody", &vs, &n, &err), 0);
	CHECK_INT((long long)n, 0);
	registry_version_infos_free(vs, n);

	registry_tag_move *moves = NULL;
	CHECK_INT(registry_tag_history(s, "acme/bot", &moves, &n, &err), 0);
	/* stable -> @1, canary -> @2, stable @1 -> @2, canary @2 -> deleted */
	CHECK_INT((long long)n, 4);
	if (n == 4) {
		CHECK_STR(moves[0].tag, "stable");
		CHECK_INT(moves[0].from, 0);
		CHECK_INT(moves[0].to, 1);
		CHECK_INT(moves[2].from, 1);
		CHECK_INT(moves[2].to, 2);
		CHECK_STR(moves[3].tag, "canary");
		CHECK_INT(moves[3].to, 0);
	}
	registry_tag_moves_free(moves, n);

	char *folder = NULL;
	CHECK_INT(registry_checkout(s, "acme/bot:stable", &v, &folder, &err), 0);
	CHECK_INT(v.number, 2);
	if (folder) {
		char *cfg = owl_path_join(folder, "config.json");
		CHECK(owl_path_exists(cfg), "the checkout holds the version's files: %s", cfg);
		free(cfg);
	}
	free(folder);
	int64_t bot2 = v.id;
	registry_version_release(&v);
	CHECK_INT(registry_checkout(s, "acme/bot@9", NULL, &folder, &err), OWL_EFAIL);
	CHECK(folder == NULL, "no folder for an unknown version");
	CHECK_INT(registry_checkout_adapter(s, "zed", bot2, "acme/bot@2", NULL, &folder, &err),
		  OWL_EUSAGE);
	CHECK(strstr(err.msg, "not an adapter") != NULL, "a model is no adapter: %s", err.msg);
	free(folder);
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

/* A table that cannot be read is an error, never an empty answer; gc, which
 * deletes what it finds unreferenced, keeps what it cannot judge. */
static void unreadable_tables_fail_safe(void)
{
	char *dir = test_tmpdir("regbroken");
	char *home = owl_path_join(dir, "home");
	registry_store *s = NULL;
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &s, &err), 0);
	registry_stage *st = make_stage(s, dir);
	registry_commit_result res;
	CHECK_INT(registry_stage_commit(s, st, "m", 0, "t", NULL, NULL, &res, &err), 0);
	registry_stage_free(st);
	registry_version v;
	CHECK_INT(registry_resolve(s, "m@1", &v, &err), 0);
	char *blob = v.nfiles ? owl_xstrdup(v.files[0].blob_path) : NULL;

	CHECK_INT(registry_store_exec(s, "PRAGMA foreign_keys=OFF;"
				      " ALTER TABLE tag_history RENAME TO th_gone", &err), 0);
	registry_tag_move *moves = NULL;
	size_t n = 9;
	owl_err e1 = {0};
	CHECK_INT(registry_tag_history(s, "m", &moves, &n, &e1), OWL_EFAIL);
	CHECK(moves == NULL && n == 0, "nothing listed");
	CHECK(strstr(e1.msg, "cannot be read") != NULL, "names the database: %s", e1.msg);

	CHECK_INT(registry_store_exec(s, "ALTER TABLE tags RENAME TO tags_gone", &err), 0);
	registry_version_info *vs = NULL;
	owl_err e2 = {0};
	CHECK_INT(registry_list_versions(s, NULL, &vs, &n, &e2), OWL_EFAIL);
	CHECK(vs == NULL && n == 0, "nothing listed");

	CHECK_INT(registry_store_exec(s, "ALTER TABLE version_files RENAME TO vf_gone", &err), 0);
	registry_gc_result gc;
	owl_err e4 = {0};
	CHECK(registry_gc(s, 0, &gc, &e4) != 0, "gc fails");
	CHECK_INT((long long)gc.blobs_removed, 0);
	CHECK(blob && owl_path_exists(blob), "the blob is kept: %s", blob ? blob : "(none)");
	free(blob);
	registry_version_release(&v);
	registry_store_close(s);
	owl_remove_tree(dir, NULL);
	free(home);
	free(dir);
}

int main(void)
{
	RUN_TEST(hub_listing_errors_name_the_file);
	RUN_TEST(hub_urls_escape_revisions_whole_and_paths_by_segment);
	RUN_TEST(failed_commit_leaves_nothing_visible_and_gc_reclaims);
	RUN_TEST(resolve_explains_missing_versions_and_tags);
	RUN_TEST(names_are_checked);
	RUN_TEST(commit_moves_blobs_before_taking_the_write_lock);
	RUN_TEST(concurrent_first_use_of_a_home_never_fails);
	RUN_TEST(lost_database_is_refused_and_recovered);
	RUN_TEST(stage_refuses_bad_and_duplicate_paths_before_writing);
	RUN_TEST(listings_and_checkout);
	RUN_TEST(unreadable_tables_fail_safe);
	TEST_MAIN_END();
}
