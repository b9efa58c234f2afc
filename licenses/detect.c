/* Detection: every place a checkpoint states its license becomes a finding
 * with its evidence and a confidence. Findings are never merged silently:
 * when two of them name different licenses, that is a conflict for a human
 * (or a rule) to settle. */
#define _GNU_SOURCE
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/gguf.h"
#include "common/safetensors.h"

/* ---- model card front matter -------------------------------------------- */

/* Copies a YAML scalar: strips quotes, trailing comments and spaces. */
static void scalar(const char *v, size_t n, char *out, size_t outlen)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	if (n && (v[0] == '"' || v[0] == '\'')) {
		/* Quoted: the value ends at the closing quote; a comment may follow. */
		const char *close = memchr(v + 1, v[0], n - 1);
		if (close) {
			n = (size_t)(close - v - 1);
			v++;
		}
	} else {
		const char *hash = memchr(v, '#', n);
		if (hash && (hash == v || hash[-1] == ' ' || hash[-1] == '\t'))
			n = (size_t)(hash - v);
		while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r'))
			n--;
	}
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, v, n);
	out[n] = 0;
}

void license_parse_card(const char *text, size_t len, license_card *out)
{
	memset(out, 0, sizeof *out);
	size_t i = 0;
	if (len >= 3 && (unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB &&
	    (unsigned char)text[2] == 0xBF)
		i = 3;
	if (len - i < 4 || strncmp(text + i, "---", 3) != 0)
		return;
	i += 3;
	while (i < len && text[i] != '\n')
		i++;
	i++;
	out->has_front_matter = 1;
	char *pending = NULL; /* a key whose value is the list that follows */
	size_t pending_len = 0;
	while (i < len) {
		size_t e = i;
		while (e < len && text[e] != '\n')
			e++;
		const char *line = text + i;
		size_t n = e - i;
		i = e + 1;
		if (n >= 3 && strncmp(line, "---", 3) == 0)
			break;
		if (n && line[0] == '-' && pending) {
			/* "- value" under a list key: take the first item only. */
			if (pending_len == strlen("base_model") && !out->base_model[0])
				scalar(line + 1, n - 1, out->base_model, sizeof out->base_model);
			continue;
		}
		if (n && (line[0] == ' ' || line[0] == '\t')) {
			/* An indented list item ("  - x") or a nested mapping. */
			size_t k = 0;
			while (k < n && (line[k] == ' ' || line[k] == '\t'))
				k++;
			if (pending && k < n && line[k] == '-' && pending_len == strlen("base_model") &&
			    !out->base_model[0])
				scalar(line + k + 1, n - k - 1, out->base_model, sizeof out->base_model);
			continue;
		}
		pending = NULL;
		const char *colon = memchr(line, ':', n);
		if (!colon)
			continue;
		size_t klen = (size_t)(colon - line);
		const char *val = colon + 1;
		size_t vlen = n - klen - 1;
		char value[512];
		scalar(val, vlen, value, sizeof value);
		struct { const char *key; char *dst; size_t cap; } keys[] = {
			{"license", out->license, sizeof out->license},
			{"license_name", out->license_name, sizeof out->license_name},
			{"license_link", out->license_link, sizeof out->license_link},
			{"base_model", out->base_model, sizeof out->base_model},
		};
		for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
			if (klen != strlen(keys[k].key) || strncmp(line, keys[k].key, klen) != 0)
				continue;
			if (value[0])
				snprintf(keys[k].dst, keys[k].cap, "%s", value);
			else {
				pending = (char *)keys[k].key;
				pending_len = klen;
			}
		}
	}
}

/* ---- findings ----------------------------------------------------------- */

static void add_finding(license_findings *f, const char *id, const char *source, double conf,
			const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add_finding(license_findings *f, const char *id, const char *source, double conf,
			const char *fmt, ...)
{
	if (f->n == f->cap) {
		f->cap = f->cap ? 2 * f->cap : 8;
		f->items = owl_xrealloc(f->items, f->cap * sizeof *f->items);
	}
	license_finding *x = &f->items[f->n++];
	memset(x, 0, sizeof *x);
	snprintf(x->license_id, sizeof x->license_id, "%s", id);
	snprintf(x->source, sizeof x->source, "%s", source);
	x->confidence = conf;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->evidence, sizeof x->evidence, fmt, ap);
	va_end(ap);
}

