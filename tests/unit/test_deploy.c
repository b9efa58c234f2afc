/* Unit tests of deployments over real SQLite files: revisions, pinning,
 * rollback and history; the license gate inside each change (a denial makes
 * nothing); adapters that must derive from the model; tag following; the
 * server's source and authoriser, including concurrent authorise() calls;
 * the guard that keeps versions a deployment uses. */
#include "test.h"

#include <pthread.h>
#include <unistd.h>

#include "deploy/deploy.h"
#include "licenses/licenses.h"
#include "registry/registry.h"

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

/* A version of `name` whose weights depend on seed; an adapter (with
 * adapter_config.json) when parent is non-zero. Returns its id. */
static int64_t make_version(registry_store *s, const char *dir, const char *name, int seed,
			    int64_t parent)
{
	char *st_path = owl_path_join(dir, parent ? "adapter_model.safetensors" : "model.safetensors");
	const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
	FILE *f = fopen(st_path, "wb");
	uint64_t n = strlen(hdr);
	fwrite(&n, 8, 1, f);
	fputs(hdr, f);
	float d[2] = {(float)seed, 2};
	fwrite(d, sizeof d, 1, f);
	fclose(f);
	const char *cfg_name = parent ? "adapter_config.json" : "config.json";
	char *cfg = owl_path_join(dir, cfg_name);
	write_text(cfg, parent ? "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8}"
			       : "{\"architectures\":[\"LlamaForCausalLM\"],\"max_position_embeddings\":64}");
	registry_stage *st = NULL;
	owl_err err = {0};
	registry_commit_result res = {0};
	CHECK_INT(registry_stage_new(s, dir, &st, &err), 0);
	CHECK_INT(registry_stage_copy(st, st_path, parent ? "adapter_model.safetensors"
							  : "model.safetensors", NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_copy(st, cfg, cfg_name, NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_validate(st, &err), 0);
	CHECK_INT(registry_stage_commit(s, st, name, parent, NULL, NULL, NULL, &res, &err), 0);
	registry_stage_free(st);
	free(st_path);
	free(cfg);
	return res.version_id;
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

typedef struct fixture {
	char *dir, *home;
	registry_store *s;
} fixture;

static void fixture_open(fixture *fx)
{
	fx->dir = test_tmpdir("deploy");
	fx->home = owl_path_join(fx->dir, "home");
	owl_err err = {0};
	CHECK_INT(registry_store_open(fx->home, &fx->s, &err), 0);
	CHECK_INT(licenses_migrate(fx->s, &err), 0);
	CHECK_INT(deploy_migrate(fx->s, &err), 0);
}

static void fixture_close(fixture *fx)
{
	registry_store_close(fx->s);
	owl_remove_tree(fx->dir, NULL);
	free(fx->home);
	free(fx->dir);
}

static void tag(registry_store *s, int64_t vid, const char *t)
{
	registry_version v;
	owl_err err = {0};
	CHECK_INT(registry_version_by_id(s, vid, &v, &err), 0);
	CHECK_INT(registry_tag_set(s, &v, t, &err), 0);
	registry_version_release(&v);
}

static void create_set_pin_rollback_history(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	make_version(fx.s, fx.dir, "tiny", 1, 0);
	make_version(fx.s, fx.dir, "tiny", 2, 0);
	deploy_change c;
	deploy_change_init(&c);
	c.model = "tiny@1";
	c.reason = "first";
	c.actor = "alice";
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "web", &c, &rev, &err), 0);
	CHECK_INT(rev, 1);
	CHECK_INT(deploy_create(fx.s, "web", &c, &rev, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "exists already"), "second create refused: %s", err.msg);
	CHECK_INT(deploy_create(fx.s, "bad/name", &c, &rev, &err), OWL_EUSAGE);

	deploy_change_init(&c);
	c.model = "tiny@2";
	c.ctx = 32;
	c.reason = "new weights";
	c.actor = "bob";
	CHECK_INT(deploy_set(fx.s, "web", &c, &rev, &err), 0);
	CHECK_INT(rev, 2);
	deploy_change_init(&c);
	c.use = "research";
	CHECK_INT(deploy_set(fx.s, "web", &c, &rev, &err), 0);
	CHECK_INT(rev, 3);

	deploy_info d;
	CHECK_INT(deploy_get(fx.s, "web", &d, &err), 0);
	CHECK_INT(d.current, 3);
	CHECK_INT(d.nrevisions, 3);
	CHECK_STR(d.cur.model_ref, "tiny@2");
	CHECK_INT(d.cur.ctx, 32);               /* kept from revision 2 */
	CHECK_STR(d.cur.use, "research");
	CHECK(d.cur.model_digest && strlen(d.cur.model_digest) == 64, "a version digest");
	CHECK(strstr(d.cur.license, "tiny@2: allow"), "license recorded: %s", d.cur.license);
	deploy_info_release(&d);

	/* Rollback without --to: the revision current before; again: back. */
	CHECK_INT(deploy_rollback(fx.s, "web", 0, "oops", "carol", &rev, &err), 0);
	CHECK_INT(rev, 2);
	CHECK_INT(deploy_rollback(fx.s, "web", 1, NULL, NULL, &rev, &err), 0);
	CHECK_INT(rev, 1);
	CHECK_INT(deploy_rollback(fx.s, "web", 1, NULL, NULL, &rev, &err), OWL_EUSAGE);
	CHECK_INT(deploy_rollback(fx.s, "web", 9, NULL, NULL, &rev, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "revisions: 1, 2, 3"), "missing revision named: %s", err.msg);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 3); /* rollback makes none */

	/* Pinned: set and rollback refused, nothing written. */
	CHECK_INT(deploy_pin(fx.s, "web", "freeze", "dave", &err), 0);
	deploy_change_init(&c);
	c.tp = 2;
	CHECK_INT(deploy_set(fx.s, "web", &c, &rev, &err), OWL_EFAIL);
	CHECK(strstr(err.msg, "pinned (by dave") && strstr(err.msg, "freeze"), "pin named: %s",
	      err.msg);
	CHECK_INT(deploy_rollback(fx.s, "web", 3, NULL, NULL, &rev, &err), OWL_EFAIL);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 3);
	CHECK_INT(deploy_unpin(fx.s, "web", NULL, "dave", &err), 0);
	CHECK_INT(deploy_set(fx.s, "web", &c, &rev, &err), 0);
	CHECK_INT(rev, 4);

	deploy_event *ev = NULL;
	size_t n = 0;
	CHECK_INT(deploy_history(fx.s, "web", &ev, &n, &err), 0);
	const char *want[] = {"create", "set", "set", "rollback", "rollback", "pin", "unpin", "set"};
	const int64_t revs[] = {1, 2, 3, 2, 1, 1, 1, 4};
	CHECK_INT(n, 8);
	for (size_t i = 0; i < n && i < 8; i++) {
		CHECK_STR(ev[i].action, want[i]);
		CHECK_INT(ev[i].revision, revs[i]);
	}
	if (n == 8) {
		CHECK_STR(ev[0].who, "alice");
		CHECK_STR(ev[0].why, "first");
		CHECK_STR(ev[3].who, "carol");
		CHECK_INT(ev[3].from, 3);
		CHECK(strstr(ev[3].license, "allow"), "a rollback is gated: %s", ev[3].license);
	}
	deploy_history_free(ev, n);
	/* Revision 4 is revision 1's settings (the current one then) plus tp 2. */
	deploy_revision r;
	CHECK_INT(deploy_revision_get(fx.s, "web", 4, &r, &err), 0);
	CHECK_STR(r.model_ref, "tiny@1");
	CHECK_INT(r.tp, 2);
	CHECK_STR(r.use, "internal");
	deploy_revision_release(&r);

	/* Every change was gated and audited; the chain holds. */
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM audit_log WHERE action='deploy'"), 6);
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(fx.s, &rows, &err), 0);

	CHECK_INT(deploy_remove(fx.s, "web", &err), 0);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 0);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_events"), 0);
	fixture_close(&fx);
}

