/* Unit tests of licenses/: text recognition against the real license texts,
 * near-misses, card parsing, rule precedence, conditions, approvals and
 * expiry, inheritance by derived versions, and the audit chain. */
#include "test.h"

#include <unistd.h>

#include "licenses/internal.h"

static char *shared_dir(void)
{
	const char *s = getenv("OWL_SHARED");
	return owl_path_join(s && *s ? s : "../shared", "licenses");
}

static char *read_text(const char *dir, const char *name, size_t *len)
{
	char *path = owl_path_join(dir, name);
	char *text = NULL;
	owl_err err = {0};
	if (owl_read_file(path, 1u << 20, &text, len, &err) != 0)
		text = NULL;
	free(path);
	return text;
}

static void every_reference_text_is_recognised(void)
{
	char *dir = shared_dir();
	for (size_t i = 0; i < license_fp_nrefs; i++) {
		const license_fp_ref *r = &license_fp_refs[i];
		size_t len = 0;
		char *text = read_text(dir, r->text_name, &len);
		CHECK(text != NULL, "cannot read %s/%s", dir, r->text_name);
		if (!text)
			continue;
		char id[64];
		double score;
		int near;
		license_recognise_text(text, len, id, sizeof id, &score, &near);
		CHECK(strcmp(id, r->license_id) == 0 && !near, "%s recognised as '%s' (near %d, %.3f), "
		      "expected %s", r->text_name, id, near, score, r->license_id);
		free(text);
	}
	free(dir);
}

/* Rewrapped, uppercased, Markdown-decorated copies are still the license; a
 * title and a copyright line before the text are normal. */
static void reformatted_copies_still_match(void)
{
	char *dir = shared_dir();
	size_t len = 0;
	char *mit = read_text(dir, "mit.txt", &len);
	CHECK(mit != NULL, "mit.txt");
	if (mit) {
		owl_buf b;
		owl_buf_init(&b, 1u << 20);
		owl_buf_printf(&b, "# MIT License\n\nCopyright (c) 2026 Acme Corp.\n\n");
		for (size_t i = 0; i < len; i++) {
			char c = mit[i];
			if (c == '\n')
				owl_buf_printf(&b, "  \n   ");
			else
				owl_buf_append(&b, &c, 1);
		}
		char id[64];
		double score;
		int near;
		license_recognise_text(b.data, b.len, id, sizeof id, &score, &near);
		CHECK(strcmp(id, "mit") == 0 && !near, "decorated MIT: '%s' near %d", id, near);
		owl_buf_release(&b);
		free(mit);
	}
	char *apache = read_text(dir, "apache-2.0.txt", &len);
	if (apache) {
		for (size_t i = 0; i < len; i++)
			if (apache[i] >= 'a' && apache[i] <= 'z')
				apache[i] = (char)(apache[i] - 32);
		char id[64];
		double score;
		int near;
		license_recognise_text(apache, len, id, sizeof id, &score, &near);
		CHECK(strcmp(id, "apache-2.0") == 0 && !near, "uppercased Apache: '%s' near %d", id, near);
		free(apache);
	}
	free(dir);
}

/* Llama 3.1's text with one added restriction is not Llama 3.1; neither is
 * one with the user threshold changed. */
static void near_misses_are_not_the_license(void)
{
	char *dir = shared_dir();
	size_t len = 0;
	char *text = read_text(dir, "llama3.1.txt", &len);
	CHECK(text != NULL, "llama3.1.txt");
	if (!text) {
		free(dir);
		return;
	}
	const char *clause = "\n\ne. You may not use the Llama Materials or any output of them for "
			     "any purpose related to advertising, and you must delete all copies "
			     "upon our written request.\n\n";
	size_t cut = len / 2;
	owl_buf b;
	owl_buf_init(&b, 1u << 20);
	owl_buf_append(&b, text, cut);
	owl_buf_append(&b, clause, strlen(clause));
	owl_buf_append(&b, text + cut, len - cut);
	char id[64];
	double score;
	int near;
	license_recognise_text(b.data, b.len, id, sizeof id, &score, &near);
	CHECK(strcmp(id, "llama3.1") == 0 && near, "added clause: '%s' near %d (%.3f)", id, near, score);
	owl_buf_release(&b);
	char *p = strstr(text, "700 million");
	CHECK(p != NULL, "the text names the 700 million threshold");
	if (p) {
		memcpy(p, "7000 milli", 10);
		license_recognise_text(text, len, id, sizeof id, &score, &near);
		CHECK(near, "changed threshold must not be llama3.1: '%s' near %d", id, near);
	}
	/* Llama 3.2's text is not taken for 3.1's, nor the reverse. */
	free(text);
	text = read_text(dir, "llama3.2.txt", &len);
	if (text) {
		license_recognise_text(text, len, id, sizeof id, &score, &near);
		CHECK_STR(id, "llama3.2");
		free(text);
	}
	license_recognise_text("hello world, this is not a license at all", 41, id, sizeof id, &score,
			       &near);
	CHECK_STR(id, "");
	free(dir);
}

