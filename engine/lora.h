/* Private to engine/: the table of a layer's projection roles (shared by the
 * safetensors and GGUF weight loaders and the adapter loader), and LoRA
 * adapters loaded from PEFT's files, applied unmerged by the forward pass:
 * y = W x + scale * B (A x).
 * The public functions are declared in engine/engine.h. */
#ifndef OWL_ENGINE_LORA_H
#define OWL_ENGINE_LORA_H

#include "internal.h"

/* The seven projections of a layer, in the order of the table below. */
typedef enum engine_role {
	ENGINE_ROLE_Q = 0,
	ENGINE_ROLE_K,
	ENGINE_ROLE_V,
	ENGINE_ROLE_O,
	ENGINE_ROLE_GATE,
	ENGINE_ROLE_UP,
	ENGINE_ROLE_DOWN,
	ENGINE_ROLE_COUNT
} engine_role;

/* How llama.cpp's converter reorders a matrix's output rows in GGUF: q and k
 * rows are permuted within each head so that RoPE rotates adjacent pairs
 * (2i, 2i+1) instead of (i, i + head_dim/2). */
typedef enum engine_row_perm {
	ENGINE_PERM_NONE = 0,
	ENGINE_PERM_HEADS,    /* by n_heads (q) */
	ENGINE_PERM_KV_HEADS, /* by n_kv_heads (k) */
} engine_row_perm;

typedef struct engine_role_info {
	const char *hf;       /* "self_attn.q_proj": model.layers.N.<hf>.weight */
	const char *gguf;     /* "attn_q": blk.N.<gguf>.weight */
	const char *peft;     /* "q_proj": the name in PEFT's target_modules */
	engine_row_perm perm; /* GGUF's row order */
	int split_cols;       /* tensor parallel: split by input columns (o, down), else by output rows */
} engine_role_info;

extern const engine_role_info engine_roles[ENGINE_ROLE_COUNT];

/* The [rows (outputs), cols (inputs)] of a role's weight for this model. */
void engine_role_shape(const engine_model_info *in, engine_role r, int *rows, int *cols);
/* The role's weight view in a layer. */
wmat *engine_layer_weight(layer *L, engine_role r);
/* Row i of the GGUF (permuted) layout holds row engine_row_perm_src(...) of
 * the Hugging Face layout; rows is the matrix's row count. */
int engine_row_perm_src(engine_row_perm p, const engine_model_info *in, int rows, int i);

/* One role's adapter in one layer: f32, owned; NULL when not targeted. */
typedef struct engine_lora {
	float *a; /* [rank][in]: the input side, the same in every layout */
	float *b; /* [out][rank]: rows in the base's layout (GGUF q/k rows permuted) */
} engine_lora;

struct engine_adapter {
	char *name;  /* the folder it came from, or what the caller named it */
	int rank;
	float scale; /* lora_alpha / rank, or lora_alpha / sqrt(rank) with use_rslora */
	int targeted[ENGINE_ROLE_COUNT]; /* roles with A and B in at least one layer */
	/* What it was fitted to: a model with the same shapes and layout takes it. */
	int n_layers, dim, ffn_dim, q_dim, kv_dim, gguf_layout;
	engine_lora (*lora)[ENGINE_ROLE_COUNT]; /* [n_layers][role] */
	int borrowed; /* a view of trainable weights (engine/backward.c): A and B are not its own */
	/* For each local rank of dev_model whose backend's memory the host
	 * cannot address: a copy of every A and B in that memory (dev[r]
	 * NULL: the rank reads lora). */
	const engine_model *dev_model;
	engine_lora (*dev[16])[ENGINE_ROLE_COUNT];
	kernels_buffer *dev_buf[16];
};

/* A copy of ad's A and B in the memory of each local rank of m whose backend
 * is a device (at load; for a view of trainable weights, a snapshot of them
 * now), freed with ad. */
int engine_adapter_upload(const engine_model *m, engine_adapter *ad, owl_err *err);

#endif
