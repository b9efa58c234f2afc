/* Downloads over HTTP(S) with libcurl's multi interface: several files at
 * once, SHA-256 while the bytes stream, resume with Range, retries with
 * backoff, TLS verification always on. The bearer token goes to token_host
 * only: a hub answers large files with a redirect to a CDN, and the CDN must
 * never see it.
 *
 * A partial file is flock'd by the one fetch that writes it, from its open
 * to its rename into the caller's staging folder, so that two pulls of the
 * same file never write into one file and the bytes hashed are the bytes
 * moved; the second pull writes a private partial file of its own, and
 * `owl gc` removes the partial files no fetch holds. A partial file is
 * resumed only against a validator (the strong ETag or Last-Modified of the
 * response that wrote it, kept in <partial>.meta and sent as If-Range) or
 * when a digest is known that decides in the end. */
#define _GNU_SOURCE
#include "store_impl.h"
#include "source_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WRITE_BUF (1u << 20)
#define VALIDATOR_MAX 256
#define SLOW_ABORTS_MAX 2 /* a server below the minimum rate twice is given up on */

/* curl_global_init is not thread-safe: every owl use of curl goes through
 * registry_curl_global_init, which runs it once per process. */
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

void registry_curl_global_init(void)
{
	pthread_once(&curl_once, curl_init_once);
}

static atomic_int private_counter;

/* One transfer in flight: the file, its hash state and its attempt. */
typedef struct transfer {
	registry_fetch_file *f;
	const registry_fetch_opts *opts;
	CURL *easy;
	struct curl_slist *headers;
	char *path;           /* the partial file: f->tmp_path, or a private one beside it */
	int shared;           /* path is f->tmp_path, which a later pull may resume */
	FILE *out;            /* the partial file, open and flock'd for the whole transfer */
	EVP_MD_CTX *md;
	EVP_MD_CTX *md1;      /* git blob sha1, when the hub lists one */
	uint64_t have;        /* bytes in the file (resumed prefix + this attempt) */
	uint64_t start;       /* offset this attempt asked for */
	uint64_t size_hint;   /* expected_size, or what Content-Length announced */
	int attempt;
	int slow_aborts;      /* attempts aborted for being below the minimum rate */
	int status_checked;   /* the response status was looked at */
	long http_status;
	char validator[VALIDATOR_MAX]; /* If-Range value for the bytes in the file, or "" */
	char resp_etag[VALIDATOR_MAX]; /* of the response being read */
	char resp_modified[VALIDATOR_MAX];
	char resp_range[128];
	int bad_resume;       /* a 206 answer that does not continue the file's bytes */
	int write_errno;      /* errno of a failed write to the partial file, or 0 */
	int failed;           /* a non-retryable error is recorded in f->err */
	double next_try;      /* owl_now() time of the next attempt (backoff) */
	int active;
	int done;
	char curl_err[CURL_ERROR_SIZE];
} transfer;

static long min_rate_window(const registry_fetch_opts *o)
{
	if (o->min_rate_window_s > 0)
		return o->min_rate_window_s;
	/* Tests shorten the window; a person rarely needs to. */
	const char *env = getenv("OWL_MIN_RATE_WINDOW");
	if (env && *env) {
		char *end;
		long v = strtol(env, &end, 10);
		if (*end == 0 && v > 0 && v <= 3600)
			return v;
	}
	return REGISTRY_MIN_RATE_WINDOW_DEFAULT;
}

static int64_t min_rate(const registry_fetch_opts *o)
{
	return o->min_rate ? o->min_rate : REGISTRY_MIN_RATE_DEFAULT;
}

/* "10 KiB/s", "1 MiB/s", "300 B/s" */
static void fmt_rate(int64_t r, char *out, size_t outlen)
{
	if (r >= (1 << 20) && r % (1 << 20) == 0)
		snprintf(out, outlen, "%lld MiB/s", (long long)(r >> 20));
	else if (r >= 1024 && r % 1024 == 0)
		snprintf(out, outlen, "%lld KiB/s", (long long)(r >> 10));
	else
		snprintf(out, outlen, "%lld B/s", (long long)r);
}

