/* owl-fixture: writes a small random Llama-family checkpoint in the Hugging
 * Face layout (and optionally GGUF), deterministic from a seed.
 *
 * The pieces: main.c (flags, config/card files), corpus.c (the built-in
 * training text), tokenizer.c (trains a byte-level or SentencePiece-style BPE
 * and writes tokenizer.json), weights.c (tensor list, seeded random values,
 * safetensors writer), gguf_write.c (GGUF v3 writer with llama.cpp's q/k
 * permutation and block quantisation). */
#ifndef OWL_FIXTURE_H
#define OWL_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

enum { FX_F32, FX_F16, FX_BF16 };
/* GGUF tensor types we write (values are ggml's type ids). */
enum { FX_GGML_F32 = 0, FX_GGML_F16 = 1, FX_GGML_Q4_0 = 2, FX_GGML_Q4_1 = 3, FX_GGML_Q8_0 = 8,
       FX_GGML_BF16 = 30 };

#define FX_MAX_ST_META 16

typedef struct fx_opts {
	const char *out_dir;
	uint64_t seed;
	const char *arch;          /* llama | mistral | qwen2 */
	int hidden, layers, heads, kv_heads, intermediate, vocab, ctx, head_dim;
	int tied;
	int rope_llama3;           /* rope_scaling of type llama3 */
	double rope_factor, rope_low, rope_high;
	int rope_orig_ctx;
	double rope_theta, rms_eps;
	int sliding_window;        /* 0: none */
	int qkv_bias;              /* qwen2 */
	int dtype;                 /* FX_F32 ... */
	int shards;
	int n_st_meta;
	const char *st_meta_key[FX_MAX_ST_META], *st_meta_val[FX_MAX_ST_META];
	int spm;                   /* SentencePiece-style tokenizer instead of byte-level */
	const char *chat_template; /* chatml | llama3 | llama2 | zephyr | gemma */
	const char *license, *license_name, *license_link, *base_model, *license_file;
	const char *model_name;
	int gguf_type;             /* -1: no GGUF */
	int gguf_only;
	const char *gguf_license;
	double std_scale;          /* multiplies the default weight std */
} fx_opts;

/* A trained tokenizer: the vocabulary in id order and the merges in rank order. */
typedef struct fx_tok {
	int spm;
	int n;                 /* vocabulary size, specials and padding included */
	char **tokens;         /* token strings as tokenizer.json spells them */
	int *types;            /* GGUF token types: 1 normal, 2 unknown, 3 control, 6 byte */
	float *scores;         /* SentencePiece scores (GGUF "llama" model) */
	int n_merges;
	char **merges;         /* "left right" */
	int n_padding;         /* unreachable filler tokens added to reach the target size */
	int first_special;     /* ids >= this (and, for spm, 0..2) are added tokens */
	int bos_id, eos_id, unk_id, pad_id;
	int eos_ids[4], n_eos; /* end-of-generation ids (generation_config) */
	int add_bos;
	const char *bos, *eos;
} fx_tok;

/* corpus.c */
extern const char fx_corpus[];

/* tokenizer.c */
int fx_tok_train(fx_tok *tok, const fx_opts *o, int target, owl_err *err);
int fx_tok_write_json(const fx_tok *tok, const fx_opts *o, const char *path, owl_err *err);
void fx_tok_free(fx_tok *tok);
const char *fx_tok_pre_regex(void);

/* weights.c */
typedef struct fx_tensor {
	char name[96];
	int64_t rows, cols;    /* cols == 0 for a 1-D tensor of length rows */
	int kind;              /* FX_T_* */
	int layer;             /* -1 for global tensors */
	const char *role;      /* q, k, v, o, gate, up, down, attn_norm, ffn_norm, q_bias, ... */
	double std;
} fx_tensor;
enum { FX_T_LINEAR, FX_T_EMBED, FX_T_NORM, FX_T_BIAS };

/* Lists the model's tensors in Hugging Face order; caller frees *out. */
int fx_tensors_list(const fx_opts *o, fx_tensor **out, int *n);
/* Fills out (rows*max(cols,1) floats) with the tensor's values, already
 * rounded to the safetensors dtype so that every format carries the same
 * numbers. Deterministic from (seed, name). */
void fx_tensor_fill(const fx_opts *o, const fx_tensor *t, float *out);
int64_t fx_tensor_numel(const fx_tensor *t);
int fx_safetensors_write(const fx_opts *o, const fx_tensor *ts, int n, owl_err *err);

/* f16 / bf16 conversions (round to nearest even). */
uint16_t fx_f32_to_f16(float f);
float fx_f16_to_f32(uint16_t h);
uint16_t fx_f32_to_bf16(float f);
float fx_bf16_to_f32(uint16_t h);

/* gguf_write.c */
int fx_gguf_write(const fx_opts *o, const fx_tok *tok, const char *chat_template,
                  const fx_tensor *ts, int n, const char *path, owl_err *err);
int fx_gguf_type_parse(const char *s);

/* main.c */
const char *fx_chat_template_text(const char *name);

#endif
