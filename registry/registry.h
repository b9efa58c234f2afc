/* registry: the store (SQLite + content-addressed blobs), sources and
 * downloads, versions, tags, verify, gc and bundles.
 *
 * Layout of a data home (DESIGN.md): owl.db, blobs/sha256/<2 hex>/<64 hex>,
 * tmp/ (same file system as blobs, so the final rename is atomic), runs/,
 * logs/. Every change that spans rows is one transaction.
 */
#ifndef OWL_REGISTRY_H
#define OWL_REGISTRY_H

#include <sqlite3.h>

#include "common/common.h"

/* ---- the store ------------------------------------------------------- */

/* Called while a writer waits for the database lock that another process
 * holds: after about a second, then every few seconds. holder_pid is the
 * process holding the write lock when the system says (Linux /proc/locks),
 * else 0. */
typedef void (*registry_wait_fn)(void *ctx, const char *what, int holder_pid, double waited_s);

/* An open data home: the database connection, the paths and the
 * transaction state (registry/store_impl.h, private to registry/). One
 * handle is used by one thread at a time; threads that work in parallel
 * open a handle each. */
typedef struct registry_store registry_store;

/* How registry_store_open_ex opens a home. Zero-initialised means: read and
 * write, refuse a lost database, wait silently for the lock. */
typedef struct registry_open_opts {
	/* The caller only reads. When the home (or owl.db) is not writable the
	 * database is opened read-only (or, when SQLite cannot create its WAL
	 * index there, immutable); otherwise such a home is refused, naming
	 * `verb`. */
	int read_only_ok;
	const char *verb;      /* for messages: "tag", "policy add" ... */
	/* owl recover: open a home whose owl.db is missing, empty or unreadable
	 * although blobs/ holds blobs (an unreadable owl.db is first moved aside
	 * to owl.db.broken-TIME). Without it such a home is refused. */
	int recover;
	registry_wait_fn wait_fn;
	void *wait_ctx;
} registry_open_opts;

/* Opens (creating if needed) the data home and its database, and brings the
 * registry's schema up to date. A database written by a newer owl is refused.
 * A missing or empty owl.db in a home whose blobs/ holds blobs is refused
 * (the database was lost: see registry_recover), so that nothing treats the
 * blobs as garbage. Writers wait for another process's lock up to
 * $OWL_LOCK_TIMEOUT seconds (default 600). The caller closes the store with
 * registry_store_close. */
int registry_store_open(const char *home, registry_store **out, owl_err *err);
int registry_store_open_ex(const char *home, const registry_open_opts *o, registry_store **out,
			   owl_err *err);
void registry_store_close(registry_store *s);
/* The database connection, for modules that own tables in it (licenses,
 * deploy, train); cmd/ never uses it. The store keeps ownership. */
sqlite3 *registry_store_db(registry_store *s);
/* The data home, and whether it was opened read-only. */
const char *registry_store_home(const registry_store *s);
int registry_store_is_read_only(const registry_store *s);
/* home/owl.db. */
const char *registry_store_db_path(const registry_store *s);
/* Prepares one statement for a module that owns tables: an error naming the
 * database when SQLite refuses (*q is then NULL), never a NULL statement
 * stepped as if it had no rows. */
int registry_store_prepare(registry_store *s, const char *sql, sqlite3_stmt **q, owl_err *err);

/* What the store holds, for owl status. */
typedef struct registry_store_counts {
	uint64_t blobs, blob_bytes; /* blob rows and their total size */
	uint64_t models, versions;
} registry_store_counts;
int registry_store_stats(registry_store *s, registry_store_counts *out, owl_err *err);

/* Applies the schema steps a module has not applied yet, all in one
 * transaction under the write lock, re-reading the module's version inside
 * it (so that concurrent first uses of a home apply each step once),
 * recording them in the migrations table. steps[i] is the SQL of version i+1.
 * Other modules (licenses, deploy, train) call this with their own module
 * name after registry_store_open. On a read-only store a missing step is an
 * error that says the home needs one run with write access. */
int registry_store_migrate(registry_store *s, const char *module, const char *const *steps,
			   int nsteps, owl_err *err);
