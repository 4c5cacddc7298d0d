"""Convolutions on tensor cores (GPUDL_TENSOR_CORES=1 with a precision):
the im2col version's GEMMs through cuda_mma (kernels/cu/gemm_mma.cu), the
implicit version through kernels/cu/conv_mma.cu; forward, input gradient and
weight gradient against the CPU backend's ops of the same precision (inputs
rounded to the format, float32 sums).

In the simulator the numba twins run (the .cu kernels' tile loaders, shared
layouts, ldmatrix and mma lane exchanges); on a GPU the CUDA C++ kernels.
Each case also checks that the tensor-core path really ran (a spy counts its
launches), so a silent fall back to the FP32 kernels fails. Shapes are small
and odd: stride 2, padding (asymmetric), dilation 2, groups 2, channel and
pixel counts that are not multiples of anything.
"""
import numpy as np
import pytest

from cudatest import big, check, host, poisoned
from gpudl.backend import cuda_conv, cuda_mma
from test_conv_kernels import C, check_all

FORMATS = ("tf32", "bf16", "fp16")

# One configuration per format keeps the simulated block count small; between
# them they cover every geometry feature, and each runs all three ops.
CASES = [
    ("tf32", C(2, 3, 7, 6, 5, (3, 3), stride=(2, 1), pads=(1, 1, 1, 0))),
    ("bf16", C(1, 4, 8, 7, 6, (3, 2), dilation=(2, 1), pads=(2, 1, 0, 1), groups=2)),
    ("fp16", C(2, 6, 9, 8, 2, (2, 3), stride=(2, 2), dilation=(2, 2), pads=(1, 0, 2, 1),
               groups=2)),
] + big(*[(f, C(8, 64, 28, 27, 96, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), groups=2))
          for f in FORMATS],
        *[(f, C(4, 130, 15, 14, 66, (1, 3), (1, 2), (2, 1), (0, 0, 1, 1))) for f in FORMATS])


def lowp_references(cpu, cfg, x, w, dy, fmt):
    a = cfg.args()
    return (cpu.conv2d(x, w, *a, precision=fmt),
            cpu.conv2d_backward_input(dy, w, (cfg.h, cfg.w), *a, precision=fmt),
            cpu.conv2d_backward_weight(dy, x, cfg.k, *a, precision=fmt))


def run_ops(be, cfg, x, w, dy, fmt, version=None):
    """The three ops through the backend (version None) or cuda_conv with a
    named version, on inputs the backend rounds as its conv methods do."""
    a = cfg.args()
    if version is None:
        return (be.conv2d(be.asarray(x), be.asarray(w), *a, precision=fmt),
                be.conv2d_backward_input(be.asarray(dy), be.asarray(w), (cfg.h, cfg.w), *a,
                                         precision=fmt),
                be.conv2d_backward_weight(be.asarray(dy), be.asarray(x), cfg.k, *a,
                                          precision=fmt))
    rx, rw, rdy = (be.round_to(be.asarray(t), fmt) for t in (x, w, dy))
    return (cuda_conv.conv2d(be, rx, rw, *a, version=version, fmt=fmt),
            cuda_conv.conv2d_backward_input(be, rdy, rw, (cfg.h, cfg.w), *a, version=version,
                                            fmt=fmt),
            cuda_conv.conv2d_backward_weight(be, rdy, rx, cfg.k, *a, version=version, fmt=fmt))


@pytest.fixture
def mma_calls(monkeypatch):
    """Calls of cuda_mma.matmul that ran a tensor-core GEMM."""
    calls = []
    real = cuda_mma.matmul

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out
    monkeypatch.setattr(cuda_mma, "matmul", spy)
    return calls


@pytest.mark.parametrize("fmt,cfg", CASES, ids=str)
def test_im2col_on_tensor_cores(be, cpu, monkeypatch, mma_calls, fmt, cfg):
    monkeypatch.setenv("GPUDL_TENSOR_CORES", "1")
    x, w, dy = cfg.inputs(cfg.c * 7 + cfg.o)
    with poisoned(be):
        got = run_ops(be, cfg, x, w, dy, fmt)  # im2col is the backend's default version
    # every group's GEMM of all three ops, none declined
    assert mma_calls == [True] * (3 * cfg.groups)
    # Products of rounded values are exact in FP32, so the FP32 tolerance of
    # the conv tests holds; a misplaced fragment or element is off by O(1).
    check_all(cfg, [host(be, g) for g in got], lowp_references(cpu, cfg, x, w, dy, fmt))


