// Implicit-GEMM convolutions on tensor cores (NCHW, groups, stride, padding,
// dilation), FP32 accumulate, the same GEMMs as kernels/conv_implicit.py:
//
//   conv_fwd_P          Y[o, p]  = sum_k  W[o, k]   Xcol[k, p]     M=Og  N=N*OH*OW  K=Cg*KH*KW
//   conv_bwd_input_P    dX[c, q] = sum_k' Wt[c, k'] dYcol[k', q]   M=Cg  N=N*H*W    K=Og*KH*KW
//   conv_bwd_weight_P   dW[o, k] = sum_p  dY[o, p]  Xcol[k, p]     M=Og  N=Cg*KH*KW K=N*OH*OW
//
// per group (gridDim.z), P = tf32 | bf16 | f16 (the inputs as gemm_mma.cu
// takes them: float32 rounded by cvt.rna, BF16 bits, IEEE half). k = (cl, i, j),
// p = (n, oy, ox), q = (n, ih, iw), k' = (o, i, j); Xcol[k, p] is x at
// (n, g*Cg + cl, oy*sh - top + i*dh, ox*sw - left + j*dw), zero in the padding;
// dYcol[k', q] is dy at the output (oy, ox) whose window puts cell (i, j) on
// (ih, iw), zero where none does (the transposed convolution, no col2im).
// The weight gradient splits its long reduction: blockIdx.z = split*G + g
// takes k-slabs split, split + S, ... into partial[split] (S = gridDim.z / G),
// summed afterwards in a fixed order by the launcher: deterministic.
//
// Everything after the loaders is gemm_mma.cu's, included below: the block
// tile, warp layout, padded slab layouts, STAGES-deep ring, ldmatrix / LDS
// fragment loads and mma.sync. Only the tile loaders differ: each slab
// element is computed from its (row, column) by the im2col arithmetic, so no
// column matrix ever exists in memory. Slab layouts: A is K-major ([m][k])
// in all three; B is MN-major ([k][n]) for fwd and bwd_input (consecutive
// threads take consecutive pixels: coalesced along image rows) and K-major
// ([n][k]) for bwd_weight (consecutive threads take consecutive p).
//
// Loads: the gathered elements are single elements at computed addresses,
// never 16-byte runs in general (padding and stride break the runs), so
//   TF32: every element is one 4-byte cp.async.ca (zero-filled through its
//         src-size operand), overlapping the mma of earlier slabs (LDGSTS);
//   BF16/FP16: cp.async's smallest copy is 4 bytes, two elements that need
//         not be adjacent, so plain 16-bit global loads, all of a slab's
//         issued before its shared stores, then st.shared (LDG + STS).
// The forward's W operand is an ordinary row-major (Og, K) matrix per group:
// conv_fwd_P copies it in 16-byte cp.async chunks (gemm_mma.cu's loader:
// needs K a multiple of 16 bytes and an aligned base); conv_fwd_P_unaligned
// gathers it like the others, for any K.
//
// Bounds: rows past M, columns past N and k past K load zeros (so partial
// tiles and the K tail add nothing), padding loads zeros, and the epilogue
// stores only inside the output.

#define GEMM_MMA_NO_ENTRIES
#include "gemm_mma.cu"

#ifndef GEMM_MMA_EMULATED
// 4 bytes global -> shared; bytes 0 zero-fills (cp.async.cg only copies 16).
__device__ __forceinline__ void cp_async4(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}
#endif

struct Conv {
    int n, c, h, w, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups, cg, og;
};

// The output index (oy or ox) whose window puts a cell t away on this pixel
// (t = pixel + pad - cell*dilation), or -1: t >= 0 is tested first, since C's
// % of a negative t is not the remainder wanted.
__device__ __forceinline__ int source(int t, int stride, int size) {
    if (t < 0 || t % stride != 0) return -1;
    const int q = t / stride;
    return q < size ? q : -1;
}

