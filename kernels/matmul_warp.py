"""matmul_warp: C = op(A) @ op(B) with a 128x128 block tile split among warps.

Version "warp" of gpudl.kernels.matmul (same shapes, flags and conventions),
and the simulator twin of the CUDA C++ kernels in kernels/cu/sgemm.cu: the
block, warp and thread tiles, the loader lane mapping and the double
buffering are the same, so the simulator tests of this kernel check the
indexing the CUDA C++ version uses.

Tiling (256 threads, 8 warps):
    block  BM x BN = 128 x 128, k-slabs of BK = 8
    warp   WM x WN = 64 x 32; the 8 warps sit 2 (along M) x 4 (along N)
    thread TM x TN = 8 x 8, as 2 x 2 runs of SUB x SUB = 4 x 4. Lane l owns
           rows  rbase + {0..3} and rbase + 32 + {0..3}, rbase = (l // 4) * 4,
           cols  cbase + {0..3} and cbase + 16 + {0..3}, cbase = (l % 4) * 4
           (within its warp tile). Runs of 4 are what a float4 shared-memory
           read fetches in the C++ twin; the 2 x 2 runs keep a warp's reads
           of one k-row inside 32 consecutive floats of As (8 distinct runs,
           no bank conflict) and 16 of Bs (4 runs, broadcast).

Both slabs are stored k-major (As[p][i] = op(A)[row0 + i, k0 + p], Bs[p][j]
= op(B)[k0 + p, col0 + j]), so each step of the inner loop reads a row of
each: 16 shared loads feed 64 FMAs.

Loads: each thread fetches VEC = 4 consecutive elements of each operand per
slab along the stored array's contiguous axis (one float4 in the C++ twin):
    copy layout       (op(A) of trans_a, op(B) of plain B): the slab is BK
                      rows of 128 contiguous elements; thread t takes row
                      t // 32, elements (t % 32) * 4 + {0..3}.
    transpose layout  (plain A, B of trans_b): the slab is 128 rows of BK
                      contiguous elements; thread t takes row t // 2,
                      elements (t % 2) * 4 + {0..3}, written down a column
                      of the k-major slab.
Double buffering: slab s + 1 is fetched into registers before slab s is
multiplied and written to the other shared buffer after, so the global
latency hides behind 512 FMAs per thread and one barrier per slab suffices.
"""
from numba import cuda

