"""Tensor-core GEMM (kernels/cu/gemm_mma.cu): tiling, launcher, numba twins.

C (M, N) float32 = op(A) @ op(B) with FP32 accumulate, A and B in TF32
(float32 storage, rounded by cvt.rna in the kernel), BF16 (uint16 bit
patterns) or FP16 (half). Layouts and variants ("nn", "nt", "tn", "tt") are
kernels/matmul.py's: A stored (M, K) or (K, M), B (K, N) or (N, K). Each
has two kernels: the cp.async one for rows that are whole 16-byte chunks
(misaligned() says when not) and an _unaligned one with element loads for
any shape; launch() picks.

This module owns the tiling constants and passes them to NVRTC as -D
options, so the shared-memory size the launcher asks for, the layout the
twin simulates and the compiled kernel agree by construction.

The twins (TWINS[prec][variant]) are numba kernels the simulator can run:
the same block tile, cp.async chunk-to-thread map, padded shared layout and
stage ring as the .cu kernel; ldmatrix emulated by lanes publishing their row
addresses and gathering the words the instruction would deliver to them;
mma emulated by lanes publishing their fragment registers and each lane
forming its own accumulator elements from them with the fragment layouts of
the PTX ISA (mma.m16n8k16 / m16n8k8). A wrong address, stride, lane mapping
or epilogue index therefore gives a wrong product in CI. What the twin cannot
check is the PTX itself: the real instructions are checked by compiling and
disassembling (tests/test_cuda_cpp_compile.py), and on a GPU the test runs
the .cu kernel against the same reference. The simulator has no 16-bit
storage: twin inputs are float32 arrays already rounded to the format. The
twins are for the simulator only (their ~170 KB of static shared scratch is
past numba's 48 KB), so they are not in kernels/catalog.py.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32

from . import cuda_cpp

BM = 128          # block tile rows (M)
BN = 128          # block tile columns (N)
STAGES = 3        # shared-memory ring: two slabs in flight while one is multiplied
WARPS_M = 2
WARPS_N = 4
PAD_MN = 8        # elements after each row of an MN-major slab (see the .cu header)
THREADS = 32 * WARPS_M * WARPS_N
WTM = BM // WARPS_M
WTN = BN // WARPS_N
MT = WTM // 16    # m16 tiles per warp
NT = WTN // 8     # n8 tiles per warp

#: input element size in bytes per precision
ELEM = {"tf32": 4, "bf16": 2, "fp16": 2}
_CU_NAME = {"tf32": "tf32", "bf16": "bf16", "fp16": "f16"}
VARIANTS = {"nn": (False, False), "nt": (False, True), "tn": (True, False), "tt": (True, True)}
#: storage dtype the .cu kernel reads per precision
STORAGE = {"tf32": np.float32, "bf16": np.uint16, "fp16": np.float16}

COMPILE_OPTIONS = (f"-DGEMM_BM={BM}", f"-DGEMM_BN={BN}", f"-DGEMM_STAGES={STAGES}",
                   f"-DGEMM_WARPS_M={WARPS_M}", f"-DGEMM_WARPS_N={WARPS_N}",
                   f"-DGEMM_PAD_MN={PAD_MN}")
#: sm_90's per-block shared memory with the opt-in attribute (227 KB)
SMEM_LIMIT = 232448


def layout(prec):
    """(CE, BK, KSTEP, KROW, AROW, BROW) in elements: chunk, slab depth (64
    bytes of k), mma k, K-major row stride, MN-major row strides of A and B."""
    e = ELEM[prec]
    ce, bk = 16 // e, 64 // e
    return ce, bk, 32 // e, bk + ce, BM + PAD_MN, BN + PAD_MN


def tile_elems(prec, variant):
    """Elements of one stage's A slab and B slab."""
    ta, tb = VARIANTS[variant]
    _, bk, _, krow, arow, brow = layout(prec)
    return (bk * arow if ta else BM * krow), (BN * krow if tb else bk * brow)


def smem_bytes(prec, variant):
    a, b = tile_elems(prec, variant)
    return STAGES * (a + b) * ELEM[prec]


def kernel_name(prec, variant, aligned=True):
    """The cp.async kernel, or (aligned=False) its element-load twin for any shape."""
    return f"gemm_{_CU_NAME[prec]}_{variant}" + ("" if aligned else "_unaligned")


def names():
    return [kernel_name(p, v, al) for p in ELEM for v in VARIANTS for al in (True, False)]


