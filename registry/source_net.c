/* Network sources: one file by URL, or a whole hub repository. Downloads go
 * to tmp/downloads/<key>.part with a key derived from what is fetched (URL,
 * or repository + commit + path), so that a pull interrupted by a kill
 * resumes where it stopped the next time the same thing is pulled. Every
 * path a server names is checked before any byte is written, and a finished
 * file is renamed straight into the staging folder, at a path below it. */
#define _GNU_SOURCE
#include "store_impl.h"
#include "source_internal.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* tmp/downloads/<sha256 of key>.part; caller frees. */
static char *partial_path(registry_store *s, const char *key, owl_err *err)
{
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int dl = 0;
	char hex[65];
	EVP_Digest(key, strlen(key), d, &dl, EVP_sha256(), NULL);
	owl_hex(d, dl, hex);
	char *dir = owl_path_join(s->tmp_dir, "downloads");
	if (owl_mkdir_p(dir, err) != 0) {
		free(dir);
		return NULL;
	}
	char *p = owl_xasprintf("%s/%s.part", dir, hex);
	free(dir);
	return p;
}

/* The URL as recorded and shown: without user:password@ and without the
 * query string, which may carry a signed token. */
static char *url_for_record(const char *url)
{
	const char *scheme_end = strstr(url, "://");
	const char *host = scheme_end ? scheme_end + 3 : url;
	const char *path = host + strcspn(host, "/?#");
	const char *at = memchr(host, '@', (size_t)(path - host));
	const char *host_start = at ? at + 1 : host;
	size_t path_len = strcspn(path, "?#");
	return owl_xasprintf("%.*s%.*s%.*s", (int)(host - url), url, (int)(path - host_start),
			     host_start, (int)path_len, path);
}

/* Where a download of `path` lands in the stage (its folders created);
 * caller frees. The path was checked already; it is checked again here,
 * right where it becomes a file name, so that no caller can skip it. */
static char *stage_target(registry_stage *st, const char *path, owl_err *err)
{
	const char *why = NULL;
	if (!registry_remote_path_check(path, &why)) {
		owl_err_set(err, OWL_EINTEGRITY, "refusing unsafe file path '%s': %s", path, why);
		return NULL;
	}
	char *dst = owl_path_join(st->files_dir, path);
	char *parent = owl_xstrdup(dst);
	*strrchr(parent, '/') = 0;
	int rc = owl_mkdir_p(parent, err);
	free(parent);
	if (rc) {
		free(dst);
		return NULL;
	}
	return dst;
}

int registry_stage_from_url(registry_store *s, const char *url, const registry_source_opts *o,
			    registry_stage **out, owl_err *err)
{
	*out = NULL;
	char *shown = url_for_record(url);
	/* The file name is the URL's own, never one a redirect or a
	 * Content-Disposition header suggests. */
	const char *base = strrchr(shown, '/');
	base = base && base[1] ? base + 1 : "download";
	const char *why = NULL;
	if (!registry_remote_path_check(base, &why)) {
		int code = owl_err_set(err, OWL_EUSAGE, "cannot pull %s: its file name '%s' is an "
				       "unsafe file name (%s)", shown, base, why);
		free(shown);
		return code;
	}
	registry_stage *st = NULL;
	int rc = registry_stage_new(s, shown, &st, err);
	if (rc) {
		free(shown);
		return rc;
	}
	st->default_name = registry_default_name(base);
	int archive = registry_is_archive_name(base);
	char *part = partial_path(s, url, err);
	char *dst = !part ? NULL : archive ? owl_path_join(st->dir, "archive")
					   : stage_target(st, base, err);
	if (!part || !dst) {
		rc = err ? err->code : OWL_EFAIL;
		free(part);
		free(dst);
		goto out;
	}
	registry_fetch_opts fo = {
		.ca_cert = o->ca_cert, .min_rate = o->min_rate, .progress = o->progress,
		.progress_ctx = o->progress_ctx, .cancelled = o->cancelled, .cancel_ctx = o->cancel_ctx,
	};
	registry_fetch_file f = {
		.url = url, .name = base, .expected_sha256 = o->expected_sha256, .tmp_path = part,
		.final_path = dst,
	};
	rc = registry_fetch_files(&fo, &f, 1, err);
	st->downloaded_bytes = f.bytes_transferred;
	if (!o->expected_sha256)
		st->self_checked_files = 1;
	if (!rc) {
		if (archive) {
			rc = registry_stage_extract(st, dst, base, err);
			unlink(dst);
		} else {
			rc = registry_stage_add(st, base, f.sha256, f.size, f.expected_sha256, err);
		}
	}
	registry_fetch_file_release(&f);
	free(part);
	free(dst);
	if (!rc)
		rc = registry_stage_validate(st, err);
out:
	free(shown);
	if (rc) {
		registry_stage_free(st);
		return rc;
	}
	*out = st;
	return 0;
}

