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

/* The CUDA backend's entry points through that handle (engine/gpu.c). Each
 * fails with the reason when the object, the driver or the device is
 * missing, or when the object was built for another kernel interface. */
typedef struct kernels_backend kernels_backend;
typedef struct kernels_comm kernels_comm;
/* A backend instance on CUDA device `device` (kernels_backend_free frees it). */
int engine_cuda_backend_new(int device, kernels_backend **out, owl_err *err);
/* An NCCL comm over n ranks of this process, rank i on CUDA backend bes[i],
 * each on its own device (size = local = n). */
int engine_cuda_nccl_comm_new(kernels_backend *const *bes, int n, kernels_comm **out,
			      owl_err *err);
/* Multi-process jobs: rank 0 makes the 128-byte unique id, the launcher's
 * rendezvous shares it, and every rank joins with its own backend (local =
 * 1, first = rank). */
int engine_cuda_nccl_unique_id(unsigned char id[128], owl_err *err);
int engine_cuda_nccl_comm_init_rank(const unsigned char id[128], int nranks, int rank,
				    kernels_backend *be, kernels_comm **out, owl_err *err);
/* Frees a comm made by either of the above; accepts NULL. */
void engine_cuda_nccl_comm_free(kernels_comm *c);

/* ---- models (engine/model.c) and the forward pass (engine/forward.c) --- */

typedef struct engine_model engine_model;     /* weights + config, read-only */
typedef struct engine_session engine_session; /* one sequence's KV cache */

typedef struct engine_dist engine_dist; /* engine/dist.h */

/* Where a model runs. AUTO: the CUDA backend when this machine has an
 * NVIDIA driver, a device and the backend object, else the CPU (said once,
 * in the log). CUDA: a GPU or an error saying why there is none. */
typedef enum engine_device {
	ENGINE_DEVICE_AUTO = 0,
	ENGINE_DEVICE_CPU,
	ENGINE_DEVICE_CUDA,
} engine_device;

/* Parses "auto", "cpu", "cuda" or "cuda:N" (N: the first CUDA device; local
 * ranks take the devices after it). */
int engine_device_parse(const char *s, engine_device *dev, int *first_gpu, owl_err *err);

/* What a model's backends hold in device memory, for owl bench: the
 * process's ranks' buffers (weights, KV caches, batch buffers), their ops'
 * workspace and pinned host memory summed; total and free of each distinct
 * device they run on summed. known 0: a backend that keeps host memory (the
 * CPU) reports none. */
typedef struct engine_device_mem {
	int known, devices;
	uint64_t buffer_bytes, work_bytes, pinned_bytes;
	uint64_t device_total, device_free;
} engine_device_mem;

typedef struct engine_model_opts {
	int tp;      /* tensor-parallel ranks, over all processes; 0 or 1 = none */
	int threads; /* CPU threads of this process; 0 = all cores */
	int kv_type; /* engine_kv_type of the sessions' caches: 0 = f32, 1 = f16 */
	engine_device device; /* ENGINE_DEVICE_AUTO (0) unless set */
	int first_gpu;        /* CUDA: local rank r of this process runs on device
			       * first_gpu + local_rank * tp_local + r, local_rank
			       * being the process's place on its machine */
	/* The launch this process is part of (engine/dist.h), or NULL: one
	 * process. Over W processes (W divides tp) this process loads, prepares
	 * and runs only its tp/W ranks' shards, global ranks [rank * tp/W,
	 * (rank + 1) * tp/W), and its ranks' partial sums meet the others'
	 * through the dist's comm; every process holds the embedding and the
	 * output layer and computes the same logits. It must outlive the model. */
	engine_dist *dist;
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
	int tp_local, tp_first; /* this process's ranks: [tp_first, tp_first + tp_local) */
	int processes;          /* the processes the ranks are spread over (1: this one) */
	char backend[16];       /* the kernel backend the ranks run on: "cpu", "cuda" */
} engine_model_info;

/* path: a checkpoint folder (config.json + model.safetensors or a sharded
 * index), a .gguf file, or a folder holding one .gguf. Weights are mapped,
 * never copied. A configuration the engine cannot run is refused naming the
 * field and its value. */
int engine_model_open(const char *path, const engine_model_opts *o, engine_model **out,
		      owl_err *err);
