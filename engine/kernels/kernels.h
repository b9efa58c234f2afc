/* kernels: the backend interface of the kernel layer. A backend is a struct of
 * function pointers; the CPU backend (engine/kernels/cpu/) and the CUDA
 * backend (engine/kernels/cuda/, libowl_cuda.so) implement this same table,
 * so the forward pass and training never branch on the device.
 *
 * Conventions: activations are f32, row-major; weights are views of any
 * kernels_dtype, read in place. Every pointer an op receives is backend
 * memory (host memory for the CPU backend, device memory for CUDA) unless
 * its comment says host: activations, weights' data, the KV cache, the
 * positions, slots and ids arrays, and the segs arrays of attention together
 * with the blocks tables they point to. The structs passed by pointer that
 * describe memory (kernels_weight, kernels_kv_layer, kernels_scratch) and
 * the arrays of pointers (matvec_multi's ys and ws, a comm's bufs, in and
 * out) are host memory; the memory they name is the backend's. Buffer ops
 * move data between the two. A device backend queues its ops in order on
 * its own stream: an op may return before its result is written, and
 * synchronize (or an op that hands a result to the host) waits for them.
 * Every op returns 0 or an OWL_* error with the reason in err.
 * Accumulation is always f32. Ops whose backward training needs have a
 * backward slot; a backend leaves a slot NULL until it implements it. */
#ifndef OWL_KERNELS_H
#define OWL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Element or block types a weight may be stored in. Quantised types are read
 * block by block in the kernels, never fully dequantised in memory. */
typedef enum kernels_dtype {
	KERNELS_F32 = 0,
	KERNELS_F16,
	KERNELS_BF16,
	KERNELS_Q8_0,
	KERNELS_Q4_0,
	KERNELS_Q4_1,
	KERNELS_Q4_K,
	KERNELS_Q6_K,
} kernels_dtype;

/* A weight matrix [rows, cols] (rows = output features), each row row_bytes
 * long. A view: it never owns memory. A band of rows is a view with another
 * data pointer; a band of columns keeps row_bytes (a strided view) - this is
 * how tensor-parallel shards are taken without copies. */
typedef struct kernels_weight {
	kernels_dtype type;
	/* 0: the stored layout (a file's rows). Otherwise a layout private to
	 * the backend whose weight_prepare made it (the CPU's 16-row groups):
	 * only that backend reads it. */
	int layout;
	const uint8_t *data;
	int rows, cols;
	size_t row_bytes;
} kernels_weight;

/* Bytes of one row of cols elements in the stored layout of t; 0 when
 * cols do not fill whole blocks. */
size_t kernels_row_bytes(kernels_dtype t, int cols);
const char *kernels_dtype_name(kernels_dtype t);
/* Row row of a weight in its stored layout (layout 0), widened to f32. */
void kernels_row_to_f32(const kernels_weight *w, int row, float *dst);

/* RoPE pair layout: HF rotate_half (i, i + d/2) or GGUF adjacent (2i, 2i+1). */
typedef enum kernels_rope_layout {
	KERNELS_ROPE_HALF = 0,
	KERNELS_ROPE_ADJACENT,
} kernels_rope_layout;

/* Keys and values of the KV cache are stored as f32 or f16. */
typedef enum kernels_kv_type {
	KERNELS_KV_F32 = 0,
	KERNELS_KV_F16,
} kernels_kv_type;

/* One layer of a paged KV cache (PagedAttention): keys and values live in
 * fixed-size blocks of block_tokens rows; row i of block b starts at
 * k + b * block_stride + i * row_elems * element size (the same for v). A
 * row holds the cache's kv heads side by side (row_elems = kv heads x
 * head_dim). Blocks are named by the sequences' block tables. */
typedef struct kernels_kv_layer {
	kernels_kv_type type;
	uint8_t *k, *v;
	size_t block_stride; /* bytes from one block to the next */
	int block_tokens;
	int row_elems;
} kernels_kv_layer;

