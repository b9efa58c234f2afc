/* The licenses module's tables, the catalog load and the default policy.
 * Append new steps; never edit a released one. */
#include "internal.h"

#include <jansson.h>
#include <string.h>

static const char *const steps[] = {
	/* 1 */
	"CREATE TABLE license_catalog ("
	"  id TEXT PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL,"
	"  commercial INTEGER NOT NULL, mau_limit INTEGER, derivatives INTEGER NOT NULL,"
	"  flow_down INTEGER NOT NULL, outputs_train INTEGER NOT NULL, attribution TEXT,"
	"  name_prefix TEXT, link TEXT, summary TEXT, aliases TEXT);"
	"CREATE TABLE license_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
	"CREATE TABLE license_findings ("
	"  id INTEGER PRIMARY KEY,"
	"  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
	"  license_id TEXT NOT NULL, source TEXT NOT NULL, evidence TEXT NOT NULL,"
	"  confidence REAL NOT NULL, created_at INTEGER NOT NULL);"
	"CREATE INDEX license_findings_version ON license_findings(version_id);"
	"CREATE TABLE license_conclusions ("
	"  id INTEGER PRIMARY KEY,"
	"  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
	"  license_id TEXT NOT NULL, reason TEXT NOT NULL, by TEXT NOT NULL,"
	"  at INTEGER NOT NULL);"
	"CREATE TABLE policy_rules ("
	"  id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
	"  effect TEXT NOT NULL CHECK (effect IN ('allow','require_approval','deny')),"
	"  priority INTEGER NOT NULL DEFAULT 0,"
	"  license TEXT NOT NULL DEFAULT '', category TEXT NOT NULL DEFAULT '',"
	"  action TEXT NOT NULL DEFAULT '', use TEXT NOT NULL DEFAULT '',"
	"  model TEXT NOT NULL DEFAULT '', cond TEXT NOT NULL DEFAULT '',"
	"  message TEXT NOT NULL DEFAULT '', created_at INTEGER NOT NULL);"
	"CREATE TABLE org_attributes (key TEXT PRIMARY KEY, value TEXT NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE TABLE approvals ("
	"  id INTEGER PRIMARY KEY,"
	"  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
	"  action TEXT NOT NULL, use TEXT NOT NULL, by TEXT NOT NULL, reason TEXT NOT NULL,"
	"  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL DEFAULT 0);"
	/* Append-only: each row carries the hash of the previous row and its own. */
	"CREATE TABLE audit_log ("
	"  id INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL,"
	"  action TEXT NOT NULL, subject TEXT NOT NULL, version_id INTEGER,"
	"  use TEXT NOT NULL, effect TEXT NOT NULL, rule TEXT NOT NULL,"
	"  license TEXT NOT NULL, evidence TEXT NOT NULL,"
	"  prev_hash TEXT NOT NULL, hash TEXT NOT NULL);"
	"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log"
	"  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
	"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log"
	"  BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;",
};

/* The default policy a careful company would start from. Priorities leave
 * room between them for the company's own rules. */
