/* GGUF v3 writer for the fixture: the same weights as the safetensors files,
 * named and laid out the way llama.cpp's convert_hf_to_gguf.py writes a Llama:
 * q/k rows permuted so that RoPE rotates adjacent pairs, 1-D tensors kept in
 * F32, 2-D tensors in the requested type (F16 where a row does not fill whole
 * quantisation blocks), data aligned to 32 bytes. Quantisation follows the
 * reference block formats of ggml (Q8_0, Q4_0, Q4_1).
 *
 * The file is written in three passes over the tensor list: sizes, header,
 * data, regenerating each tensor when its data is due, so that big presets
 * never hold more than one tensor in memory. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fixture.h"

#define GGUF_ALIGN 32

/* GGUF metadata value types */
enum { GV_U32 = 4, GV_I32 = 5, GV_F32 = 6, GV_BOOL = 7, GV_STR = 8, GV_ARR = 9 };

int fx_gguf_type_parse(const char *s)
{
	static const struct {
		const char *name;
		int type;
	} T[] = {{"F32", FX_GGML_F32},   {"F16", FX_GGML_F16},   {"BF16", FX_GGML_BF16},
	         {"Q8_0", FX_GGML_Q8_0}, {"Q4_0", FX_GGML_Q4_0}, {"Q4_1", FX_GGML_Q4_1}};
	for (size_t i = 0; i < sizeof(T) / sizeof(T[0]); i++)
		if (strcasecmp(T[i].name, s) == 0)
			return T[i].type;
	return -1;
}

/* llama.cpp's general.file_type for a whole-model type. */
static uint32_t file_type(int t)
{
	switch (t) {
	case FX_GGML_F16: return 1;
	case FX_GGML_Q4_0: return 2;
	case FX_GGML_Q4_1: return 3;
	case FX_GGML_Q8_0: return 7;
	case FX_GGML_BF16: return 32;
	default: return 0;
	}
}

static int block_size(int t)
{
	return (t == FX_GGML_Q8_0 || t == FX_GGML_Q4_0 || t == FX_GGML_Q4_1) ? 32 : 1;
}

/* Bytes for one row of n elements of type t. */
static uint64_t row_bytes(int t, int64_t n)
{
	switch (t) {
	case FX_GGML_F16:
	case FX_GGML_BF16: return (uint64_t)n * 2;
	case FX_GGML_Q8_0: return (uint64_t)n / 32 * 34;
	case FX_GGML_Q4_0: return (uint64_t)n / 32 * 18;
	case FX_GGML_Q4_1: return (uint64_t)n / 32 * 20;
	default: return (uint64_t)n * 4;
	}
}

/* ---- quantisation (reference formats of ggml-quants.c) --------------------- */

static void put_f16(uint8_t *p, float f)
{
	uint16_t h = fx_f32_to_f16(f);
	p[0] = (uint8_t)h;
	p[1] = (uint8_t)(h >> 8);
}

