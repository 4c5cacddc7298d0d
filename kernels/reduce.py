"""Reductions: column sums (bias gradient), full sums (loss values), row argmax.

Everything reduces through shared memory with a fixed tree and a fixed grid,
never float atomics, so a result depends only on the launch shape and is the
same run after run. (Warp shuffles would save the last few tree steps on a
GPU, but the numba simulator cannot run them, and then nothing could be
tested without a GPU.)

Row-wise kernels (argmax here, softmax and cross-entropy elsewhere) use a
(RX, RY) block: RY rows per block, RX threads striding along each row, and
reduce along x with the helpers below.
"""
import math

from numba import cuda

# sum_rows_partial: block of SX columns x SY row-strands.
SX = 32
SY = 8
# sum_1d: threads per block (a power of two for the tree).
SUM_THREADS = 256
# Row-wise kernels: RX threads per row, RY rows per block.
RX = 32
RY = 8


# ---- (N, F) -> (F,): two passes ------------------------------------------
@cuda.jit
def sum_rows_partial(g, partial):
    """partial[by, j] = sum of g[r, j] over the rows r this block's y-slice owns.

    threadIdx.x walks columns, so each warp reads a contiguous run of a row;
    rows are dealt out across threadIdx.y and blockIdx.y, so a tall narrow g
    (large batch, few features) still spreads over many blocks."""
    red = cuda.shared.array((SY, SX), g.dtype)
    n = g.shape[0]
    f = g.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    col = cuda.blockIdx.x * SX + tx
    acc = g.dtype.type(0)
    if col < f:
        for r in range(cuda.blockIdx.y * SY + ty, n, SY * cuda.gridDim.y):
            acc += g[r, col]
    red[ty, tx] = acc
    cuda.syncthreads()
    s = SY // 2
    while s > 0:
        if ty < s:
            red[ty, tx] += red[ty + s, tx]
        cuda.syncthreads()
        s //= 2
    if ty == 0 and col < f:
        partial[cuda.blockIdx.y, col] = red[0, tx]


@cuda.jit
def sum_rows_naive(g, out):
    """out[j] = sum over rows of g[:, j], one thread per column, rows in order.

    The reference version, and the second pass of the two-pass sum, where g
    is the few rows of block partials."""
    j = cuda.grid(1)
    if j < g.shape[1]:
        acc = out.dtype.type(0)
        for r in range(g.shape[0]):
            acc += g[r, j]
        out[j] = acc