/* *version: the number of schema steps applied for module (0 if none);
 * fails when the migrations table cannot be read. */
int registry_store_schema_version(registry_store *s, const char *module, int *version,
				 owl_err *err);

int registry_store_exec(registry_store *s, const char *sql, owl_err *err);
/* BEGIN IMMEDIATE: takes the write lock, waiting (see registry_wait_fn)
 * while another process holds it. On a read-only store: an error naming the
 * home. Transactions nest: inside one, begin is a SAVEPOINT, so a module's change
 * (the license gate's decision, say) joins its caller's transaction and
 * commits or rolls back with it. */
int registry_store_begin(registry_store *s, owl_err *err);
/* The outermost commit runs the actions queued by registry_store_after_commit
 * and returns the first one's error, if any (the rows are committed). */
int registry_store_commit(registry_store *s, owl_err *err);
/* Undoes the innermost transaction (and the after-commit actions it queued);
 * a no-op outside a transaction. */
void registry_store_rollback(registry_store *s);
/* Queues fn(s, ctx) for when the outermost transaction has committed (what
 * must only follow durable rows: the audit anchor); ctx_size bytes of ctx
 * are copied. Outside a transaction fn runs at once. */
typedef int (*registry_after_commit_fn)(registry_store *s, void *ctx, owl_err *err);
int registry_store_after_commit(registry_store *s, registry_after_commit_fn fn, const void *ctx,
				size_t ctx_size, owl_err *err);

/* The registry's own schema (registry/schema.c). */
int registry_schema_migrate(registry_store *s, owl_err *err);
#define REGISTRY_SCHEMA_MODULE "registry"

/* ---- blobs (registry/blobs.c) ---------------------------------------- */

/* home/blobs/sha256/ab/abcdef...; caller frees. */
char *registry_blob_path(const registry_store *s, const char *digest);
/* SHA-256 of a file, streamed. */
int registry_hash_file(const char *path, char hex[65], uint64_t *size, owl_err *err);
/* Copies src to dst (created, fsync'd) while hashing the bytes. */
int registry_copy_hashing(const char *src, const char *dst, char hex[65], uint64_t *size,
			  owl_progress_fn progress, void *progress_ctx, owl_err *err);
/* Moves a complete staged file into the blob store under its digest (fsync,
 * rename, fsync dir). An existing blob of that digest is replaced by the
 * freshly hashed copy: identical files are stored once, and a damaged blob
 * heals when its content is pulled again. Touches no database row. */
int registry_blob_ingest(registry_store *s, const char *staged_path, const char *digest,
			 owl_err *err);
/* As registry_copy_hashing, without the fsync: for a stage's files, which
 * registry_stage_commit syncs in one batch. */
int registry_copy_hashing_unsynced(const char *src, const char *dst, char hex[65],
				   uint64_t *size, owl_progress_fn progress, void *progress_ctx,
				   owl_err *err);

/* The ingest lock (home/tmp/ingest.lock, flock): a commit holds it shared
 * from the moment it moves its first blob into blobs/ until its rows are
 * committed; gc holds it exclusively, so that gc never deletes a blob that
 * a commit has moved in but not yet recorded. Waits (telling s->wait_fn)
 * while another process holds it the other way. *fd_out is passed to
 * registry_ingest_unlock. */
int registry_ingest_lock(registry_store *s, int exclusive, int *fd_out, owl_err *err);
void registry_ingest_unlock(int fd);

/* ---- staging and registering versions (registry/stage.c) ------------- */

/* A checkpoint being assembled under tmp/ before it becomes a version:
 * files_dir holds the files in the checkpoint's own layout, so that the
 * license detector and validators read an ordinary folder. Nothing in a
 * stage is visible in the registry until registry_stage_commit. */
typedef struct registry_stage_file {
	char *path;        /* relative path in the checkpoint */
	char digest[65];
	uint64_t size;
	char *expected;    /* digest the source promised, or NULL */
} registry_stage_file;

