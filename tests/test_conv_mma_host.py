"""kernels/cu/conv_mma.cu itself, run on the CPU: the CUDA C++ source (with
the gemm_mma.cu it includes) compiled by the host C++ compiler against
tests/host_cuda/cuda_emu.h and mma_emu.h (a block's 256 threads as
std::threads; ldmatrix, mma and cp.async, 4- and 16-byte, emulated from the
PTX ISA; every shared access checked against the launcher's dynamic size
and the instruction's alignment), on a 3-D grid.

The simulator twin (tests/cuda/test_conv_tensor_cores.py) re-states the
loaders in Python; this runs the C++ loaders, their bounds tests and the
epilogue's output addressing, for all 12 entries, with the grid and shared
size conv_mma.py's launcher uses, under copies that land late and early,
against the CPU backend's convolutions of the same precision. Skipped
without g++ 12+ (std::barrier). No GPU.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpudl.backend.cpu import CPUBackend
from gpudl.convshape import conv_output_hw
from gpudl.kernels import conv_mma as cm
from gpudl.kernels import cuda_cpp
from gpudl.kernels import gemm_mma as gm
from gpudl.precision import round_to, to_bf16_bits

HERE = Path(__file__).parent / "host_cuda"
CXX = shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++ or clang++)")
PRECS = list(gm.ELEM)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conv_mma_host")
    for name in ("conv_mma", "gemm_mma"):  # the shipped sources
        (tmp / f"{name}.cu").write_text(cuda_cpp.source(name))
    so = tmp / "conv_mma_host.so"
    proc = subprocess.run([CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread",
                           "-Wno-unknown-pragmas", f"-I{tmp}", f"-I{HERE}", *gm.COMPILE_OPTIONS,
                           str(HERE / "conv_mma_host.cpp"), "-o", str(so)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "barrier" in proc.stderr and "error" in proc.stderr:
            pytest.skip(f"{CXX} lacks C++20 std::barrier")
        raise AssertionError(proc.stderr)
    dll = ctypes.CDLL(str(so))
    dll.run_conv_mma.argtypes = ([ctypes.c_char_p] + [ctypes.c_int] * 5 + [ctypes.c_void_p] * 4)
    dll.run_conv_mma.restype = ctypes.c_int
    dll.conv_mma_emu_error.restype = ctypes.c_char_p
    return dll


def stored(x, prec):
    if prec == "bf16":
        return to_bf16_bits(x)
    return np.ascontiguousarray(x.astype(gm.STORAGE[prec]))


def run(lib, prec, op, in0, in1, out_shape, geo, splits=1, late=True):
    s0, s1 = stored(in0, prec), stored(in1, prec)
    out = np.full(out_shape, np.nan, np.float32)  # poison: every element must be written
    g = np.array(geo, np.int32)
    name = cm.kernel_name(prec, op)
    gx, gy, gz = cm.grid(op, geo, splits)
    rc = lib.run_conv_mma(name.encode(), gx, gy, gz, cm.smem_bytes(prec, op), int(late),
                          s0.ctypes.data, s1.ctypes.data, out.ctypes.data, g.ctypes.data)
    assert rc != 1, f"no entry {name}"
    assert rc == 0, f"{name} {geo}: {lib.conv_mma_emu_error().decode()}"
    return out


def close(got, ref, terms, what):
    err = np.abs(got.astype(np.float64) - ref)
    bad = ~(err <= 1e-5 * terms + 1e-4 * np.abs(ref))  # NaN is bad
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} off, first at {np.argwhere(bad)[0]}"


# (n, c, h, w, o, k, stride, dilation, pads (top, bottom, left, right), groups)
CASES = [
    ("tf32", (2, 3, 7, 6, 5, (3, 3), (2, 1), (1, 1), (1, 1, 1, 0), 1)),
    ("bf16", (1, 4, 8, 7, 6, (3, 2), (1, 1), (2, 1), (2, 1, 0, 1), 2)),
    ("fp16", (2, 6, 9, 8, 2, (2, 3), (2, 2), (2, 2), (1, 0, 2, 1), 2)),
    ("bf16", (2, 8, 5, 6, 3, (2, 2), (1, 2), (1, 1), (1, 0, 0, 1), 1)),   # cp.async W rows
    ("tf32", (2, 4, 9, 8, 130, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), 1)),  # 2 block rows/columns
    ("fp16", (1, 130, 3, 3, 2, (1, 1), (2, 1), (1, 1), (0, 0, 0, 0), 1)),  # 5 k-slabs, 2 rows
]


@pytest.mark.parametrize("late", [True, False], ids=["late", "early"])
@pytest.mark.parametrize("prec,case", CASES, ids=str)
def test_against_cpu(lib, prec, case, late):
    n, c, h, w, o, k, stride, dil, pads, groups = case
    rng = np.random.default_rng(n + c + o)
    x = round_to(rng.standard_normal((n, c, h, w)).astype(np.float32), prec)
    wt = round_to(rng.standard_normal((o, c // groups) + k).astype(np.float32), prec)
    oh, ow = conv_output_hw((h, w), k, stride, pads, dil)
    dy = round_to(rng.standard_normal((n, o, oh, ow)).astype(np.float32), prec)
    geo = cm.geometry(x.shape, wt.shape, (oh, ow), stride, dil, (pads[0], pads[2]), groups)
    cpu = CPUBackend()
    a = (stride, pads, dil, groups)
    kc = wt[0].size
    fwd = "fwd" if cm.misaligned(prec, kc) is None else "fwd_unaligned"
    close(run(lib, prec, fwd, x, wt, (n, o, oh, ow), geo, late=late),
          cpu.conv2d(x, wt, *a, precision=prec), kc, fwd)
    close(run(lib, prec, "bwd_input", dy, wt, x.shape, geo, late=late),
          cpu.conv2d_backward_input(dy, wt, (h, w), *a, precision=prec),
          o // groups * k[0] * k[1], "bwd_input")
    ref = cpu.conv2d_backward_weight(dy, x, k, *a, precision=prec)
    for splits in (1, 3):  # three splits: some may get no k-slab and must write zeros
        part = run(lib, prec, "bwd_weight", dy, x, (splits, o, kc), geo, splits, late=late)
        close(part.sum(axis=0).reshape(wt.shape), ref, n * oh * ow, f"bwd_weight/{splits}")
