/* Catalog lookups: facts by id, and card values to catalog ids. */
#define _GNU_SOURCE
#include "internal.h"

#include <string.h>
#include <strings.h>

static void col_copy(sqlite3_stmt *q, int i, char *dst, size_t n)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	snprintf(dst, n, "%s", t ? (const char *)t : "");
}

int license_catalog_get(registry_store *s, const char *id, license_facts *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s,
			   "SELECT id, name, category, commercial, COALESCE(mau_limit,0), derivatives,"
			   " flow_down, outputs_train, attribution, name_prefix, link, summary"
			   " FROM license_catalog WHERE id=?", &q, err);
	if (rc)
		return rc;
	sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
	int step = sqlite3_step(q);
	int found = step == SQLITE_ROW;
	if (found) {
		col_copy(q, 0, out->id, sizeof out->id);
		col_copy(q, 1, out->name, sizeof out->name);
		col_copy(q, 2, out->category, sizeof out->category);
		out->commercial = sqlite3_column_int(q, 3);
		out->mau_limit = sqlite3_column_int64(q, 4);
		out->derivatives = sqlite3_column_int(q, 5);
		out->flow_down = sqlite3_column_int(q, 6);
		out->outputs_train = sqlite3_column_int(q, 7);
		col_copy(q, 8, out->attribution, sizeof out->attribution);
		col_copy(q, 9, out->name_prefix, sizeof out->name_prefix);
		col_copy(q, 10, out->link, sizeof out->link);
		col_copy(q, 11, out->summary, sizeof out->summary);
	}
	sqlite3_finalize(q);
	if (step != SQLITE_ROW && step != SQLITE_DONE)
		return owl_err_set(err, OWL_EFAIL, "cannot read the license catalog: %s",
				   sqlite3_errmsg(registry_store_db(s)));
	if (!found)
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not in the license catalog (see 'owl "
				   "license catalog')", id);
	return 0;
}

const char *license_catalog_resolve_alias(registry_store *s, const char *value, char *buf,
					  size_t buflen)
{
	/* Card values vary in case and separators: "Apache-2.0", "llama3_1". */
	char norm[128];
	size_t n = 0;
	for (const char *c = value; *c && n + 1 < sizeof norm; c++)
		norm[n++] = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
	norm[n] = 0;
	while (n > 0 && (norm[n - 1] == ' ' || norm[n - 1] == '\t'))
		norm[--n] = 0;
	if (!n)
		return NULL;
	sqlite3_stmt *q = NULL;
	/* instr, not LIKE: a card value is untrusted and may hold '%'. A
	 * catalog that cannot be read recognises nothing. */
	if (registry_store_prepare(s, "SELECT id FROM license_catalog WHERE id=?1"
				   " OR instr(aliases, ',' || ?1 || ',') > 0 LIMIT 1", &q, NULL))
		return NULL;
	sqlite3_bind_text(q, 1, norm, -1, SQLITE_STATIC);
	const char *out = NULL;
	if (sqlite3_step(q) == SQLITE_ROW) {
		snprintf(buf, buflen, "%s", (const char *)sqlite3_column_text(q, 0));
		out = buf;
	}
	sqlite3_finalize(q);
	return out;
}
