/* Private to engine/: the model's weights as typed views into mapped files,
 * and the CPU kernels the forward pass uses. */
#ifndef OWL_ENGINE_INTERNAL_H
#define OWL_ENGINE_INTERNAL_H

#include "engine.h"
#include "common/gguf.h"
#include "common/safetensors.h"
#include "engine/kernels/kernels.h"

/* Short names inside the engine for the kernel layer's weight views. */
typedef kernels_dtype wtype;
typedef kernels_weight wmat;
#define W_F32 KERNELS_F32
#define W_F16 KERNELS_F16
#define W_BF16 KERNELS_BF16
#define W_Q8_0 KERNELS_Q8_0
#define W_Q4_0 KERNELS_Q4_0
#define W_Q4_1 KERNELS_Q4_1
#define W_Q4_K KERNELS_Q4_K
#define W_Q6_K KERNELS_Q6_K
#define W_Q8_0_R16 KERNELS_Q8_0_R16
#define W_Q4_0_R16 KERNELS_Q4_0_R16
#define W_Q4_1_R16 KERNELS_Q4_1_R16
#define W_F16_R16 KERNELS_F16_R16
#define W_BF16_R16 KERNELS_BF16_R16
#define W_F32_R16 KERNELS_F32_R16

/* A vector (norm weight, bias) converted to f32 at load: small, owned. */
typedef struct layer {
	float *attn_norm, *ffn_norm;
	float *bq, *bk, *bv; /* Qwen2 biases, or NULL */
	wmat wq, wk, wv, wo, w_gate, w_up, w_down;
} layer;

