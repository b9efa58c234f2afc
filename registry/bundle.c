/* Bundles for air-gapped transfer: a tar (optionally zstd-compressed) holding
 * manifest.json and the version's files under files/. Import trusts nothing
 * in the bundle: every file is hashed as it is unpacked and the set of files
 * must equal the manifest's, before anything is registered. */
#define _GNU_SOURCE
#include "registry.h"
#include "common/ed25519.h"
#include "source_internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUNDLE_FORMAT 1

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

/* ---- signatures (Ed25519 over the manifest's bytes) --------------------- */

static int check_signature(const char *pub_path, const char *msg, size_t n, const char *sig_hex,
			   const char *label, owl_err *err)
{
	unsigned char sig[64];
	size_t hl = strlen(sig_hex);
	while (hl && (sig_hex[hl - 1] == '\n' || sig_hex[hl - 1] == ' '))
		hl--;
	if (hl != 128)
		return owl_err_set(err, OWL_EINTEGRITY, "'%s': manifest.sig is not an Ed25519 "
				   "signature", label);
	for (size_t i = 0; i < 64; i++) {
		unsigned int b;
		if (sscanf(sig_hex + 2 * i, "%2x", &b) != 1)
			return owl_err_set(err, OWL_EINTEGRITY, "'%s': manifest.sig is not hex", label);
		sig[i] = (unsigned char)b;
	}
	int rc = owl_ed25519_verify(pub_path, "trusted", msg, n, sig, err);
	if (rc == OWL_EINTEGRITY)
		return owl_err_set(err, OWL_EINTEGRITY, "'%s': the manifest's signature does not "
				   "verify with '%s'; nothing was stored", label, pub_path);
	return rc;
}

static json_t *manifest_for(const registry_version *v, const char *extra_json)
{
	json_t *m = json_object();
	json_object_set_new(m, "owl_bundle", json_integer(BUNDLE_FORMAT));
	json_object_set_new(m, "owl_version", json_string(OWL_VERSION));
	json_object_set_new(m, "model", json_string(v->model));
	json_object_set_new(m, "version", json_integer(v->number));
	json_object_set_new(m, "source", json_string(v->source));
	json_object_set_new(m, "revision", v->revision ? json_string(v->revision) : json_null());
	json_object_set_new(m, "format", json_string(v->format));
	json_object_set_new(m, "created_at", json_integer(v->created_at));
	json_t *cfg = v->config_json ? json_loads(v->config_json, 0, NULL) : NULL;
	json_object_set_new(m, "config", cfg ? cfg : json_null());
	json_t *files = json_array();
	for (size_t i = 0; i < v->nfiles; i++)
		json_array_append_new(files, json_pack("{s:s, s:I, s:s}", "path", v->files[i].path,
						       "size", (json_int_t)v->files[i].size, "sha256",
						       v->files[i].digest));
	json_object_set_new(m, "files", files);
	if (extra_json) {
		json_t *extra = json_loads(extra_json, 0, NULL);
		if (json_is_object(extra))
			json_object_update(m, extra);
		json_decref(extra);
	}
	return m;
}

static int write_entry_header(struct archive *a, const char *path, uint64_t size, int64_t mtime,
			      const char *label, owl_err *err)
{
	struct archive_entry *e = archive_entry_new();
	archive_entry_set_pathname(e, path);
	archive_entry_set_size(e, (la_int64_t)size);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_mtime(e, mtime, 0);
	int r = archive_write_header(a, e);
	archive_entry_free(e);
	if (r != ARCHIVE_OK)
		return owl_err_set(err, OWL_EFAIL, "cannot write '%s' into '%s': %s", path, label,
				   archive_error_string(a));
	return 0;
}

