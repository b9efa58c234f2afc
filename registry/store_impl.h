/* Private to registry/: the store handle's fields. Every other module sees
 * registry_store as an opaque handle and goes through the accessors in
 * registry.h (registry_store_db, registry_store_home, ...). */
#ifndef OWL_REGISTRY_STORE_IMPL_H
#define OWL_REGISTRY_STORE_IMPL_H

#include "registry.h"

struct registry_store {
	sqlite3 *db;
	char *home;      /* the data home */
	char *db_path;   /* home/owl.db */
	char *blobs_dir; /* home/blobs/sha256 */
	char *tmp_dir;   /* home/tmp */
	int read_only;   /* opened through SQLite's read-only or immutable open */
	registry_wait_fn wait_fn;
	void *wait_ctx;
	double lock_timeout_s; /* how long a writer waits for the lock */
	double wait_started;   /* busy handler: when the current wait began */
	double wait_notified;  /* busy handler: when wait_fn was last called */
	int tx_depth;          /* 0 outside a transaction, > 1 inside SAVEPOINTs */
	struct registry_after_commit *after; /* run once the outermost transaction commits */
	int nafter, after_cap;
	struct registry_remove_guards *guards; /* see registry_store_add_remove_guard */
};

#endif
