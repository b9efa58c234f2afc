// LoRA, unmerged, and its backward: cuBLAS products through the rank-r
// bottleneck with A and B read in place through their row strides (lda,
// ldb: a column band of A, a row band of B), in the caller's tmp.
// Row-major [rows, cols] with stride ld is column-major [cols, rows] with
// leading dimension ld, so each product below is written for the
// transposes.
#include "engine/kernels/cuda/cuda.cuh"

static int lora_shapes(int n, int in, int out, int r, int lda, int ldb, const char *op,
		       owl_err *err)
{
	if (n < 0 || in <= 0 || out <= 0 || r <= 0 || lda < in || ldb < r)
		return cu_err_set(err, OWL_EUSAGE, "%s: bad shapes n %d in %d out %d r %d lda %d ldb %d",
				  op, n, in, out, r, lda, ldb);
	return 0;
}

extern "C" int cu_lora(kernels_backend *be, float *y, const float *x, int n, int in, int out, int r,
		       const float *a, int lda, const float *b, int ldb, float scale, float *tmp,
		       owl_err *err)
{
	cu_ctx *c = cu_of(be);
	int rc = lora_shapes(n, in, out, r, lda, ldb, "lora", err);
	if (rc || n == 0)
		return rc;
	CU_TRY("lora", cudaSetDevice(c->device));
	const float one = 1.0f, zero = 0.0f;
	// tmp[n, r] = x A^T
	CU_BLAS("lora", cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, r, n, in, &one, a, lda, x, in,
				    &zero, tmp, r));
	// y[n, out] += scale tmp B^T
	CU_BLAS("lora", cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, r, &scale, b, ldb, tmp,
				    r, &one, y, out));
	return 0;
}

extern "C" int cu_lora_backward(kernels_backend *be, float *dx, float *da, float *db,
				const float *dy, const float *x, int n, int in, int out, int r,
				const float *a, int lda, const float *b, int ldb, float scale,
				float *tmp, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	int rc = lora_shapes(n, in, out, r, lda, ldb, "lora_backward", err);
	if (rc || n == 0)
		return rc;
	CU_TRY("lora_backward", cudaSetDevice(c->device));
	const float one = 1.0f, zero = 0.0f;
	float *xa = tmp, *g = tmp + (size_t)n * r;
	// xa[n, r] = x A^T; g[n, r] = scale dy B
	CU_BLAS("lora_backward", cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, r, n, in, &one, a, lda,
					     x, in, &zero, xa, r));
	CU_BLAS("lora_backward", cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, r, n, out, &scale, b,
					     ldb, dy, out, &zero, g, r));
	// da[r, in] += g^T x
	CU_BLAS("lora_backward", cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, in, r, n, &one, x, in,
					     g, r, &one, da, lda));
	// db[out, r] += scale dy^T xa
	CU_BLAS("lora_backward", cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_T, r, out, n, &scale, xa,
					     r, dy, out, &one, db, ldb));
	// dx[n, in] += g A
	if (dx)
		CU_BLAS("lora_backward", cublasSgemm(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, in, n, r, &one, a,
						     lda, g, r, &one, dx, in));
	return 0;
}