// A ROWS x COLS slab at row stride STRIDE: element e = tid + i*THREADS sits
// at (e / COLS, e % COLS). THREADS is a multiple of COLS, so a thread keeps
// column tid % COLS for every i and its callers work out what depends on the
// column once. off(r) is the element index (from base) of row r in that
// column, or -1 for a zero.
template <int ELEM, int ROWS, int COLS, int STRIDE, class Off>
__device__ __forceinline__ void gather_slab(u32 dst, const char* base, int tid, const Off& off) {
    static_assert(THREADS % COLS == 0 && ROWS % (THREADS / COLS) == 0, "whole rows per pass");
    constexpr int STEP = THREADS / COLS, PER = ROWS / STEP;
    const int c = tid % COLS, r0 = tid / COLS;
    if constexpr (ELEM == 4) {
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const int r = r0 + i * STEP;
            const long long e = off(r);
            // bytes 0 reads nothing; base keeps the address a valid one
            cp_async4(dst + (r * STRIDE + c) * 4, e < 0 ? base : base + e * 4, e < 0 ? 0 : 4);
        }
    } else {
        unsigned short v[PER];
#pragma unroll
        for (int i = 0; i < PER; ++i) {
            const long long e = off(r0 + i * STEP);
            v[i] = e < 0 ? 0 : reinterpret_cast<const unsigned short*>(base)[e];
        }
#pragma unroll
        for (int i = 0; i < PER; ++i) sts(dst + ((r0 + i * STEP) * STRIDE + c) * 2, v[i]);
    }
}

// gemm_mma.cu's main loop with the stage loader as a parameter:
// stage(sA, sB, t) fills this block's t-th k-slab.
template <int PREC, bool TB, class Stage>
__device__ __forceinline__ void mainloop(float (&acc)[MT][NT][4], int kslabs, const Stage& stage) {
    constexpr int ELEM = PREC == TF32 ? 4 : 2;
    using L = Layout<ELEM>;
    constexpr int A_BYTES = a_tile_elems<ELEM, false>() * ELEM;
    constexpr int STAGE_BYTES = A_BYTES + b_tile_elems<ELEM, TB>() * ELEM;
    static_assert(A_BYTES % 16 == 0 && STAGE_BYTES % 16 == 0, "cp.async targets 16-byte aligned");
    GEMM_DYNAMIC_SMEM(smem);
    const u32 s0 = smem_addr(smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < kslabs) stage(s0 + s * STAGE_BYTES, s0 + s * STAGE_BYTES + A_BYTES, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < kslabs; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < kslabs) {
            const u32 st = s0 + (next % STAGES) * STAGE_BYTES;
            stage(st, st + A_BYTES, next);
        }
        cp_async_commit();
        const u32 sA = s0 + (kt % STAGES) * STAGE_BYTES, sB = sA + A_BYTES;
#pragma unroll
        for (int ks = 0; ks < L::BK; ks += L::KSTEP) {
            u32 af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) load_a<ELEM, false>(af[i], sA, wm0 + 16 * i, ks, lane);
#pragma unroll
            for (int j = 0; j < NT; j += 2)
                load_b2<ELEM, TB>(bf[j], bf[j + 1], sB, wn0 + 8 * j, ks, lane);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) mma<PREC>(acc[i][j], af[i], bf[j]);
        }
    }
    cp_async_wait<0>();
}

// Stores the block's (M x N)-clipped tile: element (r, c) of the GEMM goes
// to out[col(c) + r * rstride]; col(c) is worked out once per column.
template <class Col>
__device__ __forceinline__ void epilogue(const float (&acc)[MT][NT][4], float* out, int m0, int n0,
                                         int M, int N, size_t rstride, const Col& col) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm0 = m0 + (warp / WARPS_N) * WTM, wn0 = n0 + (warp % WARPS_N) * WTN;
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
            const int c = wn0 + 8 * j + 2 * t + e1;
            if (c >= N) continue;
            const size_t base = col(c);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int e2 = 0; e2 < 2; ++e2) {
                    const int r = wm0 + 16 * i + g + 8 * e2;
                    if (r < M) out[base + (size_t)r * rstride] = acc[i][j][2 * e2 + e1];
                }
        }
}

