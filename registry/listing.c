/* Listings of what the registry holds (versions, tags, their history) and
 * checking a reference out as a folder: the reads that the CLI, a server
 * and other modules share, returned as plain structs the caller frees. */
#include "store_impl.h"

#include <stdlib.h>
#include <string.h>

static char *col_dup(sqlite3_stmt *q, int i)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	return t ? owl_xstrdup((const char *)t) : NULL;
}

/* The statement stopped on an error rather than after its last row. */
static int read_failed(registry_store *s, int step, const char *what, owl_err *err)
{
	if (step == SQLITE_DONE)
		return 0;
	return owl_err_set(err, OWL_EFAIL, "cannot list %s: %s", what, sqlite3_errmsg(s->db));
}

void registry_strings_free(char **v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i]);
	free(v);
}

static void strings_push(char ***v, size_t *n, size_t *cap, const char *s)
{
	if (*n == *cap) {
		*cap = *cap ? 2 * *cap : 4;
		*v = owl_xrealloc(*v, *cap * sizeof **v);
	}
	(*v)[(*n)++] = owl_xstrdup(s);
}

int registry_version_tags(registry_store *s, int64_t version_id, char ***tags_out, size_t *n,
			  owl_err *err)
{
	*tags_out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s, "SELECT tag FROM tags WHERE version_id=? ORDER BY tag", &q,
					err);
	if (rc)
		return rc;
	sqlite3_bind_int64(q, 1, version_id);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW)
		strings_push(tags_out, n, &cap, (const char *)sqlite3_column_text(q, 0));
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "tags", err))) {
		registry_strings_free(*tags_out, *n);
		*tags_out = NULL;
		*n = 0;
	}
	return rc;
}

void registry_version_infos_free(registry_version_info *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) {
		free(v[i].model);
		free(v[i].format);
		free(v[i].source);
		free(v[i].config_json);
		registry_strings_free(v[i].tags, v[i].ntags);
	}
	free(v);
}

int registry_list_versions(registry_store *s, const char *model, registry_version_info **out,
			   size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	/* Tags come in a second query per version rather than a group_concat, so
	 * that a tag is never split on a separator. */
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s,
			   "SELECT v.id, m.name, v.version, v.format, v.total_bytes, v.created_at,"
			   " v.source, v.config_json FROM versions v JOIN models m ON m.id=v.model_id"
			   " WHERE ?1 IS NULL OR m.name=?1 ORDER BY m.name, v.version", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, model, -1, SQLITE_STATIC);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = owl_xrealloc(*out, cap * sizeof **out);
		}
		registry_version_info *v = &(*out)[(*n)++];
		memset(v, 0, sizeof *v);
		v->id = sqlite3_column_int64(q, 0);
		v->model = col_dup(q, 1);
		v->number = sqlite3_column_int(q, 2);
		v->format = col_dup(q, 3);
		v->total_bytes = (uint64_t)sqlite3_column_int64(q, 4);
		v->created_at = sqlite3_column_int64(q, 5);
		v->source = col_dup(q, 6);
		v->config_json = col_dup(q, 7);
	}
	sqlite3_finalize(q);
	rc = read_failed(s, step, "versions", err);
	for (size_t i = 0; !rc && i < *n; i++)
		rc = registry_version_tags(s, (*out)[i].id, &(*out)[i].tags, &(*out)[i].ntags, err);
	if (rc) {
		registry_version_infos_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

void registry_tag_moves_free(registry_tag_move *m, size_t n)
{
	for (size_t i = 0; m && i < n; i++)
		free(m[i].tag);
	free(m);
}

int registry_tag_history(registry_store *s, const char *model, registry_tag_move **out,
			 size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *q;
	int rc = registry_store_prepare(s,
			   "SELECT h.tag, h.at, COALESCE(ov.version,0), COALESCE(nv.version,0)"
			   " FROM tag_history h JOIN models m ON m.id=h.model_id"
			   " LEFT JOIN versions ov ON ov.id=h.old_version_id"
			   " LEFT JOIN versions nv ON nv.id=h.new_version_id"
			   " WHERE m.name=? ORDER BY h.id", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, model, -1, SQLITE_STATIC);
	size_t cap = 0;
	int step;
	while ((step = sqlite3_step(q)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			*out = owl_xrealloc(*out, cap * sizeof **out);
		}
		registry_tag_move *m = &(*out)[(*n)++];
		m->tag = col_dup(q, 0);
		m->at = sqlite3_column_int64(q, 1);
		m->from = sqlite3_column_int(q, 2);
		m->to = sqlite3_column_int(q, 3);
	}
	sqlite3_finalize(q);
	if ((rc = read_failed(s, step, "the tag history", err))) {
		registry_tag_moves_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return rc;
}

/* ---- checking a reference out as a folder ------------------------------- */

int registry_checkout(registry_store *s, const char *ref, registry_version *v_out,
		      char **dir_out, owl_err *err)
{
	*dir_out = NULL;
	registry_version v;
	int rc = registry_resolve(s, ref, &v, err);
	if (!rc)
		rc = registry_version_materialize(s, &v, dir_out, err);
	if (rc || !v_out)
		registry_version_release(&v);
	else
		*v_out = v;
	return rc;
}

int registry_checkout_adapter(registry_store *s, const char *ref, int64_t base_version_id,
			      const char *base_label, registry_version *v_out, char **dir_out,
			      owl_err *err)
{
	*dir_out = NULL;
	registry_version v, base = {0};
	int rc = registry_resolve(s, ref, &v, err);
	if (rc)
		return rc;
	if (strcmp(v.format, "adapter") != 0) {
		rc = owl_err_set(err, OWL_EUSAGE, "%s@%d is a %s version, not an adapter", v.model,
				 v.number, v.format);
	} else if (!v.parent_id) {
		rc = owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d names no base", v.model, v.number);
	} else if (v.parent_id != base_version_id) {
		int known = registry_version_by_id(s, v.parent_id, &base, NULL) == 0;
		char *bl = known ? owl_xasprintf("%s@%d", base.model, base.number) : owl_xstrdup("?");
		if (!base_version_id)
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d derives from %s, and the "
					 "model '%s' is a path, not a registered version", v.model,
					 v.number, bl, base_label);
		else
			rc = owl_err_set(err, OWL_EUSAGE, "the adapter %s@%d derives from %s, not from "
					 "%s", v.model, v.number, bl, base_label);
		free(bl);
		registry_version_release(&base);
	}
	if (!rc)
		rc = registry_version_materialize(s, &v, dir_out, err);
	if (rc || !v_out)
		registry_version_release(&v);
	else
		*v_out = v;
	return rc;
}
