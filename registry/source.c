/* Sources of a pull: local folders, local files and archives here; URLs and
 * hub repositories in source_net.c. Each fills a stage, then validates it. */
#define _GNU_SOURCE
#include "registry.h"
#include "source_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

int registry_is_archive_name(const char *path)
{
	static const char *const ext[] = {".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst",
					  ".tar.xz", ".zip"};
	for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
		if (has_suffix(path, ext[i]))
			return 1;
	return 0;
}

/* "models/SmolLM2-135M.tar.zst" -> "smollm2-135m": a name a user would type. */
char *registry_default_name(const char *path)
{
	char *copy = owl_xstrdup(path);
	size_t n = strlen(copy);
	while (n > 1 && copy[n - 1] == '/')
		copy[--n] = 0;
	const char *base = strrchr(copy, '/');
	base = base ? base + 1 : copy;
	char *name = owl_xstrdup(base);
	static const char *const ext[] = {".tar.gz", ".tar.zst", ".tar.xz", ".tgz", ".tzst", ".tar",
					  ".zip", ".gguf", ".safetensors"};
	for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++)
		if (has_suffix(name, ext[i])) {
			name[strlen(name) - strlen(ext[i])] = 0;
			break;
		}
	for (char *c = name; *c; c++) {
		if (*c >= 'A' && *c <= 'Z')
			*c = (char)(*c + 32);
		else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' ||
			   *c == '_' || *c == '.'))
			*c = '-';
	}
	free(copy);
	if (!registry_valid_name(name)) {
		free(name);
		return owl_xstrdup("model");
	}
	return name;
}

/* ---- local folder ------------------------------------------------------ */


/* Walks dir recursively (following links: a Hugging Face cache snapshot is a
 * folder of links to blobs), skipping hidden entries such as .git. */
static int add_tree(registry_stage *st, const char *root, const char *rel,
		    const registry_source_opts *o, owl_err *err)
{
	char *dir = rel[0] ? owl_path_join(root, rel) : owl_xstrdup(root);
	char **names = NULL;
	size_t n = 0;
	int rc = owl_list_dir(dir, &names, &n, err);
	for (size_t i = 0; i < n && !rc; i++) {
		if (o && o->cancelled && o->cancelled(o->cancel_ctx)) {
			rc = owl_err_set(err, OWL_EFAIL, "the copy of '%s' was cancelled", root);
			break;
		}
		char *child_rel = rel[0] ? owl_xasprintf("%s/%s", rel, names[i]) : owl_xstrdup(names[i]);
		char *child = owl_path_join(root, child_rel);
		struct stat sb;
		if (stat(child, &sb) != 0)
			rc = owl_err_set(err, OWL_EFAIL, "cannot read '%s': %s", child, strerror(errno));
		else if (S_ISDIR(sb.st_mode))
			rc = add_tree(st, root, child_rel, o, err);
		else if (S_ISREG(sb.st_mode))
			rc = registry_stage_copy(st, child, child_rel, o ? o->progress : NULL,
						 o ? o->progress_ctx : NULL, err);
		free(child);
		free(child_rel);
	}
	owl_free_names(names, n);
	free(dir);
	return rc;
}

/* ---- archives ---------------------------------------------------------- */

/* Archive entry names: "./a/b" -> "a/b"; trailing '/' removed. */
static char *clean_entry_name(const char *name)
{
	while (name[0] == '.' && name[1] == '/')
		name += 2;
	char *c = owl_xstrdup(name);
	size_t n = strlen(c);
	while (n > 0 && c[n - 1] == '/')
		c[--n] = 0;
	return c;
}

static int entry_path_is_safe(const char *p)
{
	if (!*p || *p == '/')
		return 0;
	for (const char *c = p; *c;) {
		const char *e = strchr(c, '/');
		size_t n = e ? (size_t)(e - c) : strlen(c);
		if (n == 2 && c[0] == '.' && c[1] == '.')
			return 0;
		c += n;
		if (*c == '/')
			c++;
	}
	return 1;
}