template <int PREC, bool W16>
__device__ __forceinline__ void conv_fwd(const char* X, const char* Wp, float* Y, const Conv cv) {
    constexpr int ELEM = PREC == TF32 ? 4 : 2;
    using L = Layout<ELEM>;
    const int tid = threadIdx.x, g = blockIdx.z, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int khw = cv.kh * cv.kw, K = cv.cg * khw, ohw = cv.oh * cv.ow, npix = cv.n * ohw;
    const char* Wg = Wp + (size_t)g * cv.og * K * ELEM;  // this group's (Og, K) rows
    // This thread's Xcol column (B is [k][p], column tid % BN) for the whole kernel.
    const int p = n0 + tid % BN;
    const bool pok = p < npix;
    const int img = pok ? p / ohw : 0, rem = pok ? p % ohw : 0;
    const int ih0 = (rem / cv.ow) * cv.sh - cv.top, iw0 = (rem % cv.ow) * cv.sw - cv.left;
    const long long xg = ((long long)img * cv.c + (long long)g * cv.cg) * cv.h * cv.w;
    auto stage = [&](u32 sA, u32 sB, int t) {
        const int k0 = t * L::BK;
        if constexpr (W16) {
            load_slab<ELEM, BM, L::BK, L::KROW, true>(sA, Wg, cv.og, K, m0, k0, tid);
        } else {
            const int k = k0 + tid % L::BK;
            gather_slab<ELEM, BM, L::BK, L::KROW>(sA, Wg, tid, [&](int r) -> long long {
                return (m0 + r < cv.og && k < K) ? (long long)(m0 + r) * K + k : -1;
            });
        }
        gather_slab<ELEM, L::BK, BN, L::BROW>(sB, X, tid, [&](int r) -> long long {
            const int k = k0 + r;
            if (!pok || k >= K) return -1;
            const int cl = k / khw, kr = k - cl * khw, i = kr / cv.kw, j = kr - i * cv.kw;
            const int ih = ih0 + i * cv.dh, iw = iw0 + j * cv.dw;
            if ((unsigned)ih >= (unsigned)cv.h || (unsigned)iw >= (unsigned)cv.w) return -1;
            return xg + ((long long)cl * cv.h + ih) * cv.w + iw;
        });
    };
    float acc[MT][NT][4];
    mainloop<PREC, false>(acc, (K + L::BK - 1) / L::BK, stage);
    epilogue(acc, Y, m0, n0, cv.og, npix, ohw, [&](int c) {
        return ((size_t)(c / ohw) * cv.o + (size_t)g * cv.og) * ohw + c % ohw;
    });
}

template <int PREC>
__device__ __forceinline__ void conv_bwd_input(const char* DY, const char* Wp, float* DX,
                                               const Conv cv) {
    constexpr int ELEM = PREC == TF32 ? 4 : 2;
    using L = Layout<ELEM>;
    const int tid = threadIdx.x, g = blockIdx.z, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int khw = cv.kh * cv.kw, K = cv.og * khw, hw = cv.h * cv.w, npix = cv.n * hw;
    const int q = n0 + tid % BN;  // this thread's dYcol column (B is [k'][q])
    const bool qok = q < npix;
    const int img = qok ? q / hw : 0, rem = qok ? q % hw : 0;
    const int ihp = rem / cv.w + cv.top, iwp = rem % cv.w + cv.left;  // padded coordinates
    const long long dyg = ((long long)img * cv.o + (long long)g * cv.og) * cv.oh * cv.ow;
    auto stage = [&](u32 sA, u32 sB, int t) {
        const int k0 = t * L::BK;
        {   // Wt[c][k'] = w[g*Og + ol, c, i, j]: this thread's k' is fixed for the slab
            const int k = k0 + tid % L::BK;
            const int ol = k / khw, kr = k - ol * khw;
            const long long wk = ((long long)(g * cv.og + ol) * cv.cg) * khw + kr;
            gather_slab<ELEM, BM, L::BK, L::KROW>(sA, Wp, tid, [&](int r) -> long long {
                return (m0 + r < cv.cg && k < K) ? wk + (long long)(m0 + r) * khw : -1;
            });
        }
        gather_slab<ELEM, L::BK, BN, L::BROW>(sB, DY, tid, [&](int r) -> long long {
            const int k = k0 + r;
            if (!qok || k >= K) return -1;
            const int ol = k / khw, kr = k - ol * khw, i = kr / cv.kw, j = kr - i * cv.kw;
            const int oy = source(ihp - i * cv.dh, cv.sh, cv.oh);
            const int ox = source(iwp - j * cv.dw, cv.sw, cv.ow);
            if (oy < 0 || ox < 0) return -1;
            return dyg + ((long long)ol * cv.oh + oy) * cv.ow + ox;
        });
    };
    float acc[MT][NT][4];
    mainloop<PREC, false>(acc, (K + L::BK - 1) / L::BK, stage);
    epilogue(acc, DX, m0, n0, cv.cg, npix, hw, [&](int c) {
        return ((size_t)(c / hw) * cv.c + (size_t)g * cv.cg) * hw + c % hw;
    });
}

