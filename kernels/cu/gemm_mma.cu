// Tensor-core GEMM: C (M x N, float32) = op(A) @ op(B), FP32 accumulate.
//
//   gemm_tf32_{nn,nt,tn,tt}  A, B float32, rounded to TF32 (cvt.rna) on the
//                            way into mma.sync.m16n8k8.tf32
//   gemm_bf16_{..}           A, B BF16 bit patterns (uint16), m16n8k16.bf16
//   gemm_f16_{..}            A, B IEEE half (read as uint16), m16n8k16.f16
//
// Layouts follow kernels/matmul.py: everything row-major and contiguous; A is
// (M, K), or (K, M) for t? variants; B is (K, N), or (N, K) for ?t variants.
//
// Alignment (cp.async moves 16-byte chunks, both ends 16-byte aligned): the
// base pointers of A and B must be 16-byte aligned and each stored row must
// be a multiple of 16 bytes long: K or M (whichever is A's row length) and
// N or K (B's) multiples of 8 for 16-bit inputs, of 4 for TF32. Every kernel
// has a twin <name>_unaligned that loads element by element instead, for any
// shape and element-aligned bases; the launcher (gemm_mma.py) picks one.
// Shapes need not be multiples of the tiles: loads past an edge are
// zero-filled (cp.async's src-size operand, or explicit zeros) and the
// epilogue stores only inside C.
//
// The tiling constants come from gemm_mma.py as -D options, so the Python
// launcher (shared-memory size) and the numba twin (same layout, run in the
// simulator) cannot drift from what is compiled here.
//
// Block: GEMM_BM x GEMM_BN outputs, 8 warps as GEMM_WARPS_M x GEMM_WARPS_N,
// each a (BM/WARPS_M) x (BN/WARPS_N) warp tile of 16x8 mma tiles. K moves in
// slabs of 64 bytes per row (32 halves or 16 floats) through a GEMM_STAGES
// ring of shared-memory buffers filled by cp.async while earlier slabs are
// multiplied.
//
// Shared layout of a slab, per operand, as the operand is stored globally:
//   K-major (A not transposed, B transposed): [rows][BK + one 16-byte pad]:
//     80-byte rows put the 8 row addresses of one ldmatrix 8x8 matrix on 8
//     distinct groups of 4 banks (80/4 = 20 words: 0,20,8,28,16,4,24,12).
//   MN-major (A transposed, B not): [BK][BM or BN + GEMM_PAD_MN elements]:
//     a row of 136 halves (68 words) steps 4 banks per row for ldmatrix.trans;
//     a row of 136 floats steps 8 banks, so the scalar TF32 fragment reads
//     (lane (g, t) reads row t, column g: bank 8t + g) are conflict-free.
// TF32 cannot use ldmatrix.trans (it transposes 16-bit elements, which would
// split a float), so MN-major TF32 operands are read with 32-bit LDS.

#if !defined(GEMM_BM) || !defined(GEMM_BN) || !defined(GEMM_STAGES) || \
    !defined(GEMM_WARPS_M) || !defined(GEMM_WARPS_N) || !defined(GEMM_PAD_MN)
#error "compile gemm_mma.cu through gpudl.kernels.gemm_mma, which passes the tiling as -D options"
#endif

typedef unsigned int u32;
enum { TF32 = 0, BF16 = 1, F16 = 2 };

constexpr int BM = GEMM_BM, BN = GEMM_BN, STAGES = GEMM_STAGES;
constexpr int WARPS_M = GEMM_WARPS_M, WARPS_N = GEMM_WARPS_N;
constexpr int THREADS = 32 * WARPS_M * WARPS_N;
constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // warp tile
constexpr int MT = WTM / 16, NT = WTN / 8;              // mma tiles per warp
static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: 16-row A loads, n16 B loads");

// Per input width ELEM (2 or 4 bytes): the slab, the mma k and the strides.
template <int ELEM> struct Elem { typedef unsigned short T; };
template <> struct Elem<4> { typedef u32 T; };

template <int ELEM> struct Layout {
    static constexpr int CE = 16 / ELEM;      // elements per 16-byte chunk
    static constexpr int BK = 64 / ELEM;      // slab depth: 64 bytes of k
    static constexpr int KSTEP = 32 / ELEM;   // mma k: 16 (m16n8k16) or 8 (m16n8k8)
    static constexpr int KROW = BK + CE;      // K-major row stride (elements)
    static constexpr int AROW = BM + GEMM_PAD_MN, BROW = BN + GEMM_PAD_MN;  // MN-major
};