void engine_model_close(engine_model *m); /* accepts NULL */
const engine_model_info *engine_model_get_info(const engine_model *m);
int engine_model_device_memory(const engine_model *m, engine_device_mem *out, owl_err *err);
/* The GGUF file a model came from (for its tokenizer), or NULL. */
const struct gguf_file *engine_model_gguf(const engine_model *m);
/* The folder holding the checkpoint's other files (tokenizer), or NULL. */
const char *engine_model_dir(const engine_model *m);

/* ---- figures for benchmarks (engine/bench.c) ---- */
/* Bytes of weights one decoding step reads: every layer's matrices and
 * norms, the output matrix, one embedding row. */
uint64_t engine_model_decode_bytes(const engine_model *m);
/* Bytes of keys and values one token of context holds across the layers
 * (kv_type an engine_kv_type): what attention reads per cached token. */
uint64_t engine_model_kv_token_bytes(const engine_model *m, int kv_type);
/* The matrix products of a forward pass over n tokens run alone on the
 * model's own prepared weights and backend (every layer's projections on
 * n rows, the output matrix on one), reps times after one warm-up:
 * *seconds per pass and the *flops of one. tp 1 in one process only. */
int engine_model_gemm_bench(engine_model *m, int n, int reps, double *seconds, double *flops,
			    owl_err *err);

/* A KV cache for n_ctx tokens (memory sized from n_ctx). */
int engine_session_new(engine_model *m, int n_ctx, engine_session **out, owl_err *err);
void engine_session_free(engine_session *s);
int engine_session_pos(const engine_session *s);
int engine_session_ctx(const engine_session *s);
void engine_session_truncate(engine_session *s, int pos);
uint64_t engine_session_kv_bytes(const engine_session *s);
/* The session's pool (engine_kv_stats, declared below). */
struct engine_kv_stats;
void engine_session_get_stats(const engine_session *s, struct engine_kv_stats *st);
/* Appends n tokens and runs them through the model. logits receives [n, vocab]
 * when all_logits, else [1, vocab] for the last token. Overflowing the
 * context is an error (OWL_EUSAGE), never a crash. */
int engine_forward(engine_session *s, const int32_t *tokens, int n, float *logits, int all_logits,
		   owl_err *err);

/* ---- the paged KV pool and batches (engine/kv.c, engine/forward.c) ---------
 * A pool holds the keys and values of many sequences in blocks of 32
 * tokens; engine_decode runs one forward pass over a batch of tokens of any
 * of its sequences, each at its own position: a prompt, one decoding step
 * of many requests, or both at once. engine_session above is one sequence
 * on a pool of its own. One thread at a time drives a pool. */

typedef enum engine_kv_type {
	ENGINE_KV_F32 = 0,
	ENGINE_KV_F16, /* half the memory; keys and values rounded to f16 */
} engine_kv_type;

typedef struct engine_kv_opts {
	int n_tokens;       /* capacity of the pool, all sequences together; 0 = the model's context */
	int max_seq_tokens; /* longest sequence; 0 = the capacity or the model's context, the smaller */
	engine_kv_type type;
} engine_kv_opts;

typedef struct engine_kv_stats {
	int block_tokens;
	int blocks_total, blocks_used, blocks_cached; /* cached: held by no sequence, kept for reuse */
	uint64_t bytes_reserved; /* address space of the pool */
	uint64_t bytes_used;     /* blocks held by sequences */
	uint64_t bytes_touched;  /* blocks ever used: the memory the pool really occupies */
	/* decoding steps replayed from CUDA graphs, and the graphs recorded
	 * (0 on a backend without graphs, or with OWL_CUDA_GRAPHS=0) */
	uint64_t graph_launches, graph_recordings;
} engine_kv_stats;

typedef struct engine_kv engine_kv;

/* Memory is reserved for the whole pool but occupied only as blocks are used. */
int engine_kv_new(engine_model *m, const engine_kv_opts *o, engine_kv **out, owl_err *err);
void engine_kv_free(engine_kv *kv); /* accepts NULL */
void engine_kv_get_stats(const engine_kv *kv, engine_kv_stats *st);
/* A new empty sequence. salt names what else decides its keys and values
 * (its adapter): prefixes are shared only between sequences of one salt. */
