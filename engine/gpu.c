/* Loading the CUDA backend at run time: owl must run on machines with no GPU,
 * no driver and no CUDA libraries, so the backend is a separate shared object
 * opened with dlopen, and every failure to open it is an answer, not a crash. */
#define _GNU_SOURCE
#include "engine.h"

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
	const char *env = getenv("OWL_CUDA_LIB");
	char exe[PATH_MAX];
	char *beside = NULL;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n > 0) {
		exe[n] = 0;
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = 0;
			beside = owl_xasprintf("%s/%s", exe, OWL_CUDA_LIB);
		}
	}
	const char *candidates[] = {env, beside, OWL_CUDA_LIB};
	for (size_t i = 0; i < 3 && !cuda_handle; i++) {
		if (!candidates[i] || !*candidates[i])
			continue;
		if (i < 2 && access(candidates[i], F_OK) != 0)
			continue;
		cuda_handle = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
		if (!cuda_handle)
			snprintf(cuda_reason, sizeof cuda_reason, "%s", dlerror());
	}
	free(beside);
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
