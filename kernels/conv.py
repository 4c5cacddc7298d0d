"""2-D convolution (NCHW), forward and both gradients, in two versions side by side.

    direct   one thread per output element, summing straight from global
             memory: the reference version, easy to check by eye, and the
             one for depthwise convolutions (one input channel per group,
             where a GEMM would be a pile of tiny matrices).
    im2col   unroll the input windows into a (N*OH*OW, Cg*KH*KW) matrix per
             group, then the register-blocked matmul: all the arithmetic
             runs in a kernel built for reuse. The default (CONV_DEFAULT).
    implicit im2col's GEMMs without the matrix: each block builds its tiles
             of it from x in shared memory (kernels/conv_implicit.py).

Layout: x (N, C, H, W); w (O, Cg, KH, KW) with Cg = C // G for G groups;
y (N, O, OH, OW). Output channel o reads input channels g*Cg .. g*Cg+Cg-1,
g = o // Og with Og = O // G; the kernels derive G = C // Cg, so groups need
no argument. Geometry arguments: stride (sh, sw), dilation (dh, dw), and the
top/left padding (bottom/right padding only shows in the output size).

Output pixel (oy, ox) with kernel cell (i, j) reads input row
ih = oy*sh - top + i*dh (and likewise columns); a row outside [0, H) is zero
padding. Gradients run the same map backwards as gathers, so no kernel
writes an element twice and none needs atomics: results are deterministic.
"""
from numba import cuda

from .reduce import BLOCK_MAX, block_sum

VERSIONS = ("direct", "im2col", "implicit")  # implicit: kernels/conv_implicit.py
CONV_DEFAULT = "im2col"


@cuda.jit(device=True, inline=True)
def _unravel4(e, d1, d2, d3):
    """(a, b, c, d) of flat index e in a C-ordered (., d1, d2, d3) array."""
    d = e % d3
    t = e // d3
    c = t % d2
    t //= d2
    return t // d1, t % d1, c, d


