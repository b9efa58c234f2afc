/* deploy: deployments and API keys, kept in the data home's database.
 *
 * A deployment is a name and a list of immutable revisions; each revision
 * says what serves (a model version, its adapters, tensor parallelism,
 * context, the declared use, the port). One revision is current. Changes
 * (create, set, rollback, a followed tag that moved) each pass the license
 * gate (action "deploy", the declared use) inside the transaction that makes
 * them, and are recorded as events: the deployment's history.
 *
 *   records   deployments, revisions, events, pinning, tag following
 *   keys      API keys, stored as SHA-256 hashes, never in clear
 *   source    what deploy/server.h asks: the current revision and its spec,
 *             and whether a bearer key may pass
 *
 * The server (deploy/server.h) knows no SQLite: deploy_source_new and
 * deploy_authoriser_new give it callbacks over their own connections.
 */
#ifndef OWL_DEPLOY_H
#define OWL_DEPLOY_H

#include "deploy/server.h"
#include "registry/registry.h"

/* The module's schema; also registers the removal guard that refuses to
 * remove a model version any deployment's revision uses. */
int deploy_migrate(registry_store *s, owl_err *err);
/* Opens a data home with every module's schema applied (registry, licenses,
 * deploy): the one way a program (the CLI, the server) opens a home, so
 * that each sees one fully migrated database. */
int deploy_home_open(const char *home, const registry_open_opts *o, registry_store **out,
		     owl_err *err);
#define DEPLOY_SCHEMA_MODULE "deploy"

/* Deployment names: letters, digits, '-', '_', '.', 1 to 64 characters,
 * starting with a letter or digit (no '@' or ':', so that a name never reads
 * as a version reference). */
int deploy_valid_name(const char *name);
/* "commercial", "internal" or "research". */
int deploy_valid_use(const char *use);

/* ---- changes ---------------------------------------------------------- */

#define DEPLOY_KEEP (-1) /* a numeric field of deploy_change left as it is */

/* What a create or set asks. For create, unset fields take the defaults
 * (tp 1, ctx 0 = the model's own, port 0 = the server's default, use
 * internal); for set, unset fields keep the current revision's values. */
typedef struct deploy_change {
	/* "M@V" (that version), "M:TAG" (follow the tag) or "M" (the latest
	 * version, fixed). NULL in set: keep the model (and any followed tag). */
	const char *model;
	const char *const *adapters; /* "A@V" or "A" (latest); each must derive from the model */
	size_t nadapters;
	int set_adapters;            /* set: replace the adapters by the list (even empty) */
	int tp, ctx, port;           /* DEPLOY_KEEP or a value (tp >= 1, ctx >= 0, port 0..65535) */
	const char *use;             /* NULL: keep / internal */
	const char *reason;          /* why, for the history; may be NULL */
	const char *actor;           /* who; NULL = $USER */
} deploy_change;

/* Initialises c with every field unset. */
void deploy_change_init(deploy_change *c);

/* Creates deployment `name` with its revision 1. OWL_EDENIED when the
 * license gate refuses (the denial is recorded; nothing is created). */
int deploy_create(registry_store *s, const char *name, const deploy_change *c,
		  int64_t *revision_out, owl_err *err);
/* Makes a new revision from the current one and the change, and makes it
 * current. Refused while the deployment is pinned. A denied change creates
 * no revision. */
int deploy_set(registry_store *s, const char *name, const deploy_change *c,
	       int64_t *revision_out, owl_err *err);
/* Makes an existing revision current again (to = 0: the one that was current
 * before the current one). Gated again (policy may have changed since),
 * recorded as an event; creates no revision. Refused while pinned. */
int deploy_rollback(registry_store *s, const char *name, int64_t to, const char *reason,
		    const char *actor, int64_t *revision_out, owl_err *err);
/* A pinned deployment refuses set and rollback and does not follow its tag. */
int deploy_pin(registry_store *s, const char *name, const char *reason, const char *actor,
	       owl_err *err);
int deploy_unpin(registry_store *s, const char *name, const char *reason, const char *actor,
		 owl_err *err);
/* Removes the deployment, its revisions and events (the audit log keeps its
 * decisions). */
int deploy_remove(registry_store *s, const char *name, owl_err *err);

/* Tag following. When deployment `name` follows M:TAG, is not pinned, and
 * the tag now points at another version than the current revision's model,
 * a revision for the new version (the current revision's other settings,
 * adapters only while they still derive from it) is created and gated now,
 * by `actor`: lazily, whenever the move is observed (by the server about once
 * a second, by every deploy verb, and by owl tag). A move the gate refuses is
 * recorded once and retried silently: it is made when the policy allows it.
 * *moved (may be NULL) is 1 when a revision was made. On a read-only store
 * nothing moves. */
int deploy_follow(registry_store *s, const char *name, const char *actor, int *moved,
		  owl_err *err);
/* deploy_follow for every deployment that follows a tag of `model` (NULL:
 * every deployment). Each one's failure is reported through report (may be
 * NULL) and does not stop the others; returns the first failure. */
typedef void (*deploy_report_fn)(void *ctx, const char *deployment, int moved,
				 const owl_err *err);
int deploy_follow_all(registry_store *s, const char *model, const char *actor,
		      deploy_report_fn report, void *report_ctx, owl_err *err);

/* ---- reading ---------------------------------------------------------- */

typedef struct deploy_adapter_info {
	int64_t version_id;
	char *ref;    /* "support-bot@2" */
	char *digest; /* the version digest (see deploy_version_digest) */
} deploy_adapter_info;