void registry_curl_defaults(CURL *e, const registry_fetch_opts *o, char *errbuf)
{
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	/* TLS verification is never turned off; a private CA is added instead. */
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (o->ca_cert)
		curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_cert);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, o->connect_timeout_s ? o->connect_timeout_s : 30L);
	/* A transfer slower than the minimum rate for the whole window is
	 * aborted: a server that trickles bytes would otherwise hold a pull for
	 * days. With the check off, only a stall (< 1 byte/s) aborts. */
	int64_t rate = min_rate(o);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, rate > 0 ? (long)rate : 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, min_rate_window(o));
	curl_easy_setopt(e, CURLOPT_USERAGENT, "owl/" OWL_VERSION);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
}

/* host or host:port of a URL, for messages and the token check. */
static char *url_host(const char *url, int with_port)
{
	const char *h = strstr(url, "://");
	h = h ? h + 3 : url;
	const char *at = NULL;
	for (const char *c = h; *c && *c != '/'; c++)
		if (*c == '@')
			at = c;
	if (at)
		h = at + 1;
	return owl_xasprintf("%.*s", (int)strcspn(h, with_port ? "/?#" : "/:?#"), h);
}

/* The server this attempt talked to (after redirects), for messages. */
static char *server_of(transfer *t)
{
	char *eff = NULL;
	if (t->easy)
		curl_easy_getinfo(t->easy, CURLINFO_EFFECTIVE_URL, &eff);
	return url_host(eff ? eff : t->f->url, 1);
}

/* ---- the partial file and its resume note -------------------------------- */

static char *meta_path(const char *part)
{
	return owl_xasprintf("%s.meta", part);
}

/* The validator a previous run stored for the shared partial file; "" when
 * none (no note, or a note torn by a crash). */
static void meta_read(transfer *t)
{
	t->validator[0] = 0;
	char *mp = meta_path(t->path);
	char *text = NULL;
	size_t len = 0;
	if (owl_read_file(mp, VALIDATOR_MAX + 1, &text, &len, NULL) == 0 && len > 1 &&
	    text[len - 1] == '\n' && !memchr(text, '\r', len)) {
		text[len - 1] = 0;
		if (!strchr(text, '\n'))
			snprintf(t->validator, sizeof t->validator, "%s", text);
	}
	free(text);
	free(mp);
}

/* Records t->validator for the bytes now being written, so that a later pull
 * resumes only against it. Without one, the note goes: nothing to resume
 * against. A note that cannot be written only costs a resume. */
static void meta_write(transfer *t)
{
	if (!t->shared)
		return;
	char *mp = meta_path(t->path);
	if (!t->validator[0]) {
		unlink(mp);
	} else {
		int fd = open(mp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd >= 0) {
			char line[VALIDATOR_MAX + 2];
			int n = snprintf(line, sizeof line, "%s\n", t->validator);
			if (write(fd, line, (size_t)n) != n)
				unlink(mp);
			close(fd);
		}
	}
	free(mp);
}

static void partial_remove(transfer *t)
{
	unlink(t->path);
	char *mp = meta_path(t->path);
	unlink(mp);
	free(mp);
}

/* "no space left on device while writing ..." with what was free and what
 * the rest of the file needs; other write errors as they are. */
static int write_failed(transfer *t, int e, owl_err *err)
{
	const char *name = t->f->name ? t->f->name : t->f->url;
	char *dir = owl_xstrdup(t->path);
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	int rc;
	if (e == ENOSPC || e == EDQUOT) {
		int64_t free_b = owl_disk_free(dir);
		char needed[64];
		if (t->size_hint > t->have)
			snprintf(needed, sizeof needed, "%.1f MiB needed",
				 (double)(t->size_hint - t->have) / (1 << 20));
		else
			snprintf(needed, sizeof needed, "size unknown");
		rc = owl_err_set(err, OWL_EFAIL, "%s while writing '%s' to '%s' (%.1f MiB free, %s); "
				 "the partial download stays for a resume, 'owl gc' removes it",
				 e == ENOSPC ? "no space left on device" : "disk quota exceeded", name,
				 dir, free_b < 0 ? 0.0 : (double)free_b / (1 << 20), needed);
	} else {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", t->path, strerror(e));
	}
	free(dir);
	return rc;
}

