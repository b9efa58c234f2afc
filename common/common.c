#define _GNU_SOURCE
#include "common.h"

#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <unistd.h>

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int owl_err_set(owl_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int owl_err_wrap(owl_err *err, const char *fmt, ...)
{
	if (!err)
		return OWL_EFAIL;
	char prefix[512], old[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	snprintf(err->msg, sizeof err->msg, "%s: %s", prefix, old);
	if (!err->code)
		err->code = OWL_EFAIL;
	return err->code;
}

void owl_err_clear(owl_err *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = 0;
	}
}

/* Set once by the CLI, read from any thread. */
static atomic_int log_level;

void owl_log_set_level(int level) { log_level = level; }

void owl_log(int level, const char *fmt, ...)
{
	if (level > log_level)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("owl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static void oom(size_t n)
{
	fprintf(stderr, "owl: fatal: out of memory allocating %zu bytes\n", n);
	abort();
}

void *owl_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		oom(n);
	return p;
}

void *owl_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p)
		oom(n * size);
	return p;
}

void *owl_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		oom(n);
	return q;
}

char *owl_xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *p = owl_xmalloc(n);
	memcpy(p, s, n);
	return p;
}

char *owl_xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom(0);
	return s;
}

void owl_buf_init(owl_buf *b, size_t max)
{
	b->data = NULL;
	b->len = b->cap = 0;
	b->max = max;
}

int owl_buf_append(owl_buf *b, const void *p, size_t n)
{
	if (n > b->max || b->len > b->max - n)
		return OWL_EFAIL;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		b->data = owl_xrealloc(b->data, cap);
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = 0;
	return 0;
}

int owl_buf_printf(owl_buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *s = NULL;
	int n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		oom(0);
	int rc = owl_buf_append(b, s, (size_t)n);
	free(s);
	return rc;
}

void owl_buf_release(owl_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

char *owl_buf_steal(owl_buf *b)
{
	char *p = b->data ? b->data : owl_xstrdup("");
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void owl_fmt_bytes(uint64_t bytes, char *out, size_t outlen)
{
	static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)bytes;
	int u = 0;
	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(out, outlen, "%llu B", (unsigned long long)bytes);
	else
		snprintf(out, outlen, "%.1f %s", v, units[u]);
}

void owl_fmt_duration(double seconds, char *out, size_t outlen)
{
	if (seconds < 0 || seconds > 1e7) {
		snprintf(out, outlen, "--");
		return;
	}
	long s = (long)(seconds + 0.5);
	if (s < 60)
		snprintf(out, outlen, "%lds", s);
	else if (s < 3600)
		snprintf(out, outlen, "%ldm%02lds", s / 60, s % 60);
	else
		snprintf(out, outlen, "%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

double owl_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

int64_t owl_unix_time(void) { return (int64_t)time(NULL); }

void owl_fmt_time(int64_t unix_seconds, char *out, size_t outlen)
{
	time_t t = (time_t)unix_seconds;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void owl_hex(const uint8_t *bytes, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 15];
	}
	out[2 * n] = 0;
}

int owl_is_hex_digest(const char *s, size_t nhex)
{
	if (!s || strlen(s) != nhex)
		return 0;
	for (size_t i = 0; i < nhex; i++)
		if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
			return 0;
	return 1;
}

int owl_glob_match(const char *p, const char *s)
{
	/* Iterative matcher with single backtrack point: linear in practice and
	 * safe against patterns like "*a*a*a*b" (no exponential recursion). */
	const char *star = NULL, *resume = NULL;
	while (*s) {
		if (*p == '*') {
			star = p++;
			resume = s;
		} else if (*p == '?' || *p == *s) {
			p++;
			s++;
		} else if (star) {
			p = star + 1;
			s = ++resume;
		} else {
			return 0;
		}
	}
	while (*p == '*')
		p++;
	return *p == 0;
}

int owl_edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 64 || lb > 64)
		return 1000;
	int d[65][65];
	for (size_t i = 0; i <= la; i++)
		d[i][0] = (int)i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = (int)j;
	for (size_t i = 1; i <= la; i++)
		for (size_t j = 1; j <= lb; j++) {
			int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
			if (d[i - 1][j] + 1 < c)
				c = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < c)
				c = d[i][j - 1] + 1;
			d[i][j] = c;
		}
	return d[la][lb];
}

/* Who this process runs as does not change: found once (getpwuid_r), so
 * that threads asking at once share one answer and no static buffer of
 * getpwuid's. */
static char user_name[256];
static pthread_once_t user_name_once = PTHREAD_ONCE_INIT;

static void find_user_name(void)
{
	const char *u = getenv("USER");
	if (u && *u) {
		snprintf(user_name, sizeof user_name, "%s", u);
		return;
	}
	struct passwd pw, *found = NULL;
	char buf[4096];
	if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &found) == 0 && found && found->pw_name)
		snprintf(user_name, sizeof user_name, "%s", found->pw_name);
	else
		snprintf(user_name, sizeof user_name, "uid %d", (int)getuid());
}

const char *owl_user_name(void)
{
	pthread_once(&user_name_once, find_user_name);
	return user_name;
}

char *owl_utf8_sanitize(const char *s, size_t n)
{
	owl_buf b;
	owl_buf_init(&b, 4 * n + 16);
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = p[i];
		size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
		int ok = len > 0 && i + len <= n && c != 0;
		for (size_t k = 1; ok && k < len; k++)
			ok = (p[i + k] & 0xC0) == 0x80;
		/* Overlong forms and surrogates are not valid either. */
		if (ok && len == 2 && c < 0xC2)
			ok = 0;
		if (ok && len == 3 && ((c == 0xE0 && p[i + 1] < 0xA0) || (c == 0xED && p[i + 1] >= 0xA0)))
			ok = 0;
		if (ok && len == 4 && ((c == 0xF0 && p[i + 1] < 0x90) || c > 0xF4 || (c == 0xF4 && p[i + 1] >= 0x90)))
			ok = 0;
		if (ok) {
			owl_buf_append(&b, p + i, len);
			i += len;
		} else {
			owl_buf_append(&b, "\xEF\xBF\xBD", 3);
			i++;
		}
	}
	char *out = b.len ? owl_buf_steal(&b) : owl_xstrdup("");
	owl_buf_release(&b);
	return out;
}
