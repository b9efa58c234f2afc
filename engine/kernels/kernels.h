/* kernels: the backend interface of the kernel layer. A backend is a struct of
 * function pointers; the CPU backend (engine/kernels/cpu/) and the CUDA
 * backend (engine/kernels/cuda/, libowl_cuda.so) implement this same vtable,
 * so the forward pass and training never branch on the device.
 *
 * Conventions: tensors are row-major; a "buffer" is backend memory (host
 * memory for CPU, device memory for CUDA); every op returns 0 or an OWL_*
 * error code with the reason in err. Accumulation is always f32. */
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
	void *(*buffer_data)(kernels_buffer *buf); /* device pointer */
	int (*copy_to_device)(kernels_buffer *dst, size_t off, const void *src,
			      size_t bytes, owl_err *err);
	int (*copy_to_host)(void *dst, const kernels_buffer *src, size_t off,
			    size_t bytes, owl_err *err);

	/* forward ops */
	/* C[m,n] = A[m,k] * W^T where W is [n,k] of type wtype (any dtype). */
	int (*matmul)(float *c, const float *a, const void *w,
		      kernels_dtype wtype, int m, int n, int k, owl_err *err);
	int (*embedding)(float *out, const void *table, kernels_dtype type,
			 const int32_t *ids, int n, int dim, owl_err *err);
	int (*rmsnorm)(float *out, const float *x, const float *weight, int rows,
		       int dim, float eps, owl_err *err);
	/* x is [n_tok, n_heads, head_dim]; pos[i] is token i's position;
	 * inv_freq has head_dim/2 entries (llama3 scaling already applied). */
	int (*rope)(float *x, const int32_t *pos, int n_tok, int n_heads,
		    int head_dim, const float *inv_freq,
		    kernels_rope_layout layout, owl_err *err);
	/* Causal attention with GQA over a KV cache; window 0 = no sliding
	 * window. q [n_tok, n_heads, hd], k/v cache [n_ctx, n_kv, hd]. */
	int (*attention)(float *out, const float *q, const float *k_cache,
			 const float *v_cache, int n_tok, int pos0,
			 int n_heads, int n_kv_heads, int head_dim, int window,
			 owl_err *err);
	int (*swiglu)(float *out, const float *gate, const float *up, size_t n,
		      owl_err *err);
	int (*softmax)(float *x, int rows, int cols, owl_err *err);
	/* Mean cross-entropy of logits [rows, vocab] against targets. */
	int (*cross_entropy)(float *loss, const float *logits,
			     const int32_t *targets, int rows, int vocab,
			     owl_err *err);
	int (*add)(float *out, const float *a, const float *b, size_t n,
		   owl_err *err);
	int (*scale)(float *x, float s, size_t n, owl_err *err);
	int (*adamw_step)(float *p, const float *g, float *m, float *v, size_t n,
			  float lr, float beta1, float beta2, float eps,
			  float weight_decay, int step, owl_err *err);

	/* backward slots (NULL where a backend does not implement them yet) */
	int (*matmul_backward)(float *da, float *dw, const float *dc,
			       const float *a, const float *w, int m, int n,
			       int k, owl_err *err);
	int (*embedding_backward)(float *dtable, const float *dout,
				  const int32_t *ids, int n, int dim,
				  owl_err *err);
	int (*rmsnorm_backward)(float *dx, float *dweight, const float *dout,
				const float *x, const float *weight, int rows,
				int dim, float eps, owl_err *err);
	int (*rope_backward)(float *dx, const int32_t *pos, int n_tok,
			     int n_heads, int head_dim, const float *inv_freq,
			     kernels_rope_layout layout, owl_err *err);
	int (*attention_backward)(float *dq, float *dk, float *dv,
				  const float *dout, const float *q,
				  const float *k, const float *v, int n_tok,
				  int n_heads, int n_kv_heads, int head_dim,
				  int window, owl_err *err);
	int (*swiglu_backward)(float *dgate, float *dup, const float *dout,
			       const float *gate, const float *up, size_t n,
			       owl_err *err);
	int (*softmax_cross_entropy_backward)(float *dlogits,
					      const float *logits,
					      const int32_t *targets, int rows,
					      int vocab, owl_err *err);
} kernels_backend;

#endif
