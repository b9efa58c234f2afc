/* API keys: created at random, shown once, stored as SHA-256 hashes. The
 * authoriser the server calls from its HTTP threads wraps one connection in
 * a mutex. */
#include "internal.h"
#include "licenses/licenses.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Longer bearers are never keys; they are refused without hashing. */
#define MAX_BEARER 256

static void key_hash(const char *key, char hex[65])
{
	unsigned char d[32];
	unsigned int dl = 0;
	EVP_Digest(key, strlen(key), d, &dl, EVP_sha256(), NULL);
	owl_hex(d, 32, hex);
}

static char *col_dup(sqlite3_stmt *q, int i)
{
	const unsigned char *t = sqlite3_column_text(q, i);
	return t ? owl_xstrdup((const char *)t) : NULL;
}

int deploy_key_create(registry_store *s, const char *name, const char *actor,
		      char key_out[DEPLOY_KEY_LEN], char id_out[DEPLOY_KEY_ID_LEN], owl_err *err)
{
	sqlite3 *db = registry_store_db(s);
	const char *who = actor ? actor : owl_user_name();
	/* A clash of the 32-bit public id is possible, if rare: draw again. */
	for (int attempt = 0; attempt < 8; attempt++) {
		unsigned char idb[4], secret[32];
		if (RAND_bytes(idb, sizeof idb) != 1 || RAND_bytes(secret, sizeof secret) != 1)
			return owl_err_set(err, OWL_EFAIL, "cannot draw random bytes for a key (OpenSSL "
					   "RAND_bytes failed)");
		char idhex[9], sechex[65], hash[65];
		owl_hex(idb, sizeof idb, idhex);
		owl_hex(secret, sizeof secret, sechex);
		OPENSSL_cleanse(secret, sizeof secret);
		snprintf(id_out, DEPLOY_KEY_ID_LEN, "owl-%s", idhex);
		snprintf(key_out, DEPLOY_KEY_LEN, "owl-%s-%s", idhex, sechex);
		OPENSSL_cleanse(sechex, sizeof sechex);
		key_hash(key_out, hash);
		sqlite3_stmt *q = NULL;
		if (sqlite3_prepare_v2(db, "INSERT INTO api_keys(key_id, hash, name, created_by,"
				       " created_at) VALUES (?,?,?,?,?)", -1, &q, NULL) != SQLITE_OK) {
			sqlite3_finalize(q);
			OPENSSL_cleanse(key_out, DEPLOY_KEY_LEN);
			return owl_err_set(err, OWL_EFAIL, "cannot record the key: %s",
					   sqlite3_errmsg(db));
		}
		sqlite3_bind_text(q, 1, id_out, -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 2, hash, -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 3, name ? name : "", -1, SQLITE_STATIC);
		sqlite3_bind_text(q, 4, who && *who ? who : "unknown", -1, SQLITE_STATIC);
		sqlite3_bind_int64(q, 5, owl_unix_time());
		int rc = sqlite3_step(q);
		sqlite3_finalize(q);
		if (rc == SQLITE_DONE)
			return 0;
		if (rc != SQLITE_CONSTRAINT) {
			OPENSSL_cleanse(key_out, DEPLOY_KEY_LEN);
			return owl_err_set(err, OWL_EFAIL, "cannot record the key: %s",
					   sqlite3_errmsg(db));
		}
	}
	OPENSSL_cleanse(key_out, DEPLOY_KEY_LEN);
	return owl_err_set(err, OWL_EFAIL, "cannot find a free key id after 8 draws");
}

/* "owl-1a2b3c4d" or "1a2b3c4d" -> "owl-1a2b3c4d"; 0 when it is no key id. */
static int normal_id(const char *id, char out[DEPLOY_KEY_ID_LEN])
{
	const char *hex = strncmp(id, "owl-", 4) == 0 ? id + 4 : id;
	if (!owl_is_hex_digest(hex, 8))
		return 0;
	snprintf(out, DEPLOY_KEY_ID_LEN, "owl-%s", hex);
	return 1;
}

