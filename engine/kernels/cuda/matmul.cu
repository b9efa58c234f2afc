// The projections: y = x W^T (matmul, matvec_multi), the exact widened
// product of training (matmul_widened) and dx = dy W (matmul_backward).
//
// f32 weights go to cublasSgemm; f16 and bf16 to cublasGemmEx with x
// converted to the weight's type in the workspace and f32 accumulation.
// Quantised weights (GGUF blocks) are never expanded whole: a few tokens
// (decoding) take a matrix-vector kernel that decodes each block in
// registers; more take bands of rows dequantised into an f16 tile of the
// workspace, one GemmEx per band. Row-major y[n, rows] is column-major
// y^T[rows, n], so every GEMM below is W (column-major [cols, rows], ld =
// its row stride) transposed times x^T.
#include "engine/kernels/cuda/cuda.cuh"

enum {
	MV_MAX_N = 8,          // tokens the matrix-vector kernel takes at once
	MV_WARPS = 4,          // rows per block of the matrix-vector kernel: one warp each
};

static int is_quant(int t) { return t >= KERNELS_Q8_0; }

static int check_weight(const kernels_weight *w, const char *op, owl_err *err)
{
	if (w->layout)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: a weight in another backend's layout %d "
				  "(prepare it with this backend)", op, w->layout);
	if (w->type < KERNELS_F32 || w->type > KERNELS_Q6_K)
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: weight type %d", op, (int)w->type);
	if (!cu_row_bytes(w->type, w->cols))
		return cu_err_set(err, OWL_EUSAGE, "cuda %s: a %s weight of %d columns", op,
				  cu_dtype_name(w->type), w->cols);
	return 0;
}

// One warp per weight row, NT tokens at a time: lane l takes columns l,
// l + 32, ...; each element is decoded once and used for every token.
template <int NT>
__global__ void mv_kernel(float *y, const float *x, const uint8_t *w, size_t row_bytes, int type,
			  int rows, int cols)
{
	int row = blockIdx.x * MV_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	if (row >= rows)
		return;
	const uint8_t *wr = w + (size_t)row * row_bytes;
	float acc[NT];
#pragma unroll
	for (int t = 0; t < NT; t++)
		acc[t] = 0.0f;
	for (int c = lane; c < cols; c += 32) {
		float wv = cu_elem(type, wr, c);
#pragma unroll
		for (int t = 0; t < NT; t++)
			acc[t] += wv * x[(size_t)t * cols + c];
	}
#pragma unroll
	for (int t = 0; t < NT; t++) {
		float s = acc[t];
		for (int o = 16; o > 0; o /= 2)
			s += __shfl_xor_sync(0xffffffffu, s, o);
		if (lane == 0)
			y[(size_t)t * rows + row] = s;
	}
}

static int launch_mv(cu_ctx *c, float *y, const float *x, const kernels_weight *w, int n,
		     owl_err *err)
{
	dim3 grid((unsigned)((w->rows + MV_WARPS - 1) / MV_WARPS)), block(32 * MV_WARPS);
	// y rows are w->rows apart; n tokens of at most MV_MAX_N in one launch
	// read each weight element once.
	switch (n) {
#define MV_CASE(k)                                                                          \
	case k:                                                                             \
		CU_LAUNCH(mv_kernel<k>, grid, block, 0, c->stream)(y, x, w->data, w->row_bytes,     \
							    (int)w->type, w->rows, w->cols); \
		break;
		MV_CASE(1) MV_CASE(2) MV_CASE(3) MV_CASE(4) MV_CASE(5) MV_CASE(6) MV_CASE(7) MV_CASE(8)
#undef MV_CASE
	default:
		return cu_err_set(err, OWL_EUSAGE, "cuda matmul: %d tokens for the vector kernel", n);
	}
	CU_LAUNCHED("matmul");
	return 0;
}

