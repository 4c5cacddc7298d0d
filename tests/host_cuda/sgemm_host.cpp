// kernels/cu/sgemm.cu, unchanged, run on the host through cuda_emu.h (see
// tests/test_sgemm_host.py, which puts the shipped source on the include
// path); -DSGEMM_BLOCKS_PER_SM picks the kernel's shape as on the GPU.
#include <cstring>

#include "cuda_emu.h"
#include "sgemm.cu"

using Entry = void (*)(const float*, const float*, float*, int, int, int, int, int, int);

extern "C" int run_sgemm(const char* name, int gx, int gy, int nthreads, const float* A,
                         const float* B, float* C, int M, int N, int K, int lda, int ldb,
                         int ldc) {
    static const struct {
        const char* name;
        Entry fn;
    } table[] = {{"sgemm_nn", sgemm_nn}, {"sgemm_nt", sgemm_nt},
                 {"sgemm_tn", sgemm_tn}, {"sgemm_tt", sgemm_tt},
                 {"sgemm_nn_scalar", sgemm_nn_scalar}, {"sgemm_nt_scalar", sgemm_nt_scalar},
                 {"sgemm_tn_scalar", sgemm_tn_scalar}, {"sgemm_tt_scalar", sgemm_tt_scalar}};
    for (const auto& e : table)
        if (std::strcmp(e.name, name) == 0) {
            emu_launch(gx, gy, nthreads, [&] { e.fn(A, B, C, M, N, K, lda, ldb, ldc); });
            return 0;
        }
    return 1;
}