/* The key named by id (normalised into kid) and whether it is revoked:
 * 0, or an error naming what is wrong with id or the database. */
static int find_key(registry_store *s, const char *id, char kid[DEPLOY_KEY_ID_LEN], int *revoked,
		    owl_err *err)
{
	if (!normal_id(id, kid))
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not a key id (owl-XXXXXXXX, as owl keys "
				   "list shows)", id);
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(db, "SELECT revoked_at FROM api_keys WHERE key_id=?", -1, &q,
			       NULL) != SQLITE_OK) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "cannot read the keys: %s", sqlite3_errmsg(db));
	}
	sqlite3_bind_text(q, 1, kid, -1, SQLITE_STATIC);
	int found = sqlite3_step(q) == SQLITE_ROW;
	*revoked = found && sqlite3_column_type(q, 0) != SQLITE_NULL;
	sqlite3_finalize(q);
	if (!found)
		return owl_err_set(err, OWL_EFAIL, "no key '%s' (see 'owl keys list')", kid);
	return 0;
}

int deploy_key_revoke(registry_store *s, const char *id, const char *actor, owl_err *err)
{
	char kid[DEPLOY_KEY_ID_LEN];
	int revoked, rc = find_key(s, id, kid, &revoked, err);
	if (rc)
		return rc;
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	if (revoked)
		return 0;
	const char *who = actor ? actor : owl_user_name();
	if (sqlite3_prepare_v2(db, "UPDATE api_keys SET revoked_at=?, revoked_by=? WHERE key_id=?",
			       -1, &q, NULL) != SQLITE_OK) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "cannot revoke the key: %s", sqlite3_errmsg(db));
	}
	sqlite3_bind_int64(q, 1, owl_unix_time());
	sqlite3_bind_text(q, 2, who && *who ? who : "unknown", -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 3, kid, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot revoke the key: %s", sqlite3_errmsg(db));
}

int deploy_key_remove(registry_store *s, const char *id, owl_err *err)
{
	char kid[DEPLOY_KEY_ID_LEN];
	int revoked, rc = find_key(s, id, kid, &revoked, err);
	if (rc)
		return rc;
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	if (!revoked)
		return owl_err_set(err, OWL_EUSAGE, "key '%s' is still valid: revoke it first (owl keys "
				   "revoke %s)", kid, kid);
	if (sqlite3_prepare_v2(db, "DELETE FROM api_keys WHERE key_id=?", -1, &q, NULL) !=
	    SQLITE_OK) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "cannot remove the key: %s", sqlite3_errmsg(db));
	}
	sqlite3_bind_text(q, 1, kid, -1, SQLITE_STATIC);
	int ok = sqlite3_step(q) == SQLITE_DONE;
	sqlite3_finalize(q);
	return ok ? 0 : owl_err_set(err, OWL_EFAIL, "cannot remove the key: %s", sqlite3_errmsg(db));
}

void deploy_key_list_free(deploy_key *k, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(k[i].name);
		free(k[i].created_by);
		free(k[i].revoked_by);
	}
	free(k);
}

int deploy_key_list(registry_store *s, deploy_key **out, size_t *n, owl_err *err)
{
	*out = NULL;
	*n = 0;
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	if (sqlite3_prepare_v2(db, "SELECT key_id, name, created_by, created_at,"
			       " COALESCE(revoked_at,0), revoked_by FROM api_keys ORDER BY id", -1, &q,
			       NULL) != SQLITE_OK) {
		sqlite3_finalize(q);
		return owl_err_set(err, OWL_EFAIL, "cannot read the keys: %s", sqlite3_errmsg(db));
	}
	deploy_key *all = NULL;
	size_t k = 0;
	while (sqlite3_step(q) == SQLITE_ROW) {
		all = owl_xrealloc(all, (k + 1) * sizeof *all);
		deploy_key *e = &all[k++];
		snprintf(e->id, sizeof e->id, "%s", (const char *)sqlite3_column_text(q, 0));
		e->name = col_dup(q, 1);
		e->created_by = col_dup(q, 2);
		e->created_at = sqlite3_column_int64(q, 3);
		e->revoked_at = sqlite3_column_int64(q, 4);
		e->revoked_by = col_dup(q, 5);
	}
	sqlite3_finalize(q);
	*out = all;
	*n = k;
	return 0;
}