int engine_kv_seq_new(engine_kv *kv, uint64_t salt, int *seq, owl_err *err);
/* A new sequence sharing the first n_tokens of src (their blocks, not copies). */
int engine_kv_seq_fork(engine_kv *kv, int src, int n_tokens, int *seq, owl_err *err);
void engine_kv_seq_free(engine_kv *kv, int seq); /* its blocks go back, or stay cached */
int engine_kv_seq_len(const engine_kv *kv, int seq);
int engine_kv_seq_max(const engine_kv *kv); /* the longest sequence the pool takes */
void engine_kv_seq_truncate(engine_kv *kv, int seq, int len);
/* For an empty sequence about to run tokens: attaches the cached blocks
 * that already hold a prefix of them (prefix caching) and returns how many
 * tokens they cover, always fewer than n; the caller runs the rest. */
int engine_kv_seq_reuse_prefix(engine_kv *kv, int seq, const int32_t *tokens, int n);
/* Makes room for n more tokens of seq now, so that a caller batching many
 * requests can refuse the one that does not fit: OWL_EFAIL when the pool
 * is full, OWL_EUSAGE past the longest sequence. engine_decode reserves
 * what it needs itself. */
int engine_kv_reserve(engine_kv *kv, int seq, int n, owl_err *err);

/* Tokens of one forward pass. Each sequence's tokens form one run, in
 * order, continuing where its cache ends (pos, when given, must say so). */
typedef struct engine_batch {
	int n;
	const int32_t *tokens;
	const int32_t *seq;
	const int32_t *pos;      /* NULL: each sequence continues where its cache ends */
	const uint8_t *want;     /* rows that want logits; NULL: the last row of each run */
	/* Sampling where the logits are computed: NULL, or one entry per row
	 * that wants logits (in batch order). A row whose entry has device
	 * set is sampled by the model's backend into sampled[row] and its
	 * logits stay there; the other rows' logits come to the host as
	 * without it. The model's backend must have the sample op
	 * (engine_kv_can_sample). */
	const struct engine_row_sample *sample;
	int32_t *sampled;
} engine_batch;

/* One row's sampling on the backend, as the kernels' sample op takes it
 * (kernels_sample_row): temperature <= 0 greedy, else top_k, top_p and the
 * uniform draw u in [0, 1) (engine_sampler_device_row). */
typedef struct engine_row_sample {
	int device; /* 0: this row's logits go to the host */
	float temperature, top_p;
	int top_k;
	float u;
} engine_row_sample;

/* Runs the batch; logits receives [rows wanting logits, vocab], in batch
 * order (rows sampled on the backend are left as they were). All or
 * nothing: on failure no sequence has changed. */
int engine_decode(engine_kv *kv, const engine_batch *b, float *logits, owl_err *err);
/* 1 when sampling on the model's backend saves copying logits to the host:
 * the backend has the sample op and its memory is a device's. */
int engine_kv_can_sample(const engine_kv *kv);
/* engine_forward of the session's next tokens (the last one's logits) with
 * that row sampled as rs says: rs NULL or rs->device clear, the logits come
 * to the host; else the backend samples and *sampled is the token. */
int engine_forward_sample(engine_session *s, const int32_t *tokens, int n,
			  const engine_row_sample *rs, int32_t *sampled, float *logits, owl_err *err);
int engine_session_can_sample(const engine_session *s);
/* How many rows of b want logits. */
int engine_batch_logit_rows(const engine_batch *b);

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
/* Whether the model expects BOS in front of a text. */
int engine_tokenizer_adds_bos(const engine_tokenizer *t);
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

/* ---- LoRA adapters, applied unmerged (engine/lora.c) ------------------------ */

typedef struct engine_adapter engine_adapter;

/* Loads a PEFT LoRA adapter folder (adapter_config.json and
 * adapter_model.safetensors) for model m: A and B widened to f32, B's q/k
 * rows permuted when m is a GGUF. Honours r, lora_alpha, use_rslora and
 * target_modules (a list, "all-linear" or a regular expression) among
 * q/k/v/o/gate/up/down_proj. Refused, naming what and why: DoRA,
 * modules_to_save, a bias other than "none", rank_pattern/alpha_pattern,
 * layers_to_transform, tensors for other modules, and any tensor whose shape
 * does not fit m (both shapes are named). On a model whose ranks run on a
 * device the adapter is also copied into each rank's memory, so it must be
 * freed before m is closed. */