static void gate_denial_leaves_no_revision(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	make_version(fx.s, fx.dir, "tiny", 1, 0);
	license_rule rule = {.name = "no-research", .effect = LICENSE_DENY, .priority = 2000,
			     .action = "deploy", .use = "research", .message = "not for research"};
	CHECK_INT(license_rule_add(fx.s, &rule, &err), 0);
	deploy_change c;
	deploy_change_init(&c);
	c.model = "tiny@1";
	c.use = "research";
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "lab", &c, &rev, &err), OWL_EDENIED);
	CHECK(strstr(err.msg, "no-research") && strstr(err.msg, "No deployment was created"),
	      "denial explained: %s", err.msg);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deployments"), 0);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 0);
	/* The denial is in the audit log, once. */
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM audit_log WHERE action='deploy' AND"
			      " effect='deny' AND rule='no-research'"), 1);

	c.use = "internal";
	CHECK_INT(deploy_create(fx.s, "lab", &c, &rev, &err), 0);
	deploy_change_init(&c);
	c.use = "research";
	CHECK_INT(deploy_set(fx.s, "lab", &c, &rev, &err), OWL_EDENIED);
	CHECK(strstr(err.msg, "No revision was created"), "set denial: %s", err.msg);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 1);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_events"), 1);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM audit_log WHERE effect='deny'"), 2);
	deploy_info d;
	CHECK_INT(deploy_get(fx.s, "lab", &d, &err), 0);
	CHECK_INT(d.current, 1);
	CHECK_STR(d.cur.use, "internal");
	deploy_info_release(&d);
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(fx.s, &rows, &err), 0);
	fixture_close(&fx);
}

