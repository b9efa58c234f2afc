// CUDA graphs: the ops of a decoding step recorded once into a graph and
// replayed with one launch, so that a step of a small model is not bound by
// the hundreds of kernel launches it takes (the engine decides what to
// record: engine/forward.c). Recording uses the thread-local capture mode:
// a call on this thread that the device could not replay (a synchronous
// copy, an allocation, waiting for the stream) fails and spoils the
// recording, rather than running once at record time.
#include "engine/kernels/cuda/cuda.cuh"

#include <stdlib.h>

struct kernels_graph {
	cudaGraphExec_t exec;
	unsigned long memory_generation; // the backend's when recorded
};

CU_OP int cu_graph_begin(kernels_backend *be, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	CU_TRY("graph_begin", cudaSetDevice(c->device));
	CU_TRY("graph_begin", cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
	return 0;
}

CU_OP int cu_graph_end(kernels_backend *be, kernels_graph **out, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	*out = NULL;
	cudaSetDevice(c->device);
	cudaGraph_t g = NULL;
	cudaError_t e = cudaStreamEndCapture(c->stream, &g);
	if (e != cudaSuccess) {
		if (g)
			cudaGraphDestroy(g);
		cudaGetLastError(); // answered here, not by the next op
		return cu_err_set(err, OWL_EFAIL, "cuda: an op could not be recorded into a graph: %s",
				  cudaGetErrorString(e));
	}
	cudaGraphExec_t x = NULL;
	e = cudaGraphInstantiate(&x, g, 0);
	cudaGraphDestroy(g);
	if (e != cudaSuccess) {
		cudaGetLastError();
		return cu_err_set(err, OWL_EFAIL, "cuda: cannot instantiate a graph: %s",
				  cudaGetErrorString(e));
	}
	kernels_graph *kg = (kernels_graph *)calloc(1, sizeof *kg);
	if (!kg) {
		cudaGraphExecDestroy(x);
		return cu_err_set(err, OWL_EFAIL, "cannot allocate a graph");
	}
	kg->exec = x;
	kg->memory_generation = c->memory_generation;
	*out = kg;
	return 0;
}

CU_OP int cu_graph_launch(kernels_backend *be, kernels_graph *g, int *stale, owl_err *err)
{
	cu_ctx *c = cu_of(be);
	*stale = g->memory_generation != c->memory_generation;
	if (*stale)
		return 0;
	CU_TRY("graph_launch", cudaSetDevice(c->device));
	CU_TRY("graph_launch", cudaGraphLaunch(g->exec, c->stream));
	return 0;
}

CU_OP void cu_graph_free(kernels_backend *be, kernels_graph *g)
{
	if (!g)
		return;
	cudaSetDevice(cu_of(be)->device);
	cudaGraphExecDestroy(g->exec);
	free(g);
}
