// Device discovery for `owl status`: loaded with dlopen by the host program,
// so every entry point is extern "C" and nothing here may abort when there
// is no GPU or no driver.
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>

extern "C" __attribute__((visibility("default"))) int owl_cuda_probe(int *device_count, char *desc, size_t desc_len, int *nccl_version)
{
	*device_count = 0;
	*nccl_version = 0;
	if (desc_len)
		desc[0] = 0;
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess) {
		// On a machine without a GPU the runtime reports a missing or too old
		// driver; say what that means for the user, keep the runtime's words.
		if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice)
			snprintf(desc, desc_len, "no usable NVIDIA GPU or driver on this machine (%s)",
				 cudaGetErrorString(e));
		else
			snprintf(desc, desc_len, "%s", cudaGetErrorString(e));
		return 1;
	}
	*device_count = n;
	if (n > 0) {
		cudaDeviceProp prop;
		if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
			snprintf(desc, desc_len, "%s, %.1f GiB, sm_%d%d", prop.name,
				 prop.totalGlobalMem / (1024.0 * 1024 * 1024), prop.major, prop.minor);
	}
	int v = 0;
	if (ncclGetVersion(&v) == ncclSuccess)
		*nccl_version = v;
	return 0;
}