/* Opens the partial file and takes its lock. When another process holds
 * the shared one, this transfer writes a private file beside it instead; a
 * lock taken on a file that was unlinked or replaced meanwhile (by gc, or
 * by the other pull's rename) is let go and taken again. */
static int partial_open(transfer *t, owl_err *err)
{
	for (int tries = 0; tries < 16; tries++) {
		int fd = open(t->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		if (fd < 0)
			return write_failed(t, errno, err);
		if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
			int e = errno;
			close(fd);
			if (e != EWOULDBLOCK)
				return owl_err_set(err, OWL_EFAIL, "cannot lock '%s': %s", t->path,
						   strerror(e));
			/* Another pull is downloading the same file right now. */
			const char *base = t->f->tmp_path;
			size_t bl = strlen(base);
			if (bl > 5 && strcmp(base + bl - 5, ".part") == 0)
				bl -= 5;
			free(t->path);
			t->path = owl_xasprintf("%.*s.%d-%d.part", (int)bl, base, (int)getpid(),
						atomic_fetch_add(&private_counter, 1));
			t->shared = 0;
			continue;
		}
		struct stat a, b;
		if (fstat(fd, &a) != 0 || stat(t->path, &b) != 0 || a.st_ino != b.st_ino ||
		    a.st_dev != b.st_dev) {
			close(fd);
			continue;
		}
		/* A private file is never resumed: a stale one of a dead process
		 * with the same pid starts empty. */
		if (!t->shared && ftruncate(fd, 0) != 0) {
			int e = errno;
			close(fd);
			return write_failed(t, e, err);
		}
		t->out = fdopen(fd, "r+b");
		if (!t->out) {
			close(fd);
			return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", t->path,
					   strerror(errno));
		}
		setvbuf(t->out, NULL, _IOFBF, WRITE_BUF);
		if (t->shared && a.st_size > 0)
			meta_read(t);
		return 0;
	}
	return owl_err_set(err, OWL_EFAIL, "cannot lock '%s': it keeps being replaced", t->path);
}

/* Empties the partial file: what it holds cannot be resumed. */
static int partial_truncate(transfer *t)
{
	if (fflush(t->out) != 0 || ftruncate(fileno(t->out), 0) != 0 ||
	    fseeko(t->out, 0, SEEK_SET) != 0)
		return -1;
	t->have = 0;
	t->validator[0] = 0;
	meta_write(t);
	return 0;
}

/* Closes (and so unlocks) the partial file. An empty one is removed, and so
 * is an unfinished private one: no later pull would resume it. */
static void partial_close(transfer *t)
{
	if (!t->out)
		return;
	fflush(t->out);
	if (!t->done && (t->have == 0 || !t->shared))
		partial_remove(t);
	fclose(t->out);
	t->out = NULL;
}

/* ---- hashing --------------------------------------------------------------- */

static void reset_hash(transfer *t)
{
	EVP_MD_CTX_reset(t->md);
	EVP_DigestInit_ex(t->md, EVP_sha256(), NULL);
	if (t->f->expected_git_oid && t->f->expected_size) {
		/* git hashes "blob <size>\0" and then the content. */
		if (!t->md1)
			t->md1 = EVP_MD_CTX_new();
		EVP_MD_CTX_reset(t->md1);
		EVP_DigestInit_ex(t->md1, EVP_sha1(), NULL);
		char hdr[40];
		int hl = snprintf(hdr, sizeof hdr, "blob %llu", (unsigned long long)t->f->expected_size);
		EVP_DigestUpdate(t->md1, hdr, (size_t)hl + 1);
	}
}

/* Hashes what the partial file already holds, so that the final digest
 * covers the whole file even when most of it came in an earlier response. */
static int hash_prefix(transfer *t, owl_err *err)
{
	int fd = fileno(t->out);
	if (fflush(t->out) != 0)
		return write_failed(t, errno, err);
	unsigned char *buf = owl_xmalloc(WRITE_BUF);
	uint64_t total = 0;
	int rc = 0;
	for (;;) {
		ssize_t n = pread(fd, buf, WRITE_BUF, (off_t)total);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot read partial download '%s': %s",
					 t->path, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(t->md, buf, (size_t)n);
		if (t->md1)
			EVP_DigestUpdate(t->md1, buf, (size_t)n);
		total += (uint64_t)n;
	}
	free(buf);
	t->have = total;
	if (!rc && fseeko(t->out, (off_t)total, SEEK_SET) != 0)
		rc = owl_err_set(err, OWL_EFAIL, "cannot seek in '%s': %s", t->path, strerror(errno));
	return rc;
}