// Rows [r0, r0 + nr) of w, decoded into tile [nr][cols] of T.
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v)
{
	return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void widen_kernel(T *tile, const uint8_t *w, size_t row_bytes, int type, int r0,
			     int nr, int cols)
{
	size_t total = (size_t)nr * cols;
	for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
	     e += (size_t)gridDim.x * blockDim.x) {
		int r = (int)(e / cols), col = (int)(e % cols);
		tile[e] = from_f32<T>(cu_elem(type, w + (size_t)(r0 + r) * row_bytes, col));
	}
}

template <typename T>
__global__ void convert_kernel(T *dst, const float *src, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		dst[i] = from_f32<T>(src[i]);
}

template <typename T>
static int widen_rows(cu_ctx *c, T *tile, const kernels_weight *w, int r0, int nr, owl_err *err)
{
	size_t total = (size_t)nr * w->cols;
	CU_LAUNCH(widen_kernel<T>, cu_blocks(total, 256), 256, 0, c->stream)(tile, w->data, w->row_bytes,
								      (int)w->type, r0, nr, w->cols);
	CU_LAUNCHED("widen");
	return 0;
}

// Rows per band so that a tile of elem-byte elements stays within the
// instance's band_bytes.
static int band_rows(const cu_ctx *c, const kernels_weight *w, size_t elem)
{
	size_t per = (size_t)w->cols * elem;
	size_t b = c->band_bytes / per;
	if (b < 1)
		b = 1;
	return b > (size_t)w->rows ? w->rows : (int)b;
}

extern "C" int cu_matmul(kernels_backend *be, float *y, const float *x, const kernels_weight *w,
			 int n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	int rc = check_weight(w, "matmul", err);
	if (rc)
		return rc;
	if (n <= 0 || w->rows <= 0)
		return 0;
	CU_TRY("matmul", cudaSetDevice(c->device));
	const float one = 1.0f, zero = 0.0f;
	if (w->type == KERNELS_F32) {
		CU_BLAS("matmul", cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols,
					      &one, (const float *)w->data, (int)(w->row_bytes / 4), x,
					      w->cols, &zero, y, w->rows));
		return 0;
	}
	if (is_quant(w->type) && n <= MV_MAX_N)
		return launch_mv(c, y, x, w, n, err);
	// x in 16 bits: the weight's own type, f16 for dequantised bands.
	cudaDataType_t t16 = w->type == KERNELS_BF16 ? CUDA_R_16BF : CUDA_R_16F;
	size_t xbytes = (size_t)n * w->cols * 2;
	xbytes = (xbytes + 255) / 256 * 256;
	int band = is_quant(w->type) ? band_rows(c, w, 2) : w->rows;
	void *work;
	if ((rc = cu_work(c, xbytes + (is_quant(w->type) ? (size_t)band * w->cols * 2 : 0), &work,
			  err)))
		return rc;
	size_t nx = (size_t)n * w->cols;
	if (t16 == CUDA_R_16BF)
		CU_LAUNCH(convert_kernel<__nv_bfloat16>, cu_blocks(nx, 256), 256, 0, c->stream)(
			(__nv_bfloat16 *)work, x, nx);
	else
		CU_LAUNCH(convert_kernel<__half>, cu_blocks(nx, 256), 256, 0, c->stream)((__half *)work, x, nx);
	CU_LAUNCHED("matmul");
	if (!is_quant(w->type)) {
		CU_BLAS("matmul", cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols,
					       &one, w->data, t16, (int)(w->row_bytes / 2), work, t16,
					       w->cols, &zero, y, CUDA_R_32F, w->rows, CUBLAS_COMPUTE_32F,
					       CUBLAS_GEMM_DEFAULT));
		return 0;
	}
	__half *tile = (__half *)((uint8_t *)work + xbytes);
	for (int r0 = 0; r0 < w->rows; r0 += band) {
		int nr = w->rows - r0 < band ? w->rows - r0 : band;
		if ((rc = widen_rows<__half>(c, tile, w, r0, nr, err)))
			return rc;
		CU_BLAS("matmul", cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, w->cols, &one,
					       tile, CUDA_R_16F, w->cols, work, CUDA_R_16F, w->cols,
					       &zero, y + r0, CUDA_R_32F, w->rows, CUBLAS_COMPUTE_32F,
					       CUBLAS_GEMM_DEFAULT));
	}
	return 0;
}