typedef struct deploy_revision {
	int64_t revision;
	int64_t model_version_id;
	char *model_ref;    /* "llama@3" */
	char *model_digest;
	deploy_adapter_info *adapters;
	size_t nadapters;
	int tp, ctx, port;
	char *use;
	char *who, *why;    /* why may be "" */
	int64_t at;
	char *license;      /* the gate's decisions, one per version gated */
} deploy_revision;

typedef struct deploy_info {
	char *name;
	int64_t current;     /* the current revision's number */
	int pinned;
	char *pinned_by, *pin_reason; /* when pinned, else NULL */
	int64_t pinned_at;
	char *follow;        /* "M:TAG" when it follows a tag, else NULL */
	char *follow_blocked;/* the version a tag move the gate refused points at, or NULL */
	int64_t created_at;
	char *created_by;
	int64_t nrevisions;
	deploy_revision cur; /* the current revision */
} deploy_info;

/* One change in a deployment's history. */
typedef struct deploy_event {
	int64_t at;
	char *who;
	char *action;        /* create, set, follow, rollback, pin, unpin */
	char *why;           /* "" when none given */
	int64_t revision;    /* current after the change */
	int64_t from;        /* current before it (0 for create) */
	char *license;       /* the gate's decisions ("" for pin and unpin) */
} deploy_event;

int deploy_get(registry_store *s, const char *name, deploy_info *out, owl_err *err);
void deploy_info_release(deploy_info *d);
/* Every deployment, by name; the caller frees with deploy_list_free. */
int deploy_list(registry_store *s, deploy_info **out, size_t *n, owl_err *err);
void deploy_list_free(deploy_info *d, size_t n);
/* One revision, or every revision (oldest first). */
int deploy_revision_get(registry_store *s, const char *name, int64_t revision,
			deploy_revision *out, owl_err *err);
void deploy_revision_release(deploy_revision *r);
int deploy_revisions(registry_store *s, const char *name, deploy_revision **out, size_t *n,
		     owl_err *err);
void deploy_revisions_free(deploy_revision *r, size_t n);
/* The history, oldest first. */
int deploy_history(registry_store *s, const char *name, deploy_event **out, size_t *n,
		   owl_err *err);
void deploy_history_free(deploy_event *e, size_t n);

/* The digest that names a version's content: SHA-256 over its files' lines
 * "PATH\tDIGEST\n", sorted by path (a single-file version has one line). */
void deploy_version_digest(const registry_version *v, char hex[65]);

/* ---- API keys ----------------------------------------------------------- */

/* Keys look like owl-KEYID-SECRET: KEYID is 8 hex digits, public, shown in
 * lists and access logs; SECRET is 32 random bytes in hex. Only the SHA-256
 * of the whole key is stored. */
#define DEPLOY_KEY_ID_LEN 16   /* "owl-" + 8 hex + NUL, with room */
#define DEPLOY_KEY_LEN 96      /* a whole key + NUL, with room */

typedef struct deploy_key {
	char id[DEPLOY_KEY_ID_LEN];
	char *name;        /* a label, "" when none */
	char *created_by;
	int64_t created_at;
	int64_t revoked_at; /* 0 while valid */
	char *revoked_by;   /* NULL while valid */
} deploy_key;

/* Creates a key; key_out receives the whole key (shown once, never stored),
 * id_out its public id. */
int deploy_key_create(registry_store *s, const char *name, const char *actor,
		      char key_out[DEPLOY_KEY_LEN], char id_out[DEPLOY_KEY_ID_LEN], owl_err *err);
/* Revokes a key by its id ("owl-1a2b3c4d" or "1a2b3c4d"). */
int deploy_key_revoke(registry_store *s, const char *id, const char *actor, owl_err *err);
/* Removes a revoked key's row. A revoked key still counts as configured
 * (revoking the last key must not open the server to everyone); once no key
 * row is left, requests need no key. A valid key must be revoked first. */
int deploy_key_remove(registry_store *s, const char *id, owl_err *err);
/* Every key, revoked ones too, oldest first. */
int deploy_key_list(registry_store *s, deploy_key **out, size_t *n, owl_err *err);
void deploy_key_list_free(deploy_key *k, size_t n);
/* Whether a bearer key may pass: DEPLOY_AUTH_OPEN when no key (valid or
 * revoked) exists,
 * DEPLOY_AUTH_OK (key_id filled) for a valid key, else DEPLOY_AUTH_DENIED.
 * bearer may be NULL. A database error denies. Not thread-safe by itself:
 * the authoriser serialises its calls. */
deploy_auth deploy_key_check(registry_store *s, const char *bearer, char *key_id,
			     size_t key_id_len);

/* ---- for the server (deploy/server.h) --------------------------------------- */

/* A source over its own connection to home's database, for `deployment`.
 * current() first observes a moved tag (deploy_follow, as the user running
 * the server), then answers the current revision; load() resolves the
 * revision's model and adapters and materialises them (snapshots). */
int deploy_source_new(const char *home, const char *deployment, deploy_source *out,
		      owl_err *err);
void deploy_source_free(deploy_source *src);

/* An authoriser over its own connection, its calls serialised by a mutex, so
 * that the server's HTTP threads may call it at once. Every call reads the
 * keys table, so keys created or revoked while the server runs count at the
 * next request. */
int deploy_authoriser_new(const char *home, deploy_authoriser *out, owl_err *err);
void deploy_authoriser_free(deploy_authoriser *a);

/* The spec of one revision (what load() gives), from an open store. A
 * revision sets no kv_type or threads: they are 0, the server's defaults. */
int deploy_spec_load(registry_store *s, const char *deployment, int64_t revision,
		     deploy_spec **out, owl_err *err);

#endif
