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

try:
    cuda_cpp.nvrtc_version()
    NO_NVRTC = None
except Exception as e:  # ImportError, or a cuda.bindings without its NVRTC library
    NO_NVRTC = f"NVRTC unavailable (install numba-cuda[cu12]): {e}"

try:
    cuda_cpp.find_nvdisasm()
    NO_NVDISASM = None
except FileNotFoundError as e:
    NO_NVDISASM = str(e)

needs_nvrtc = pytest.mark.skipif(NO_NVRTC is not None, reason=NO_NVRTC or "")
needs_nvdisasm = pytest.mark.skipif(NO_NVDISASM is not None, reason=NO_NVDISASM or "")


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
    monkeypatch.setattr(cuda_cpp, "source", lambda name: "__global__ void k() { undeclared_x = 1; }")
    with pytest.raises(cuda_cpp.CompileError, match="undeclared_x"):
        cuda_cpp.compile("broken", target="ptx")
    with pytest.raises(ValueError, match="target"):
        cuda_cpp.compile("smoke", target="fatbin")


@needs_nvrtc
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