static const license_rule default_rules[] = {
	{.name = "deny-pickle", .effect = LICENSE_DENY, .priority = 1000, .when = "pickle",
	 .message = "pickle files can run arbitrary code when loaded; owl never stores them"},
	{.name = "deny-over-user-threshold", .effect = LICENSE_DENY, .priority = 900,
	 .action = "deploy", .use = "commercial", .when = "mau-over-limit",
	 .message = "the organisation's monthly active users exceed the license's threshold: a "
		    "separate license from the vendor is needed"},
	{.name = "deny-derived-name", .effect = LICENSE_DENY, .priority = 850,
	 .action = "import,finetune,deploy,export", .when = "derived-name-violation",
	 .message = "the license requires derived models to be named with its prefix (e.g. "
		    "Llama 3.x: the name must begin with \"Llama\")"},
	{.name = "deny-no-derivatives", .effect = LICENSE_DENY, .priority = 800,
	 .action = "finetune", .when = "no-derivatives",
	 .message = "the license does not allow derivative models"},
	{.name = "approve-non-commercial", .effect = LICENSE_REQUIRE_APPROVAL, .priority = 700,
	 .action = "deploy", .use = "commercial", .when = "non-commercial",
	 .message = "the license does not allow commercial use; deploying commercially needs a "
		    "recorded approval (e.g. a separate agreement with the licensor)"},
	{.name = "approve-unknown", .effect = LICENSE_REQUIRE_APPROVAL, .priority = 720,
	 .license = "unknown,other", .action = "deploy", .use = "commercial",
	 .message = "no known license was established; a commercial deployment needs an approval "
		    "after someone has read the terms (owl license set records the conclusion)"},
	{.name = "approve-conflict", .effect = LICENSE_REQUIRE_APPROVAL, .priority = 720,
	 .license = "conflict", .action = "deploy", .use = "commercial",
	 .message = "the checkpoint states conflicting licenses; resolve them (owl license set) or "
		    "approve the deployment"},
	{.name = "allow-permissive", .effect = LICENSE_ALLOW, .priority = 100,
	 .category = "permissive", .message = "permissive license"},
	{.name = "default-allow", .effect = LICENSE_ALLOW, .priority = 0,
	 .message = "no stricter rule applies"},
};

/* Loads the compiled-in catalog into license_catalog when it changed. */
/* *yes = the catalog loaded in the database is the one compiled in (want). */
static int catalog_is(registry_store *s, const char *want, int *yes, owl_err *err)
{
	sqlite3_stmt *q = NULL;
	*yes = 0;
	int rc = registry_store_prepare(s, "SELECT value FROM license_meta WHERE key='catalog'", &q,
					err);
	if (rc)
		return rc;
	int step = sqlite3_step(q);
	if (step == SQLITE_ROW)
		*yes = sqlite3_column_text(q, 0) &&
		       strcmp((const char *)sqlite3_column_text(q, 0), want) == 0;
	else if (step != SQLITE_DONE)
		rc = owl_err_set(err, OWL_EFAIL, "cannot read the license catalog's version: %s",
				 sqlite3_errmsg(registry_store_db(s)));
	sqlite3_finalize(q);
	return rc;
}