static void adapters_must_derive_from_the_model(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	int64_t base = make_version(fx.s, fx.dir, "tiny", 1, 0);
	make_version(fx.s, fx.dir, "other", 7, 0);
	make_version(fx.s, fx.dir, "tiny-lora", 3, base);
	deploy_change c;
	deploy_change_init(&c);
	const char *ad[] = {"tiny-lora@1"};
	c.model = "other@1";
	c.adapters = ad;
	c.nadapters = 1;
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "x", &c, &rev, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "tiny-lora@1 derives from tiny@1") && strstr(err.msg, "other@1"),
	      "both named: %s", err.msg);
	c.model = "tiny-lora@1";
	c.nadapters = 0;
	CHECK_INT(deploy_create(fx.s, "x", &c, &rev, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "is an adapter, not a model"), "adapter as model: %s", err.msg);
	c.model = "tiny@1";
	c.nadapters = 1;
	CHECK_INT(deploy_create(fx.s, "x", &c, &rev, &err), 0);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revision_adapters"), 1);
	/* The model changes, the adapters are kept: they no longer fit. */
	deploy_change_init(&c);
	c.model = "other@1";
	CHECK_INT(deploy_set(fx.s, "x", &c, &rev, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "--no-adapters"), "hint given: %s", err.msg);
	c.set_adapters = 1;
	CHECK_INT(deploy_set(fx.s, "x", &c, &rev, &err), 0);
	deploy_info d;
	CHECK_INT(deploy_get(fx.s, "x", &d, &err), 0);
	CHECK_INT(d.cur.nadapters, 0);
	deploy_info_release(&d);
	fixture_close(&fx);
}

static void removal_is_refused_while_a_revision_uses_the_version(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	int64_t v1 = make_version(fx.s, fx.dir, "tiny", 1, 0);
	make_version(fx.s, fx.dir, "tiny", 2, 0);
	int64_t lora = make_version(fx.s, fx.dir, "tiny-lora", 3, v1);
	deploy_change c;
	deploy_change_init(&c);
	const char *ad[] = {"tiny-lora@1"};
	c.model = "tiny@1";
	c.adapters = ad;
	c.nadapters = 1;
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "a", &c, &rev, &err), 0);
	c.nadapters = 0;
	CHECK_INT(deploy_create(fx.s, "b", &c, &rev, &err), 0);
	/* b moves on; its revision 1 is kept for a rollback and still counts. */
	deploy_change_init(&c);
	c.model = "tiny@2";
	CHECK_INT(deploy_set(fx.s, "b", &c, &rev, &err), 0);
	registry_version v;
	CHECK_INT(registry_version_by_id(fx.s, lora, &v, &err), 0);
	CHECK_INT(registry_version_remove(fx.s, &v, &err), OWL_EDENIED);
	CHECK(strstr(err.msg, "deployment a uses"), "adapter's user named: %s", err.msg);
	registry_version_release(&v);
	CHECK_INT(deploy_remove(fx.s, "a", &err), 0);
	CHECK_INT(registry_version_by_id(fx.s, lora, &v, &err), 0);
	CHECK_INT(registry_version_remove(fx.s, &v, &err), 0);
	registry_version_release(&v);
	CHECK_INT(registry_version_by_id(fx.s, v1, &v, &err), 0);
	CHECK_INT(registry_version_remove(fx.s, &v, &err), OWL_EDENIED);
	CHECK(strstr(err.msg, "deployment b uses"), "retained revision counts: %s", err.msg);
	registry_version_release(&v);
	/* A store that never registered the guard still cannot remove it: the
	 * foreign key refuses. */
	registry_store *raw = NULL;
	CHECK_INT(registry_store_open(fx.home, &raw, &err), 0);
	CHECK_INT(registry_version_by_id(raw, v1, &v, &err), 0);
	CHECK(registry_version_remove(raw, &v, &err) != 0, "the foreign key keeps the version");
	registry_version_release(&v);
	registry_store_close(raw);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM versions WHERE model_id="
			      "(SELECT id FROM models WHERE name='tiny')"), 2);
	fixture_close(&fx);
}

