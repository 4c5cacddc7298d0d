"""Implicit-GEMM convolutions on tensor cores (kernels/cu/conv_mma.cu):
launcher and numba twins.

The three GEMMs of kernels/conv_implicit.py (forward, input gradient, weight
gradient with split-K) on gemm_mma.cu's block tile, ring, fragment loaders
and mma.sync (the .cu includes gemm_mma.cu, compiled with its -D tiling);
only the tile loaders are new: they compute each slab element's address by
the im2col arithmetic, so the column matrix never exists. Inputs per
precision as gemm_mma takes them (STORAGE); outputs float32.

Entries (kernel_name): fwd (W in 16-byte cp.async chunks: needs the weight's
rows, Cg*KH*KW elements, to be whole 16-byte chunks and an aligned base,
see misaligned()), fwd_unaligned (W gathered like the rest), bwd_input,
bwd_weight (writes partial[split]; the caller sums the splits).

The twins (TWINS[prec][op]) run in the simulator: the .cu's loaders,
element for element into the same padded slab positions and stage ring,
then gemm_mma's twin k-step (ldmatrix and mma emulated lane by lane) and
the .cu's epilogue. Their arrays are float32 holding values already rounded
to the format (the simulator has no 16-bit storage), flat, like the .cu's
pointers; the forward's W is (O, Cg*KH*KW) so gemm_mma's chunk loader
(twin of the cp.async path) can read it.
"""
from __future__ import annotations

import importlib.resources

import numpy as np
from numba import cuda, float32, int32

from . import cuda_cpp
from . import gemm_mma as gm
from .conv import _source

OPS = ("fwd", "fwd_unaligned", "bwd_input", "bwd_weight")
_CU_NAME = {"tf32": "tf32", "bf16": "bf16", "fp16": "f16"}
#: the gemm_mma variant whose slab layout each op uses (A K-major; B as given)
VARIANT = {"fwd": "nn", "fwd_unaligned": "nn", "bwd_input": "nn", "bwd_weight": "nt"}


def compile_options():
    # conv_mma.cu includes gemm_mma.cu from its own folder
    cu = importlib.resources.files("gpudl.kernels").joinpath("cu")
    return gm.COMPILE_OPTIONS + (f"-I{cu}",)


def kernel_name(prec, op):
    base = op.replace("_unaligned", "")
    return f"conv_{base}_{_CU_NAME[prec]}" + ("_unaligned" if base != op else "")


def names():
    return [kernel_name(p, op) for p in gm.ELEM for op in OPS]


def compile(target="ptx", cc=(9, 0)):  # noqa: A001
    return cuda_cpp.compile("conv_mma", cc=cc, target=target, options=compile_options())


def smem_bytes(prec, op):
    return gm.smem_bytes(prec, VARIANT[op])


def slab_depth(prec):
    return gm.layout(prec)[1]


def _cdiv(a, b):
    return (a + b - 1) // b


def grid(op, geo, splits=1):
    """Grid for an op given the geometry tuple of geometry()."""
    n, c, h, w, o, kh, kw, oh, ow = geo[:9]
    groups = geo[-1]
    cg, og = c // groups, o // groups
    if op.startswith("fwd"):
        return (_cdiv(n * oh * ow, gm.BN), _cdiv(og, gm.BM), groups)
    if op == "bwd_input":
        return (_cdiv(n * h * w, gm.BN), _cdiv(cg, gm.BM), groups)
    return (_cdiv(cg * kh * kw, gm.BN), _cdiv(og, gm.BM), groups * splits)


def geometry(x_shape, w_shape, out_hw, stride, dilation, top_left, groups):
    """The kernels' trailing int arguments: N, C, H, W, O, KH, KW, OH, OW, sh,
    sw, dh, dw, top, left, groups."""
    n, c, h, w = x_shape
    return (n, c, h, w, w_shape[0], w_shape[2], w_shape[3], *out_hw, *stride, *dilation,
            *top_left, groups)


def misaligned(prec, k, pointer=0):
    """Why conv_fwd (16-byte cp.async of W's rows) cannot take this weight
    (None: it can): rows of k elements must be whole 16-byte chunks, the base
    16-byte aligned; conv_fwd_unaligned takes the rest."""
    ce = 16 // gm.ELEM[prec]
    if k % ce:
        return f"the weight's rows hold {k} elements, not a multiple of {ce} (16 bytes)"
    if pointer % 16:
        return f"the weight's address {pointer:#x} is not 16-byte aligned"
    return None


