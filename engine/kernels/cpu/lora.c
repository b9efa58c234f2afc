/* The CPU backend's LoRA op: two OpenBLAS GEMMs through the rank-r
 * bottleneck, x A^T into the caller's scratch, then scale * tmp B^T added to
 * y. As elsewhere in the backend, OpenBLAS runs single-threaded inside
 * OpenMP's threads: each thread takes a band of the rank for the first GEMM
 * and a band of output columns for the second, so the adapter scales with
 * the threads the base projection uses; tiny products stay on one thread. */
/* Kernels know no models: only the kernel layer's interface. */
#include "engine/kernels/kernels.h"

#include <cblas.h>
#include <omp.h>

int cpu_lora(kernels_backend *be, float *y, const float *x, int n, int in, int out, int r,
	     const float *a, int lda, const float *b, int ldb, float scale, float *tmp, owl_err *err)
{
	if (n <= 0 || in <= 0 || out <= 0 || r <= 0 || lda < in || ldb < r)
		return owl_err_set(err, OWL_EUSAGE, "lora: bad shapes n %d in %d out %d r %d lda %d "
				   "ldb %d", n, in, out, r, lda, ldb);
	size_t work = (size_t)n * r * ((size_t)in + (size_t)out);
#pragma omp parallel if (work >= 65536)
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		int k0 = (int)((long)r * t / nt), k1 = (int)((long)r * (t + 1) / nt);
		if (k1 > k0)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, k1 - k0, in, 1.0f, x, in,
				    a + (size_t)k0 * lda, lda, 0.0f, tmp + k0, r);
#pragma omp barrier
		int o0 = (int)((long)out * t / nt), o1 = (int)((long)out * (t + 1) / nt);
		if (o1 > o0)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, o1 - o0, r, scale, tmp, r,
				    b + (size_t)o0 * ldb, ldb, 1.0f, y + o0, out);
	}
	return 0;
}
