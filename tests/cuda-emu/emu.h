// A host emulator of what the CUDA backend's kernels use, so that the same
// kernel sources (engine/kernels/cuda/*.cu, built with g++ -DOWL_CUDA_EMU)
// run on a machine without a GPU: every CUDA thread of a block is a fiber
// on the launching thread (ASan told of each switch of stacks),
// __syncthreads a barrier of the block's threads, a warp shuffle an
// exchange through memory between two barriers of the warp's 32 threads,
// __shared__ memory the block's own (static memory, or a heap block of the
// launch's size for dynamic shared memory, so that ASan sees overruns).
// Blocks run one after the other. A kernel whose threads of a warp do not
// all reach a shuffle, or of a block a __syncthreads, is reported and
// aborts, where it would misbehave on a device.
// Only the runtime calls the emulated files make are provided (emu.cpp).
#ifndef OWL_CUDA_EMU_H
#define OWL_CUDA_EMU_H

#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <functional>

#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif

extern thread_local uint3 emu_thread_idx;
extern uint3 emu_block_idx;
extern dim3 emu_block_dim, emu_grid_dim;
#define threadIdx emu_thread_idx
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim

void *emu_dyn_shared(void);
void __syncthreads(void);
// The warp's exchange: every lane puts 8 bytes, then takes lane src's.
unsigned long long emu_warp_exchange(unsigned long long mine, int src);

template <typename T> static inline T emu_shfl(T v, int src)
{
	unsigned long long u = 0;
	memcpy(&u, &v, sizeof v);
	u = emu_warp_exchange(u, src);
	T r;
	memcpy(&r, &u, sizeof r);
	return r;
}

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask)
{
	return emu_shfl(v, (int)(threadIdx.x % 32) ^ lane_mask);
}

template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src)
{
	return emu_shfl(v, src & 31);
}

float atomicAdd(float *p, float v);

// Runs body once per thread of every block of the grid, or records it when
// the calling thread is recording a graph (cudaStreamBeginCapture).
void emu_run(dim3 grid, dim3 block, size_t smem, const std::function<void()> &body);

template <typename F> struct emu_launch {
	dim3 grid, block;
	size_t smem;
	F *kernel;
	template <typename... A> void operator()(A... args) const
	{
		F *k = kernel;
		// The arguments by value: a launch recorded into a graph runs
		// after this call has returned.
		emu_run(grid, block, smem, [=]() { k(args...); });
	}
};

template <typename F> static inline emu_launch<F> emu_launcher(dim3 g, dim3 b, size_t smem, F *k)
{
	return emu_launch<F>{g, b, smem, k};
}

#endif