/* Writes one entry's data to files_dir/path while hashing it. */
static int extract_entry(registry_stage *st, struct archive *a, const char *path,
			 const char *archive_name, owl_err *err)
{
	int fd = -1;
	int rc = registry_stage_create_file(st, path, &fd, err);
	if (rc)
		return rc;
	char *full = owl_path_join(st->files_dir, path);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	uint64_t size = 0;
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int r = archive_read_data_block(a, &buf, &len, &off);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s' from '%s': %s", path,
					 archive_name, archive_error_string(a));
			break;
		}
		if ((uint64_t)off != size) {
			/* Sparse entries: a model file has no holes worth keeping. */
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' in '%s' is a sparse entry, which "
					 "owl does not accept", path, archive_name);
			break;
		}
		EVP_DigestUpdate(md, buf, len);
		const char *p = buf;
		for (size_t left = len; left > 0;) {
			ssize_t w = write(fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", full,
						 strerror(errno));
				goto done;
			}
			p += w;
			left -= (size_t)w;
		}
		size += len;
	}
done:
	/* Not fsync'd here: registry_stage_commit syncs the whole stage at once. */
	if (close(fd) != 0 && !rc)
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", full, strerror(errno));
	if (!rc) {
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned int dl = 0;
		char hex[65];
		EVP_DigestFinal_ex(md, d, &dl);
		owl_hex(d, dl, hex);
		rc = registry_stage_add(st, path, hex, size, NULL, err);
	}
	EVP_MD_CTX_free(md);
	free(full);
	return rc;
}

/* When every file sits under one top folder ("mymodel/config.json"), the
 * checkpoint is that folder: strip it. */
int registry_stage_strip_top(registry_stage *st, owl_err *err)
{
	if (st->nfiles == 0)
		return 0;
	const char *first = st->files[0].path;
	const char *slash = strchr(first, '/');
	if (!slash)
		return 0;
	size_t plen = (size_t)(slash - first) + 1;
	for (size_t i = 0; i < st->nfiles; i++)
		if (strncmp(st->files[i].path, first, plen) != 0)
			return 0;
	char *top = owl_xasprintf("%.*s", (int)(plen - 1), first);
	char *old = owl_path_join(st->dir, "unpacked");
	char *inner = owl_path_join(old, top);
	int rc = 0;
	if (rename(st->files_dir, old) != 0 || rename(inner, st->files_dir) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot rearrange staged files: %s", strerror(errno));
	for (size_t i = 0; !rc && i < st->nfiles; i++)
		memmove(st->files[i].path, st->files[i].path + plen, strlen(st->files[i].path + plen) + 1);
	owl_remove_tree(old, NULL);
	registry_stage_reindex(st);
	free(top);
	free(old);
	free(inner);
	return rc;
}

int registry_stage_extract(registry_stage *st, const char *archive_path, const char *label,
			   owl_err *err)
{
	struct archive *a = archive_read_new();
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_gnutar(a);
	archive_read_support_format_zip(a);
	int rc = 0;
	if (archive_read_open_filename(a, archive_path, 1 << 20) != ARCHIVE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot open archive '%s': %s", label,
				 archive_error_string(a));
		archive_read_free(a);
		return rc;
	}
	struct archive_entry *e;
	int r;
	uint64_t nentries = 0, limit = registry_archive_entry_limit();
	while (!rc && (r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
		if (++nentries > limit) {
			rc = owl_err_set(err, OWL_EFAIL, "refusing archive '%s': it holds more than %llu "
					 "entries (OWL_MAX_ARCHIVE_ENTRIES); nothing was stored", label,
					 (unsigned long long)limit);
			break;
		}
		const char *raw = archive_entry_pathname(e);
		if (!raw) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' has an entry without a name", label);
			break;
		}
		char *name = clean_entry_name(raw);
		mode_t type = archive_entry_filetype(e);
		const char *link_to = archive_entry_symlink(e);
		const char *hard_to = archive_entry_hardlink(e);
		if (!entry_path_is_safe(name) && name[0]) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "refusing archive '%s': entry '%s' %s, "
					 "which would write outside the checkpoint; nothing was stored",
					 label, raw, raw[0] == '/' ? "is an absolute path" : "contains '..'");
		} else if (link_to || hard_to || type == AE_IFLNK) {
			const char *target = link_to ? link_to : hard_to ? hard_to : "?";
			int outside = target[0] == '/' || strstr(target, "..") != NULL;
			rc = owl_err_set(err, OWL_EINTEGRITY, "refusing archive '%s': entry '%s' is a "
					 "link to '%s'%s; model archives must hold regular files only; "
					 "nothing was stored", label, raw, target,
					 outside ? ", outside the checkpoint" : "");
		} else if (type == AE_IFDIR || !name[0]) {
			/* folders are created on demand */
		} else if (type != AE_IFREG) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "refusing archive '%s': entry '%s' is not "
					 "a regular file (device, fifo or socket); nothing was stored",
					 label, raw);
		} else if (name[0] != '.' && !strstr(name, "/.")) {
			rc = extract_entry(st, a, name, label, err);
		}
		free(name);
	}
	if (!rc && r != ARCHIVE_EOF)
		rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read archive '%s': %s", label,
				 archive_error_string(a));
	archive_read_free(a);
	if (!rc)
		rc = registry_stage_strip_top(st, err);
	return rc;
}

