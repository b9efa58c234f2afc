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

typedef struct registry_store {
	sqlite3 *db;
	char *home;      /* the data home */
	char *db_path;   /* home/owl.db */
	char *blobs_dir; /* home/blobs/sha256 */
	char *tmp_dir;   /* home/tmp */
} registry_store;

/* Opens (creating if needed) the data home and its database, and brings the
 * registry's schema up to date. A database written by a newer owl is refused.
 * The caller closes the store with registry_store_close. */
int registry_store_open(const char *home, registry_store **out, owl_err *err);
void registry_store_close(registry_store *s);

/* Applies the schema steps a module has not applied yet, each in its own
 * transaction, recording them in the migrations table. steps[i] is the SQL of
 * version i+1. Other modules (licenses, deploy, train) call this with their own
 * module name after registry_store_open. */
int registry_store_migrate(registry_store *s, const char *module, const char *const *steps,
			   int nsteps, owl_err *err);
/* The number of schema steps applied for module (0 if none). */
int registry_store_schema_version(registry_store *s, const char *module);

int registry_store_exec(registry_store *s, const char *sql, owl_err *err);
int registry_store_begin(registry_store *s, owl_err *err); /* BEGIN IMMEDIATE */
int registry_store_commit(registry_store *s, owl_err *err);
void registry_store_rollback(registry_store *s); /* no-op outside a transaction */

/* The registry's own schema (registry/schema.c). */
int registry_schema_migrate(registry_store *s, owl_err *err);
#define REGISTRY_SCHEMA_MODULE "registry"

#endif