int registry_export(registry_store *s, const registry_version *v, const char *file,
		    const char *extra_manifest_json, const char *sign_key, owl_err *err)
{
	(void)s;
	char *part = owl_xasprintf("%s.part", file);
	struct archive *a = archive_write_new();
	archive_write_set_format_pax_restricted(a);
	if (has_suffix(file, ".zst") || has_suffix(file, ".tzst"))
		archive_write_add_filter_zstd(a);
	else if (has_suffix(file, ".gz") || has_suffix(file, ".tgz"))
		archive_write_add_filter_gzip(a);
	int rc = 0;
	if (archive_write_open_filename(a, part) != ARCHIVE_OK) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", part,
				 archive_error_string(a));
		archive_write_free(a);
		free(part);
		return rc;
	}
	json_t *m = manifest_for(v, extra_manifest_json);
	char *mtext = json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(m);
	size_t mlen = strlen(mtext);
	char sig[130] = "";
	if (sign_key)
		rc = owl_ed25519_sign(sign_key, mtext, mlen, sig, err);
	if (!rc)
		rc = write_entry_header(a, "manifest.json", mlen, v->created_at, file, err);
	if (!rc && archive_write_data(a, mtext, mlen) != (la_ssize_t)mlen)
		rc = owl_err_set(err, OWL_EFAIL, "cannot write the manifest into '%s': %s", file,
				 archive_error_string(a));
	if (!rc && sign_key) {
		strcat(sig, "\n");
		rc = write_entry_header(a, "manifest.sig", 129, v->created_at, file, err);
		if (!rc && archive_write_data(a, sig, 129) != 129)
			rc = owl_err_set(err, OWL_EFAIL, "cannot write the signature into '%s': %s",
					 file, archive_error_string(a));
	}
	free(mtext);
	unsigned char *buf = owl_xmalloc(1u << 20);
	for (size_t i = 0; !rc && i < v->nfiles; i++) {
		const registry_file *f = &v->files[i];
		char *path = owl_xasprintf("files/%s", f->path);
		rc = write_entry_header(a, path, f->size, v->created_at, file, err);
		free(path);
		if (rc)
			break;
		int fd = open(f->blob_path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read the blob of '%s' (%s): %s; "
					 "run 'owl verify %s@%d'", f->path, f->digest, strerror(errno),
					 v->model, v->number);
			break;
		}
		/* Hash while copying: a bundle must never carry a corrupt blob. */
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		EVP_DigestInit_ex(md, EVP_sha256(), NULL);
		uint64_t done = 0;
		ssize_t n;
		while ((n = read(fd, buf, 1u << 20)) > 0) {
			EVP_DigestUpdate(md, buf, (size_t)n);
			if (archive_write_data(a, buf, (size_t)n) != n) {
				rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s' into '%s': %s",
						 f->path, file, archive_error_string(a));
				break;
			}
			done += (uint64_t)n;
		}
		close(fd);
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned int dl = 0;
		char hex[65];
		EVP_DigestFinal_ex(md, d, &dl);
		EVP_MD_CTX_free(md);
		owl_hex(d, dl, hex);
		if (!rc && strcmp(hex, f->digest) != 0)
			rc = owl_err_set(err, OWL_EINTEGRITY, "refusing to export %s@%d: the stored "
					 "'%s' is corrupt (hashes to %s, expected %s); run 'owl verify'",
					 v->model, v->number, f->path, hex, f->digest);
		if (!rc && done != f->size)
			rc = owl_err_set(err, OWL_EINTEGRITY, "the blob of '%s' has %llu bytes, the "
					 "registry recorded %llu; run 'owl verify'", f->path,
					 (unsigned long long)done, (unsigned long long)f->size);
	}
	free(buf);
	if (archive_write_close(a) != ARCHIVE_OK && !rc)
		rc = owl_err_set(err, OWL_EFAIL, "cannot finish '%s': %s", part,
				 archive_error_string(a));
	archive_write_free(a);
	if (!rc && rename(part, file) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot rename '%s' to '%s': %s", part, file,
				 strerror(errno));
	if (rc)
		unlink(part);
	free(part);
	return rc;
}

/* Checks the unpacked stage (manifest and signature already taken out)
 * against the manifest, then makes files/ the checkpoint's root. */
static int check_against_manifest(registry_stage *st, json_t *m, const char *label, owl_err *err)
{
	json_t *files = json_object_get(m, "files");
	if (!json_is_array(files))
		return owl_err_set(err, OWL_EINTEGRITY, "'%s': the manifest has no file list", label);
	/* Hash tables (jansson objects) of the staged and the listed paths, so
	 * that a bundle of many files is checked in linear time. */
	json_t *staged = json_object(), *listed = json_object();
	int rc = 0;
	for (size_t k = 0; k < st->nfiles; k++)
		json_object_set_new_nocheck(staged, st->files[k].path, json_integer((json_int_t)k));
	size_t i;
	json_t *f;
	json_array_foreach(files, i, f) {
		const char *path = json_string_value(json_object_get(f, "path"));
		const char *sha = json_string_value(json_object_get(f, "sha256"));
		json_int_t size = json_integer_value(json_object_get(f, "size"));
		if (!path || !sha) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s': manifest entry %zu lacks a path "
					 "or sha256", label, i);
			break;
		}
		/* A manifest path only ever names a file already unpacked under a
		 * checked name; one with a NUL inside would compare equal to a
		 * shorter name, and a repeated one would count twice. */
		if (json_string_length(json_object_get(f, "path")) != strlen(path) ||
		    strlen(path) > 1024) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s': manifest entry %zu has a path with "
					 "a NUL byte or longer than 1024 bytes; nothing was stored",
					 label, i);
			break;
		}
		if (json_object_get(listed, path)) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s': the manifest lists '%s' twice; "
					 "nothing was stored", label, path);
			break;
		}
		json_object_set_new_nocheck(listed, path, json_true());
		char *want = owl_xasprintf("files/%s", path);
		json_t *k = json_object_get(staged, want);
		free(want);
		if (!k) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' is incomplete: the manifest lists "
					 "'%s', which the bundle does not hold; nothing was stored",
					 label, path);
			break;
		}
		registry_stage_file *got = &st->files[json_integer_value(k)];
		if (strcmp(got->digest, sha) != 0 || (json_int_t)got->size != size) {
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s': file '%s' does not match its "
					 "manifest: expected sha256 %s, got %s; nothing was stored",
					 label, path, sha, got->digest);
			break;
		}
		free(got->expected);
		got->expected = owl_xstrdup(sha);
	}
	/* Everything staged must be a listed file. */
	for (size_t k = 0; !rc && k < st->nfiles; k++) {
		const char *p = st->files[k].path;
		if (strncmp(p, "files/", 6) != 0 || !json_object_get(listed, p + 6))
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' holds '%s', which its manifest "
					 "does not list; nothing was stored", label, p);
	}
	json_decref(staged);
	json_decref(listed);
	if (rc)
		return rc;
	return st->nfiles ? registry_stage_strip_top(st, err) : 0;
}