# ---- direct ---------------------------------------------------------------
@cuda.jit
def conv2d_direct_fwd(x, w, y, sh, sw, dh, dw, top, left):
    h = x.shape[2]
    wd = x.shape[3]
    o = w.shape[0]
    cg = w.shape[1]
    kh = w.shape[2]
    kw = w.shape[3]
    oh = y.shape[2]
    ow = y.shape[3]
    og = o // (x.shape[1] // cg)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    # ox varies fastest across threads: the y writes and the x reads of a
    # warp walk along image rows.
    for e in range(start, y.size, stride):
        n, oc, oy, ox = _unravel4(e, o, oh, ow)
        c0 = (oc // og) * cg
        acc = y.dtype.type(0)
        for cl in range(cg):
            for i in range(kh):
                ih = oy * sh - top + i * dh
                if 0 <= ih < h:
                    for j in range(kw):
                        iw = ox * sw - left + j * dw
                        if 0 <= iw < wd:
                            acc += x[n, c0 + cl, ih, iw] * w[oc, cl, i, j]
        y[n, oc, oy, ox] = acc


@cuda.jit(device=True, inline=True)
def _source(t, stride, size):
    """The output index whose window puts kernel cell offset t-away on this
    input pixel (t = pixel + pad - cell*dilation), or -1 if none does."""
    # t < 0: the cell sits before the first window. Tested first because
    # numba's Python-style // and % on a negative t cost extra instructions.
    if t < 0 or t % stride != 0:
        return -1
    q = t // stride
    return q if q < size else -1


@cuda.jit
def conv2d_direct_bwd_input(dy, w, dx, sh, sw, dh, dw, top, left):
    """dx[n, c, h, w] = sum of dy * w over every (output, kernel cell) that read it."""
    c = dx.shape[1]
    h = dx.shape[2]
    wd = dx.shape[3]
    o = w.shape[0]
    cg = w.shape[1]
    kh = w.shape[2]
    kw = w.shape[3]
    oh = dy.shape[2]
    ow = dy.shape[3]
    og = o // (c // cg)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dx.size, stride):
        n, ci, ih, iw = _unravel4(e, c, h, wd)
        g = ci // cg
        cl = ci - g * cg
        acc = dx.dtype.type(0)
        for oc in range(g * og, g * og + og):
            for i in range(kh):
                oy = _source(ih + top - i * dh, sh, oh)
                if oy >= 0:
                    for j in range(kw):
                        ox = _source(iw + left - j * dw, sw, ow)
                        if ox >= 0:
                            acc += dy[n, oc, oy, ox] * w[oc, cl, i, j]
        dx[n, ci, ih, iw] = acc


@cuda.jit
def conv2d_direct_bwd_weight(dy, x, partial, kh, kw, sh, sw, dh, dw, top, left):
    """partial[by, k] = the y-slice by of dw.flat[k]'s sum over N*OH*OW.

    One block per weight element (blocks stride over them): its threads split
    the N*OH*OW terms, then a shared-memory tree adds them. reduce_grid adds
    y-slices when there are few weights; a second pass (sum_rows_naive over
    partial's rows) then adds those in a fixed order."""
    red = cuda.shared.array(BLOCK_MAX, partial.dtype)
    c = x.shape[1]
    h = x.shape[2]
    wd = x.shape[3]
    o = dy.shape[1]
    oh = dy.shape[2]
    ow = dy.shape[3]
    nw = partial.shape[1]
    cg = nw // (o * kh * kw)
    og = o // (c // cg)
    npix = dy.shape[0] * oh * ow
    step = cuda.blockDim.x * cuda.gridDim.y
    first = cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x
    for k in range(cuda.blockIdx.x, nw, cuda.gridDim.x):
        j = k % kw
        t = k // kw
        i = t % kh
        t //= kh
        cl = t % cg
        oc = t // cg
        ci = (oc // og) * cg + cl
        acc = partial.dtype.type(0)
        for p in range(first, npix, step):
            ox = p % ow
            t = p // ow
            oy = t % oh
            n = t // oh
            ih = oy * sh - top + i * dh
            iw = ox * sw - left + j * dw
            if 0 <= ih < h and 0 <= iw < wd:
                acc += dy[n, oc, oy, ox] * x[n, ci, ih, iw]
        total = block_sum(red, acc)
        if cuda.threadIdx.x == 0:
            partial[cuda.blockIdx.y, k] = total


# ---- im2col -----------------------------------------------------------------
@cuda.jit
def im2col(x, cols, kh, kw, oh, ow, sh, sw, dh, dw, top, left):
    """cols[g, (n*OH + oy)*OW + ox, (cl*KH + i)*KW + j] = x[n, g*Cg + cl, ih, iw],
    0 in the padding. cols is (G, N*OH*OW, Cg*KH*KW): each group's matrix is
    contiguous, so it goes to the 2-D matmul kernels as it is."""
    h = x.shape[2]
    wd = x.shape[3]
    rows = cols.shape[1]
    kk = cols.shape[2]
    cg = kk // (kh * kw)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, cols.size, stride):
        col = e % kk
        t = e // kk
        r = t % rows
        g = t // rows
        j = col % kw
        t = col // kw
        i = t % kh
        cl = t // kh
        ox = r % ow
        t = r // ow
        oy = t % oh
        n = t // oh
        ih = oy * sh - top + i * dh
        iw = ox * sw - left + j * dw
        v = cols.dtype.type(0)
        if 0 <= ih < h and 0 <= iw < wd:
            v = x[n, g * cg + cl, ih, iw]
        cols[g, r, col] = v


@cuda.jit
def col2im(cols, dx, kh, kw, oh, ow, sh, sw, dh, dw, top, left):
    """The adjoint of im2col as a gather: dx[n, c, h, w] = sum of the cols
    entries im2col would have copied from it."""
    c = dx.shape[1]
    h = dx.shape[2]
    wd = dx.shape[3]
    cg = cols.shape[2] // (kh * kw)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dx.size, stride):
        n, ci, ih, iw = _unravel4(e, c, h, wd)
        g = ci // cg
        cl = ci - g * cg
        acc = dx.dtype.type(0)
        for i in range(kh):
            oy = _source(ih + top - i * dh, sh, oh)
            if oy >= 0:
                for j in range(kw):
                    ox = _source(iw + left - j * dw, sw, ow)
                    if ox >= 0:
                        acc += cols[g, (n * oh + oy) * ow + ox, (cl * kh + i) * kw + j]
        dx[n, ci, ih, iw] = acc


@cuda.jit
def swap_axes01(src, dst):
    """dst[b, a, p] = src[a, b, p]: (O, N, P) GEMM results <-> (N, O, P) NCHW.
    p is the fast index on both sides, so reads and writes both coalesce."""
    a_n = src.shape[0]
    p_n = src.shape[2]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, dst.size, stride):
        p = e % p_n
        t = e // p_n
        a = t % a_n
        b = t // a_n
        dst[b, a, p] = src[a, b, p]