/* The tokens of one sequence inside a batch: rows [tok0, tok0 + ntok) of
 * the batch, at positions pos0 .. pos0 + ntok - 1, attending to the keys at
 * positions [0, pos0 + ntok) whose blocks are blocks[pos / block_tokens]. */
typedef struct kernels_attn_seg {
	int tok0, ntok, pos0;
	const int32_t *blocks;
} kernels_attn_seg;

/* Caller-owned working memory an op may use (never allocated per call). */
typedef struct kernels_scratch {
	float *data;
	size_t n; /* floats */
} kernels_scratch;

/* Floats of scratch the CPU attention needs for sequences up to max_ctx
 * tokens with kv_elems key elements per row, on threads threads. */
size_t kernels_attention_scratch(int max_ctx, int kv_elems, int threads);
/* Floats of scratch the CPU's attention_packed and attention_backward need
 * for n_tok rows in segments of up to max_seg tokens, q_elems query
 * elements per row (heads x head_dim), on threads threads. */
size_t kernels_attention_packed_scratch(int n_tok, int max_seg, int q_elems, int threads);
/* Floats of scratch the CPU's matmul_backward and matmul_widened need for
 * n rows of activations and weights of up to cols columns on threads
 * threads. */
size_t kernels_matmul_backward_scratch(int n, int cols, int threads);

typedef struct kernels_buffer kernels_buffer; /* opaque, backend-owned */
typedef struct kernels_graph kernels_graph;   /* opaque: recorded ops (graph_begin) */

/* The version of this interface. A backend loaded at run time (the CUDA
 * object) reports the version it was built against, and one that differs is
 * refused rather than called through a table of another shape. */
#define KERNELS_ABI_VERSION 5

/* The ops, for supports(): a scheduler asks before it calls. */
typedef enum kernels_op {
	KERNELS_OP_MATMUL = 0,
	KERNELS_OP_MATVEC_MULTI,
	KERNELS_OP_EMBEDDING,
	KERNELS_OP_RMSNORM,
	KERNELS_OP_ROPE,
	KERNELS_OP_ADD,
	KERNELS_OP_ADD_ROWS,
	KERNELS_OP_KV_STORE,
	KERNELS_OP_ATTENTION,
	KERNELS_OP_SWIGLU,
	KERNELS_OP_CROSS_ENTROPY,
	KERNELS_OP_LORA,
	/* training */
	KERNELS_OP_ATTENTION_PACKED,
	KERNELS_OP_MATMUL_WIDENED,  /* type: the weight's */
	KERNELS_OP_MATMUL_BACKWARD, /* type: the weight's */
	KERNELS_OP_LORA_BACKWARD,
	KERNELS_OP_EMBEDDING_BACKWARD,
	KERNELS_OP_RMSNORM_BACKWARD,
	KERNELS_OP_ROPE_BACKWARD,
	KERNELS_OP_ATTENTION_BACKWARD,
	KERNELS_OP_SWIGLU_BACKWARD,
	KERNELS_OP_CROSS_ENTROPY_BACKWARD,
	KERNELS_OP_ADAMW,
	KERNELS_OP_SAMPLE,  /* ABI 4 */
	KERNELS_OP_DROPOUT, /* ABI 5 */
	KERNELS_OP_COUNT,
} kernels_op;

typedef struct kernels_backend kernels_backend;

/* How one row of logits is sampled (host memory): temperature <= 0 takes
 * the argmax (the lowest index on ties). Otherwise the candidates are the
 * tokens in the order (logit descending, index ascending), cut to the first
 * top_k (0 = all), their probabilities softmax(logit / temperature) over
 * those k, cut again to the shortest prefix whose mass reaches top_p (top_p
 * <= 0 or >= 1 = no cut); the token drawn is the first whose cumulative
 * mass exceeds u times the prefix's mass, u uniform in [0, 1). */
typedef struct kernels_sample_row {
	float temperature, top_p;
	int top_k;
	float u;
} kernels_sample_row;

/* What one backend instance holds in its memory, and its device's memory
 * (kernels_backend_iface.mem_info). */