/* ---- curl callbacks ---------------------------------------------------------- */

static void header_copy(const char *buf, size_t len, const char *key, char *out, size_t outlen)
{
	size_t kl = strlen(key);
	if (len <= kl || strncasecmp(buf, key, kl) != 0)
		return;
	const char *v = buf + kl;
	size_t vl = len - kl;
	while (vl > 0 && (*v == ' ' || *v == '\t'))
		v++, vl--;
	while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
		vl--;
	/* A value too long to send back whole is no validator. */
	if (vl < outlen && !memchr(v, '\n', vl))
		snprintf(out, outlen, "%.*s", (int)vl, v);
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	transfer *t = ud;
	size_t len = size * n;
	if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
		/* A new response (after a redirect): only the last one's count. */
		t->resp_etag[0] = t->resp_modified[0] = t->resp_range[0] = 0;
		return len;
	}
	header_copy(buf, len, "etag:", t->resp_etag, sizeof t->resp_etag);
	header_copy(buf, len, "last-modified:", t->resp_modified, sizeof t->resp_modified);
	header_copy(buf, len, "content-range:", t->resp_range, sizeof t->resp_range);
	static const char key[] = "x-repo-commit:";
	if (len > sizeof key - 1 && strncasecmp(buf, key, sizeof key - 1) == 0) {
		const char *v = buf + sizeof key - 1;
		while (*v == ' ')
			v++;
		size_t vl = strcspn(v, "\r\n");
		if (vl > 0 && vl < 128) {
			free(t->f->repo_commit);
			t->f->repo_commit = owl_xasprintf("%.*s", (int)vl, v);
		}
	}
	return len;
}

/* A 206 continues our bytes only when it starts where the file ends and
 * carries the validator we resumed against (when it names one at all). */
static int resume_answer_fits(transfer *t)
{
	if (t->start == 0)
		return 0; /* a range nobody asked for */
	unsigned long long first = 0;
	if (sscanf(t->resp_range, "bytes %llu-", &first) != 1 || first != t->start)
		return 0;
	if (t->validator[0] == '"' && t->resp_etag[0] && strcmp(t->resp_etag, t->validator) != 0)
		return 0;
	if (t->validator[0] && t->validator[0] != '"' && t->resp_modified[0] &&
	    strcmp(t->resp_modified, t->validator) != 0)
		return 0;
	return 1;
}

/* The first body bytes of a response: decide what they mean for the file. */
static int on_status(transfer *t)
{
	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->http_status);
	t->status_checked = 1;
	if (t->http_status >= 300)
		return 0; /* not the file: swallowed; the status decides after the transfer */
	curl_off_t cl = -1;
	curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
	if (!t->f->expected_size && cl > 0)
		t->size_hint = (t->http_status == 206 ? t->start : 0) + (uint64_t)cl;
	if (t->http_status == 206) {
		if (!resume_answer_fits(t)) {
			t->bad_resume = 1;
			return -1;
		}
		t->f->resumed = 1;
		return 0;
	}
	/* The whole file: the server ignored Range, or If-Range told it that the
	 * file changed since our bytes were written. Start over. */
	if (t->start > 0) {
		if (partial_truncate(t) != 0) {
			t->write_errno = errno;
			return -1;
		}
		reset_hash(t);
		t->start = 0;
	}
	/* Only a strong validator may be sent back in If-Range (RFC 9110 13.1.5). */
	if (t->resp_etag[0] == '"')
		snprintf(t->validator, sizeof t->validator, "%s", t->resp_etag);
	else if (t->resp_modified[0])
		snprintf(t->validator, sizeof t->validator, "%s", t->resp_modified);
	else
		t->validator[0] = 0;
	meta_write(t);
	return 0;
}

