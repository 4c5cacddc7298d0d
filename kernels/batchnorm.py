"""Batch normalization over (N, C, H, W): per-channel statistics, apply, gradient.

Statistics take two deterministic passes over x, as the CPU reference does:
the mean, then the mean of squared deviations from it. (E[x^2] - E[x]^2
cancels catastrophically in float32 when the mean is large against the
spread: at x = 1e4 + N(0, 1), x^2 ~ 1e8 has an ulp of 8.)

Every per-channel sum follows kernels/reduce.py's pattern for few outputs
over many terms: a 2-D grid of (channel, y-slice) blocks, each reducing its
grid-stride slice of the N*H*W terms through a shared-memory tree into a
row of partials (by, C), then one thread per channel adding the rows in
order. No float atomics, so the results depend only on the launch shape.

    pass 1   sum_channels_partial (reduce.py)    partial[by, c] = sum x
             channel_mean                        mean[c] = sum_rows(partial) / M
    pass 2   sqdev_partial, channel_mean         var[c]  = sum (x - mean)^2 / M
    forward  channel_invstd                      invstd = 1 / sqrt(var + eps)
             forward_apply                       y = (x - mean) (gamma invstd) + beta
    backward backward_partial                    both sum dy and sum dy (x - mean)
             backward_finish                     dbeta = sum dy, dgamma = invstd sum dy (x - mean)
             backward_apply                      dx = gamma invstd (dy - dbeta/M - xhat dgamma/M)

3-D arguments are x viewed as (N, C, H*W); 1-D ones are flat NCHW arrays
whose channel is (i // hw) % C, as ew.add_channel_bias does.
"""
import math

from numba import cuda

from .reduce import BLOCK_MAX, block_sum


# ---- reductions: first pass into (by, C) partials ----------------------------
@cuda.jit
def sqdev_partial(x, mean, partial):
    """partial[by, c] = sum of (x[:, c, :] - mean[c])^2 over the y-slice by.

    x is (N, C, H*W); launched like reduce.sum_channels_partial (blockDim.x a
    power of two <= BLOCK_MAX, blocks striding over channels)."""
    red = cuda.shared.array(BLOCK_MAX, x.dtype)
    n = x.shape[0]
    c = x.shape[1]
    hw = x.shape[2]
    step = cuda.blockDim.x * cuda.gridDim.y
    first = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    for ch in range(cuda.blockIdx.x, c, cuda.gridDim.x):
        mu = mean[ch]
        acc = x.dtype.type(0)
        for k in range(first, n * hw, step):
            d = x[k // hw, ch, k % hw] - mu
            acc += d * d
        total = block_sum(red, acc)
        if cuda.threadIdx.x == 0:
            partial[cuda.blockIdx.y, ch] = total


@cuda.jit
def backward_partial(dy, x, mean, p_dy, p_dyxmu):
    """p_dy[by, c] = sum dy and p_dyxmu[by, c] = sum dy (x - mean[c]) over the
    y-slice by of channel c; dy and x are (N, C, H*W). Both sums share one
    tree (two shared arrays), so a block pays its syncthreads once."""
    red_a = cuda.shared.array(BLOCK_MAX, x.dtype)
    red_b = cuda.shared.array(BLOCK_MAX, x.dtype)
    n = x.shape[0]
    c = x.shape[1]
    hw = x.shape[2]
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x * cuda.gridDim.y
    first = cuda.blockIdx.y * cuda.blockDim.x + tid
    for ch in range(cuda.blockIdx.x, c, cuda.gridDim.x):
        mu = mean[ch]
        acc_a = x.dtype.type(0)
        acc_b = x.dtype.type(0)
        for k in range(first, n * hw, step):
            g = dy[k // hw, ch, k % hw]
            acc_a += g
            acc_b += g * (x[k // hw, ch, k % hw] - mu)
        red_a[tid] = acc_a
        red_b[tid] = acc_b
        cuda.syncthreads()
        s = cuda.blockDim.x // 2
        while s > 0:
            if tid < s:
                red_a[tid] += red_a[tid + s]
                red_b[tid] += red_b[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            p_dy[cuda.blockIdx.y, ch] = red_a[0]
            p_dyxmu[cuda.blockIdx.y, ch] = red_b[0]
        cuda.syncthreads()  # red_a/red_b are refilled for the next channel


# ---- second pass: one thread per channel, rows in order -----------------------
@cuda.jit
def channel_mean(partial, m, out):
    """out[c] = (sum over rows r of partial[r, c], in order) / m."""
    j = cuda.grid(1)
    if j < partial.shape[1]:
        acc = out.dtype.type(0)
        for r in range(partial.shape[0]):
            acc += partial[r, j]
        out[j] = acc / m


@cuda.jit
def backward_finish(p_dy, p_dyxmu, invstd, dgamma, dbeta):
    """dbeta[c] = sum_r p_dy[r, c]; dgamma[c] = invstd[c] sum_r p_dyxmu[r, c]."""
    j = cuda.grid(1)
    if j < p_dy.shape[1]:
        a = dbeta.dtype.type(0)
        b = dbeta.dtype.type(0)
        for r in range(p_dy.shape[0]):
            a += p_dy[r, j]
            b += p_dyxmu[r, j]
        dbeta[j] = a
        dgamma[j] = b * invstd[j]


@cuda.jit
def channel_invstd(var, eps, invstd):
    """invstd[c] = 1 / sqrt(var[c] + eps)."""
    j = cuda.grid(1)
    if j < var.shape[0]:
        invstd[j] = invstd.dtype.type(1) / math.sqrt(var[j] + eps)


# ---- elementwise over NCHW (grid-stride, flat) --------------------------------
@cuda.jit
def forward_apply(x, mean, invstd, gamma, beta, hw, y):
    """y = (x - mean[c]) * (gamma[c] invstd[c]) + beta[c], x and y flat NCHW."""
    c = mean.shape[0]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        ch = (i // hw) % c
        y[i] = (x[i] - mean[ch]) * (gamma[ch] * invstd[ch]) + beta[ch]


@cuda.jit
def backward_apply(dy, x, mean, invstd, gamma, dgamma, dbeta, inv_m, hw, dx):
    """dx = gamma invstd (dy - dbeta / M - xhat dgamma / M), xhat = (x - mean) invstd,
    all flat NCHW; inv_m = 1 / M."""
    c = mean.shape[0]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        ch = (i // hw) % c
        s = invstd[ch]
        xhat = (x[i] - mean[ch]) * s
        dx[i] = gamma[ch] * s * (dy[i] - dbeta[ch] * inv_m - xhat * (dgamma[ch] * inv_m))
