/* The fixture's tensors: names and shapes as Hugging Face's Llama, Mistral and
 * Qwen2 checkpoints have them, values drawn from a seeded PRNG, and the
 * safetensors writer (single file or shards with an index).
 *
 * Every tensor has its own PRNG stream seeded from (seed, name), so a tensor
 * can be produced on its own, in any order, by any writer: the safetensors and
 * the GGUF writers each regenerate what they need, one tensor at a time, and
 * large presets never hold the whole model in memory. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture.h"

/* ---- half-precision conversions ----------------------------------------- */

uint16_t fx_f32_to_f16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	uint32_t sign = (x >> 16) & 0x8000u;
	uint32_t mant = x & 0x7fffffu;
	int exp = (int)((x >> 23) & 0xff);
	if (exp == 0xff)
		return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
	int e = exp - 127 + 15;
	if (e >= 0x1f)
		return (uint16_t)(sign | 0x7c00u);
	if (e <= 0) { /* subnormal half (or zero) */
		if (e < -10)
			return (uint16_t)sign;
		mant |= 0x800000u;
		int shift = 14 - e;
		uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
		if (rem > mid || (rem == mid && (half & 1)))
			half++;
		return (uint16_t)(sign | half);
	}
	uint32_t half = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (half & 1)))
		half++; /* a carry into the exponent is the right answer (up to inf) */
	return (uint16_t)(sign | half);
}

float fx_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, x;
	if (exp == 0) {
		float f = (float)mant * (1.0f / 16777216.0f);
		memcpy(&x, &f, 4);
		x |= sign;
	} else if (exp == 31) {
		x = sign | 0x7f800000u | (mant << 13);
	} else {
		x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
	}
	float f;
	memcpy(&f, &x, 4);
	return f;
}

uint16_t fx_f32_to_bf16(float f)
{
	uint32_t x;
	memcpy(&x, &f, 4);
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x40);
	x += 0x7fffu + ((x >> 16) & 1);
	return (uint16_t)(x >> 16);
}

float fx_bf16_to_f32(uint16_t h)
{
	uint32_t x = (uint32_t)h << 16;
	float f;
	memcpy(&f, &x, 4);
	return f;
}

