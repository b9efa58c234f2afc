/* licenses: what a checkpoint's license is, what the company's rules say
 * about using it, and a tamper-evident record of every decision.
 *
 *   catalog      facts about known licenses (licenses/catalog.json, compiled
 *                in and loaded into SQLite on migration)
 *   detection    findings, each with its evidence and confidence, from a
 *                checkpoint folder: model card front matter, LICENSE files
 *                recognised by their text, GGUF and safetensors metadata
 *   policy       rules in SQLite (effect, matchers, conditions, priority)
 *                evaluated for an action (import, finetune, deploy, export)
 *   approvals    human sign-off for rules that require it, with expiry
 *   audit        every decision in an append-only, hash-chained table
 */
#ifndef OWL_LICENSES_H
#define OWL_LICENSES_H

#include "registry/registry.h"

/* The module's schema, the catalog and, on a fresh home, the default policy. */
int licenses_migrate(registry_store *s, owl_err *err);
#define LICENSES_SCHEMA_MODULE "licenses"

/* ---- catalog ----------------------------------------------------------- */

typedef struct license_facts {
	char id[64];
	char name[128];
	char category[32];      /* permissive, copyleft, responsible-ai, non-commercial,
				   vendor-community, unknown, other */
	int commercial;         /* commercial use allowed */
	int64_t mau_limit;      /* monthly active users above which the license stops, 0 = none */
	int derivatives;        /* derivatives allowed */
	int flow_down;          /* use restrictions must flow down to derivatives and users */
	int outputs_train;      /* outputs may be used to train other models */
	char attribution[512];  /* notice required, or "" */
	char name_prefix[32];   /* derived model names must begin with this, or "" */
	char link[256];
	char summary[512];
} license_facts;

/* Facts for a catalog id ("unknown" and "other" exist too). */
int license_catalog_get(registry_store *s, const char *id, license_facts *out, owl_err *err);
/* The catalog id a card value names ("Llama3.1", "apache2" ...), or NULL. */
const char *license_catalog_resolve_alias(registry_store *s, const char *value, char *buf,
					  size_t buflen);

/* ---- detection ----------------------------------------------------------- */

typedef struct license_finding {
	char license_id[64];   /* catalog id, "other" (unrecognised), or "" for supporting evidence */
	char source[32];       /* card, card-name, card-link, license-file, use-policy, gguf, safetensors */
	char evidence[512];    /* where and what, e.g. "README.md front matter: license: llama3.1" */
	double confidence;     /* 0..1 */
} license_finding;

typedef struct license_findings {
	license_finding *items;
	size_t n, cap;
	char base_model[256];  /* card base_model, for lineage; "" if none */
	char summary[512];     /* one line for pull output */
} license_findings;

/* Reads every place a checkpoint folder states its license. Never fails on
 * a strange card (an unreadable statement becomes a low-confidence finding);
 * errors are for I/O only. The caller frees with license_findings_free. */
int license_detect_dir(registry_store *s, const char *dir, license_findings **out, owl_err *err);
void license_findings_free(license_findings *f);
const char *license_findings_summary(const license_findings *f);

/* Recognises a license text: the catalog id of the reference it matches
 * (with similarity in *score), "" when nothing is close, or the nearest id
 * with *near set when the text resembles a reference but differs from it. */
void license_recognise_text(const char *text, size_t len, char *id, size_t idlen, double *score,
			    int *near);

/* Stores findings for a version (inside the caller's transaction). */
int license_findings_store(registry_store *s, int64_t version_id, const license_findings *f,
			   owl_err *err);

/* The license a version is under: a human conclusion if recorded, else the
 * findings (walking parent_version_id for derived versions). For a version
 * not registered yet, pass its pending findings and its base (or 0). status is
 * "concluded", "detected", "conflict" or "unknown". */
typedef struct license_status {
	char license_id[64];   /* catalog id, or "conflict" / "unknown" */
	char status[16];
	char detail[512];      /* the conflicting ids, or the conclusion's reason */
	int64_t from_version;  /* the version the license came from (a base, for derived ones) */
} license_status;
int license_status_for(registry_store *s, int64_t version_id, const license_findings *pending,
		       int64_t pending_parent, license_status *out, owl_err *err);

/* Records a human conclusion beside the detected findings. */
int license_conclude(registry_store *s, int64_t version_id, const char *license_id,
		     const char *reason, const char *by, owl_err *err);

/* ---- policy and the gate -------------------------------------------------- */

typedef enum license_effect {
	LICENSE_ALLOW = 0,
	LICENSE_REQUIRE_APPROVAL = 1,
	LICENSE_DENY = 2,
} license_effect;
const char *license_effect_name(license_effect e);

typedef struct license_rule {
	int64_t id;
	char name[64];
	license_effect effect;
	int priority;          /* higher is considered first */
	char license[128];     /* comma-separated globs on the license id, "" = any */
	char category[128];    /* comma-separated globs on the category */
	char action[128];      /* import, finetune, deploy, export (globs, comma-separated) */
	char use[128];         /* internal, commercial, research */
	char model[128];       /* globs on the model name */
	char when[128];        /* conditions, comma-separated (see license_conditions) */
	char message[512];
} license_rule;