def sum_rows_grid(n, f, target_blocks):
    """(blocks_x, blocks_y) for sum_rows_partial on an (n, f) array.

    Aims at about target_blocks blocks in all, but gives each thread at
    least 4 rows, so small batches are not split into near-empty blocks."""
    bx = max(1, -(-f // SX))
    by = max(1, min(-(-n // (4 * SY)), target_blocks // bx))
    return bx, by


# ---- (n,) -> scalar: two passes --------------------------------------------
@cuda.jit
def sum_1d(x, partial):
    """partial[b] = sum of the grid-stride slice of x that block b owns.

    Run once with many blocks into partials, then once with one block over
    the partials: two launches, no atomics, a fixed summation order."""
    red = cuda.shared.array(SUM_THREADS, x.dtype)
    tid = cuda.threadIdx.x
    acc = x.dtype.type(0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += x[i]
    red[tid] = acc
    cuda.syncthreads()
    s = SUM_THREADS // 2
    while s > 0:
        if tid < s:
            red[tid] += red[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        partial[cuda.blockIdx.x] = red[0]


# ---- helpers for row-wise kernels ------------------------------------------
@cuda.jit(device=True, inline=True)
def row_tree_sum(red, tx, ty):
    """Sum red[ty, :] into red[ty, 0]; every thread of the block must call it."""
    cuda.syncthreads()
    s = RX // 2
    while s > 0:
        if tx < s:
            red[ty, tx] += red[ty, tx + s]
        cuda.syncthreads()
        s //= 2
    return red[ty, 0]


@cuda.jit(device=True, inline=True)
def nan_max(a, b):
    """max that propagates NaN, as ndarray.max does."""
    if b > a or b != b:
        return b
    return a


@cuda.jit(device=True, inline=True)
def row_tree_max(red, tx, ty):
    """Max (NaN-propagating) of red[ty, :], as row_tree_sum."""
    cuda.syncthreads()
    s = RX // 2
    while s > 0:
        if tx < s:
            red[ty, tx] = nan_max(red[ty, tx], red[ty, tx + s])
        cuda.syncthreads()
        s //= 2
    return red[ty, 0]


# ---- argmax per row ---------------------------------------------------------
@cuda.jit(device=True, inline=True)
def _beats(v, i, bv, bi):
    """Does candidate (v, i) replace (bv, bi)? NumPy's rule: the first NaN,
    else the first maximum. i < 0 marks 'no candidate'."""
    if i < 0:
        return False
    if bi < 0:
        return True
    if bv != bv:
        return v != v and i < bi
    if v != v or v > bv:
        return True
    return v == bv and i < bi


@cuda.jit
def argmax_rows(x, out):
    """out[r] = index of the largest x[r, :] (first one on ties), int64."""
    vals = cuda.shared.array((RY, RX), x.dtype)
    idxs = cuda.shared.array((RY, RX), out.dtype)
    n = x.shape[0]
    c = x.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.x * RY + ty
    bv = x.dtype.type(-math.inf)
    bi = -1
    if row < n:
        for j in range(tx, c, RX):
            if _beats(x[row, j], j, bv, bi):
                bv = x[row, j]
                bi = j
    vals[ty, tx] = bv
    idxs[ty, tx] = bi
    cuda.syncthreads()
    s = RX // 2
    while s > 0:
        if tx < s and _beats(vals[ty, tx + s], idxs[ty, tx + s], vals[ty, tx], idxs[ty, tx]):
            vals[ty, tx] = vals[ty, tx + s]
            idxs[ty, tx] = idxs[ty, tx + s]
        cuda.syncthreads()
        s //= 2
    if tx == 0 and row < n:
        out[row] = idxs[ty, 0]


# ---- one value per block: channel sums, conv weight gradients ------------
# Shared tree size; a launch uses any power-of-two block up to it (the
# simulator runs 64 threads, a GPU 256).
BLOCK_MAX = 256


@cuda.jit(device=True, inline=True)
def block_sum(red, acc):
    """Sum of acc over the block's threads, returned to every thread.

    blockDim.x must be a power of two <= red.size. Every thread must call
    it; it ends on a syncthreads so red can be refilled straight away."""
    tid = cuda.threadIdx.x
    red[tid] = acc
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            red[tid] += red[tid + s]
        cuda.syncthreads()
        s //= 2
    total = red[0]
    cuda.syncthreads()
    return total


def reduce_grid(n_out, n_red, target_blocks, threads):
    """(blocks_x, blocks_y) for n_out sums of n_red terms each, one block per
    (output, y-slice). Few outputs over many terms (a bias gradient of 16
    channels over a 1M-pixel batch) get several y-slices, summed afterwards
    by a second pass in a fixed order, so the GPU stays busy without atomics."""
    bx = max(1, min(n_out, target_blocks))
    by = max(1, min(-(-n_red // (4 * threads)), target_blocks // bx))
    return bx, by


@cuda.jit
def sum_channels_partial(g, partial):
    """partial[by, c] = sum of g[:, c, :] over the y-slice by of its N*HW terms.

    g is (N, C, H*W). Consecutive threads take consecutive pixels, so reads
    coalesce along each image row; blocks stride over channels."""
    red = cuda.shared.array(BLOCK_MAX, g.dtype)
    n = g.shape[0]
    c = g.shape[1]
    hw = g.shape[2]
    step = cuda.blockDim.x * cuda.gridDim.y
    first = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    for ch in range(cuda.blockIdx.x, c, cuda.gridDim.x):
        acc = g.dtype.type(0)
        for k in range(first, n * hw, step):
            acc += g[k // hw, ch, k % hw]
        total = block_sum(red, acc)
        if cuda.threadIdx.x == 0:
            partial[cuda.blockIdx.y, ch] = total