static void source_follows_the_tag_unless_pinned(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	int64_t v1 = make_version(fx.s, fx.dir, "tiny", 1, 0);
	int64_t v2 = make_version(fx.s, fx.dir, "tiny", 2, 0);
	int64_t v3 = make_version(fx.s, fx.dir, "tiny", 3, 0);
	make_version(fx.s, fx.dir, "tiny-lora", 4, v1);
	tag(fx.s, v1, "stable");
	deploy_change c;
	deploy_change_init(&c);
	const char *ad[] = {"tiny-lora@1"};
	c.model = "tiny:stable";
	c.adapters = ad;
	c.nadapters = 1;
	c.ctx = 48;
	c.tp = 2;
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "svc", &c, &rev, &err), 0);

	deploy_source src;
	CHECK_INT(deploy_source_new(fx.home, "svc", &src, &err), 0);
	int64_t cur = 0;
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 1);
	deploy_spec *sp = NULL;
	CHECK_INT(src.load(src.ctx, 1, &sp, &err), 0);
	if (sp) {
		CHECK_STR(sp->deployment, "svc");
		CHECK_INT(sp->revision, 1);
		CHECK_STR(sp->model_ref, "tiny@1");
		CHECK_INT(sp->tp, 2);
		CHECK_INT(sp->ctx, 48);
		char *cfg = owl_path_join(sp->model_dir, "config.json");
		CHECK(owl_path_exists(cfg), "the model is materialised at %s", sp->model_dir);
		free(cfg);
		CHECK_INT(sp->nadapters, 1);
		if (sp->nadapters) {
			CHECK_STR(sp->adapters[0].name, "tiny-lora@1");
			char *ac = owl_path_join(sp->adapters[0].dir, "adapter_config.json");
			CHECK(owl_path_exists(ac), "the adapter is materialised");
			free(ac);
			CHECK(strstr(sp->adapters[0].ref, "sha256:"), "lineage ref: %s",
			      sp->adapters[0].ref);
		}
	}
	deploy_spec_free(sp);
	CHECK_INT(src.load(src.ctx, 7, &sp, &err), OWL_EFAIL);

	/* The tag moves to a version the adapter does not derive from: the
	 * deployment stays, and says why. */
	tag(fx.s, v2, "stable");
	CHECK_INT(deploy_follow(fx.s, "svc", NULL, NULL, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "follows tiny:stable"), "why it stays: %s", err.msg);
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 1);
	deploy_change_init(&c);
	c.set_adapters = 1;
	CHECK_INT(deploy_set(fx.s, "svc", &c, &rev, &err), 0); /* no adapters, still tiny@1 */
	CHECK_INT(rev, 2);

	/* Now the move is made lazily, when current() observes it. */
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 3);
	CHECK_INT(src.load(src.ctx, 3, &sp, &err), 0);
	if (sp) {
		CHECK_STR(sp->model_ref, "tiny@2");
		CHECK_INT(sp->ctx, 48);
		CHECK_INT(sp->nadapters, 0);
	}
	deploy_spec_free(sp);

	/* A rollback stays until the tag moves again. */
	CHECK_INT(deploy_rollback(fx.s, "svc", 2, NULL, NULL, &rev, &err), 0);
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 2);

	/* Pinned: the tag moves, the deployment does not; unpinned: it follows. */
	CHECK_INT(deploy_pin(fx.s, "svc", "hold", NULL, &err), 0);
	tag(fx.s, v3, "stable");
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 2);
	CHECK_INT(deploy_unpin(fx.s, "svc", NULL, NULL, &err), 0);
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 4);
	deploy_revision r;
	CHECK_INT(deploy_revision_get(fx.s, "svc", 4, &r, &err), 0);
	CHECK_STR(r.model_ref, "tiny@3");
	CHECK(strstr(r.why, "tiny:stable moved to tiny@3"), "follow recorded: %s", r.why);
	deploy_revision_release(&r);
	/* Observed again: nothing more to do. */
	CHECK_INT(src.current(src.ctx, &cur, &err), 0);
	CHECK_INT(cur, 4);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM deploy_revisions"), 4);
	deploy_source_free(&src);
	fixture_close(&fx);
}