/* ---- PRNG: splitmix64 and Box-Muller -------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1], never 0 so that log() is finite. */
static double uniform01(uint64_t *s)
{
	return ((double)(splitmix64(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

static uint64_t name_seed(uint64_t seed, const char *name)
{
	uint64_t h = 1469598103934665603ULL;
	for (const char *p = name; *p; p++) {
		h ^= (unsigned char)*p;
		h *= 1099511628211ULL;
	}
	uint64_t s = seed ^ h;
	return splitmix64(&s);
}

/* ---- the tensor list ------------------------------------------------------ */

int64_t fx_tensor_numel(const fx_tensor *t)
{
	return t->rows * (t->cols ? t->cols : 1);
}

static double linear_std(const fx_opts *o, int64_t in)
{
	double s = 1.0 / sqrt((double)in);
	if (s > 0.1)
		s = 0.1;
	if (s < 0.02)
		s = 0.02;
	return s * o->std_scale;
}

static void add(fx_tensor *ts, int *n, const char *name, int64_t rows, int64_t cols, int kind, int layer,
                const char *role, double std)
{
	fx_tensor *t = &ts[(*n)++];
	memset(t, 0, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->rows = rows;
	t->cols = cols;
	t->kind = kind;
	t->layer = layer;
	t->role = role;
	t->std = std;
}

int fx_tensors_list(const fx_opts *o, fx_tensor **out, int *n_out)
{
	int cap = 4 + o->layers * 12;
	fx_tensor *ts = owl_xcalloc((size_t)cap, sizeof(fx_tensor));
	int n = 0;
	int64_t h = o->hidden, hd = o->head_dim, q = (int64_t)o->heads * hd, kv = (int64_t)o->kv_heads * hd;
	int64_t ff = o->intermediate;
	char name[96];
	add(ts, &n, "model.embed_tokens.weight", o->vocab, h, FX_T_EMBED, -1, "embed", linear_std(o, h));
	for (int l = 0; l < o->layers; l++) {
#define NAME(fmt) (snprintf(name, sizeof(name), "model.layers.%d." fmt, l), name)
		add(ts, &n, NAME("input_layernorm.weight"), h, 0, FX_T_NORM, l, "attn_norm", 0.05);
		add(ts, &n, NAME("self_attn.q_proj.weight"), q, h, FX_T_LINEAR, l, "q", linear_std(o, h));
		if (o->qkv_bias)
			add(ts, &n, NAME("self_attn.q_proj.bias"), q, 0, FX_T_BIAS, l, "q_bias", 0.05);
		add(ts, &n, NAME("self_attn.k_proj.weight"), kv, h, FX_T_LINEAR, l, "k", linear_std(o, h));
		if (o->qkv_bias)
			add(ts, &n, NAME("self_attn.k_proj.bias"), kv, 0, FX_T_BIAS, l, "k_bias", 0.05);
		add(ts, &n, NAME("self_attn.v_proj.weight"), kv, h, FX_T_LINEAR, l, "v", linear_std(o, h));
		if (o->qkv_bias)
			add(ts, &n, NAME("self_attn.v_proj.bias"), kv, 0, FX_T_BIAS, l, "v_bias", 0.05);
		add(ts, &n, NAME("self_attn.o_proj.weight"), h, q, FX_T_LINEAR, l, "o", linear_std(o, q));
		add(ts, &n, NAME("post_attention_layernorm.weight"), h, 0, FX_T_NORM, l, "ffn_norm", 0.05);
		add(ts, &n, NAME("mlp.gate_proj.weight"), ff, h, FX_T_LINEAR, l, "gate", linear_std(o, h));
		add(ts, &n, NAME("mlp.up_proj.weight"), ff, h, FX_T_LINEAR, l, "up", linear_std(o, h));
		add(ts, &n, NAME("mlp.down_proj.weight"), h, ff, FX_T_LINEAR, l, "down", linear_std(o, ff));
#undef NAME
	}
	add(ts, &n, "model.norm.weight", h, 0, FX_T_NORM, -1, "output_norm", 0.05);
	if (!o->tied)
		add(ts, &n, "lm_head.weight", o->vocab, h, FX_T_LINEAR, -1, "output", linear_std(o, h));
	*out = ts;
	*n_out = n;
	return OWL_OK;
}

void fx_tensor_fill(const fx_opts *o, const fx_tensor *t, float *out)
{
	uint64_t s = name_seed(o->seed, t->name);
	int64_t n = fx_tensor_numel(t);
	double base = t->kind == FX_T_NORM ? 1.0 : 0.0;
	for (int64_t i = 0; i < n; i += 2) {
		double u1 = uniform01(&s), u2 = uniform01(&s);
		double r = sqrt(-2.0 * log(u1));
		out[i] = (float)(base + t->std * r * cos(6.283185307179586 * u2));
		if (i + 1 < n)
			out[i + 1] = (float)(base + t->std * r * sin(6.283185307179586 * u2));
	}
	if (o->dtype == FX_F16)
		for (int64_t i = 0; i < n; i++)
			out[i] = fx_f16_to_f32(fx_f32_to_f16(out[i]));
	else if (o->dtype == FX_BF16)
		for (int64_t i = 0; i < n; i++)
			out[i] = fx_bf16_to_f32(fx_f32_to_bf16(out[i]));
}

/* ---- safetensors ------------------------------------------------------------ */

static const char *st_dtype_name(int dtype)
{
	return dtype == FX_F16 ? "F16" : dtype == FX_BF16 ? "BF16" : "F32";
}

static int st_dtype_size(int dtype)
{
	return dtype == FX_F32 ? 4 : 2;
}

/* Writes tensors [first, last) to path as one safetensors file. */
static int st_write_file(const fx_opts *o, const fx_tensor *ts, int first, int last, const char *path,
                         owl_err *err)
{
	int rc = OWL_OK;
	FILE *f = NULL;
	float *vals = NULL;
	void *raw = NULL;
	char *hdr = NULL;
	int esz = st_dtype_size(o->dtype);

	json_t *root = json_object();
	json_t *meta = json_object();
	json_object_set_new(meta, "format", json_string("pt"));
	for (int i = 0; i < o->n_st_meta; i++)
		json_object_set_new(meta, o->st_meta_key[i], json_string(o->st_meta_val[i]));
	json_object_set_new(root, "__metadata__", meta);
	uint64_t off = 0;
	int64_t max_numel = 0;
	for (int i = first; i < last; i++) {
		const fx_tensor *t = &ts[i];
		uint64_t bytes = (uint64_t)fx_tensor_numel(t) * (uint64_t)esz;
		json_t *shape = t->cols ? json_pack("[I, I]", (json_int_t)t->rows, (json_int_t)t->cols)
		                        : json_pack("[I]", (json_int_t)t->rows);
		json_object_set_new(root, t->name,
		                    json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype_name(o->dtype), "shape", shape,
		                              "data_offsets", (json_int_t)off, (json_int_t)(off + bytes)));
		off += bytes;
		if (fx_tensor_numel(t) > max_numel)
			max_numel = fx_tensor_numel(t);
	}
	hdr = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	if (!hdr) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot encode the safetensors header of '%s'", path);
		goto cleanup;
	}
	/* The header is padded with spaces so that the data starts 8-byte aligned. */
	size_t hlen = strlen(hdr);
	size_t padded = (8 + hlen + 7) / 8 * 8 - 8;
	f = fopen(path, "wb");
	if (!f) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", path, strerror(errno));
		goto cleanup;
	}
	uint8_t len8[8];
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
	fwrite(len8, 1, 8, f);
	fwrite(hdr, 1, hlen, f);
	for (size_t i = hlen; i < padded; i++)
		fputc(' ', f);

	vals = malloc((size_t)max_numel * sizeof(float));
	raw = malloc((size_t)max_numel * (size_t)esz);
	if (!vals || !raw) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': out of memory", path);
		goto cleanup;
	}
	for (int i = first; i < last; i++) {
		const fx_tensor *t = &ts[i];
		int64_t n = fx_tensor_numel(t);
		fx_tensor_fill(o, t, vals);
		const void *src = vals;
		if (o->dtype == FX_F16) {
			uint16_t *h = raw;
			for (int64_t j = 0; j < n; j++)
				h[j] = fx_f32_to_f16(vals[j]);
			src = raw;
		} else if (o->dtype == FX_BF16) {
			uint16_t *h = raw;
			for (int64_t j = 0; j < n; j++)
				h[j] = fx_f32_to_bf16(vals[j]);
			src = raw;
		}
		if (fwrite(src, (size_t)esz, (size_t)n, f) != (size_t)n) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", path, strerror(errno));
			goto cleanup;
		}
	}
	if (fclose(f) != 0) {
		f = NULL;
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", path, strerror(errno));
		goto cleanup;
	}
	f = NULL;
cleanup:
	if (f)
		fclose(f);
	free(vals);
	free(raw);
	free(hdr);
	return rc;
}