static size_t on_data(char *buf, size_t size, size_t n, void *ud)
{
	transfer *t = ud;
	size_t len = size * n;
	if (!t->status_checked && on_status(t) != 0)
		return 0; /* makes curl end the transfer with a write error */
	if (t->http_status >= 300)
		return len;
	if (fwrite(buf, 1, len, t->out) != len) {
		t->write_errno = errno ? errno : EIO;
		return 0;
	}
	EVP_DigestUpdate(t->md, buf, len);
	if (t->md1)
		EVP_DigestUpdate(t->md1, buf, len);
	t->have += len;
	t->f->bytes_transferred += len;
	return len;
}

/* ---- attempts -------------------------------------------------------------------- */

static int start_attempt(transfer *t, CURLM *multi, owl_err *err)
{
	const registry_fetch_opts *o = t->opts;
	int rc = 0;
	if (!t->out && (rc = partial_open(t, err)))
		return rc;
	t->md = t->md ? t->md : EVP_MD_CTX_new();
	reset_hash(t);
	if ((rc = hash_prefix(t, err)))
		return rc;
	int digest_known = t->f->expected_sha256 || (t->f->expected_git_oid && t->f->expected_size);
	/* Resume only what can be proven to continue: against a validator, or
	 * where a digest will decide. Otherwise the bytes go. */
	int resumable = t->validator[0] || digest_known;
	if (t->have > 0 &&
	    (!resumable || (t->f->expected_size && t->have > t->f->expected_size))) {
		if (partial_truncate(t) != 0)
			return write_failed(t, errno, err);
		reset_hash(t);
	}
	t->start = t->have;
	t->status_checked = 0;
	t->bad_resume = 0;
	t->write_errno = 0;
	t->http_status = 0;
	t->curl_err[0] = 0;
	t->resp_etag[0] = t->resp_modified[0] = t->resp_range[0] = 0;
	CURL *e = curl_easy_init();
	t->easy = e;
	curl_easy_setopt(e, CURLOPT_URL, t->f->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, t);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
	registry_curl_defaults(e, o, t->curl_err);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024L);
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	if (t->start > 0) {
		char range[64];
		snprintf(range, sizeof range, "%llu-", (unsigned long long)t->start);
		curl_easy_setopt(e, CURLOPT_RANGE, range);
		if (t->validator[0]) {
			char *h = owl_xasprintf("If-Range: %s", t->validator);
			t->headers = curl_slist_append(t->headers, h);
			free(h);
		}
	}
	if (o->bearer_token && o->token_host) {
		char *host = url_host(t->f->url, 0);
		if (strcasecmp(host, o->token_host) == 0) {
			char *h = owl_xasprintf("Authorization: Bearer %s", o->bearer_token);
			t->headers = curl_slist_append(t->headers, h);
			free(h);
		}
		free(host);
	}
	if (t->headers)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
	curl_multi_add_handle(multi, e);
	t->active = 1;
	t->attempt++;
	return 0;
}

/* The file is complete in the partial file: check size and digests, then
 * move it where the caller wants it while the lock still keeps every other
 * writer out. */
static int complete(transfer *t, owl_err *err)
{
	const char *name = t->f->name ? t->f->name : t->f->url;
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int dl = 0;
	EVP_DigestFinal_ex(t->md, d, &dl);
	owl_hex(d, dl, t->f->sha256);
	t->f->size = t->have;
	if (t->f->expected_size && t->have != t->f->expected_size) {
		partial_remove(t);
		return owl_err_set(err, OWL_EINTEGRITY, "'%s' has %llu bytes, the source promised %llu; "
				   "nothing was stored", name, (unsigned long long)t->have,
				   (unsigned long long)t->f->expected_size);
	}
	if (t->md1 && t->have == t->f->expected_size) {
		unsigned char g[EVP_MAX_MD_SIZE];
		unsigned int gl = 0;
		char hex[41];
		EVP_DigestFinal_ex(t->md1, g, &gl);
		owl_hex(g, gl, hex);
		if (strcasecmp(hex, t->f->expected_git_oid) != 0) {
			partial_remove(t);
			return owl_err_set(err, OWL_EINTEGRITY, "'%s' is corrupt: the hub lists git blob "
					   "sha1 %s, the bytes received hash to %s; nothing was stored", name,
					   t->f->expected_git_oid, hex);
		}
	}
	if (t->f->expected_sha256 && strcasecmp(t->f->expected_sha256, t->f->sha256) != 0) {
		partial_remove(t);
		return owl_err_set(err, OWL_EINTEGRITY, "'%s' is corrupt: expected sha256 %s, got %s; "
				   "nothing was stored", name, t->f->expected_sha256, t->f->sha256);
	}
	if (t->f->final_path) {
		if (rename(t->path, t->f->final_path) != 0)
			return owl_err_set(err, OWL_EFAIL, "cannot move '%s' to '%s': %s", t->path,
					   t->f->final_path, strerror(errno));
	} else if (!t->shared) {
		/* The caller expects the file at tmp_path. */
		if (rename(t->path, t->f->tmp_path) != 0)
			return owl_err_set(err, OWL_EFAIL, "cannot move '%s' to '%s': %s", t->path,
					   t->f->tmp_path, strerror(errno));
	}
	char *mp = meta_path(t->path);
	unlink(mp);
	free(mp);
	t->done = 1;
	partial_close(t);
	return 0;
}