int engine_adapter_load(const engine_model *m, const char *dir, engine_adapter **out, owl_err *err);
void engine_adapter_free(engine_adapter *a); /* accepts NULL */
/* 0 when a fits m (shapes and GGUF/safetensors layout), else OWL_EUSAGE with what differs. */
int engine_adapter_check(const engine_adapter *a, const engine_model *m, owl_err *err);
/* Every forward pass of the session applies a (NULL: none) from now on. The
 * KV cache was computed without it, so the session starts over at position 0.
 * The adapter must outlive its use by the session. */
int engine_session_set_adapter(engine_session *s, const engine_adapter *a, owl_err *err);
/* The adapter of an empty sequence of a pool (NULL: none): its projections
 * apply it, tokens of sequences with different adapters share one forward
 * pass, and prefixes are shared only between sequences of one adapter. At
 * most rank 512. The adapter must outlive the sequence's use of it. */
int engine_kv_seq_set_adapter(engine_kv *kv, int seq, const engine_adapter *a, owl_err *err);

/* ---- perplexity (engine/perplexity.c) ------------------------------------------- */

typedef struct engine_ppl_opts {
	int n_ctx;      /* tokens per chunk (>= 8) */
	int max_chunks; /* 0 = every whole chunk of the text */
	const engine_adapter *adapter; /* applied unmerged, or NULL */
} engine_ppl_opts;

typedef struct engine_ppl_result {
	double ppl, ppl_error; /* the estimate and its standard error */
	size_t tokens_scored, chunks;
	double seconds;
} engine_ppl_result;

/* Called after each chunk with the running estimate. */
typedef void (*engine_ppl_progress)(void *ctx, size_t chunk, size_t nchunks, double ppl);

/* The perplexity of ids as llama-perplexity measures it: chunks of n_ctx
 * tokens, each started with BOS where the model uses one, the second half
 * of each scored. */
int engine_perplexity(engine_model *m, const engine_tokenizer *tok, const int32_t *ids, size_t n,
		      const engine_ppl_opts *o, engine_ppl_progress progress, void *progress_ctx,
		      engine_ppl_result *res, owl_err *err);

/* ---- sampling, chat templates, generation (engine/generate.c) ---------------- */

typedef struct engine_sampler_opts {
	float temperature;       /* 0 = greedy */
	int top_k;               /* 0 = off */
	float top_p;             /* 1 = off */
	float min_p;             /* 0 = off */
	float repeat_penalty;    /* 1 = off */
	float frequency_penalty; /* 0 = off */
	float presence_penalty;  /* 0 = off */
	int penalty_last_n;      /* window of recent tokens penalised (0 = 64) */
	uint64_t seed;           /* the same seed gives the same text */
} engine_sampler_opts;

typedef struct engine_sampler engine_sampler;
engine_sampler *engine_sampler_new(const engine_sampler_opts *o, int vocab);
void engine_sampler_free(engine_sampler *s);
/* Picks the next token; logits are modified (penalties). */
int engine_sample(engine_sampler *s, float *logits, const int32_t *history, size_t nhist);
/* The next token's sampling as the backend's sample op does it, drawing u
 * from the sampler's sequence as engine_sample would: returns 1 with
 * rs->device set, or 0 with rs->device clear (nothing drawn) when the
 * options need the host (penalties, min_p). */
int engine_sampler_device_row(engine_sampler *s, engine_row_sample *rs);

typedef enum engine_chat_family {
	ENGINE_CHAT_UNKNOWN = 0,
	ENGINE_CHAT_CHATML,
	ENGINE_CHAT_LLAMA3,
	ENGINE_CHAT_LLAMA2, /* and Mistral's [INST] */
	ENGINE_CHAT_ZEPHYR,
	ENGINE_CHAT_GEMMA,
} engine_chat_family;

typedef struct engine_chat_msg {
	const char *role; /* system, user, assistant */
	const char *content;
} engine_chat_msg;

/* The family a template belongs to, recognised from its text. */
engine_chat_family engine_chat_detect(const char *tmpl);
const char *engine_chat_family_name(engine_chat_family f);
/* The conversation as the family's template renders it (unknown: ChatML);
 * add_gen appends the assistant's opening. malloc'd, the caller frees. */
char *engine_chat_render(engine_chat_family f, const engine_chat_msg *msgs, size_t n, int add_gen,
			 const char *bos, const char *eos);

