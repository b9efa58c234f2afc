/* The CPU backend's LoRA op: two OpenBLAS GEMMs through the rank-r
 * bottleneck, x A^T into the caller's scratch, then scale * tmp B^T added to
 * y. Both are small beside the base projection (r is a few dozen at most),
 * so they run on the calling thread, as the rest of the backend keeps
 * OpenBLAS single-threaded inside OpenMP's threads. */
/* Kernels know no models: only the kernel layer's interface. */
#include "engine/kernels/kernels.h"

#include <cblas.h>

int cpu_lora(float *y, const float *x, int n, int in, int out, int r, const float *a, int lda,
	     const float *b, int ldb, float scale, float *tmp, owl_err *err)
{
	if (n <= 0 || in <= 0 || out <= 0 || r <= 0 || lda < in || ldb < r)
		return owl_err_set(err, OWL_EUSAGE, "lora: bad shapes n %d in %d out %d r %d lda %d "
				   "ldb %d", n, in, out, r, lda, ldb);
	openblas_set_num_threads(1);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, r, in, 1.0f, x, in, a, lda, 0.0f,
		    tmp, r);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, r, scale, tmp, r, b, ldb, 1.0f,
		    y, out);
	return 0;
}