struct engine_model {
	engine_model_info info;
	kernels_backend *be;       /* rank 0's backend: the ops outside the ranks (output layer) */
	kernels_backend *ranks[16]; /* one backend instance per tensor-parallel rank */
	kernels_comm comm;         /* how the tp ranks all-reduce */
	layer *layers;       /* as loaded: views into the files */
	layer *rank_layers[16]; /* each rank's shards prepared by its backend, and its
				 * own copies of the norms and of its biases (only its
				 * heads' part), in backend memory */
	float *rank_inv_freq[16];
	float *rank_out_norm;   /* rank 0's */
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

/* Tensor-parallel rank r's query heads [h0, h0 + n_heads/tp) read the kv
 * heads [kv0, kv0 + nkv) (replicated across ranks when tp > n_kv_heads). */
void engine_rank_heads(const engine_model_info *in, int r, int *h0, int *kv0, int *nkv);

/* ---- the CPU backend's own functions (engine/kernels/cpu/ops.c) ------------ */

size_t wtype_row_bytes(wtype t, int cols); /* 0 when cols do not fill whole blocks */
const char *wtype_name(wtype t);
/* One row (cols elements) to f32. */
void w_row_to_f32(const wmat *w, int row, float *dst);
/* y[r] = dot(W[r, :], x) for r in [0, rows). OpenMP over rows. */
void w_matvec(const wmat *w, const float *x, float *y);
/* The same for k matrices sharing x (q/k/v, gate/up): one pass of the pool. */
void w_matvec_multi(const wmat *const *ws, float *const *ys, int k, const float *x);
/* Y[n, rows] = X[n, cols] W^T: repacked weights through their 16-row
 * kernels, Q8_0/Q4_0/Q4_1 in integers (qgemm), the rest through OpenBLAS
 * sgemm, non-f32 weights widened a band of rows at a time. */
void w_matmul(const wmat *w, const float *x, float *y, int n);
/* The same in integers for Q8_0/Q4_0/Q4_1 (qgemm.c, int256.c);
 * qgemm_supported says whether this weight and token count can take it. */
int qgemm_supported(const wmat *w, int n);
void qgemm(const wmat *w, const float *x, float *y, int n);
/* Kernel paths of the CPU backend (cpupath.c), in order of preference. */
typedef enum cpu_path {
	CPU_PATH_AVX2 = 0,   /* integer: maddubs; float: AVX2/FMA/F16C (the baseline) */
	CPU_PATH_AVXVNNI,    /* integer: 256-bit vpdpbusd (AVX-VNNI); float: AVX2 */
	CPU_PATH_AVX512,     /* integer: maddubs; float: AVX-512 */
	CPU_PATH_AVX512VNNI, /* integer: AVX-512 VNNI; float: AVX-512 */
	CPU_PATH_COUNT
} cpu_path;
/* The path this process runs: OWL_CPU_PATH if this CPU supports it, else the
 * best it supports (without AVX-512 under OWL_NO_AVX512=1). Chosen once. */
cpu_path cpu_path_get(void);
const char *cpu_path_name(cpu_path p);
int cpu_path_supported(cpu_path p);
/* OWL_EUSAGE naming the OWL_CPU_PATH that cannot be honoured, else 0. */
int cpu_path_check(owl_err *err);
/* 0 under OWL_NO_QGEMM=1: quantised prompts take the exact f32 path and
 * Q8_0/Q4_0/Q4_1 are not repacked. */
int cpu_int_kernels(void);
/* The running path is avx512vnni and integer kernels are on. */
int cpu_has_vnni(void);
/* The running path uses AVX-512 (avx512 or avx512vnni). */
int cpu_has_avx512(void);
/* Activations of n tokens rounded to Q8 blocks: q [n][cols] int8, and per
 * block d (scale) and s (sum of q). Owned: qact_release frees them. */
typedef struct qact {
	int8_t *q;
	float *d;
	int32_t *s;
	int cols, nb;
} qact;
void qact_init(qact *a, const float *x, int n, int cols);
void qact_release(qact *a);
/* Row-interleaved weights (engine/kernels/cpu/repack.c): Q8_0/Q4_0/Q4_1 repacked
 * once at load so that one vpdpbusd multiplies 16 rows by 4 activations, and
 * f16/bf16/f32 so that one FMA multiplies 16 rows by one activation. */
int w_is_r16(const wmat *w);
/* For a repacked w: f16/bf16/f32 groups (h16_*), else integer groups (r16_*). */
int w_r16_is_float(const wmat *w);
int w_repack_supported(const wmat *w);
/* Fills *out with the repacked copy; *owned is its memory, the caller's to
 * free. drop_source: w is a read-only file mapping whose pages may be dropped
 * from the process as they are copied (never for heap memory: dropped heap
 * pages read back as zeros). */
int w_repack(const wmat *w, int drop_source, wmat *out, uint8_t **owned, owl_err *err);
void r16_gemm(const wmat *w, const qact *a, int n, float *y);      /* OpenMP inside */
void r16_gemv_groups(const wmat *w, const qact *a, int g0, int g1, float *y); /* one thread */
/* The same for f16/bf16/f32 groups, against f32 activations x [n][cols]. */
void h16_gemm(const wmat *w, const float *x, int n, float *y);    /* OpenMP inside */
void h16_gemv_groups(const wmat *w, const float *x, int g0, int g1, float *y); /* one thread */
/* 256-bit integer kernels (int256.c), _avx2 with maddubs, _avxvnni with
 * AVX-VNNI: file-layout tiles of rows [r0, r1) against all n tokens, and
 * 16-row groups [g0, g1) against tokens [j0, j1); one thread each. */
void qgemm_rows_avx2(const wmat *w, const qact *a, int n, float *y, int r0, int r1);
void qgemm_rows_avxvnni(const wmat *w, const qact *a, int n, float *y, int r0, int r1);
void r16_groups_avx2(const wmat *w, const qact *a, int j0, int j1, int g0, int g1, float *y);
void r16_groups_avxvnni(const wmat *w, const qact *a, int j0, int j1, int g0, int g1, float *y);
/* AVX2 dot product and y += a*x (the compiler keeps float sums in order). */
float vec_dot(const float *a, const float *b, int n);
void vec_axpy(float *y, float a, const float *x, int n);
void rmsnorm(float *out, const float *x, const float *w, int dim, float eps);

#endif