static void card_front_matter_is_parsed(void)
{
	const char *card = "---\nlanguage:\n- en\nlicense: 'llama3.1' # the vendor's\n"
			   "license_name: \"x y\"\nbase_model:\n  - meta-llama/Llama-3.1-8B\n"
			   "tags: [a, b]\n---\n# Title\nlicense: mit\n";
	license_card c;
	license_parse_card(card, strlen(card), &c);
	CHECK(c.has_front_matter, "front matter found");
	CHECK_STR(c.license, "llama3.1");
	CHECK_STR(c.license_name, "x y");
	CHECK_STR(c.base_model, "meta-llama/Llama-3.1-8B");
	license_parse_card("no front matter\nlicense: mit\n", 30, &c);
	CHECK(!c.has_front_matter && !c.license[0], "body text is not front matter");
	license_parse_card("---\nlicense:", 12, &c);
	CHECK(c.has_front_matter && !c.license[0], "truncated card");
}

/* ---- policy on a real store ----------------------------------------------- */

typedef struct fixture {
	char *dir;
	registry_store *s;
} fixture;

static int64_t add_version(fixture *f, const char *name, int64_t parent, const char *license)
{
	owl_err err = {0};
	char *src = owl_path_join(f->dir, "src");
	owl_mkdir_p(src, &err);
	char *path = owl_path_join(src, "model.safetensors");
	const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
	FILE *fp = fopen(path, "wb");
	uint64_t n = strlen(hdr);
	fwrite(&n, 8, 1, fp);
	fputs(hdr, fp);
	float one = 1;
	fwrite(&one, 4, 1, fp);
	fclose(fp);
	registry_stage *st = NULL;
	registry_stage_new(f->s, src, &st, &err);
	registry_stage_copy(st, path, "model.safetensors", NULL, NULL, &err);
	registry_stage_validate(st, &err);
	registry_commit_result res = {0};
	CHECK_INT(registry_stage_commit(f->s, st, name, parent, NULL, NULL, NULL, &res, &err), 0);
	registry_stage_free(st);
	if (license) {
		license_findings lf = {0};
		license_finding item = {.confidence = 0.9};
		snprintf(item.license_id, sizeof item.license_id, "%s", license);
		snprintf(item.source, sizeof item.source, "card");
		snprintf(item.evidence, sizeof item.evidence, "test");
		lf.items = &item;
		lf.n = 1;
		CHECK_INT(license_findings_store(f->s, res.version_id, &lf, &err), 0);
	}
	free(path);
	free(src);
	return res.version_id;
}

static void fixture_open(fixture *f)
{
	f->dir = test_tmpdir("lic");
	char *home = owl_path_join(f->dir, "home");
	owl_err err = {0};
	CHECK_INT(registry_store_open(home, &f->s, &err), 0);
	CHECK_INT(licenses_migrate(f->s, &err), 0);
	free(home);
}

static void fixture_close(fixture *f)
{
	registry_store_close(f->s);
	owl_remove_tree(f->dir, NULL);
	free(f->dir);
}

static license_decision decide(fixture *f, const char *model, int64_t vid, const char *action,
			       const char *use)
{
	license_request rq = {.model = model, .version_id = vid, .action = action, .use = use};
	license_decision d;
	owl_err err = {0};
	CHECK_INT(license_evaluate(f->s, &rq, &d, &err), 0);
	return d;
}

