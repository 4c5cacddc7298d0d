"""Elementwise kernels: activations, their backwards, axpby, bias add, row gather.

All take flat 1-D views (the backend reshapes C-contiguous arrays, which is
free), so one kernel serves every tensor rank. Each uses a grid-stride loop:
the launch can size the grid for the device (a few waves of blocks) rather
than one thread per element, and the simulator can run few threads.

Scalars (alpha, beta) must arrive typed like the arrays (e.g. np.float32):
a Python float is typed float64 and would drag the arithmetic to double.
For the same reason constants are made with out.dtype.type(...): numba
types a bare literal 1 as int64, and int64 op float32 gives float64.
"""
import math

from numba import cuda


@cuda.jit
def add_bias(z, b):
    """z[n, j] += b[j], z flattened to (N*F,), b (F,)."""
    f = b.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, z.shape[0], stride):
        z[i] += b[i % f]


@cuda.jit
def axpby(alpha, x, beta, y, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = alpha * x[i] + beta * y[i]


@cuda.jit
def relu(x, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        v = x[i]
        # Testing v < 0 (not v > 0) lets NaN through, as np.maximum does.
        if v < 0:
            out[i] = 0
        else:
            out[i] = v


@cuda.jit
def relu_backward(x, grad, out):
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        # Multiply by the mask rather than select, so a NaN/inf gradient
        # behind a closed gate still shows, as in grad * (x > 0).
        mask = one if x[i] > 0 else zero
        out[i] = grad[i] * mask


@cuda.jit(device=True, inline=True)
def sigmoid_scalar(v, one):
    # exp of a non-positive number only: never overflows for any |v|.
    if v >= 0:
        return one / (one + math.exp(-v))
    e = math.exp(v)
    return e / (one + e)


@cuda.jit
def sigmoid(x, out):
    one = out.dtype.type(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = sigmoid_scalar(x[i], one)


@cuda.jit
def sigmoid_backward(y, grad, out):
    one = out.dtype.type(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = grad[i] * y[i] * (one - y[i])


@cuda.jit
def tanh(x, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = math.tanh(x[i])


@cuda.jit
def tanh_backward(y, grad, out):
    one = out.dtype.type(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = grad[i] * (one - y[i] * y[i])


@cuda.jit
def step(x, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        if x[i] >= 0:
            out[i] = 1
        else:
            out[i] = 0


@cuda.jit
def take_rows(x, idx, out):
    """out[r, :] = x[idx[r], :] for x (N, D), idx (M,) int64, out (M, D).

    Negative indices count from the end, as in NumPy. An index still out of
    range leaves its row unwritten rather than reading outside x; the
    backend checks host-side indices before launching."""
    n = x.shape[0]
    d = x.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    # One flat loop over out: consecutive threads copy consecutive elements
    # of a row, so both the gather reads and the writes coalesce.
    for e in range(start, out.shape[0] * d, stride):
        r = e // d
        src = idx[r]
        if src < 0:
            src += n
        if 0 <= src < n:
            out[r, e - r * d] = x[src, e - r * d]


@cuda.jit
def add_channel_bias(y, b, hw):
    """y[n, c, :, :] += b[c], y flattened to (N*C*HW,), b (C,)."""
    c = b.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, y.shape[0], stride):
        y[i] += b[(i // hw) % c]