static void refused_tag_move_is_recorded_once_and_made_when_allowed(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	int64_t v1 = make_version(fx.s, fx.dir, "tiny", 1, 0);
	int64_t v2 = make_version(fx.s, fx.dir, "tiny", 2, 0);
	CHECK_INT(license_conclude(fx.s, v1, "apache-2.0", "read it", "legal", &err), 0);
	license_rule rule = {.name = "no-unknown", .effect = LICENSE_DENY, .priority = 2000,
			     .license = "unknown", .action = "deploy", .message = "read it first"};
	CHECK_INT(license_rule_add(fx.s, &rule, &err), 0);
	tag(fx.s, v1, "stable");
	deploy_change c;
	deploy_change_init(&c);
	c.model = "tiny:stable";
	int64_t rev = 0;
	CHECK_INT(deploy_create(fx.s, "svc", &c, &rev, &err), 0);
	tag(fx.s, v2, "stable");
	int moved = 1;
	CHECK_INT(deploy_follow(fx.s, "svc", NULL, &moved, &err), OWL_EDENIED);
	CHECK_INT(moved, 0);
	CHECK(strstr(err.msg, "stays at revision 1"), "stays: %s", err.msg);
	for (int i = 0; i < 3; i++)
		CHECK_INT(deploy_follow(fx.s, "svc", NULL, &moved, &err), 0);
	CHECK_INT(count(fx.s, "SELECT COUNT(*) FROM audit_log WHERE rule='no-unknown'"), 1);
	deploy_info d;
	CHECK_INT(deploy_get(fx.s, "svc", &d, &err), 0);
	CHECK_INT(d.current, 1);
	CHECK_STR(d.follow_blocked, "tiny@2");
	deploy_info_release(&d);
	/* Someone reads the license: the next observation moves. */
	CHECK_INT(license_conclude(fx.s, v2, "apache-2.0", "read it", "legal", &err), 0);
	CHECK_INT(deploy_follow(fx.s, "svc", NULL, &moved, &err), 0);
	CHECK_INT(moved, 1);
	CHECK_INT(deploy_get(fx.s, "svc", &d, &err), 0);
	CHECK_INT(d.current, 2);
	CHECK(d.follow_blocked == NULL, "no longer blocked");
	deploy_info_release(&d);
	fixture_close(&fx);
}

/* ---- keys and the authoriser --------------------------------------------------- */

static void keys_are_hashed_and_revocation_is_seen_by_a_running_authoriser(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	deploy_authoriser au;
	CHECK_INT(deploy_authoriser_new(fx.home, &au, &err), 0);
	char kid[32];
	CHECK_INT(au.authorise(au.ctx, NULL, kid, sizeof kid), DEPLOY_AUTH_OPEN);
	char key[DEPLOY_KEY_LEN], id[DEPLOY_KEY_ID_LEN];
	CHECK_INT(deploy_key_create(fx.s, "ci", "alice", key, id, &err), 0);
	CHECK(strncmp(key, id, strlen(id)) == 0 && key[strlen(id)] == '-', "key %s has id %s", key,
	      id);
	/* Never stored in clear. */
	sqlite3_stmt *q = NULL;
	sqlite3_prepare_v2(registry_store_db(fx.s), "SELECT COUNT(*) FROM api_keys WHERE"
			   " hash=? OR name=? OR key_id=?", -1, &q, NULL);
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 2, key, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, key, -1, SQLITE_STATIC);
	CHECK(sqlite3_step(q) == SQLITE_ROW && sqlite3_column_int(q, 0) == 0, "no clear key");
	sqlite3_finalize(q);

	/* The running authoriser sees the new key at its next call. */
	CHECK_INT(au.authorise(au.ctx, NULL, kid, sizeof kid), DEPLOY_AUTH_DENIED);
	CHECK_INT(au.authorise(au.ctx, "owl-00000000-00", kid, sizeof kid), DEPLOY_AUTH_DENIED);
	CHECK_INT(au.authorise(au.ctx, key, kid, sizeof kid), DEPLOY_AUTH_OK);
	CHECK_STR(kid, id);
	char longkey[600];
	memset(longkey, 'a', sizeof longkey - 1);
	longkey[sizeof longkey - 1] = 0;
	CHECK_INT(au.authorise(au.ctx, longkey, kid, sizeof kid), DEPLOY_AUTH_DENIED);

	deploy_key *k = NULL;
	size_t n = 0;
	CHECK_INT(deploy_key_list(fx.s, &k, &n, &err), 0);
	CHECK_INT(n, 1);
	if (n) {
		CHECK_STR(k[0].id, id);
		CHECK_STR(k[0].name, "ci");
		CHECK_INT(k[0].revoked_at, 0);
	}
	deploy_key_list_free(k, n);

	CHECK_INT(deploy_key_remove(fx.s, id, &err), OWL_EUSAGE); /* valid: revoke first */
	CHECK_INT(deploy_key_revoke(fx.s, id + 4, "bob", &err), 0); /* by its hex alone */
	CHECK_INT(au.authorise(au.ctx, key, kid, sizeof kid), DEPLOY_AUTH_DENIED);
	/* The last key revoked: still closed, not open. */
	CHECK_INT(au.authorise(au.ctx, NULL, kid, sizeof kid), DEPLOY_AUTH_DENIED);
	CHECK_INT(deploy_key_revoke(fx.s, "owl-zz", NULL, &err), OWL_EUSAGE);
	CHECK_INT(deploy_key_revoke(fx.s, "owl-00000000", NULL, &err), OWL_EFAIL);
	CHECK_INT(deploy_key_remove(fx.s, id, &err), 0);
	CHECK_INT(au.authorise(au.ctx, NULL, kid, sizeof kid), DEPLOY_AUTH_OPEN);
	deploy_authoriser_free(&au);
	fixture_close(&fx);
}