static int is_pickle_name(const char *p)
{
	static const char *const ext[] = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"};
	for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
		if (has_suffix(p, ext[i]))
			return 1;
	return 0;
}

static int included(const char *path, const char *const *include)
{
	if (!include || !include[0])
		return 1;
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	for (size_t i = 0; include[i]; i++)
		if (owl_glob_match(include[i], path) || owl_glob_match(include[i], base))
			return 1;
	return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The same path twice would make two downloads share one partial file. */
static int listing_unique(const registry_hub_listing *l, const char *repo, owl_err *err)
{
	if (l->n < 2)
		return 0;
	const char **paths = owl_xcalloc(l->n, sizeof *paths);
	for (size_t i = 0; i < l->n; i++)
		paths[i] = l->entries[i].path;
	qsort(paths, l->n, sizeof *paths, cmp_str_ptr);
	int rc = 0;
	for (size_t i = 1; i < l->n && !rc; i++)
		if (strcmp(paths[i], paths[i - 1]) == 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "the hub's listing of %s names '%s' "
					 "twice; nothing was downloaded", repo, paths[i]);
	free(paths);
	return rc;
}

int registry_stage_from_hub(registry_store *s, const char *source, const registry_source_opts *o,
			    registry_stage **out, owl_err *err)
{
	*out = NULL;
	const char *spec = source + 5;
	const char *at = strchr(spec, '@');
	char *repo = at ? owl_xasprintf("%.*s", (int)(at - spec), spec) : owl_xstrdup(spec);
	char *revision = owl_xstrdup(at && at[1] ? at + 1 : "main");
	const char *slash = strchr(repo, '/');
	int rc = 0;
	registry_stage *st = NULL;
	registry_hub_listing listing = {0};
	registry_fetch_file *files = NULL;
	size_t nfiles = 0;
	char *token_host = NULL;
	if (!slash || slash == repo || !slash[1] || strchr(slash + 1, '/')) {
		rc = owl_err_set(err, OWL_EUSAGE, "'%s' is not a hub repository: expected "
				 "hf://ORG/REPO or hf://ORG/REPO@REVISION", source);
		goto out;
	}
	const char *endpoint = getenv("OWL_HF_ENDPOINT");
	if (!endpoint || !*endpoint)
		endpoint = "https://huggingface.co";
	const char *token = getenv("OWL_HF_TOKEN");
	if (token && !*token)
		token = NULL;
	{
		const char *h = strstr(endpoint, "://");
		h = h ? h + 3 : endpoint;
		token_host = owl_xasprintf("%.*s", (int)strcspn(h, "/:"), h);
	}
	registry_fetch_opts fo = {
		.ca_cert = o->ca_cert, .bearer_token = token, .token_host = token_host,
		.min_rate = o->min_rate, .progress = o->progress, .progress_ctx = o->progress_ctx,
		.cancelled = o->cancelled, .cancel_ctx = o->cancel_ctx,
	};
	if ((rc = registry_hub_list(&fo, endpoint, repo, revision, &listing, err)))
		goto out;
	if ((rc = listing_unique(&listing, repo, err)))
		goto out;
	if ((rc = registry_stage_new(s, source, &st, err)))
		goto out;
	st->default_name = registry_default_name(slash + 1);
	st->revision = listing.commit ? owl_xstrdup(listing.commit) : NULL;

	/* Which files: hidden files never; pickle only matters when there is no
	 * safetensors or GGUF alternative (then validation refuses it). */
	int has_safe = 0;
	for (size_t i = 0; i < listing.n; i++) {
		const char *p = listing.entries[i].path;
		if (included(p, o->include) &&
		    (has_suffix(p, ".safetensors") || has_suffix(p, ".gguf")))
			has_safe = 1;
	}
	/* A GGUF repository usually offers one file per quantisation: pulling
	 * them all is rarely meant and can be tens of GB. Ask which. */
	if (!o->include) {
		int ngguf = 0;
		owl_buf names;
		owl_buf_init(&names, 2048);
		for (size_t i = 0; i < listing.n; i++)
			if (has_suffix(listing.entries[i].path, ".gguf")) {
				char size[32];
				owl_fmt_bytes(listing.entries[i].size, size, sizeof size);
				if (ngguf < 8)
					owl_buf_printf(&names, "\n  %s (%s)", listing.entries[i].path, size);
				ngguf++;
			}
		if (ngguf > 1) {
			rc = owl_err_set(err, OWL_EUSAGE, "%s has %d GGUF files (one per quantisation); "
					 "choose with --include, e.g. --include '*Q4_K_M.gguf':%s%s", source,
					 ngguf, names.data, ngguf > 8 ? "\n  ..." : "");
			owl_buf_release(&names);
			goto out;
		}
		owl_buf_release(&names);
	}
	files = owl_xcalloc(listing.n ? listing.n : 1, sizeof *files);
	char **keep_paths = owl_xcalloc(listing.n ? listing.n : 1, sizeof *keep_paths);
	const char *pin = listing.commit ? listing.commit : revision;
	for (size_t i = 0; i < listing.n; i++) {
		const registry_hub_entry *e = &listing.entries[i];
		const char *base = strrchr(e->path, '/');
		base = base ? base + 1 : e->path;
		if (base[0] == '.' || !included(e->path, o->include))
			continue;
		if (has_safe && is_pickle_name(e->path)) {
			owl_log(1, "skipping '%s': pickle, and the repository has safetensors or GGUF",
				e->path);
			continue;
		}
		char *key = owl_xasprintf("hf:%s:%s:%s", repo, pin, e->path);
		char *part = partial_path(s, key, err);
		free(key);
		char *dst = part ? stage_target(st, e->path, err) : NULL;
		if (!part || !dst) {
			free(part);
			rc = err ? err->code : OWL_EFAIL;
			break;
		}
		registry_fetch_file *f = &files[nfiles];
		f->url = registry_hub_file_url(endpoint, repo, pin, e->path);
		f->name = e->path;
		f->expected_sha256 = e->sha256;
		/* Small files have no LFS sha256, but git's blob id still pins them. */
		f->expected_git_oid = !e->sha256 && e->oid && owl_is_hex_digest(e->oid, 40) ? e->oid : NULL;
		f->expected_size = e->size;
		f->tmp_path = part;
		f->final_path = dst;
		if (!f->expected_sha256 && !f->expected_git_oid)
			st->self_checked_files++;
		keep_paths[nfiles] = e->path;
		nfiles++;
	}
	if (!rc && nfiles == 0)
		rc = owl_err_set(err, OWL_EUSAGE, "nothing to pull from %s@%s%s", repo, revision,
				 o->include ? ": no file matches --include" : ": the repository is empty");
	if (!rc)
		rc = registry_fetch_files(&fo, files, nfiles, err);
	for (size_t i = 0; i < nfiles; i++)
		st->downloaded_bytes += files[i].bytes_transferred;
	for (size_t i = 0; !rc && i < nfiles; i++)
		rc = registry_stage_add(st, keep_paths[i], files[i].sha256, files[i].size,
					files[i].expected_sha256, err);
	free(keep_paths);
	if (!rc)
		rc = registry_stage_validate(st, err);
out:
	for (size_t i = 0; i < nfiles; i++) {
		free((char *)files[i].url);
		free((char *)files[i].tmp_path);
		free((char *)files[i].final_path);
		registry_fetch_file_release(&files[i]);
	}
	free(files);
	registry_hub_listing_release(&listing);
	free(token_host);
	free(repo);
	free(revision);
	if (rc) {
		registry_stage_free(st);
		return rc;
	}
	*out = st;
	return 0;
}
