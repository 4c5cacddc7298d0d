"""kernels/cu/gemm_mma.cu itself, run on the CPU: the CUDA C++ source compiled
by the host C++ compiler against tests/host_cuda/cuda_emu.h (a block's 256
threads as std::threads, __syncthreads a barrier) and mma_emu.h (ldmatrix,
mma, cp.async and the shared-memory accesses emulated from the PTX ISA's
descriptions, each access checked against the launcher's dynamic size and
the instruction's alignment).

The numba twin (tests/cuda/test_gemm_mma_twin.py) re-states the kernel's
index arithmetic in Python; this runs the C++ itself: its loaders, strides,
stage ring, fragment addressing and epilogue, for all 24 entries, with the
grid, shared-memory size and entry gemm_mma.py's launcher would use, under
copies that land late (at wait_group) and early (at issue). Only the inline
PTX is replaced; the compile tests check that it assembles to HMMA, LDSM and
LDGSTS. Skipped without g++ 12+ (std::barrier). No GPU.
"""
import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from gpudl.kernels import cuda_cpp
from gpudl.kernels import gemm_mma as gm
from gpudl.precision import round_to, to_bf16_bits

HERE = Path(__file__).parent / "host_cuda"
CXX = shutil.which("g++") or shutil.which("clang++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++ or clang++)")
PRECS = list(gm.ELEM)
VARIANTS = list(gm.VARIANTS)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gemm_mma_host")
    (tmp / "gemm_mma.cu").write_text(cuda_cpp.source("gemm_mma"))  # the shipped source
    so = tmp / "gemm_mma_host.so"
    proc = subprocess.run([CXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread",
                           "-Wno-unknown-pragmas", f"-I{tmp}", f"-I{HERE}", *gm.COMPILE_OPTIONS,
                           str(HERE / "gemm_mma_host.cpp"), "-o", str(so)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "barrier" in proc.stderr and "error" in proc.stderr:
            pytest.skip(f"{CXX} lacks C++20 std::barrier")
        raise AssertionError(proc.stderr)
    dll = ctypes.CDLL(str(so))
    dll.run_gemm_mma.argtypes = ([ctypes.c_char_p] + [ctypes.c_int] * 4
                                 + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3)
    dll.run_gemm_mma.restype = ctypes.c_int
    dll.gemm_mma_emu_error.restype = ctypes.c_char_p
    return dll


def stored(x, prec):
    """What the kernel reads: float32 (TF32 rounds in-kernel), BF16 bits, half."""
    if prec == "bf16":
        return to_bf16_bits(x)
    return np.ascontiguousarray(x.astype(gm.STORAGE[prec]))


def check(lib, prec, variant, m, n, k, late=True, seed=0):
    ta, tb = gm.VARIANTS[variant]
    rng = np.random.default_rng(seed)
    a = round_to(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32), prec)
    b = round_to(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32), prec)
    sa, sb = stored(a, prec), stored(b, prec)
    # NumPy's buffers are 16-byte aligned here, so this is the launcher's choice
    aligned = gm.misaligned(prec, variant, m, n, k, (sa.ctypes.data, sb.ctypes.data)) is None
    name = gm.kernel_name(prec, variant, aligned)
    c = np.full((m, n), np.nan, np.float32)  # poison: every element must be written
    (gx, gy), _ = gm.launch_config(m, n)
    rc = lib.run_gemm_mma(name.encode(), gx, gy, gm.smem_bytes(prec, variant), int(late),
                          sa.ctypes.data, sb.ctypes.data, c.ctypes.data, m, n, k)
    assert rc != 1, f"no entry {name}"
    assert rc == 0, f"{name} {m}x{n}x{k}: {lib.gemm_mma_emu_error().decode()}"
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = (a64.T if ta else a64) @ (b64.T if tb else b64)
    err = np.abs(c.astype(np.float64) - ref)
    bad = ~(err <= 1e-5 * max(k, 1) + 1e-4 * np.abs(ref))  # NaN is bad
    assert not bad.any(), (f"{name} {m}x{n}x{k}: {bad.sum()} of {bad.size} off, first at "
                           f"{np.argwhere(bad)[0].tolist()}")
    return name


# (m, n, k) per variant with every stored row a whole number of 16-byte chunks
# for 16-bit data (so for TF32 too): the cp.async entries. 136 rows or columns
# cross a block tile; k = 40 leaves a K tail.
ALIGNED = {"nn": (70, 136, 40), "nt": (136, 45, 40), "tn": (136, 48, 40), "tt": (72, 45, 40)}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prec", PRECS)
def test_cp_async_entries(lib, prec, variant):
    m, n, k = ALIGNED[variant]
    assert check(lib, prec, variant, m, n, k, seed=m + n) == gm.kernel_name(prec, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prec", PRECS)
def test_unaligned_entries(lib, prec, variant):
    name = check(lib, prec, variant, 37, 21, 19, seed=3)
    assert name == gm.kernel_name(prec, variant, aligned=False)


@pytest.mark.parametrize("prec", PRECS)
def test_ring_wraps_under_early_and_late_copies(lib, prec):
    # 5 slabs through 3 stages: every buffer is refilled while others are read
    k = 5 * (64 // gm.ELEM[prec])
    for late in (True, False):
        check(lib, prec, "nt", 20, 24, k, late=late, seed=k)
        check(lib, prec, "tn", 24, 16, k, late=late, seed=k + 1)


def test_empty_k_writes_zeros(lib):
    check(lib, "bf16", "nn", 5, 8, 0)
