"""The CUDA C++ kernels (kernels/cu/*.cu) compile for Hopper and use the
instructions they were written for, with no GPU present.

NVRTC compiles each source for sm_90; ptxas -v reports registers, shared
memory, stack and spills per kernel; nvdisasm's SASS shows whether the
tensor-core (HMMA), ldmatrix (LDSM) and cp.async (LDGSTS) instructions made
it into the machine code. The simulator replaces numba's compiler but not
NVRTC; these tests still run in the normal pytest process only, next to
test_kernels_compile.
"""
import pytest

from gpudl.backend import simulator_enabled

pytestmark = pytest.mark.skipif(simulator_enabled(),
                                reason="NUMBA_ENABLE_CUDASIM is set: compile checks run in the "
                                       "normal pytest process")

from gpudl.kernels import cuda_cpp  # noqa: E402

from cutools import NO_NVDISASM, NO_NVRTC, NO_PTXAS, needs_nvdisasm, needs_nvrtc, needs_ptxas  # noqa: E402,F401


def test_sources_ship_with_the_package():
    # importlib.resources reads them from gpudl.kernels, installed or editable.
    assert "mma.sync.aligned.m16n8k8" in cuda_cpp.source("smoke")
    assert cuda_cpp.source("smoke.cu") == cuda_cpp.source("smoke")
    with pytest.raises(FileNotFoundError, match="no_such_kernel"):
        cuda_cpp.source("no_such_kernel")


def test_split_ptxas_log():
    log = ("ptxas info    : Compiling entry function 'k1' for 'sm_90'\n"
           "ptxas info    : Used 40 registers, 1024 bytes smem\n"
           "ptxas info    : Compiling entry function 'k2' for 'sm_90'\n"
           "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers\n")
    parts = cuda_cpp.split_ptxas_log(log)
    assert list(parts) == ["k1", "k2"]
    assert "40 registers" in parts["k1"] and "255" not in parts["k1"]
    assert "255 registers" in parts["k2"] and "40 registers" not in parts["k2"]


@needs_nvrtc
def test_compile_error_carries_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_cpp, "source",
                        lambda name: "__global__ void k() { undeclared_x = 1; }")
    with pytest.raises(cuda_cpp.CompileError, match="undeclared_x"):
        cuda_cpp.compile("broken", target="ptx")
    with pytest.raises(ValueError, match="target"):
        cuda_cpp.compile("smoke", target="fatbin")


@needs_nvrtc
@needs_ptxas
def test_smoke_ptx_and_ptxas():
    ptx = cuda_cpp.compile("smoke", target="ptx")
    assert ".target sm_90" in ptx and "mma.sync.aligned.m16n8k8" in ptx
    assert cuda_cpp.compile("smoke", target="ptx") is ptx  # cached
    rows = cuda_cpp.ptxas_report(ptx)
    row = rows["smoke_mma_tf32"]
    assert 0 < row["registers"] <= 255
    assert row["stack"] == 0 and row["spill_stores"] == 0 and row["spill_loads"] == 0, row["log"]


@needs_nvrtc
@needs_nvdisasm
def test_smoke_sass_has_tensor_core_op():
    cubin = cuda_cpp.compile("smoke", target="cubin")
    assert cubin[:4] == b"\x7fELF"
    by_kernel = cuda_cpp.sass_by_kernel(cubin)
    assert list(by_kernel) == ["smoke_mma_tf32"]
    ops = cuda_cpp.opcodes(by_kernel["smoke_mma_tf32"])
    assert "HMMA" in ops and "EXIT" in ops
    assert "LDSM" not in ops  # the smoke kernel reads registers: the opcode scan is not vacuous


# ---- kernels/cu/gemm_mma.cu: the tensor-core GEMM ----------------------------------
from gpudl.kernels import gemm_mma  # noqa: E402

GEMM_NAMES = gemm_mma.names()
_HMMA = {"tf32": "HMMA.1688.F32.TF32", "bf16": "HMMA.16816.F32.BF16", "fp16": "HMMA.16816.F32"}