template <int ELEM, bool TA> __device__ constexpr int a_tile_elems() {
    return TA ? Layout<ELEM>::BK * Layout<ELEM>::AROW : BM * Layout<ELEM>::KROW;
}
template <int ELEM, bool TB> __device__ constexpr int b_tile_elems() {
    return TB ? BN * Layout<ELEM>::KROW : Layout<ELEM>::BK * Layout<ELEM>::BROW;
}

// ---- the PTX: every instruction numba cannot emit, and the dynamic shared
// memory, in one place. tests/host_cuda/mma_emu.h defines GEMM_MMA_EMULATED and
// supplies host versions with the PTX ISA's semantics (warp-collective
// ldmatrix and mma through a per-warp exchange, cp.async landing late), so
// everything below this block runs unchanged on the CPU in the tests.
#ifndef GEMM_MMA_EMULATED
#define GEMM_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; bytes < 16 zero-fills the rest (0: all zeros).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ u32 lds32(u32 addr) {
    u32 v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
    return v;
}
__device__ __forceinline__ u32 to_tf32(u32 bits) {
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(bits)));
    return r;
}

__device__ __forceinline__ void sts(u32 addr, unsigned short v) {
    asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(v) : "memory");
}
__device__ __forceinline__ void sts(u32 addr, u32 v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

template <int PREC> __device__ __forceinline__ void mma(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]);

#define MMA_ASM(SHAPE_TYPES)                                                                   \
    asm("mma.sync.aligned." SHAPE_TYPES " {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n" \
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                       \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))

template <> __device__ __forceinline__ void mma<TF32>(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_ASM("m16n8k8.row.col.f32.tf32.tf32.f32");
}
template <> __device__ __forceinline__ void mma<BF16>(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_ASM("m16n8k16.row.col.f32.bf16.bf16.f32");
}
template <> __device__ __forceinline__ void mma<F16>(float (&c)[4], const u32 (&a)[4], const u32 (&b)[2]) {
    MMA_ASM("m16n8k16.row.col.f32.f16.f16.f32");
}
#endif  // GEMM_MMA_EMULATED


// One ROWS x COLS slab of a row-major global matrix (rows_total x cols_total,
// row stride cols_total) into shared memory at row stride STRIDE, starting at
// global (r0, c0). Chunk i of the slab goes to thread i % THREADS. ASYNC: one
// 16-byte cp.async per chunk (needs 16-byte aligned rows and base); otherwise
// the chunk's elements one by one through registers, for any row length
// (the _unaligned kernels: same layout, same ring, no overlap of the loads).
template <int ELEM, int ROWS, int COLS, int STRIDE, bool ASYNC>
__device__ __forceinline__ void load_slab(u32 dst, const char* g, int rows_total, int cols_total,
                                          int r0, int c0, int tid) {
    constexpr int CE = 16 / ELEM, CPR = COLS / CE, CHUNKS = ROWS * CPR;
    static_assert(CHUNKS % THREADS == 0, "every thread moves the same number of chunks");
#pragma unroll
    for (int i = 0; i < CHUNKS / THREADS; ++i) {
        const int id = tid + i * THREADS;
        const int r = id / CPR, c = (id % CPR) * CE;
        const int gr = r0 + r, gc = c0 + c;
        if constexpr (!ASYNC) {
            using T = typename Elem<ELEM>::T;
            const T* src = reinterpret_cast<const T*>(g) + (size_t)gr * cols_total + gc;
            T v[CE];
#pragma unroll
            for (int e = 0; e < CE; ++e) v[e] = (gr < rows_total && gc + e < cols_total) ? src[e] : T(0);
#pragma unroll
            for (int e = 0; e < CE; ++e) sts(dst + (r * STRIDE + c + e) * ELEM, v[e]);
            continue;
        }
        int bytes = 0;
        const char* src = g;  // a valid address even when nothing is read
        if (gr < rows_total && gc < cols_total) {
            bytes = min(16, (cols_total - gc) * ELEM);
            src = g + ((size_t)gr * cols_total + gc) * ELEM;
        }
        cp_async16(dst + (r * STRIDE + c) * ELEM, src, bytes);
    }
}

template <int ELEM, bool TA, bool TB, bool ASYNC>
__device__ __forceinline__ void load_stage(u32 sA, u32 sB, const char* A, const char* B, int M,
                                           int N, int K, int m0, int n0, int k0, int tid) {
    using L = Layout<ELEM>;
    if (TA) load_slab<ELEM, L::BK, BM, L::AROW, ASYNC>(sA, A, K, M, k0, m0, tid);
    else    load_slab<ELEM, BM, L::BK, L::KROW, ASYNC>(sA, A, M, K, m0, k0, tid);
    if (TB) load_slab<ELEM, BN, L::BK, L::KROW, ASYNC>(sB, B, N, K, n0, k0, tid);
    else    load_slab<ELEM, L::BK, BN, L::BROW, ASYNC>(sB, B, K, N, k0, n0, tid);
}

