"""2-D convolution as implicit GEMMs: the im2col matrix is never stored.

Per group g (Og = O // G output channels, K = Cg*KH*KW, P = N*OH*OW):

    forward      Y[o, p]   = sum_k  W[o, k]    * Xcol[k, p]
    weight grad  dW[o, k]  = sum_p  dY[o, p]   * Xcol[k, p]
    input grad   dX[c, q]  = sum_k' Wt[c, k']  * dYcol[k', q]

with k = (cl, i, j), p = (n, oy, ox), q = (n, ih, iw) and k' = (o, i, j).
Xcol[k, p] = x[n, g*Cg + cl, oy*sh - top + i*dh, ox*sw - left + j*dw] (0 in
the padding) is what im2col writes out; here each block computes the entries
of its shared-memory slab from x by index arithmetic instead, so the
(K x P) matrix -- KH*KW times the size of x -- never costs memory or traffic.
dYcol[k', q] = dy[n, g*Og + o, oy, ox] where (oy, ox) is the output whose
window puts cell (i, j) on input pixel (ih, iw) (conv._source), else 0: the
transposed convolution, so dx is also a plain GEMM and no col2im is needed.

All three use matmul_blocked's tiling (64x64 block tile, 16-deep k-slab,
4x4 outputs per thread held in registers) and its two slab-loading patterns,
and write NCHW results directly. Groups are gridDim.z. The weight gradient
reduces over N*OH*OW, often far longer than the output is wide, so it splits
that reduction into S interleaved parts (split-K) written to partial[s] and
summed afterwards in a fixed order: deterministic, no atomics.
"""
from numba import cuda

from .conv import _source
from .matmul import AS_ROW, BK, BM, BN, BS_ROW, NTHREADS, TM, TN, TX, TY, _multiply_slab, _zero

# Loading patterns (see matmul._load_k_contiguous / _load_outer_contiguous):
#   k-contiguous:     thread takes slab row tid % BK, outer index tid // BK + KSTEP*s
#   outer-contiguous: thread takes outer index tid % BN, slab row tid // BN + OSTEP*s
KSTEP = NTHREADS // BK
OSTEP = NTHREADS // BN
assert BM == BN and BM * BK // NTHREADS == BN * BK // NTHREADS


@cuda.jit(device=True, inline=True)
def _unravel3(e, d1, d2):
    """(a, b, c) of flat index e in a C-ordered (., d1, d2) array."""
    c = e % d2
    t = e // d2
    return t // d1, t % d1, c


