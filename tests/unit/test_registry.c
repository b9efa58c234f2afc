/* Unit tests of the registry's crash-safety and reference rules: a failed
 * commit leaves no visible version, gc reclaims what it left, references
 * resolve or explain themselves, names are checked. */
#include "test.h"

#include <sys/stat.h>
#include <unistd.h>

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
	sqlite3_prepare_v2(s->db, sql, -1, &q, NULL);
	if (sqlite3_step(q) == SQLITE_ROW)
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

int main(void)
{
	RUN_TEST(hub_listing_errors_name_the_file);
	RUN_TEST(hub_urls_escape_revisions_whole_and_paths_by_segment);
	RUN_TEST(failed_commit_leaves_nothing_visible_and_gc_reclaims);
	RUN_TEST(resolve_explains_missing_versions_and_tags);
	RUN_TEST(names_are_checked);
	TEST_MAIN_END();
}
