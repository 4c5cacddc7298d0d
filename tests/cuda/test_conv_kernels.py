"""Convolution kernels (direct, im2col, implicit), channel bias and channel sums vs the CPU reference.

Configurations are tiny (each simulated thread, and each simulated
syncthreads, is slow) but cover what index arithmetic gets wrong: odd sizes,
stride larger than the kernel, dilation 2 and 3, padding beyond half the
kernel, asymmetric padding, groups 1, 2 and depthwise, one image and several.
"""
import copy
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, examples, host, poison_fill, poisoned, rand, seeds
from gpudl.backend import cpu_conv, cuda_conv
from gpudl.convshape import conv_output_hw
from gpudl.errors import ShapeError
from gpudl.kernels import conv as ck
from gpudl.kernels import elementwise as ew
from gpudl.kernels import reduce as rk


class Conv(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    o: int
    k: tuple
    stride: tuple
    dilation: tuple
    pads: tuple  # (top, bottom, left, right)
    groups: int

    @property
    def out_hw(self):
        return conv_output_hw((self.h, self.w), self.k, self.stride, self.pads, self.dilation)

    def geometry(self):
        """The kernels' trailing scalars: sh, sw, dh, dw, top, left."""
        return self.stride + self.dilation + (self.pads[0], self.pads[2])

    def args(self):
        return self.stride, self.pads, self.dilation, self.groups

    def inputs(self, seed, dtype=np.float32):
        x = rand(seed, (self.n, self.c, self.h, self.w), dtype)
        w = rand(seed + 1, (self.o, self.c // self.groups) + self.k, dtype)
        dy = rand(seed + 2, (self.n, self.o) + self.out_hw, dtype)
        return x, w, dy

    def terms(self):
        """Length of the sums behind y, dx and dw: rounding grows with it."""
        cg, og = self.c // self.groups, self.o // self.groups
        kk = self.k[0] * self.k[1]
        oh, ow = self.out_hw
        return cg * kk, og * kk, self.n * oh * ow


@st.composite
def configs(draw, max_n=3):
    kind = draw(st.sampled_from(["ordinary", "grouped", "depthwise"]))
    if kind == "depthwise":
        groups = c = draw(st.integers(1, 3))
        o = c * draw(st.integers(1, 2))
    else:
        groups = 1 if kind == "ordinary" else 2
        c = groups * draw(st.integers(1, 2))
        o = groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    # Build the input from a wanted output size, so every draw has an output.
    hw = []
    for ax in range(2):
        want = draw(st.integers(1, 3))
        span = dilation[ax] * (k[ax] - 1) + 1 + (want - 1) * stride[ax]
        slack = draw(st.integers(0, stride[ax] - 1))
        hw.append(max(1, span + slack - pads[2 * ax] - pads[2 * ax + 1]))
    return Conv(draw(st.integers(1, max_n)), c, hw[0], hw[1], o, k, stride, dilation, pads,
                groups)


def references(cpu, cfg, x, w, dy):
    a = cfg.args()
    return (cpu.conv2d(x, w, *a),
            cpu.conv2d_backward_input(dy, w, (cfg.h, cfg.w), *a),
            cpu.conv2d_backward_weight(dy, x, cfg.k, *a))


def check_all(cfg, got, refs, dtype=np.float32):
    scale = 1e-5 if dtype == np.float32 else 1e-12
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for g, r, terms, what in zip(got, refs, cfg.terms(), ("y", "dx", "dw")):
        try:
            check(g, r, rtol=rtol, atol=scale * terms)
        except AssertionError as e:
            raise AssertionError(f"{what} of {cfg}: {e}") from None


# ---- direct kernels, launched by hand ---------------------------------------
@examples(30)
@given(cfg=configs(), seed=seeds)
def test_direct_fwd_and_input_grad(be, cpu, cfg, seed):
    """A small fixed grid forces the grid-stride loops."""
    x, w, dy = cfg.inputs(seed)
    geo = cfg.geometry()
    y = be.asarray(poison_fill(dy.shape, np.float32))
    dx = be.asarray(poison_fill(x.shape, np.float32))
    be.launch(ck.conv2d_direct_fwd, 2, 32, x, w, y, *geo)
    be.launch(ck.conv2d_direct_bwd_input, 2, 32, dy, w, dx, *geo)
    ref = references(cpu, cfg, x, w, dy)
    check_all(cfg, [host(be, y), host(be, dx), ref[2]], ref)


# Each simulated syncthreads costs ~20 ms and the tree runs a few per weight
# element: fewer examples here.
@examples(10)
@given(cfg=configs(), seed=seeds, chunks=st.integers(1, 3))
def test_direct_weight_grad(be, cpu, cfg, seed, chunks):
    """chunks > 1 forces the two passes (partial rows, then sum_rows_naive)."""
    x, w, dy = cfg.inputs(seed)
    dw = be.asarray(poison_fill(w.shape, np.float32))
    partial = be.asarray(poison_fill((chunks, w.size), np.float32))
    be.launch(ck.conv2d_direct_bwd_weight, (3, chunks), 8, dy, x, partial, *cfg.k,
              *cfg.geometry())
    be.launch(rk.sum_rows_naive, -(-w.size // 32), 32, partial, dw.reshape(-1))
    ref = references(cpu, cfg, x, w, dy)
    check_all(cfg, [ref[0], ref[1], host(be, dw)], ref)


@examples(12)
@given(cfg=configs(), seed=seeds)
def test_im2col_kernel(be, cfg, seed):
    x = rand(seed, (cfg.n, cfg.c, cfg.h, cfg.w))
    ref, out_hw = cpu_conv._cols(x, cfg.k, cfg.stride, cfg.pads, cfg.dilation, cfg.groups)
    ref = ref.transpose(0, 2, 1)  # the CPU keeps (G, Cg*KH*KW, N*OH*OW), the GPU its transpose
    cols = be.asarray(poison_fill(ref.shape, np.float32))
    be.launch(ck.im2col, 2, 32, x, cols, *cfg.k, *out_hw, *cfg.geometry())
    check(host(be, cols), np.ascontiguousarray(ref), rtol=0, atol=0)


# ---- both versions through the backend --------------------------------------
def run_backend(be, cpu, cfg, seed, version, dtype=np.float32):
    x, w, dy = cfg.inputs(seed, dtype)
    a = cfg.args()
    with poisoned(be):
        if version == "default":
            got = (be.conv2d(be.asarray(x), be.asarray(w), *a),
                   be.conv2d_backward_input(be.asarray(dy), be.asarray(w), (cfg.h, cfg.w), *a),
                   be.conv2d_backward_weight(be.asarray(dy), be.asarray(x), cfg.k, *a))
        else:
            got = (cuda_conv.conv2d(be, be.asarray(x), be.asarray(w), *a, version=version),
                   cuda_conv.conv2d_backward_input(be, be.asarray(dy), be.asarray(w),
                                                   (cfg.h, cfg.w), *a, version=version),
                   cuda_conv.conv2d_backward_weight(be, be.asarray(dy), be.asarray(x), cfg.k,
                                                    *a, version=version))
    check_all(cfg, [host(be, g) for g in got], references(cpu, cfg, x, w, dy), dtype)


@pytest.mark.parametrize("version", ck.VERSIONS)
@examples(6)
@given(cfg=configs(), seed=seeds)
def test_versions(be, cpu, version, cfg, seed):
    run_backend(be, cpu, cfg, seed, version)


def C(n, c, h, w, o, k, stride=(1, 1), dilation=(1, 1), pads=(0, 0, 0, 0), groups=1):
    return Conv(n, c, h, w, o, k, stride, dilation, pads, groups)


EDGES = [
    C(1, 1, 7, 5, 1, (3, 3), pads=(1, 1, 1, 1)),                     # one channel, one image
    C(2, 3, 9, 8, 4, (2, 2), stride=(3, 3)),                         # stride > kernel
    C(2, 2, 7, 7, 2, (3, 3), dilation=(2, 2), pads=(0, 1, 1, 0)),    # asymmetric pads
    C(1, 2, 8, 9, 2, (3, 2), (2, 1), (3, 3), (3, 3, 2, 2), 2),       # dilation 3, groups 2
    C(2, 3, 6, 5, 3, (3, 3), (2, 2), pads=(2, 2, 2, 2), groups=3),   # depthwise, pad > k/2
    C(3, 4, 5, 5, 8, (3, 3), (1, 2), (1, 2), (0, 1, 1, 0), 4),       # depthwise x2
    C(1, 4, 6, 6, 6, (1, 1), (2, 2), groups=2),                      # 1x1, stride 2
] + big(
    C(32, 64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)),
    C(16, 3, 224, 224, 64, (7, 7), (2, 2), pads=(3, 3, 3, 3)),
    C(8, 128, 28, 28, 128, (3, 3), pads=(1, 1, 1, 1), groups=128),
    C(8, 256, 14, 14, 512, (1, 1)),
    C(4, 64, 33, 31, 64, (3, 3), (2, 2), (2, 2), (2, 1, 2, 1), groups=4),
)


@pytest.mark.parametrize("cfg", EDGES, ids=str)
def test_backend_edges(be, cpu, cfg):
    run_backend(be, cpu, cfg, seed=cfg.n * 100 + cfg.c, version="default")


# The implicit GEMMs' tiles (matmul's BM = BN = 64, BK = 16) against sizes
# just past them: output pixels, weight columns and channels over 64, reductions
# over several 16-deep slabs, so edge tiles are partly empty and several
# split-K partial sums get added.
IMPLICIT_TILE_EDGES = [
    C(2, 3, 7, 6, 3, (3, 3), pads=(1, 1, 1, 1)),                    # 84 pixels, K = 27
    C(1, 2, 3, 3, 66, (1, 1), pads=(0, 1, 1, 0)),                  # 66 output channels
    C(1, 66, 2, 3, 2, (1, 1), stride=(2, 1)),                       # 66 input channels
    C(2, 4, 10, 8, 4, (2, 2), (1, 1), (2, 1), (1, 0, 0, 2), 2),     # groups 2, 2 x 72 pixels
] + big(
    C(32, 64, 56, 56, 64, (3, 3), pads=(1, 1, 1, 1)),
    C(16, 3, 224, 224, 64, (7, 7), (2, 2), pads=(3, 3, 3, 3)),
    C(8, 256, 14, 14, 512, (1, 1)),
    C(4, 64, 33, 31, 64, (3, 3), (2, 2), (2, 2), (2, 1, 2, 1), groups=4),
)


@pytest.mark.parametrize("cfg", IMPLICIT_TILE_EDGES, ids=str)
def test_implicit_tile_edges(be, cpu, cfg):
    run_backend(be, cpu, cfg, seed=cfg.o * 10 + cfg.c, version="implicit")


@pytest.mark.parametrize("version", ck.VERSIONS)
def test_float64(be, cpu, version):
    run_backend(be, cpu, EDGES[3], seed=3, version=version, dtype=np.float64)


# ---- channel bias and its gradient -----------------------------------------
@examples(5)
@given(n=st.integers(1, 3), c=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6),
       seed=seeds)
def test_channel_bias_and_sums(be, cpu, n, c, h, w, seed):
    y = rand(seed, (n, c, h, w))
    b = rand(seed + 1, (c,))
    ref = y.copy()
    cpu.add_channel_bias(ref, b)
    got = be.asarray(y)
    be.add_channel_bias(got, be.asarray(b))
    check(host(be, got), ref, rtol=0, atol=0)
    with poisoned(be):
        sums = be.sum_channels(be.asarray(y))
    check(host(be, sums), cpu.sum_channels(y), rtol=1e-5, atol=1e-5 * np.sqrt(n * h * w))


@pytest.mark.parametrize("n,c,h,w", [(1, 1, 1, 1), (2, 1, 17, 9), (1, 3, 2, 2)]
                         + big((256, 16, 64, 64), (8, 1000, 7, 7), (1, 3, 1024, 1024)))
def test_sum_channels_edges(be, cpu, n, c, h, w):
    g = rand(n + c + h, (n, c, h, w))
    with poisoned(be):
        got = be.sum_channels(be.asarray(g))
    check(host(be, got), cpu.sum_channels(g), rtol=1e-5, atol=1e-5 * np.sqrt(n * h * w))


@pytest.mark.parametrize("chunks", [1, 3])
def test_sum_channels_kernel(be, cpu, chunks):
    g = rand(9, (2, 3, 5, 7))
    partial = be.asarray(poison_fill((chunks, 3), np.float32))
    out = be.asarray(poison_fill((3,), np.float32))
    be.launch(rk.sum_channels_partial, (2, chunks), 8, g.reshape(2, 3, 35), partial)
    be.launch(rk.sum_rows_naive, 1, 32, partial, out)
    check(host(be, out), cpu.sum_channels(g), rtol=1e-5, atol=1e-4)


def test_add_channel_bias_kernel_and_view(be, cpu):
    y = rand(4, (2, 3, 4, 5))
    b = rand(5, (3,))
    ref = y.copy()
    cpu.add_channel_bias(ref, b)
    flat = be.asarray(y)
    be.launch(ew.add_channel_bias, 2, 16, flat.reshape(-1), be.asarray(b), 20)
    check(host(be, flat), ref, rtol=0, atol=0)
    wide = be.asarray(rand(6, (2, 6, 4, 5)))
    expect = host(be, wide)
    cpu.add_channel_bias(expect[:, ::2], b)
    be.add_channel_bias(wide[:, ::2], be.asarray(b))  # in place on a strided view
    check(host(be, wide), expect, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, dilation=2, output_padding=1),  # the input grows a zero row
    dict(kernel_size=2, stride=(1, 2), padding=(1, 0), dilation=(3, 1), output_padding=(2, 1)),
])
def test_transposed_layer_with_output_padding_past_the_stride(be, cpu, kwargs):
    """The layer's zero rows (pad_bottom_right, crop_bottom_right) on the device."""
    from gpudl.layers import Conv2DTranspose
    layer = Conv2DTranspose(2, 3, seed=0, **kwargs).to(cpu)
    layer.params["b"] = rand(1, (3,))
    twin = copy.deepcopy(layer).to(be)
    x = rand(2, (2, 2, 4, 3))
    y = layer.forward(x)
    check(host(be, twin.forward(be.asarray(x))), y)
    g = rand(3, y.shape)
    dx = layer.backward(g)
    check(host(be, twin.backward(be.asarray(g))), dx)
    for k in ("W", "b"):
        check(host(be, twin.grads[k]), layer.grads[k], rtol=1e-4, atol=1e-4)


# ---- errors -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["cpu", "be"])
def test_empty_output_names_sizes(request, backend):
    b = request.getfixturevalue(backend)
    x = b.asarray(rand(0, (1, 1, 4, 3)))
    w = b.asarray(rand(1, (1, 1, 3, 3)))
    with pytest.raises(ShapeError, match=r"4x3.*kernel 3x3.*dilation \(2, 1\).*empty"):
        b.conv2d(x, w, (1, 1), (0, 0, 0, 0), (2, 1))


def test_shape_errors(be):
    x = be.asarray(rand(0, (1, 3, 5, 5)))
    with pytest.raises(ShapeError, match=r"3 input channels.*\(2, 2, 3, 3\)"):
        be.conv2d(x, be.asarray(rand(1, (2, 2, 3, 3))), (1, 1), (0, 0, 0, 0), (1, 1))
    with pytest.raises(ShapeError, match=r"groups=2"):
        be.conv2d(x, be.asarray(rand(1, (2, 1, 3, 3))), (1, 1), (0, 0, 0, 0), (1, 1), groups=2)
    with pytest.raises(ShapeError, match=r"\(1, 2, 3, 3\).*\(1, 2, 2, 2\)"):
        be.conv2d_backward_input(be.asarray(rand(2, (1, 2, 2, 2))),
                                 be.asarray(rand(1, (2, 3, 3, 3))), (5, 5), (1, 1),
                                 (0, 0, 0, 0), (1, 1))
    with pytest.raises(ShapeError, match=r"\(1, 2, 3, 3\).*\(1, 2, 4, 3\)"):
        be.conv2d_backward_weight(be.asarray(rand(2, (1, 2, 4, 3))), x, (3, 3), (1, 1),
                                  (0, 0, 0, 0), (1, 1))
    with pytest.raises(ShapeError, match=r"\(1, 3, 5, 5\).*\(2,\)"):
        be.add_channel_bias(x, be.asarray(rand(3, (2,))))
    with pytest.raises(ValueError, match="groups must be an int"):
        be.conv2d_backward_weight(be.asarray(rand(2, (1, 2, 3, 3))), x, (3, 3), (1, 1),
                                  (0, 0, 0, 0), (1, 1), groups=0)
    with pytest.raises(ShapeError, match="4-D"):
        be.sum_channels(be.asarray(rand(3, (2, 3))))
