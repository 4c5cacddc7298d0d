"""kernels/cu/sgemm.cu itself, run on the CPU: the CUDA C++ source compiled
by the host C++ compiler against tests/host_cuda/cuda_emu.h (each block's 256
threads as std::threads, __syncthreads as a barrier, __shared__ as statics).

The numba twin (matmul_warp) shares the tiling, but only this runs the C++
code: its loaders, float4 paths, stash, double buffering and epilogue, all
eight entries, both kernel shapes, with the grid of kernels/sgemm.py's
launch_config and the entry its launcher would pick. Skipped without g++ 12+
(std::barrier). No GPU; says nothing about speed or the SASS
(tests/test_cuda_cpp_compile_sgemm.py does).
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpudl.backend.cpu import CPUBackend
from gpudl.kernels import cuda_cpp
from gpudl.kernels import sgemm as sg

HERE = Path(__file__).parent / "host_cuda"
CXX = shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++ or clang++)")


@pytest.fixture(scope="module", params=sorted(sg.OPTIONS), ids=lambda b: f"{b}_blocks_per_sm")
def lib(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"sgemm_host{request.param}")
    (tmp / "sgemm.cu").write_text(cuda_cpp.source("sgemm"))  # the shipped source
    so = tmp / "sgemm_host.so"
    opts = list(sg.OPTIONS[request.param])
    proc = subprocess.run([CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread",
                           "-Wno-unknown-pragmas", f"-I{tmp}", f"-I{HERE}", *opts,
                           str(HERE / "sgemm_host.cpp"), "-o", str(so)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "barrier" in proc.stderr and "error" in proc.stderr:
            pytest.skip(f"{CXX} lacks C++20 std::barrier")
        raise AssertionError(proc.stderr)
    dll = ctypes.CDLL(str(so))
    fp = ctypes.POINTER(ctypes.c_float)
    dll.run_sgemm.argtypes = [ctypes.c_char_p] + [ctypes.c_int] * 3 + [fp] * 3 + [ctypes.c_int] * 6
    dll.run_sgemm.restype = ctypes.c_int
    return dll


def run(lib, name, a, b, c, m, n, k):
    (gx, gy, _), (nthreads, _, _) = sg.launch_config(m, n)
    ptr = lambda x: x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    rc = lib.run_sgemm(name.encode(), gx, gy, nthreads, ptr(a), ptr(b), ptr(c), m, n, k,
                       a.shape[1], b.shape[1], c.shape[1])
    assert rc == 0, f"no entry {name}"


def operands(variant, m, n, k, offset, seed):
    """Fresh normal operands; offset > 0 starts a that many floats into a buffer."""
    rng = np.random.default_rng(seed)
    ta, tb = variant[0] == "t", variant[1] == "t"
    shape_a = (k, m) if ta else (m, k)
    buf = np.empty(m * k + offset + 4, np.float32)
    a = buf[offset:offset + m * k].reshape(shape_a)
    a[...] = rng.standard_normal(shape_a)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    return a, b, ta, tb


def check(lib, variant, m, n, k, scalar=False, offset=0):
    a, b, ta, tb = operands(variant, m, n, k, offset, seed=m * 7 + n * 3 + k)
    name = sg.entry(variant, a.shape, b.shape, a.ctypes.data, b.ctypes.data)
    if scalar:
        name = f"sgemm_{variant}_scalar"
    c = np.full((m, n), np.nan, np.float32)  # poison: every element must be written
    run(lib, name, a, b, c, m, n, k)
    ref = CPUBackend().matmul(a.astype(np.float64), b.astype(np.float64), ta, tb)
    err = np.abs(c.astype(np.float64) - ref)
    bad = ~(err <= 1e-5 * max(k, 1) + 1e-4 * np.abs(ref))  # NaN is bad
    assert not bad.any(), (f"{name} {m}x{n}x{k}: {bad.sum()} of {bad.size} off, first at "
                           f"{np.argwhere(bad)[0].tolist()}")
    return name


VARIANTS = sg.VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_vector_entries(lib, variant):
    # rows of 4k floats: the float4 paths; 2 x 2 blocks, partial edge tiles,
    # 5 slabs (4 buffer swaps)
    assert check(lib, variant, 132, 136, 40) == f"sgemm_{variant}"
    assert check(lib, variant, 4, 256, 8) == f"sgemm_{variant}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_scalar_entries(lib, variant):
    # 19-float rows, a partial last slab of 3
    assert check(lib, variant, 130, 129, 19) == f"sgemm_{variant}_scalar"
    # a 4-byte-misaligned operand with otherwise vector-friendly rows
    assert check(lib, variant, 132, 136, 20, offset=1) == f"sgemm_{variant}_scalar"
    # the scalar entry is right where the vector one would also run
    check(lib, variant, 132, 136, 20, scalar=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_small_and_empty_k(lib, variant):
    check(lib, variant, 1, 1, 1)
    check(lib, variant, 3, 5, 0)  # C = 0, written
    check(lib, variant, 129, 2, 4)