def compile(target="ptx", cc=(9, 0)):  # noqa: A001
    return cuda_cpp.compile("gemm_mma", cc=cc, target=target, options=COMPILE_OPTIONS)


def _cdiv(a, b):
    return (a + b - 1) // b


def launch_config(m, n):
    """(grid, block): grid x walks column tiles, y row tiles."""
    return (_cdiv(n, BN), _cdiv(m, BM)), (THREADS,)


def misaligned(prec, variant, m, n, k, pointers=()):
    """Why the cp.async kernel cannot take this problem (None: it can): it
    copies 16-byte chunks between 16-byte aligned addresses, so every stored
    row must be a whole number of chunks and each base pointer aligned. The
    launcher runs the _unaligned kernel for the rest."""
    if prec not in ELEM:
        raise ValueError(f"precision must be one of {tuple(ELEM)}, got {prec!r}")
    ta, tb = VARIANTS[variant]
    ce = 16 // ELEM[prec]
    rows = {"A": m if ta else k, "B": k if tb else n}
    for what, length in rows.items():
        if length % ce:
            return f"{what}'s rows hold {length} elements, not a multiple of {ce} (16 bytes)"
    for p in pointers:
        if p % 16:
            return f"an operand's address {p:#x} is not 16-byte aligned"
    return None


def launch(a, b, c, trans_a, trans_b, prec, stream=None, aligned=None):
    """c[:] = op(a) @ op(b) on a GPU: CuPy arrays, a and b in STORAGE[prec]
    (A stored (M, K), or (K, M) if trans_a; B (K, N), or (N, K) if trans_b),
    c float32 (M, N), all C-contiguous. aligned=None picks the cp.async kernel
    where misaligned() allows it; True/False forces one (False always works)."""
    import cupy
    variant = ("t" if trans_a else "n") + ("t" if trans_b else "n")
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    want = {"a": (k, m) if trans_a else (m, k), "b": (n, k) if trans_b else (k, n)}
    for name, x, dtype in (("a", a, STORAGE[prec]), ("b", b, STORAGE[prec]), ("c", c, np.float32)):
        if x.dtype != dtype or not x.flags.c_contiguous:
            raise ValueError(f"gemm_mma {prec}: {name} must be C-contiguous {np.dtype(dtype)}, "
                             f"got {x.dtype}")
        if name in want and tuple(x.shape) != want[name]:
            raise ValueError(f"gemm_mma {prec} {variant}: {name} has shape {tuple(x.shape)}, "
                             f"expected {want[name]} for c of shape {(m, n)}")
    why = misaligned(prec, variant, m, n, k, (a.data.ptr, b.data.ptr))
    if aligned is None:
        aligned = why is None
    elif aligned and why:
        raise ValueError(f"gemm_mma {prec} {variant} ({m}x{n}x{k}): {why}")
    if min(m, n) == 0:
        return c
    if k == 0:
        c.fill(0)
        return c
    fn = cuda_cpp.load_module("gemm_mma", COMPILE_OPTIONS).get_function(
        kernel_name(prec, variant, aligned))
    smem = smem_bytes(prec, variant)
    # Over 48 KB of dynamic shared memory needs the opt-in attribute
    # (cudaFuncSetAttribute(MaxDynamicSharedMemorySize)); CuPy sets it here.
    if fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    grid, block = launch_config(m, n)
    fn(grid, block, (a, b, c, np.int32(m), np.int32(n), np.int32(k)), shared_mem=smem,
       stream=stream if stream is not None else cupy.cuda.get_current_stream())
    return c


# ---- numba twins (simulator) ---------------------------------------------------
# Scratch through which a warp exchanges what the hardware moves between lanes:
# ldmatrix row addresses (one slot per x4 load of a k-step) and fragments.
_SLOTS = MT + NT // 2
_MAX_STAGE = max(sum(tile_elems(p, v)) for p in ELEM for v in VARIANTS)
_SMEM = STAGES * _MAX_STAGE
_WARPS = WARPS_M * WARPS_N