// A fragment of the 16 x KSTEP tile at (row0, k0) of the slab: registers in
// mma order (m16n8k16: a0a1 a2a3 a4a5 a6a7 = rows g, g+8 at k 2t, then k
// 2t+8; m16n8k8: a0..a3 = (g,t) (g+8,t) (g,t+4) (g+8,t+4)). ldmatrix lane l
// names row l%8 of matrix l/8, and matrices come out in that order.
template <int ELEM, bool TA>
__device__ __forceinline__ void load_a(u32 (&a)[4], u32 sA, int row0, int k0, int lane) {
    using L = Layout<ELEM>;
    if constexpr (ELEM == 2) {
        if constexpr (!TA) {  // [m][k]; matrices (m0-7,k0-7) (m8-15,k0-7) (m0-7,k8-15) (m8-15,k8-15)
            ldsm_x4(a, sA + ((row0 + (lane & 15)) * L::KROW + k0 + (lane >> 4) * 8) * 2);
        } else {  // [k][m], transposed on the way out; same matrix order
            const int k = k0 + (lane & 7) + 8 * (lane >> 4), m = row0 + 8 * ((lane >> 3) & 1);
            ldsm_x4_trans(a, sA + (k * L::AROW + m) * 2);
        }
    } else {
        if constexpr (!TA) {  // an 8x8 b16 matrix is 8 rows of 4 floats: lane (g,t) gets float t of row g
            ldsm_x4(a, sA + ((row0 + (lane & 15)) * L::KROW + k0 + (lane >> 4) * 4) * 4);
        } else {
            const int g = lane >> 2, t = lane & 3;
            const u32 p = sA + ((k0 + t) * L::AROW + row0 + g) * 4;
            a[0] = lds32(p);
            a[1] = lds32(p + 8 * 4);
            a[2] = lds32(p + 4 * L::AROW * 4);
            a[3] = lds32(p + (4 * L::AROW + 8) * 4);
        }
        for (int i = 0; i < 4; ++i) a[i] = to_tf32(a[i]);
    }
}

// B fragments of two adjacent n8 tiles (n16 x KSTEP at (col0, k0)):
// b0 (b1) is tile 0's (1's) (b0b1, b2b3) for m16n8k16 or (b0, b1) for m16n8k8.
template <int ELEM, bool TB>
__device__ __forceinline__ void load_b2(u32 (&b0)[2], u32 (&b1)[2], u32 sB, int col0, int k0,
                                        int lane) {
    using L = Layout<ELEM>;
    u32 r[4];
    const int q = lane >> 3;  // matrices: (tile 0, k lo) (tile 0, k hi) (tile 1, k lo) (tile 1, k hi)
    if constexpr (ELEM == 2) {
        if constexpr (TB) {  // [n][k]
            ldsm_x4(r, sB + ((col0 + (lane & 7) + 8 * (q >> 1)) * L::KROW + k0 + 8 * (q & 1)) * 2);
        } else {  // [k][n]
            ldsm_x4_trans(r, sB + ((k0 + (lane & 7) + 8 * (q & 1)) * L::BROW + col0 + 8 * (q >> 1)) * 2);
        }
    } else {
        if constexpr (TB) {
            ldsm_x4(r, sB + ((col0 + (lane & 7) + 8 * (q >> 1)) * L::KROW + k0 + 4 * (q & 1)) * 4);
        } else {  // b0 = (k t, n g), b1 = (k t+4, n g)
            const int g = lane >> 2, t = lane & 3;
            const u32 p = sB + ((k0 + t) * L::BROW + col0 + g) * 4;
            r[0] = lds32(p);
            r[1] = lds32(p + 4 * L::BROW * 4);
            r[2] = lds32(p + 8 * 4);
            r[3] = lds32(p + (4 * L::BROW + 8) * 4);
        }
        for (int i = 0; i < 4; ++i) r[i] = to_tf32(r[i]);
    }
    b0[0] = r[0]; b0[1] = r[1]; b1[0] = r[2]; b1[1] = r[3];
}

