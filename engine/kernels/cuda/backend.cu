// The CUDA backend's table: the instance (stream, cuBLAS handles,
// workspace), memory, the copies between host and device, weight upload,
// supports(), and owl_cuda_backend_new, the entry point engine/gpu.c finds
// with dlsym. The ops live one per file beside this one.
#include "engine/kernels/cuda/cuda.cuh"

#include <stdlib.h>
#include <string.h>

struct kernels_buffer {
	size_t size;
	void *data; // device memory
};

const char *cu_blas_error(cublasStatus_t s)
{
	return cublasGetStatusString(s);
}

int cu_work(cu_ctx *c, size_t bytes, void **out, owl_err *err)
{
	if (bytes > c->work_bytes) {
		// Ops queued before may still read the old workspace.
		CU_TRY("workspace", cudaStreamSynchronize(c->stream));
		if (c->work)
			CU_TRY("workspace", cudaFree(c->work));
		c->work = NULL;
		c->work_bytes = 0;
		c->memory_generation++;
		size_t want = bytes < ((size_t)1 << 20) ? (size_t)1 << 20 : bytes;
		cudaError_t e = cudaMalloc(&c->work, want);
		if (e != cudaSuccess)
			return cu_err_set(err, OWL_EFAIL, "cuda: cannot allocate %zu MiB of workspace on "
					  "device %d: %s", want >> 20, c->device, cudaGetErrorString(e));
		c->work_bytes = want;
	}
	*out = c->work;
	return 0;
}

int cu_pinned(cu_ctx *c, size_t bytes, void **out, owl_err *err)
{
	if (bytes > c->pinned_bytes) {
		CU_TRY("pinned memory", cudaStreamSynchronize(c->stream));
		if (c->pinned)
			CU_TRY("pinned memory", cudaFreeHost(c->pinned));
		c->pinned = NULL;
		c->pinned_bytes = 0;
		c->memory_generation++;
		size_t want = bytes < 4096 ? 4096 : bytes;
		CU_TRY("pinned memory", cudaMallocHost(&c->pinned, want));
		c->pinned_bytes = want;
	}
	*out = c->pinned;
	return 0;
}

// Every entry point makes the instance's device current: one thread may
// drive several devices (tensor parallelism in one process).
#define CU_ENTER(op, c) CU_TRY(op, cudaSetDevice((c)->device))

static int cu_buffer_alloc(kernels_backend *be, size_t bytes, kernels_buffer **out, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	*out = NULL;
	CU_ENTER("buffer_alloc", c);
	kernels_buffer *b = (kernels_buffer *)calloc(1, sizeof *b);
	if (!b)
		return cu_err_set(err, OWL_EFAIL, "cuda: cannot allocate a buffer");
	cudaError_t e = cudaMalloc(&b->data, bytes ? bytes : 1);
	if (e != cudaSuccess) {
		free(b);
		size_t fr = 0, total = 0;
		cudaMemGetInfo(&fr, &total);
		cudaGetLastError(); // the failed allocation is answered here, not by the next op
		return cu_err_set(err, OWL_EFAIL, "cuda: cannot allocate %zu MiB on device %d (%zu MiB "
				  "free of %zu): %s", bytes >> 20, c->device, fr >> 20, total >> 20,
				  cudaGetErrorString(e));
	}
	b->size = bytes;
	c->buffer_bytes += bytes;
	*out = b;
	return 0;
}

static void cu_buffer_free(kernels_backend *be, kernels_buffer *b)
{
	if (!b)
		return;
	cu_ctx *c = cu_of(be);
	cudaSetDevice(c->device);
	// cudaFree waits for the device; queued ops that read b finish first.
	cudaFree(b->data);
	c->buffer_bytes -= b->size;
	free(b);
}

static int cu_mem_info(kernels_backend *be, kernels_mem_info *out, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	CU_ENTER("mem_info", c);
	size_t fr = 0, total = 0;
	CU_TRY("mem_info", cudaMemGetInfo(&fr, &total));
	out->buffer_bytes = c->buffer_bytes;
	out->work_bytes = c->work_bytes;
	out->pinned_bytes = c->pinned_bytes;
	out->device_total = total;
	out->device_free = fr;
	return 0;
}

