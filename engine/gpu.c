/* Loading the CUDA backend at run time: owl must run on machines with no GPU,
 * no driver and no CUDA libraries, so the backend is a separate shared object
 * opened with dlopen, and every failure to open it is an answer, not a crash. */
#define _GNU_SOURCE
#include "engine.h"
#include "engine/kernels/kernels.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The object is looked for once per process (pthread_once), so that
 * threads asking at the same time see one answer. */
static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static void *cuda_handle;
static char cuda_reason[512];

static void cuda_open_once(void)
{
	cuda_handle = owl_dlopen_lib("OWL_CUDA_LIB", OWL_CUDA_LIB, 0, cuda_reason, sizeof cuda_reason);
}

void *engine_cuda_open(owl_err *err)
{
	pthread_once(&cuda_once, cuda_open_once);
	if (!cuda_handle)
		owl_err_set(err, OWL_EFAIL, "cannot load the CUDA backend %s: %s", OWL_CUDA_LIB,
			    cuda_reason[0] ? cuda_reason : "not found");
	return cuda_handle;
}

void engine_gpu_probe(engine_gpu_info *info)
{
	memset(info, 0, sizeof *info);
	owl_err err = {0};
	void *h = engine_cuda_open(&err);
	if (!h) {
		snprintf(info->detail, sizeof info->detail, "%s", err.msg);
		return;
	}
	info->backend_loaded = 1;
	int (*probe)(int *, char *, size_t, int *) =
		(int (*)(int *, char *, size_t, int *))dlsym(h, "owl_cuda_probe");
	if (!probe) {
		snprintf(info->detail, sizeof info->detail, "CUDA backend lacks owl_cuda_probe");
		return;
	}
	probe(&info->device_count, info->detail, sizeof info->detail, &info->nccl_version);
}

/* A symbol of the CUDA object, or NULL with the reason. */
static void *cuda_sym(const char *name, owl_err *err)
{
	void *h = engine_cuda_open(err);
	if (!h)
		return NULL;
	void *f = dlsym(h, name);
	if (!f)
		owl_err_set(err, OWL_EFAIL, "the CUDA backend %s lacks %s: it is not this owl's build",
			    OWL_CUDA_LIB, name);
	return f;
}

int engine_cuda_backend_new(int device, kernels_backend **out, owl_err *err)
{
	*out = NULL;
	int (*make)(int, int, kernels_backend **, owl_err *) =
		(int (*)(int, int, kernels_backend **, owl_err *))cuda_sym("owl_cuda_backend_new", err);
	if (!make)
		return err ? err->code : OWL_EFAIL;
	int rc = make(KERNELS_ABI_VERSION, device, out, err);
	if (rc)
		return rc;
	/* The object checks the version it was asked for; the table it returns
	 * must say the same, or its slots are not where this program looks. */
	if (!*out || !(*out)->iface || (*out)->iface->abi_version != KERNELS_ABI_VERSION) {
		int got = *out && (*out)->iface ? (*out)->iface->abi_version : -1;
		if (*out && (*out)->iface)
			kernels_backend_free(*out);
		*out = NULL;
		return owl_err_set(err, OWL_EFAIL, "the CUDA backend's table is of kernel interface "
				   "version %d, this program's is %d", got, KERNELS_ABI_VERSION);
	}
	return 0;
}

int engine_cuda_nccl_comm_new(kernels_backend *const *bes, int n, kernels_comm **out,
			      owl_err *err)
{
	*out = NULL;
	int (*f)(kernels_backend *const *, int, kernels_comm **, owl_err *) =
		(int (*)(kernels_backend *const *, int, kernels_comm **, owl_err *))cuda_sym(
			"owl_cuda_nccl_comm_new", err);
	return f ? f(bes, n, out, err) : err ? err->code : OWL_EFAIL;
}

int engine_cuda_nccl_unique_id(unsigned char id[128], owl_err *err)
{
	int (*f)(unsigned char *, owl_err *) =
		(int (*)(unsigned char *, owl_err *))cuda_sym("owl_cuda_nccl_unique_id", err);
	return f ? f(id, err) : err ? err->code : OWL_EFAIL;
}

int engine_cuda_nccl_comm_init_rank(const unsigned char id[128], int nranks, int rank,
				    kernels_backend *be, kernels_comm **out, owl_err *err)
{
	*out = NULL;
	int (*f)(const unsigned char *, int, int, kernels_backend *, kernels_comm **, owl_err *) =
		(int (*)(const unsigned char *, int, int, kernels_backend *, kernels_comm **,
			 owl_err *))cuda_sym("owl_cuda_nccl_comm_init_rank", err);
	return f ? f(id, nranks, rank, be, out, err) : err ? err->code : OWL_EFAIL;
}

void engine_cuda_nccl_comm_free(kernels_comm *c)
{
	if (!c)
		return;
	void (*f)(kernels_comm *) = (void (*)(kernels_comm *))cuda_sym("owl_cuda_nccl_comm_free", NULL);
	if (f)
		f(c);
}