static int load_catalog(registry_store *s, owl_err *err)
{
	json_error_t je;
	json_t *root = json_loads(license_catalog_json, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return owl_err_set(err, OWL_EFAIL, "internal: the license catalog is not valid JSON "
				   "(line %d: %s)", je.line, je.text);
	json_int_t version = json_integer_value(json_object_get(root, "catalog_version"));
	char want[32];
	snprintf(want, sizeof want, "%lld:%zu", (long long)version, strlen(license_catalog_json));
	sqlite3_stmt *q = NULL;
	int current = 0;
	int rc = catalog_is(s, want, &current, err);
	if (rc) {
		json_decref(root);
		return rc;
	}
	/* A read-only home keeps the catalog it has. */
	if (current || registry_store_is_read_only(s)) {
		json_decref(root);
		return 0;
	}
	rc = registry_store_begin(s, err);
	if (rc) {
		json_decref(root);
		return rc;
	}
	/* Another process may have loaded it while this one waited for the lock. */
	rc = catalog_is(s, want, &current, err);
	if (rc || current) {
		registry_store_rollback(s);
		json_decref(root);
		return rc;
	}
	if ((rc = registry_store_exec(s, "DELETE FROM license_catalog", err)) ||
	    (rc = registry_store_prepare(s,
			   "INSERT INTO license_catalog(id, name, category, commercial, mau_limit,"
			   " derivatives, flow_down, outputs_train, attribution, name_prefix, link,"
			   " summary, aliases) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", &q, err))) {
		registry_store_rollback(s);
		json_decref(root);
		return rc;
	}
	size_t i;
	json_t *l;
	json_array_foreach(json_object_get(root, "licenses"), i, l) {
		sqlite3_reset(q);
		sqlite3_bind_text(q, 1, json_string_value(json_object_get(l, "id")), -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 2, json_string_value(json_object_get(l, "name")), -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 3, json_string_value(json_object_get(l, "category")), -1,
				  SQLITE_STATIC);
		sqlite3_bind_int(q, 4, json_is_true(json_object_get(l, "commercial")));
		json_t *mau = json_object_get(l, "mau_limit");
		if (json_is_integer(mau))
			sqlite3_bind_int64(q, 5, json_integer_value(mau));
		else
			sqlite3_bind_null(q, 5);
		sqlite3_bind_int(q, 6, json_is_true(json_object_get(l, "derivatives")));
		sqlite3_bind_int(q, 7, json_is_true(json_object_get(l, "flow_down")));
		sqlite3_bind_int(q, 8, json_is_true(json_object_get(l, "outputs_train_other_models")));
		sqlite3_bind_text(q, 9, json_string_value(json_object_get(l, "attribution")), -1,
				  SQLITE_STATIC);
		sqlite3_bind_text(q, 10, json_string_value(json_object_get(l, "derivative_name_prefix")),
				  -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 11, json_string_value(json_object_get(l, "link")), -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 12, json_string_value(json_object_get(l, "summary")), -1,
				  SQLITE_STATIC);
		/* Aliases as ",a,b," so that a LIKE '%,x,%' finds them. */
		owl_buf al;
		owl_buf_init(&al, 4096);
		owl_buf_printf(&al, ",");
		size_t k;
		json_t *a;
		json_array_foreach(json_object_get(l, "aliases"), k, a)
			owl_buf_printf(&al, "%s,", json_string_value(a));
		sqlite3_bind_text(q, 13, al.data, -1, SQLITE_TRANSIENT);
		owl_buf_release(&al);
		if (sqlite3_step(q) != SQLITE_DONE) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot load the license catalog: %s",
					 sqlite3_errmsg(registry_store_db(s)));
			break;
		}
	}
	sqlite3_finalize(q);
	if (!rc)
		rc = registry_store_prepare(s, "INSERT OR REPLACE INTO license_meta(key, value)"
					    " VALUES ('catalog', ?)", &q, err);
	if (!rc) {
		sqlite3_bind_text(q, 1, want, -1, SQLITE_STATIC);
		if (sqlite3_step(q) != SQLITE_DONE)
			rc = owl_err_set(err, OWL_EFAIL, "cannot record the license catalog's version: %s",
					 sqlite3_errmsg(registry_store_db(s)));
		sqlite3_finalize(q);
	}
	if (!rc)
		rc = registry_store_commit(s, err);
	if (rc)
		registry_store_rollback(s);
	json_decref(root);
	return rc;
}

/* On a fresh home (no rule was ever written) the default policy is seeded.
 * A database that cannot say counts as seeded: never seed over a policy. */
static int defaults_seeded(registry_store *s)
{
	sqlite3_stmt *q = NULL;
	if (registry_store_prepare(s, "SELECT 1 FROM license_meta WHERE key='defaults_seeded'", &q,
				   NULL))
		return 1;
	int step = sqlite3_step(q);
	sqlite3_finalize(q);
	return step != SQLITE_DONE;
}

static int seed_defaults(registry_store *s, owl_err *err)
{
	if (defaults_seeded(s) || registry_store_is_read_only(s))
		return 0;
	int rc = registry_store_begin(s, err);
	/* Checked again under the write lock: several processes may start on a
	 * fresh home at once, and only the first may seed. */
	if (!rc && defaults_seeded(s)) {
		registry_store_rollback(s);
		return 0;
	}
	for (size_t i = 0; !rc && i < sizeof default_rules / sizeof default_rules[0]; i++)
		rc = license_rule_add(s, &default_rules[i], err);
	if (!rc)
		rc = registry_store_exec(s, "INSERT INTO license_meta(key, value)"
					    " VALUES ('defaults_seeded', '1')", err);
	if (!rc)
		rc = registry_store_commit(s, err);
	if (rc)
		registry_store_rollback(s);
	return rc;
}

int licenses_migrate(registry_store *s, owl_err *err)
{
	int rc = registry_store_migrate(s, LICENSES_SCHEMA_MODULE, steps,
					(int)(sizeof steps / sizeof steps[0]), err);
	if (!rc)
		rc = load_catalog(s, err);
	if (!rc)
		rc = seed_defaults(s, err);
	return rc;
}