typedef struct registry_stage {
	size_t *index;     /* hash of paths -> files[i] + 1 (0: empty slot) */
	size_t index_cap;  /* slots in index, a power of two */
	size_t index_n;    /* nfiles when the index was last updated */
	char *last_parent; /* folder make_parents created last */
	char *dir;         /* tmp/stage-PID-N, removed by registry_stage_free */
	char *files_dir;   /* dir/files */
	registry_stage_file *files;
	size_t nfiles, cap;
	char *source;      /* token-free description of the source */
	char *revision;    /* commit the source resolved to, or NULL */
	char *format;      /* filled by registry_stage_validate: "hf", "gguf", "safetensors", "adapter", "files" */
	char *config_json; /* filled by registry_stage_validate (summary) */
	char *default_name;/* name derived from the source */
	uint64_t total_bytes;
	uint64_t downloaded_bytes; /* bytes that crossed the network (resume makes it < total) */
	size_t self_checked_files; /* downloaded files no published digest vouches for */
} registry_stage;

int registry_stage_new(registry_store *s, const char *source, registry_stage **out, owl_err *err);
/* Removes the staging folder and frees the stage (accepts NULL). */
void registry_stage_free(registry_stage *st);
/* 1 when p is a relative path that stays inside the checkpoint (no leading
 * '/', no "." or ".." or empty component, no control character, at most 1024
 * bytes), else 0. */
int registry_relpath_check(const char *p);
/* Records a file already written at files_dir/path with its digest and size.
 * A path that is not a safe relative path, or that the stage holds already,
 * is an integrity error (OWL_EINTEGRITY) naming it. */
int registry_stage_add(registry_stage *st, const char *path, const char *digest, uint64_t size,
		       const char *expected, owl_err *err);
/* Rebuilds the stage's path index (and forgets which folders exist): after
 * changing files[i].path in place or moving folders (registry_stage_strip_top)
 * or removing entries. */
void registry_stage_reindex(registry_stage *st);
/* Creates files_dir/path for writing (its folders too) after checking the
 * path (relative, no "." or ".." component, no control character, at most
 * 1024 bytes) and that the stage does not hold it yet, so that nothing is
 * written for a hostile or duplicate name. Returns the open descriptor in
 * *fd_out; the caller writes, closes and then calls registry_stage_add. The
 * file is not fsync'd: registry_stage_commit syncs the stage in one batch. */
int registry_stage_create_file(registry_stage *st, const char *path, int *fd_out, owl_err *err);
/* The most entries an archive or bundle may hold: $OWL_MAX_ARCHIVE_ENTRIES,
 * default 100000. Reading past it stops with an error naming the limit. */
uint64_t registry_archive_entry_limit(void);
/* Copies a local file into the stage at path, hashing it. */
int registry_stage_copy(registry_stage *st, const char *src, const char *path,
			owl_progress_fn progress, void *progress_ctx, owl_err *err);
/* Safety and shape checks before anything is registered: refuses pickle
 * files, validates every safetensors header and GGUF file, checks that a
 * sharded index names files that exist, and fills format and config_json. */
int registry_stage_validate(registry_stage *st, owl_err *err);

/* Called inside the registering transaction with the new version's id (the
 * license module stores its findings there). */
typedef int (*registry_commit_hook)(void *ctx, registry_store *s, int64_t version_id,
				    owl_err *err);

/* Model names: letters, digits, '-', '_', '.', '/' (no "..", no leading or
 * trailing '/'), at most 128 characters. */
int registry_valid_name(const char *name);

typedef struct registry_commit_result {
	int64_t version_id;
	int number; /* N of NAME@N */
	uint64_t new_bytes, shared_bytes; /* blob bytes added vs already stored */
} registry_commit_result;

/* Registers the stage as version N+1 of model `name`. The file work comes
 * first, outside any transaction: the staged files are synced in one batch
 * (syncfs), moved into blobs/, and the moves synced. Then one short
 * transaction inserts the rows, sets the optional tag and runs the hook, so
 * that other writers wait for the rows only, never for the disk. On failure
 * the transaction rolls back; blobs already moved are unreferenced and gc
 * reclaims them. The staged files are gone afterwards (moved or not). */