static void *cu_buffer_data(kernels_buffer *b) { return b->data; }

static int cu_copy_to_device(kernels_backend *be, kernels_buffer *dst, size_t off, const void *src,
			     size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (off > dst->size || n > dst->size - off)
		return cu_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				  n, off, dst->size);
	CU_ENTER("copy_to_device", c);
	// Pageable source memory: the call returns once src has been read, so
	// the caller may reuse it at once.
	CU_TRY("copy_to_device", cudaMemcpyAsync((uint8_t *)dst->data + off, src, n,
						 cudaMemcpyHostToDevice, c->stream));
	CU_TRY("copy_to_device", cudaStreamSynchronize(c->stream));
	return 0;
}

static int cu_copy_to_host(kernels_backend *be, void *dst, const kernels_buffer *src, size_t off,
			   size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (off > src->size || n > src->size - off)
		return cu_err_set(err, OWL_EFAIL, "copy of %zu bytes at %zu overruns a %zu-byte buffer",
				  n, off, src->size);
	CU_ENTER("copy_to_host", c);
	CU_TRY("copy_to_host", cudaMemcpyAsync(dst, (const uint8_t *)src->data + off, n,
					       cudaMemcpyDeviceToHost, c->stream));
	CU_TRY("copy_to_host", cudaStreamSynchronize(c->stream));
	return 0;
}

static int cu_copy(kernels_backend *be, void *dst, const void *src, size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!n)
		return 0;
	CU_ENTER("copy", c);
	CU_TRY("copy", cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, c->stream));
	return 0;
}

static int cu_fill_zero(kernels_backend *be, void *dst, size_t n, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	if (!n)
		return 0;
	CU_ENTER("fill_zero", c);
	CU_TRY("fill_zero", cudaMemsetAsync(dst, 0, n, c->stream));
	return 0;
}

static int cu_synchronize(kernels_backend *be, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	CU_ENTER("synchronize", c);
	CU_TRY("synchronize", cudaStreamSynchronize(c->stream));
	int bad_id = c->flags[CU_FLAG_BAD_ID], bad_target = c->flags[CU_FLAG_BAD_TARGET];
	c->flags[CU_FLAG_BAD_ID] = c->flags[CU_FLAG_BAD_TARGET] = 0;
	if (bad_id)
		return cu_err_set(err, OWL_EUSAGE, "embedding: a token id was outside the table (its "
				  "row was written as zeros)");
	if (bad_target)
		return cu_err_set(err, OWL_EUSAGE, "cross_entropy: a target was outside the vocabulary");
	return 0;
}

// Layout 0 on the device: the file's rows, a strided column view made whole
// rows by a 2D copy.
static int cu_weight_prepare(kernels_backend *be, const kernels_weight *w, int from_file,
			     kernels_weight *out, kernels_buffer **owned, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	*owned = NULL;
	if (w->layout)
		return cu_err_set(err, OWL_EUSAGE, "cuda weight_prepare: a weight in another backend's "
				  "layout %d", w->layout);
	size_t rb = cu_row_bytes(w->type, w->cols);
	if (!rb)
		return cu_err_set(err, OWL_EUSAGE, "a %s weight of %d columns does not fill whole blocks",
				  cu_dtype_name(w->type), w->cols);
	if (w->row_bytes < rb)
		return cu_err_set(err, OWL_EUSAGE, "a weight's rows are %zu bytes apart, shorter than "
				  "their %zu bytes", w->row_bytes, rb);
	kernels_buffer *b;
	int rc = cu_buffer_alloc(be, (size_t)w->rows * rb, &b, err);
	if (rc)
		return rc;
	cudaError_t e = cudaMemcpy2DAsync(b->data, rb, w->data, w->row_bytes, rb, (size_t)w->rows,
					  cudaMemcpyHostToDevice, c->stream);
	if (e == cudaSuccess)
		e = cudaStreamSynchronize(c->stream);
	if (e != cudaSuccess) {
		cu_buffer_free(be, b);
		return cu_err_set(err, OWL_EFAIL, "cuda weight_prepare: upload of a %dx%d %s weight: %s",
				  w->rows, w->cols, cu_dtype_name(w->type), cudaGetErrorString(e));
	}
	*out = *w;
	out->data = (const uint8_t *)b->data;
	out->row_bytes = rb;
	out->layout = 0;
	*owned = b;
	return 0;
}

