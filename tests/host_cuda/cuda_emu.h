// Just enough of CUDA's device-side C++ to run a kernel's own source on the
// host, for tests on machines without a GPU: the threads of a block are
// std::threads, __syncthreads() is a std::barrier, a __shared__ variable is a
// function-local static (blocks run one after another, so one copy serves
// every block). Vector types, __ldg and launch bounds map to plain C++.
// What this cannot show: warp-level behaviour (shuffles, tensor cores),
// timing, or anything about the SASS; the compile tests cover the latter.
#pragma once

#include <barrier>
#include <cmath>
#include <cstddef>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct emu_dim3 {
    int x, y, z;
};
inline thread_local emu_dim3 threadIdx{0, 0, 0};
inline thread_local emu_dim3 blockIdx{0, 0, 0};
inline std::barrier<>* emu_block_barrier = nullptr;

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class T>
inline T __ldg(const T* p) {
    return *p;
}

// kernel() once per thread of a (gx, gy) grid of 1-D blocks of nthreads.
template <class F>
void emu_launch(int gx, int gy, int nthreads, F kernel) {
    for (int by = 0; by < gy; ++by)
        for (int bx = 0; bx < gx; ++bx) {
            std::barrier<> bar(nthreads);
            emu_block_barrier = &bar;
            std::vector<std::thread> threads;
            threads.reserve(nthreads);
            for (int t = 0; t < nthreads; ++t)
                threads.emplace_back([=, &kernel] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {bx, by, 0};
                    kernel();
                });
            for (auto& th : threads) th.join();
        }
}
