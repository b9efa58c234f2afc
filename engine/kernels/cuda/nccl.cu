// The NCCL implementation of kernels_comm: tensor-parallel ranks on GPUs.
// One process drives N devices (owl_cuda_nccl_comm_new: one communicator
// each, made together by ncclCommInitAll), or one rank of a job spread
// over processes and machines (owl_cuda_nccl_comm_init_rank with the
// unique id rank 0 made and the launcher's rendezvous handed round).
// Collectives are grouped calls, one per local rank, queued on that rank's
// backend stream after the ops that wrote the buffers: nothing waits on the
// host except barrier.
#include "engine/kernels/cuda/cuda.cuh"

#include <nccl.h>
#include <stdlib.h>
#include <string.h>

typedef struct nc_ctx {
	int local;
	ncclComm_t *comms;
	cudaStream_t *streams;
	int *devices;
	float **one; // a float per rank for the barrier's all-reduce
} nc_ctx;

#define NC_TRY(op, call)                                                                    \
	do {                                                                                \
		ncclResult_t r_ = (call);                                                   \
		if (r_ != ncclSuccess)                                                      \
			return cu_err_set(err, OWL_EFAIL, "nccl %s: %s: %s", op, #call,     \
					  ncclGetErrorString(r_));                          \
	} while (0)

// The group is ended on every path, so that a failed call leaves NCCL
// ready for the next one.
static int nc_all_reduce(const kernels_comm *c, float *const *bufs, size_t n, owl_err *err)
{
	nc_ctx *x = (nc_ctx *)c->ctx;
	if (!n)
		return 0;
	NC_TRY("all_reduce", ncclGroupStart());
	ncclResult_t first = ncclSuccess;
	for (int i = 0; i < x->local; i++) {
		cudaSetDevice(x->devices[i]);
		ncclResult_t r = ncclAllReduce(bufs[i], bufs[i], n, ncclFloat, ncclSum, x->comms[i],
					       x->streams[i]);
		if (r != ncclSuccess && first == ncclSuccess)
			first = r;
	}
	ncclResult_t end = ncclGroupEnd();
	if (first == ncclSuccess)
		first = end;
	if (first != ncclSuccess)
		return cu_err_set(err, OWL_EFAIL, "nccl all_reduce of %zu floats: %s", n,
				  ncclGetErrorString(first));
	return 0;
}

static int nc_all_gather(const kernels_comm *c, float *const *out, const float *const *in,
			 size_t n, owl_err *err)
{
	nc_ctx *x = (nc_ctx *)c->ctx;
	if (!n)
		return 0;
	NC_TRY("all_gather", ncclGroupStart());
	ncclResult_t first = ncclSuccess;
	for (int i = 0; i < x->local; i++) {
		cudaSetDevice(x->devices[i]);
		ncclResult_t r = ncclAllGather(in[i], out[i], n, ncclFloat, x->comms[i], x->streams[i]);
		if (r != ncclSuccess && first == ncclSuccess)
			first = r;
	}
	ncclResult_t end = ncclGroupEnd();
	if (first == ncclSuccess)
		first = end;
	if (first != ncclSuccess)
		return cu_err_set(err, OWL_EFAIL, "nccl all_gather of %zu floats: %s", n,
				  ncclGetErrorString(first));
	return 0;
}

// Every rank arrives when a one-float all-reduce has completed on all of
// them: each local stream is waited for.
static int nc_barrier(const kernels_comm *c, owl_err *err)
{
	nc_ctx *x = (nc_ctx *)c->ctx;
	int rc = nc_all_reduce(c, x->one, 1, err);
	if (rc)
		return rc;
	for (int i = 0; i < x->local; i++) {
		CU_TRY("nccl barrier", cudaSetDevice(x->devices[i]));
		CU_TRY("nccl barrier", cudaStreamSynchronize(x->streams[i]));
	}
	return 0;
}

CU_EXPORT void owl_cuda_nccl_comm_free(kernels_comm *c)
{
	if (!c)
		return;
	nc_ctx *x = (nc_ctx *)c->ctx;
	if (x) {
		for (int i = 0; i < x->local; i++) {
			cudaSetDevice(x->devices[i]);
			if (x->comms && x->comms[i])
				ncclCommDestroy(x->comms[i]);
			if (x->one && x->one[i])
				cudaFree(x->one[i]);
		}
		free(x->comms);
		free(x->streams);
		free(x->devices);
		free(x->one);
		free(x);
	}
	free(c);
}

