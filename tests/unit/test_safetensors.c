/* Unit tests of common/safetensors: parse, validate, metadata, sharded index. */
#include "test.h"

#include <stdio.h>
#include <string.h>

#include "common/safetensors.h"

/* Builds a safetensors image: 8-byte LE length, header, then `data`. */
static size_t make(unsigned char *out, const char *hdr, const void *data, size_t dlen)
{
	size_t h = strlen(hdr);
	for (int i = 0; i < 8; i++) out[i] = (unsigned char)((uint64_t)h >> (8 * i));
	memcpy(out + 8, hdr, h);
	memcpy(out + 8 + h, data, dlen);
	return 8 + h + dlen;
}

static void valid_file_lists_tensors_and_metadata(void)
{
	unsigned char buf[512];
	float d[3] = {1, 2, 3};
	size_t n = make(buf, "{\"__metadata__\":{\"license\":\"apache-2.0\"},"
			     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
			     "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, sizeof d);
	st_file *f = NULL;
	owl_err err = {0};
	CHECK_INT(st_parse(buf, n, "m.safetensors", &f, &err), 0);
	if (!f) return;
	CHECK_INT((int)st_count(f), 2);
	const st_tensor *a = st_find(f, "a"), *b = st_find(f, "b");
	CHECK(a && b, "both tensors found");
	if (a && b) {
		CHECK_INT(a->n_dims, 1);
		CHECK_INT((int)a->shape[0], 2);
		CHECK_NEAR(((const float *)b->data)[0], 3.0, 0);
	}
	CHECK_STR(st_metadata_get(f, "license"), "apache-2.0");
	CHECK(st_metadata_get(f, "nope") == NULL, "missing key is NULL");
	st_close(f);
}

static void bad_headers_are_refused_with_a_reason(void)
{
	static const struct { const char *hdr; size_t dlen; const char *want; } cases[] = {
		{"{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "run past the data"},
		{"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "shape does not match"},
		{"{\"x\":{\"dtype\":\"Q9\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
		{"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "hole"},
		{"{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		 "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "overlaps"},
		{"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "trailing"},
		{"{\"x\":1,\"x\":2}", 0, "not a JSON object"},
		{"[1]", 0, "not a JSON object"},
	};
	unsigned char buf[512], zero[16] = {0};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		size_t n = make(buf, cases[i].hdr, zero, cases[i].dlen);
		st_file *f = NULL;
		owl_err err = {0};
		int rc = st_parse(buf, n, "m.safetensors", &f, &err);
		CHECK_INT(rc, OWL_EINTEGRITY);
		CHECK(strstr(err.msg, cases[i].want) != NULL, "case %zu: expected '%s' in '%s'", i, cases[i].want, err.msg);
		st_close(f);
	}
	/* Header length larger than the file. */
	unsigned char big[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0};
	st_file *f = NULL;
	owl_err err = {0};
	CHECK_INT(st_parse(big, sizeof big, "m.safetensors", &f, &err), OWL_EINTEGRITY);
	CHECK_INT(st_parse(big, 4, "m.safetensors", &f, &err), OWL_EINTEGRITY);
}

static void validate_file_and_index(void)
{
	char *dir = test_tmpdir("st");
	char path[4096];
	unsigned char buf[256];
	unsigned short h[2] = {0x3c00, 0x4000};
	size_t n = make(buf, "{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", h, sizeof h);
	snprintf(path, sizeof path, "%s/model.safetensors", dir);
	FILE *fp = fopen(path, "wb");
	fwrite(buf, 1, n, fp);
	fclose(fp);
	owl_err err = {0};
	CHECK_INT(st_validate_file(path, &err), 0);
	fp = fopen(path, "wb");
	fwrite(buf, 1, n - 1, fp);
	fclose(fp);
	CHECK_INT(st_validate_file(path, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "'model.safetensors'") != NULL, "error names the file: %s", err.msg);

	snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
	fp = fopen(path, "w");
	fputs("{\"metadata\":{},\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-2.safetensors\",\"c\":\"m-1.safetensors\"}}", fp);
	fclose(fp);
	st_index *ix = NULL;
	CHECK_INT(st_index_load(path, &ix, &err), 0);
	if (ix) {
		CHECK_STR(st_index_file_for(ix, "b"), "m-2.safetensors");
		CHECK_INT((int)st_index_file_count(ix), 2);
		CHECK(st_index_file_for(ix, "z") == NULL, "unknown tensor");
	}
	st_index_free(ix);
	fp = fopen(path, "w");
	fputs("{\"weight_map\":{\"a\":\"../evil\"}}", fp);
	fclose(fp);
	CHECK_INT(st_index_load(path, &ix, &err), OWL_EINTEGRITY);
	owl_remove_tree(dir, &err);
	free(dir);
}

int main(void)
{
	RUN_TEST(valid_file_lists_tensors_and_metadata);
	RUN_TEST(bad_headers_are_refused_with_a_reason);
	RUN_TEST(validate_file_and_index);
	TEST_MAIN_END();
}