typedef struct kernels_mem_info {
	uint64_t buffer_bytes; /* in the buffers it holds now (weights, caches, batch buffers) */
	uint64_t work_bytes;   /* the ops' own workspace */
	uint64_t pinned_bytes; /* pinned host memory for transfers */
	uint64_t device_total, device_free; /* the whole device's, as its driver says */
} kernels_mem_info;

/* A backend's table. Every op receives the backend instance it runs on
 * (which device, which threads). Slots marked optional may be NULL. */
typedef struct kernels_backend_iface {
	int abi_version; /* KERNELS_ABI_VERSION */
	const char *name; /* "cpu", "cuda" */
	/* 1: buffer_data() pointers are host memory that the caller may read
	 * and write directly, and host arrays may be passed where backend
	 * memory is asked for (the CPU); 0: device memory, reached only
	 * through the ops and the copies (CUDA). */
	int host_memory;
	void (*free)(kernels_backend *be); /* the instance and its context */
	/* Whether op runs on weights (or caches) of type: for ops without a
	 * weight the type is KERNELS_F32 (KERNELS_KV_* for the cache ops). */
	int (*supports)(const kernels_backend *be, kernels_op op, int type);
	/* Waits for every op queued on the backend (no-op on the CPU). */
	int (*synchronize)(kernels_backend *be, owl_err *err);

	/* memory: every buffer the forward pass touches comes from here */
	int (*buffer_alloc)(kernels_backend *be, size_t bytes, kernels_buffer **out, owl_err *err);
	void (*buffer_free)(kernels_backend *be, kernels_buffer *buf); /* accepts NULL */
	void *(*buffer_data)(kernels_buffer *buf);
	/* ABI 4: bytes from one place of backend memory to another (device to
	 * device), and bytes of backend memory set to zero, both in the order
	 * of the backend's queue. */
	int (*copy)(kernels_backend *be, void *dst, const void *src, size_t bytes, owl_err *err);
	int (*fill_zero)(kernels_backend *be, void *dst, size_t bytes, owl_err *err);
	int (*copy_to_device)(kernels_backend *be, kernels_buffer *dst, size_t off, const void *src,
			      size_t bytes, owl_err *err);
	int (*copy_to_host)(kernels_backend *be, void *dst, const kernels_buffer *src, size_t off,
			    size_t bytes, owl_err *err);
	/* Makes a weight this backend's own, once at load: the CPU copies a
	 * strided view (a tensor-parallel column shard) into whole rows and
	 * repacks what its kernels take into its own layouts; a device uploads.
	 * *owned is the memory *out lives in (buffer_free releases it), or NULL
	 * when *out stays a view of w. from_file: w lies in a read-only file
	 * mapping whose pages may be dropped from the process once copied. */
	int (*weight_prepare)(kernels_backend *be, const kernels_weight *w, int from_file,
			      kernels_weight *out, kernels_buffer **owned, owl_err *err);

	/* forward ops */
	/* y[n, w.rows] = x[n, w.cols] W^T */
	int (*matmul)(kernels_backend *be, float *y, const float *x, const kernels_weight *w, int n,
		      owl_err *err);
	/* k matrices sharing one input vector (q/k/v, gate/up of one token) */
	int (*matvec_multi)(kernels_backend *be, float *const *ys, const kernels_weight *const *ws,
			    int k, const float *x, owl_err *err);
	/* out[i] = row ids[i] of the table, widened to f32 */
	int (*embedding)(kernels_backend *be, float *out, const kernels_weight *table,
			 const int32_t *ids, int n, owl_err *err);
	int (*rmsnorm)(kernels_backend *be, float *out, const float *x, const float *weight, int rows,
		       int dim, float eps, owl_err *err);
	/* x is [n_tok, n_heads, head_dim], token i at position pos[i];
	 * inv_freq has head_dim/2 entries (llama3 scaling already applied). */
	int (*rope)(kernels_backend *be, float *x, int n_tok, const int32_t *pos, int n_heads,
		    int head_dim, const float *inv_freq, kernels_rope_layout layout, owl_err *err);
	/* y[i] += x[i] (the residual stream) */
	int (*add)(kernels_backend *be, float *y, const float *x, size_t n, owl_err *err);
	/* y[r, :] += b for each of rows rows (a projection's bias). */
	int (*add_rows)(kernels_backend *be, float *y, const float *b, int rows, int dim,
			owl_err *err);
	/* Keys and values k, v [n_tok, row_elems] into the cache rows slots[i]
	 * (= block * block_tokens + offset), converted to the cache's type. */
	int (*kv_store)(kernels_backend *be, const kernels_kv_layer *kv, const float *k,
			const float *v, const int32_t *slots, int n_tok, owl_err *err);
	/* Causal attention with GQA over a paged KV cache, one segment per
	 * sequence of the batch. q and out are [n_tok, n_heads, hd] for the
	 * model's query heads head0 ..; query head h reads kv head
	 * h / group - kv_head0 of the cache's rows; window 0 = no sliding
	 * window. scratch is kernels_attention_scratch() floats. */
	int (*attention)(kernels_backend *be, float *out, const float *q, const kernels_attn_seg *segs,
			 int nseg, const kernels_kv_layer *kv, int n_heads, int head0, int group,
			 int kv_head0, int head_dim, int window, const kernels_scratch *scratch,
			 owl_err *err);
	/* gate[i] = silu(gate[i]) * up[i] */
	int (*swiglu)(kernels_backend *be, float *gate, const float *up, size_t n, owl_err *err);
	/* Mean cross-entropy of logits [rows, vocab] against targets (training,
	 * perplexity), into *loss (host memory: the op waits for its result). */
	int (*cross_entropy)(kernels_backend *be, float *loss, const float *logits,
			     const int32_t *targets, int rows, int vocab, owl_err *err);
	/* LoRA, unmerged: y[n, out] += scale * (x[n, in] A^T) B^T, A [r, in] with rows
	 * lda floats apart (a column band of a wider A: lda is its full width),
	 * B [out, r] with rows ldb apart (a row band of B is b + row0 * ldb), tmp
	 * caller-provided scratch of [n, r] floats. x and y rows are contiguous. */
	int (*lora)(kernels_backend *be, float *y, const float *x, int n, int in, int out, int r,
		    const float *a, int lda, const float *b, int ldb, float scale, float *tmp,
		    owl_err *err);

	/* ---- training (engine/backward.c): optional, NULL where a backend has
	 * none; supports() answers for each. Gradients of frozen weights are
	 * never formed: only activations' gradients and the LoRA factors'. ---- */
	/* The forward attention of training: causal GQA over packed segments of
	 * contiguous rows. q and out are [n_tok, n_heads, hd], k and v
	 * [n_tok, n_kv_heads, hd]; segment s's rows [tok0, tok0 + ntok) attend
	 * to the keys of their own segment up to themselves (pos0 and blocks are
	 * not read), never across segments; window 0 = none. scratch is
	 * kernels_attention_packed_scratch() floats. */
	int (*attention_packed)(kernels_backend *be, float *out, const float *q, const float *k,
				const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
				int n_kv_heads, int head_dim, int window,
				const kernels_scratch *scratch, owl_err *err);
	/* y[n, w.rows] = x[n, w.cols] W^T with W widened to f32 (scratch as
	 * matmul_backward's): the exact product for quantised weights, whose
	 * matmul may round x to 8 bits for integer kernels, so that training
	 * differentiates the function it evaluates. */
	int (*matmul_widened)(kernels_backend *be, float *y, const float *x, const kernels_weight *w,
			      int n, const kernels_scratch *scratch, owl_err *err);
	/* dx[n, w.cols] = dy[n, w.rows] W (accumulate: dx +=), through a frozen
	 * weight of any type, widened a band of rows at a time into scratch
	 * (kernels_matmul_backward_scratch() floats). */
	int (*matmul_backward)(kernels_backend *be, float *dx, const float *dy,
			       const kernels_weight *w, int n, int accumulate,
			       const kernels_scratch *scratch, owl_err *err);
	/* The LoRA op's backward, for y += scale * (x A^T) B^T with A, B laid out
	 * as in lora above: da [r, in] (rows lda apart) += scale (dy B)^T x,
	 * db [out, r] (rows ldb apart) += scale dy^T (x A^T), and dx [n, in] +=
	 * scale (dy B) A unless dx is NULL. tmp is [2, n, r] floats of scratch. */
	int (*lora_backward)(kernels_backend *be, float *dx, float *da, float *db, const float *dy,
			     const float *x, int n, int in, int out, int r, const float *a,
			     int lda, const float *b, int ldb, float scale, float *tmp,
			     owl_err *err);
	/* dtable[ids[i], :] += dy[i, :] (an f32 table's gradient; a frozen table
	 * needs none, and the chain ends at the embedding). */
	int (*embedding_backward)(kernels_backend *be, float *dtable, const float *dy,
				  const int32_t *ids, int n, int dim, owl_err *err);
	/* dx += d rmsnorm(x) / dx applied to dout; dweight += its weight
	 * gradient unless NULL. */
	int (*rmsnorm_backward)(kernels_backend *be, float *dx, float *dweight, const float *dout,
				const float *x, const float *weight, int rows, int dim, float eps,
				owl_err *err);
	/* In place: the gradient of rope's output becomes its input's (the
	 * rotation by minus the angle). Same arguments as rope. */
	int (*rope_backward)(kernels_backend *be, float *dx, int n_tok, const int32_t *pos,
			     int n_heads, int head_dim, const float *inv_freq,
			     kernels_rope_layout layout, owl_err *err);
	/* Gradients of attention_packed: dq (as q), dk and dv (as k, v) are
	 * overwritten; the softmax is recomputed from q and k. Same scratch. */
	int (*attention_backward)(kernels_backend *be, float *dq, float *dk, float *dv,
				  const float *dout, const float *q, const float *k, const float *v,
				  const kernels_attn_seg *segs, int nseg, int n_heads, int n_kv_heads,
				  int head_dim, int window, const kernels_scratch *scratch,
				  owl_err *err);
	/* For h = silu(gate) * up: dgate and dup from dout (overwritten). */
	int (*swiglu_backward)(kernels_backend *be, float *dgate, float *dup, const float *dout,
			       const float *gate, const float *up, size_t n, owl_err *err);
	/* Cross-entropy of logits [rows, vocab] against targets, -1 = not
	 * scored: *loss_sum and *count of the scored rows, and dlogits = scale *
	 * (softmax - onehot) for them, 0 for the others. dlogits may be logits
	 * (in place). loss_sum and count are host memory (the op waits). */
	int (*cross_entropy_backward)(kernels_backend *be, float *dlogits, const float *logits,
				      const int32_t *targets, int rows, int vocab, float scale,
				      double *loss_sum, int64_t *count, owl_err *err);
	/* AdamW as torch.optim.AdamW: p -= lr wd p, then the bias-corrected
	 * Adam update; step counts from 1. */
	int (*adamw_step)(kernels_backend *be, float *p, const float *g, float *m, float *v, size_t n,
			  float lr, float beta1, float beta2, float eps, float weight_decay, int step,
			  owl_err *err);

	/* ABI 4, optional: one token per row of logits [rows, vocab] (backend
	 * memory) as params_host[row] says (kernels_sample_row), written to
	 * out_host (host memory): only the chosen tokens leave the device. */
	int (*sample)(kernels_backend *be, int32_t *out_host, const float *logits, int rows,
		      int vocab, const kernels_sample_row *params_host, owl_err *err);

	/* ABI 5, optional (NULL where a backend has none; CUDA graphs): the ops
	 * queued between graph_begin and graph_end are recorded, not run, into a
	 * graph that graph_launch replays with the same arguments: the same
	 * buffers, whose contents may change between launches. graph_end always
	 * ends the recording, and fails when an op could not be recorded (a
	 * synchronous call, an allocation): then no graph is made and none of
	 * the recorded ops ran. graph_launch sets *stale and runs nothing when
	 * memory the backend lends its ops (a workspace) was reallocated since
	 * the recording: the caller frees the graph and records it again. */
	int (*graph_begin)(kernels_backend *be, owl_err *err);
	int (*graph_end)(kernels_backend *be, kernels_graph **out, owl_err *err);
	int (*graph_launch)(kernels_backend *be, kernels_graph *g, int *stale, owl_err *err);
	void (*graph_free)(kernels_backend *be, kernels_graph *g); /* accepts NULL */
	/* ABI 5, optional (a device's backend): what the instance holds and
	 * what its device has, for owl bench. */
	int (*mem_info)(kernels_backend *be, kernels_mem_info *out, owl_err *err);
	/* ABI 5, training, optional: LoRA's dropout, y[i] = x[i] / (1 - p) where
	 * element i is kept, 0 where dropped (accumulate: y[i] += x[i] / (1 - p)
	 * where kept, y[i] unchanged where dropped). Element i is kept when
	 * u >= p, u the splitmix64 output of the state seed ^ (i *
	 * 0x9e3779b97f4a7c15) (one step: state += 0x9e3779b97f4a7c15, then the
	 * two multiply-xorshift rounds) shifted right by 11 and times 2^-53, in
	 * double: every backend draws the same mask from the same seed. */
	int (*dropout)(kernels_backend *be, float *y, const float *x, size_t n, uint64_t seed,
		       float p, int accumulate, owl_err *err);
} kernels_backend_iface;

