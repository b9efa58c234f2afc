/* GGUF v2/v3 reader. Every length and count read from the file is checked
 * against the bytes that remain before it is used, so a truncated or hostile
 * file ends in an error that says what is wrong and where, never in a read
 * past the buffer. Layout (little-endian): magic "GGUF", u32 version, u64
 * tensor count, u64 metadata count, metadata key/values, tensor infos, then
 * padding to general.alignment (default 32) and the tensor data. */
#define _GNU_SOURCE
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

enum gguf_vtype {
	V_U8 = 0, V_I8, V_U16, V_I16, V_U32, V_I32, V_F32, V_BOOL, V_STR, V_ARR, V_U64, V_I64, V_F64,
};

typedef struct gguf_kv {
	char *key;
	int type;         /* enum gguf_vtype */
	int arr_type;     /* element type for V_ARR */
	uint64_t n;       /* element count for V_ARR */
	union {
		uint64_t u;
		int64_t i;
		double f;
		char *s;
	} v;
	void *arr;        /* V_ARR of numbers: a malloc'd copy; of strings: char ** */
} gguf_kv;

struct gguf_file {
	uint32_t version;
	gguf_kv *kvs;
	size_t nkv;
	gguf_tensor *tensors;
	size_t ntensors;
	const uint8_t *base;
	size_t size;
	void *map;        /* when opened from a path */
	size_t map_size;
};

typedef struct cursor {
	const uint8_t *p, *end, *start;
	const char *label;
	owl_err *err;
} cursor;

static int need(cursor *c, size_t n, const char *what)
{
	if ((size_t)(c->end - c->p) < n)
		return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': truncated while "
				   "reading %s (offset %zu)", c->label, what,
				   (size_t)(c->p - c->start));
	return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
	if (need(c, 4, what))
		return OWL_EINTEGRITY;
	memcpy(v, c->p, 4);
	c->p += 4;
	return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
	if (need(c, 8, what))
		return OWL_EINTEGRITY;
	memcpy(v, c->p, 8);
	c->p += 8;
	return 0;
}

/* A string's length, checked against what is left of the file; the cursor
 * is left at its first byte. */
static int rd_str_len(cursor *c, uint64_t *n, const char *what)
{
	if (rd_u64(c, n, what))
		return OWL_EINTEGRITY;
	if (*n > (uint64_t)(c->end - c->p) || *n > (64u << 20))
		return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': %s has a length "
				   "of %llu bytes, past the end of the file", c->label, what,
				   (unsigned long long)*n);
	return 0;
}

static int rd_str(cursor *c, char **out, const char *what)
{
	uint64_t n;
	if (rd_str_len(c, &n, what))
		return OWL_EINTEGRITY;
	*out = owl_xmalloc(n + 1);
	memcpy(*out, c->p, n);
	(*out)[n] = 0;
	c->p += n;
	return 0;
}

static size_t scalar_size(int t)
{
	switch (t) {
	case V_U8: case V_I8: case V_BOOL: return 1;
	case V_U16: case V_I16: return 2;
	case V_U32: case V_I32: case V_F32: return 4;
	case V_U64: case V_I64: case V_F64: return 8;
	default: return 0;
	}
}

static void read_scalar(const uint8_t *p, int t, gguf_kv *kv)
{
	switch (t) {
	case V_U8: kv->v.u = p[0]; break;
	case V_BOOL: kv->v.u = p[0] != 0; break;
	case V_I8: kv->v.i = (int8_t)p[0]; break;
	case V_U16: { uint16_t x; memcpy(&x, p, 2); kv->v.u = x; break; }
	case V_I16: { int16_t x; memcpy(&x, p, 2); kv->v.i = x; break; }
	case V_U32: { uint32_t x; memcpy(&x, p, 4); kv->v.u = x; break; }
	case V_I32: { int32_t x; memcpy(&x, p, 4); kv->v.i = x; break; }
	case V_F32: { float x; memcpy(&x, p, 4); kv->v.f = x; break; }
	case V_U64: memcpy(&kv->v.u, p, 8); break;
	case V_I64: memcpy(&kv->v.i, p, 8); break;
	case V_F64: memcpy(&kv->v.f, p, 8); break;
	}
}

