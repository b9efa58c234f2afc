/* engine: model loading, tokenizer, forward pass, sampling, generation, and
 * the kernel layer (engine/kernels/) shared with training. Nothing here knows
 * about SQLite, the registry or training loops. */
#ifndef OWL_ENGINE_H
#define OWL_ENGINE_H

#include "common/common.h"

/* What the GPU side of this machine offers, for `owl status`. */
typedef struct engine_gpu_info {
	int backend_loaded;  /* libowl_cuda.so could be loaded */
	int device_count;    /* CUDA devices visible */
	int nccl_version;    /* e.g. 22805, 0 when NCCL is unusable */
	char detail[256];    /* device name, or why there is none */
} engine_gpu_info;

/* Never fails: a machine without a GPU, driver or CUDA libraries answers with
 * device_count 0 and the reason in detail. */
void engine_gpu_probe(engine_gpu_info *info);

/* Opens the CUDA backend object (libowl_cuda.so), looked up in $OWL_CUDA_LIB,
 * beside the running executable, then on the library path. Returns the dlopen
 * handle or NULL with the reason in err. The handle lives until exit. */
void *engine_cuda_open(owl_err *err);

/* ---- models (engine/model.c) and the forward pass (engine/forward.c) --- */

typedef struct engine_model engine_model;     /* weights + config, read-only */
typedef struct engine_session engine_session; /* one sequence's KV cache */

typedef struct engine_model_opts {
	int tp;      /* tensor-parallel ranks; 0 or 1 = none */
	int threads; /* CPU threads; 0 = all cores */
} engine_model_opts;

typedef struct engine_model_info {
	char arch[32];          /* "llama", "mistral", "qwen2" */
	int vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, ctx_train;
	int tied_embeddings, qkv_bias, sliding_window;
	float rope_theta, norm_eps;
	char weight_dtype[16];  /* f32, f16, bf16, q8_0, q4_0, q4_1, mixed */
	char source[16];        /* "safetensors" or "gguf" */
	uint64_t n_params, weight_bytes;
	int tp, threads;
} engine_model_info;

/* path: a checkpoint folder (config.json + model.safetensors or a sharded
 * index), a .gguf file, or a folder holding one .gguf. Weights are mapped,
 * never copied. A configuration the engine cannot run is refused naming the
 * field and its value. */
int engine_model_open(const char *path, const engine_model_opts *o, engine_model **out,
		      owl_err *err);
void engine_model_close(engine_model *m); /* accepts NULL */
const engine_model_info *engine_model_get_info(const engine_model *m);
/* The GGUF file a model came from (for its tokenizer), or NULL. */
const struct gguf_file *engine_model_gguf(const engine_model *m);
/* The folder holding the checkpoint's other files (tokenizer), or NULL. */
const char *engine_model_dir(const engine_model *m);

/* A KV cache for n_ctx tokens (memory sized from n_ctx). */
int engine_session_new(engine_model *m, int n_ctx, engine_session **out, owl_err *err);
void engine_session_free(engine_session *s);
int engine_session_pos(const engine_session *s);
int engine_session_ctx(const engine_session *s);
void engine_session_truncate(engine_session *s, int pos);
uint64_t engine_session_kv_bytes(const engine_session *s);
/* Appends n tokens and runs them through the model. logits receives [n, vocab]
 * when all_logits, else [1, vocab] for the last token. Overflowing the
 * context is an error (OWL_EUSAGE), never a crash. */
int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err);

/* ---- tokenizers (engine/tokenizer.c) -------------------------------------- */

typedef struct engine_tokenizer engine_tokenizer;

/* From a folder's tokenizer.json (+ tokenizer_config.json), a GGUF's
 * tokenizer.ggml.* keys, or whichever the model came with. */
int engine_tokenizer_load_dir(const char *dir, engine_tokenizer **out, owl_err *err);
int engine_tokenizer_load_gguf(const struct gguf_file *g, engine_tokenizer **out, owl_err *err);
int engine_tokenizer_for_model(const engine_model *m, engine_tokenizer **out, owl_err *err);
void engine_tokenizer_free(engine_tokenizer *t);
/* Parses tokenizer.json text into t. */
int engine_tokenizer_parse_json(engine_tokenizer *t, const char *text, owl_err *err);
/* A tokenizer from tokenizer.json text alone (the fuzz target's entry). */
int engine_tokenizer_fuzz_load(const char *json_text, engine_tokenizer **out, owl_err *err);

/* add_bos: prepend BOS when the model wants one; parse_special: match added
 * and special tokens in the text. *ids_out is malloc'd; the caller frees. */
int engine_tokenize(const engine_tokenizer *t, const char *text, size_t len, int add_bos,
		    int parse_special, int32_t **ids_out, size_t *n_out, owl_err *err);
/* The text of ids; malloc'd, the caller frees. */
char *engine_detokenize(const engine_tokenizer *t, const int32_t *ids, size_t n);
void engine_token_bytes(const engine_tokenizer *t, int id, owl_buf *out);
int engine_token_count(const engine_tokenizer *t);
int engine_token_bos(const engine_tokenizer *t);
int engine_token_eos(const engine_tokenizer *t);
const char *engine_token_text(const engine_tokenizer *t, int id);
/* End of generation: EOS or an end-of-turn token (<|im_end|>, <|eot_id|> ...). */
int engine_token_is_eog(const engine_tokenizer *t, int id);
const char *engine_tokenizer_chat_template(const engine_tokenizer *t); /* or NULL */

/* Streaming decode: bytes of a multi-byte character split across tokens are
 * held back until the character is complete. */
typedef struct engine_detok {
	const engine_tokenizer *t;
	char pending[64];
	size_t npending;
	int first;
} engine_detok;
void engine_detok_init(engine_detok *d, const engine_tokenizer *t);
/* Writes the text ready after token id into out (NUL-terminated); returns its length. */
size_t engine_detok_feed(engine_detok *d, int id, char *out, size_t outlen);

#endif
