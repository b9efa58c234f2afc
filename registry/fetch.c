/* Downloads over HTTP(S) with libcurl's multi interface: several files at
 * once, SHA-256 while the bytes stream, resume with Range, retries with
 * backoff, TLS verification always on. The bearer token goes to token_host
 * only: a hub answers large files with a redirect to a CDN, and the CDN must
 * never see it. */
#define _GNU_SOURCE
#include "registry.h"
#include "source_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define WRITE_BUF (1u << 20)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* One transfer in flight: the file, its hash state and its attempt. */
typedef struct transfer {
	registry_fetch_file *f;
	const registry_fetch_opts *opts;
	CURL *easy;
	struct curl_slist *headers;
	FILE *out;
	EVP_MD_CTX *md;
	EVP_MD_CTX *md1;      /* git blob sha1, when the hub lists one */
	uint64_t have;        /* bytes in the file (resumed prefix + this attempt) */
	uint64_t start;       /* offset this attempt asked for */
	uint64_t size_hint;   /* expected_size, or what Content-Length announced */
	int attempt;
	int status_checked;   /* the response status was looked at */
	int restart_from_zero;/* the server ignored Range: rewrite the file */
	long http_status;
	int failed;           /* a non-retryable error is recorded in f->err */
	double next_try;      /* owl_now() time of the next attempt (backoff) */
	int active;
	int done;
	char curl_err[CURL_ERROR_SIZE];
} transfer;

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
	/* A transfer slower than 1 byte/s for the stall timeout is aborted. */
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->stall_timeout_s ? o->stall_timeout_s : 60L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "owl/" OWL_VERSION);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
}

/* Hashes what the partial file already holds, so that the final digest
 * covers the whole file even when most of it came in an earlier run. */
static int hash_prefix(transfer *t, owl_err *err)
{
	FILE *in = fopen(t->f->tmp_path, "rb");
	if (!in) {
		t->have = 0;
		return 0;
	}
	unsigned char *buf = owl_xmalloc(WRITE_BUF);
	size_t n;
	uint64_t total = 0;
	while ((n = fread(buf, 1, WRITE_BUF, in)) > 0) {
		EVP_DigestUpdate(t->md, buf, n);
		if (t->md1)
			EVP_DigestUpdate(t->md1, buf, n);
		total += n;
	}
	int bad = ferror(in);
	fclose(in);
	free(buf);
	if (bad)
		return owl_err_set(err, OWL_EFAIL, "cannot read partial download '%s': %s",
				   t->f->tmp_path, strerror(errno));
	t->have = total;
	return 0;
}

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

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
	transfer *t = ud;
	size_t len = size * n;
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

static size_t on_data(char *buf, size_t size, size_t n, void *ud)
{
	transfer *t = ud;
	size_t len = size * n;
	if (!t->status_checked) {
		/* Bodies of redirects never reach here (curl follows them); an
		 * error status body is not written to the file. */
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->http_status);
		t->status_checked = 1;
		if (t->http_status >= 400)
			return len; /* swallowed; the status decides after the transfer */
		curl_off_t cl = -1;
		curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (!t->f->expected_size && cl > 0)
			t->size_hint = (t->http_status == 206 ? t->start : 0) + (uint64_t)cl;
		if (t->start > 0 && t->http_status == 200) {
			/* The server ignored Range: start over from zero. */
			if (ftruncate(fileno(t->out), 0) != 0 || fseek(t->out, 0, SEEK_SET) != 0)
				return 0;
			reset_hash(t);
			t->have = 0;
			t->restart_from_zero = 1;
		}
	}
	if (t->http_status >= 400)
		return len;
	if (fwrite(buf, 1, len, t->out) != len)
		return 0; /* makes curl fail with a write error */
	EVP_DigestUpdate(t->md, buf, len);
	if (t->md1)
		EVP_DigestUpdate(t->md1, buf, len);
	t->have += len;
	t->f->bytes_transferred += len;
	return len;
}

