/* Unit tests of common/gguf: shapes the reader must refuse. Valid files are
 * covered end to end (tests/e2e/gguf.sh, engine.sh) with files the fixture
 * generator writes. */
#include "test.h"

#include <stdio.h>
#include <string.h>

#include "common/gguf.h"

/* Little-endian writers for a hand-made GGUF image. */
static unsigned char *put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		*p++ = (unsigned char)(v >> (8 * i));
	return p;
}

static unsigned char *put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		*p++ = (unsigned char)(v >> (8 * i));
	return p;
}

/* One F32 tensor "t" of the given dims and no metadata, then 64 data bytes;
 * *hdr_len (when asked) is where the header ends. */
static size_t one_tensor(unsigned char *buf, const uint64_t *dims, uint32_t nd, size_t *hdr_len)
{
	unsigned char *p = buf;
	memcpy(p, "GGUF", 4);
	p = put32(p + 4, 3);
	p = put64(p, 1); /* tensors */
	p = put64(p, 0); /* metadata entries */
	p = put64(p, 1);
	*p++ = 't';
	p = put32(p, nd);
	for (uint32_t d = 0; d < nd; d++)
		p = put64(p, dims[d]);
	p = put32(p, 0); /* F32 */
	p = put64(p, 0); /* offset */
	size_t hdr = (size_t)(p - buf), data = (hdr + 31) / 32 * 32;
	if (hdr_len)
		*hdr_len = hdr;
	memset(p, 0, data + 64 - hdr);
	return data + 64;
}

/* Found by fuzz_gguf: a row of 2^62 f32 elements is 2^64 bytes, which
 * wrapped to 0 and let the tensor pass as fitting in the file. */
static void rows_too_big_to_address_are_refused(void)
{
	unsigned char buf[256];
	gguf_file *f = NULL;
	owl_err err = {0};
	uint64_t huge[1] = {1ull << 62};
	size_t n = one_tensor(buf, huge, 1, NULL);
	CHECK_INT(gguf_parse(buf, n, "big.gguf", &f, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "'t'") != NULL, "names the tensor: %s", err.msg);
	gguf_close(f);
	f = NULL;
	/* Rows that fit, times a row count whose product of bytes wraps. */
	uint64_t wide[2] = {16, 1ull << 59};
	n = one_tensor(buf, wide, 2, NULL);
	CHECK_INT(gguf_parse(buf, n, "wide.gguf", &f, &err), OWL_EINTEGRITY);
	gguf_close(f);
	f = NULL;
	/* And the honest version of the same file is read. */
	uint64_t ok[2] = {4, 4};
	size_t hdr;
	n = one_tensor(buf, ok, 2, &hdr);
	CHECK_INT(gguf_parse(buf, n, "ok.gguf", &f, &err), 0);
	CHECK_INT((long long)gguf_tensor_count(f), 1);
	gguf_close(f);
	f = NULL;
	/* Found by fuzz_gguf: a file that ends inside the header's alignment
	 * padding put the data section past its end, and "size - data"
	 * wrapped around, so any tensor size passed. */
	CHECK_INT(gguf_parse(buf, hdr + 1, "cut.gguf", &f, &err), OWL_EINTEGRITY);
	CHECK(strstr(err.msg, "outside the file") != NULL, "says why: %s", err.msg);
	gguf_close(f);
}

int main(void)
{
	RUN_TEST(rows_too_big_to_address_are_refused);
	TEST_MAIN_END();
}