/* A backend instance, as in ggml-backend: one per device and rank, so that
 * each tensor-parallel rank owns its memory and its threads. */
struct kernels_backend {
	const kernels_backend_iface *iface;
	int device;    /* the device index (0 on the CPU) */
	void *context; /* the backend's own state */
};

/* The CPU backend (engine/kernels/cpu/backend.c): OpenMP, OpenBLAS, AVX2, and
 * AVX-512 (VNNI) kernels where the CPU has them. threads: the OpenMP threads
 * its ops use (0 = all cores). */
int kernels_cpu_backend_new(int threads, kernels_backend **out, owl_err *err);
void kernels_backend_free(kernels_backend *be); /* accepts NULL */
/* The threads a CPU backend instance was made with. */
int kernels_cpu_backend_threads(const kernels_backend *be);

/* Allocation through a backend, with the buffer's data pointer. */
int kernels_alloc(kernels_backend *be, size_t bytes, kernels_buffer **buf, void **data,
		  owl_err *err);

/* Communication between tensor-parallel ranks (DESIGN.md: threads sharing
 * memory on the CPU, MPI between processes, NCCL on GPUs). A process drives
 * `local` of the `size` ranks, global ranks [first, first + local); its
 * collectives work in place on those ranks' buffers, called once for all of
 * them by the thread that drives them (the shape of NCCL's grouped calls in
 * one process). In one process local = size and first = 0. */
typedef struct kernels_comm {
	const char *name; /* "cpu-shared", "mpi", "nccl" */
	int size;         /* ranks in all processes */
	int local;        /* ranks this process drives: the arrays below have local entries */
	int first;        /* the global index of this process's first rank */
	void *ctx;        /* the implementation's state (communicators, streams) */
	/* bufs[i] of every local rank becomes the sum over all size ranks */
	int (*all_reduce)(const struct kernels_comm *c, float *const *bufs, size_t n, owl_err *err);
	/* every local rank's out[i] becomes [rank 0's in | rank 1's in | ...],
	 * n floats each, over all size ranks */
	int (*all_gather)(const struct kernels_comm *c, float *const *out, const float *const *in,
			  size_t n, owl_err *err);
	/* returns when every rank has arrived */
	int (*barrier)(const struct kernels_comm *c, owl_err *err);
} kernels_comm;

/* Ranks in one process sharing memory (local = size: set both). */
const kernels_comm *kernels_cpu_comm(void);

#endif