static int read_kv(cursor *c, gguf_kv *kv)
{
	uint32_t t;
	if (rd_str(c, &kv->key, "a metadata key") || rd_u32(c, &t, "a metadata type"))
		return OWL_EINTEGRITY;
	kv->type = (int)t;
	if (t == V_STR)
		return rd_str(c, &kv->v.s, kv->key);
	if (t != V_ARR) {
		size_t sz = scalar_size((int)t);
		if (!sz)
			return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': key '%s' has "
					   "unknown value type %u", c->label, kv->key, t);
		if (need(c, sz, kv->key))
			return OWL_EINTEGRITY;
		read_scalar(c->p, (int)t, kv);
		c->p += sz;
		return 0;
	}
	uint32_t at;
	uint64_t n;
	if (rd_u32(c, &at, kv->key) || rd_u64(c, &n, kv->key))
		return OWL_EINTEGRITY;
	kv->arr_type = (int)at;
	kv->n = n;
	if (at == V_STR) {
		/* Each string takes at least its 8-byte length. */
		if (n > (uint64_t)(c->end - c->p) / 8)
			return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': array '%s' "
					   "claims %llu strings, more than the file can hold", c->label,
					   kv->key, (unsigned long long)n);
		/* All the strings in one pool (ss[0] is its start): a vocabulary is
		 * 100k strings, and one allocation each would cost more than the
		 * strings themselves. A first pass checks every length. */
		cursor look = *c;
		uint64_t total = 0;
		for (uint64_t i = 0; i < n; i++) {
			uint64_t len;
			if (rd_str_len(&look, &len, kv->key))
				return OWL_EINTEGRITY;
			look.p += len;
			total += len + 1;
		}
		char **ss = owl_xcalloc(n ? n : 1, sizeof *ss);
		char *pool = owl_xmalloc(total ? (size_t)total : 1);
		kv->arr = ss;
		if (!n)
			free(pool);
		for (uint64_t i = 0; i < n; i++) {
			uint64_t len;
			rd_str_len(c, &len, kv->key); /* checked by the first pass */
			memcpy(pool, c->p, (size_t)len);
			pool[len] = 0;
			ss[i] = pool;
			pool += len + 1;
			c->p += len;
		}
		return 0;
	}
	size_t sz = scalar_size((int)at);
	if (!sz)
		return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': array '%s' has "
				   "element type %u, which owl does not read (nested arrays are not "
				   "used by models)", c->label, kv->key, at);
	if (n > (uint64_t)(c->end - c->p) / sz)
		return owl_err_set(c->err, OWL_EINTEGRITY, "cannot read GGUF '%s': array '%s' of "
				   "%llu elements runs past the end of the file", c->label, kv->key,
				   (unsigned long long)n);
	kv->arr = owl_xmalloc(n > 0 ? n * sz : 1);
	memcpy(kv->arr, c->p, n * sz);
	c->p += n * sz;
	return 0;
}

static const struct { gguf_type t; const char *name; size_t block, bytes; } types[] = {
	{GGUF_T_F32, "F32", 1, 4},     {GGUF_T_F16, "F16", 1, 2},
	{GGUF_T_BF16, "BF16", 1, 2},   {GGUF_T_Q8_0, "Q8_0", 32, 34},
	{GGUF_T_Q4_0, "Q4_0", 32, 18}, {GGUF_T_Q4_1, "Q4_1", 32, 20},
	{GGUF_T_Q4_K, "Q4_K", 256, 144}, {GGUF_T_Q6_K, "Q6_K", 256, 210},
};

size_t gguf_type_block_size(gguf_type t)
{
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (types[i].t == t)
			return types[i].block;
	return 0;
}

size_t gguf_type_block_bytes(gguf_type t)
{
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (types[i].t == t)
			return types[i].bytes;
	return 0;
}