/* The conditions a rule's `when` may name, with their meaning, for help text. */
extern const char *const license_conditions[][2];

int license_rule_add(registry_store *s, const license_rule *r, owl_err *err);
int license_rule_remove(registry_store *s, const char *name, owl_err *err);
/* All rules in evaluation order; caller frees *out. */
int license_rules_list(registry_store *s, license_rule **out, size_t *n, owl_err *err);
int license_org_set(registry_store *s, const char *key, const char *value, owl_err *err);

typedef struct license_request {
	const char *model;          /* model name (naming rules) */
	int64_t version_id;         /* 0 when not registered yet (import) */
	const license_findings *findings; /* import: detected, not stored; else NULL */
	int64_t parent_version_id;  /* import of a derived version: its base */
	int derived;                /* the subject is a derived model (adapter, merge) */
	const char *action;         /* import, finetune, deploy, export */
	const char *use;            /* internal, commercial, research; NULL = internal */
	const char *actor;          /* who asks; NULL = $USER */
} license_request;

typedef struct license_decision {
	license_effect effect;      /* what the rule said */
	int allowed;                /* allow, or require_approval with a valid approval */
	char rule[64];              /* the deciding rule's name */
	char message[512];
	char license_id[64];
	char license_status[16];
	char approval[256];         /* "approved by X until T: reason", if one was used */
	char explanation[4096];     /* every rule considered, in order, and why it matched or not */
} license_decision;

/* A whole policy: its rules and the organisation's attributes. */
typedef struct license_org_attr {
	char *key, *value;
} license_org_attr;

typedef struct license_policy {
	license_rule *rules;
	size_t nrules;
	license_org_attr *org;
	size_t norg;
} license_policy;

/* Parses a policy file ({"owl_policy": 1, "rules": [...], "org": {...}}),
 * every field type-checked; a wrong one is an OWL_EUSAGE error naming it
 * (label names the file in messages). Touches no store. */
int license_policy_parse(const char *text, size_t len, const char *label, license_policy **out,
			 owl_err *err);
/* Adds the policy's rules and attributes in one transaction (replace: the
 * old rules go first); a rule the store refuses leaves the old policy. */
int license_policy_apply(registry_store *s, const license_policy *p, int replace, owl_err *err);
/* The stored policy, rules in evaluation order. */
int license_policy_read(registry_store *s, license_policy **out, owl_err *err);
/* The policy as indented JSON text (caller frees); as_file: the policy
 * file format, which license_policy_parse reads back. */
char *license_policy_to_json(const license_policy *p, int as_file);
void license_policy_free(license_policy *p);

/* Evaluates the policy without recording anything (owl policy test). */
int license_evaluate(registry_store *s, const license_request *req, license_decision *out,
		     owl_err *err);
/* Evaluates and records the decision in the audit log, in the caller's
 * transaction when it holds one (a SAVEPOINT: the decision commits or rolls
 * back with the change it allows), else in its own. Returns 0 when allowed;
 * OWL_EDENIED with a message naming the rule, the license and what would
 * allow it otherwise. */
int license_gate(registry_store *s, const license_request *req, license_decision *out,
		 owl_err *err);

/* ---- admitting a checkpoint (licenses/admit.c) --------------------------- */

/* The checks the engine makes when it loads a model, made on a stage's
 * config.json, tokenizer.json and GGUF files: an integrity error (exit 4)
 * naming the file, the field and the value. */
int license_check_model_files(const registry_stage *st, owl_err *err);

typedef struct license_admit_result {
	registry_commit_result commit;
	license_findings *findings; /* what was detected and stored, owned */
	/* The license the new version is under, for a summary line: the
	 * detected one, or for a derived version its base's ("apache-2.0
	 * (detected, from its base)"). */
	char license[160];
} license_admit_result;

/* Registers the stage as the next version of model, the flow of every
 * import: the model-file checks, license detection, the policy (action
 * import), and the commit, the "allow" decision written in the commit's
 * transaction. OWL_EDENIED (recorded, nothing stored) when the policy says
 * no. */
int license_admit_stage(registry_store *s, registry_stage *st, const char *model,
			int64_t parent_version_id, const char *tag, license_admit_result *out,
			owl_err *err);
void license_admit_result_release(license_admit_result *r);

/* ---- bundles under the policy (licenses/bundle.c) ----------------------- */

/* Writes the version to a bundle (registry_export) once the gate allows the
 * action "export"; the manifest carries the license, its status and its
 * obligations (flow-down, attribution, link). OWL_EDENIED (recorded) when
 * the policy says no. */
int license_export_bundle(registry_store *s, const registry_version *v, const char *file,
			  const char *sign_key, owl_err *err);

typedef struct license_import_result {
	license_admit_result admit;  /* the new version and its findings */
	char *model;                 /* the name it was registered under */
	size_t nfiles;
	registry_bundle_trust trust; /* what the bundle's signature proved */
} license_import_result;