def test_tensor_cores_stay_off_by_default(be, cpu, monkeypatch, mma_calls):
    """Without GPUDL_TENSOR_CORES=1, or without a precision, the FP32 kernels
    run as before (and still match the reference of the rounded inputs)."""
    fmt, cfg = CASES[1]
    x, w, dy = cfg.inputs(4)
    monkeypatch.delenv("GPUDL_TENSOR_CORES", raising=False)
    with poisoned(be):
        got = run_ops(be, cfg, x, w, dy, fmt)
    check_all(cfg, [host(be, g) for g in got], lowp_references(cpu, cfg, x, w, dy, fmt))
    monkeypatch.setenv("GPUDL_TENSOR_CORES", "1")
    be.conv2d(be.asarray(x), be.asarray(w), *cfg.args())  # precision None: FP32
    assert mma_calls == []


def test_out_argument_checked(be):
    a = be.asarray(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        cuda_mma.matmul(be, a, a, False, True, "bf16", out=be.empty((4, 5), np.float32))
    out = be.empty((2, 4, 4), np.float32)
    cuda_mma.matmul(be, a, a, False, True, "bf16", out=out[1])
    check(host(be, out)[1], np.full((4, 4), 3, np.float32), rtol=0, atol=0)


# ---- implicit GEMM on tensor cores (kernels/cu/conv_mma.cu) ---------------------
@pytest.fixture
def conv_mma_ops(monkeypatch):
    """The conv_mma kernels the implicit version launched, by op name."""
    from gpudl.backend import cuda_conv_mma
    ops = []
    real = cuda_conv_mma._run

    def spy(be, op, *args, **kwargs):
        ops.append(op)
        return real(be, op, *args, **kwargs)
    monkeypatch.setattr(cuda_conv_mma, "_run", spy)
    return ops


# Besides CASES (weights of 27, 12 and 18 elements a row: the gathering
# forward entry): rows of whole 16-byte chunks (the cp.async entry), 130
# output channels (two block rows of the forward and the weight gradient),
# 144 pixels (two block columns; the weight gradient split two ways), 130
# input channels (two block rows of the input gradient; 5 k-slabs through the
# 3-stage ring in the forward).
IMPLICIT_CASES = CASES + [
    ("bf16", C(2, 8, 5, 6, 3, (2, 2), stride=(1, 2), pads=(1, 0, 0, 1))),
    ("tf32", C(2, 4, 9, 8, 130, (1, 1))),
    ("fp16", C(1, 130, 3, 3, 2, (1, 1), stride=(2, 1))),
]


def fwd_entry(fmt, cfg):
    from gpudl.kernels import conv_mma
    k = cfg.c // cfg.groups * cfg.k[0] * cfg.k[1]
    return "fwd" if conv_mma.misaligned(fmt, k) is None else "fwd_unaligned"


def test_cases_reach_both_forward_entries():
    assert {fwd_entry(f, c) for f, c in IMPLICIT_CASES} == {"fwd", "fwd_unaligned"}


@pytest.mark.parametrize("fmt,cfg", IMPLICIT_CASES, ids=str)
def test_implicit_on_tensor_cores(be, cpu, monkeypatch, conv_mma_ops, mma_calls, fmt, cfg):
    monkeypatch.setenv("GPUDL_TENSOR_CORES", "1")
    x, w, dy = cfg.inputs(cfg.c * 5 + cfg.o)
    with poisoned(be):
        got = run_ops(be, cfg, x, w, dy, fmt, version="implicit")
    assert conv_mma_ops == [fwd_entry(fmt, cfg), "bwd_input", "bwd_weight"]
    assert mma_calls == []  # the implicit version never builds the im2col matrix
    check_all(cfg, [host(be, g) for g in got], lowp_references(cpu, cfg, x, w, dy, fmt))