// The comm's shell for local ranks on the backends' devices and streams.
static int nc_shell(kernels_backend *const *bes, int local, kernels_comm **out, owl_err *err)
{
	*out = NULL;
	kernels_comm *c = (kernels_comm *)calloc(1, sizeof *c);
	nc_ctx *x = (nc_ctx *)calloc(1, sizeof *x);
	if (c)
		c->ctx = x;
	if (!c || !x || !(x->comms = (ncclComm_t *)calloc((size_t)local, sizeof *x->comms)) ||
	    !(x->streams = (cudaStream_t *)calloc((size_t)local, sizeof *x->streams)) ||
	    !(x->devices = (int *)calloc((size_t)local, sizeof *x->devices)) ||
	    !(x->one = (float **)calloc((size_t)local, sizeof *x->one))) {
		if (!c)
			free(x);
		owl_cuda_nccl_comm_free(c);
		return cu_err_set(err, OWL_EFAIL, "cannot allocate an NCCL comm");
	}
	x->local = local;
	c->name = "nccl";
	c->all_reduce = nc_all_reduce;
	c->all_gather = nc_all_gather;
	c->barrier = nc_barrier;
	for (int i = 0; i < local; i++) {
		if (!bes[i] || strcmp(bes[i]->iface->name, "cuda") != 0) {
			owl_cuda_nccl_comm_free(c);
			return cu_err_set(err, OWL_EUSAGE, "nccl: rank %d's backend is not a CUDA one", i);
		}
		x->devices[i] = bes[i]->device;
		x->streams[i] = cu_of(bes[i])->stream;
		cudaError_t e = cudaSetDevice(x->devices[i]);
		if (e == cudaSuccess)
			e = cudaMalloc(&x->one[i], sizeof(float));
		if (e == cudaSuccess)
			e = cudaMemset(x->one[i], 0, sizeof(float));
		if (e != cudaSuccess) {
			owl_cuda_nccl_comm_free(c);
			return cu_err_set(err, OWL_EFAIL, "nccl: device %d: %s", x->devices[i],
					  cudaGetErrorString(e));
		}
	}
	*out = c;
	return 0;
}

// n ranks in this process, rank i on bes[i] (each on its own device: NCCL
// takes one rank per device).
CU_EXPORT int owl_cuda_nccl_comm_new(kernels_backend *const *bes, int n, kernels_comm **out,
				     owl_err *err)
{
	*out = NULL;
	if (n <= 0)
		return cu_err_set(err, OWL_EUSAGE, "nccl: %d ranks", n);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < i; j++)
			if (bes[i] && bes[j] && bes[i]->device == bes[j]->device)
				return cu_err_set(err, OWL_EUSAGE, "nccl: ranks %d and %d are both on device "
						  "%d (NCCL takes one rank per device; ranks sharing "
						  "a GPU use the local comm)", j, i, bes[i]->device);
	kernels_comm *c;
	int rc = nc_shell(bes, n, &c, err);
	if (rc)
		return rc;
	nc_ctx *x = (nc_ctx *)c->ctx;
	ncclResult_t r = ncclCommInitAll(x->comms, n, x->devices);
	if (r != ncclSuccess) {
		memset(x->comms, 0, (size_t)n * sizeof *x->comms);
		owl_cuda_nccl_comm_free(c);
		return cu_err_set(err, OWL_EFAIL, "nccl: ncclCommInitAll over %d devices: %s", n,
				  ncclGetErrorString(r));
	}
	c->size = c->local = n;
	c->first = 0;
	*out = c;
	return 0;
}

// A job over processes: rank 0 makes the id, the launcher's rendezvous
// hands it to the others (NCCL_UNIQUE_ID_BYTES = 128).
CU_EXPORT int owl_cuda_nccl_unique_id(unsigned char out[128], owl_err *err)
{
	static_assert(sizeof(ncclUniqueId) == 128, "NCCL's unique id is 128 bytes");
	ncclUniqueId id;
	NC_TRY("unique id", ncclGetUniqueId(&id));
	memcpy(out, &id, sizeof id);
	return 0;
}

// This process's one rank of nranks, on be's device and stream; returns
// when every rank has joined.
CU_EXPORT int owl_cuda_nccl_comm_init_rank(const unsigned char id[128], int nranks, int rank,
					   kernels_backend *be, kernels_comm **out, owl_err *err)
{
	*out = NULL;
	if (nranks <= 0 || rank < 0 || rank >= nranks)
		return cu_err_set(err, OWL_EUSAGE, "nccl: rank %d of %d", rank, nranks);
	kernels_comm *c;
	int rc = nc_shell(&be, 1, &c, err);
	if (rc)
		return rc;
	nc_ctx *x = (nc_ctx *)c->ctx;
	ncclUniqueId uid;
	memcpy(&uid, id, sizeof uid);
	cudaSetDevice(be->device);
	ncclResult_t r = ncclCommInitRank(&x->comms[0], nranks, uid, rank);
	if (r != ncclSuccess) {
		x->comms[0] = NULL;
		owl_cuda_nccl_comm_free(c);
		return cu_err_set(err, OWL_EFAIL, "nccl: ncclCommInitRank (rank %d of %d): %s", rank,
				  nranks, ncclGetErrorString(r));
	}
	c->size = nranks;
	c->local = 1;
	c->first = rank;
	*out = c;
	return 0;
}
