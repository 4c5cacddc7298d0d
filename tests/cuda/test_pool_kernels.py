"""Max and mean pooling kernels, forward and backward, vs the CPU reference.

Configurations are tiny (each simulated thread is slow) but cover what the
index arithmetic gets wrong: odd sizes, stride above, equal to and below the
kernel (overlapping windows, where an input collects several gradients),
padding up to kernel - 1 and asymmetric, one image and several. Inputs of
rounded values make ties common, where the argmax must be the CPU's.
"""
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cudatest import big, check, examples, host, poison_fill, poisoned, rand, seeds
from gpudl.convshape import conv_output_hw
from gpudl.errors import ShapeError
from gpudl.kernels import pool as pk


class Pool(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    k: tuple
    stride: tuple
    pads: tuple  # (top, bottom, left, right), each < the kernel along its axis

    @property
    def out_hw(self):
        return conv_output_hw((self.h, self.w), self.k, self.stride, self.pads, (1, 1))

    def geometry(self):
        """The kernels' trailing scalars: kh, kw, sh, sw, top, left."""
        return self.k + self.stride + (self.pads[0], self.pads[2])

    def args(self):
        return self.k, self.stride, self.pads

    def inputs(self, seed, dtype=np.float32, ties=False):
        x = rand(seed, (self.n, self.c, self.h, self.w), np.float64)
        if ties:  # a handful of distinct values: most windows hold a tie
            x = np.round(x)
        dy = rand(seed + 1, (self.n, self.c) + self.out_hw, dtype)
        return x.astype(dtype), dy


@st.composite
def configs(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    pads = tuple(draw(st.integers(0, k[ax] - 1)) for ax in (0, 0, 1, 1))
    # Build the input from a wanted output size, so every draw has an output.
    hw = []
    for ax in range(2):
        want = draw(st.integers(1, 3))
        slack = draw(st.integers(0, stride[ax] - 1))
        span = k[ax] + (want - 1) * stride[ax] + slack
        hw.append(max(1, span - pads[2 * ax] - pads[2 * ax + 1]))
    return Pool(draw(st.integers(1, 3)), draw(st.integers(1, 3)), hw[0], hw[1], k, stride, pads)


def references(cpu, cfg, x, dy):
    y, argmax = cpu.max_pool2d(x, *cfg.args())
    return (y, argmax, cpu.max_pool2d_backward(dy, argmax, (cfg.h, cfg.w), *cfg.args()),
            cpu.avg_pool2d(x, *cfg.args()),
            cpu.avg_pool2d_backward(dy, (cfg.h, cfg.w), *cfg.args()))


def check_all(cfg, got, refs, dtype=np.float32):
    """Max forward is a copy, so exact; sums get a tolerance for their order."""
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-14)
    exact = (0, 0)
    for g, r, tol, what in zip(got, refs, (exact, exact, (rtol, atol), (rtol, atol), (rtol, atol)),
                               ("max y", "argmax", "max dx", "avg y", "avg dx")):
        try:
            check(g, r, rtol=tol[0], atol=tol[1] * cfg.k[0] * cfg.k[1])
        except AssertionError as e:
            raise AssertionError(f"{what} of {cfg}: {e}") from None


# ---- kernels, launched by hand ------------------------------------------------
@examples(80)
@given(cfg=configs(), seed=seeds, ties=st.booleans())
def test_kernels(be, cpu, cfg, seed, ties):
    """A small fixed grid forces the grid-stride loops."""
    x, dy = cfg.inputs(seed, ties=ties)
    geo = cfg.geometry()
    y = be.asarray(poison_fill(dy.shape, np.float32))
    argmax = be.asarray(poison_fill(dy.shape, np.int64))
    dx = be.asarray(poison_fill(x.shape, np.float32))
    ya = be.asarray(poison_fill(dy.shape, np.float32))
    dxa = be.asarray(poison_fill(x.shape, np.float32))
    be.launch(pk.max_pool2d_fwd, 2, 16, x, y, argmax, *geo)
    ref = references(cpu, cfg, x, dy)
    # The backward reads the CPU's argmax, so a forward slip cannot hide here.
    be.launch(pk.max_pool2d_bwd, 2, 16, dy, ref[1], dx, *geo)
    be.launch(pk.avg_pool2d_fwd, 2, 16, x, ya, *geo)
    be.launch(pk.avg_pool2d_bwd, 2, 16, dy, dxa, *geo)
    check_all(cfg, [host(be, a) for a in (y, argmax, dx, ya, dxa)], ref)


# ---- through the backend ------------------------------------------------------
def run_backend(be, cpu, cfg, seed, dtype=np.float32, ties=False):
    x, dy = cfg.inputs(seed, dtype, ties)
    hw = (cfg.h, cfg.w)
    with poisoned(be):
        y, argmax = be.max_pool2d(be.asarray(x), *cfg.args())
        got = (y, argmax, be.max_pool2d_backward(be.asarray(dy), argmax, hw, *cfg.args()),
               be.avg_pool2d(be.asarray(x), *cfg.args()),
               be.avg_pool2d_backward(be.asarray(dy), hw, *cfg.args()))
    check_all(cfg, [host(be, g) for g in got], references(cpu, cfg, x, dy), dtype)


@examples(40)
@given(cfg=configs(), seed=seeds, ties=st.booleans())
def test_backend(be, cpu, cfg, seed, ties):
    run_backend(be, cpu, cfg, seed, ties=ties)


def P(n, c, h, w, k, stride=None, pads=(0, 0, 0, 0)):
    return Pool(n, c, h, w, k, stride or k, pads)


EDGES = [
    P(2, 3, 7, 5, (2, 2)),                                  # the usual 2x2/2, odd sizes
    P(1, 2, 9, 8, (3, 3), (2, 2), (1, 1, 1, 1)),            # overlapping, padded
    P(2, 1, 7, 7, (3, 2), (1, 1), (2, 0, 0, 1)),            # stride 1, asymmetric pads
    P(1, 2, 11, 10, (2, 3), (4, 3), (1, 0, 2, 1)),          # stride > kernel: skipped rows
    P(3, 1, 5, 6, (4, 4), (1, 3), (3, 3, 0, 3)),            # pads of kernel - 1
    P(1, 1, 1, 1, (1, 1)),                                  # a single pixel
] + big(
    P(32, 64, 112, 112, (3, 3), (2, 2), (1, 1, 1, 1)),      # ResNet's stem pool
    P(64, 128, 56, 56, (2, 2)),
    P(16, 256, 27, 27, (3, 3), (2, 2)),                     # AlexNet's overlapping pool
    P(8, 512, 7, 7, (7, 7)),                                # global average
    P(16, 96, 33, 31, (4, 3), (3, 2), (2, 1, 0, 2)),
)


@pytest.mark.parametrize("cfg", EDGES, ids=str)
def test_backend_edges(be, cpu, cfg):
    run_backend(be, cpu, cfg, seed=cfg.n * 100 + cfg.c, ties=True)


def test_float64(be, cpu):
    run_backend(be, cpu, P(2, 2, 7, 6, (3, 2), (2, 1), (1, 2, 1, 0)), seed=5, dtype=np.float64)


def test_all_equal_window_names_its_first_element(be):
    """Every value tied: each window's argmax is its top-left in-image element."""
    cfg = P(1, 1, 5, 5, (3, 3), (2, 2), (1, 1, 1, 1))
    y, argmax = be.max_pool2d(be.asarray(np.full((1, 1, 5, 5), 2.0, np.float32)), *cfg.args())
    assert (host(be, y) == 2).all()
    assert host(be, argmax)[0, 0].tolist() == [[0, 1, 3], [5, 6, 8], [15, 16, 18]]


def test_shape_errors(be):
    x = be.asarray(rand(0, (1, 2, 5, 5)))
    with pytest.raises(ShapeError, match=r"\(2, 5, 5\)"):
        be.max_pool2d(x[0], (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match=r"\(2, 5, 5\)"):
        be.avg_pool2d(x[0], (2, 2), (2, 2), (0, 0, 0, 0))
    dy = be.asarray(rand(1, (1, 2, 2, 2)))
    argmax = be.asarray(np.zeros((1, 2, 2, 3), np.int64))
    with pytest.raises(ShapeError, match=r"\(1, 2, 2, 3\).*\(1, 2, 2, 2\)"):
        be.max_pool2d_backward(dy, argmax, (5, 5), (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match=r"\(1, 2, 2, 2\)"):
        be.max_pool2d_backward(dy, be.asarray(np.zeros((1, 2, 2, 2), np.int64)), (5, 5),
                               (2, 2), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match=r"\(1, 2, 2, 2\)"):
        be.avg_pool2d_backward(dy, (5, 5), (3, 3), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match=r"\(2, 2, 2\)"):
        be.avg_pool2d_backward(dy[0], (5, 5), (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="pads"):
        be.max_pool2d(x, (2, 2), (2, 2), (2, 0, 0, 0))