/* Only the hub host may see the token; curl drops custom headers on a
 * redirect to another host only when told, so the header is added per
 * request and CURLOPT_UNRESTRICTED_AUTH stays off. */
static char *url_host(const char *url)
{
	const char *h = strstr(url, "://");
	h = h ? h + 3 : url;
	const char *at = NULL;
	for (const char *c = h; *c && *c != '/'; c++)
		if (*c == '@')
			at = c;
	if (at)
		h = at + 1;
	return owl_xasprintf("%.*s", (int)strcspn(h, "/:?#"), h);
}

static int start_attempt(transfer *t, CURLM *multi, owl_err *err)
{
	const registry_fetch_opts *o = t->opts;
	t->md = t->md ? t->md : EVP_MD_CTX_new();
	reset_hash(t);
	int rc = hash_prefix(t, err);
	if (rc)
		return rc;
	if (t->f->expected_size && t->have > t->f->expected_size) {
		/* A partial file longer than the real one cannot be resumed. */
		unlink(t->f->tmp_path);
		reset_hash(t);
		t->have = 0;
	}
	t->out = fopen(t->f->tmp_path, "ab");
	if (!t->out)
		return owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", t->f->tmp_path,
				   strerror(errno));
	setvbuf(t->out, NULL, _IOFBF, WRITE_BUF);
	t->start = t->have;
	t->status_checked = 0;
	t->restart_from_zero = 0;
	t->http_status = 0;
	t->curl_err[0] = 0;
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
	if (t->start > 0) {
		char range[64];
		snprintf(range, sizeof range, "%llu-", (unsigned long long)t->start);
		curl_easy_setopt(e, CURLOPT_RANGE, range);
	}
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	if (o->bearer_token && o->token_host) {
		char *host = url_host(t->f->url);
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

/* After a transfer ended: 0 with *retry set when it should be tried again
 * later, 0 when the file is complete, or an error code. */
static int finish_attempt(transfer *t, CURLM *multi, CURLcode code, int *retry, owl_err *err)
{
	*retry = 0;
	long status = 0;
	curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(multi, t->easy);
	curl_easy_cleanup(t->easy);
	t->easy = NULL;
	t->active = 0;
	int flush_failed = fflush(t->out) != 0;
	int sync_failed = fsync(fileno(t->out)) != 0;
	fclose(t->out);
	t->out = NULL;
	const char *name = t->f->name ? t->f->name : t->f->url;
	int max_retries = t->opts->max_retries ? t->opts->max_retries : 5;
	int retryable = 0;
	/* An error answer wrote nothing: leave no empty partial file behind. */
	if (t->have == 0 && (code != CURLE_OK || status >= 400))
		unlink(t->f->tmp_path);
	if (flush_failed || sync_failed)
		return owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", t->f->tmp_path,
				   strerror(errno));
	if (code != CURLE_OK) {
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
		if (!retryable || t->attempt > max_retries) {
			const char *hint = "";
			if (code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_SSL_CACERT_BADFILE ||
			    code == CURLE_SSL_CONNECT_ERROR)
				hint = " (TLS verification failed; for a private CA pass --ca-cert FILE)";
			return owl_err_set(err, OWL_EFAIL, "cannot download '%s': %s%s%s", name,
					   t->curl_err[0] ? t->curl_err : curl_easy_strerror(code),
					   retryable ? " (after retries)" : "", hint);
		}
	} else if (status == 416 && t->start > 0) {
		/* The partial file is already complete (or bogus): check it below
		 * if the size is known, else start over. */
		if (!(t->f->expected_size && t->have == t->f->expected_size)) {
			unlink(t->f->tmp_path);
			*retry = 1;
			return 0;
		}
	} else if (status >= 500 || status == 429 || status == 408) {
		retryable = 1;
		if (t->attempt > max_retries)
			return owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld from the "
					   "server (after %d attempts)", name, status, t->attempt);
	} else if (status == 401 || status == 403) {
		return owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld (not authorised%s)",
				   name, status,
				   t->opts->bearer_token ? ": the token was refused"
							 : "; a gated model needs OWL_HF_TOKEN");
	} else if (status == 404) {
		return owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP 404 (no such file on "
				   "the server)", name);
	} else if (status >= 400) {
		return owl_err_set(err, OWL_EFAIL, "cannot download '%s': HTTP %ld", name, status);
	}
	if (retryable) {
		/* Exponential backoff: 0.5 s, 1 s, 2 s ... capped at 30 s. */
		double delay = 0.5 * (double)(1u << (t->attempt > 6 ? 6 : t->attempt - 1));
		t->next_try = owl_now() + (delay > 30 ? 30 : delay);
		owl_log(1, "retrying '%s' (attempt %d) in %.1f s", name, t->attempt + 1, delay);
		*retry = 1;
		return 0;
	}
	/* Complete: size and digest. */
	unsigned char d[EVP_MAX_MD_SIZE];
	unsigned int dl = 0;
	EVP_DigestFinal_ex(t->md, d, &dl);
	owl_hex(d, dl, t->f->sha256);
	t->f->size = t->have;
	if (t->f->expected_size && t->have != t->f->expected_size) {
		unlink(t->f->tmp_path);
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
			unlink(t->f->tmp_path);
			return owl_err_set(err, OWL_EINTEGRITY, "'%s' is corrupt: the hub lists git blob "
					   "sha1 %s, the bytes received hash to %s; nothing was stored", name,
					   t->f->expected_git_oid, hex);
		}
	}
	if (t->f->expected_sha256 && strcasecmp(t->f->expected_sha256, t->f->sha256) != 0) {
		unlink(t->f->tmp_path);
		return owl_err_set(err, OWL_EINTEGRITY, "'%s' is corrupt: expected sha256 %s, got %s; "
				   "nothing was stored", name, t->f->expected_sha256, t->f->sha256);
	}
	t->done = 1;
	return 0;
}

