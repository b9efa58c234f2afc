// What attention.cu shares with attention_packed.cu: the flash-style
// forward over packed segments, with the rows' log-sum-exp for the backward.
#ifndef OWL_KERNELS_CUDA_ATTN_CUH
#define OWL_KERNELS_CUDA_ATTN_CUH

#include "engine/kernels/cuda/cuda.cuh"

enum { AT_HD_MAX = 256 }; // the largest head size the kernels take

// out and lse (NULL or [n_tok][n_heads]) for q, k, v as attention_packed
// takes them; segs in device memory.
int cu_attn_packed_forward(cu_ctx *c, float *out, float *lse, const float *q, const float *k,
			   const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
			   int n_kv_heads, int hd, int window, owl_err *err);

#endif
