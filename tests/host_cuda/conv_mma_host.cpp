// kernels/cu/conv_mma.cu (and the gemm_mma.cu it includes), unchanged, run on
// the host: cuda_emu.h for the threads and __syncthreads, mma_emu.h for the
// PTX, and a 3-D grid here (the kernels read blockIdx.z and gridDim.z). See
// tests/test_conv_mma_host.py.
#include <cstring>

#include "cuda_emu.h"
inline thread_local emu_dim3 gridDim{1, 1, 1};
#include "mma_emu.h"
#include "conv_mma.cu"

using Entry = void (*)(const void*, const void*, float*, int, int, int, int, int, int, int, int,
                       int, int, int, int, int, int, int, int);

#define ENTRIES(P)                                                                    \
    {"conv_fwd_" #P, conv_fwd_##P}, {"conv_fwd_" #P "_unaligned", conv_fwd_##P##_unaligned}, \
        {"conv_bwd_input_" #P, conv_bwd_input_##P}, {"conv_bwd_weight_" #P, conv_bwd_weight_##P}

extern "C" int run_conv_mma(const char* name, int gx, int gy, int gz, int smem_bytes, int late,
                            const void* in0, const void* in1, float* out, const int* geo) {
    static const struct {
        const char* name;
        Entry fn;
    } table[] = {ENTRIES(tf32), ENTRIES(bf16), ENTRIES(f16)};
    if (smem_bytes > EMU_SMEM_MAX) return 3;
    for (const auto& e : table)
        if (std::strcmp(e.name, name) == 0) {
            emu_setup(THREADS, smem_bytes, late != 0);
            for (int bz = 0; bz < gz; ++bz)
                for (int by = 0; by < gy; ++by)
                    for (int bx = 0; bx < gx; ++bx) {
                        std::barrier<> bar(THREADS);
                        emu_block_barrier = &bar;
                        std::vector<std::thread> threads;
                        for (int t = 0; t < THREADS; ++t)
                            threads.emplace_back([=] {
                                threadIdx = {t, 0, 0};
                                blockIdx = {bx, by, bz};
                                gridDim = {gx, gy, gz};
                                const int* g = geo;
                                e.fn(in0, in1, out, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                                     g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
                            });
                        for (auto& th : threads) th.join();
                    }
            return emu_error.empty() ? 0 : 2;
        }
    return 1;
}

extern "C" const char* conv_mma_emu_error() { return emu_error.c_str(); }
