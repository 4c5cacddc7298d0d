"""C = op(A) @ op(B), op = identity or transpose, in three versions side by side.

    matmul_naive    one thread per output, reads A and B straight from global
                    memory: the reference version, easy to check by eye.
    matmul_tiled    16x16 shared-memory tiles: each A/B element is fetched from
                    global memory once per tile instead of once per output.
    matmul_blocked  64x64 block tile, 4x4 outputs per thread held in registers:
                    each shared-memory value read feeds 4 multiply-adds
                    instead of 1. The default (MATMUL_DEFAULT).
    matmul_warp     128x128 block tile split among warps, 8x8 outputs per
                    thread, double-buffered k-slabs (kernels/matmul_warp.py,
                    the simulator twin of kernels/cu/sgemm.cu). Not the
                    default until a GPU run has checked and timed it.

Shapes: op(A) is (M, K), op(B) is (K, N), C is (M, N), all C-contiguous.
A is stored (M, K), or (K, M) when trans_a; B is (K, N), or (N, K) when
trans_b. Transposes are handled in how tiles are loaded, so every global load
stays coalesced (consecutive threads read consecutive addresses) and nothing
is copied. Each version exists for all four (trans_a, trans_b) pairs: the
flags are closure constants, so numba compiles four branch-free kernels.
"""
from numba import cuda

from . import matmul_warp

TILE = 16  # matmul_tiled: block is TILE x TILE threads, tile is TILE x TILE
# Shared rows one longer than the tile: a transposed load writes a column,
# which would otherwise be 16 accesses to one bank.
TILE_ROW = TILE + 1

# matmul_blocked: block tile BM x BN, k-slab BK, each thread a TM x TN
# micro-tile. Thread (tx, ty) owns rows ty + TY*i and columns tx + TX*j:
# strided rather than contiguous, so both the shared-memory reads and the
# global stores of a warp hit consecutive addresses.
BM = 64
BN = 64
BK = 16
TM = 4
TN = 4
TY = BM // TM  # threads along y
TX = BN // TN  # threads along x
NTHREADS = TX * TY
# Shared rows padded by one element: the k-contiguous loads write a column of
# As/Bs, and an unpadded row length of 64 floats would put the whole column in
# one bank.
PAD = 1
AS_ROW = BM + PAD  # shape entries must be literal constants for numba
BS_ROW = BN + PAD
assert NTHREADS % BK == 0 and NTHREADS % BM == 0 and NTHREADS % BN == 0
assert (BM * BK) % NTHREADS == 0 and (BN * BK) % NTHREADS == 0


@cuda.jit(device=True, inline=True)
def _dims(a, c, trans_a):
    m = c.shape[0]
    n = c.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    return m, n, k


def _make_naive(trans_a, trans_b):
    @cuda.jit
    def matmul_naive(a, b, c):
        m, n, k = _dims(a, c, trans_a)
        j, i = cuda.grid(2)  # x along columns: a warp reads consecutive B[p, j]
        if i >= m or j >= n:
            return
        acc = c.dtype.type(0)
        for p in range(k):
            av = a[p, i] if trans_a else a[i, p]
            bv = b[j, p] if trans_b else b[p, j]
            acc += av * bv
        c[i, j] = acc
    return matmul_naive


def _make_tiled(trans_a, trans_b):
    @cuda.jit
    def matmul_tiled(a, b, c):
        # sA[i][p] = op(A)[row0 + i, k0 + p]; sB[p][j] = op(B)[k0 + p, col0 + j].
        sA = cuda.shared.array((TILE, TILE_ROW), c.dtype)
        sB = cuda.shared.array((TILE, TILE_ROW), c.dtype)
        m, n, k = _dims(a, c, trans_a)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row0 = cuda.blockIdx.y * TILE
        col0 = cuda.blockIdx.x * TILE
        acc = c.dtype.type(0)
        for k0 in range(0, k, TILE):
            # tx always walks the contiguous axis of the stored array.
            if trans_a:  # A stored (K, M)
                if k0 + ty < k and row0 + tx < m:
                    sA[tx, ty] = a[k0 + ty, row0 + tx]
                else:
                    sA[tx, ty] = 0
            else:
                if row0 + ty < m and k0 + tx < k:
                    sA[ty, tx] = a[row0 + ty, k0 + tx]
                else:
                    sA[ty, tx] = 0
            if trans_b:  # B stored (N, K)
                if col0 + ty < n and k0 + tx < k:
                    sB[tx, ty] = b[col0 + ty, k0 + tx]
                else:
                    sB[tx, ty] = 0
            else:
                if k0 + ty < k and col0 + tx < n:
                    sB[ty, tx] = b[k0 + ty, col0 + tx]
                else:
                    sB[ty, tx] = 0
            cuda.syncthreads()
            for p in range(TILE):
                acc += sA[ty, p] * sB[p, tx]
            cuda.syncthreads()
        if row0 + ty < m and col0 + tx < n:
            c[row0 + ty, col0 + tx] = acc
    return matmul_tiled


