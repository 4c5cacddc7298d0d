// kernels/cu/gemm_mma.cu, unchanged, run on the host: cuda_emu.h for the
// threads and __syncthreads, mma_emu.h for the PTX (see
// tests/test_gemm_mma_host.py, which puts the shipped source on the include
// path and passes gemm_mma.py's tiling as -D options).
#include <cmath>
#include <cstring>

#include "cuda_emu.h"
#include "mma_emu.h"
#include "gemm_mma.cu"

using Entry = void (*)(const void*, const void*, float*, int, int, int);

#define ENTRY(name) {#name, name}, {#name "_unaligned", name##_unaligned}

extern "C" int run_gemm_mma(const char* name, int gx, int gy, int smem_bytes, int late,
                            const void* A, const void* B, float* C, int M, int N, int K) {
    static const struct {
        const char* name;
        Entry fn;
    } table[] = {ENTRY(gemm_tf32_nn), ENTRY(gemm_tf32_nt), ENTRY(gemm_tf32_tn), ENTRY(gemm_tf32_tt),
                 ENTRY(gemm_bf16_nn), ENTRY(gemm_bf16_nt), ENTRY(gemm_bf16_tn), ENTRY(gemm_bf16_tt),
                 ENTRY(gemm_f16_nn),  ENTRY(gemm_f16_nt),  ENTRY(gemm_f16_tn),  ENTRY(gemm_f16_tt)};
    if (smem_bytes > EMU_SMEM_MAX) return 3;
    for (const auto& e : table)
        if (std::strcmp(e.name, name) == 0) {
            emu_setup(THREADS, smem_bytes, late != 0);
            emu_launch(gx, gy, THREADS, [&] { e.fn(A, B, C, M, N, K); });
            return emu_error.empty() ? 0 : 2;
        }
    return 1;
}

extern "C" const char* gemm_mma_emu_error() { return emu_error.c_str(); }