// What the kernels of this directory implement; a NULL slot is answered 0.
static int cu_supports(const kernels_backend *be, kernels_op op, int type)
{
	switch (op) {
	case KERNELS_OP_MATMUL:
	case KERNELS_OP_MATVEC_MULTI:
	case KERNELS_OP_EMBEDDING:
	case KERNELS_OP_MATMUL_WIDENED:
	case KERNELS_OP_MATMUL_BACKWARD:
		return type >= KERNELS_F32 && type <= KERNELS_Q6_K;
	case KERNELS_OP_KV_STORE:
	case KERNELS_OP_ATTENTION:
		return type == KERNELS_KV_F32 || type == KERNELS_KV_F16;
	case KERNELS_OP_RMSNORM:
	case KERNELS_OP_ROPE:
	case KERNELS_OP_ADD:
	case KERNELS_OP_ADD_ROWS:
	case KERNELS_OP_SWIGLU:
	case KERNELS_OP_CROSS_ENTROPY:
	case KERNELS_OP_LORA:
	case KERNELS_OP_ATTENTION_PACKED:
	case KERNELS_OP_LORA_BACKWARD:
	case KERNELS_OP_EMBEDDING_BACKWARD:
	case KERNELS_OP_RMSNORM_BACKWARD:
	case KERNELS_OP_ROPE_BACKWARD:
	case KERNELS_OP_ATTENTION_BACKWARD:
	case KERNELS_OP_SWIGLU_BACKWARD:
	case KERNELS_OP_CROSS_ENTROPY_BACKWARD:
	case KERNELS_OP_ADAMW:
	case KERNELS_OP_SAMPLE:
	case KERNELS_OP_DROPOUT:
		return type == KERNELS_F32;
	case KERNELS_OP_COUNT:
		break;
	}
	return 0;
}

static void cu_backend_free(kernels_backend *be)
{
	if (!be)
		return;
	cu_ctx *c = cu_of(be);
	if (c) {
		cudaSetDevice(c->device);
		if (c->stream)
			cudaStreamSynchronize(c->stream);
		if (c->lt)
			cublasLtDestroy(c->lt);
		if (c->blas)
			cublasDestroy(c->blas);
		if (c->work)
			cudaFree(c->work);
		if (c->pinned)
			cudaFreeHost(c->pinned);
		if (c->flags)
			cudaFreeHost(c->flags);
		if (c->stream)
			cudaStreamDestroy(c->stream);
		free(c);
	}
	free(be);
}

static const kernels_backend_iface cu_iface = {
	.abi_version = KERNELS_ABI_VERSION,
	.name = "cuda",
	.host_memory = 0, /* device memory: reached through the ops and the copies */
	.free = cu_backend_free,
	.supports = cu_supports,
	.synchronize = cu_synchronize,
	.buffer_alloc = cu_buffer_alloc,
	.buffer_free = cu_buffer_free,
	.buffer_data = cu_buffer_data,
	.copy = cu_copy,
	.fill_zero = cu_fill_zero,
	.copy_to_device = cu_copy_to_device,
	.copy_to_host = cu_copy_to_host,
	.weight_prepare = cu_weight_prepare,
	.matmul = cu_matmul,
	.matvec_multi = cu_matvec_multi,
	.embedding = cu_embedding,
	.rmsnorm = cu_rmsnorm,
	.rope = cu_rope,
	.add = cu_add,
	.add_rows = cu_add_rows,
	.kv_store = cu_kv_store,
	.attention = cu_attention,
	.swiglu = cu_swiglu,
	.cross_entropy = cu_cross_entropy,
	.lora = cu_lora,
	.attention_packed = cu_attention_packed,
	.matmul_widened = cu_matmul_widened,
	.matmul_backward = cu_matmul_backward,
	.lora_backward = cu_lora_backward,
	.embedding_backward = cu_embedding_backward,
	.rmsnorm_backward = cu_rmsnorm_backward,
	.rope_backward = cu_rope_backward,
	.attention_backward = cu_attention_backward,
	.swiglu_backward = cu_swiglu_backward,
	.cross_entropy_backward = cu_cross_entropy_backward,
	.adamw_step = cu_adamw_step,
	.sample = cu_sample,
	.graph_begin = cu_graph_begin,
	.graph_end = cu_graph_end,
	.graph_launch = cu_graph_launch,
	.graph_free = cu_graph_free,
	.mem_info = cu_mem_info,
	.dropout = cu_dropout,
};