template <int PREC>
__device__ __forceinline__ void conv_bwd_weight(const char* DY, const char* X, float* partial,
                                                const Conv cv) {
    constexpr int ELEM = PREC == TF32 ? 4 : 2;
    using L = Layout<ELEM>;
    const int tid = threadIdx.x, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int g = blockIdx.z % cv.groups, split = blockIdx.z / cv.groups;
    const int splits = gridDim.z / cv.groups;
    const int khw = cv.kh * cv.kw, kc = cv.cg * khw, ohw = cv.oh * cv.ow, npix = cv.n * ohw;
    const int rslabs = (npix + L::BK - 1) / L::BK;
    const int mine = split < rslabs ? (rslabs - 1 - split) / splits + 1 : 0;
    auto stage = [&](u32 sA, u32 sB, int t) {
        // Both slabs are K-major with BK columns: this thread's p is the same in both.
        const int p = (split + t * splits) * L::BK + tid % L::BK;
        const bool pok = p < npix;
        const int img = pok ? p / ohw : 0, rem = pok ? p % ohw : 0;
        const int ih0 = (rem / cv.ow) * cv.sh - cv.top, iw0 = (rem % cv.ow) * cv.sw - cv.left;
        const long long dyp = ((long long)img * cv.o + (long long)g * cv.og + m0) * ohw + rem;
        gather_slab<ELEM, BM, L::BK, L::KROW>(sA, DY, tid, [&](int r) -> long long {
            return (pok && m0 + r < cv.og) ? dyp + (long long)r * ohw : -1;
        });
        const long long xg = ((long long)img * cv.c + (long long)g * cv.cg) * cv.h * cv.w;
        gather_slab<ELEM, BN, L::BK, L::KROW>(sB, X, tid, [&](int r) -> long long {
            const int k = n0 + r;
            if (!pok || k >= kc) return -1;
            const int cl = k / khw, kr = k - cl * khw, i = kr / cv.kw, j = kr - i * cv.kw;
            const int ih = ih0 + i * cv.dh, iw = iw0 + j * cv.dw;
            if ((unsigned)ih >= (unsigned)cv.h || (unsigned)iw >= (unsigned)cv.w) return -1;
            return xg + ((long long)cl * cv.h + ih) * cv.w + iw;
        });
    };
    float acc[MT][NT][4];
    mainloop<PREC, true>(acc, mine, stage);
    const size_t out0 = ((size_t)split * cv.o + (size_t)g * cv.og) * kc;
    epilogue(acc, partial, m0, n0, cv.og, kc, kc, [&](int c) { return out0 + c; });
}

#define CONV_ARGS                                                                            \
    int n, int c, int h, int w, int o, int kh, int kw, int oh, int ow, int sh, int sw, int dh, \
        int dw, int top, int left, int groups
#define CONV_GEO \
    Conv{n, c, h, w, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups, c / groups, o / groups}
#define AS_BYTES(p) static_cast<const char*>(p)

// Arguments: two inputs, the float32 output, then the geometry (N, C, H, W,
// O, KH, KW, OH, OW, stride, dilation, top/left padding, groups).
// The weight gradient asks for two blocks per SM (<= 128 registers): left to
// itself ptxas takes 172 for the 16-bit ones, which allows only one, and at
// 128 it still spills nothing (tests/test_conv_mma_compile.py). The
// unaligned forward would spill at 128, so it keeps the default.
#define CONV_KERNELS(P, PREC)                                                                   \
    extern "C" __global__ void __launch_bounds__(THREADS)                                        \
        conv_fwd_##P(const void* __restrict__ x, const void* __restrict__ wt,                     \
                     float* __restrict__ y, CONV_ARGS) {                                         \
        conv_fwd<PREC, true>(AS_BYTES(x), AS_BYTES(wt), y, CONV_GEO);                            \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                        \
        conv_fwd_##P##_unaligned(const void* __restrict__ x, const void* __restrict__ wt,         \
                                 float* __restrict__ y, CONV_ARGS) {                             \
        conv_fwd<PREC, false>(AS_BYTES(x), AS_BYTES(wt), y, CONV_GEO);                           \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS)                                        \
        conv_bwd_input_##P(const void* __restrict__ dy, const void* __restrict__ wt,              \
                           float* __restrict__ dx, CONV_ARGS) {                                  \
        conv_bwd_input<PREC>(AS_BYTES(dy), AS_BYTES(wt), dx, CONV_GEO);                          \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS, 2)                                     \
        conv_bwd_weight_##P(const void* __restrict__ dy, const void* __restrict__ x,              \
                            float* __restrict__ partial, CONV_ARGS) {                            \
        conv_bwd_weight<PREC>(AS_BYTES(dy), AS_BYTES(x), partial, CONV_GEO);                     \
    }

CONV_KERNELS(tf32, TF32)
CONV_KERNELS(bf16, BF16)
CONV_KERNELS(f16, F16)