/* Reads a bundle (registry_import_stage: every digest, the manifest, with
 * trust_key the signature) and admits it as the next version of name, or of
 * the model the manifest names (license_admit_stage). Nothing is stored on
 * failure. Release *out with license_import_result_release. */
int license_import_bundle(registry_store *s, const char *file, const char *trust_key,
			  const char *name, const char *tag, license_import_result *out,
			  owl_err *err);
void license_import_result_release(license_import_result *r);

/* Approves an action on a version; expires_at 0 = never. */
int license_approve(registry_store *s, int64_t version_id, const char *action, const char *use,
		    const char *by, const char *reason, int64_t expires_at, owl_err *err);

/* owl license set and owl approve, as a server would call them too: the
 * conclusion (or the approval) and its audit row commit together, so that
 * nothing is recorded that the log does not show. subject names the version
 * in the audit row. */
int license_conclude_audited(registry_store *s, int64_t version_id, const char *subject,
			     const char *license_id, const char *reason, const char *by,
			     owl_err *err);
int license_approve_audited(registry_store *s, const registry_version *v, const char *action,
			    const char *use, const char *by, const char *reason,
			    int64_t expires_at, owl_err *err);

/* ---- reading what is recorded (licenses/listing.c) ---------------------- */

/* The findings stored for a version (for a derived version, pass the
 * version its license comes from: license_status.from_version). Free with
 * license_findings_free. */
int license_findings_of(registry_store *s, int64_t version_id, license_findings **out,
			owl_err *err);

typedef struct license_conclusion {
	char *license_id, *reason, *by;
	int64_t at;
} license_conclusion;
/* The human conclusions recorded for a version, oldest first. */
int license_conclusions_of(registry_store *s, int64_t version_id, license_conclusion **out,
			   size_t *n, owl_err *err);
void license_conclusions_free(license_conclusion *c, size_t n);

/* Every catalog entry, by category and id; caller frees *out. */
int license_catalog_list(registry_store *s, license_facts **out, size_t *n, owl_err *err);

/* The organisation's attributes (mau ...), by key. */
int license_org_list(registry_store *s, license_org_attr **out, size_t *n, owl_err *err);
void license_org_attrs_free(license_org_attr *a, size_t n);

typedef struct license_audit_row {
	int64_t id, at, version_id; /* version_id 0: none */
	char *actor, *action, *subject, *use, *effect, *rule, *license, *evidence;
} license_audit_row;
/* The audit rows recorded at or after since (unix time), oldest first. */
int license_audit_list(registry_store *s, int64_t since, license_audit_row **out, size_t *n,
		       owl_err *err);
void license_audit_rows_free(license_audit_row *r, size_t n);

/* ---- audit ------------------------------------------------------------------ */

typedef struct license_audit_entry {
	int64_t at;
	const char *actor, *action, *subject, *use, *effect, *rule, *license, *evidence;
	int64_t version_id;
} license_audit_entry;

/* Appends one row, chained to the previous one by SHA-256, in its own
 * transaction; once that commits, anchors the row's sequence number and hash
 * outside the database (logs/audit-head, fsync'd; syslog too when
 * OWL_AUDIT_SYSLOG is set). An anchor that cannot be written is an error
 * after the row was committed (the message says so). */
int license_audit_append(registry_store *s, const license_audit_entry *e, owl_err *err);

typedef struct license_audit_report {
	int64_t rows;           /* rows in the database, their chain intact */
	int anchor_found;       /* logs/audit-head exists */
	int64_t anchor_lines;   /* its lines, each matching the database */
	int64_t anchored_seq;   /* the newest row an anchor or a checkpoint vouches for */
	int64_t checkpoints;    /* signed checkpoints checked */
	int checkpoints_signed; /* and their signatures verified with pub_key */
} license_audit_report;

/* Recomputes the chain and checks it against what was kept outside the
 * database: every line of logs/audit-head and every checkpoint (those given,
 * else the .ckpt files in logs/audit-checkpoints; with pub_key their Ed25519
 * signatures too) must name a row the database holds, with the same hash. OWL_EINTEGRITY
 * names the first row edited, deleted or inserted, or the rows removed from
 * the end. The anchor may lag the database (a crash after a commit), never
 * lead it. */
int license_audit_check(registry_store *s, const char *pub_key, const char *const *checkpoints,
			size_t ncheckpoints, license_audit_report *rep, owl_err *err);
/* license_audit_check without checkpoint keys; *rows = rows checked. */
int license_audit_verify(registry_store *s, int64_t *rows, owl_err *err);

/* Signs the log's current head (sequence number, hash, time) with an Ed25519
 * private key in PEM (the key format of signed bundles) after checking the
 * log, and writes the checkpoint to out_path, or to
 * logs/audit-checkpoints/SEQ-TIME.ckpt when out_path is NULL. *path_out
 * (caller frees) names the file, *seq_out the row it vouches for. */
int license_audit_checkpoint(registry_store *s, const char *key_path, const char *out_path,
			     char **path_out, int64_t *seq_out, owl_err *err);

#endif