const char *gguf_type_name(gguf_type t)
{
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		if (types[i].t == t)
			return types[i].name;
	return "unknown";
}

size_t gguf_row_bytes(gguf_type t, uint64_t n)
{
	size_t bs = gguf_type_block_size(t), bytes = gguf_type_block_bytes(t);
	if (!bs || n % bs || n / bs > SIZE_MAX / bytes)
		return 0; /* not whole blocks, or more bytes than memory can address */
	return (size_t)(n / bs) * bytes;
}

static const gguf_kv *find_kv(const gguf_file *f, const char *key)
{
	for (size_t i = 0; i < f->nkv; i++)
		if (strcmp(f->kvs[i].key, key) == 0)
			return &f->kvs[i];
	return NULL;
}

int gguf_parse(const void *buf, size_t size, const char *label, gguf_file **out, owl_err *err)
{
	*out = NULL;
	cursor c = {buf, (const uint8_t *)buf + size, buf, label, err};
	if (size < 24 || memcmp(buf, "GGUF", 4) != 0)
		return owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': not a GGUF file (no GGUF "
				   "magic)", label);
	c.p += 4;
	gguf_file *f = owl_xcalloc(1, sizeof *f);
	f->base = buf;
	f->size = size;
	uint64_t nt, nkv;
	int rc = rd_u32(&c, &f->version, "the version") || rd_u64(&c, &nt, "the tensor count") ||
		 rd_u64(&c, &nkv, "the metadata count");
	if (!rc && (f->version < 2 || f->version > 3))
		rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': GGUF version %u (owl reads "
				 "versions 2 and 3)", label, f->version);
	/* Each key/value takes at least 12 bytes, each tensor info at least 24. */
	if (!rc && (nkv > size / 12 || nt > size / 24))
		rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': it claims %llu metadata "
				 "entries and %llu tensors, more than its %zu bytes can hold", label,
				 (unsigned long long)nkv, (unsigned long long)nt, size);
	if (!rc) {
		f->kvs = owl_xcalloc(nkv ? nkv : 1, sizeof *f->kvs);
		for (uint64_t i = 0; i < nkv && !rc; i++) {
			rc = read_kv(&c, &f->kvs[i]);
			f->nkv++;
		}
	}
	if (!rc) {
		f->tensors = owl_xcalloc(nt ? nt : 1, sizeof *f->tensors);
		for (uint64_t i = 0; i < nt && !rc; i++) {
			gguf_tensor *t = &f->tensors[i];
			uint32_t nd = 0, type = 0;
			rc = rd_str(&c, &t->name, "a tensor name");
			f->ntensors++;
			if (!rc)
				rc = rd_u32(&c, &nd, t->name);
			if (!rc && (nd == 0 || nd > 4))
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' has %u "
						 "dimensions (1 to 4 allowed)", label, t->name, nd);
			t->n_dims = (int)nd;
			for (uint32_t d = 0; !rc && d < nd; d++)
				rc = rd_u64(&c, &t->dims[d], t->name);
			if (!rc)
				rc = rd_u32(&c, &type, t->name);
			if (!rc)
				rc = rd_u64(&c, &t->offset, t->name);
			t->type = (gguf_type)type;
			if (!rc && !gguf_type_block_size(t->type))
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' has type "
						 "%u, which owl does not support (F32, F16, BF16, Q8_0, Q4_0, "
						 "Q4_1, Q4_K, Q6_K)", label, t->name, type);
		}
	}
	uint64_t align = 32;
	const gguf_kv *a = rc ? NULL : find_kv(f, "general.alignment");
	if (a && (a->type == V_U32 || a->type == V_U64))
		align = a->v.u;
	if (!rc && (align == 0 || (align & (align - 1)) || align > 65536))
		rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': general.alignment %llu is not a "
				 "power of two", label, (unsigned long long)align);
	if (!rc) {
		size_t hdr = (size_t)(c.p - (const uint8_t *)buf);
		size_t data = (hdr + align - 1) / align * align;
		for (size_t i = 0; i < f->ntensors && !rc; i++) {
			gguf_tensor *t = &f->tensors[i];
			uint64_t n = 1;
			for (int d = 0; d < t->n_dims; d++) {
				if (t->dims[d] == 0 || n > UINT64_MAX / t->dims[d]) {
					rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' "
							 "has an impossible shape", label, t->name);
					break;
				}
				n *= t->dims[d];
			}
			if (rc)
				break;
			size_t bs = gguf_type_block_size(t->type);
			if (t->dims[0] / bs > SIZE_MAX / gguf_type_block_bytes(t->type)) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' has rows "
						 "of %llu elements, more bytes than memory can address",
						 label, t->name, (unsigned long long)t->dims[0]);
				break;
			}
			size_t row = gguf_row_bytes(t->type, t->dims[0]);
			if (!row) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' rows of "
						 "%llu elements are not whole %s blocks", label, t->name,
						 (unsigned long long)t->dims[0], gguf_type_name(t->type));
				break;
			}
			if (n / t->dims[0] > UINT64_MAX / row) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' has an "
						 "impossible shape", label, t->name);
				break;
			}
			uint64_t nbytes = (n / t->dims[0]) * row;
			if (t->offset % align || data > size || t->offset > size || nbytes > size - data ||
			    t->offset > size - data - nbytes) {
				rc = owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': tensor '%s' data "
						 "[%llu, +%llu) lies outside the file or is misaligned", label,
						 t->name, (unsigned long long)t->offset,
						 (unsigned long long)nbytes);
				break;
			}
			t->data = (const uint8_t *)buf + data + t->offset;
			t->nbytes = (size_t)nbytes;
		}
	}
	if (rc) {
		gguf_close(f);
		return rc;
	}
	*out = f;
	return 0;
}

