// embedding: rows of a table of any stored type, widened to f32; and the
// gradient of an f32 table. An id outside the table cannot fail a kernel:
// its row is written as zeros and the instance's flag makes the next
// synchronize report it.
#include "engine/kernels/cuda/cuda.cuh"

__global__ void embedding_kernel(float *out, const uint8_t *table, size_t row_bytes, int type,
				 int rows, int cols, const int32_t *ids, int *bad)
{
	int i = blockIdx.x;
	int id = ids[i];
	float *o = out + (size_t)i * cols;
	if (id < 0 || id >= rows) {
		for (int c = threadIdx.x; c < cols; c += blockDim.x)
			o[c] = 0.0f;
		if (threadIdx.x == 0)
			*bad = 1;
		return;
	}
	const uint8_t *r = table + (size_t)id * row_bytes;
	for (int c = threadIdx.x; c < cols; c += blockDim.x)
		o[c] = cu_elem(type, r, c);
}

extern "C" int cu_embedding(kernels_backend *be, float *out, const kernels_weight *table,
			    const int32_t *ids, int n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (table->layout || !cu_row_bytes(table->type, table->cols))
		return cu_err_set(err, OWL_EUSAGE, "cuda embedding: a %s table of %d columns in layout %d",
				  cu_dtype_name(table->type), table->cols, table->layout);
	if (n <= 0)
		return 0;
	CU_TRY("embedding", cudaSetDevice(c->device));
	CU_LAUNCH(embedding_kernel, (unsigned)n, 256, 0, c->stream)(out, table->data, table->row_bytes,
							    (int)table->type, table->rows,
							    table->cols, ids,
							    c->flags_dev + CU_FLAG_BAD_ID);
	CU_LAUNCHED("embedding");
	return 0;
}

// dtable[ids[i], :] += dy[i, :]: ids may repeat, so the sums are atomic.
__global__ void embedding_backward_kernel(float *dtable, const float *dy, const int32_t *ids,
					  int dim, int *bad)
{
	int i = blockIdx.x, id = ids[i];
	if (id < 0) {
		if (threadIdx.x == 0)
			*bad = 1;
		return;
	}
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
		atomicAdd(dtable + (size_t)id * dim + j, dy[(size_t)i * dim + j]);
}

extern "C" int cu_embedding_backward(kernels_backend *be, float *dtable, const float *dy,
				     const int32_t *ids, int n, int dim, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (n <= 0)
		return 0;
	CU_TRY("embedding_backward", cudaSetDevice(c->device));
	CU_LAUNCH(embedding_backward_kernel, (unsigned)n, 256, 0, c->stream)(dtable, dy, ids, dim,
								     c->flags_dev + CU_FLAG_BAD_ID);
	CU_LAUNCHED("embedding_backward");
	return 0;
}