static void precedence_thresholds_and_approvals(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	int64_t mit = add_version(&f, "m", 0, "mit");
	int64_t nc = add_version(&f, "nc", 0, "cc-by-nc-4.0");
	int64_t ll = add_version(&f, "llama-x", 0, "llama3.1");
	int64_t unk = add_version(&f, "u", 0, NULL);

	license_decision d = decide(&f, "m", mit, "deploy", "commercial");
	CHECK(d.allowed && strcmp(d.rule, "allow-permissive") == 0, "mit: %s", d.rule);
	/* A higher-priority deny wins over the permissive allow; equal priority:
	 * the stricter effect is tried first. */
	license_rule r = {.effect = LICENSE_DENY, .priority = 100, .license = "mit"};
	snprintf(r.name, sizeof r.name, "no-mit");
	CHECK_INT(license_rule_add(f.s, &r, &err), 0);
	d = decide(&f, "m", mit, "deploy", "commercial");
	CHECK(!d.allowed && strcmp(d.rule, "no-mit") == 0, "equal priority, stricter first: %s", d.rule);
	license_rule r2 = {.effect = LICENSE_ALLOW, .priority = 2000, .model = "m"};
	snprintf(r2.name, sizeof r2.name, "vip-m");
	CHECK_INT(license_rule_add(f.s, &r2, &err), 0);
	d = decide(&f, "m", mit, "deploy", "commercial");
	CHECK(d.allowed && strcmp(d.rule, "vip-m") == 0, "higher priority wins: %s", d.rule);
	CHECK_INT(license_rule_remove(f.s, "vip-m", &err), 0);
	CHECK(license_rule_add(f.s, &r, &err) == OWL_EUSAGE, "duplicate name refused");

	/* Non-commercial: internal fine, commercial needs approval. */
	d = decide(&f, "nc", nc, "deploy", "internal");
	CHECK(d.allowed, "nc internal: %s", d.rule);
	d = decide(&f, "nc", nc, "deploy", "commercial");
	CHECK(!d.allowed && d.effect == LICENSE_REQUIRE_APPROVAL, "nc commercial: %s", d.rule);
	CHECK_INT(license_approve(f.s, nc, "deploy", "commercial", "legal", "agreement 7",
				  owl_unix_time() + 3600, &err), 0);
	d = decide(&f, "nc", nc, "deploy", "commercial");
	CHECK(d.allowed && d.approval[0], "approved: %s", d.approval);
	/* An expired approval no longer counts. */
	CHECK_INT(license_approve(f.s, unk, "deploy", "commercial", "legal", "old",
				  owl_unix_time() - 10, &err), 0);
	d = decide(&f, "u", unk, "deploy", "commercial");
	CHECK(!d.allowed && strcmp(d.rule, "approve-unknown") == 0, "expired approval: %s %s", d.rule,
	      d.approval);

	/* MAU threshold: Llama allows up to 700M. */
	d = decide(&f, "llama-x", ll, "deploy", "commercial");
	CHECK(d.allowed, "llama under threshold: %s", d.rule);
	CHECK_INT(license_org_set(f.s, "mau", "700000001", &err), 0);
	d = decide(&f, "llama-x", ll, "deploy", "commercial");
	CHECK(!d.allowed && strcmp(d.rule, "deny-over-user-threshold") == 0, "over: %s", d.rule);
	d = decide(&f, "llama-x", ll, "deploy", "internal");
	CHECK(d.allowed, "the threshold rule is for commercial deployment: %s", d.rule);
	CHECK(license_org_set(f.s, "mau", "lots", &err) == OWL_EUSAGE, "mau must be a number");
	CHECK_INT(license_org_set(f.s, "mau", "1000", &err), 0);

	/* A derived version inherits Llama 3.1 and must be named "Llama...". */
	int64_t bad = add_version(&f, "acme-bot", ll, NULL);
	int64_t good = add_version(&f, "llama-acme-bot", ll, NULL);
	license_status st;
	CHECK_INT(license_status_for(f.s, bad, NULL, 0, &st, &err), 0);
	CHECK_STR(st.license_id, "llama3.1");
	CHECK(st.from_version == ll, "inherited from the base");
	d = decide(&f, "acme-bot", bad, "export", "internal");
	CHECK(!d.allowed && strcmp(d.rule, "deny-derived-name") == 0, "naming rule: %s", d.rule);
	d = decide(&f, "llama-acme-bot", good, "export", "internal");
	CHECK(d.allowed, "well-named derivative: %s", d.rule);

	/* The gate records each decision; the audit chain verifies. */
	license_request rq = {.model = "nc", .version_id = nc, .action = "deploy", .use = "internal"};
	CHECK_INT(license_gate(f.s, &rq, &d, &err), 0);
	rq.version_id = bad;
	rq.model = "acme-bot";
	rq.action = "export";
	CHECK_INT(license_gate(f.s, &rq, &d, &err), OWL_EDENIED);
	CHECK(strstr(err.msg, "deny-derived-name") && strstr(err.msg, "llama3.1"),
	      "denial names rule and license: %s", err.msg);
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(f.s, &rows, &err), 0);
	CHECK_INT(rows, 2);
	fixture_close(&f);
}