@cuda.jit(device=True, inline=True)
def _load_k_contiguous(src, dst, outer0, k0, n_outer, k, tid, span):
    """dst[p][q] = src[outer0 + q, k0 + p] for a span x BK slab of src.

    Consecutive threads take consecutive p: the global reads coalesce along
    src's rows and the shared writes walk a (padded) column."""
    p = tid % BK
    q = tid // BK
    for step in range(span * BK // NTHREADS):
        qq = q + step * (NTHREADS // BK)
        if outer0 + qq < n_outer and k0 + p < k:
            dst[p, qq] = src[outer0 + qq, k0 + p]
        else:
            dst[p, qq] = 0


@cuda.jit(device=True, inline=True)
def _load_outer_contiguous(src, dst, outer0, k0, n_outer, k, tid, span):
    """dst[p][q] = src[k0 + p, outer0 + q]: consecutive threads take consecutive q."""
    q = tid % span
    p = tid // span
    for step in range(span * BK // NTHREADS):
        pp = p + step * (NTHREADS // span)
        if k0 + pp < k and outer0 + q < n_outer:
            dst[pp, q] = src[k0 + pp, outer0 + q]
        else:
            dst[pp, q] = 0


@cuda.jit(device=True, inline=True)
def _zero(acc):
    for i in range(TM):
        for j in range(TN):
            acc[i, j] = 0


@cuda.jit(device=True, inline=True)
def _multiply_slab(As, Bs, acc, ra, rb, tx, ty):
    """acc[i, j] += sum_p As[p, ty + TY*i] * Bs[p, tx + TX*j]: one BK-slab of the
    register-blocked product (shared by matmul_blocked and the implicit convolutions)."""
    for p in range(BK):
        for i in range(TM):
            ra[i] = As[p, ty + TY * i]
        for j in range(TN):
            rb[j] = Bs[p, tx + TX * j]
        for i in range(TM):
            for j in range(TN):
                acc[i, j] += ra[i] * rb[j]


def _make_blocked(trans_a, trans_b):
    @cuda.jit
    def matmul_blocked(a, b, c):
        # Both slabs stored k-major: As[p][i] = op(A)[row0 + i, k0 + p] and
        # Bs[p][j] = op(B)[k0 + p, col0 + j], so the inner loop reads rows.
        As = cuda.shared.array((BK, AS_ROW), c.dtype)
        Bs = cuda.shared.array((BK, BS_ROW), c.dtype)
        acc = cuda.local.array((TM, TN), c.dtype)
        ra = cuda.local.array(TM, c.dtype)
        rb = cuda.local.array(TN, c.dtype)
        m, n, k = _dims(a, c, trans_a)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        row0 = cuda.blockIdx.y * BM
        col0 = cuda.blockIdx.x * BN
        _zero(acc)
        for k0 in range(0, k, BK):
            if trans_a:
                _load_outer_contiguous(a, As, row0, k0, m, k, tid, BM)
            else:
                _load_k_contiguous(a, As, row0, k0, m, k, tid, BM)
            if trans_b:
                _load_k_contiguous(b, Bs, col0, k0, n, k, tid, BN)
            else:
                _load_outer_contiguous(b, Bs, col0, k0, n, k, tid, BN)
            cuda.syncthreads()
            _multiply_slab(As, Bs, acc, ra, rb, tx, ty)
            cuda.syncthreads()
        for i in range(TM):
            r = row0 + ty + TY * i
            for j in range(TN):
                col = col0 + tx + TX * j
                if r < m and col < n:
                    c[r, col] = acc[i, j]
    return matmul_blocked


_VARIANTS = {"nn": (False, False), "nt": (False, True), "tn": (True, False), "tt": (True, True)}

# KERNELS[version][variant], e.g. KERNELS["tiled"]["nt"] computes A @ B.T.
KERNELS = {
    "naive": {v: _make_naive(*f) for v, f in _VARIANTS.items()},
    "tiled": {v: _make_tiled(*f) for v, f in _VARIANTS.items()},
    "blocked": {v: _make_blocked(*f) for v, f in _VARIANTS.items()},
    "warp": {v: matmul_warp.make_warp(*f) for v, f in _VARIANTS.items()},
}
MATMUL_DEFAULT = "blocked"


def _cdiv(a, b):
    return (a + b - 1) // b


def launch_config(version, m, n):
    """(grid, block) for C of shape (m, n); grid x walks columns."""
    if version in ("naive", "tiled"):
        return (_cdiv(n, TILE), _cdiv(m, TILE)), (TILE, TILE)
    if version == "warp":
        return matmul_warp.launch_config(m, n)
    return (_cdiv(n, BN), _cdiv(m, BM)), (TX, TY)