@cuda.jit
def conv2d_implicit_fwd(x, w, y, sh, sw, dh, dw, top, left):
    """y = conv(x, w); grid (cdiv(N*OH*OW, BN), cdiv(Og, BM), G), block (TX, TY)."""
    As = cuda.shared.array((BK, AS_ROW), y.dtype)  # As[kk][i] = W[o0 + i, k0 + kk]
    Bs = cuda.shared.array((BK, BS_ROW), y.dtype)  # Bs[kk][q] = Xcol[k0 + kk, p0 + q]
    acc = cuda.local.array((TM, TN), y.dtype)
    ra = cuda.local.array(TM, y.dtype)
    rb = cuda.local.array(TN, y.dtype)
    h = x.shape[2]
    wd = x.shape[3]
    o = w.shape[0]
    cg = w.shape[1]
    kh = w.shape[2]
    kw = w.shape[3]
    oh = y.shape[2]
    ow = y.shape[3]
    og = o // (x.shape[1] // cg)
    kk_n = cg * kh * kw
    npix = y.shape[0] * oh * ow
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TX + tx
    g = cuda.blockIdx.z
    o0 = g * og + cuda.blockIdx.y * BM  # absolute output channel of tile row 0
    o_end = g * og + og
    p0 = cuda.blockIdx.x * BN
    # This thread's Xcol column is fixed for the whole kernel: unravel it once.
    q = tid % BN
    n, oy, ox = _unravel3(p0 + q, oh, ow)
    ih0 = oy * sh - top
    iw0 = ox * sw - left
    col_ok = p0 + q < npix
    _zero(acc)
    for k0 in range(0, kk_n, BK):
        # W slab, k-contiguous: consecutive threads read consecutive w.
        kk = tid % BK
        cl, i, j = _unravel3(k0 + kk, kh, kw)
        for s in range(BM * BK // NTHREADS):
            r = tid // BK + KSTEP * s
            if o0 + r < o_end and k0 + kk < kk_n:
                As[kk, r] = w[o0 + r, cl, i, j]
            else:
                As[kk, r] = 0
        # Xcol slab, p-contiguous: a warp reads along an image row of x.
        for s in range(BN * BK // NTHREADS):
            kk = tid // BN + OSTEP * s
            cl, i, j = _unravel3(k0 + kk, kh, kw)
            ih = ih0 + i * dh
            iw = iw0 + j * dw
            if col_ok and k0 + kk < kk_n and 0 <= ih < h and 0 <= iw < wd:
                Bs[kk, q] = x[n, g * cg + cl, ih, iw]
            else:
                Bs[kk, q] = 0
        cuda.syncthreads()
        _multiply_slab(As, Bs, acc, ra, rb, tx, ty)
        cuda.syncthreads()
    for j in range(TN):
        p = p0 + tx + TX * j
        if p < npix:
            n, oy, ox = _unravel3(p, oh, ow)
            for i in range(TM):
                oc = o0 + ty + TY * i
                if oc < o_end:
                    y[n, oc, oy, ox] = acc[i, j]


@cuda.jit
def conv2d_implicit_bwd_weight(dy, x, partial, kh, kw, sh, sw, dh, dw, top, left):
    """partial[s, o, k] = split s of dW[o, k]'s sum over p = (n, oy, ox); the
    split takes the BK-slabs s, s + S, s + 2S, ... Grid (cdiv(K, BN),
    cdiv(Og, BM), G*S) with S = gridDim.z // G; block (TX, TY)."""
    As = cuda.shared.array((BK, AS_ROW), partial.dtype)  # As[rr][i] = dY[o0 + i, r0 + rr]
    Bs = cuda.shared.array((BK, BS_ROW), partial.dtype)  # Bs[rr][c] = Xcol[k0 + c, r0 + rr]
    acc = cuda.local.array((TM, TN), partial.dtype)
    ra = cuda.local.array(TM, partial.dtype)
    rb = cuda.local.array(TN, partial.dtype)
    c = x.shape[1]
    h = x.shape[2]
    wd = x.shape[3]
    o = dy.shape[1]
    oh = dy.shape[2]
    ow = dy.shape[3]
    kk_n = partial.shape[2]
    cg = kk_n // (kh * kw)
    groups = c // cg
    og = o // groups
    npix = dy.shape[0] * oh * ow
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TX + tx
    g = cuda.blockIdx.z % groups
    split = cuda.blockIdx.z // groups
    splits = cuda.gridDim.z // groups
    o0 = g * og + cuda.blockIdx.y * BM
    o_end = g * og + og
    k0 = cuda.blockIdx.x * BN
    _zero(acc)
    # Both slabs are read with consecutive threads on consecutive p, the
    # contiguous axis of dy and (up to the stride) of x.
    rr = tid % BK
    for r0 in range(split * BK, npix, splits * BK):
        n, oy, ox = _unravel3(r0 + rr, oh, ow)
        row_ok = r0 + rr < npix
        for s in range(BM * BK // NTHREADS):
            r = tid // BK + KSTEP * s
            if row_ok and o0 + r < o_end:
                As[rr, r] = dy[n, o0 + r, oy, ox]
            else:
                As[rr, r] = 0
        for s in range(BN * BK // NTHREADS):
            col = tid // BK + KSTEP * s
            cl, i, j = _unravel3(k0 + col, kh, kw)
            ih = oy * sh - top + i * dh
            iw = ox * sw - left + j * dw
            if row_ok and k0 + col < kk_n and 0 <= ih < h and 0 <= iw < wd:
                Bs[rr, col] = x[n, g * cg + cl, ih, iw]
            else:
                Bs[rr, col] = 0
        cuda.syncthreads()
        _multiply_slab(As, Bs, acc, ra, rb, tx, ty)
        cuda.syncthreads()
    for i in range(TM):
        oc = o0 + ty + TY * i
        for j in range(TN):
            col = k0 + tx + TX * j
            if oc < o_end and col < kk_n:
                partial[split, oc, col] = acc[i, j]


@cuda.jit
def conv2d_implicit_bwd_input(dy, w, dx, sh, sw, dh, dw, top, left):
    """dx = the transposed convolution of dy with w; grid (cdiv(N*H*W, BN),
    cdiv(Cg, BM), G), block (TX, TY)."""
    As = cuda.shared.array((BK, AS_ROW), dx.dtype)  # As[kk][m] = Wt[m0 + m, k0 + kk]
    Bs = cuda.shared.array((BK, BS_ROW), dx.dtype)  # Bs[kk][q] = dYcol[k0 + kk, p0 + q]
    acc = cuda.local.array((TM, TN), dx.dtype)
    ra = cuda.local.array(TM, dx.dtype)
    rb = cuda.local.array(TN, dx.dtype)
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
    kk_n = og * kh * kw
    npix = dx.shape[0] * h * wd
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TX + tx
    g = cuda.blockIdx.z
    m0 = cuda.blockIdx.y * BM  # channel within the group
    p0 = cuda.blockIdx.x * BN
    q = tid % BN
    n, ih, iw = _unravel3(p0 + q, h, wd)
    col_ok = p0 + q < npix
    _zero(acc)
    for k0 in range(0, kk_n, BK):
        # Wt slab: k' = (o, i, j) is contiguous in w for fixed (o, cl) runs.
        kk = tid % BK
        ol, i, j = _unravel3(k0 + kk, kh, kw)
        for s in range(BM * BK // NTHREADS):
            r = tid // BK + KSTEP * s
            if m0 + r < cg and k0 + kk < kk_n:
                As[kk, r] = w[g * og + ol, m0 + r, i, j]
            else:
                As[kk, r] = 0
        # dYcol slab: zero unless (ih, iw) is on output (oy, ox)'s cell (i, j).
        for s in range(BN * BK // NTHREADS):
            kk = tid // BN + OSTEP * s
            ol, i, j = _unravel3(k0 + kk, kh, kw)
            v = dx.dtype.type(0)
            if col_ok and k0 + kk < kk_n:
                oy = _source(ih + top - i * dh, sh, oh)
                ox = _source(iw + left - j * dw, sw, ow)
                if oy >= 0 and ox >= 0:
                    v = dy[n, g * og + ol, oy, ox]
            Bs[kk, q] = v
        cuda.syncthreads()
        _multiply_slab(As, Bs, acc, ra, rb, tx, ty)
        cuda.syncthreads()
    for j in range(TN):
        p = p0 + tx + TX * j
        if p < npix:
            n, ih, iw = _unravel3(p, h, wd)
            for i in range(TM):
                m = m0 + ty + TY * i
                if m < cg:
                    dx[n, g * cg + m, ih, iw] = acc[i, j]