def _gemm_cases():
    return [(p, v, al) for p in gemm_mma.ELEM for v in gemm_mma.VARIANTS for al in (True, False)]


def _case_id(case):
    return gemm_mma.kernel_name(*case)


@pytest.fixture(scope="module")
def gemm_ptxas(pytestconfig):
    rows = cuda_cpp.ptxas_report(gemm_mma.compile("ptx"))
    table = [f"{'kernel':24} {'regs':>5} {'static smem':>12} {'dynamic smem':>13} {'stack':>6} "
             f"{'spill st/ld':>12}"]
    for p, v, al in _gemm_cases():
        r = rows.get(gemm_mma.kernel_name(p, v, al), {})
        spill = f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')}"
        table.append(f"{gemm_mma.kernel_name(p, v, al):24} {r.get('registers', '?'):>5} "
                     f"{r.get('smem', '?'):>12} {gemm_mma.smem_bytes(p, v):>13} "
                     f"{r.get('stack', '?'):>6} {spill:>12}")
    reports = getattr(pytestconfig, "gpudl_reports", [])
    reports.append(("gemm_mma.cu for sm_90 (ptxas -v; dynamic smem from the launcher)",
                    "\n".join(table)))
    pytestconfig.gpudl_reports = reports
    return rows


@pytest.fixture(scope="module")
def gemm_sass():
    return cuda_cpp.sass_by_kernel(gemm_mma.compile("cubin"))


@needs_nvrtc
def test_gemm_needs_the_launchers_tiling():
    # Compiled without gemm_mma's -D options it must refuse, not guess a tiling.
    with pytest.raises(cuda_cpp.CompileError, match="passes the tiling as -D options"):
        cuda_cpp.compile("gemm_mma", target="ptx")


@needs_nvrtc
@needs_ptxas
def test_gemm_kernel_list(gemm_ptxas):
    assert sorted(gemm_ptxas) == sorted(GEMM_NAMES)
    assert len(GEMM_NAMES) == 24


@needs_nvrtc
@needs_ptxas
@pytest.mark.parametrize("case", _gemm_cases(), ids=_case_id)
def test_gemm_ptxas(gemm_ptxas, case):
    prec, variant, _ = case
    row = gemm_ptxas[gemm_mma.kernel_name(*case)]
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row["log"]
    assert row["stack"] == 0, row["log"]
    # __launch_bounds__(THREADS): a whole block's registers fit one SM's 64K
    assert 0 < row["registers"] * gemm_mma.THREADS <= 65536, row["log"]
    assert row["smem"] == 0, "the tiles live in dynamic shared memory, sized by the launcher"
    assert gemm_mma.smem_bytes(prec, variant) <= gemm_mma.SMEM_LIMIT


@needs_nvrtc
@needs_nvdisasm
@pytest.mark.parametrize("case", _gemm_cases(), ids=_case_id)
def test_gemm_sass(gemm_sass, case):
    prec, variant, aligned = case
    text = gemm_sass[gemm_mma.kernel_name(*case)]
    ops = cuda_cpp.opcodes(text)
    assert _HMMA[prec] + " " in text, f"no {_HMMA[prec]} (tensor cores)"
    # cp.async in the aligned kernels only; the _unaligned ones load element by element
    assert ("LDGSTS" in ops) == aligned
    assert "LDL" not in ops and "STL" not in ops, "local memory in use"
    # ldmatrix where an operand allows it: K-major slabs without .trans
    # (M88), MN-major 16-bit slabs with .trans (MT88). TF32 MN-major slabs
    # are read with 32-bit LDS (.trans would split each float), so
    # gemm_tf32_tn has no ldmatrix at all.
    ta, tb = gemm_mma.VARIANTS[variant]
    k_major = (not ta) or tb
    mn_major_16 = gemm_mma.ELEM[prec] == 2 and (ta or not tb)
    assert ("LDSM.16.M88.4 " in text) == k_major
    assert ("LDSM.16.MT88.4 " in text) == mn_major_16