int gguf_open(const char *path, gguf_file **out, owl_err *err)
{
	*out = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return owl_err_set(err, OWL_EFAIL, "cannot open '%s': %s", path, strerror(errno));
	struct stat sb;
	if (fstat(fd, &sb) != 0 || sb.st_size < 24) {
		close(fd);
		return owl_err_set(err, OWL_EINTEGRITY, "cannot read '%s': too small to be GGUF", path);
	}
	void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return owl_err_set(err, OWL_EFAIL, "cannot map '%s': %s", path, strerror(errno));
	const char *label = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	int rc = gguf_parse(map, (size_t)sb.st_size, label, out, err);
	if (rc) {
		munmap(map, (size_t)sb.st_size);
		return rc;
	}
	(*out)->map = map;
	(*out)->map_size = (size_t)sb.st_size;
	/* The header (metadata, a tokenizer's vocabulary and merges: megabytes)
	 * has been parsed into copies; its pages need not stay in the process.
	 * The mapping is read-only and file-backed, so a later read would only
	 * fault them back in. */
	size_t first = (size_t)sb.st_size;
	for (size_t i = 0; i < (*out)->ntensors; i++) {
		size_t off = (size_t)((const uint8_t *)(*out)->tensors[i].data - (const uint8_t *)map);
		if (off < first)
			first = off;
	}
	size_t page = (size_t)sysconf(_SC_PAGESIZE), drop = first / page * page;
	if (drop)
		madvise(map, drop, MADV_DONTNEED);
	return 0;
}

void gguf_close(gguf_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->nkv; i++) {
		gguf_kv *kv = &f->kvs[i];
		free(kv->key);
		if (kv->type == V_STR)
			free(kv->v.s);
		if (kv->type == V_ARR && kv->arr_type == V_STR && kv->arr && kv->n)
			free(((char **)kv->arr)[0]); /* the pool */
		free(kv->arr);
	}
	free(f->kvs);
	for (size_t i = 0; i < f->ntensors; i++)
		free(f->tensors[i].name);
	free(f->tensors);
	if (f->map)
		munmap(f->map, f->map_size);
	free(f);
}