/* Takes a bundle's own file (manifest.json, manifest.sig) out of the stage
 * and returns its bytes, or NULL when the bundle lacks it. */
static char *pop_stage_file(registry_stage *st, const char *path, size_t max, owl_err *err,
			    int *rc)
{
	for (size_t k = 0; k < st->nfiles; k++) {
		if (strcmp(st->files[k].path, path) != 0)
			continue;
		char *full = owl_path_join(st->files_dir, path);
		char *text = NULL;
		*rc = owl_read_file(full, max, &text, NULL, err);
		unlink(full);
		free(full);
		st->total_bytes -= st->files[k].size;
		free(st->files[k].path);
		free(st->files[k].expected);
		st->files[k] = st->files[--st->nfiles];
		return text;
	}
	return NULL;
}

int registry_import_stage(registry_store *s, const char *file, const char *trust_key,
			  registry_stage **out, char **manifest_out, registry_bundle_trust *trust,
			  owl_err *err)
{
	*out = NULL;
	*manifest_out = NULL;
	*trust = REGISTRY_BUNDLE_UNSIGNED;
	registry_stage *st = NULL;
	char *source = owl_xasprintf("bundle:%s", file);
	int rc = registry_stage_new(s, source, &st, err);
	free(source);
	if (rc)
		return rc;
	json_t *m = NULL;
	char *text = NULL, *sig = NULL;
	rc = registry_stage_extract(st, file, file, err);
	if (!rc)
		text = pop_stage_file(st, "manifest.json", 16u << 20, err, &rc);
	if (!rc)
		sig = pop_stage_file(st, "manifest.sig", 4096, err, &rc);
	if (!rc && !text)
		rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' is not an owl bundle: it has no "
				 "manifest.json", file);
	if (!rc && trust_key && !sig)
		rc = owl_err_set(err, OWL_EINTEGRITY, "'%s' is not signed, and --trust requires a "
				 "signature; nothing was stored", file);
	if (!rc && trust_key)
		rc = check_signature(trust_key, text, strlen(text), sig, file, err);
	if (!rc && sig)
		*trust = trust_key ? REGISTRY_BUNDLE_SIGNATURE_OK : REGISTRY_BUNDLE_SIGNED_UNCHECKED;
	if (!rc) {
		json_error_t je;
		m = json_loads(text, JSON_REJECT_DUPLICATES, &je);
		if (!json_is_object(m) ||
		    json_integer_value(json_object_get(m, "owl_bundle")) != BUNDLE_FORMAT)
			rc = owl_err_set(err, OWL_EINTEGRITY, "'%s': manifest.json is not a bundle "
					 "manifest of format %d", file, BUNDLE_FORMAT);
	}
	if (!rc)
		rc = check_against_manifest(st, m, file, err);
	if (!rc) {
		/* Provenance travels with the bundle: the original source and commit. */
		const char *src = json_string_value(json_object_get(m, "source"));
		const char *rev = json_string_value(json_object_get(m, "revision"));
		const char *model = json_string_value(json_object_get(m, "model"));
		if (src) {
			free(st->source);
			st->source = owl_xstrdup(src);
		}
		st->revision = rev ? owl_xstrdup(rev) : NULL;
		st->default_name = owl_xstrdup(model && registry_valid_name(model) ? model : "imported");
		rc = registry_stage_validate(st, err);
	}
	json_decref(m);
	free(sig);
	if (rc) {
		registry_stage_free(st);
		free(text);
		return rc;
	}
	*manifest_out = text;
	*out = st;
	return 0;
}
