// Keys and values into the paged cache: token i's rows go to slot slots[i]
// (block slots[i] / block_tokens, row slots[i] % block_tokens), as f32 or
// rounded to f16.
#include "engine/kernels/cuda/cuda.cuh"

template <typename T> __device__ __forceinline__ T kv_from(float v);
template <> __device__ __forceinline__ float kv_from<float>(float v) { return v; }
template <> __device__ __forceinline__ __half kv_from<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__global__ void kv_store_kernel(uint8_t *kc, uint8_t *vc, size_t block_stride, int block_tokens,
				int row_elems, const float *k, const float *v, const int32_t *slots)
{
	int i = blockIdx.x, slot = slots[i];
	size_t off = (size_t)(slot / block_tokens) * block_stride +
		     (size_t)(slot % block_tokens) * row_elems * sizeof(T);
	T *kd = (T *)(kc + off), *vd = (T *)(vc + off);
	const float *ks = k + (size_t)i * row_elems, *vs = v + (size_t)i * row_elems;
	for (int j = threadIdx.x; j < row_elems; j += blockDim.x) {
		kd[j] = kv_from<T>(ks[j]);
		vd[j] = kv_from<T>(vs[j]);
	}
}

extern "C" int cu_kv_store(kernels_backend *be, const kernels_kv_layer *kv, const float *k,
			   const float *v, const int32_t *slots, int n_tok, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (n_tok <= 0)
		return 0;
	CU_TRY("kv_store", cudaSetDevice(c->device));
	if (kv->type == KERNELS_KV_F16)
		CU_LAUNCH(kv_store_kernel<__half>, (unsigned)n_tok, 128, 0, c->stream)(
			kv->k, kv->v, kv->block_stride, kv->block_tokens, kv->row_elems, k, v, slots);
	else
		CU_LAUNCH(kv_store_kernel<float>, (unsigned)n_tok, 128, 0, c->stream)(
			kv->k, kv->v, kv->block_stride, kv->block_tokens, kv->row_elems, k, v, slots);
	CU_LAUNCHED("kv_store");
	return 0;
}
