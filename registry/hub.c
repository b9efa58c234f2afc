/* The Hugging Face Hub's HTTP API, as documented: the file listing of a
 * repository at a revision (GET /api/models/REPO/tree/REV?recursive=true,
 * paginated with Link: rel="next"), the commit a revision resolves to, and
 * the URL of a file's bytes (/REPO/resolve/REV/PATH). */
#define _GNU_SOURCE
#include "registry.h"
#include "source_internal.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HUB_MAX_BODY (64u << 20) /* a listing of 100k files is ~20 MB */
#define HUB_MAX_PAGES 1000

typedef struct response {
	owl_buf body;
	long status;
	char error_code[64];  /* X-Error-Code */
	char error_msg[256];  /* X-Error-Message */
	char commit[128];     /* X-Repo-Commit */
	char *next;           /* Link: <...>; rel="next" */
} response;

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
	response *r = ud;
	return owl_buf_append(&r->body, buf, size * n) == 0 ? size * n : 0;
}

static void header_value(const char *buf, size_t len, const char *key, char *out, size_t outlen)
{
	size_t kl = strlen(key);
	if (len <= kl || strncasecmp(buf, key, kl) != 0)
		return;
	const char *v = buf + kl;
	while (*v == ' ')
		v++;
	size_t vl = strcspn(v, "\r\n");
	snprintf(out, outlen, "%.*s", (int)vl, v);
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	response *r = ud;
	size_t len = size * n;
	header_value(buf, len, "x-error-code:", r->error_code, sizeof r->error_code);
	header_value(buf, len, "x-error-message:", r->error_msg, sizeof r->error_msg);
	header_value(buf, len, "x-repo-commit:", r->commit, sizeof r->commit);
	char link[2048] = "";
	header_value(buf, len, "link:", link, sizeof link);
	if (link[0]) {
		/* <https://...>; rel="next", <...>; rel="prev" */
		for (char *p = link; (p = strchr(p, '<'));) {
			char *end = strchr(p, '>');
			if (!end)
				break;
			if (strstr(end, "rel=\"next\"") && (strchr(end, ',') == NULL ||
							    strstr(end, "rel=\"next\"") < strchr(end, ','))) {
				free(r->next);
				r->next = owl_xasprintf("%.*s", (int)(end - p - 1), p + 1);
				break;
			}
			p = end;
		}
	}
	return len;
}

static int hub_get(const registry_fetch_opts *o, const char *url, response *r, owl_err *err)
{
	memset(r, 0, sizeof *r);
	owl_buf_init(&r->body, HUB_MAX_BODY);
	CURL *e = curl_easy_init();
	char cerr[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	registry_curl_defaults(e, o, cerr);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	struct curl_slist *h = NULL;
	if (o->bearer_token) {
		char *line = owl_xasprintf("Authorization: Bearer %s", o->bearer_token);
		h = curl_slist_append(h, line);
		free(line);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
	}
	int rc = 0;
	int max_retries = o->max_retries ? o->max_retries : 5;
	for (int attempt = 1;; attempt++) {
		r->body.len = 0;
		CURLcode c = curl_easy_perform(e);
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
		int transient = c == CURLE_COULDNT_CONNECT || c == CURLE_OPERATION_TIMEDOUT ||
				c == CURLE_RECV_ERROR || c == CURLE_GOT_NOTHING ||
				(c == CURLE_OK && (r->status >= 500 || r->status == 429));
		if (transient && attempt <= max_retries) {
			struct timespec ts = {0, 250000000L * attempt};
			nanosleep(&ts, NULL);
			continue;
		}
		if (c == CURLE_WRITE_ERROR)
			rc = owl_err_set(err, OWL_EFAIL, "the hub's answer is larger than %u MiB",
					 HUB_MAX_BODY >> 20);
		else if (c != CURLE_OK)
			rc = owl_err_set(err, OWL_EFAIL, "cannot reach the hub: %s%s",
					 cerr[0] ? cerr : curl_easy_strerror(c),
					 c == CURLE_PEER_FAILED_VERIFICATION
						 ? " (for a private CA pass --ca-cert FILE)" : "");
		break;
	}
	curl_slist_free_all(h);
	curl_easy_cleanup(e);
	return rc;
}

static void response_release(response *r)
{
	owl_buf_release(&r->body);
	free(r->next);
	r->next = NULL;
}

/* The hub's answers to failures, each with what to do about it. */
static int hub_error(const response *r, const char *repo, const char *revision, owl_err *err)
{
	const char *code = r->error_code;
	if (strcmp(code, "GatedRepo") == 0 || ((r->status == 401 || r->status == 403) && !*code &&
					       strstr(r->error_msg, "gated")))
		return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s: HTTP %ld (gated model): "
				   "accept its terms on the hub, then set OWL_HF_TOKEN to a token of "
				   "that account", repo, r->status);
	if (strcmp(code, "RevisionNotFound") == 0)
		return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s@%s: the repository has no "
				   "revision '%s' (HTTP 404; check the branch, tag or commit)", repo,
				   revision, revision);
	if (strcmp(code, "EntryNotFound") == 0)
		return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s@%s: file not found in the "
				   "repository (HTTP 404)", repo, revision);
	if (strcmp(code, "RepoNotFound") == 0 || r->status == 404)
		return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s: no such repository (HTTP 404; "
				   "a private repository also answers 404 without a token: set "
				   "OWL_HF_TOKEN)", repo);
	if (r->status == 401 || r->status == 403)
		return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s: HTTP %ld (not authorised): "
				   "set OWL_HF_TOKEN to a token that can read it", repo, r->status);
	return owl_err_set(err, OWL_EFAIL, "cannot pull hf://%s: the hub answered HTTP %ld%s%s",
			   repo, r->status, r->error_msg[0] ? ": " : "", r->error_msg);
}