uint32_t gguf_version(const gguf_file *f) { return f->version; }
size_t gguf_tensor_count(const gguf_file *f) { return f->ntensors; }
const gguf_tensor *gguf_tensor_at(const gguf_file *f, size_t i)
{
	return i < f->ntensors ? &f->tensors[i] : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
	for (size_t i = 0; i < f->ntensors; i++)
		if (strcmp(f->tensors[i].name, name) == 0)
			return &f->tensors[i];
	return NULL;
}

bool gguf_has_key(const gguf_file *f, const char *key) { return find_kv(f, key) != NULL; }

int gguf_get_str(const gguf_file *f, const char *key, const char **out)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv || kv->type != V_STR)
		return OWL_EFAIL;
	*out = kv->v.s;
	return 0;
}

/* Integers of any width and signedness convert when the value fits. */
static int get_int(const gguf_file *f, const char *key, int64_t lo, uint64_t hi, int64_t *out)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv)
		return OWL_EFAIL;
	switch (kv->type) {
	case V_U8: case V_U16: case V_U32: case V_U64: case V_BOOL:
		if (kv->v.u > hi)
			return OWL_EFAIL;
		*out = (int64_t)kv->v.u;
		return 0;
	case V_I8: case V_I16: case V_I32: case V_I64:
		if (kv->v.i < lo || (kv->v.i > 0 && (uint64_t)kv->v.i > hi))
			return OWL_EFAIL;
		*out = kv->v.i;
		return 0;
	default:
		return OWL_EFAIL;
	}
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out)
{
	int64_t v;
	if (get_int(f, key, 0, UINT32_MAX, &v))
		return OWL_EFAIL;
	*out = (uint32_t)v;
	return 0;
}

int gguf_get_i32(const gguf_file *f, const char *key, int32_t *out)
{
	int64_t v;
	if (get_int(f, key, INT32_MIN, INT32_MAX, &v))
		return OWL_EFAIL;
	*out = (int32_t)v;
	return 0;
}

int gguf_get_u64(const gguf_file *f, const char *key, uint64_t *out)
{
	int64_t v;
	if (get_int(f, key, 0, INT64_MAX, &v))
		return OWL_EFAIL;
	*out = (uint64_t)v;
	return 0;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv)
		return OWL_EFAIL;
	if (kv->type == V_F32 || kv->type == V_F64) {
		*out = (float)kv->v.f;
		return 0;
	}
	int64_t v;
	if (get_int(f, key, INT64_MIN, INT64_MAX, &v))
		return OWL_EFAIL;
	*out = (float)v;
	return 0;
}

int gguf_get_bool(const gguf_file *f, const char *key, bool *out)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv || kv->type != V_BOOL)
		return OWL_EFAIL;
	*out = kv->v.u != 0;
	return 0;
}

int gguf_get_str_array(const gguf_file *f, const char *key, const char *const **out, size_t *n)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv || kv->type != V_ARR || kv->arr_type != V_STR)
		return OWL_EFAIL;
	*out = (const char *const *)kv->arr;
	*n = (size_t)kv->n;
	return 0;
}

int gguf_get_f32_array(const gguf_file *f, const char *key, const float **out, size_t *n)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv || kv->type != V_ARR || kv->arr_type != V_F32)
		return OWL_EFAIL;
	*out = kv->arr;
	*n = (size_t)kv->n;
	return 0;
}

int gguf_get_i32_array(const gguf_file *f, const char *key, const int32_t **out, size_t *n)
{
	const gguf_kv *kv = find_kv(f, key);
	if (!kv || kv->type != V_ARR || (kv->arr_type != V_I32 && kv->arr_type != V_U32))
		return OWL_EFAIL;
	*out = kv->arr;
	*n = (size_t)kv->n;
	return 0;
}

/* ---- dequantisation (block layouts as in the GGUF specification) -------- */

float gguf_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
	if (exp == 0) {
		if (mant == 0) {
			bits = sign;
		} else { /* subnormal: normalise */
			exp = 127 - 15 + 1;
			while (!(mant & 0x400)) {
				mant <<= 1;
				exp--;
			}
			bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
		}
	} else if (exp == 31) {
		bits = sign | 0x7f800000u | (mant << 13);
	} else {
		bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &bits, 4);
	return f;
}

