/* Content-addressed blobs: blobs/sha256/<2 hex>/<64 hex>. A blob is written
 * under tmp/ first, fsync'd, then renamed into place, so a reader never sees
 * a partial blob and a crash leaves at most an unreferenced file for gc. */
#define _GNU_SOURCE
#include "store_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define IO_CHUNK (1u << 20)

char *registry_blob_path(const registry_store *s, const char *digest)
{
	return owl_xasprintf("%s/%.2s/%s", s->blobs_dir, digest, digest);
}

/* Reads src in chunks, feeding SHA-256 and (when dst_fd >= 0) writing to dst. */
static int stream_hash(int src_fd, const char *src_name, int dst_fd, const char *dst_name,
		       char hex[65], uint64_t *size, owl_progress_fn progress, void *pctx,
		       uint64_t total, owl_err *err)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return owl_err_set(err, OWL_EFAIL, "cannot initialise SHA-256 (OpenSSL)");
	}
	unsigned char *buf = owl_xmalloc(IO_CHUNK);
	uint64_t done = 0;
	int rc = 0;
	for (;;) {
		ssize_t n = read(src_fd, buf, IO_CHUNK);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = owl_err_set(err, OWL_EFAIL, "cannot read '%s': %s", src_name, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(md, buf, (size_t)n);
		for (ssize_t off = 0; dst_fd >= 0 && off < n;) {
			ssize_t w = write(dst_fd, buf + off, (size_t)(n - off));
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", dst_name,
						 strerror(errno));
				goto out;
			}
			off += w;
		}
		done += (uint64_t)n;
		if (progress)
			progress(pctx, src_name, done, total);
	}
out:
	if (rc == 0) {
		unsigned char d[EVP_MAX_MD_SIZE];
		unsigned int dl = 0;
		EVP_DigestFinal_ex(md, d, &dl);
		owl_hex(d, dl, hex);
		*size = done;
	}
	free(buf);
	EVP_MD_CTX_free(md);
	return rc;
}

int registry_hash_file(const char *path, char hex[65], uint64_t *size, owl_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", path, strerror(errno));
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	int rc = stream_hash(fd, path, -1, NULL, hex, size, NULL, NULL, 0, err);
	close(fd);
	return rc;
}

static int copy_hashing(const char *src, const char *dst, char hex[65], uint64_t *size,
			owl_progress_fn progress, void *progress_ctx, int sync, owl_err *err)
{
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", src, strerror(errno));
	struct stat sb;
	uint64_t total = fstat(in, &sb) == 0 ? (uint64_t)sb.st_size : 0;
	int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0) {
		int rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", dst, strerror(errno));
		close(in);
		return rc;
	}
	posix_fadvise(in, 0, 0, POSIX_FADV_SEQUENTIAL);
	int rc = stream_hash(in, src, out, dst, hex, size, progress, progress_ctx, total, err);
	if (rc == 0 && sync && fsync(out) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot flush '%s': %s", dst, strerror(errno));
	close(in);
	if (close(out) != 0 && rc == 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", dst, strerror(errno));
	if (rc)
		unlink(dst);
	return rc;
}

int registry_copy_hashing(const char *src, const char *dst, char hex[65], uint64_t *size,
			  owl_progress_fn progress, void *progress_ctx, owl_err *err)
{
	return copy_hashing(src, dst, hex, size, progress, progress_ctx, 1, err);
}

int registry_copy_hashing_unsynced(const char *src, const char *dst, char hex[65],
				   uint64_t *size, owl_progress_fn progress, void *progress_ctx,
				   owl_err *err)
{
	return copy_hashing(src, dst, hex, size, progress, progress_ctx, 0, err);
}

int registry_blob_ingest(registry_store *s, const char *staged_path, const char *digest,
			 owl_err *err)
{
	if (!owl_is_hex_digest(digest, 64))
		return owl_err_set(err, OWL_EFAIL, "not a sha256 digest: '%s'", digest);
	char *final = registry_blob_path(s, digest);
	char *dir = owl_xasprintf("%s/%.2s", s->blobs_dir, digest);
	int rc = 0;
	if ((rc = owl_mkdir_p(dir, err)))
		goto out;
	int fd = open(staged_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", staged_path, strerror(errno));
		goto out;
	}
	int sync_rc = fsync(fd);
	close(fd);
	if (sync_rc != 0) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot flush '%s': %s", staged_path, strerror(errno));
		goto out;
	}
	/* Blobs are immutable: read-only for everyone, so that a stray write
	 * through a snapshot link fails instead of corrupting a version. */
	chmod(staged_path, 0444);
	/* When the blob exists already, renaming over it keeps one copy and
	 * also heals a stored blob that was damaged since: the staged bytes were
	 * just hashed, the old ones may not have been read in months. */
	if (rename(staged_path, final) != 0) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot move '%s' into the blob store: %s",
				 staged_path, strerror(errno));
		goto out;
	}
	rc = owl_fsync_dir(dir, err);
out:
	free(final);
	free(dir);
	return rc;
}

int registry_ingest_lock(registry_store *s, int exclusive, int *fd_out, owl_err *err)
{
	*fd_out = -1;
	char *path = owl_path_join(s->tmp_dir, "ingest.lock");
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		int rc = owl_err_set(err, OWL_EFAIL, "cannot open the lock file '%s': %s", path,
				     strerror(errno));
		free(path);
		return rc;
	}
	int op = exclusive ? LOCK_EX : LOCK_SH;
	double start = owl_now(), told = 0;
	while (flock(fd, op | LOCK_NB) != 0) {
		if (errno == EINTR)
			continue;
		if (errno != EWOULDBLOCK) {
			int rc = owl_err_set(err, OWL_EFAIL, "cannot lock '%s': %s", path,
					     strerror(errno));
			close(fd);
			free(path);
			return rc;
		}
		double now = owl_now();
		if (now - start >= s->lock_timeout_s) {
			int rc = owl_err_set(err, OWL_EFAIL, "'%s' stayed locked for more than %.0f s: "
					     "another owl is %s; try again when it is done (or raise "
					     "OWL_LOCK_TIMEOUT)", path, s->lock_timeout_s,
					     exclusive ? "registering a version" : "collecting garbage");
			close(fd);
			free(path);
			return rc;
		}
		if (s->wait_fn && now - start >= 1.0 && (told == 0 || now - told >= 5.0)) {
			told = now;
			s->wait_fn(s->wait_ctx, path, 0, now - start);
		}
		struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
		nanosleep(&ts, NULL);
	}
	free(path);
	*fd_out = fd;
	return 0;
}

void registry_ingest_unlock(int fd)
{
	if (fd >= 0)
		close(fd); /* releases the flock */
}
