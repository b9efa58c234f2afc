/* Private to the CPU backend (engine/kernels/cpu/): its kernels, its
 * kernel paths, and its own weight layout. Knows no models. */
#ifndef OWL_KERNELS_CPU_H
#define OWL_KERNELS_CPU_H

#include "engine/kernels/knames.h"

/* kernels_weight.layout of the CPU's 16-row groups (repack.c): rows in
 * groups of 16. Q8_0 / Q4_0 / Q4_1: per group and block of 32 columns, the
 * 16 rows' f16 scales (Q4_1: then the 16 mins), then the quants
 * interleaved 4 bytes per row (Q8_0 stored as q+128, unsigned; Q4_0 as the
 * packed nibble bytes). f16 / bf16 / f32: per group, for each column, the
 * 16 rows' values side by side. Same bytes per row as the stored layout,
 * so row_bytes keeps its meaning; a view must start on a 16-row group and
 * take whole rows. */
enum { CPU_LAYOUT_R16 = 1 };

/* w is in 16-row groups and of type t. */
static inline int w_r16_of(const wmat *w, wtype t)
{
	return w->layout == CPU_LAYOUT_R16 && w->type == t;
}

/* One row (cols elements) to f32, in any layout the CPU prepares. */
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
