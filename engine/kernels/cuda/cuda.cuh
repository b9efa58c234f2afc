// The CUDA backend's private header: the instance, the error macros that
// turn CUDA and cuBLAS failures into owl_err messages naming the op, the
// workspace, and the device-side readers of the stored weight types.
// Every op's .cu file includes it; nothing outside engine/kernels/cuda/ does.
#ifndef OWL_KERNELS_CUDA_CUH
#define OWL_KERNELS_CUDA_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

extern "C" {
#include "engine/kernels/dtype_table.h"
}

// Kernel launches and dynamic shared memory go through these two macros so
// that the same sources also build with g++ against a host emulator of
// blocks, warps and shared memory (tests/cuda-emu/), which checks the
// kernels' indexing and synchronisation on machines without a GPU.
#ifdef OWL_CUDA_EMU
#include "tests/cuda-emu/emu.h"
#define CU_LAUNCH(kernel, grid, block, smem, stream) \
	emu_launcher(dim3(grid), dim3(block), (size_t)(smem), kernel)
#define CU_DYN_SHARED(type, name) type *name = (type *)emu_dyn_shared()
#else
#define CU_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#define CU_DYN_SHARED(type, name) extern __shared__ type name[]
#endif

// One instance per device and rank: its own stream, cuBLAS handles and
// workspace, so that ranks on one GPU (tp > 1 on one device) do not share
// queues. The workspace grows to the largest request and then stays: ops
// never allocate per call once the shapes have been seen.
typedef struct cu_ctx {
	int device;
	int sm_count;
	cudaStream_t stream;
	cublasHandle_t blas;
	cublasLtHandle_t lt;
	void *work;
	size_t work_bytes;
	// The largest tile of dequantised weight rows (64 MiB; OWL_CUDA_BAND_BYTES
	// sets it smaller, so that the tests take many bands of small matrices).
	size_t band_bytes;
	// Errors found on the device (a token id outside the table, a target
	// outside the vocabulary) are flagged in mapped host memory and reported
	// by the next synchronize: a kernel cannot return an error.
	int *flags;
	int *flags_dev;
	// Pinned host memory for the few values ops hand to the host (sampled
	// tokens, losses).
	void *pinned;
	size_t pinned_bytes;
	// Counts the reallocations of work and pinned: a graph recorded before
	// one names freed memory (graph.cu).
	unsigned long memory_generation;
	// Bytes in the instance's buffers now (mem_info); one thread at a time
	// drives an instance.
	size_t buffer_bytes;
} cu_ctx;

enum {
	CU_FLAG_BAD_ID = 0, // embedding: id outside the table
	CU_FLAG_BAD_TARGET, // cross_entropy: target outside the vocabulary
	CU_FLAG_COUNT,
};

static inline cu_ctx *cu_of(kernels_backend *be) { return (cu_ctx *)be->context; }

