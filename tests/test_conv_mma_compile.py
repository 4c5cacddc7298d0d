"""kernels/cu/conv_mma.cu (implicit-GEMM convolutions on tensor cores)
compiles for Hopper and uses the instructions it was written for, no GPU
needed: NVRTC for sm_90, ptxas -v per kernel (no spills, no stack, a whole
block's registers fit an SM), nvdisasm's SASS (HMMA of the format, LDSM,
LDGSTS where the kernel uses cp.async and not where it uses plain loads).
"""
import re

import pytest

from gpudl.backend import simulator_enabled

pytestmark = pytest.mark.skipif(simulator_enabled(),
                                reason="NUMBA_ENABLE_CUDASIM is set: compile checks run in the "
                                       "normal pytest process")

from gpudl.kernels import conv_mma as cm  # noqa: E402
from gpudl.kernels import cuda_cpp  # noqa: E402
from gpudl.kernels import gemm_mma as gm  # noqa: E402

from cutools import NO_NVDISASM, NO_NVRTC, NO_PTXAS, needs_nvdisasm, needs_nvrtc, needs_ptxas  # noqa: E402,F401

CASES = [(p, op) for p in gm.ELEM for op in cm.OPS]
_HMMA = {"tf32": "HMMA.1688.F32.TF32", "bf16": "HMMA.16816.F32.BF16", "fp16": "HMMA.16816.F32"}


def _id(case):
    return cm.kernel_name(*case)


@pytest.fixture(scope="module")
def ptxas_rows(pytestconfig):
    rows = cuda_cpp.ptxas_report(cm.compile("ptx"))
    table = [f"{'kernel':26} {'regs':>5} {'dynamic smem':>13} {'stack':>6} {'spill st/ld':>12}"]
    for case in CASES:
        r = rows.get(cm.kernel_name(*case), {})
        spill = f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')}"
        table.append(f"{cm.kernel_name(*case):26} {r.get('registers', '?'):>5} "
                     f"{cm.smem_bytes(*case):>13} {r.get('stack', '?'):>6} {spill:>12}")
    reports = getattr(pytestconfig, "gpudl_reports", [])
    reports.append(("conv_mma.cu for sm_90 (ptxas -v)", "\n".join(table)))
    pytestconfig.gpudl_reports = reports
    return rows


@pytest.fixture(scope="module")
def sass():
    return cuda_cpp.sass_by_kernel(cm.compile("cubin"))


def test_sources_ship_with_the_package():
    assert '#include "gemm_mma.cu"' in cuda_cpp.source("conv_mma")
    assert len(cm.names()) == len(set(cm.names())) == 12


@needs_nvrtc
@needs_ptxas
def test_kernel_list(ptxas_rows):
    # gemm_mma.cu's own entries stay out (GEMM_MMA_NO_ENTRIES)
    assert sorted(ptxas_rows) == sorted(cm.names())


@needs_nvrtc
@needs_ptxas
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_ptxas(ptxas_rows, case):
    row = ptxas_rows[cm.kernel_name(*case)]
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row["log"]
    assert row["stack"] == 0, row["log"]
    # a whole block's registers fit one SM's 64K; two blocks for the weight
    # gradient, which asks for them (__launch_bounds__(THREADS, 2))
    blocks = 2 if case[1] == "bwd_weight" else 1
    assert 0 < row["registers"] * gm.THREADS * blocks <= 65536, row["log"]
    assert row["smem"] == 0, "the tiles live in dynamic shared memory, sized by the launcher"
    assert cm.smem_bytes(*case) <= gm.SMEM_LIMIT


@needs_nvrtc
@needs_nvdisasm
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sass(sass, case):
    prec, op = case
    text = sass[cm.kernel_name(*case)]
    ops = cuda_cpp.opcodes(text)
    assert _HMMA[prec] + " " in text, f"no {_HMMA[prec]} (tensor cores)"
    assert "LDL" not in ops and "STL" not in ops, "local memory in use"
    copies = set(re.findall(r"LDGSTS(?:\.\w+)*", text))
    if prec == "tf32":
        # every gathered element is a 4-byte cp.async (zero-filled at the edges)
        assert "LDGSTS.E.ZFILL" in copies, copies
    else:
        # 16-bit gathers are plain loads, stored to shared memory by STS
        assert "LDG" in ops and "STS" in ops
    # 16-byte chunks of the weight: the aligned forward entry only
    assert ("LDGSTS.E.BYPASS.128.ZFILL" in copies) == (op == "fwd"), copies
    if prec != "tf32" and op != "fwd":
        assert copies == set(), "16-bit gathers take no cp.async"
    # A is K-major in every op (ldmatrix M88); B MN-major 16-bit in fwd and
    # bwd_input (ldmatrix .trans), K-major in bwd_weight
    assert "LDSM.16.M88.4 " in text
    assert ("LDSM.16.MT88.4 " in text) == (prec != "tf32" and op != "bwd_weight")