deploy_auth deploy_key_check(registry_store *s, const char *bearer, char *key_id,
			     size_t key_id_len)
{
	if (key_id && key_id_len)
		key_id[0] = 0;
	sqlite3 *db = registry_store_db(s);
	sqlite3_stmt *q = NULL;
	/* A revoked key still counts as a key: revoking the last one must not
	 * open the server to everyone. */
	if (sqlite3_prepare_v2(db, "SELECT EXISTS (SELECT 1 FROM api_keys)", -1, &q, NULL) !=
	    SQLITE_OK) {
		sqlite3_finalize(q);
		return DEPLOY_AUTH_DENIED;
	}
	int step = sqlite3_step(q);
	int any = step == SQLITE_ROW && sqlite3_column_int(q, 0);
	sqlite3_finalize(q);
	if (step != SQLITE_ROW)
		return DEPLOY_AUTH_DENIED;
	if (!any)
		return DEPLOY_AUTH_OPEN;
	if (!bearer || !*bearer || strnlen(bearer, MAX_BEARER + 1) > MAX_BEARER)
		return DEPLOY_AUTH_DENIED;
	char hash[65];
	key_hash(bearer, hash);
	if (sqlite3_prepare_v2(db, "SELECT key_id FROM api_keys WHERE hash=? AND revoked_at IS NULL",
			       -1, &q, NULL) != SQLITE_OK) {
		sqlite3_finalize(q);
		return DEPLOY_AUTH_DENIED;
	}
	sqlite3_bind_text(q, 1, hash, -1, SQLITE_STATIC);
	deploy_auth a = DEPLOY_AUTH_DENIED;
	if (sqlite3_step(q) == SQLITE_ROW) {
		a = DEPLOY_AUTH_OK;
		if (key_id && key_id_len)
			snprintf(key_id, key_id_len, "%s", (const char *)sqlite3_column_text(q, 0));
	}
	sqlite3_finalize(q);
	return a;
}

/* ---- the authoriser --------------------------------------------------------- */

typedef struct authoriser {
	pthread_mutex_t mu;
	registry_store *s;
} authoriser;

static deploy_auth authorise(void *ctx, const char *bearer, char *key_id, size_t key_id_len)
{
	authoriser *a = ctx;
	pthread_mutex_lock(&a->mu);
	deploy_auth r = deploy_key_check(a->s, bearer, key_id, key_id_len);
	pthread_mutex_unlock(&a->mu);
	return r;
}

int deploy_home_open(const char *home, const registry_open_opts *o, registry_store **out,
		     owl_err *err)
{
	registry_store *s = NULL;
	*out = NULL;
	int rc = registry_store_open_ex(home, o, &s, err);
	if (!rc)
		rc = licenses_migrate(s, err);
	if (!rc)
		rc = deploy_migrate(s, err);
	if (rc) {
		registry_store_close(s);
		return rc;
	}
	*out = s;
	return 0;
}

int deploy_open_for_server(const char *home, const char *verb, registry_store **out,
			   owl_err *err)
{
	registry_open_opts o = {.read_only_ok = 1, .verb = verb};
	return deploy_home_open(home, &o, out, err);
}

int deploy_authoriser_new(const char *home, deploy_authoriser *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	authoriser *a = owl_xcalloc(1, sizeof *a);
	int rc = deploy_open_for_server(home, "serve", &a->s, err);
	if (rc) {
		free(a);
		return rc;
	}
	pthread_mutex_init(&a->mu, NULL);
	out->ctx = a;
	out->authorise = authorise;
	return 0;
}

void deploy_authoriser_free(deploy_authoriser *da)
{
	if (!da || !da->ctx)
		return;
	authoriser *a = da->ctx;
	registry_store_close(a->s);
	pthread_mutex_destroy(&a->mu);
	free(a);
	memset(da, 0, sizeof *da);
}
