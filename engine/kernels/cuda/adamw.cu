// AdamW as torch.optim.AdamW's single-tensor path orders it (the CPU's
// adamw_step is the reference).
#include "engine/kernels/cuda/cuda.cuh"

#include <math.h>

__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float lr,
			     float beta1, float beta2, float eps, float wd, float step_size,
			     float bc2_sqrt)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float pi = p[i] * (1.0f - lr * wd), gi = g[i];
		float mi = m[i] + (gi - m[i]) * (1.0f - beta1);
		float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
		float denom = sqrtf(vi) / bc2_sqrt + eps;
		p[i] = pi - step_size * mi / denom;
		m[i] = mi;
		v[i] = vi;
	}
}

extern "C" int cu_adamw_step(kernels_backend *be, float *p, const float *g, float *m, float *v,
			     size_t n, float lr, float beta1, float beta2, float eps,
			     float weight_decay, int step, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (step < 1)
		return cu_err_set(err, OWL_EUSAGE, "adamw: step %d, steps count from 1", step);
	if (!n)
		return 0;
	// The bias corrections on the host, in float, as the CPU forms them.
	float bc1 = 1.0f - powf(beta1, (float)step), bc2 = 1.0f - powf(beta2, (float)step);
	CU_TRY("adamw_step", cudaSetDevice(c->device));
	CU_LAUNCH(adamw_kernel, cu_blocks(n, 256), 256, 0, c->stream)(p, g, m, v, n, lr, beta1, beta2, eps,
							       weight_decay, lr / bc1, sqrtf(bc2));
	CU_LAUNCHED("adamw_step");
	return 0;
}