/* After a transfer ended: 0 with *retry set when it should be tried again
 * later, 0 when the file is complete, or an error code. *budget is the
 * number of retries the whole fetch has left. */
static int finish_attempt(transfer *t, CURLM *multi, CURLcode code, int *budget, int *retry,
			  owl_err *err)
{
	*retry = 0;
	long status = 0;
	curl_off_t connected_us = 0;
	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(t->easy, CURLINFO_CONNECT_TIME_T, &connected_us);
	char *server = server_of(t);
	curl_multi_remove_handle(multi, t->easy);
	curl_easy_cleanup(t->easy);
	t->easy = NULL;
	t->active = 0;
	const char *name = t->f->name ? t->f->name : t->f->url;
	int max_retries = t->opts->max_retries ? t->opts->max_retries : 5;
	int retryable = 0, rc = 0;
	char why[CURL_ERROR_SIZE + 128] = "";
	if (fflush(t->out) != 0 || fsync(fileno(t->out)) != 0) {
		rc = write_failed(t, errno, err);
		goto out;
	}
	if (code == CURLE_WRITE_ERROR && t->write_errno) {
		rc = write_failed(t, t->write_errno, err);
		goto out;
	}
	if (code == CURLE_WRITE_ERROR && t->bad_resume) {
		/* The server answered a resume with bytes that do not continue
		 * ours (another offset, another ETag): start over at once. */
		owl_log(1, "'%s': the server's partial answer does not continue the file; starting over",
			name);
		if (partial_truncate(t) != 0) {
			rc = write_failed(t, errno, err);
			goto out;
		}
		retryable = 1;
		snprintf(why, sizeof why, "a partial answer that does not continue the file");
		if (t->attempt > max_retries) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s' from %s: the server keeps "
					 "answering a resume with bytes that do not continue the file",
					 name, server);
			goto out;
		}
	} else if (code != CURLE_OK) {
		int slow = code == CURLE_OPERATION_TIMEDOUT && connected_us > 0;
		switch (code) {
		case CURLE_COULDNT_CONNECT:
		case CURLE_OPERATION_TIMEDOUT:
		case CURLE_RECV_ERROR:
		case CURLE_SEND_ERROR:
		case CURLE_PARTIAL_FILE:
		case CURLE_GOT_NOTHING:
		case CURLE_HTTP2:
		case CURLE_HTTP2_STREAM:
			retryable = 1;
			break;
		default:
			break;
		}
		if (slow && ++t->slow_aborts >= SLOW_ABORTS_MAX) {
			char rate[32];
			int64_t r = min_rate(t->opts);
			fmt_rate(r > 0 ? r : 1, rate, sizeof rate); /* off: the 1 byte/s stall check */
			rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s' from %s: slower than %s "
					 "for %ld s, %d times; the server is stalled or too slow "
					 "(--min-rate RATE accepts a slower one, --min-rate 0 turns the "
					 "check off)", name, server, rate, min_rate_window(t->opts),
					 t->slow_aborts);
			goto out;
		}
		snprintf(why, sizeof why, "%s", t->curl_err[0] ? t->curl_err : curl_easy_strerror(code));
		if (!retryable || t->attempt > max_retries) {
			const char *hint = "";
			if (code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE ||
			    code == CURLE_SSL_CONNECT_ERROR)
				hint = " (TLS verification failed; for a private CA pass --ca-cert FILE)";
			rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s' from %s: %s%s%s", name,
					 server, why, retryable ? " (after retries)" : "", hint);
			goto out;
		}
	} else if (status == 416 && t->start > 0) {
		/* The partial file is already complete (or bogus): check it below
		 * if the size is known, else start over. */
		if (!(t->f->expected_size && t->have == t->f->expected_size)) {
			if (partial_truncate(t) != 0)
				rc = write_failed(t, errno, err);
			else
				*retry = 1;
			goto out;
		}
	} else if (status >= 500 || status == 429 || status == 408) {
		retryable = 1;
		snprintf(why, sizeof why, "HTTP %ld", status);
		if (t->attempt > max_retries) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld from %s "
					 "(after %d attempts)", name, status, server, t->attempt);
			goto out;
		}
	} else if (status == 401 || status == 403) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld (not authorised%s)",
				 name, status,
				 t->opts->bearer_token ? ": the token was refused"
						       : "; a gated model needs OWL_HF_TOKEN");
		goto out;
	} else if (status == 404) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP 404 (no such file on "
				 "the server)", name);
		goto out;
	} else if (status >= 300) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld", name, status);
		goto out;
	} else if (!t->status_checked && t->start > 0 && status != 206) {
		/* A whole, empty answer to a resume: the file is empty now. */
		if (partial_truncate(t) != 0) {
			rc = write_failed(t, errno, err);
			goto out;
		}
		reset_hash(t);
	}
	if (retryable) {
		if (*budget <= 0) {
			int total = t->opts->retry_budget ? t->opts->retry_budget : 20;
			rc = owl_err_set(err, OWL_EFAIL, "cannot download '%s' from %s: %s (the pull's "
					 "%d retries are spent)", name, server, why, total);
			goto out;
		}
		(*budget)--;
		/* Exponential backoff: 0.5 s, 1 s, 2 s ... capped at 30 s. */
		double delay = 0.5 * (double)(1u << (t->attempt > 6 ? 6 : t->attempt - 1));
		if (t->bad_resume)
			delay = 0;
		t->next_try = owl_now() + (delay > 30 ? 30 : delay);
		owl_log(1, "retrying '%s' (attempt %d) in %.1f s: %s", name, t->attempt + 1, delay, why);
		*retry = 1;
		goto out;
	}
	rc = complete(t, err);