typedef struct auth_job {
	deploy_authoriser *au;
	const char *good, *bad;
	int wrong;
} auth_job;

static void *auth_thread(void *p)
{
	auth_job *j = p;
	for (int i = 0; i < 300; i++) {
		char kid[32];
		if (j->au->authorise(j->au->ctx, j->good, kid, sizeof kid) != DEPLOY_AUTH_OK)
			j->wrong++;
		if (j->au->authorise(j->au->ctx, j->bad, kid, sizeof kid) != DEPLOY_AUTH_DENIED)
			j->wrong++;
	}
	return NULL;
}

static void concurrent_authorise_from_many_threads(void)
{
	fixture fx;
	fixture_open(&fx);
	owl_err err = {0};
	char key[DEPLOY_KEY_LEN], id[DEPLOY_KEY_ID_LEN];
	CHECK_INT(deploy_key_create(fx.s, "steady", NULL, key, id, &err), 0);
	deploy_authoriser au;
	CHECK_INT(deploy_authoriser_new(fx.home, &au, &err), 0);
	enum { N = 8 };
	pthread_t t[N];
	auth_job jobs[N];
	for (int i = 0; i < N; i++) {
		jobs[i] = (auth_job){.au = &au, .good = key, .bad = "owl-12345678-nope"};
		pthread_create(&t[i], NULL, auth_thread, &jobs[i]);
	}
	/* Keys come and go while the threads ask. */
	char k2[DEPLOY_KEY_LEN], id2[DEPLOY_KEY_ID_LEN];
	for (int i = 0; i < 10; i++) {
		CHECK_INT(deploy_key_create(fx.s, "churn", NULL, k2, id2, &err), 0);
		CHECK_INT(deploy_key_revoke(fx.s, id2, NULL, &err), 0);
	}
	int wrong = 0;
	for (int i = 0; i < N; i++) {
		pthread_join(t[i], NULL);
		wrong += jobs[i].wrong;
	}
	CHECK_INT(wrong, 0);
	char kid[32];
	CHECK_INT(au.authorise(au.ctx, k2, kid, sizeof kid), DEPLOY_AUTH_DENIED);
	deploy_authoriser_free(&au);
	fixture_close(&fx);
}

int main(void)
{
	RUN_TEST(create_set_pin_rollback_history);
	RUN_TEST(gate_denial_leaves_no_revision);
	RUN_TEST(adapters_must_derive_from_the_model);
	RUN_TEST(removal_is_refused_while_a_revision_uses_the_version);
	RUN_TEST(source_follows_the_tag_unless_pinned);
	RUN_TEST(refused_tag_move_is_recorded_once_and_made_when_allowed);
	RUN_TEST(keys_are_hashed_and_revocation_is_seen_by_a_running_authoriser);
	RUN_TEST(concurrent_authorise_from_many_threads);
	TEST_MAIN_END();
}
