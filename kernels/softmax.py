"""Row-wise softmax and its backward (Jacobian-vector product).

One block handles RY rows with RX threads striding along each row; per-row
max and sums go through the shared-memory trees in reduce.py. A row is read
a few times (max, sum, write) instead of being held in registers, so any
number of classes works with a fixed block.
"""
import math

from numba import cuda

from .reduce import RX, RY, nan_max, row_tree_max, row_tree_sum


@cuda.jit(device=True, inline=True)
def row_max_sumexp(x, row, red, tx, ty):
    """(m, s) = (max of x[row], sum of exp(x[row] - m)), the two halves of a
    stable log-sum-exp. Every thread of the block must call it: threads past
    the last row still join every syncthreads in the trees."""
    c = x.shape[1]
    valid = row < x.shape[0]
    m = x.dtype.type(-math.inf)
    if valid:
        for j in range(tx, c, RX):
            m = nan_max(m, x[row, j])
    red[ty, tx] = m
    m = row_tree_max(red, tx, ty)
    cuda.syncthreads()  # everyone has read red[ty, 0] before it is reused
    s = x.dtype.type(0)
    if valid:
        for j in range(tx, c, RX):
            s += math.exp(x[row, j] - m)
    red[ty, tx] = s
    return m, row_tree_sum(red, tx, ty)


@cuda.jit
def softmax(x, out):
    """out[r] = exp(x[r] - max x[r]) / sum exp(x[r] - max x[r])."""
    red = cuda.shared.array((RY, RX), x.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.x * RY + ty
    m, s = row_max_sumexp(x, row, red, tx, ty)
    if row < x.shape[0]:
        for j in range(tx, x.shape[1], RX):
            out[row, j] = math.exp(x[row, j] - m) / s


@cuda.jit
def softmax_backward(y, grad, out):
    """out[r] = y[r] * (grad[r] - sum(grad[r] * y[r]))."""
    red = cuda.shared.array((RY, RX), y.dtype)
    n = y.shape[0]
    c = y.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.x * RY + ty
    dot = y.dtype.type(0)
    if row < n:
        for j in range(tx, c, RX):
            dot += grad[row, j] * y[row, j]
    red[ty, tx] = dot
    dot = row_tree_sum(red, tx, ty)
    if row < n:
        for j in range(tx, c, RX):
            out[row, j] = y[row, j] * (grad[row, j] - dot)


def launch_config(n_rows):
    """(grid, block) for any of the row-wise kernels."""
    return (max(1, -(-n_rows // RY)),), (RX, RY)
