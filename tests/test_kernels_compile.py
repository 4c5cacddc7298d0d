"""Every kernel compiles for Hopper (sm_90) and assembles with no local memory.

numba compiles each kernel in gpudl.kernels.catalog to PTX for cc 9.0 and
ptxas -v reports its registers, shared memory, stack frame and spills. This
catches what the simulator cannot: Python that is not valid CUDA, kernels
that spill registers or keep arrays in local memory, and float32 kernels that
silently compute in float64. No GPU is needed. The simulator replaces the
compiler, so this runs in the normal pytest process only.
"""
import pytest

from gpudl.backend import simulator_enabled

pytestmark = pytest.mark.skipif(simulator_enabled(),
                                reason="NUMBA_ENABLE_CUDASIM is set: numba cannot compile PTX")

from gpudl.kernels import catalog  # noqa: E402

NAMES = [key for key, _, _ in catalog.entries()]


@pytest.fixture(scope="module")
def report(pytestconfig):
    try:
        catalog.find_ptxas()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    rows = {r["name"]: r for r in catalog.ptxas_report(catalog.compile_all(cc=(9, 0)))}
    reports = getattr(pytestconfig, "gpudl_reports", [])
    reports.append(("sm_90 kernels (ptxas -v): registers, smem/stack/spill bytes, f64 ops",
                    catalog.format_report(rows.values())))
    pytestconfig.gpudl_reports = reports
    return rows


def test_every_kernel_is_listed():
    from gpudl.kernels import (conv, conv_implicit, elementwise, loss, matmul, optim, pool,
                               reduce, softmax)
    from gpudl.kernels import augment, batchnorm, concat, dropout, rounding, steps
    listed = {id(k) for _, k, _ in catalog.entries()}
    for mod in (augment, concat, dropout, rounding, steps, batchnorm, conv, conv_implicit,
                elementwise, loss, optim, pool, reduce, softmax):
        for name, obj in vars(mod).items():
            if hasattr(obj, "py_func") and not getattr(obj, "targetoptions", {}).get("device"):
                assert id(obj) in listed, f"{mod.__name__}.{name} is missing from the catalog"
    assert all(id(k) in listed for ks in matmul.KERNELS.values() for k in ks.values())


@pytest.mark.parametrize("name", NAMES)
def test_kernel_sm90(report, name):
    row = report[name]
    assert row["ok"], f"ptxas failed on {name}:\n{row['log']}"
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, row["log"]
    assert row["stack"] == 0, f"{name} uses a {row['stack']}-byte stack frame:\n{row['log']}"
    assert row["registers"] > 0
    # uint32: the bit-level rounding kernels, which must stay integer work
    if ("float32" in name or "uint32" in name) and \
            name.split("[")[0] not in catalog.F64_BY_DESIGN:
        assert row["f64_ops"] == 0, f"{name} has {row['f64_ops']} f64 instructions in its PTX"
    assert row["smem"] <= 48 * 1024  # the static shared-memory limit