out:
	free(server);
	if (rc || !*retry)
		partial_close(t);
	return rc;
}

int registry_fetch_files(const registry_fetch_opts *opts, registry_fetch_file *files, size_t n,
			 owl_err *err)
{
	static const registry_fetch_opts defaults;
	if (!opts)
		opts = &defaults;
	registry_curl_global_init();
	for (size_t i = 0; i < n; i++) {
		files[i].bytes_transferred = 0;
		files[i].size = 0;
		files[i].sha256[0] = 0;
		files[i].resumed = 0;
		owl_err_clear(&files[i].err);
	}
	CURLM *multi = curl_multi_init();
	transfer *ts = owl_xcalloc(n ? n : 1, sizeof *ts);
	for (size_t i = 0; i < n; i++) {
		ts[i].f = &files[i];
		ts[i].opts = opts;
		ts[i].size_hint = files[i].expected_size;
		ts[i].path = owl_xstrdup(files[i].tmp_path);
		ts[i].shared = 1;
	}
	char label[64];
	snprintf(label, sizeof label, "download (%zu file%s)", n, n == 1 ? "" : "s");
	int parallel = opts->parallel > 0 ? opts->parallel : 4;
	int budget = opts->retry_budget > 0 ? opts->retry_budget : 20;
	int rc = 0, running = 0;
	size_t ndone = 0;
	double last_progress = 0;
	while (ndone < n && rc == 0) {
		if (opts->cancelled && opts->cancelled(opts->cancel_ctx)) {
			rc = owl_err_set(err, OWL_EFAIL, "the download was cancelled (%zu of %zu files "
					 "done; partial files stay for a resume)", ndone, n);
			break;
		}
		/* Start attempts while there is room and nothing is waiting on backoff. */
		double now = owl_now();
		int active = 0;
		for (size_t i = 0; i < n; i++)
			active += ts[i].active;
		for (size_t i = 0; i < n && active < parallel && rc == 0; i++) {
			transfer *t = &ts[i];
			if (t->done || t->active || t->failed || t->next_try > now)
				continue;
			rc = start_attempt(t, multi, &t->f->err);
			if (rc) {
				owl_err_set(err, rc, "%s", t->f->err.msg);
				break;
			}
			active++;
		}
		if (rc)
			break;
		curl_multi_perform(multi, &running);
		CURLMsg *m;
		int left;
		while ((m = curl_multi_info_read(multi, &left))) {
			if (m->msg != CURLMSG_DONE)
				continue;
			transfer *t = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
			int retry = 0;
			int r = finish_attempt(t, multi, m->data.result, &budget, &retry, &t->f->err);
			if (r == 0 && !retry) {
				ndone++;
			} else if (r != 0) {
				t->failed = 1;
				if (!rc) {
					rc = r;
					owl_err_set(err, r, "%s", t->f->err.msg);
				}
			}
		}
		if (opts->progress && (owl_now() - last_progress > 0.2 || ndone == n)) {
			/* The total is known once every file's size is. */
			uint64_t have = 0, total = 0;
			int unknown = 0;
			for (size_t i = 0; i < n; i++) {
				have += ts[i].done ? ts[i].f->size : ts[i].have;
				total += ts[i].size_hint;
				unknown |= ts[i].size_hint == 0;
			}
			opts->progress(opts->progress_ctx, label, have, unknown ? 0 : total);
			last_progress = owl_now();
		}
		if (ndone < n && rc == 0)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	}
	/* Abort what is still running; shared partial files stay for the next
	 * resume (and for gc, once nobody holds them). */
	for (size_t i = 0; i < n; i++) {
		transfer *t = &ts[i];
		if (t->easy) {
			curl_multi_remove_handle(multi, t->easy);
			curl_easy_cleanup(t->easy);
		}
		partial_close(t);
		curl_slist_free_all(t->headers);
		EVP_MD_CTX_free(t->md);
		EVP_MD_CTX_free(t->md1);
		free(t->path);
	}
	free(ts);
	curl_multi_cleanup(multi);
	return rc;
}