typedef struct engine_gen_opts {
	int max_tokens;
	engine_sampler_opts sampling;
	const char *const *stop; /* stop strings */
	int nstop;
	int vocab;               /* the model's vocabulary (logits per token) */
	/* Several processes generating together (engine/dist.h): each sampled
	 * token is handed to agree, which replaces it with rank 0's, before it
	 * is used, so that every process goes on with the same token even
	 * where their logits differ in the last bits (other CPU kernels). A
	 * failure ends the generation (stop reason "error"). NULL: one process. */
	int (*agree)(void *ctx, int32_t *token);
	void *agree_ctx;
} engine_gen_opts;

typedef struct engine_gen_stats {
	int prompt_tokens, gen_tokens;
	double prompt_s, gen_s;
	char stop_reason[16];    /* eos, stop, max_tokens, context_full */
	int gen_cached;          /* generated ids now in the KV cache */
	int32_t *tokens;         /* those ids, malloc'd: the caller frees */
} engine_gen_stats;

typedef void (*engine_emit_fn)(void *ctx, const char *text, size_t len);

/* One request's generation state (sampler, penalty history, streaming
 * detokenizer, stop strings), stepped by its caller: the CLI steps one, a
 * server many, each on the logits its sequence got from engine_decode. It
 * holds no model and no cache, and states are independent of each other:
 * different threads may step different states at once. */
typedef struct engine_gen engine_gen;
/* o->stop is copied; emit receives text as it becomes final. */
int engine_gen_new(const engine_tokenizer *tok, const engine_gen_opts *o, const int32_t *prompt,
		   size_t nprompt, engine_emit_fn emit, void *emit_ctx, engine_gen **out,
		   owl_err *err);
void engine_gen_free(engine_gen *g); /* accepts NULL */
/* Samples the next token from the logits of the sequence's last position
 * (they are modified: penalties). Returns 1 with *next the token to run
 * through the model before the next step, or 0 when generation has ended
 * (end of generation token, stop string, max_tokens). */
int engine_gen_step(engine_gen *g, float *logits, int32_t *next);
/* The same step with the token sampled elsewhere (on the backend, after
 * engine_gen_device_row): returns as engine_gen_step. */
int engine_gen_step_token(engine_gen *g, int32_t id, int32_t *next);
/* The next step's sampling on the backend (engine_sampler_device_row): 0
 * with rs->device clear when generation has ended or the request's
 * options need the host's sampler. */
int engine_gen_device_row(engine_gen *g, engine_row_sample *rs);
/* Ends generation from outside (context_full, cancelled ...). */
void engine_gen_stop(engine_gen *g, const char *reason);
int engine_gen_done(const engine_gen *g);
const char *engine_gen_stop_reason(const engine_gen *g); /* eos, stop, max_tokens, ... */
int engine_gen_count(const engine_gen *g);               /* tokens generated */
const int32_t *engine_gen_tokens(const engine_gen *g);   /* those tokens */
/* Runs the prompt from the session's current position (so a caller that
 * keeps a conversation's prefix in the cache passes only what is new), then
 * samples until an end-of-generation token, a stop string, max_tokens or a
 * full context; text is emitted as it is ready. */
int engine_generate(engine_session *sess, const engine_tokenizer *tok, const int32_t *prompt,
		    size_t nprompt, const engine_gen_opts *o, engine_emit_fn emit, void *emit_ctx,
		    engine_gen_stats *st, owl_err *err);

/* ---- LoRA training: gradients through the frozen model (engine/backward.c) --
 * Trainable LoRA weights for a model, in f32, with their gradients, and a
 * trainer that runs the forward pass with a tape and the backward pass
 * through the same kernel layer. The base weights stay frozen in the form
 * they are stored (f32, f16, bf16, GGUF-quantised: QLoRA). The optimiser,
 * datasets and the training loop live in train/. */

typedef struct engine_lora_weights engine_lora_weights;

typedef struct engine_lora_opts {
	int rank;         /* r */
	float alpha;      /* lora_alpha */
	int rslora;       /* scale alpha/sqrt(r) instead of alpha/r */
	unsigned targets; /* bit (1u << role) per q,k,v,o,gate,up,down_proj, in that order */
	float dropout;    /* applied to the adapter input while training */
	uint64_t seed;    /* A is Kaiming-uniform from this seed; B is zero */
} engine_lora_opts;

/* The PEFT module names in role order: q_proj k_proj v_proj o_proj
 * gate_proj up_proj down_proj. */
extern const char *const engine_lora_module_names[7];

