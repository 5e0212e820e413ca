// The CUDA built-ins that kernels/fdm_kernel.cu uses, for compiling it unchanged as host C++ (g++),
// so the kernel's own code runs in the CPU test suite (tests/test_fdm_kernel_host.py).
//
// Include this, then the kernel source. host_launch() runs a launch serially: every block of the
// grid, every thread of the block, each seeing its own blockIdx/threadIdx. That is a faithful
// launch for this kernel, which shares no memory between threads and never synchronises them.
// __restrict__ is already a GCC keyword, and the kernel treats half values as their uint16 bits,
// so no __half type is needed.
#pragma once

#define __global__
#define __device__
#define __forceinline__ inline

struct HostDim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline HostDim3 gridDim, blockDim, blockIdx, threadIdx;

// CUDA's __ffs: 1 + index of the least significant set bit, 0 for 0.
inline int __ffs(unsigned int x) { return __builtin_ffs(static_cast<int>(x)); }

// Run `thread()` once per (block, thread) of a 1-D launch of `blocks` x `threads`.
template <typename Thread>
void host_launch(unsigned int blocks, unsigned int threads, Thread thread) {
    gridDim.x = blocks;
    blockDim.x = threads;
    for (blockIdx.x = 0; blockIdx.x < blocks; ++blockIdx.x) {
        for (threadIdx.x = 0; threadIdx.x < threads; ++threadIdx.x) {
            thread();
        }
    }
}