def launch(op, prec, in0, in1, out, geo, splits=1, stream=None):
    """One conv_mma kernel on a GPU: CuPy arrays, inputs in gm.STORAGE[prec]
    (C-contiguous NCHW / OIHW), out float32 (for bwd_weight (splits, O,
    Cg*KH*KW)); geo from geometry()."""
    import cupy
    for name, x, dtype in (("in0", in0, gm.STORAGE[prec]), ("in1", in1, gm.STORAGE[prec]),
                           ("out", out, np.float32)):
        if x.dtype != dtype or not x.flags.c_contiguous:
            raise ValueError(f"conv_mma {op} {prec}: {name} must be C-contiguous "
                             f"{np.dtype(dtype)}, got {x.dtype}")
    fn = cuda_cpp.load_module("conv_mma", compile_options()).get_function(kernel_name(prec, op))
    smem = smem_bytes(prec, op)
    if fn.max_dynamic_shared_size_bytes < smem:  # past 48 KB needs the opt-in attribute
        fn.max_dynamic_shared_size_bytes = smem
    fn(grid(op, geo, splits), (gm.THREADS,), (in0, in1, out) + tuple(np.int32(v) for v in geo),
       shared_mem=smem, stream=stream if stream is not None else cupy.cuda.get_current_stream())
    return out


