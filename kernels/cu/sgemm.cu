// FP32 GEMM, C = op(A) @ op(B), all C-contiguous (row-major) with leading
// dimensions lda/ldb/ldc. Same tiling as the numba kernel matmul_warp
// (kernels/matmul_warp.py), which is this file's simulator twin: the block,
// warp and thread tiles, the loader lane mapping, the k-major shared slabs
// and the double buffering are the same, so the simulator tests of the twin
// check the indexing used here.
//
//   block  128 x 128, k-slabs of 8, 256 threads (8 warps, 2 along M x 4 along N)
//   warp   64 x 32
//   thread 8 x 8 outputs: rows rbase + {0..3, 32..35}, cols cbase + {0..3, 16..19};
//          each run of 4 is one 128-bit shared read (LDS.128).
//
// Loads: each thread moves 4 consecutive elements of each operand per slab
// along the stored array's contiguous axis: one 128-bit global load (VEC) or
// four guarded scalar loads. The VEC entries need the contiguous length of
// both operands (the loaded row width) to be a multiple of 4 and 16-byte
// aligned operands, so a 4-element group is entirely inside or entirely
// outside the matrix; the launcher (kernels/sgemm.py) picks the _scalar
// entries otherwise.
//
// Entries: sgemm_{nn,nt,tn,tt} and sgemm_{nn,nt,tn,tt}_scalar, where the first
// letter says A is stored (K, M) ("t") rather than (M, K), the second B is
// stored (N, K) rather than (K, N).

namespace {

constexpr int BM = 128, BN = 128, BK = 8;
constexpr int WM = 64, WN = 32, SUB = 4;
constexpr int NTHREADS = 256;
// 132-float rows: the transposing stash writes rows p and p + 4 from lanes
// of one warp, which would share banks at 128; rows stay 16-byte aligned.
constexpr int PAD = 4;
constexpr int AS_ROW = BM + PAD, BS_ROW = BN + PAD;

// Two shapes of the same kernel, picked at compile time (NVRTC option
// -DSGEMM_BLOCKS_PER_SM=1) so a GPU run can time both (benchmarks/sgemm_cpp.py):
//   2 (default): at most 128 registers, two blocks (16 warps) per SM; the
//     k-loop unrolled by 2, since unrolling all 8 steps hoists the next
//     steps' shared reads into registers and spills at 128 (sm_90, NVRTC 12.9).
//   1: the k-loop fully unrolled, about 167 registers, one block per SM.
#ifndef SGEMM_BLOCKS_PER_SM
#define SGEMM_BLOCKS_PER_SM 2
#endif
constexpr int P_UNROLL = SGEMM_BLOCKS_PER_SM >= 2 ? 2 : BK;

// One operand's slab loader for this thread. Stored (K, outer), outer
// contiguous (the copy layout): the slab is 8 rows of 128 elements; thread t
// reads row t / 32, elements (t % 32) * 4 + {0..3}. Stored (outer, K), K
// contiguous (KCONTIG): 128 rows of 8; thread t reads row t / 2, elements
// (t % 2) * 4 + {0..3}, which the stash writes down a column.
// The pointer walks from slab to slab and only the k index is re-checked:
// recomputing row * ld + col per slab cost the registers that made the VEC
// entries spill under the 128-register bound.
template <bool KCONTIG, bool VEC>
struct Loader {
    const float* p;  // this thread's first element in the current slab
    size_t step;     // elements from one slab to the next
    int kk;          // this thread's (first) k index in the current slab
    int k;
    int outer_left;  // matrix elements from this thread's outer index on (<= 0: outside)

    __device__ __forceinline__ Loader(const float* __restrict__ src, int ld, int outer0,
                                      int n_outer, int k_, int tid) : k(k_) {
        const int outer = outer0 + (KCONTIG ? tid >> 1 : (tid & 31) * 4);
        kk = KCONTIG ? (tid & 1) * 4 : tid >> 5;
        outer_left = n_outer - outer;
        p = KCONTIG ? src + (size_t)outer * ld + kk : src + (size_t)kk * ld + outer;
        step = KCONTIG ? (size_t)BK : (size_t)BK * ld;
    }

    // r = the 4 elements of the current slab (0 outside the matrix); then on to the next slab.
    __device__ __forceinline__ void fetch(float (&r)[4]) {
        if (VEC) {  // the contiguous length is a multiple of 4: a group is all in or all out
            if (outer_left > 0 && kk < k) {
                const float4 v = __ldg(reinterpret_cast<const float4*>(p));
                r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
            } else {
                r[0] = r[1] = r[2] = r[3] = 0.f;
            }
        } else {
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const bool in = KCONTIG ? outer_left > 0 && kk + v < k : v < outer_left && kk < k;
                r[v] = in ? __ldg(p + v) : 0.f;
            }
        }
        p += step;
        kk += BK;
    }
};

