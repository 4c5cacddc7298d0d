"""Channel concatenation and split (NCHW, or (N, C) for dense activations).

A part (N, C_i, H, W) is a block of channels [c0, c0 + C_i) of the whole
(N, C, H, W). With S = H * W (S = 1 for 2-D inputs), each image's block is
one contiguous run of C_i * S elements starting at element c0 * S of the
image's C * S, so the backend passes both arrays as C-contiguous 2-D views,
part (N, C_i * S) and whole (N, C * S), and the column offset c0 * S: the
kernels are then plain row-block copies, one division per element.

One launch per part: concat_channels writes part into whole (the forward of
a concat merge and the backward of a split), split_channels reads it back
(the forward of a split and the backward of a concat). Each thread copies
elements of the part in flat order, grid-stride, so consecutive threads read
and write consecutive addresses. Parts never overlap, so every element of
whole is written exactly once over the launches and no atomics are needed.
"""
from numba import cuda


@cuda.jit
def concat_channels(part, whole, offset):
    """whole[n, offset + j] = part[n, j] for part (N, P), whole (N, T), offset + P <= T."""
    p = part.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, part.size, stride):
        n = e // p
        j = e - n * p
        whole[n, offset + j] = part[n, j]


@cuda.jit
def split_channels(whole, part, offset):
    """part[n, j] = whole[n, offset + j] for whole (N, T), part (N, P), offset + P <= T."""
    p = part.shape[1]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, part.size, stride):
        n = e // p
        j = e - n * p
        part[n, j] = whole[n, offset + j]
