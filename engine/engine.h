/* engine: model loading, tokenizer, forward pass, sampling, generation, and
 * the kernel layer (engine/kernels/) shared with training. Nothing here knows
 * about SQLite, the registry or training loops. */
#ifndef OWL_ENGINE_H
#define OWL_ENGINE_H

#include "common/common.h"

/* What the GPU side of this machine offers, for `owl status`. */
typedef struct engine_gpu_info {
	int backend_loaded;  /* libowl_cuda.so could be loaded */
	int device_count;    /* CUDA devices visible */
	int nccl_version;    /* e.g. 22805, 0 when NCCL is unusable */
	char detail[256];    /* device name, or why there is none */
} engine_gpu_info;

/* Never fails: a machine without a GPU, driver or CUDA libraries answers with
 * device_count 0 and the reason in detail. */
void engine_gpu_probe(engine_gpu_info *info);

/* Opens the CUDA backend object (libowl_cuda.so), looked up in $OWL_CUDA_LIB,
 * beside the running executable, then on the library path. Returns the dlopen
 * handle or NULL with the reason in err. The handle lives until exit. */
void *engine_cuda_open(owl_err *err);

#endif