# ---- numba twins (simulator) ---------------------------------------------------
def _make_twin(prec, op):
    ce, bk, kdepth, krow, arow, brow = gm.layout(prec)
    variant = VARIANT[op]
    tb = gm.VARIANTS[variant][1]
    a_elems, b_elems = gm.tile_elems(prec, variant)
    stage_elems = a_elems + b_elems
    load_slab, mma_step = gm.twin_parts(prec, False, tb)
    BM, BN, THREADS = gm.BM, gm.BN, gm.THREADS

    @cuda.jit(device=True)
    def put(s, dst, r, c, stride, v):
        s[dst + r * stride + c] = v

    # Each gather mirrors the .cu's gather_slab map: element e = tid + i*THREADS
    # at (e // cols, e % cols), so a thread keeps column tid % cols.
    @cuda.jit(device=True)
    def stage_fwd(s, sa, sb, t, x, w2, cv, m0, n0, g, split, splits, tid):
        n, c, h, wd, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups = cv
        cg = c // groups
        og = o // groups
        khw = kh * kw
        kk = cg * khw
        k0 = t * bk
        if op == "fwd":  # cp.async chunks of this group's (Og, K) rows
            load_slab(s, sa, w2, g * og + og, kk, g * og + m0, k0, tid, BM, bk, krow)
        else:
            col = tid % bk
            for r in range(tid // bk, BM, THREADS // bk):
                v = float32(0)
                if m0 + r < og and k0 + col < kk:
                    v = w2[g * og + m0 + r, k0 + col]
                put(s, sa, r, col, krow, v)
        q = tid % BN
        p = n0 + q
        ohw = oh * ow
        img = p // ohw
        rem = p % ohw
        ih0 = (rem // ow) * sh - top
        iw0 = (rem % ow) * sw - left
        for r in range(tid // BN, bk, THREADS // BN):
            k = k0 + r
            v = float32(0)
            if p < n * ohw and k < kk:
                cl = k // khw
                i = (k % khw) // kw
                j = k % kw
                ih = ih0 + i * dh
                iw = iw0 + j * dw
                if 0 <= ih < h and 0 <= iw < wd:
                    v = x[((img * c + g * cg + cl) * h + ih) * wd + iw]
            put(s, sb, r, q, brow, v)

    @cuda.jit(device=True)
    def stage_bwd_input(s, sa, sb, t, dy, w, cv, m0, n0, g, split, splits, tid):
        n, c, h, wd, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups = cv
        cg = c // groups
        og = o // groups
        khw = kh * kw
        kk = og * khw
        k0 = t * bk
        col = tid % bk
        k = k0 + col
        ol = k // khw
        for r in range(tid // bk, BM, THREADS // bk):
            v = float32(0)
            if m0 + r < cg and k < kk:
                v = w[((g * og + ol) * cg + m0 + r) * khw + k % khw]
            put(s, sa, r, col, krow, v)
        q = n0 + tid % BN
        hw = h * wd
        img = q // hw
        rem = q % hw
        for r in range(tid // BN, bk, THREADS // BN):
            k = k0 + r
            v = float32(0)
            if q < n * hw and k < kk:
                ol = k // khw
                i = (k % khw) // kw
                j = k % kw
                oy = _source(rem // wd + top - i * dh, sh, oh)
                ox = _source(rem % wd + left - j * dw, sw, ow)
                if oy >= 0 and ox >= 0:
                    v = dy[((img * o + g * og + ol) * oh + oy) * ow + ox]
            put(s, sb, r, tid % BN, brow, v)

    @cuda.jit(device=True)
    def stage_bwd_weight(s, sa, sb, t, dy, x, cv, m0, n0, g, split, splits, tid):
        n, c, h, wd, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups = cv
        cg = c // groups
        og = o // groups
        khw = kh * kw
        kc = cg * khw
        ohw = oh * ow
        col = tid % bk
        p = (split + t * splits) * bk + col
        pok = p < n * ohw
        img = p // ohw
        rem = p % ohw
        ih0 = (rem // ow) * sh - top
        iw0 = (rem % ow) * sw - left
        for r in range(tid // bk, BM, THREADS // bk):
            v = float32(0)
            if pok and m0 + r < og:
                v = dy[(img * o + g * og + m0 + r) * ohw + rem]
            put(s, sa, r, col, krow, v)
        for r in range(tid // bk, BN, THREADS // bk):
            k = n0 + r
            v = float32(0)
            if pok and k < kc:
                cl = k // khw
                i = (k % khw) // kw
                j = k % kw
                ih = ih0 + i * dh
                iw = iw0 + j * dw
                if 0 <= ih < h and 0 <= iw < wd:
                    v = x[((img * c + g * cg + cl) * h + ih) * wd + iw]
            put(s, sb, r, col, krow, v)

    stage = {"fwd": stage_fwd, "fwd_unaligned": stage_fwd, "bwd_input": stage_bwd_input,
             "bwd_weight": stage_bwd_weight}[op]

    @cuda.jit
    def twin(in0, in1, out, n, c, h, wd, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups):
        s = cuda.shared.array(gm._SMEM, float32)
        addr = cuda.shared.array((gm._WARPS, gm._SLOTS, 32), int32)
        fa = cuda.shared.array((gm._WARPS, 32, gm.MT, 8), float32)
        fb = cuda.shared.array((gm._WARPS, 32, gm.NT, 4), float32)
        acc = cuda.local.array((gm.MT, gm.NT, 4), float32)
        tmp = cuda.local.array(8, float32)
        cv = (n, c, h, wd, o, kh, kw, oh, ow, sh, sw, dh, dw, top, left, groups)
        cg = c // groups
        og = o // groups
        tid = cuda.threadIdx.x
        lane = tid & 31
        w = tid >> 5
        wm0 = (w // gm.WARPS_N) * gm.WTM
        wn0 = (w % gm.WARPS_N) * gm.WTN
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        g = cuda.blockIdx.z
        split = 0
        splits = 1
        if op == "bwd_weight":
            g = cuda.blockIdx.z % groups
            split = cuda.blockIdx.z // groups
            splits = cuda.gridDim.z // groups
            m, ncols = og, cg * kh * kw
            rslabs = (n * oh * ow + bk - 1) // bk
            kslabs = (rslabs - 1 - split) // splits + 1 if split < rslabs else 0
        elif op == "bwd_input":
            m, ncols = cg, n * h * wd
            kslabs = (og * kh * kw + bk - 1) // bk
        else:
            m, ncols = og, n * oh * ow
            kslabs = (cg * kh * kw + bk - 1) // bk
        for i in range(gm.MT):
            for j in range(gm.NT):
                for e in range(4):
                    acc[i, j, e] = 0
        for st in range(gm.STAGES - 1):
            if st < kslabs:
                stage(s, st * stage_elems, st * stage_elems + a_elems, st, in0, in1, cv, m0, n0,
                      g, split, splits, tid)
        for kt in range(kslabs):
            cuda.syncthreads()  # the .cu's wait_group + barrier
            nxt = kt + gm.STAGES - 1
            if nxt < kslabs:
                b = (nxt % gm.STAGES) * stage_elems
                stage(s, b, b + a_elems, nxt, in0, in1, cv, m0, n0, g, split, splits, tid)
            sa = (kt % gm.STAGES) * stage_elems
            for ks in range(0, bk, kdepth):
                mma_step(s, sa, sa + a_elems, ks, w, lane, m0, n0, m, ncols, wm0, wn0, addr, fa,
                         fb, acc, tmp)
        gq = lane >> 2
        t4 = lane & 3
        for j in range(gm.NT):
            for e1 in range(2):
                col = n0 + wn0 + 8 * j + 2 * t4 + e1
                if col >= ncols:
                    continue
                if op == "bwd_weight":
                    base = (split * o + g * og) * ncols + col
                    rstride = ncols
                elif op == "bwd_input":
                    rstride = h * wd
                    base = ((col // rstride) * c + g * cg) * rstride + col % rstride
                else:
                    rstride = oh * ow
                    base = ((col // rstride) * o + g * og) * rstride + col % rstride
                for i in range(gm.MT):
                    for e2 in range(2):
                        r = m0 + wm0 + 16 * i + gq + 8 * e2
                        if r < m:
                            out[base + r * rstride] = acc[i, j, 2 * e2 + e1]
    return twin


TWINS = {p: {op: _make_twin(p, op) for op in OPS} for p in gm.ELEM}
