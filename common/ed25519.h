/* Ed25519 signatures with keys in PEM files (OpenSSL), for signed bundles
 * and signed audit checkpoints. */
#ifndef OWL_ED25519_H
#define OWL_ED25519_H

#include "common/common.h"

/* Signs msg with the private key at key_path; hex gets 128 hex digits. A
 * key that cannot be read or is not Ed25519 is a usage error naming it. */
int owl_ed25519_sign(const char *key_path, const void *msg, size_t n, char hex[129],
		     owl_err *err);
/* 0 when sig verifies msg under the public key at pub_path; OWL_EINTEGRITY
 * when it does not (the caller says what was forged); a usage error naming
 * the key when it cannot be read. key_role names the key in that message
 * ("public", "trusted"). */
int owl_ed25519_verify(const char *pub_path, const char *key_role, const void *msg, size_t n,
		       const unsigned char sig[64], owl_err *err);

#endif