int registry_stage_commit(registry_store *s, registry_stage *st, const char *name,
			  int64_t parent_version_id, const char *tag, registry_commit_hook hook,
			  void *hook_ctx, registry_commit_result *res, owl_err *err);

/* ---- sources (registry/source.c) -------------------------------------- */

/* Asked between steps of a long operation (every 0.1 s during downloads,
 * between files otherwise): non-zero stops it with an error saying it was
 * cancelled. Partial downloads stay for a resume. */
typedef int (*registry_cancel_fn)(void *ctx);

typedef struct registry_source_opts {
	const char *expected_sha256; /* --sha256 for a single-file URL or file */
	const char *ca_cert;         /* --ca-cert */
	const char *const *include;  /* hub file globs (--include), NULL-terminated or NULL */
	int64_t min_rate;            /* --min-rate: see registry_fetch_opts */
	owl_progress_fn progress;
	void *progress_ctx;
	registry_cancel_fn cancelled; /* may be NULL; see registry_fetch_opts */
	void *cancel_ctx;
} registry_source_opts;

/* Fills a new stage from SOURCE: an http(s) URL of one file (GGUF,
 * safetensors or archive), hf://ORG/REPO[@REVISION], a local folder, a local
 * archive (tar, tar.gz, tar.zst, zip) or a local .gguf/.safetensors file.
 * Archives are extracted with every entry checked (no absolute paths, no
 * "..", no links). The stage is validated before it is returned. */
int registry_stage_from_source(registry_store *s, const char *source,
			       const registry_source_opts *o, registry_stage **out, owl_err *err);

/* ---- versions (registry/versions.c) --------------------------------- */

/* One file of a version: its path inside the checkpoint and its blob. */
typedef struct registry_file {
	char *path;      /* relative, e.g. "model-00001-of-00002.safetensors" */
	char digest[65]; /* sha256 hex of the content */
	uint64_t size;
	char *blob_path; /* absolute path of the blob under blobs/sha256/ */
} registry_file;

/* A registered version, with its files. Filled by registry_resolve; the
 * caller releases it with registry_version_release. */
typedef struct registry_version {
	int64_t id;            /* versions.id */
	int64_t model_id;
	char *model;           /* model name */
	int number;            /* 1, 2, 3 ... within the model */
	char *source;          /* what was pulled (never contains a token) */
	char *revision;        /* commit the source resolved to, or NULL */
	char *format;          /* "hf" (config.json + safetensors), "gguf", "adapter" */
	int64_t parent_id;     /* base version of a derived version, or 0 */
	char *config_json;     /* summary JSON, or NULL */
	uint64_t total_bytes;
	int64_t created_at;
	registry_file *files;
	size_t nfiles;
} registry_version;

/* Resolves a reference "NAME" (latest version), "NAME@3" or "NAME:TAG". An
 * unknown name, version or tag is an error that says which and what exists. */
int registry_resolve(registry_store *s, const char *ref, registry_version *out, owl_err *err);
int registry_version_by_id(registry_store *s, int64_t id, registry_version *out, owl_err *err);
void registry_version_release(registry_version *v);
/* The file with this relative path, or NULL. */
const registry_file *registry_version_file(const registry_version *v, const char *path);

/* One line of a listing (registry/listing.c): a version without its files. */
typedef struct registry_version_info {
	int64_t id;
	char *model;
	int number;
	char *format;
	uint64_t total_bytes;
	int64_t created_at;
	char *source;
	char *config_json; /* or NULL */
	char **tags;       /* the tags pointing at it, sorted */
	size_t ntags;
} registry_version_info;

/* Every version (model NULL) or every version of one model, ordered by
 * model name and number; *out (n entries) is freed with
 * registry_version_infos_free. No version is 0 entries, not an error. */
int registry_list_versions(registry_store *s, const char *model, registry_version_info **out,
			   size_t *n, owl_err *err);
void registry_version_infos_free(registry_version_info *v, size_t n);

/* The tags pointing at a version, sorted; free with registry_strings_free. */
int registry_version_tags(registry_store *s, int64_t version_id, char ***tags_out, size_t *n,
			  owl_err *err);