/* ---- dispatch ---------------------------------------------------------- */

int registry_stage_from_source(registry_store *s, const char *source,
			       const registry_source_opts *o, registry_stage **out, owl_err *err)
{
	*out = NULL;
	static const registry_source_opts none;
	if (!o)
		o = &none;
	if (strncmp(source, "hf://", 5) == 0)
		return registry_stage_from_hub(s, source, o, out, err);
	if (strncmp(source, "https://", 8) == 0 || strncmp(source, "http://", 7) == 0)
		return registry_stage_from_url(s, source, o, out, err);
	if (strstr(source, "://"))
		return owl_err_set(err, OWL_EUSAGE, "unsupported source '%s': use an https:// or "
				   "http:// URL, hf://ORG/REPO[@REVISION], a folder or an archive",
				   source);
	struct stat sb;
	if (stat(source, &sb) != 0)
		return owl_err_set(err, OWL_EUSAGE, "source '%s' does not exist (expected a URL, "
				   "hf://ORG/REPO, a folder, an archive or a .gguf/.safetensors file)",
				   source);
	char *abs = realpath(source, NULL);
	registry_stage *st = NULL;
	int rc = registry_stage_new(s, abs ? abs : source, &st, err);
	if (rc) {
		free(abs);
		return rc;
	}
	st->default_name = registry_default_name(abs ? abs : source);
	if (S_ISDIR(sb.st_mode)) {
		rc = add_tree(st, source, "", o, err);
	} else if (registry_is_archive_name(source)) {
		rc = registry_stage_extract(st, source, source, err);
	} else if (S_ISREG(sb.st_mode)) {
		const char *base = strrchr(source, '/');
		base = base ? base + 1 : source;
		rc = registry_stage_copy(st, source, base, o->progress, o->progress_ctx, err);
		if (!rc && o->expected_sha256 && strcmp(st->files[0].digest, o->expected_sha256) != 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' does not match --sha256: expected "
					 "%s, got %s; nothing was stored", base, o->expected_sha256,
					 st->files[0].digest);
	} else {
		rc = owl_err_set(err, OWL_EUSAGE, "source '%s' is neither a folder nor a file", source);
	}
	free(abs);
	if (!rc)
		rc = registry_stage_validate(st, err);
	if (rc) {
		registry_stage_free(st);
		return rc;
	}
	*out = st;
	return 0;
}
