/* The deploy module's tables, and the guard that keeps the versions its
 * revisions use. Append new steps; never edit a released one. */
#include "deploy.h"

#include <string.h>

static const char *const steps[] = {
	/* 1 */
	"CREATE TABLE deployments ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  current_revision INTEGER NOT NULL,"   /* deploy_revisions.revision of this deployment */
	"  follow_model TEXT,"                   /* M of M:TAG when it follows a tag */
	"  follow_tag TEXT,"
	/* The version the tag pointed at when it was last followed: the
	 * deployment moves when the tag moves away from it, so a rollback stays
	 * until the tag moves again. */
	"  follow_seen_version_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,"
	/* The version a tag move pointed at when the gate refused it: recorded
	 * once, then retried without filling the audit log. */
	"  follow_blocked_version_id INTEGER REFERENCES versions(id) ON DELETE SET NULL,"
	"  pinned INTEGER NOT NULL DEFAULT 0,"
	"  pinned_by TEXT, pinned_at INTEGER, pin_reason TEXT,"
	"  created_at INTEGER NOT NULL, created_by TEXT NOT NULL);"
	/* Revisions are immutable. Their versions are referenced without
	 * cascade: besides the removal guard, the foreign key itself refuses to
	 * delete a version a revision uses. */
	"CREATE TABLE deploy_revisions ("
	"  id INTEGER PRIMARY KEY,"
	"  deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,"
	"  revision INTEGER NOT NULL,"
	"  model_version_id INTEGER NOT NULL REFERENCES versions(id),"
	"  model_ref TEXT NOT NULL, model_digest TEXT NOT NULL,"
	"  tp INTEGER NOT NULL, ctx INTEGER NOT NULL, port INTEGER NOT NULL,"
	"  use TEXT NOT NULL,"
	"  who TEXT NOT NULL, at INTEGER NOT NULL, why TEXT NOT NULL,"
	"  license TEXT NOT NULL,"
	"  UNIQUE (deployment_id, revision));"
	"CREATE INDEX deploy_revisions_version ON deploy_revisions(model_version_id);"
	"CREATE TABLE deploy_revision_adapters ("
	"  revision_id INTEGER NOT NULL REFERENCES deploy_revisions(id) ON DELETE CASCADE,"
	"  position INTEGER NOT NULL,"
	"  version_id INTEGER NOT NULL REFERENCES versions(id),"
	"  ref TEXT NOT NULL, digest TEXT NOT NULL,"
	"  PRIMARY KEY (revision_id, position));"
	"CREATE INDEX deploy_revision_adapters_version ON deploy_revision_adapters(version_id);"
	/* The history: every change, with the revision current after it. */
	"CREATE TABLE deploy_events ("
	"  id INTEGER PRIMARY KEY,"
	"  deployment_id INTEGER NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,"
	"  at INTEGER NOT NULL, who TEXT NOT NULL,"
	"  action TEXT NOT NULL CHECK (action IN"
	"    ('create','set','follow','rollback','pin','unpin')),"
	"  why TEXT NOT NULL, revision INTEGER NOT NULL, from_revision INTEGER NOT NULL,"
	"  license TEXT NOT NULL);"
	"CREATE TABLE api_keys ("
	"  id INTEGER PRIMARY KEY,"
	"  key_id TEXT NOT NULL UNIQUE,"         /* public: owl-1a2b3c4d */
	"  hash TEXT NOT NULL UNIQUE,"           /* SHA-256 hex of the whole key */
	"  name TEXT NOT NULL,"
	"  created_by TEXT NOT NULL, created_at INTEGER NOT NULL,"
	"  revoked_at INTEGER, revoked_by TEXT);",
};

/* Refuses to remove a version that a revision (current or kept for a
 * rollback) of any deployment uses, as its model or as an adapter, naming
 * the deployments. Runs inside registry_version_remove's transaction. */
static int guard_remove(registry_store *s, const registry_version *v, owl_err *err)
{
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(db,
			       "SELECT DISTINCT d.name FROM deployments d"
			       " JOIN deploy_revisions r ON r.deployment_id = d.id"
			       " WHERE r.model_version_id = ?1 OR r.id IN"
			       "  (SELECT revision_id FROM deploy_revision_adapters WHERE version_id = ?1)"
			       " ORDER BY d.name", -1, &q, NULL) != SQLITE_OK) {
		owl_err_set(err, OWL_EFAIL, "cannot check the deployments that use %s@%d: %s",
			    v->model, v->number, sqlite3_errmsg(db));
		sqlite3_finalize(q);
		return OWL_EFAIL;
	}
	sqlite3_bind_int64(q, 1, v->id);
	owl_buf names;
	owl_buf_init(&names, 4096);
	int n = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		if (n < 20)
			owl_buf_printf(&names, "%s%s", n ? ", " : "", sqlite3_column_text(q, 0));
		n++;
	}
	sqlite3_finalize(q);
	int rc = 0;
	if (n > 0)
		rc = owl_err_set(err, OWL_EDENIED, "refusing to remove %s@%d: deployment%s %s%s use%s "
				 "it (as the current revision or one kept for rollback); change or "
				 "remove %s first (owl deploy set, owl deploy rm)", v->model, v->number,
				 n == 1 ? "" : "s", names.data, n > 20 ? ", ..." : "", n == 1 ? "s" : "",
				 n == 1 ? "it" : "them");
	owl_buf_release(&names);
	return rc;
}

int deploy_migrate(registry_store *s, owl_err *err)
{
	int rc = registry_store_migrate(s, DEPLOY_SCHEMA_MODULE, steps,
					(int)(sizeof steps / sizeof steps[0]), err);
	if (!rc)
		registry_store_add_remove_guard(s, guard_remove);
	return rc;
}

int deploy_valid_name(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || (c != '-' && c != '_' && c != '.')))
			return 0;
	}
	return 1;
}

int deploy_valid_use(const char *use)
{
	return strcmp(use, "commercial") == 0 || strcmp(use, "internal") == 0 ||
	       strcmp(use, "research") == 0;
}