void registry_strings_free(char **v, size_t n);

/* One move of a tag: from (0: the tag was new) to (0: the tag was deleted). */
typedef struct registry_tag_move {
	char *tag;
	int64_t at;
	int from, to; /* version numbers */
} registry_tag_move;
/* Every move of the model's tags, oldest first; freed with
 * registry_tag_moves_free. */
int registry_tag_history(registry_store *s, const char *model, registry_tag_move **out,
			 size_t *n, owl_err *err);
void registry_tag_moves_free(registry_tag_move *m, size_t n);

/* Makes the version readable as an ordinary checkpoint folder:
 * home/snapshots/NAME/V/ holding one symlink per file (to its blob), in the
 * checkpoint's own layout, so the engine and the license detector read a
 * folder (or, for a GGUF version, the single .gguf inside it) without knowing
 * about blobs. Idempotent. *dir_out is malloc'd; the caller frees it. */
int registry_version_materialize(registry_store *s, const registry_version *v, char **dir_out,
				 owl_err *err);

/* Resolves ref and materialises it: the flow of everything that loads a
 * registered model (owl run, a server). *dir_out (caller frees) is the
 * folder to hand the engine; *v_out (optional; released by the caller with
 * registry_version_release) the version. */
int registry_checkout(registry_store *s, const char *ref, registry_version *v_out,
		      char **dir_out, owl_err *err);
/* As registry_checkout for an adapter that is to run on the registered
 * version base_version_id (0: the base is a path, not a registered version;
 * base_label names it in messages). Refused (OWL_EUSAGE) when ref is not an
 * adapter, names no base, or derives from another version. */
int registry_checkout_adapter(registry_store *s, const char *ref, int64_t base_version_id,
			      const char *base_label, registry_version *v_out, char **dir_out,
			      owl_err *err);

/* Sets (or moves) TAG of the model to the version; the move is recorded in
 * tag_history. */
int registry_tag_set(registry_store *s, const registry_version *v, const char *tag, owl_err *err);
int registry_tag_delete(registry_store *s, const char *model, const char *tag, owl_err *err);
/* Removes a version's rows (blobs stay until gc). Refused while a tag points
 * at it, a derived version names it as parent, or a removal guard refuses;
 * the message says which. The checks and the removal are one transaction. */
int registry_version_remove(registry_store *s, const registry_version *v, owl_err *err);

/* A module whose rows use versions (deployments, say) registers a guard on
 * the store when it applies its schema; registry_version_remove calls every
 * guard inside its removal transaction, and a non-zero return (with err
 * naming what uses the version) refuses the removal. The registry knows
 * nothing of the modules that guard. */
typedef int (*registry_remove_guard_fn)(registry_store *s, const registry_version *v,
					owl_err *err);
/* Registering the same function twice keeps one. */
void registry_store_add_remove_guard(registry_store *s, registry_remove_guard_fn fn);
/* Calls every registered guard; the first refusal's code (0: none refused). */
int registry_store_check_remove(registry_store *s, const registry_version *v, owl_err *err);

typedef struct registry_gc_result {
	uint64_t blobs_removed, bytes_freed, stale_tmp_removed;
	uint64_t blobs_kept_unknown; /* older than the database, never recorded in it */
} registry_gc_result;
/* Removes blobs no version references (rows and files, including files left
 * in blobs/ by an interrupted pull) and staging folders of dead processes.
 * A blob file the database never recorded and that is older than the
 * database itself is kept (counted in blobs_kept_unknown): it can only come
 * from an earlier database, lost since, and registry_recover can register
 * it again. */
int registry_gc(registry_store *s, int dry_run, registry_gc_result *res, owl_err *err);

typedef void (*registry_verify_report)(void *ctx, const char *model, int number,
				       const char *path, const char *digest, const char *problem);
/* Re-hashes the blobs of one version (v != NULL) or of every version; calls
 * report for every missing or corrupt file. Returns OWL_EINTEGRITY when any
 * was found, with a count in err. */
