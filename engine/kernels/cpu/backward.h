/* The CPU backend's training ops (backward.c), for its table in backend.c;
 * their contracts are the iface's in kernels.h. */
#ifndef OWL_KERNELS_CPU_BACKWARD_H
#define OWL_KERNELS_CPU_BACKWARD_H

#include "engine/kernels/kernels.h"

int cpu_attention_packed(kernels_backend *be, float *out, const float *q, const float *k,
			 const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
			 int n_kv_heads, int hd, int window, const kernels_scratch *scratch,
			 owl_err *err);
int cpu_matmul_widened(kernels_backend *be, float *y, const float *x, const kernels_weight *w, int n,
		       const kernels_scratch *scratch, owl_err *err);
int cpu_matmul_backward(kernels_backend *be, float *dx, const float *dy, const kernels_weight *w,
			int n, int accumulate, const kernels_scratch *scratch, owl_err *err);
int cpu_lora_backward(kernels_backend *be, float *dx, float *da, float *db, const float *dy,
		      const float *x, int n, int in, int out, int r, const float *a, int lda,
		      const float *b, int ldb, float scale, float *tmp, owl_err *err);
int cpu_embedding_backward(kernels_backend *be, float *dtable, const float *dy, const int32_t *ids,
			   int n, int dim, owl_err *err);
int cpu_rmsnorm_backward(kernels_backend *be, float *dx, float *dweight, const float *dout,
			 const float *x, const float *weight, int rows, int dim, float eps,
			 owl_err *err);
int cpu_rope_backward(kernels_backend *be, float *dx, int n_tok, const int32_t *pos, int n_heads,
		      int hd, const float *inv_freq, kernels_rope_layout layout, owl_err *err);
int cpu_attention_backward(kernels_backend *be, float *dq, float *dk, float *dv, const float *dout,
			   const float *q, const float *k, const float *v,
			   const kernels_attn_seg *segs, int nseg, int n_heads, int n_kv_heads,
			   int hd, int window, const kernels_scratch *scratch, owl_err *err);
int cpu_swiglu_backward(kernels_backend *be, float *dgate, float *dup, const float *dout,
			const float *gate, const float *up, size_t n, owl_err *err);
int cpu_cross_entropy_backward(kernels_backend *be, float *dlogits, const float *logits,
			       const int32_t *targets, int rows, int vocab, float scale,
			       double *loss_sum, int64_t *count, owl_err *err);
int cpu_dropout(kernels_backend *be, float *y, const float *x, size_t n, uint64_t seed, float p,
		int accumulate, owl_err *err);
int cpu_adamw_step(kernels_backend *be, float *p, const float *g, float *m, float *v, size_t n,
		   float lr, float beta1, float beta2, float eps, float weight_decay, int step,
		   owl_err *err);

#endif