/* ---- paths a server names ------------------------------------------------ */

#define REMOTE_PATH_MAX 1024
#define REMOTE_NAME_MAX 255

int registry_remote_path_check(const char *path, const char **why)
{
	const char *reason = NULL;
	size_t len = strlen(path);
	if (len == 0)
		reason = "it is empty";
	else if (len > REMOTE_PATH_MAX)
		reason = "it is longer than 1024 bytes";
	else if (path[0] == '/')
		reason = "it is absolute";
	else if (strchr(path, '\\'))
		reason = "it has a backslash";
	for (const char *c = path; !reason && *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			reason = "it has a control character";
	for (const char *c = path; !reason && *c;) {
		size_t n = strcspn(c, "/");
		if (n == 0)
			reason = "it has an empty component ('//' or a trailing '/')";
		else if (n == 1 && c[0] == '.')
			reason = "it has a '.' component";
		else if (n == 2 && c[0] == '.' && c[1] == '.')
			reason = "it has a '..' component";
		else if (n > REMOTE_NAME_MAX)
			reason = "a component is longer than 255 bytes";
		c += n;
		if (*c == '/')
			c++;
	}
	/* The staging folder's own rule has the last word, so that the two can
	 * never disagree about what stays inside. */
	if (!reason && !registry_relpath_check(path))
		reason = "it does not stay inside the checkpoint";
	if (why)
		*why = reason;
	return reason == NULL;
}

/* A copy of a hostile path that is safe to print: control characters become
 * '?', and it is cut at 96 bytes. */
static void printable(const char *s, char *out, size_t outlen)
{
	size_t i = 0;
	for (; s[i] && i + 4 < outlen && i < 96; i++)
		out[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
	if (s[i] && i + 4 < outlen)
		out[i++] = '.', out[i++] = '.', out[i++] = '.';
	out[i] = 0;
}

/* Appends one page of the tree listing's JSON array to out. Every path is
 * checked here, before anything is downloaded: a listing is the server's
 * word, and a hostile one names paths outside the data home. */
static int parse_tree_page(const char *text, size_t len, registry_hub_listing *out, size_t *cap,
			   owl_err *err)
{
	json_error_t je;
	json_t *arr = json_loadb(text, len, 0, &je);
	if (!json_is_array(arr)) {
		json_decref(arr);
		return owl_err_set(err, OWL_EFAIL, "the hub's file listing is not a JSON array "
				   "(line %d: %s)", je.line, je.text);
	}
	size_t i;
	json_t *it;
	json_array_foreach(arr, i, it) {
		const char *type = json_string_value(json_object_get(it, "type"));
		const char *path = json_string_value(json_object_get(it, "path"));
		if (!type || !path || strcmp(type, "file") != 0)
			continue;
		json_t *size = json_object_get(it, "size");
		json_t *lfs = json_object_get(it, "lfs");
		const char *lfs_oid = json_string_value(json_object_get(lfs, "oid"));
		const char *oid = json_string_value(json_object_get(it, "oid"));
		/* The message is built before json_decref frees `path`. */
		int rc = 0;
		const char *why = NULL;
		char shown[128];
		if (!registry_remote_path_check(path, &why)) {
			printable(path, shown, sizeof shown);
			rc = owl_err_set(err, OWL_EINTEGRITY, "the hub's listing names an unsafe file "
					 "path '%s': %s; nothing was downloaded", shown, why);
		} else if (!json_is_integer(size) || json_integer_value(size) < 0)
			rc = owl_err_set(err, OWL_EFAIL, "the hub's listing gives no size for '%s'", path);
		else if (lfs_oid && !owl_is_hex_digest(lfs_oid, 64))
			rc = owl_err_set(err, OWL_EFAIL, "the hub's listing gives '%s' an LFS oid that "
					 "is not a sha256 digest", path);
		if (rc) {
			json_decref(arr);
			return rc;
		}
		if (out->n == *cap) {
			*cap = *cap ? 2 * *cap : 64;
			out->entries = owl_xrealloc(out->entries, *cap * sizeof *out->entries);
		}
		registry_hub_entry *e = &out->entries[out->n++];
		e->path = owl_xstrdup(path);
		e->size = (uint64_t)json_integer_value(size);
		e->sha256 = lfs_oid ? owl_xstrdup(lfs_oid) : NULL;
		e->oid = oid ? owl_xstrdup(oid) : NULL;
	}
	json_decref(arr);
	return 0;
}

/* A revision is one URL segment: a branch such as refs/pr/1 goes as
 * refs%2Fpr%2F1, as the hub expects. */
static char *escape_revision(const char *rev)
{
	CURL *e = curl_easy_init();
	char *q = curl_easy_escape(e, rev, 0);
	char *out = owl_xstrdup(q ? q : "");
	curl_free(q);
	curl_easy_cleanup(e);
	return out;
}

static char *escape_path(const char *p)
{
	/* Paths may hold characters URLs reserve; keep '/'. */
	CURL *e = curl_easy_init();
	owl_buf b;
	owl_buf_init(&b, 1u << 16);
	const char *c = p;
	while (*c) {
		size_t n = strcspn(c, "/");
		char *part = curl_easy_escape(e, c, (int)n);
		owl_buf_printf(&b, "%s", part);
		curl_free(part);
		c += n;
		if (*c == '/') {
			owl_buf_printf(&b, "/");
			c++;
		}
	}
	curl_easy_cleanup(e);
	return b.len ? owl_buf_steal(&b) : owl_xstrdup("");
}

int registry_hub_parse_listing(const char *text, size_t len, registry_hub_listing *out,
			       owl_err *err)
{
	size_t cap = out->n;
	int rc = parse_tree_page(text, len, out, &cap, err);
	if (rc)
		registry_hub_listing_release(out);
	return rc;
}

char *registry_hub_file_url(const char *endpoint, const char *repo, const char *revision,
			    const char *path)
{
	char *rev = escape_revision(revision);
	char *p = escape_path(path);
	char *url = owl_xasprintf("%s/%s/resolve/%s/%s", endpoint, repo, rev, p);
	free(rev);
	free(p);
	return url;
}

int registry_hub_list(const registry_fetch_opts *opts, const char *endpoint, const char *repo,
		      const char *revision, registry_hub_listing *out, owl_err *err)
{
	static const registry_fetch_opts defaults;
	if (!opts)
		opts = &defaults;
	memset(out, 0, sizeof *out);
	registry_curl_global_init();
	char *rev = escape_revision(revision);
	char *url = owl_xasprintf("%s/api/models/%s/tree/%s?recursive=true", endpoint, repo, rev);
	size_t cap = 0;
	int rc = 0;
	for (int page = 0; url && rc == 0; page++) {
		if (page == HUB_MAX_PAGES) {
			rc = owl_err_set(err, OWL_EFAIL, "the hub's listing of %s has more than %d pages",
					 repo, HUB_MAX_PAGES);
			break;
		}
		response r;
		rc = hub_get(opts, url, &r, err);
		if (!rc && r.status != 200)
			rc = hub_error(&r, repo, revision, err);
		if (!rc)
			rc = parse_tree_page(r.body.data ? r.body.data : "", r.body.len, out, &cap, err);
		if (!rc && r.commit[0] && !out->commit)
			out->commit = owl_xstrdup(r.commit);
		free(url);
		url = (!rc && r.next) ? owl_xstrdup(r.next) : NULL;
		response_release(&r);
	}
	free(url);
	if (!rc && !out->commit) {
		/* The revision endpoint names the commit: {"sha": "..."}. */
		char *rurl = owl_xasprintf("%s/api/models/%s/revision/%s", endpoint, repo, rev);
		response r;
		rc = hub_get(opts, rurl, &r, err);
		if (!rc && r.status != 200)
			rc = hub_error(&r, repo, revision, err);
		if (!rc) {
			json_t *o = json_loadb(r.body.data ? r.body.data : "", r.body.len, 0, NULL);
			const char *sha = json_string_value(json_object_get(o, "sha"));
			if (sha && strlen(sha) >= 7 && strlen(sha) <= 64)
				out->commit = owl_xstrdup(sha);
			else if (r.commit[0])
				out->commit = owl_xstrdup(r.commit);
			json_decref(o);
		}
		response_release(&r);
		free(rurl);
	}
	free(rev);
	if (rc)
		registry_hub_listing_release(out);
	return rc;
}

void registry_hub_listing_release(registry_hub_listing *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->entries[i].path);
		free(l->entries[i].sha256);
		free(l->entries[i].oid);
	}
	free(l->entries);
	free(l->commit);
	memset(l, 0, sizeof *l);
}