int fx_safetensors_write(const fx_opts *o, const fx_tensor *ts, int n, owl_err *err)
{
	int rc = OWL_OK;
	char *path = NULL;
	int nsh = o->shards;
	if (nsh <= 1) {
		path = owl_path_join(o->out_dir, "model.safetensors");
		rc = st_write_file(o, ts, 0, n, path, err);
		free(path);
		return rc;
	}
	if (nsh > n)
		return owl_err_set(err, OWL_EUSAGE, "cannot write %d shards: the model has only %d tensors", nsh, n);
	int esz = st_dtype_size(o->dtype);
	uint64_t total = 0;
	for (int i = 0; i < n; i++)
		total += (uint64_t)fx_tensor_numel(&ts[i]) * (uint64_t)esz;

	/* Contiguous runs of tensors, balanced by bytes, at least one per shard. */
	int *shard_of = owl_xcalloc((size_t)n, sizeof(int));
	uint64_t start = 0;
	int prev = 0;
	for (int i = 0; i < n; i++) {
		int s = (int)(start * (uint64_t)nsh / total);
		if (s > prev + 1)
			s = prev + 1;
		if (s < prev)
			s = prev;
		if (i > 0 && n - i <= nsh - 1 - prev)
			s = prev + 1; /* as many tensors left as empty shards: each gets one */
		if (s > nsh - 1)
			s = nsh - 1;
		shard_of[i] = s;
		prev = s;
		start += (uint64_t)fx_tensor_numel(&ts[i]) * (uint64_t)esz;
	}

	json_t *index = json_object();
	json_t *map = json_object();
	json_object_set_new(index, "metadata", json_pack("{s:I}", "total_size", (json_int_t)total));
	json_object_set_new(index, "weight_map", map);
	for (int s = 0, i = 0; s < nsh && !rc; s++) {
		int first = i;
		while (i < n && shard_of[i] == s)
			i++;
		char fname[64];
		snprintf(fname, sizeof(fname), "model-%05d-of-%05d.safetensors", s + 1, nsh);
		for (int j = first; j < i; j++)
			json_object_set_new(map, ts[j].name, json_string(fname));
		path = owl_path_join(o->out_dir, fname);
		rc = st_write_file(o, ts, first, i, path, err);
		free(path);
	}
	if (!rc) {
		char *text = json_dumps(index, JSON_INDENT(2));
		path = owl_path_join(o->out_dir, "model.safetensors.index.json");
		rc = owl_write_file_atomic(path, text, strlen(text), err);
		free(path);
		free(text);
	}
	json_decref(index);
	free(shard_of);
	return rc;
}
