/* common: small pieces shared by every owl module.
 *
 * Errors: every function that can fail takes an `owl_err *` (may be NULL when
 * the caller does not care about the message) and returns an int status: 0 on
 * success, otherwise one of the OWL_E* codes below, which are also the process
 * exit codes that cmd/ uses. Nothing below cmd/ prints or exits.
 */
#ifndef OWL_COMMON_H
#define OWL_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OWL_VERSION "0.1.0"

/* Exit codes (DESIGN.md: 0 ok, 1 failure, 2 usage, 3 denied, 4 integrity). */
enum {
	OWL_OK = 0,
	OWL_EFAIL = 1,
	OWL_EUSAGE = 2,
	OWL_EDENIED = 3,
	OWL_EINTEGRITY = 4,
};

typedef struct owl_err {
	int code;        /* one of OWL_E*, 0 when no error was recorded */
	char msg[1024];  /* lowercase, no final period, subject first */
} owl_err;

/* Records code and a printf-style message in err (if not NULL) and returns
 * code, so that callers can write `return owl_err_set(err, OWL_EFAIL, ...)`. */
int owl_err_set(owl_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Prefixes err->msg with more context: "prefix: old message". Returns err->code. */
int owl_err_wrap(owl_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void owl_err_clear(owl_err *err);

/* Logging goes to stderr only when cmd/ turned it on (e.g. --verbose); library
 * code may call it freely. */
void owl_log_set_level(int level); /* 0 quiet, 1 info, 2 debug */
void owl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Memory helpers that abort on out-of-memory: owl treats OOM of small
 * bookkeeping allocations as fatal, and checks big (tensor, file) allocations
 * itself. */
void *owl_xmalloc(size_t n);
void *owl_xcalloc(size_t n, size_t size);
void *owl_xrealloc(void *p, size_t n);
char *owl_xstrdup(const char *s);
char *owl_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Growable string buffer with a hard maximum (curl's dynbuf idea): appends past
 * max fail instead of growing without bound. */
typedef struct owl_buf {
	char *data; /* always NUL-terminated when len > 0 */
	size_t len, cap, max;
} owl_buf;
void owl_buf_init(owl_buf *b, size_t max);
int owl_buf_append(owl_buf *b, const void *p, size_t n); /* 0 or OWL_EFAIL past max */
int owl_buf_printf(owl_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void owl_buf_release(owl_buf *b);
/* Hands the buffer's memory to the caller (who frees it) and resets b. */
char *owl_buf_steal(owl_buf *b);

/* Formatting helpers for humans. */
void owl_fmt_bytes(uint64_t bytes, char *out, size_t outlen); /* "1.5 GiB" */
void owl_fmt_duration(double seconds, char *out, size_t outlen); /* "1m02s" */
double owl_now(void); /* monotonic seconds */
int64_t owl_unix_time(void);
void owl_fmt_time(int64_t unix_seconds, char *out, size_t outlen); /* ISO 8601 UTC */

/* Hex encoding of a digest or any bytes; out must hold 2*n+1 chars. */
void owl_hex(const uint8_t *bytes, size_t n, char *out);
int owl_is_hex_digest(const char *s, size_t nhex); /* all [0-9a-f], exact length */

/* Who runs owl: $USER, else the account name of the user id, else "uid N". */
const char *owl_user_name(void);

/* A copy of s[0..n) as valid UTF-8: each invalid byte becomes U+FFFD, so that
 * model output can go into JSON. Caller frees. */
char *owl_utf8_sanitize(const char *s, size_t n);

/* Glob match with * and ? (for name patterns, license matchers). */
int owl_glob_match(const char *pattern, const char *s);

/* Edit distance, for "did you mean" suggestions. */
int owl_edit_distance(const char *a, const char *b);

/* ---- file system ---------------------------------------------------- */

/* mkdir -p; mode 0755. */
int owl_mkdir_p(const char *path, owl_err *err);
int owl_path_exists(const char *path);
int owl_is_dir(const char *path);
/* Joins a and b with one '/'; caller frees. */
char *owl_path_join(const char *a, const char *b);
/* Opens a shared object owl loads at run time (the CUDA backend, the MPI
 * side of a launch): the path in environment variable env_name, else name
 * beside the running executable, else name on the library path. global:
 * RTLD_GLOBAL (its own plugins need its symbols). NULL with dlerror()'s
 * reason in why when none opens. */
void *owl_dlopen_lib(const char *env_name, const char *name, int global, char *why, size_t why_len);
/* fsync a file descriptor's directory entry by path (after rename). */
int owl_fsync_dir(const char *dir, owl_err *err);
/* Writes data to path atomically: tmp file beside it, fsync, rename, fsync dir. */
int owl_write_file_atomic(const char *path, const void *data, size_t n, owl_err *err);
/* Reads a whole file of at most max bytes; *out is NUL-terminated, caller frees. */
int owl_read_file(const char *path, size_t max, char **out, size_t *outlen, owl_err *err);
/* dir/name (at most max bytes) parsed as a JSON object into *out (a
 * json_t *, the caller's to json_decref); anything else is an error
 * naming the file and where the parse stopped. */
int owl_read_json_object(const char *dir, const char *name, size_t max, void **out,
			 owl_err *err);
/* The entry names of dir in sorted order, hidden ones (".x") left out, so
 * that output and errors come in the same order every time. *names and each
 * name are malloc'd: free with owl_free_names. */
int owl_list_dir(const char *dir, char ***names, size_t *n, owl_err *err);
void owl_free_names(char **names, size_t n);
/* rm -rf; missing path is not an error. */
int owl_remove_tree(const char *path, owl_err *err);
/* Free bytes on the file system holding path, or -1. */
int64_t owl_disk_free(const char *path);

/* ---- progress -------------------------------------------------------- */

/* A progress reporter for long work. On a terminal it redraws one line with
 * bytes, rate and ETA; elsewhere it prints a quiet line every few seconds.
 * It writes to stderr; library code receives it as an opaque callback so that
 * nothing below cmd/ decides what is printed. */
typedef void (*owl_progress_fn)(void *ctx, const char *label, uint64_t done, uint64_t total);

typedef struct owl_progress {
	int tty;           /* redraw a bar (1) or print occasional lines (0) */
	int quiet;         /* print nothing */
	double start, last_print;
	uint64_t last_done;
	char label[128];
} owl_progress;
void owl_progress_init(owl_progress *p, int quiet);
/* Matches owl_progress_fn; ctx is an owl_progress. */
void owl_progress_update(void *ctx, const char *label, uint64_t done, uint64_t total);
void owl_progress_finish(owl_progress *p);

#endif