static void detect_card(registry_store *s, const char *dir, license_findings *f)
{
	char *path = owl_path_join(dir, "README.md");
	char *text = NULL;
	size_t len = 0;
	int rc = owl_read_file(path, 4u << 20, &text, &len, NULL);
	free(path);
	if (rc)
		return;
	license_card c;
	license_parse_card(text, len, &c);
	free(text);
	if (!c.has_front_matter)
		return;
	snprintf(f->base_model, sizeof f->base_model, "%s", c.base_model);
	char buf[64];
	if (c.license[0] && strcasecmp(c.license, "other") != 0) {
		const char *id = license_catalog_resolve_alias(s, c.license, buf, sizeof buf);
		if (id)
			add_finding(f, id, "card", 0.9, "README.md front matter: license: %s", c.license);
		else
			add_finding(f, "other", "card", 0.5, "README.md front matter: license: %s "
				    "(not in the catalog)", c.license);
	}
	if (c.license_name[0]) {
		const char *id = license_catalog_resolve_alias(s, c.license_name, buf, sizeof buf);
		add_finding(f, id ? id : "other", "card-name", id ? 0.8 : 0.4,
			    "README.md front matter: license: %s, license_name: %s%s",
			    c.license[0] ? c.license : "(none)", c.license_name,
			    id ? "" : " (not in the catalog)");
	} else if (strcasecmp(c.license, "other") == 0) {
		add_finding(f, "other", "card", 0.4, "README.md front matter: license: other, with "
			    "no license_name%s%s", c.license_link[0] ? "; license_link: " : "",
			    c.license_link);
	}
}

/* LICENSE, LICENSE.txt, LICENSE.md, USE_POLICY.md, any case. */
static int is_license_file(const char *name)
{
	static const char *const names[] = {"license", "license.txt", "license.md", "licence",
					    "licence.txt", "licence.md", "use_policy.md",
					    "license-model", "license.weights.txt", "notice"};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcasecmp(name, names[i]) == 0)
			return 1;
	return 0;
}

static void detect_text_file(const char *dir, const char *name, license_findings *f)
{
	char *path = owl_path_join(dir, name);
	char *text = NULL;
	size_t len = 0;
	int rc = owl_read_file(path, 1u << 20, &text, &len, NULL);
	free(path);
	if (rc) {
		add_finding(f, "other", "license-file", 0.2, "%s: unreadable or larger than 1 MiB",
			    name);
		return;
	}
	char id[64];
	double score = 0;
	int near = 0;
	license_recognise_text(text, len, id, sizeof id, &score, &near);
	free(text);
	if (strncmp(id, "use-policy:", 11) == 0) {
		if (!near)
			add_finding(f, "", "use-policy", 0.9, "%s: the acceptable use policy of %s "
				    "(text match %.0f%%)", name, id + 11, score * 100);
		else
			add_finding(f, "", "use-policy", 0.5, "%s: resembles the acceptable use policy "
				    "of %s but differs (%.0f%% similar)", name, id + 11, score * 100);
	} else if (id[0] && !near) {
		add_finding(f, id, "license-file", 0.95, "%s: the text of %s (text match %.0f%%)",
			    name, id, score * 100);
	} else if (id[0]) {
		add_finding(f, "other", "license-file", 0.6, "%s: resembles %s (%.0f%% similar) but "
			    "adds or changes terms, so it is not %s", name, id, score * 100, id);
	} else {
		add_finding(f, "other", "license-file", 0.3, "%s: a license text owl does not "
			    "recognise", name);
	}
}

/* GGUF general.license (and .name/.link), read from the metadata only. */
static void detect_gguf(registry_store *s, const char *dir, const char *name,
			license_findings *f)
{
	char *path = owl_path_join(dir, name);
	gguf_file *g = NULL;
	char lic[128] = "", lname[128] = "";
	if (gguf_open(path, &g, NULL) == 0) {
		const char *v = NULL;
		if (gguf_get_str(g, "general.license", &v) == 0)
			snprintf(lic, sizeof lic, "%s", v);
		if (gguf_get_str(g, "general.license.name", &v) == 0)
			snprintf(lname, sizeof lname, "%s", v);
		gguf_close(g);
	} else {
		add_finding(f, "other", "gguf", 0.1, "%s: the GGUF metadata could not be read", name);
	}
	free(path);
	char buf[64];
	if (lic[0] && strcasecmp(lic, "other") != 0) {
		const char *id = license_catalog_resolve_alias(s, lic, buf, sizeof buf);
		add_finding(f, id ? id : "other", "gguf", id ? 0.85 : 0.4,
			    "%s: general.license = %s%s", name, lic, id ? "" : " (not in the catalog)");
	}
	if (lname[0]) {
		const char *id = license_catalog_resolve_alias(s, lname, buf, sizeof buf);
		add_finding(f, id ? id : "other", "gguf", id ? 0.75 : 0.4,
			    "%s: general.license.name = %s", name, lname);
	}
}