void registry_fetch_file_release(registry_fetch_file *f)
{
	if (!f)
		return;
	free(f->repo_commit);
	f->repo_commit = NULL;
}

/* ---- reclaiming partial downloads ------------------------------------------------ */

static int has_suffix(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && strcmp(s + a - b, suffix) == 0;
}

int registry_downloads_reclaim(registry_store *s, int dry_run, uint64_t *files_removed,
			       uint64_t *bytes_freed, owl_err *err)
{
	*files_removed = 0;
	*bytes_freed = 0;
	char *dir = owl_path_join(s->tmp_dir, "downloads");
	if (!owl_is_dir(dir)) {
		free(dir);
		return 0;
	}
	char **names = NULL;
	size_t n = 0;
	int rc = owl_list_dir(dir, &names, &n, err);
	for (size_t i = 0; i < n && !rc; i++) {
		char *path = owl_path_join(dir, names[i]);
		if (has_suffix(names[i], ".part")) {
			/* Held by a running fetch: its lock says so. Taking the lock
			 * ourselves keeps a new fetch from starting on it meanwhile
			 * (it would write a private file instead). */
			int fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
			struct stat a, b;
			if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && fstat(fd, &a) == 0 &&
			    S_ISREG(a.st_mode) && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
			    a.st_dev == b.st_dev) {
				char *mp = meta_path(path);
				if (!dry_run && unlink(path) != 0)
					rc = owl_err_set(err, OWL_EFAIL, "cannot remove '%s': %s", path,
							 strerror(errno));
				if (!dry_run)
					unlink(mp);
				free(mp);
				if (!rc) {
					(*files_removed)++;
					*bytes_freed += (uint64_t)a.st_size;
				}
			}
			if (fd >= 0)
				close(fd);
		} else if (has_suffix(names[i], ".part.meta")) {
			/* A resume note whose partial file is gone. */
			char *part = owl_xasprintf("%.*s", (int)(strlen(path) - 5), path);
			if (!owl_path_exists(part) && !dry_run)
				unlink(path);
			free(part);
		}
		free(path);
	}
	owl_free_names(names, n);
	free(dir);
	return rc;
}
