#include "common/ed25519.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <string.h>

int owl_ed25519_sign(const char *key_path, const void *msg, size_t n, char hex[129],
		     owl_err *err)
{
	FILE *f = fopen(key_path, "r");
	if (!f)
		return owl_err_set(err, OWL_EUSAGE, "cannot open signing key '%s': %s", key_path,
				   strerror(errno));
	EVP_PKEY *pk = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (!pk || EVP_PKEY_id(pk) != EVP_PKEY_ED25519) {
		EVP_PKEY_free(pk);
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not an Ed25519 private key in PEM "
				   "(make one with: openssl genpkey -algorithm ed25519 -out KEY.pem)",
				   key_path);
	}
	unsigned char sig[64];
	size_t sl = sizeof sig;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok = EVP_DigestSignInit(c, NULL, NULL, NULL, pk) == 1 &&
		 EVP_DigestSign(c, sig, &sl, msg, n) == 1 && sl == 64;
	EVP_MD_CTX_free(c);
	EVP_PKEY_free(pk);
	if (!ok)
		return owl_err_set(err, OWL_EFAIL, "cannot sign with '%s'", key_path);
	owl_hex(sig, 64, hex);
	return 0;
}

int owl_ed25519_verify(const char *pub_path, const char *key_role, const void *msg, size_t n,
		       const unsigned char sig[64], owl_err *err)
{
	FILE *f = fopen(pub_path, "r");
	if (!f)
		return owl_err_set(err, OWL_EUSAGE, "cannot open %s key '%s': %s", key_role, pub_path,
				   strerror(errno));
	EVP_PKEY *pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (!pk || EVP_PKEY_id(pk) != EVP_PKEY_ED25519) {
		EVP_PKEY_free(pk);
		return owl_err_set(err, OWL_EUSAGE, "'%s' is not an Ed25519 public key in PEM "
				   "(derive it with: openssl pkey -in KEY.pem -pubout -out KEY.pub)",
				   pub_path);
	}
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok = EVP_DigestVerifyInit(c, NULL, NULL, NULL, pk) == 1 &&
		 EVP_DigestVerify(c, sig, 64, msg, n) == 1;
	EVP_MD_CTX_free(c);
	EVP_PKEY_free(pk);
	if (!ok)
		return owl_err_set(err, OWL_EINTEGRITY, "the signature does not verify with '%s'",
				   pub_path);
	return 0;
}