/* Q8_0: d = max|x| / 127, q = round(x / d). */
static void quant_q8_0(const float *x, int64_t n, uint8_t *out)
{
	for (int64_t b = 0; b < n / 32; b++, x += 32, out += 34) {
		float amax = 0;
		for (int j = 0; j < 32; j++)
			if (fabsf(x[j]) > amax)
				amax = fabsf(x[j]);
		float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
		put_f16(out, d);
		for (int j = 0; j < 32; j++)
			out[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
	}
}

/* Q4_0: d = (value of largest magnitude) / -8, q = min(15, trunc(x / d + 8.5)),
 * low nibbles hold elements 0..15, high nibbles 16..31. */
static void quant_q4_0(const float *x, int64_t n, uint8_t *out)
{
	for (int64_t b = 0; b < n / 32; b++, x += 32, out += 18) {
		float amax = 0, max = 0;
		for (int j = 0; j < 32; j++)
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
		put_f16(out, d);
		for (int j = 0; j < 16; j++) {
			int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
			if (q0 > 15)
				q0 = 15;
			if (q1 > 15)
				q1 = 15;
			out[2 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

/* Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5)). */
static void quant_q4_1(const float *x, int64_t n, uint8_t *out)
{
	for (int64_t b = 0; b < n / 32; b++, x += 32, out += 20) {
		float min = FLT_MAX, max = -FLT_MAX;
		for (int j = 0; j < 32; j++) {
			if (x[j] < min)
				min = x[j];
			if (x[j] > max)
				max = x[j];
		}
		float d = (max - min) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
		put_f16(out, d);
		put_f16(out + 2, min);
		for (int j = 0; j < 16; j++) {
			int q0 = (int8_t)((x[j] - min) * id + 0.5f), q1 = (int8_t)((x[j + 16] - min) * id + 0.5f);
			if (q0 > 15)
				q0 = 15;
			if (q1 > 15)
				q1 = 15;
			out[4 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

static void encode(int t, const float *x, int64_t n, uint8_t *out)
{
	switch (t) {
	case FX_GGML_F16:
		for (int64_t i = 0; i < n; i++)
			put_f16(out + 2 * i, x[i]);
		break;
	case FX_GGML_BF16:
		for (int64_t i = 0; i < n; i++) {
			uint16_t h = fx_f32_to_bf16(x[i]);
			out[2 * i] = (uint8_t)h;
			out[2 * i + 1] = (uint8_t)(h >> 8);
		}
		break;
	case FX_GGML_Q8_0: quant_q8_0(x, n, out); break;
	case FX_GGML_Q4_0: quant_q4_0(x, n, out); break;
	case FX_GGML_Q4_1: quant_q4_1(x, n, out); break;
	default: memcpy(out, x, (size_t)n * 4); break;
	}
}

/* ---- metadata encoding ------------------------------------------------------ */

static void w_u32(owl_buf *b, uint32_t v)
{
	owl_buf_append(b, &v, 4);
}

static void w_u64(owl_buf *b, uint64_t v)
{
	owl_buf_append(b, &v, 8);
}

static void w_str(owl_buf *b, const char *s)
{
	w_u64(b, strlen(s));
	owl_buf_append(b, s, strlen(s));
}

static void kv_u32(owl_buf *b, int *n, const char *key, uint32_t v)
{
	w_str(b, key);
	w_u32(b, GV_U32);
	w_u32(b, v);
	(*n)++;
}

static void kv_f32(owl_buf *b, int *n, const char *key, float v)
{
	w_str(b, key);
	w_u32(b, GV_F32);
	owl_buf_append(b, &v, 4);
	(*n)++;
}

static void kv_bool(owl_buf *b, int *n, const char *key, int v)
{
	uint8_t c = v ? 1 : 0;
	w_str(b, key);
	w_u32(b, GV_BOOL);
	owl_buf_append(b, &c, 1);
	(*n)++;
}

static void kv_str(owl_buf *b, int *n, const char *key, const char *v)
{
	w_str(b, key);
	w_u32(b, GV_STR);
	w_str(b, v);
	(*n)++;
}

static void kv_str_array(owl_buf *b, int *n, const char *key, char *const *v, int count)
{
	w_str(b, key);
	w_u32(b, GV_ARR);
	w_u32(b, GV_STR);
	w_u64(b, (uint64_t)count);
	for (int i = 0; i < count; i++)
		w_str(b, v[i]);
	(*n)++;
}

/* ---- tensors ------------------------------------------------------------------ */

typedef struct gt {
	char name[64];
	const fx_tensor *src; /* NULL for rope_freqs */
	int type;
	int64_t ne0, ne1;     /* ne1 == 1 for 1-D */
	uint64_t offset, bytes;
} gt;

static void gguf_name(const fx_tensor *t, char *out, size_t n)
{
	static const struct {
		const char *role, *gguf;
	} M[] = {{"attn_norm", "attn_norm.weight"}, {"q", "attn_q.weight"},         {"k", "attn_k.weight"},
	         {"v", "attn_v.weight"},            {"o", "attn_output.weight"},    {"ffn_norm", "ffn_norm.weight"},
	         {"gate", "ffn_gate.weight"},       {"up", "ffn_up.weight"},        {"down", "ffn_down.weight"},
	         {"q_bias", "attn_q.bias"},         {"k_bias", "attn_k.bias"},      {"v_bias", "attn_v.bias"}};
	if (t->layer < 0) {
		snprintf(out, n, "%s",
		         strcmp(t->role, "embed") == 0         ? "token_embd.weight"
		         : strcmp(t->role, "output_norm") == 0 ? "output_norm.weight"
		                                               : "output.weight");
		return;
	}
	for (size_t i = 0; i < sizeof(M) / sizeof(M[0]); i++)
		if (strcmp(M[i].role, t->role) == 0) {
			snprintf(out, n, "blk.%d.%s", t->layer, M[i].gguf);
			return;
		}
	snprintf(out, n, "blk.%d.unknown", t->layer);
}

/* llama.cpp's converter: within each head, rows (0..hd/2-1, hd/2..hd-1) are
 * interleaved so that pairs (i, i + hd/2) become (2i, 2i + 1). */
static void permute_rows(const float *src, float *dst, int n_head, int64_t rows, int64_t cols)
{
	int64_t hd = rows / n_head, half = hd / 2;
	for (int h = 0; h < n_head; h++)
		for (int64_t j = 0; j < half; j++)
			for (int s = 0; s < 2; s++)
				memcpy(dst + (h * hd + 2 * j + s) * cols, src + (h * hd + s * half + j) * cols,
				       (size_t)cols * sizeof(float));
}

/* rope_freqs for rope_scaling llama3, as convert_hf_to_gguf.py computes them. */
static void rope_freqs(const fx_opts *o, float *out)
{
	int dim = o->head_dim;
	double low_wl = o->rope_orig_ctx / o->rope_low, high_wl = o->rope_orig_ctx / o->rope_high;
	for (int i = 0; i < dim / 2; i++) {
		double freq = 1.0 / pow(o->rope_theta, (double)(2 * i) / dim);
		double wl = 2 * M_PI / freq;
		if (wl < high_wl)
			out[i] = 1.0f;
		else if (wl > low_wl)
			out[i] = (float)o->rope_factor;
		else {
			double smooth = (o->rope_orig_ctx / wl - o->rope_low) / (o->rope_high - o->rope_low);
			out[i] = (float)(1.0 / ((1 - smooth) / o->rope_factor + smooth));
		}
	}
}

int fx_gguf_write(const fx_opts *o, const fx_tok *tok, const char *chat_template, const fx_tensor *ts, int n,
                  const char *path, owl_err *err)
{
	int rc = OWL_OK;
	FILE *f = NULL;
	float *vals = NULL, *perm = NULL;
	uint8_t *raw = NULL;
	gt *g = NULL;
	owl_buf kv, info;
	owl_buf_init(&kv, (size_t)1 << 30);
	owl_buf_init(&info, (size_t)1 << 26);
	int n_kv = 0;

	if (strcmp(o->arch, "qwen2") == 0)
		return owl_err_set(err, OWL_EUSAGE,
		                   "cannot write '%s': GGUF is written for architecture llama only, not qwen2", path);

	/* Tensor table and offsets. */
	g = owl_xcalloc((size_t)n + 1, sizeof(gt));
	int ng = 0;
	int64_t max_numel = o->head_dim;
	for (int i = 0; i < n; i++) {
		gt *x = &g[ng++];
		x->src = &ts[i];
		gguf_name(&ts[i], x->name, sizeof(x->name));
		x->ne0 = ts[i].cols ? ts[i].cols : ts[i].rows;
		x->ne1 = ts[i].cols ? ts[i].rows : 1;
		x->type = FX_GGML_F32;
		if (ts[i].cols) {
			x->type = o->gguf_type;
			if (x->ne0 % block_size(x->type))
				x->type = FX_GGML_F16;
		}
		if (fx_tensor_numel(&ts[i]) > max_numel)
			max_numel = fx_tensor_numel(&ts[i]);
		if (i == 0 && o->rope_llama3) {
			gt *r = &g[ng++];
			snprintf(r->name, sizeof(r->name), "rope_freqs.weight");
			r->ne0 = o->head_dim / 2;
			r->ne1 = 1;
			r->type = FX_GGML_F32;
		}
	}
	uint64_t off = 0;
	for (int i = 0; i < ng; i++) {
		g[i].offset = off;
		g[i].bytes = row_bytes(g[i].type, g[i].ne0) * (uint64_t)g[i].ne1;
		off = (off + g[i].bytes + GGUF_ALIGN - 1) / GGUF_ALIGN * GGUF_ALIGN;
	}

	/* Metadata. */
	kv_str(&kv, &n_kv, "general.architecture", "llama");
	kv_str(&kv, &n_kv, "general.name", o->model_name);
	kv_u32(&kv, &n_kv, "general.file_type", file_type(o->gguf_type));
	kv_u32(&kv, &n_kv, "general.alignment", GGUF_ALIGN);
	if (o->gguf_license)
		kv_str(&kv, &n_kv, "general.license", o->gguf_license);
	kv_u32(&kv, &n_kv, "llama.vocab_size", (uint32_t)tok->n);
	kv_u32(&kv, &n_kv, "llama.context_length", (uint32_t)o->ctx);
	kv_u32(&kv, &n_kv, "llama.embedding_length", (uint32_t)o->hidden);
	kv_u32(&kv, &n_kv, "llama.block_count", (uint32_t)o->layers);
	kv_u32(&kv, &n_kv, "llama.feed_forward_length", (uint32_t)o->intermediate);
	kv_u32(&kv, &n_kv, "llama.rope.dimension_count", (uint32_t)o->head_dim);
	kv_u32(&kv, &n_kv, "llama.attention.head_count", (uint32_t)o->heads);
	kv_u32(&kv, &n_kv, "llama.attention.head_count_kv", (uint32_t)o->kv_heads);
	if (o->head_dim * o->heads != o->hidden) {
		kv_u32(&kv, &n_kv, "llama.attention.key_length", (uint32_t)o->head_dim);
		kv_u32(&kv, &n_kv, "llama.attention.value_length", (uint32_t)o->head_dim);
	}
	kv_f32(&kv, &n_kv, "llama.attention.layer_norm_rms_epsilon", (float)o->rms_eps);
	kv_f32(&kv, &n_kv, "llama.rope.freq_base", (float)o->rope_theta);
	kv_str(&kv, &n_kv, "tokenizer.ggml.model", tok->spm ? "llama" : "gpt2");
	kv_str(&kv, &n_kv, "tokenizer.ggml.pre", tok->spm ? "default" : "llama-bpe");
	kv_str_array(&kv, &n_kv, "tokenizer.ggml.tokens", tok->tokens, tok->n);
	if (tok->spm) {
		w_str(&kv, "tokenizer.ggml.scores");
		w_u32(&kv, GV_ARR);
		w_u32(&kv, GV_F32);
		w_u64(&kv, (uint64_t)tok->n);
		owl_buf_append(&kv, tok->scores, (size_t)tok->n * 4);
		n_kv++;
	}
	w_str(&kv, "tokenizer.ggml.token_type");
	w_u32(&kv, GV_ARR);
	w_u32(&kv, GV_I32);
	w_u64(&kv, (uint64_t)tok->n);
	for (int i = 0; i < tok->n; i++)
		w_u32(&kv, (uint32_t)tok->types[i]);
	n_kv++;
	if (!tok->spm)
		kv_str_array(&kv, &n_kv, "tokenizer.ggml.merges", tok->merges, tok->n_merges);
	kv_u32(&kv, &n_kv, "tokenizer.ggml.bos_token_id", (uint32_t)tok->bos_id);
	kv_u32(&kv, &n_kv, "tokenizer.ggml.eos_token_id", (uint32_t)tok->eos_id);
	if (tok->unk_id >= 0)
		kv_u32(&kv, &n_kv, "tokenizer.ggml.unknown_token_id", (uint32_t)tok->unk_id);
	if (tok->pad_id >= 0)
		kv_u32(&kv, &n_kv, "tokenizer.ggml.padding_token_id", (uint32_t)tok->pad_id);
	kv_bool(&kv, &n_kv, "tokenizer.ggml.add_bos_token", tok->add_bos);
	kv_bool(&kv, &n_kv, "tokenizer.ggml.add_eos_token", 0);
	if (chat_template)
		kv_str(&kv, &n_kv, "tokenizer.chat_template", chat_template);

	for (int i = 0; i < ng; i++) {
		w_str(&info, g[i].name);
		uint32_t nd = g[i].ne1 > 1 || (g[i].src && g[i].src->cols) ? 2 : 1;
		w_u32(&info, nd);
		w_u64(&info, (uint64_t)g[i].ne0);
		if (nd == 2)
			w_u64(&info, (uint64_t)g[i].ne1);
		w_u32(&info, (uint32_t)g[i].type);
		w_u64(&info, g[i].offset);
	}

	f = fopen(path, "wb");
	if (!f) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot create '%s': %s", path, strerror(errno));
		goto cleanup;
	}
	fwrite("GGUF", 1, 4, f);
	uint32_t version = 3;
	uint64_t counts[2] = {(uint64_t)ng, (uint64_t)n_kv};
	fwrite(&version, 4, 1, f);
	fwrite(counts, 8, 2, f);
	fwrite(kv.data, 1, kv.len, f);
	fwrite(info.data, 1, info.len, f);
	uint64_t pos = 24 + kv.len + info.len;
	for (; pos % GGUF_ALIGN; pos++)
		fputc(0, f);

	vals = malloc((size_t)max_numel * sizeof(float));
	perm = malloc((size_t)max_numel * sizeof(float));
	raw = malloc((size_t)max_numel * 4 + 64);
	if (!vals || !perm || !raw) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': out of memory", path);
		goto cleanup;
	}
	uint64_t data_pos = 0;
	for (int i = 0; i < ng; i++) {
		for (; data_pos < g[i].offset; data_pos++)
			fputc(0, f);
		const float *x = vals;
		if (!g[i].src) {
			rope_freqs(o, vals);
		} else {
			const fx_tensor *t = g[i].src;
			fx_tensor_fill(o, t, vals);
			int is_q = !strcmp(t->role, "q") || !strcmp(t->role, "q_bias");
			int is_k = !strcmp(t->role, "k") || !strcmp(t->role, "k_bias");
			if (is_q || is_k) {
				permute_rows(vals, perm, is_q ? o->heads : o->kv_heads, t->rows, t->cols ? t->cols : 1);
				x = perm;
			}
		}
		encode(g[i].type, x, g[i].ne0 * g[i].ne1, raw);
		if (fwrite(raw, 1, g[i].bytes, f) != g[i].bytes) {
			rc = owl_err_set(err, OWL_EFAIL, "cannot write '%s': %s", path, strerror(errno));
			goto cleanup;
		}
		data_pos += g[i].bytes;
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
	free(perm);
	free(raw);
	free(g);
	owl_buf_release(&kv);
	owl_buf_release(&info);
	return rc;
}
