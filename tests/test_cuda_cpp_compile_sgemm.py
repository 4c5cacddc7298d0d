"""The CUDA C++ SGEMM (kernels/cu/sgemm.cu) compiles for Hopper into the code
it was written as, and its launcher picks the right entry; no GPU needed.

NVRTC builds both shapes of the kernel (two blocks per SM, the default, and
one); ptxas -v must show no spills and no stack for all eight entries, and
the SASS main loop (the loop holding the barrier) must carry the 128-bit
global loads (LDG.E.128) of the vector entries, the 128-bit shared reads
(LDS.128) of every entry, and the FFMAs. Correctness: the source run on the
CPU (tests/test_sgemm_host.py), the numba twin in the simulator
(tests/cuda/test_matmul_warp.py) and, on a GPU, tests/cuda/test_sgemm_cpp.py.
"""
import re

import pytest

from gpudl.backend import simulator_enabled

pytestmark = pytest.mark.skipif(simulator_enabled(),
                                reason="NUMBA_ENABLE_CUDASIM is set: compile checks run in the "
                                       "normal pytest process")

from gpudl.kernels import catalog, cuda_cpp  # noqa: E402
from gpudl.kernels import sgemm as sg  # noqa: E402

from cutools import NO_NVDISASM, NO_NVRTC, needs_nvdisasm, needs_nvrtc  # noqa: E402,F401

ENTRIES = [f"sgemm_{v}{s}" for v in sg.VARIANTS for s in ("", "_scalar")]
SHAPES = sorted(sg.OPTIONS)  # blocks per SM
SMEM = 2 * 2 * 8 * 132 * 4  # two buffers of As and Bs, 8 x 132 floats each


def test_entry_vector_or_scalar():
    assert sg.entry("nn", (128, 64), (64, 256), 0, 256) == "sgemm_nn"
    # A row of 19 floats: groups of 4 straddle rows, so element by element.
    assert sg.entry("nn", (130, 19), (19, 132), 0, 0) == "sgemm_nn_scalar"
    assert sg.entry("tt", (20, 8), (8, 21), 0, 0) == "sgemm_tt_scalar"
    # Rows fine, but b starts 4 bytes past a 16-byte boundary (a view).
    assert sg.entry("nt", (8, 16), (8, 16), 0, 4) == "sgemm_nt_scalar"
    with pytest.raises(ValueError, match="variant"):
        sg.entry("xn", (4, 4), (4, 4), 0, 0)


def test_dims_and_grid():
    assert sg.dims((19, 130), (129, 19), (130, 129), True, True) == (130, 129, 19)
    assert sg.dims((130, 19), (19, 129), (130, 129), False, False) == (130, 129, 19)
    with pytest.raises(ValueError, match=r"op\(a\) is \(130, 19\)"):
        sg.dims((130, 19), (18, 129), (130, 129), False, False)
    with pytest.raises(ValueError, match="int"):
        sg.dims((2**31, 4), (4, 4), (2**31, 4), False, False)
    assert sg.launch_config(130, 129) == ((2, 2, 1), (256, 1, 1))


@pytest.fixture(scope="module", params=SHAPES, ids=lambda b: f"{b}_blocks_per_sm")
def built(request):
    if NO_NVRTC:
        pytest.skip(NO_NVRTC)
    opts = sg.OPTIONS[request.param]
    ptx = cuda_cpp.compile(sg.MODULE, target="ptx", options=opts)
    return request.param, ptx, opts


@needs_nvrtc
def test_ptxas_no_spills_no_stack(built):
    blocks, ptx, _ = built
    assert ".target sm_90" in ptx
    assert not catalog._F64.findall(ptx), "f64 instructions in a float32 kernel"
    rows = cuda_cpp.ptxas_report(ptx)
    assert sorted(rows) == sorted(ENTRIES)
    for name, r in rows.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, r["log"]
        assert r["stack"] == 0, f"{name}: {r['stack']}-byte stack frame\n{r['log']}"
        assert r["smem"] == SMEM, r["log"]
        # Two 256-thread blocks per SM fit in 64K registers only at <= 128.
        assert 64 <= r["registers"] <= 65536 // (256 * blocks), r["log"]


def main_loop(listing):
    """The SASS of the longest backward-branch loop that holds a barrier: the
    loop over k-slabs (the k-steps inside it may be a loop of their own)."""
    lines = listing.splitlines()
    where = {m.group(1): i for i, line in enumerate(lines)
             if (m := re.match(r"\s*(\.L_x_\d+):", line))}
    loops = []
    for j, line in enumerate(lines):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if m and where.get(m.group(1), j + 1) < j:
            body = "\n".join(lines[where[m.group(1)]:j + 1])
            if "BAR.SYNC" in body:
                loops.append(body)
    assert loops, "no loop with a barrier in the SASS"
    return max(loops, key=len)


@needs_nvrtc
@needs_nvdisasm
def test_sass_main_loop(built):
    blocks, _, opts = built
    by_kernel = cuda_cpp.sass_by_kernel(cuda_cpp.compile(sg.MODULE, target="cubin",
                                                         options=opts))
    assert sorted(by_kernel) == sorted(ENTRIES)
    for name, listing in by_kernel.items():
        loop = main_loop(listing)
        ldg128 = len(re.findall(r"\bLDG\.E\.128\b", loop))
        ldg = len(re.findall(r"\bLDG\.E\b", loop))
        if name.endswith("_scalar"):
            # the scalar path really is scalar: 4 + 4 guarded loads per slab
            assert ldg128 == 0 and ldg >= 8, (name, ldg128, ldg)
        else:
            assert ldg128 == 2, f"{name}: {ldg128} LDG.E.128 in the main loop (one per operand)"
        assert len(re.findall(r"\bLDS\.128\b", loop)) >= 4, name
        # 64 FMAs per k-step, at least the unrolled steps of one iteration
        assert len(re.findall(r"\bFFMA\b", loop)) >= 64 * (2 if blocks == 2 else 8), name