// owl_err filled without the host program's owl_err_set: the object is
// loaded into owl with dlopen and depends on nothing of it.
static inline int cu_err_set(owl_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static inline int cu_err_set(owl_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

const char *cu_blas_error(cublasStatus_t s);

// kernels_row_bytes and kernels_dtype_name of dtype.c, again: the object
// is loaded into programs that need not export them.
static inline size_t cu_row_bytes(kernels_dtype t, int cols) { return kernels_dtype_row_bytes(t, cols); }
static inline const char *cu_dtype_name(kernels_dtype t) { return kernels_dtype_short_name(t); }

// The call's failure as "op: what failed: the runtime's words".
#define CU_TRY(op, call)                                                                     \
	do {                                                                                 \
		cudaError_t e_ = (call);                                                     \
		if (e_ != cudaSuccess)                                                       \
			return cu_err_set(err, OWL_EFAIL, "cuda %s: %s: %s", op, #call,      \
					  cudaGetErrorString(e_));                           \
	} while (0)

#define CU_BLAS(op, call)                                                                    \
	do {                                                                                 \
		cublasStatus_t s_ = (call);                                                  \
		if (s_ != CUBLAS_STATUS_SUCCESS)                                             \
			return cu_err_set(err, OWL_EFAIL, "cuda %s: %s: %s", op, #call,      \
					  cu_blas_error(s_));                                \
	} while (0)

// After a launch: a bad configuration shows here, a fault at the next sync.
#define CU_LAUNCHED(op) CU_TRY(op, cudaGetLastError())

// At least bytes of workspace (device memory of the instance), valid until
// the next op on the same instance. Growing it waits for the stream.
int cu_work(cu_ctx *c, size_t bytes, void **out, owl_err *err);
// At least bytes of pinned host memory, the same way.
int cu_pinned(cu_ctx *c, size_t bytes, void **out, owl_err *err);

// Blocks for n elements of a grid-stride loop.
static inline unsigned cu_blocks(size_t n, unsigned threads)
{
	size_t b = (n + threads - 1) / threads;
#ifdef OWL_CUDA_EMU
	const size_t most = 3; // the emulator's blocks are host threads: few, each looping
#else
	const size_t most = 65535u * 16;
#endif
	return b > most ? (unsigned)most : (unsigned)(b ? b : 1);
}

// ---- reading the stored types on the device ------------------------------

// The readers are host functions too, so that the object can decode rows
// on the host for the tests of a machine without a device
// (owl_cuda_host_dequant_row, backend.cu).
__host__ __device__ __forceinline__ float cu_f16(const uint8_t *p)
{
	return __half2float(__ushort_as_half(*(const unsigned short *)p));
}

__host__ __device__ __forceinline__ float cu_bf16(const uint8_t *p)
{
	unsigned bits = (unsigned)*(const unsigned short *)p << 16;
#ifdef __CUDA_ARCH__
	return __uint_as_float(bits);
#else
	float f;
	memcpy(&f, &bits, 4);
	return f;
#endif
}

// Element c of a row in the stored layout (kernels.h's types, the blocks as
// GGUF lays them out: dtype.c and common/gguf.c are the host's readers).
__host__ __device__ __forceinline__ float cu_elem(int type, const uint8_t *row, int c)
{
	switch (type) {
	case KERNELS_F32:
		return ((const float *)row)[c];
	case KERNELS_F16:
		return cu_f16(row + 2 * c);
	case KERNELS_BF16:
		return cu_bf16(row + 2 * c);
	case KERNELS_Q8_0: {
		const uint8_t *b = row + (c / 32) * 34;
		return cu_f16(b) * (float)(int8_t)b[2 + c % 32];
	}
	case KERNELS_Q4_0: {
		const uint8_t *b = row + (c / 32) * 18;
		int i = c % 32, q = i < 16 ? (b[2 + i] & 0xF) : (b[2 + i - 16] >> 4);
		return cu_f16(b) * (float)(q - 8);
	}
	case KERNELS_Q4_1: {
		const uint8_t *b = row + (c / 32) * 20;
		int i = c % 32, q = i < 16 ? (b[4 + i] & 0xF) : (b[4 + i - 16] >> 4);
		return cu_f16(b) * (float)q + cu_f16(b + 2);
	}
	case KERNELS_Q4_K: {
		// 256 values: 4 chunks of 64, each two sub-blocks of 32 with 6-bit
		// scales and mins packed in 12 bytes.
		const uint8_t *b = row + (c / 256) * 144, *sc = b + 4;
		int e = c % 256, chunk = e / 64, within = e % 64, l = within % 32;
		int is = 2 * chunk + (within >= 32);
		int s, m;
		if (is < 4) {
			s = sc[is] & 63;
			m = sc[is + 4] & 63;
		} else {
			s = (sc[is + 4] & 0xF) | ((sc[is - 4] >> 6) << 4);
			m = (sc[is + 4] >> 4) | ((sc[is] >> 6) << 4);
		}
		uint8_t qb = b[16 + 32 * chunk + l];
		int q = within < 32 ? (qb & 0xF) : (qb >> 4);
		return cu_f16(b) * (float)s * (float)q - cu_f16(b + 2) * (float)m;
	}
	case KERNELS_Q6_K: {
		// 256 values: two halves of 128, each four groups of 32 whose low
		// 4 bits are in ql and high 2 bits in qh, 16 signed 8-bit scales.
		const uint8_t *b = row + (c / 256) * 210;
		int e = c % 256, h = e / 128, within = e % 128, g = within / 32, l = within % 32;
		const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
		const int8_t *sc = (const int8_t *)(b + 192) + 8 * h;
		int lo = (g & 1) ? ql[l + 32] : ql[l];
		lo = g < 2 ? (lo & 0xF) : (lo >> 4);
		int hi = (qh[l] >> (2 * g)) & 3;
		int q = (lo | (hi << 4)) - 32;
		return cu_f16(b + 208) * (float)sc[l / 16 + 2 * g] * (float)q;
	}
	}
	return 0.0f;
}

// ---- ops, one file each, gathered in backend.cu's table -------------------

#define CU_OP extern "C" __attribute__((visibility("hidden")))
// The object's entry points for engine/gpu.c (everything else is hidden).
#define CU_EXPORT extern "C" __attribute__((visibility("default")))

// matmul.cu
CU_OP int cu_matmul(kernels_backend *be, float *y, const float *x, const kernels_weight *w, int n,
		    owl_err *err);
CU_OP int cu_matvec_multi(kernels_backend *be, float *const *ys, const kernels_weight *const *ws,
			  int k, const float *x, owl_err *err);
CU_OP int cu_matmul_widened(kernels_backend *be, float *y, const float *x, const kernels_weight *w,
			    int n, const kernels_scratch *scratch, owl_err *err);
CU_OP int cu_matmul_backward(kernels_backend *be, float *dx, const float *dy,
			     const kernels_weight *w, int n, int accumulate,
			     const kernels_scratch *scratch, owl_err *err);
// embedding.cu
CU_OP int cu_embedding(kernels_backend *be, float *out, const kernels_weight *table,
		       const int32_t *ids, int n, owl_err *err);
CU_OP int cu_embedding_backward(kernels_backend *be, float *dtable, const float *dy,
				const int32_t *ids, int n, int dim, owl_err *err);
// rmsnorm.cu
CU_OP int cu_rmsnorm(kernels_backend *be, float *out, const float *x, const float *weight,
		     int rows, int dim, float eps, owl_err *err);
CU_OP int cu_rmsnorm_backward(kernels_backend *be, float *dx, float *dweight, const float *dout,
			      const float *x, const float *weight, int rows, int dim, float eps,
			      owl_err *err);
// rope.cu
CU_OP int cu_rope(kernels_backend *be, float *x, int n_tok, const int32_t *pos, int n_heads,
		  int head_dim, const float *inv_freq, kernels_rope_layout layout, owl_err *err);
CU_OP int cu_rope_backward(kernels_backend *be, float *dx, int n_tok, const int32_t *pos,
			   int n_heads, int head_dim, const float *inv_freq,
			   kernels_rope_layout layout, owl_err *err);
// add.cu
CU_OP int cu_add(kernels_backend *be, float *y, const float *x, size_t n, owl_err *err);
CU_OP int cu_add_rows(kernels_backend *be, float *y, const float *b, int rows, int dim,
		      owl_err *err);
// kv_store.cu
CU_OP int cu_kv_store(kernels_backend *be, const kernels_kv_layer *kv, const float *k,
		      const float *v, const int32_t *slots, int n_tok, owl_err *err);
// attention.cu
CU_OP int cu_attention(kernels_backend *be, float *out, const float *q,
		       const kernels_attn_seg *segs, int nseg, const kernels_kv_layer *kv,
		       int n_heads, int head0, int group, int kv_head0, int head_dim, int window,
		       const kernels_scratch *scratch, owl_err *err);
// attention_packed.cu
CU_OP int cu_attention_packed(kernels_backend *be, float *out, const float *q, const float *k,
			      const float *v, const kernels_attn_seg *segs, int nseg, int n_heads,
			      int n_kv_heads, int head_dim, int window,
			      const kernels_scratch *scratch, owl_err *err);
CU_OP int cu_attention_backward(kernels_backend *be, float *dq, float *dk, float *dv,
				const float *dout, const float *q, const float *k, const float *v,
				const kernels_attn_seg *segs, int nseg, int n_heads,
				int n_kv_heads, int head_dim, int window,
				const kernels_scratch *scratch, owl_err *err);
// swiglu.cu
CU_OP int cu_swiglu(kernels_backend *be, float *gate, const float *up, size_t n, owl_err *err);
CU_OP int cu_swiglu_backward(kernels_backend *be, float *dgate, float *dup, const float *dout,
			     const float *gate, const float *up, size_t n, owl_err *err);
// cross_entropy.cu
CU_OP int cu_cross_entropy(kernels_backend *be, float *loss, const float *logits,
			   const int32_t *targets, int rows, int vocab, owl_err *err);
CU_OP int cu_cross_entropy_backward(kernels_backend *be, float *dlogits, const float *logits,
				    const int32_t *targets, int rows, int vocab, float scale,
				    double *loss_sum, int64_t *count, owl_err *err);
// lora.cu
CU_OP int cu_lora(kernels_backend *be, float *y, const float *x, int n, int in, int out, int r,
		  const float *a, int lda, const float *b, int ldb, float scale, float *tmp,
		  owl_err *err);
CU_OP int cu_lora_backward(kernels_backend *be, float *dx, float *da, float *db, const float *dy,
			   const float *x, int n, int in, int out, int r, const float *a, int lda,
			   const float *b, int ldb, float scale, float *tmp, owl_err *err);
// adamw.cu
CU_OP int cu_adamw_step(kernels_backend *be, float *p, const float *g, float *m, float *v,
			size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
			int step, owl_err *err);
// dropout.cu
CU_OP int cu_dropout(kernels_backend *be, float *y, const float *x, size_t n, uint64_t seed,
		     float p, int accumulate, owl_err *err);
// sample.cu
CU_OP int cu_sample(kernels_backend *be, int32_t *out_host, const float *logits, int rows,
		    int vocab, const kernels_sample_row *params_host, owl_err *err);
// graph.cu
CU_OP int cu_graph_begin(kernels_backend *be, owl_err *err);
CU_OP int cu_graph_end(kernels_backend *be, kernels_graph **out, owl_err *err);
CU_OP int cu_graph_launch(kernels_backend *be, kernels_graph *g, int *stale, owl_err *err);
CU_OP void cu_graph_free(kernels_backend *be, kernels_graph *g);

#endif