def twin_parts(prec, ta, tb):
    """The twin's slab loader (cp.async's chunk map, zero fill) and k-step
    (ldmatrix and mma emulated lane by lane) as device functions, for the
    GEMM twin below and the convolution twins of kernels/conv_mma.py."""
    ce, bk, kdepth, krow, arow, brow = layout(prec)
    wide = ELEM[prec] == 2  # 16-bit: m16n8k16, two elements per register
    na = 8 if wide else 4   # A fragment elements per lane
    nb = 4 if wide else 2   # B fragment elements per lane

    @cuda.jit(device=True)
    def load_slab(s, dst, g, rows_total, cols_total, r0, c0, tid, rows, cols, stride):
        # cp.async's chunk map and zero fill: chunk id -> (row, 16-byte column)
        cpr = cols // ce
        for i in range(rows * cpr // THREADS):
            cid = tid + i * THREADS
            r = cid // cpr
            c = (cid % cpr) * ce
            gr = r0 + r
            gc = c0 + c
            valid = 0
            if gr < rows_total and gc < cols_total:
                valid = min(ce, cols_total - gc)
            for e in range(ce):
                s[dst + r * stride + c + e] = g[gr, gc + e] if e < valid else float32(0)

    @cuda.jit(device=True)
    def ldsm_gather(s, addr, w, slot, lane, trans, out):
        # What ldmatrix.x4 hands lane l: from matrix q, word l%4 of row l/4
        # (16-bit: two elements; 32-bit data: one float), or with .trans the
        # column l/4 of rows 2(l%4) and 2(l%4)+1.
        for q in range(4):
            if trans:
                r = q * 8 + 2 * (lane & 3)
                out[2 * q] = s[addr[w, slot, r] + (lane >> 2)]
                out[2 * q + 1] = s[addr[w, slot, r + 1] + (lane >> 2)]
            elif wide:
                p = addr[w, slot, q * 8 + (lane >> 2)] + 2 * (lane & 3)
                out[2 * q] = s[p]
                out[2 * q + 1] = s[p + 1]
            else:
                out[q] = s[addr[w, slot, q * 8 + (lane >> 2)] + (lane & 3)]

    @cuda.jit(device=True)
    def mma_step(s, sa, sb, ks, w, lane, m0, n0, m, n, wm0, wn0, addr, fa, fb, acc, tmp):
        g = lane >> 2
        t = lane & 3
        # Row addresses each lane gives its ldmatrix (the .cu's formulas).
        for i in range(MT):
            row0 = wm0 + 16 * i
            if not ta:
                addr[w, i, lane] = (sa + (row0 + (lane & 15)) * krow + ks
                                    + (lane >> 4) * (8 if wide else 4))
            elif wide:
                addr[w, i, lane] = (sa + (ks + (lane & 7) + 8 * (lane >> 4)) * arow
                                    + row0 + 8 * ((lane >> 3) & 1))
        for j in range(NT // 2):
            col0 = wn0 + 16 * j
            q = lane >> 3
            if tb:
                addr[w, MT + j, lane] = (sb + (col0 + (lane & 7) + 8 * (q >> 1)) * krow
                                         + ks + (8 if wide else 4) * (q & 1))
            elif wide:
                addr[w, MT + j, lane] = (sb + (ks + (lane & 7) + 8 * (q & 1)) * brow
                                         + col0 + 8 * (q >> 1))
        cuda.syncthreads()
        for i in range(MT):
            if ta and not wide:  # TF32 [k][m]: 32-bit loads, (g,t) (g+8,t) (g,t+4) (g+8,t+4)
                p = sa + (ks + t) * arow + wm0 + 16 * i + g
                tmp[0] = s[p]
                tmp[1] = s[p + 8]
                tmp[2] = s[p + 4 * arow]
                tmp[3] = s[p + 4 * arow + 8]
            else:
                ldsm_gather(s, addr, w, i, lane, ta, tmp)
            for e in range(na):
                fa[w, lane, i, e] = tmp[e]
        for j in range(NT // 2):
            if not tb and not wide:  # TF32 [k][n]: b0 = (t, g), b1 = (t+4, g)
                p = sb + (ks + t) * brow + wn0 + 16 * j + g
                tmp[0] = s[p]
                tmp[1] = s[p + 4 * brow]
                tmp[2] = s[p + 8]
                tmp[3] = s[p + 4 * brow + 8]
            else:
                ldsm_gather(s, addr, w, MT + j, lane, not tb, tmp)
            # x4 registers: tile 2j gets registers 0-1, tile 2j+1 registers 2-3
            for e in range(nb):
                fb[w, lane, 2 * j, e] = tmp[e]
                fb[w, lane, 2 * j + 1, e] = tmp[nb + e]
        cuda.syncthreads()
        # mma: lane (g, t) owns D elements (g, 2t), (g, 2t+1), (g+8, 2t), (g+8,
        # 2t+1) and forms them from the fragments where the PTX ISA puts A[r][kk]
        # and B[kk][c]: m16n8k16 A in lane (r%8)*4 + (kk%8)/2, element kk%2 +
        # 2(r/8) + 4(kk/8), B in lane c*4 + (kk%8)/2, element kk%2 + 2(kk/8);
        # m16n8k8 A in lane (r%8)*4 + kk%4, element r/8 + 2(kk/4), B in lane
        # c*4 + kk%4, element kk/4. (Inlined: a device call is slow in the simulator.)
        for i in range(MT):
            if m0 + wm0 + 16 * i >= m:
                continue  # a tile wholly below C: none of it is stored
            for j in range(NT):
                if n0 + wn0 + 8 * j >= n:
                    continue
                for e in range(4):
                    c = 2 * t + (e & 1)
                    v = acc[i, j, e]
                    for kk in range(kdepth):
                        if wide:
                            la = g * 4 + ((kk & 7) >> 1)
                            ea = (kk & 1) + 2 * (e >> 1) + 4 * (kk >> 3)
                            lb = c * 4 + ((kk & 7) >> 1)
                            eb = (kk & 1) + 2 * (kk >> 3)
                        else:
                            la = g * 4 + (kk & 3)
                            ea = (e >> 1) + 2 * (kk >> 2)
                            lb = c * 4 + (kk & 3)
                            eb = kk >> 2
                        v += fa[w, la, i, ea] * fb[w, lb, j, eb]
                    acc[i, j, e] = v
    return load_slab, mma_step


def _make_twin(prec, ta, tb):
    _, bk, kdepth, krow, arow, brow = layout(prec)
    a_elems = tile_elems(prec, ("t" if ta else "n") + ("t" if tb else "n"))[0]
    stage = sum(tile_elems(prec, ("t" if ta else "n") + ("t" if tb else "n")))
    load_slab, mma_step = twin_parts(prec, ta, tb)

    @cuda.jit(device=True)
    def load_stage(s, st, a, b, m, n, k, m0, n0, k0, tid):
        if ta:
            load_slab(s, st, a, k, m, k0, m0, tid, bk, BM, arow)
        else:
            load_slab(s, st, a, m, k, m0, k0, tid, BM, bk, krow)
        if tb:
            load_slab(s, st + a_elems, b, n, k, n0, k0, tid, BN, bk, krow)
        else:
            load_slab(s, st + a_elems, b, k, n, k0, n0, tid, bk, BN, brow)

    @cuda.jit
    def twin(a, b, c):
        s = cuda.shared.array(_SMEM, float32)
        addr = cuda.shared.array((_WARPS, _SLOTS, 32), int32)
        fa = cuda.shared.array((_WARPS, 32, MT, 8), float32)
        fb = cuda.shared.array((_WARPS, 32, NT, 4), float32)
        acc = cuda.local.array((MT, NT, 4), float32)
        tmp = cuda.local.array(8, float32)
        m = c.shape[0]
        n = c.shape[1]
        k = a.shape[0] if ta else a.shape[1]
        tid = cuda.threadIdx.x
        lane = tid & 31
        w = tid >> 5
        wm0 = (w // WARPS_N) * WTM
        wn0 = (w % WARPS_N) * WTN
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        kslabs = (k + bk - 1) // bk
        for i in range(MT):
            for j in range(NT):
                for e in range(4):
                    acc[i, j, e] = 0
        for st in range(STAGES - 1):
            if st < kslabs:
                load_stage(s, st * stage, a, b, m, n, k, m0, n0, st * bk, tid)
        for kt in range(kslabs):
            cuda.syncthreads()  # the .cu's wait_group + barrier: slab kt is in, kt-1's buffer free
            nxt = kt + STAGES - 1
            if nxt < kslabs:
                load_stage(s, (nxt % STAGES) * stage, a, b, m, n, k, m0, n0, nxt * bk, tid)
            sa = (kt % STAGES) * stage
            for ks in range(0, bk, kdepth):
                mma_step(s, sa, sa + a_elems, ks, w, lane, m0, n0, m, n, wm0, wn0, addr, fa, fb,
                         acc, tmp)
        g = lane >> 2
        t = lane & 3
        for i in range(MT):
            for j in range(NT):
                for e in range(4):
                    r = m0 + wm0 + 16 * i + g + 8 * (e >> 1)
                    col = n0 + wn0 + 8 * j + 2 * t + (e & 1)
                    if r < m and col < n:
                        c[r, col] = acc[i, j, e]
    return twin


TWINS = {p: {v: _make_twin(p, *f) for v, f in VARIANTS.items()} for p in ELEM}