int engine_lora_weights_new(const engine_model *m, const engine_lora_opts *o,
			    engine_lora_weights **out, owl_err *err);
void engine_lora_weights_free(engine_lora_weights *w); /* accepts NULL */
const engine_lora_opts *engine_lora_weights_opts(const engine_lora_weights *w);
float engine_lora_weights_scale(const engine_lora_weights *w);

/* One trainable tensor. name is PEFT's key without the adapter name
 * ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
 * rows x cols is PEFT's shape (A: [r, in], B: [out, r]). value and grad are
 * the tensor's own storage, in the engine's layout: elementwise updates
 * (AdamW) may use them directly; use engine_lora_tensor_get/set to move
 * values in PEFT's layout (files, checkpoints). */
typedef struct engine_lora_tensor {
	char name[128];
	int rows, cols;
	float *value;
	float *grad;
} engine_lora_tensor;

size_t engine_lora_weights_count(const engine_lora_weights *w);
void engine_lora_weights_tensor(engine_lora_weights *w, size_t i, engine_lora_tensor *out);
/* Copies tensor i out in PEFT's layout (rows x cols floats) / in from it. */
void engine_lora_tensor_get(const engine_lora_weights *w, size_t i, float *dst);
void engine_lora_tensor_set(engine_lora_weights *w, size_t i, const float *src);
void engine_lora_weights_zero_grad(engine_lora_weights *w);
/* The weights as an adapter the forward pass applies (serving, eval while
 * training); it reads w's storage (host memory), so it sees later updates;
 * free it before w. A model on a device needs a copy there
 * (engine_adapter_upload, engine/lora.h). */
int engine_lora_weights_adapter(engine_lora_weights *w, engine_adapter **out, owl_err *err);

/* Tokens of one training micro-batch: packed samples, each its own segment;
 * attention never crosses segments. */
typedef struct engine_train_batch {
	int n;
	const int32_t *tokens;
	const int32_t *targets; /* the token expected after tokens[i]; -1 = not scored */
	const int32_t *seg;     /* sample of each token; a sample's tokens are contiguous */
	const int32_t *pos;     /* position within its sample (RoPE) */
	uint64_t dropout_seed;  /* dropout mask of this micro-batch */
} engine_train_batch;

typedef struct engine_trainer engine_trainer;

/* Workspace for micro-batches of up to max_tokens tokens, allocated once
 * from the model's backend. On a backend with memory of its own (CUDA) also
 * a mirror of w's values and gradients and room for a micro-batch's layout
 * there: each step uploads them and copies the gradients back into w, whose
 * host storage stays the master (the optimiser updates it). A backend
 * without the backward ops, or without matmul_backward for one of the
 * model's weight types, is refused (OWL_EUSAGE). checkpoint_activations:
 * keep only each layer's input and recompute the rest during the backward
 * pass (the same gradients, bit for bit). Training runs on one rank: a model opened with
 * tp > 1 is refused (OWL_EUSAGE), as are weights made for another model. */
int engine_trainer_new(engine_model *m, engine_lora_weights *w, int max_tokens,
		       int checkpoint_activations, engine_trainer **out, owl_err *err);
void engine_trainer_free(engine_trainer *t); /* accepts NULL */
/* Bytes of the trainer's backend memory: the activations' tape, the
 * backward pass's gradients of activations and the ops' scratch (the
 * "activations" of a memory budget). */
size_t engine_trainer_workspace_bytes(const engine_trainer *t);
/* Forward and backward: *loss_sum is the sum of the cross-entropy over the
 * scored tokens, *count how many were scored; the gradient of loss_sum
 * times grad_scale is ADDED to w's grads (the loop passes 1 / tokens of
 * the whole accumulated step). Dropout, when w's opts ask for it, masks
 * each adapter's input with a mask drawn from b->dropout_seed alone (the
 * same seed, the same mask). A batch of more than max_tokens rows, token or
 * target ids outside the vocabulary, positions outside the model's context
 * or a sample whose rows are not contiguous is refused (OWL_EUSAGE). */
int engine_train_step(engine_trainer *t, const engine_train_batch *b, float grad_scale,
		      double *loss_sum, int64_t *count, owl_err *err);
/* The forward pass alone, without dropout (eval loss). */
int engine_train_eval(engine_trainer *t, const engine_train_batch *b, double *loss_sum,
		      int64_t *count, owl_err *err);

#endif