static void audit_tampering_is_detected(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	for (int i = 0; i < 5; i++) {
		license_audit_entry e = {.at = 1000 + i, .actor = "a", .action = "deploy",
					 .subject = "m@1", .use = "internal", .effect = "allow",
					 .rule = "r", .license = "mit", .evidence = "x"};
		CHECK_INT(license_audit_append(f.s, &e, &err), 0);
	}
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(f.s, &rows, &err), 0);
	CHECK_INT(rows, 5);
	CHECK(registry_store_exec(f.s, "UPDATE audit_log SET effect='deny' WHERE id=3", NULL) != 0,
	      "the trigger refuses updates");
	registry_store_exec(f.s, "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete",
			    &err);
	registry_store_exec(f.s, "UPDATE audit_log SET effect='deny' WHERE id=3", &err);
	CHECK_INT(license_audit_verify(f.s, &rows, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "row 3") && strstr(err.msg, "edited"), "edit found: %s", err.msg);
	registry_store_exec(f.s, "UPDATE audit_log SET effect='allow' WHERE id=3", &err);
	CHECK_INT(license_audit_verify(f.s, &rows, &err), 0);
	registry_store_exec(f.s, "DELETE FROM audit_log WHERE id=2", &err);
	CHECK_INT(license_audit_verify(f.s, &rows, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "row 3") && strstr(err.msg, "deleted"), "deletion found: %s", err.msg);
	fixture_close(&f);

	fixture_open(&f);
	for (int i = 0; i < 3; i++) {
		license_audit_entry e = {.at = 1, .actor = "a", .action = "x", .subject = "s",
					 .use = "", .effect = "allow", .rule = "", .license = "",
					 .evidence = ""};
		license_audit_append(f.s, &e, &err);
	}
	registry_store_exec(f.s, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id=3",
			    &err);
	CHECK_INT(license_audit_verify(f.s, &rows, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "end") != NULL, "truncation found: %s", err.msg);
	fixture_close(&f);
}

/* The head kept in the database can be rewound with the rows; the anchor in
 * logs/audit-head cannot (without also editing that file), and it may lag. */
