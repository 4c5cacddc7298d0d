// Smallest tensor-core kernel: one warp, one m16n8k8 TF32 product of fragments
// read straight from registers. Kept so cuda_cpp's tests check the toolchain
// (NVRTC -> ptxas -> nvdisasm) independently of gemm_mma.cu.
extern "C" __global__ void smoke_mma_tf32(const float* a, const float* b, float* c) {
    const int lane = threadIdx.x & 31;
    unsigned ar[4], br[2];
    for (int i = 0; i < 4; ++i)
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(ar[i]) : "f"(a[lane * 4 + i]));
    for (int i = 0; i < 2; ++i)
        asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(br[i]) : "f"(b[lane * 2 + i]));
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
    for (int i = 0; i < 4; ++i) c[lane * 4 + i] = d[i];
}