template <bool KCONTIG, int ROW>
__device__ __forceinline__ void stash(float (*dst)[ROW], const float (&r)[4], int tid) {
    if (KCONTIG) {
        const int q = tid >> 1, p = (tid & 1) * 4;
#pragma unroll
        for (int v = 0; v < 4; ++v) dst[p + v][q] = r[v];
    } else {
        const int p = tid >> 5, q = (tid & 31) * 4;
        *reinterpret_cast<float4*>(&dst[p][q]) = make_float4(r[0], r[1], r[2], r[3]);
    }
}

template <bool TA, bool TB, bool VEC>
__device__ __forceinline__ void sgemm(const float* __restrict__ A, const float* __restrict__ B,
                                      float* __restrict__ C, int M, int N, int K, int lda,
                                      int ldb, int ldc) {
    // Slabs stored k-major: As[p][i] = op(A)[row0 + i, k0 + p], Bs[p][j] =
    // op(B)[k0 + p, col0 + j], so each inner step reads one row of each.
    __shared__ __align__(16) float As[2][BK][AS_ROW];
    __shared__ __align__(16) float Bs[2][BK][BS_ROW];
    const int tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int rbase = (warp >> 2) * WM + (lane >> 2) * SUB;
    const int cbase = (warp & 3) * WN + (lane & 3) * SUB;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

    float ga[4], gb[4];
    const int nk = (K + BK - 1) / BK;
    // A transposed (TA) is stored (K, M): M contiguous, the copy layout.
    Loader<!TA, VEC> la(A, lda, row0, M, K, tid);
    Loader<TB, VEC> lb(B, ldb, col0, N, K, tid);
    la.fetch(ga);
    lb.fetch(gb);
    stash<!TA>(As[0], ga, tid);
    stash<TB>(Bs[0], gb, tid);
    __syncthreads();

    for (int s = 0; s < nk; ++s) {
        const int cur = s & 1;
        // Next slab into registers first: its global latency hides behind
        // the 512 FMAs below. Unconditional (past the last slab the guards
        // give zeros and load nothing): inside an if, the compiler sank the
        // loads below the FMAs, next to the stash that uses them.
        la.fetch(ga);
        lb.fetch(gb);
#pragma unroll P_UNROLL
        for (int p = 0; p < BK; ++p) {
            float ra[8], rb[8];
            const float4 a0 = *reinterpret_cast<const float4*>(&As[cur][p][rbase]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[cur][p][rbase + WM / 2]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[cur][p][cbase]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[cur][p][cbase + WN / 2]);
            ra[0] = a0.x; ra[1] = a0.y; ra[2] = a0.z; ra[3] = a0.w;
            ra[4] = a1.x; ra[5] = a1.y; ra[6] = a1.z; ra[7] = a1.w;
            rb[0] = b0.x; rb[1] = b0.y; rb[2] = b0.z; rb[3] = b0.w;
            rb[4] = b1.x; rb[5] = b1.y; rb[6] = b1.z; rb[7] = b1.w;
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
        }
        // The other buffer was last read in step s - 1, before its barrier
        // (after the last slab this stores zeros that nothing reads).
        stash<!TA>(As[cur ^ 1], ga, tid);
        stash<TB>(Bs[cur ^ 1], gb, tid);
        __syncthreads();
    }

    // 128-bit stores where the row allows them (ldc a multiple of 4, C 16-byte
    // aligned, the run inside N); a run crossing N goes element by element.
    const bool c4 = (ldc & 3) == 0 && (reinterpret_cast<size_t>(C) & 15) == 0;
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < SUB; ++i) {
            const int r = row0 + rbase + h * (WM / 2) + i;
            if (r >= M) continue;
            float* crow = C + (size_t)r * ldc;
#pragma unroll
            for (int g = 0; g < 2; ++g) {
                const int col = col0 + cbase + g * (WN / 2);
                const float* v = &acc[h * SUB + i][g * SUB];
                if (c4 && col + 3 < N) {
                    *reinterpret_cast<float4*>(crow + col) = make_float4(v[0], v[1], v[2], v[3]);
                } else {
#pragma unroll
                    for (int j = 0; j < SUB; ++j)
                        if (col + j < N) crow[col + j] = v[j];
                }
            }
        }
}

}  // namespace

#define SGEMM_ENTRY(name, ta, tb, vec)                                                     \
    extern "C" __global__ void __launch_bounds__(NTHREADS, SGEMM_BLOCKS_PER_SM)             \
    name(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, \
         int M, int N, int K, int lda, int ldb, int ldc) {                                 \
        sgemm<ta, tb, vec>(A, B, C, M, N, K, lda, ldb, ldc);                               \
    }

SGEMM_ENTRY(sgemm_nn, false, false, true)
SGEMM_ENTRY(sgemm_nt, false, true, true)
SGEMM_ENTRY(sgemm_tn, true, false, true)
SGEMM_ENTRY(sgemm_tt, true, true, true)
SGEMM_ENTRY(sgemm_nn_scalar, false, false, false)
SGEMM_ENTRY(sgemm_nt_scalar, false, true, false)
SGEMM_ENTRY(sgemm_tn_scalar, true, false, false)
SGEMM_ENTRY(sgemm_tt_scalar, true, true, false)
