/* The checks a model's configuration and tokenizer must pass before anything
 * uses them. The engine calls them when it loads a model and the pull calls
 * them before it registers one, so that an absurd config.json (hidden_size 0,
 * 10^6 layers, a negative rope_theta) is refused when it arrives, with the
 * same words `owl run` would use, instead of being stored and failing later.
 *
 * Errors are OWL_EINTEGRITY (a malformed checkpoint, as for a malformed
 * safetensors header) and name the field and its value; they do not name the
 * file, which the caller adds ("config.json: ...", "cannot accept 'x': ..."). */
#ifndef OWL_MODELCFG_H
#define OWL_MODELCFG_H

#include <jansson.h>

#include "common/common.h"

struct gguf_file;

/* Bounds: far above every published model, far below what would overflow
 * the int sizes and the 64-bit products the engine computes from them. */
#define OWL_CFG_MAX_HIDDEN (1 << 16)
#define OWL_CFG_MAX_FFN (1 << 20)
#define OWL_CFG_MAX_LAYERS 1024
#define OWL_CFG_MAX_HEADS 1024
#define OWL_CFG_MAX_HEAD_DIM 1024
#define OWL_CFG_MAX_VOCAB (1 << 22) /* the tokenizer's id bound too */
#define OWL_CFG_MAX_CONTEXT (1 << 24)
#define OWL_CFG_MAX_PARAMS (1ull << 41) /* about 2.2 trillion weights */
#define OWL_CFG_MAX_ROPE_THETA 1e12
#define OWL_CFG_MIN_NORM_EPS 1e-12
#define OWL_CFG_MAX_NORM_EPS 1.0

typedef struct owl_model_config {
	char arch[16];       /* llama, mistral, qwen2; "" for an architecture the engine does
				not run (then only the fields present were checked) */
	int vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, ctx_train;
	double rope_theta, norm_eps;
} owl_model_config;

/* Reads and checks a Hugging Face config.json object. Every size the engine
 * reads must be a whole number within its bound when present, and present
 * when the architecture is one the engine runs (defaults as transformers:
 * num_key_value_heads = heads, head_dim = hidden / heads, context 2048,
 * rms_norm_eps 1e-6, rope_theta 10000); rope_theta and rms_norm_eps must be
 * finite and positive; llama3 rope_scaling numbers must be usable. */
int owl_model_config_from_json(const json_t *config, owl_model_config *out, owl_err *err);

/* The same for a GGUF's llama.* metadata (vocabulary from token_embd.weight).
 * A GGUF of another architecture gives arch "" and is not checked further. */
int owl_model_config_from_gguf(const struct gguf_file *g, owl_model_config *out, owl_err *err);

/* The checks both of the above end with: bounds, heads divisible by kv
 * heads, an even head_dim, products within OWL_CFG_MAX_PARAMS. Field names
 * are config.json's unless gguf is set (then llama.* keys). */
int owl_model_config_check(const owl_model_config *c, int gguf, owl_err *err);

/* Checks tokenizer.json text: a JSON object (a truncated file names the line
 * and column where it stops), a "model" object with a type, a vocabulary of
 * non-negative ids up to OWL_CFG_MAX_VOCAB, well-formed merges and added
 * tokens. Tokenizer types the engine does not run pass when well formed. */
int owl_tokenizer_json_check(const char *text, size_t len, owl_err *err);

#endif
