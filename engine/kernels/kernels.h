/* kernels: the backend interface of the kernel layer. A backend is a struct of
 * function pointers; the CPU backend (engine/kernels/cpu/) and the CUDA
 * backend (engine/kernels/cuda/, libowl_cuda.so) implement this same table,
 * so the forward pass and training never branch on the device.
 *
 * Conventions: activations are f32, row-major; weights are views of any
 * kernels_dtype, read in place. Pointers are backend memory (host memory for
 * the CPU backend, device memory for CUDA); buffer ops move data between the
 * two. Every op returns 0 or an OWL_* error with the reason in err.
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
	/* Q8_0 / Q4_0 repacked at load for the CPU's integer kernels: rows in
	 * groups of 16; per group and block of 32 columns, the 16 rows' f16
	 * scales, then the quants interleaved 4 bytes per row (Q8_0 stored as
	 * q+128, unsigned; Q4_0 as the packed nibble bytes). Same bytes per row
	 * as the file's layout, so row_bytes keeps its meaning; a view must
	 * start on a 16-row group and take whole rows. */
	KERNELS_Q8_0_R16,
	KERNELS_Q4_0_R16,
	KERNELS_Q4_1_R16, /* as Q4_0, with the 16 mins after the 16 scales */
	/* f16 / bf16 / f32 repacked the same way: per group, for each column,
	 * the 16 rows' values side by side (32 or 64 bytes). */
	KERNELS_F16_R16,
	KERNELS_BF16_R16,
	KERNELS_F32_R16,
} kernels_dtype;

/* A weight matrix [rows, cols] (rows = output features), each row row_bytes
 * long. A view: it never owns memory. A band of rows is a view with another
 * data pointer; a band of columns keeps row_bytes (a strided view) - this is
 * how tensor-parallel shards are taken without copies. */
typedef struct kernels_weight {
	kernels_dtype type;
	const uint8_t *data;
	int rows, cols;
	size_t row_bytes;
} kernels_weight;

/* RoPE pair layout: HF rotate_half (i, i + d/2) or GGUF adjacent (2i, 2i+1). */
typedef enum kernels_rope_layout {
	KERNELS_ROPE_HALF = 0,
	KERNELS_ROPE_ADJACENT,
} kernels_rope_layout;

typedef struct kernels_buffer kernels_buffer; /* opaque, backend-owned */

typedef struct kernels_backend {
	const char *name; /* "cpu", "cuda" */

	/* memory */
	int (*buffer_alloc)(size_t bytes, kernels_buffer **out, owl_err *err);
	void (*buffer_free)(kernels_buffer *buf); /* accepts NULL */
	void *(*buffer_data)(kernels_buffer *buf);
	int (*copy_to_device)(kernels_buffer *dst, size_t off, const void *src, size_t bytes,
			      owl_err *err);
	int (*copy_to_host)(void *dst, const kernels_buffer *src, size_t off, size_t bytes,
			    owl_err *err);

	/* forward ops */
	/* y[n, w.rows] = x[n, w.cols] W^T */
	int (*matmul)(float *y, const float *x, const kernels_weight *w, int n, owl_err *err);
	/* k matrices sharing one input vector (q/k/v, gate/up of one token) */
	int (*matvec_multi)(float *const *ys, const kernels_weight *const *ws, int k, const float *x,
			    owl_err *err);
	/* out[i] = row ids[i] of the table, widened to f32 */
	int (*embedding)(float *out, const kernels_weight *table, const int32_t *ids, int n,
			 owl_err *err);
	int (*rmsnorm)(float *out, const float *x, const float *weight, int rows, int dim,
		       float eps, owl_err *err);
	/* x is [n_tok, n_heads, head_dim], token i at position pos0 + i;
	 * inv_freq has head_dim/2 entries (llama3 scaling already applied). */
	int (*rope)(float *x, int n_tok, int pos0, int n_heads, int head_dim, const float *inv_freq,
		    kernels_rope_layout layout, owl_err *err);
	/* Causal attention with GQA over a KV cache. q is [n_tok, n_heads, hd]
	 * for query heads head0.. of the model; query head h reads kv head
	 * h / group; the caches hold [position][kv_stride] floats; window 0 = no
	 * sliding window. out is [n_tok, n_heads, hd]. */
	int (*attention)(float *out, const float *q, const float *k_cache, const float *v_cache,
			 int n_tok, int pos0, int n_heads, int head0, int group, int kv_stride,
			 int head_dim, int window, owl_err *err);
	/* gate[i] = silu(gate[i]) * up[i] */
	int (*swiglu)(float *gate, const float *up, size_t n, owl_err *err);
	/* Mean cross-entropy of logits [rows, vocab] against targets (training, perplexity). */
	int (*cross_entropy)(float *loss, const float *logits, const int32_t *targets, int rows,
			     int vocab, owl_err *err);
	/* LoRA, unmerged: y[n, out] += scale * (x[n, in] A^T) B^T, A [r, in] with rows
	 * lda floats apart (a column band of a wider A: lda is its full width),
	 * B [out, r] with rows ldb apart (a row band of B is b + row0 * ldb), tmp
	 * caller-provided scratch of [n, r] floats. x and y rows are contiguous. */
	int (*lora)(float *y, const float *x, int n, int in, int out, int r, const float *a,
		    int lda, const float *b, int ldb, float scale, float *tmp, owl_err *err);

	/* backward slots: NULL until training lands (the LoRA issue) */
	int (*matmul_backward)(float *dx, float *dw, const float *dy, const float *x,
			       const kernels_weight *w, int n, owl_err *err);
	int (*rmsnorm_backward)(float *dx, float *dweight, const float *dout, const float *x,
				const float *weight, int rows, int dim, float eps, owl_err *err);
	int (*rope_backward)(float *dx, int n_tok, int pos0, int n_heads, int head_dim,
			     const float *inv_freq, kernels_rope_layout layout, owl_err *err);
	int (*attention_backward)(float *dq, float *dk, float *dv, const float *dout,
				  const float *q, const float *k, const float *v, int n_tok,
				  int n_heads, int n_kv_heads, int head_dim, int window, owl_err *err);
	int (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate,
			       const float *up, size_t n, owl_err *err);
	int (*softmax_cross_entropy_backward)(float *dlogits, const float *logits,
					      const int32_t *targets, int rows, int vocab,
					      owl_err *err);
	int (*adamw_step)(float *p, const float *g, float *m, float *v, size_t n, float lr,
			  float beta1, float beta2, float eps, float weight_decay, int step,
			  owl_err *err);
} kernels_backend;

/* Communication between tensor-parallel ranks (DESIGN.md: threads sharing
 * memory on the CPU, NCCL on GPUs). all_reduce_sum adds every rank's partial
 * buffer into x. */
typedef struct kernels_comm {
	const char *name; /* "cpu-shared", "nccl" */
	int size;         /* ranks */
	int (*all_reduce_sum)(const struct kernels_comm *c, float *x, float *const *partials,
			      size_t n, owl_err *err);
} kernels_comm;

/* The CPU backend (engine/kernels/cpu/backend.c): OpenMP, OpenBLAS, AVX2, and
 * AVX-512 (VNNI) kernels where the CPU has them. */
const kernels_backend *kernels_cpu_backend(void);
/* Ranks on one machine sharing memory. */
const kernels_comm *kernels_cpu_comm(void);

#endif
