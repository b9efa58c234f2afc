/* Private to engine/: the model's weights as typed views into mapped files,
 * and each rank's prepared copies. */
#ifndef OWL_ENGINE_INTERNAL_H
#define OWL_ENGINE_INTERNAL_H

#include "engine.h"
#include "common/gguf.h"
#include "common/safetensors.h"
#include "engine/kernels/knames.h"

/* A vector (norm weight, bias) converted to f32 at load: small, owned. */
typedef struct layer {
	float *attn_norm, *ffn_norm;
	float *bq, *bk, *bv; /* Qwen2 biases, or NULL */
	wmat wq, wk, wv, wo, w_gate, w_up, w_down;
} layer;

struct engine_model {
	engine_model_info info;
	kernels_backend *be;       /* the first local rank's backend: the ops outside the
				    * ranks (output layer) */
	/* One backend instance per tensor-parallel rank this process drives:
	 * every array indexed by rank below is indexed by the local rank r, the
	 * global rank being info.tp_first + r (all of them in one process). */
	kernels_backend *ranks[16];
	kernels_comm comm;         /* how the tp ranks all-reduce */
	kernels_comm *comm_owned;  /* the NCCL comm behind comm, freed at close, or NULL */
	void *shared_comm;         /* ranks sharing one device: comm's state, freed at close */
	layer *layers;       /* as loaded: views into the files */
	layer *rank_layers[16]; /* each rank's shards prepared by its backend, and its
				 * own copies of the norms and of its biases (only its
				 * heads' part), in backend memory */
	float *rank_inv_freq[16];
	float *rank_out_norm;   /* the first local rank's */
	wmat tok_embd, output;
	float *out_norm;
	float *inv_freq;     /* head_dim/2 RoPE frequencies, llama3 scaling applied */
	int rope_adjacent;   /* GGUF: (2i, 2i+1) pairs; safetensors: (i, i+d/2) */
	int kv_type;         /* engine_kv_type of engine_session's caches */
	/* what keeps the views alive */
	st_file **st;
	size_t nst;
	gguf_file *gguf;
	char *dir;
	/* memory of the prepared weights, and the backend each came from */
	kernels_buffer **prepared;
	kernels_backend **prepared_by;
	int nprepared;
};

/* Tensor-parallel rank r's (a global rank) query heads [h0, h0 + n_heads/tp)
 * read the kv heads [kv0, kv0 + nkv) (replicated across ranks when tp >
 * n_kv_heads). */
void engine_rank_heads(const engine_model_info *in, int r, int *h0, int *kv0, int *nkv);

/* Makes a backend instance for each of the process's tp_local ranks, on
 * the device o asks for (engine/device.c), m->be, info.backend, and the
 * comm between the ranks when none was made for the launch (dist NULL) or
 * when the ranks are GPUs (NCCL). */
int engine_model_backends(engine_model *m, const engine_model_opts *o, engine_dist *dist,
			  owl_err *err);

#endif