template <int PREC, bool TA, bool TB, bool ASYNC>
__device__ __forceinline__ void gemm(const void* __restrict__ Ap, const void* __restrict__ Bp,
                                     float* __restrict__ C, int M, int N, int K) {
    constexpr int ELEM = PREC == TF32 ? 4 : 2;
    using L = Layout<ELEM>;
    constexpr int A_BYTES = a_tile_elems<ELEM, TA>() * ELEM;
    constexpr int STAGE_BYTES = A_BYTES + b_tile_elems<ELEM, TB>() * ELEM;
    static_assert(A_BYTES % 16 == 0 && STAGE_BYTES % 16 == 0, "cp.async targets 16-byte aligned");
    GEMM_DYNAMIC_SMEM(smem);
    const u32 s0 = smem_addr(smem);

    const char* A = static_cast<const char*>(Ap);
    const char* B = static_cast<const char*>(Bp);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm0 = (warp / WARPS_N) * WTM, wn0 = (warp % WARPS_N) * WTN;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kslabs = (K + L::BK - 1) / L::BK;

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    // Prologue: slabs 0..STAGES-2 in flight, one commit group each (empty
    // groups past the end keep wait_group's count meaning "slab kt landed").
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < kslabs)
            load_stage<ELEM, TA, TB, ASYNC>(s0 + s * STAGE_BYTES, s0 + s * STAGE_BYTES + A_BYTES, A,
                                            B, M, N, K, m0, n0, s * L::BK, tid);
        cp_async_commit();
    }
    for (int kt = 0; kt < kslabs; ++kt) {
        cp_async_wait<STAGES - 2>();  // this thread's chunks of slab kt have landed...
        __syncthreads();              // ...and everyone's; and slab kt-1's buffer is free
        const int next = kt + STAGES - 1;
        if (next < kslabs) {
            const u32 st = s0 + (next % STAGES) * STAGE_BYTES;
            load_stage<ELEM, TA, TB, ASYNC>(st, st + A_BYTES, A, B, M, N, K, m0, n0, next * L::BK,
                                            tid);
        }
        cp_async_commit();
        const u32 sA = s0 + (kt % STAGES) * STAGE_BYTES, sB = sA + A_BYTES;
#pragma unroll
        for (int ks = 0; ks < L::BK; ks += L::KSTEP) {
            u32 af[MT][4], bf[NT][2];
#pragma unroll
            for (int i = 0; i < MT; ++i) load_a<ELEM, TA>(af[i], sA, wm0 + 16 * i, ks, lane);
#pragma unroll
            for (int j = 0; j < NT; j += 2)
                load_b2<ELEM, TB>(bf[j], bf[j + 1], sB, wn0 + 8 * j, ks, lane);
#pragma unroll
            for (int i = 0; i < MT; ++i)
#pragma unroll
                for (int j = 0; j < NT; ++j) mma<PREC>(acc[i][j], af[i], bf[j]);
        }
    }
    cp_async_wait<0>();  // no copy may outlive the block (they are all empty by now)

    // Epilogue: c0,c1 at (g, 2t), (g, 2t+1); c2,c3 at row g+8.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = m0 + wm0 + 16 * i + g + 8 * (e >> 1);
                const int c = n0 + wn0 + 8 * j + 2 * t + (e & 1);
                if (r < M && c < N) C[(size_t)r * N + c] = acc[i][j][e];
            }
}

// conv_mma.cu includes this file for the pieces above (PTX wrappers, slab
// layouts, fragment loaders) and defines GEMM_MMA_NO_ENTRIES to leave out
// the GEMM entries below.
#ifndef GEMM_MMA_NO_ENTRIES
// Per precision and transposition: NAME (cp.async, aligned rows) and
// NAME_unaligned (element loads, any shape).
#define GEMM_KERNEL(NAME, PREC, TA, TB)                                                    \
    extern "C" __global__ void __launch_bounds__(THREADS)                                   \
        NAME(const void* __restrict__ A, const void* __restrict__ B, float* __restrict__ C,   \
             int M, int N, int K) {                                                         \
        gemm<PREC, TA, TB, true>(A, B, C, M, N, K);                                         \
    }                                                                                       \
    extern "C" __global__ void __launch_bounds__(THREADS)                                   \
        NAME##_unaligned(const void* __restrict__ A, const void* __restrict__ B,              \
                         float* __restrict__ C, int M, int N, int K) {                      \
        gemm<PREC, TA, TB, false>(A, B, C, M, N, K);                                        \
    }

GEMM_KERNEL(gemm_tf32_nn, TF32, false, false)
GEMM_KERNEL(gemm_tf32_nt, TF32, false, true)
GEMM_KERNEL(gemm_tf32_tn, TF32, true, false)
GEMM_KERNEL(gemm_tf32_tt, TF32, true, true)
GEMM_KERNEL(gemm_bf16_nn, BF16, false, false)
GEMM_KERNEL(gemm_bf16_nt, BF16, false, true)
GEMM_KERNEL(gemm_bf16_tn, BF16, true, false)
GEMM_KERNEL(gemm_bf16_tt, BF16, true, true)
GEMM_KERNEL(gemm_f16_nn, F16, false, false)
GEMM_KERNEL(gemm_f16_nt, F16, false, true)
GEMM_KERNEL(gemm_f16_tn, F16, true, false)
GEMM_KERNEL(gemm_f16_tt, F16, true, true)
#endif  // GEMM_MMA_NO_ENTRIES