int registry_fetch_files(const registry_fetch_opts *opts, registry_fetch_file *files, size_t n,
			 owl_err *err)
{
	static const registry_fetch_opts defaults;
	if (!opts)
		opts = &defaults;
	pthread_once(&curl_once, curl_init_once);
	for (size_t i = 0; i < n; i++) {
		files[i].bytes_transferred = 0;
		files[i].size = 0;
		files[i].sha256[0] = 0;
		owl_err_clear(&files[i].err);
	}
	CURLM *multi = curl_multi_init();
	transfer *ts = owl_xcalloc(n ? n : 1, sizeof *ts);
	for (size_t i = 0; i < n; i++) {
		ts[i].f = &files[i];
		ts[i].opts = opts;
		ts[i].size_hint = files[i].expected_size;
	}
	char label[64];
	snprintf(label, sizeof label, "download (%zu file%s)", n, n == 1 ? "" : "s");
	int parallel = opts->parallel > 0 ? opts->parallel : 4;
	int rc = 0, running = 0;
	size_t ndone = 0;
	double last_progress = 0;
	while (ndone < n && rc == 0) {
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
			int r = finish_attempt(t, multi, m->data.result, &retry, &t->f->err);
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
				have += ts[i].have;
				total += ts[i].size_hint;
				unknown |= ts[i].size_hint == 0;
			}
			opts->progress(opts->progress_ctx, label, have, unknown ? 0 : total);
			last_progress = owl_now();
		}
		if (ndone < n && rc == 0)
			curl_multi_poll(multi, NULL, 0, 100, NULL);
	}
	/* Abort what is still running; partial files stay for the next resume. */
	for (size_t i = 0; i < n; i++) {
		transfer *t = &ts[i];
		if (t->easy) {
			curl_multi_remove_handle(multi, t->easy);
			curl_easy_cleanup(t->easy);
		}
		if (t->out) {
			fflush(t->out);
			fclose(t->out);
		}
		curl_slist_free_all(t->headers);
		EVP_MD_CTX_free(t->md);
		EVP_MD_CTX_free(t->md1);
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
