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
		// Every device, its memory (free of total) and the driver: what a
		// user checks before choosing --tp.
		int drv = 0;
		cudaDriverGetVersion(&drv);
		size_t used = 0;
		for (int d = 0; d < n && used + 1 < desc_len; d++) {
			cudaDeviceProp prop;
			if (cudaGetDeviceProperties(&prop, d) != cudaSuccess)
				continue;
			size_t fr = 0, total = 0;
			if (cudaSetDevice(d) != cudaSuccess || cudaMemGetInfo(&fr, &total) != cudaSuccess)
				fr = 0, total = prop.totalGlobalMem;
			int k = snprintf(desc + used, desc_len - used, "%s%d: %s, %.1f of %.1f GiB free, sm_%d%d",
					 d ? "; " : "", d, prop.name, fr / 1073741824.0,
					 total / 1073741824.0, prop.major, prop.minor);
			if (k < 0)
				break;
			used += (size_t)k < desc_len - used ? (size_t)k : desc_len - used - 1;
		}
		if (used + 1 < desc_len)
			snprintf(desc + used, desc_len - used, "; driver %d.%d", drv / 1000, drv % 1000 / 10);
	}
	int v = 0;
	if (ncclGetVersion(&v) == ncclSuccess)
		*nccl_version = v;
	return 0;
}
