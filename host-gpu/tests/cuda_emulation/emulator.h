// A small emulator of CUDA blocks on the CPU, enough to run Flint's kernels and check their
// logic on machines without a GPU (driven by `host-gpu/tests/cuda_emulation.rs`).
//
// Blocks run one after another, so `__shared__` arrays can be function statics. A launch with
// `barriers` runs every CUDA thread of a block as a std::thread: `__syncthreads` is a barrier
// over the block and `__shfl_xor_sync` exchanges values through memory between two barriers
// (the kernels call it with the whole block). A launch without `barriers` runs the threads of a
// block one after another on the calling thread, which is equivalent for kernels that never
// synchronise (and faster); such a kernel calling `__syncthreads` aborts.
//
// Dynamic shared memory (`extern __shared__`, rewritten to `g_dynamic_shared` by the test) is a
// buffer of exactly the launch's `shared_bytes`, followed by a guard area: a kernel writing past
// what it was launched with ends the run with status 2.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
static std::barrier<>* g_barrier;
static float* g_dynamic_shared;
static float g_shfl[1024];
#define __global__
#define __device__
#define __shared__ static
inline void __syncthreads() {
    if (!g_barrier) {
        fprintf(stderr, "a kernel launched without barriers called __syncthreads\n");
        abort();
    }
    g_barrier->arrive_and_wait();
}
inline float __shfl_xor_sync(unsigned, float v, int offset) {
    int t = threadIdx.x;
    g_shfl[t] = v;
    __syncthreads();
    float r = g_shfl[(t & ~31) | ((t & 31) ^ offset)];
    __syncthreads();
    return r;
}
inline float __int_as_float(unsigned bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
using std::max;
using std::min;

// Runs `kernel` over `grid` blocks of `block` threads (only x threads: Flint's kernels use
// one-dimensional blocks). Exits with status 2 if the kernel wrote past its dynamic shared
// memory.
inline void launch(dim3 grid, dim3 block, std::function<void()> kernel,
                   size_t shared_bytes = 1 << 18, bool barriers = true) {
    const size_t guard = 1024;
    const unsigned pattern = 0x7fc0dead;  // a NaN no kernel computes
    std::vector<unsigned> shared((shared_bytes + 3) / 4 + guard, pattern);
    g_dynamic_shared = reinterpret_cast<float*>(shared.data());
    gridDim = grid;
    blockDim = block;
    unsigned threads = block.x * block.y * block.z;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                if (!barriers) {
                    g_barrier = nullptr;
                    blockIdx = {x, y, z};
                    for (unsigned t = 0; t < threads; ++t) {
                        threadIdx = {t, 0, 0};
                        kernel();
                    }
                    continue;
                }
                std::barrier<> bar(threads);
                g_barrier = &bar;
                std::vector<std::thread> ts;
                for (unsigned t = 0; t < threads; ++t)
                    ts.emplace_back([=] {
                        blockIdx = {x, y, z};
                        threadIdx = {t, 0, 0};
                        kernel();
                    });
                for (auto& t : ts) t.join();
                g_barrier = nullptr;
            }
    for (size_t i = shared.size() - guard; i < shared.size(); ++i)
        if (shared[i] != pattern) {
            fprintf(stderr, "the kernel wrote past its %zu bytes of dynamic shared memory\n",
                    shared_bytes);
            exit(2);
        }
}