static void detect_safetensors(registry_store *s, const char *dir, const char *name,
			       license_findings *f)
{
	char *path = owl_path_join(dir, name);
	st_file *sf = NULL;
	if (st_open(path, &sf, NULL) == 0) {
		const char *lic = st_metadata_get(sf, "license");
		char buf[64];
		if (lic && *lic) {
			const char *id = license_catalog_resolve_alias(s, lic, buf, sizeof buf);
			add_finding(f, id ? id : "other", "safetensors", id ? 0.8 : 0.4,
				    "%s: __metadata__ license = %s", name, lic);
		}
	}
	st_close(sf);
	free(path);
}

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}


/* The summary line: one id, a conflict, or unknown. */
static void summarise(license_findings *f)
{
	const char *first = NULL;
	int conflict = 0;
	owl_buf ids, sources;
	owl_buf_init(&ids, 512);
	owl_buf_init(&sources, 512);
	for (size_t i = 0; i < f->n; i++) {
		const license_finding *x = &f->items[i];
		if (!x->license_id[0] || x->confidence < 0.5)
			continue;
		if (!first) {
			first = x->license_id;
		} else if (strcmp(first, x->license_id) != 0) {
			conflict = 1;
		}
		if (!ids.data || !strstr(ids.data, x->license_id))
			owl_buf_printf(&ids, "%s%s", ids.len ? " vs " : "", x->license_id);
		owl_buf_printf(&sources, "%s%s", sources.len ? ", " : "", x->source);
	}
	if (!first)
		snprintf(f->summary, sizeof f->summary, "unknown (no license statement found)");
	else if (conflict)
		snprintf(f->summary, sizeof f->summary, "conflict: %s", ids.data);
	else
		snprintf(f->summary, sizeof f->summary, "%s (%s)", first, sources.data);
	owl_buf_release(&ids);
	owl_buf_release(&sources);
}

int license_detect_dir(registry_store *s, const char *dir, license_findings **out, owl_err *err)
{
	*out = NULL;
	license_findings *f = owl_xcalloc(1, sizeof *f);
	detect_card(s, dir, f);
	char **names = NULL;
	size_t n = 0;
	if (owl_list_dir(dir, &names, &n, err)) {
		license_findings_free(f);
		return owl_err_wrap(err, "license detection");
	}
	int st_done = 0;
	for (size_t i = 0; i < n; i++) {
		if (is_license_file(names[i]))
			detect_text_file(dir, names[i], f);
		else if (has_suffix(names[i], ".gguf"))
			detect_gguf(s, dir, names[i], f);
		else if (has_suffix(names[i], ".safetensors") && !st_done) {
			/* Shards repeat the same metadata: the first one says it. */
			detect_safetensors(s, dir, names[i], f);
			st_done = 1;
		}
	}
	owl_free_names(names, n);
	summarise(f);
	*out = f;
	return 0;
}

void license_findings_free(license_findings *f)
{
	if (!f)
		return;
	free(f->items);
	free(f);
}

const char *license_findings_summary(const license_findings *f)
{
	return f->summary;
}

int license_findings_store(registry_store *s, int64_t version_id, const license_findings *f,
			   owl_err *err)
{
	sqlite3_stmt *q = NULL;
	int rc = registry_store_prepare(s, "INSERT INTO license_findings(version_id, license_id,"
					" source, evidence, confidence, created_at) VALUES (?,?,?,?,?,?)",
					&q, err);
	if (rc)
		return rc;
	for (size_t i = 0; i < f->n && !rc; i++) {
		sqlite3_reset(q);
		sqlite3_bind_int64(q, 1, version_id);
		sqlite3_bind_text(q, 2, f->items[i].license_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 3, f->items[i].source, -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 4, f->items[i].evidence, -1, SQLITE_STATIC);
		sqlite3_bind_double(q, 5, f->items[i].confidence);
		sqlite3_bind_int64(q, 6, owl_unix_time());
		if (sqlite3_step(q) != SQLITE_DONE)
			rc = owl_err_set(err, OWL_EFAIL, "cannot store license findings: %s",
					 sqlite3_errmsg(registry_store_db(s)));
	}
	sqlite3_finalize(q);
	return rc;
}