static float rd_f16(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return gguf_f16_to_f32(h);
}

static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
	if (j < 4) {
		*d = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
	}
}

int gguf_dequantize_row(gguf_type t, const void *src, float *dst, size_t n, owl_err *err)
{
	size_t bs = gguf_type_block_size(t);
	if (!bs || n % bs)
		return owl_err_set(err, OWL_EFAIL, "cannot dequantise %zu elements of %s", n,
				   gguf_type_name(t));
	const uint8_t *p = src;
	switch (t) {
	case GGUF_T_F32:
		memcpy(dst, src, n * 4);
		return 0;
	case GGUF_T_F16:
		for (size_t i = 0; i < n; i++)
			dst[i] = rd_f16(p + 2 * i);
		return 0;
	case GGUF_T_BF16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h;
			memcpy(&h, p + 2 * i, 2);
			uint32_t bits = (uint32_t)h << 16;
			memcpy(&dst[i], &bits, 4);
		}
		return 0;
	case GGUF_T_Q8_0:
		for (size_t b = 0; b < n / 32; b++, p += 34) {
			float d = rd_f16(p);
			for (int i = 0; i < 32; i++)
				dst[b * 32 + i] = d * (float)(int8_t)p[2 + i];
		}
		return 0;
	case GGUF_T_Q4_0:
		for (size_t b = 0; b < n / 32; b++, p += 18) {
			float d = rd_f16(p);
			for (int i = 0; i < 16; i++) {
				dst[b * 32 + i] = d * (float)((p[2 + i] & 0xF) - 8);
				dst[b * 32 + i + 16] = d * (float)((p[2 + i] >> 4) - 8);
			}
		}
		return 0;
	case GGUF_T_Q4_1:
		for (size_t b = 0; b < n / 32; b++, p += 20) {
			float d = rd_f16(p), m = rd_f16(p + 2);
			for (int i = 0; i < 16; i++) {
				dst[b * 32 + i] = d * (float)(p[4 + i] & 0xF) + m;
				dst[b * 32 + i + 16] = d * (float)(p[4 + i] >> 4) + m;
			}
		}
		return 0;
	case GGUF_T_Q4_K:
		for (size_t b = 0; b < n / 256; b++, p += 144) {
			float d = rd_f16(p), dmin = rd_f16(p + 2);
			const uint8_t *scales = p + 4, *q = p + 16;
			float *y = dst + b * 256;
			for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
				uint8_t sc, m;
				scale_min_k4(is, scales, &sc, &m);
				float d1 = d * sc, m1 = dmin * m;
				scale_min_k4(is + 1, scales, &sc, &m);
				float d2 = d * sc, m2 = dmin * m;
				for (int l = 0; l < 32; l++)
					*y++ = d1 * (float)(q[l] & 0xF) - m1;
				for (int l = 0; l < 32; l++)
					*y++ = d2 * (float)(q[l] >> 4) - m2;
			}
		}
		return 0;
	case GGUF_T_Q6_K:
		for (size_t b = 0; b < n / 256; b++, p += 210) {
			const uint8_t *ql = p, *qh = p + 128;
			const int8_t *sc = (const int8_t *)(p + 192);
			float d = rd_f16(p + 208);
			float *y = dst + b * 256;
			for (int h = 0; h < 256; h += 128, y += 128, ql += 64, qh += 32, sc += 8) {
				for (int l = 0; l < 32; l++) {
					int is = l / 16;
					int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
					int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
					int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
					int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
					y[l] = d * sc[is] * (float)q1;
					y[l + 32] = d * sc[is + 2] * (float)q2;
					y[l + 64] = d * sc[is + 4] * (float)q3;
					y[l + 96] = d * sc[is + 6] * (float)q4;
				}
			}
		}
		return 0;
	}
	return owl_err_set(err, OWL_EFAIL, "cannot dequantise type %s", gguf_type_name(t));
}