int registry_verify(registry_store *s, const registry_version *v, registry_verify_report report,
		    void *report_ctx, uint64_t *files_checked, owl_err *err);

typedef struct registry_recover_result {
	char model[64];           /* recovered-YYYYMMDD-HHMMSS */
	int versions;             /* versions registered under model */
	uint64_t blobs, bytes;    /* blobs registered again */
	uint64_t gguf;            /* of which GGUF files, one runnable version each */
	uint64_t corrupt;         /* blobs whose content does not match their name: left alone */
} registry_recover_result;
/* Registers every blob that no version references again, under a new model
 * recovered-<UTC time>: each GGUF blob as its own version (format gguf, so
 * that it runs), every other blob in one version of format "files" whose
 * file names are the digests with an extension read from the content
 * (.safetensors, .gguf, .json, none). Original names, tags and license
 * findings are not known any more and are not invented. Each blob is
 * re-hashed first; one that does not match its name is counted as corrupt
 * and left alone. Registers nothing (versions 0) when no blob is orphaned. */
int registry_recover(registry_store *s, registry_recover_result *res, owl_err *err);

/* ---- bundles for air-gapped transfer (registry/bundle.c) -------------- */

/* Writes FILE (.tar, .tar.gz or .tar.zst) holding manifest.json (model,
 * version, source, revision, format, config, and every file's path, size and
 * sha256) and the files under files/; with sign_key (an Ed25519 private key
 * in PEM) also manifest.sig, the signature of manifest.json's bytes. Every
 * blob is re-hashed while it is written; written to FILE.part and renamed. */
int registry_export(registry_store *s, const registry_version *v, const char *file,
		    const char *extra_manifest_json, const char *sign_key, owl_err *err);

typedef enum registry_bundle_trust {
	REGISTRY_BUNDLE_UNSIGNED = 0,
	REGISTRY_BUNDLE_SIGNED_UNCHECKED, /* has a signature, no key given to check it */
	REGISTRY_BUNDLE_SIGNATURE_OK,
} registry_bundle_trust;

/* Reads a bundle into a new stage, verifying every file's digest and that
 * the files match the manifest exactly, before anything is registered. With
 * trust_key (an Ed25519 public key in PEM) the bundle must carry a valid
 * signature by that key. *manifest_out (JSON text, caller frees) lets the
 * caller read the original name and license facts. */
int registry_import_stage(registry_store *s, const char *file, const char *trust_key,
			  registry_stage **out, char **manifest_out, registry_bundle_trust *trust,
			  owl_err *err);

/* ---- downloads over HTTP(S) (registry/fetch.c, registry/hub.c) ------- */

/* How files are fetched. Zero-initialised options mean the defaults. */
typedef struct registry_fetch_opts {
	const char *ca_cert;      /* PEM file of a private CA (--ca-cert), or NULL */
	const char *bearer_token; /* sent as "Authorization: Bearer" to token_host only;
				     never logged, stored or put in an error message */
	const char *token_host;   /* host the token may be sent to (not to a CDN redirect) */
	int max_retries;          /* per file: transient errors (5xx, timeouts, resets); 0 = default 5 */
	int retry_budget;         /* retries of all files together; 0 = default 20 */
	long connect_timeout_s;   /* 0 = default 30 */
	int64_t min_rate;         /* bytes/s a transfer must keep over the window (--min-rate);
				     0 = default 10 KiB/s, < 0 = none (only a stall below
				     1 byte/s for the window aborts) */
	long min_rate_window_s;   /* 0 = $OWL_MIN_RATE_WINDOW, else 60 */
	int parallel;             /* files fetched at once; 0 = default 4 */
	owl_progress_fn progress; /* may be NULL */
	void *progress_ctx;
	registry_cancel_fn cancelled; /* may be NULL */
	void *cancel_ctx;
} registry_fetch_opts;

#define REGISTRY_MIN_RATE_DEFAULT (10 * 1024)
#define REGISTRY_MIN_RATE_WINDOW_DEFAULT 60