static void audit_anchor_catches_removed_newest_rows(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	for (int i = 0; i < 5; i++) {
		license_audit_entry e = {.at = 2000 + i, .actor = "a", .action = "deploy",
					 .subject = "m@1", .use = "internal", .effect = "allow",
					 .rule = "r", .license = "mit", .evidence = "x"};
		CHECK_INT(license_audit_append(f.s, &e, &err), 0);
	}
	char *anchor = owl_path_join(registry_store_home(f.s), "logs/audit-head");
	char *text = NULL;
	size_t len = 0;
	CHECK_INT(owl_read_file(anchor, 1 << 20, &text, &len, &err), 0);
	int lines = 0;
	for (size_t i = 0; text && i < len; i++)
		lines += text[i] == '\n';
	CHECK_INT(lines, 5);
	CHECK(text && strncmp(text, "1 ", 2) == 0, "first anchor line: %.80s", text ? text : "");
	license_audit_report rep;
	CHECK_INT(license_audit_check(f.s, NULL, NULL, 0, &rep, &err), 0);
	CHECK_INT(rep.anchor_lines, 5);
	CHECK_INT(rep.anchored_seq, 5);

	/* Remove rows 4 and 5 and rewind the head to row 3: the chain is whole. */
	registry_store_exec(f.s, "DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id > 3;"
			    " UPDATE license_meta SET value = '3:' || (SELECT hash FROM audit_log"
			    " WHERE id = 3) WHERE key = 'audit_head'", &err);
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(f.s, &rows, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "rows 4 to 5 were removed") && strstr(err.msg, "ends at row 3"),
	      "gap named: %s", err.msg);

	/* The anchor lagging the database (a crash after commit) is accepted. */
	owl_write_file_atomic(anchor, text, strcspn(text, "\n") + 1, &err);
	CHECK_INT(license_audit_verify(f.s, &rows, &err), 0);
	CHECK_INT(rows, 3);
	free(text);
	free(anchor);
	fixture_close(&f);
}