// Host arrays of k weights and outputs; each product is one token's.
extern "C" int cu_matvec_multi(kernels_backend *be, float *const *ys,
			       const kernels_weight *const *ws, int k, const float *x, owl_err *err)
{
	for (int i = 0; i < k; i++) {
		int rc = cu_matmul(be, ys[i], x, ws[i], 1, err);
		if (rc)
			return rc;
	}
	return 0;
}

// y = x W^T with W widened to f32: bands of f32 rows, cublasSgemm in
// exact f32 (no TF32), the product training differentiates. The scratch
// of the CPU's contract is not used: the instance's workspace is.
extern "C" int cu_matmul_widened(kernels_backend *be, float *y, const float *x,
				 const kernels_weight *w, int n, const kernels_scratch *scratch,
				 owl_err *err)
{
	cu_ctx *c = cu_of(be);
	int rc = check_weight(w, "matmul_widened", err);
	if (rc)
		return rc;
	if (n <= 0 || w->rows <= 0)
		return 0;
	CU_TRY("matmul_widened", cudaSetDevice(c->device));
	const float one = 1.0f, zero = 0.0f;
	if (w->type == KERNELS_F32) {
		CU_BLAS("matmul_widened",
			cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one,
				    (const float *)w->data, (int)(w->row_bytes / 4), x, w->cols, &zero,
				    y, w->rows));
		return 0;
	}
	int band = band_rows(c, w, 4);
	void *work;
	if ((rc = cu_work(c, (size_t)band * w->cols * 4, &work, err)))
		return rc;
	float *tile = (float *)work;
	for (int r0 = 0; r0 < w->rows; r0 += band) {
		int nr = w->rows - r0 < band ? w->rows - r0 : band;
		if ((rc = widen_rows<float>(c, tile, w, r0, nr, err)))
			return rc;
		CU_BLAS("matmul_widened", cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, w->cols,
						      &one, tile, w->cols, x, w->cols, &zero, y + r0,
						      w->rows));
	}
	return 0;
}

// dx[n, cols] (+)= dy[n, rows] W: column-major dx^T = W_cm dy^T, summed
// over bands of rows (each band's part of the inner dimension).
extern "C" int cu_matmul_backward(kernels_backend *be, float *dx, const float *dy,
				  const kernels_weight *w, int n, int accumulate,
				  const kernels_scratch *scratch, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	int rc = check_weight(w, "matmul_backward", err);
	if (rc)
		return rc;
	if (n <= 0)
		return 0;
	CU_TRY("matmul_backward", cudaSetDevice(c->device));
	const float one = 1.0f, zero = 0.0f;
	if (w->rows <= 0) {
		if (!accumulate)
			CU_TRY("matmul_backward",
			       cudaMemsetAsync(dx, 0, (size_t)n * w->cols * sizeof(float), c->stream));
		return 0;
	}
	if (w->type == KERNELS_F32) {
		CU_BLAS("matmul_backward",
			cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, w->cols, n, w->rows, &one,
				    (const float *)w->data, (int)(w->row_bytes / 4), dy, w->rows,
				    accumulate ? &one : &zero, dx, w->cols));
		return 0;
	}
	int band = band_rows(c, w, 4);
	void *work;
	if ((rc = cu_work(c, (size_t)band * w->cols * 4, &work, err)))
		return rc;
	float *tile = (float *)work;
	for (int r0 = 0; r0 < w->rows; r0 += band) {
		int nr = w->rows - r0 < band ? w->rows - r0 : band;
		if ((rc = widen_rows<float>(c, tile, w, r0, nr, err)))
			return rc;
		CU_BLAS("matmul_backward",
			cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, w->cols, n, nr, &one, tile, w->cols,
				    dy + r0, w->rows, (accumulate || r0 > 0) ? &one : &zero, dx,
				    w->cols));
	}
	return 0;
}