BM = 128
BN = 128
BK = 8
WM = 64
WN = 32
SUB = 4
TM = 2 * SUB  # two runs of SUB rows per thread
TN = 2 * SUB
LM = WM // TM  # lanes along M in a warp: 8
LN = WN // TN  # lanes along N in a warp: 4
WARPS_N = BN // WN
NTHREADS = (BM // WM) * WARPS_N * 32
VEC = 4
# Rows padded by 4: the transpose layout writes As[p][q] for lanes whose p
# differs by 4; with 128-element rows that is the same bank (a 2-way
# conflict), 132 moves it by 16 banks while keeping rows 16-byte aligned for
# the C++ twin's float4 reads.
PAD = 4
AS_ROW = BM + PAD
BS_ROW = BN + PAD
COPY_LANES = BM // VEC  # threads per slab row in the copy layout: 32
TRANS_LANES = BK // VEC  # threads per outer row in the transpose layout: 2
assert LM * LN == 32 and BM == BN and NTHREADS == 256
# The index arithmetic below is written with the shifts and masks these imply.
assert (LN, WARPS_N, COPY_LANES, TRANS_LANES) == (4, 4, 32, 2)
assert BK * COPY_LANES == NTHREADS and BM * TRANS_LANES == NTHREADS


@cuda.jit(device=True, inline=True)
def _fetch_copy(src, regs, outer0, k0, n_outer, k, tid):
    """regs[v] = src[k0 + p, outer0 + q + v]: stored (K, outer), outer contiguous."""
    p = k0 + (tid >> 5)
    q = outer0 + (tid & 31) * VEC
    for v in range(VEC):
        if p < k and q + v < n_outer:
            regs[v] = src[p, q + v]
        else:
            regs[v] = 0


@cuda.jit(device=True, inline=True)
def _fetch_trans(src, regs, outer0, k0, n_outer, k, tid):
    """regs[v] = src[outer0 + q, k0 + p + v]: stored (outer, K), k contiguous."""
    q = outer0 + (tid >> 1)
    p = k0 + (tid & 1) * VEC
    for v in range(VEC):
        if q < n_outer and p + v < k:
            regs[v] = src[q, p + v]
        else:
            regs[v] = 0


@cuda.jit(device=True, inline=True)
def _stash_copy(dst, buf, regs, tid):
    p = tid >> 5
    q = (tid & 31) * VEC
    for v in range(VEC):
        dst[buf, p, q + v] = regs[v]


@cuda.jit(device=True, inline=True)
def _stash_trans(dst, buf, regs, tid):
    q = tid >> 1
    p = (tid & 1) * VEC
    for v in range(VEC):
        dst[buf, p + v, q] = regs[v]


@cuda.jit(device=True, inline=True)
def _multiply_slab(As, Bs, buf, acc, ra, rb, rbase, cbase):
    for p in range(BK):
        for h in range(2):
            for i in range(SUB):
                ra[h * SUB + i] = As[buf, p, rbase + h * (WM // 2) + i]
            for j in range(SUB):
                rb[h * SUB + j] = Bs[buf, p, cbase + h * (WN // 2) + j]
        for i in range(TM):
            for j in range(TN):
                acc[i, j] += ra[i] * rb[j]


def make_warp(trans_a, trans_b):
    @cuda.jit
    def matmul_warp(a, b, c):
        # Each shared array on its own line: the simulator keys them by line.
        As = cuda.shared.array((2, BK, AS_ROW), c.dtype)
        Bs = cuda.shared.array((2, BK, BS_ROW), c.dtype)
        acc = cuda.local.array((TM, TN), c.dtype)
        ra = cuda.local.array(TM, c.dtype)
        rb = cuda.local.array(TN, c.dtype)
        ga = cuda.local.array(VEC, c.dtype)
        gb = cuda.local.array(VEC, c.dtype)
        m = c.shape[0]
        n = c.shape[1]
        k = a.shape[0] if trans_a else a.shape[1]
        # Masks and shifts rather than // and %: numba's signed floor division
        # and the wrap-around of negative indices would otherwise cost selects
        # on every shared-memory index; masked values are provably >= 0, so
        # LLVM drops both.
        tid = cuda.threadIdx.x & (NTHREADS - 1)
        warp = tid >> 5
        lane = tid & 31
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        rbase = (warp >> 2) * WM + (lane >> 2) * SUB
        cbase = (warp & 3) * WN + (lane & 3) * SUB
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        nk = (k + BK - 1) // BK
        for s in range(nk + 1):
            # s == 0 only fills buffer 0; step s multiplies slab s - 1.
            if s < nk:
                if trans_a:
                    _fetch_copy(a, ga, row0, s * BK, m, k, tid)
                else:
                    _fetch_trans(a, ga, row0, s * BK, m, k, tid)
                if trans_b:
                    _fetch_trans(b, gb, col0, s * BK, n, k, tid)
                else:
                    _fetch_copy(b, gb, col0, s * BK, n, k, tid)
            if s > 0:
                _multiply_slab(As, Bs, (s - 1) & 1, acc, ra, rb, rbase, cbase)
            if s < nk:
                # Buffer s % 2 was last read at step s - 1, before its barrier.
                if trans_a:
                    _stash_copy(As, s & 1, ga, tid)
                else:
                    _stash_trans(As, s & 1, ga, tid)
                if trans_b:
                    _stash_trans(Bs, s & 1, gb, tid)
                else:
                    _stash_copy(Bs, s & 1, gb, tid)
            cuda.syncthreads()
        for h in range(2):
            for i in range(SUB):
                r = row0 + rbase + h * (WM // 2) + i
                for g in range(2):
                    for j in range(SUB):
                        col = col0 + cbase + g * (WN // 2) + j
                        if r < m and col < n:
                            c[r, col] = acc[h * SUB + i, g * SUB + j]
    return matmul_warp


def launch_config(m, n):
    """(grid, block) for C of shape (m, n): one 256-thread block per 128x128 tile."""
    return ((n + BN - 1) // BN, (m + BM - 1) // BM), (NTHREADS,)