static int count_rows(fixture *f, const char *sql)
{
	sqlite3_stmt *q = NULL;
	int n = -1;
	if (sqlite3_prepare_v2(registry_store_db(f->s), sql, -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
		n = sqlite3_column_int(q, 0);
	sqlite3_finalize(q);
	return n;
}

static int anchor_lines(fixture *f)
{
	char *anchor = owl_path_join(registry_store_home(f->s), "logs/audit-head"), *text = NULL;
	size_t len = 0;
	int lines = 0;
	if (owl_read_file(anchor, 1 << 20, &text, &len, NULL) == 0)
		for (size_t i = 0; i < len; i++)
			lines += text[i] == '\n';
	free(text);
	free(anchor);
	return lines;
}

/* A hook that lets the gate decide inside the commit, then fails. */
static int gate_then_fail(void *ctx, registry_store *s, int64_t version_id, owl_err *err)
{
	license_request rq = {.model = "m", .version_id = version_id, .action = "import"};
	license_decision d;
	int rc = license_gate(s, &rq, &d, err);
	return rc ? rc : owl_err_set(err, OWL_EFAIL, "the commit fails after its gate");
}

/* A validated stage of one tiny safetensors file and an MIT LICENSE. */
static registry_stage *license_stage(fixture *f)
{
	owl_err err = {0};
	char *src = owl_path_join(f->dir, "src2");
	owl_mkdir_p(src, &err);
	char *path = owl_path_join(src, "model.safetensors"), *lic = owl_path_join(src, "LICENSE");
	const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
	FILE *fp = fopen(path, "wb");
	uint64_t n = strlen(hdr);
	fwrite(&n, 8, 1, fp);
	fputs(hdr, fp);
	float one = 1;
	fwrite(&one, 4, 1, fp);
	fclose(fp);
	owl_write_file_atomic(lic, "MIT License\n", 12, &err);
	registry_stage *st = NULL;
	CHECK_INT(registry_stage_new(f->s, src, &st, &err), 0);
	CHECK_INT(registry_stage_copy(st, path, "model.safetensors", NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_copy(st, lic, "LICENSE", NULL, NULL, &err), 0);
	CHECK_INT(registry_stage_validate(st, &err), 0);
	free(path), free(lic), free(src);
	return st;
}

/* The gate joins its caller's transaction: a commit that fails after the
 * decision leaves no decision row and no anchor line; one that succeeds
 * leaves both, naming the version it admitted. */
static void gate_decision_commits_with_its_change(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	int rows0 = count_rows(&f, "SELECT COUNT(*) FROM audit_log"), lines0 = anchor_lines(&f);
	registry_stage *st = license_stage(&f);
	registry_commit_result res = {0};
	int rc = registry_stage_commit(f.s, st, "m", 0, NULL, gate_then_fail, NULL, &res, &err);
	CHECK(rc == OWL_EFAIL && strstr(err.msg, "fails after its gate"), "commit: %d %s", rc, err.msg);
	CHECK_INT(count_rows(&f, "SELECT COUNT(*) FROM audit_log"), rows0);
	CHECK_INT(count_rows(&f, "SELECT COUNT(*) FROM versions"), 0);
	CHECK_INT(anchor_lines(&f), lines0);
	registry_stage_free(st);
	/* Through the import flow: the allow row names the version it admitted. */
	st = license_stage(&f);
	license_admit_result adm;
	rc = license_admit_stage(f.s, st, "m", 0, NULL, &adm, &err);
	CHECK(rc == 0, "admit: %d %s", rc, err.msg);
	CHECK_INT(count_rows(&f, "SELECT COUNT(*) FROM audit_log WHERE action = 'import' AND "
			     "version_id > 0 AND subject = 'm@1'"), 1);
	CHECK_INT(anchor_lines(&f), lines0 + 1);
	int64_t rows = 0;
	CHECK_INT(license_audit_verify(f.s, &rows, &err), 0);
	if (rc == 0)
		license_admit_result_release(&adm);
	registry_stage_free(st);
	/* Nested transactions: an inner rollback keeps the outer one's rows. */
	CHECK_INT(registry_store_begin(f.s, &err), 0);
	registry_store_exec(f.s, "INSERT INTO license_meta(key, value) VALUES ('outer', '1')", &err);
	CHECK_INT(registry_store_begin(f.s, &err), 0);
	registry_store_exec(f.s, "INSERT INTO license_meta(key, value) VALUES ('inner', '1')", &err);
	registry_store_rollback(f.s);
	CHECK_INT(registry_store_commit(f.s, &err), 0);
	CHECK_INT(count_rows(&f, "SELECT COUNT(*) FROM license_meta WHERE key IN ('outer', 'inner')"), 1);
	fixture_close(&f);
}

/* A table the gate reads that cannot be read refuses; it never reads as
 * "no row" (no pickle file, no approval needed). */
static void gate_fails_closed(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	int64_t v = add_version(&f, "fc", 0, "mit");
	license_request rq = {.model = "fc", .version_id = v, .action = "deploy"};
	license_decision d;
	CHECK_INT(license_evaluate(f.s, &rq, &d, &err), 0);
	registry_store_exec(f.s, "PRAGMA foreign_keys=OFF; ALTER TABLE version_files RENAME TO vf_gone",
			    &err);
	owl_err e2 = {0};
	int rc = license_gate(f.s, &rq, &d, &e2);
	CHECK(rc != 0 && !d.allowed && strstr(e2.msg, "refusing"), "gate with an unreadable table: "
	      "%d allowed %d (%s)", rc, d.allowed, e2.msg);
	fixture_close(&f);
}

/* A policy file is checked whole before the store is touched, applied all
 * or nothing, and what is exported reads back the same. */
static void policy_files_round_trip_and_refuse_whole(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	license_policy *p = NULL;
	const char *bad = "{\"rules\": [{\"name\": \"r1\", \"effect\": \"deny\", "
			  "\"priority\": \"high\"}]}";
	CHECK_INT(license_policy_parse(bad, strlen(bad), "p.json", &p, &err), OWL_EUSAGE);
	CHECK(p == NULL && strstr(err.msg, "'priority' is a string"), "names the field: %s",
	      err.msg);
	const char *notjson = "{\"rules\": [";
	CHECK_INT(license_policy_parse(notjson, strlen(notjson), "p.json", &p, &err), OWL_EUSAGE);
	CHECK(strstr(err.msg, "'p.json' is not valid JSON") != NULL, "%s", err.msg);

	const char *good = "{\"owl_policy\": 1, \"rules\": [{\"name\": \"no-gpl\", "
			   "\"effect\": \"deny\", \"priority\": 700, \"category\": "
			   "\"copyleft\"}], \"org\": {\"mau\": \"5000\"}}";
	CHECK_INT(license_policy_parse(good, strlen(good), "p.json", &p, &err), 0);
	if (p) {
		CHECK_INT((long long)p->nrules, 1);
		CHECK_INT((long long)p->norg, 1);
		CHECK_INT(license_policy_apply(f.s, p, 1, &err), 0);
		/* Applied again without --replace, the rule's name is taken: nothing
		 * changes, the organisation's attribute included. */
		free(p->org[0].value);
		p->org[0].value = owl_xstrdup("7");
		CHECK(license_policy_apply(f.s, p, 0, &err) != 0, "a duplicate rule refuses");
		license_policy_free(p);
	}
	license_policy *back = NULL;
	CHECK_INT(license_policy_read(f.s, &back, &err), 0);
	if (back) {
		CHECK_INT((long long)back->nrules, 1);
		if (back->nrules)
			CHECK_STR(back->rules[0].name, "no-gpl");
		CHECK_INT((long long)back->norg, 1);
		if (back->norg)
			CHECK_STR(back->org[0].value, "5000");
		char *text = license_policy_to_json(back, 1);
		license_policy *again = NULL;
		CHECK_INT(license_policy_parse(text, strlen(text), "export", &again, &err), 0);
		CHECK(again && again->nrules == 1 && again->rules[0].priority == 700 &&
		      again->rules[0].effect == LICENSE_DENY, "the export reads back: %s", text);
		license_policy_free(again);
		free(text);
		license_policy_free(back);
	}
	fixture_close(&f);
}

/* What the licenses module recorded, read back as structs: findings,
 * conclusions, the catalog, the audit rows. */
static void records_read_back(void)
{
	fixture f;
	fixture_open(&f);
	owl_err err = {0};
	int64_t v = add_version(&f, "rb", 0, "mit");
	license_findings *lf = NULL;
	CHECK_INT(license_findings_of(f.s, v, &lf, &err), 0);
	CHECK(lf && lf->n == 1 && strcmp(lf->items[0].license_id, "mit") == 0 &&
	      strcmp(lf->items[0].source, "card") == 0, "the stored finding");
	license_findings_free(lf);
	CHECK_INT(license_conclude(f.s, v, "apache-2.0", "the vendor confirmed", "alice", &err), 0);
	license_conclusion *cs = NULL;
	size_t n = 0;
	CHECK_INT(license_conclusions_of(f.s, v, &cs, &n, &err), 0);
	CHECK(n == 1 && strcmp(cs[0].license_id, "apache-2.0") == 0 &&
	      strcmp(cs[0].by, "alice") == 0, "the conclusion");
	license_conclusions_free(cs, n);
	license_facts *all = NULL;
	CHECK_INT(license_catalog_list(f.s, &all, &n, &err), 0);
	int has_mit = 0;
	for (size_t i = 0; i < n; i++)
		has_mit |= strcmp(all[i].id, "mit") == 0;
	CHECK(n > 10 && has_mit, "the catalog lists %zu entries", n);
	free(all);
	license_audit_entry a = {.at = 1000, .actor = "bob", .action = "approve", .subject = "rb@1",
				 .use = "*", .effect = "approval", .rule = "deploy", .license = "",
				 .evidence = "ok", .version_id = v};
	CHECK_INT(license_audit_append(f.s, &a, &err), 0);
	a.at = 3000;
	a.actor = "carol";
	CHECK_INT(license_audit_append(f.s, &a, &err), 0);
	license_audit_row *rows = NULL;
	CHECK_INT(license_audit_list(f.s, 2000, &rows, &n, &err), 0);
	CHECK(n == 1 && strcmp(rows[0].actor, "carol") == 0 && rows[0].version_id == v,
	      "rows since a time");
	license_audit_rows_free(rows, n);
	fixture_close(&f);
}

int main(void)
{
	RUN_TEST(every_reference_text_is_recognised);
	RUN_TEST(reformatted_copies_still_match);
	RUN_TEST(near_misses_are_not_the_license);
	RUN_TEST(card_front_matter_is_parsed);
	RUN_TEST(precedence_thresholds_and_approvals);
	RUN_TEST(audit_tampering_is_detected);
	RUN_TEST(audit_anchor_catches_removed_newest_rows);
	RUN_TEST(gate_decision_commits_with_its_change);
	RUN_TEST(gate_fails_closed);
	RUN_TEST(policy_files_round_trip_and_refuse_whole);
	RUN_TEST(records_read_back);
	TEST_MAIN_END();
}