/* One file to fetch. The caller fills the "in" fields; fetch fills "out". */
typedef struct registry_fetch_file {
	const char *url;             /* in */
	const char *name;            /* in: for messages and the progress label */
	const char *expected_sha256; /* in: hex digest the source promises, or NULL */
	const char *expected_git_oid;/* in: git blob sha1 the hub lists for a small
					(non-LFS) file, or NULL; needs expected_size */
	uint64_t expected_size;      /* in: 0 when unknown */
	const char *tmp_path;        /* in: tmp/downloads/<key>.part. The fetch that
					holds its lock resumes it (HTTP Range, with
					If-Range where a validator is known); while
					another process holds it, this fetch writes a
					private partial file beside it instead. */
	const char *final_path;      /* in: where the complete file is renamed to,
					inside the caller's staging folder, while the
					partial file is still locked (so the bytes moved
					are the bytes hashed); NULL = stay at tmp_path */
	char sha256[65];             /* out: digest of the complete file */
	uint64_t size;               /* out */
	uint64_t bytes_transferred;  /* out: bytes that crossed the network this call */
	int resumed;                 /* out: the file was assembled from more than one response */
	char *repo_commit;           /* out: X-Repo-Commit header, malloc'd, or NULL */
	owl_err err;                 /* out: this file's failure, if any */
} registry_fetch_file;

/* Fetches n files, several at once, hashing (SHA-256) while the bytes stream,
 * resuming partial files only where the server proves the file unchanged
 * (If-Range with its ETag or Last-Modified) or a digest is known, retrying
 * transient errors with backoff, TLS verification always on. A transfer
 * slower than min_rate over the window fails with a message naming the
 * server; a full disk says how much was free and needed. On success every
 * file is complete at final_path (or tmp_path), fsync'd, with sha256/size
 * filled. A digest that differs from expected_sha256 fails with
 * OWL_EINTEGRITY naming the file, the expected and the actual digest, and
 * removes that partial file. Returns the first failure. */
int registry_fetch_files(const registry_fetch_opts *opts, registry_fetch_file *files, size_t n,
			 owl_err *err);
void registry_fetch_file_release(registry_fetch_file *f); /* frees out fields */

/* 1 when a path a server named (a hub listing entry, a URL's file name) is safe
 * to create inside a staging folder: registry_relpath_check, and no backslash,
 * no component over 255 bytes. Else 0 with *why saying what is wrong. */
int registry_remote_path_check(const char *path, const char **why);

/* Removes the partial downloads under tmp/downloads that no running fetch
 * holds locked (left by a killed pull or a full disk), with their resume
 * notes. A partial file of a running pull is never touched. With dry_run
 * only counts. */
int registry_downloads_reclaim(registry_store *s, int dry_run, uint64_t *files_removed,
			       uint64_t *bytes_freed, owl_err *err);

/* A Hugging Face-style hub repository listing (registry/hub.c). */
typedef struct registry_hub_entry {
	char *path;
	uint64_t size;
	char *sha256; /* LFS oid (sha256 hex) or NULL for small files */
	char *oid;    /* git blob sha1 */
} registry_hub_entry;

typedef struct registry_hub_listing {
	registry_hub_entry *entries;
	size_t n;
	char *commit; /* the commit the revision resolved to (40 hex) */
} registry_hub_listing;

/* Lists every file of ORG/REPO at revision (branch, tag or commit) through
 * GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true, following
 * pagination, and resolves the commit. Gated (401/403 GatedRepo), missing
 * repository/revision/entry (404 with X-Error-Code) each give a clear message. */
int registry_hub_list(const registry_fetch_opts *opts, const char *endpoint, const char *repo,
		      const char *revision, registry_hub_listing *out, owl_err *err);
/* Parses one page of a tree listing (a JSON array) and appends its files to
 * out (which starts zeroed). Exposed for the fuzz target. */
int registry_hub_parse_listing(const char *text, size_t len, registry_hub_listing *out,
			       owl_err *err);
/* The URL of one file's bytes: {endpoint}/{repo}/resolve/{revision}/{path}; caller frees. */
char *registry_hub_file_url(const char *endpoint, const char *repo, const char *revision,
			    const char *path);
void registry_hub_listing_release(registry_hub_listing *l);

#endif