// Row of cols elements of a weight of type `type` in the stored layout,
// decoded on the host by the very reader the kernels use (cu_elem): the
// tests check it against the host's dequantisation where no device is.
CU_EXPORT int owl_cuda_host_dequant_row(int type, const uint8_t *row, int cols, float *out)
{
	if (type < KERNELS_F32 || type > KERNELS_Q6_K || !cu_row_bytes((kernels_dtype)type, cols))
		return OWL_EUSAGE;
	for (int c = 0; c < cols; c++)
		out[c] = cu_elem(type, row, c);
	return 0;
}

// The instance on device `device`, or a message that says why there is none
// (no driver, no such device, an object built against another interface).
CU_EXPORT int owl_cuda_backend_new(int abi_version, int device, kernels_backend **out,
				    owl_err *err)
{
	*out = NULL;
	if (abi_version != KERNELS_ABI_VERSION)
		return cu_err_set(err, OWL_EFAIL, "the CUDA backend was built for kernel interface "
				  "version %d, the program speaks version %d", KERNELS_ABI_VERSION,
				  abi_version);
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess)
		return cu_err_set(err, OWL_EFAIL, "no usable CUDA device or driver: %s",
				  cudaGetErrorString(e));
	if (device < 0 || device >= n)
		return cu_err_set(err, OWL_EFAIL, "no CUDA device %d: this machine has %d", device, n);
	kernels_backend *be = (kernels_backend *)calloc(1, sizeof *be);
	cu_ctx *c = (cu_ctx *)calloc(1, sizeof *c);
	if (!be || !c) {
		free(be);
		free(c);
		return cu_err_set(err, OWL_EFAIL, "cannot allocate a CUDA backend");
	}
	c->device = device;
	c->band_bytes = (size_t)64 << 20;
	const char *band = getenv("OWL_CUDA_BAND_BYTES");
	if (band && atol(band) >= 1024)
		c->band_bytes = (size_t)atol(band);
	be->iface = &cu_iface;
	be->device = device;
	be->context = c;
	int rc = 0;
	cublasStatus_t s;
#define NEW_FAIL(...)                                       \
	do {                                                \
		rc = cu_err_set(err, OWL_EFAIL, __VA_ARGS__); \
		goto fail;                                  \
	} while (0)
	if ((e = cudaSetDevice(device)) != cudaSuccess)
		NEW_FAIL("cuda: cannot use device %d: %s", device, cudaGetErrorString(e));
	if ((e = cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device)) !=
	    cudaSuccess)
		NEW_FAIL("cuda: device %d: %s", device, cudaGetErrorString(e));
	if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
		NEW_FAIL("cuda: cannot create a stream on device %d: %s", device, cudaGetErrorString(e));
	if ((s = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS)
		NEW_FAIL("cuda: cublasCreate: %s", cublasGetStatusString(s));
	if ((s = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
		NEW_FAIL("cuda: cublasSetStream: %s", cublasGetStatusString(s));
	if ((s = cublasLtCreate(&c->lt)) != CUBLAS_STATUS_SUCCESS)
		NEW_FAIL("cuda: cublasLtCreate: %s", cublasGetStatusString(s));
	if ((e = cudaHostAlloc((void **)&c->flags, CU_FLAG_COUNT * sizeof(int), cudaHostAllocMapped)) !=
	    cudaSuccess)
		NEW_FAIL("cuda: cannot allocate mapped host memory: %s", cudaGetErrorString(e));
	memset(c->flags, 0, CU_FLAG_COUNT * sizeof(int));
	if ((e = cudaHostGetDevicePointer((void **)&c->flags_dev, c->flags, 0)) != cudaSuccess)
		NEW_FAIL("cuda: mapped host memory: %s", cudaGetErrorString(e));
#undef NEW_FAIL
	*out = be;
	return 0;
fail:
	cu_backend_free(be);
	return rc;
}
