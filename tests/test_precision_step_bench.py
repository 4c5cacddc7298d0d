"""benchmarks/precision_step.py on the CPU, tiny shapes: every case is checked before it
is timed, the JSON has both tables and their per-case details, GPU-only columns say
n/a, --budget skips what it cannot start, --device cuda without a GPU refuses, and
RESULTS.md is left alone. Nothing timed is judged."""
import json
import sys

import pytest

pytest.importorskip("torch")

from benchmarks import common, precision_conv, precision_step  # noqa: E402

TINY = ["--device", "cpu", "--size", "8", "--conv-batch", "2", "--step-batch", "2",
        "--precisions", "fp32", "bf16", "--repeat", "1"]


@pytest.fixture
def no_record(tmp_path, monkeypatch):
    other = tmp_path / "RESULTS-should-not-exist.md"
    monkeypatch.setenv("GPUDL_RESULTS_MD", str(other))
    monkeypatch.setenv("GPUDL_BENCH_NO_RECORD", "1")
    with open(common.RESULTS_MD, "rb") as f:
        before = f.read()
    yield
    with open(common.RESULTS_MD, "rb") as f:
        assert f.read() == before
    assert not other.exists()


def test_precision_step_cpu_checks_times_and_writes_json(tmp_path, no_record):
    out = tmp_path / "precision-step.json"
    precision_step.main(TINY + ["--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["schema"] == "gpudl-precision-step/1" and doc["device_kind"] == "cpu"
    assert set(doc["tolerances"]) >= {"op", "torch op", "step"}

    conv = doc["conv"]
    assert conv["header"] == precision_conv.HEADER
    layers = [c[0] for c in precision_conv.resnet_convs(8)]
    assert layers[0].startswith("stem") and len(layers) == 6
    assert [(c["layer"], c["prec"]) for c in conv["cases"]] == \
        [(l, p) for l in layers for p in ("fp32", "bf16")]
    # the stem has no input-gradient row; every other layer fwd, dx, dw
    assert len(conv["rows"]) == 2 * (2 + 3 * (len(layers) - 1))
    for case in conv["cases"]:
        assert case["status"] == "ok"
        assert ("skipped" in case["ops"]["dx"]) == case["layer"].startswith("stem")
        for op in (o for o in case["ops"].values() if "skipped" not in o):
            assert op["gpudl err"] <= precision_conv.OP_TOL
            assert op["torch err"] <= precision_conv.torch_op_tol(
                precision_conv.FORMATS[case["prec"]])
    for row in conv["rows"]:
        assert row[5] == "n/a"                     # tensor cores: GPU only
        assert float(row[4]) > 0 and float(row[6]) > 0

    step = doc["step"]
    assert [r[:3] for r in step["rows"]] == [[2, "fp32", "n/a"], [2, "bf16-mixed", "n/a"]]
    for row, case in zip(step["rows"], step["cases"]):
        assert case["status"] == "ok" and float(row[3]) > 0 and float(row[4]) > 0
        r = case["modes"]["gpudl"]
        assert r["err"] <= r["tol"] and r["tc calls"] == 0
        assert case["torch norm err f64"] <= case["torch sanity bound"]
    assert step["cases"][0]["modes"]["gpudl"]["err f64"] < 1e-3   # fp32 against float64


def test_budget_skips_cases_and_tf32_says_why(tmp_path, no_record):
    out = tmp_path / "skipped.json"
    precision_step.main(TINY + ["--budget", "0", "--json", str(out)])
    doc = json.loads(out.read_text())
    for part in ("conv", "step"):
        assert doc[part]["cases"] and all(c["status"] == "skipped (time)"
                                          for c in doc[part]["cases"])
        assert all(r[2] == "skipped (time)" for r in doc[part]["rows"])
    precision_step.main(["--device", "cpu", "--size", "8", "--step-batch", "2", "--repeat", "1",
                         "--parts", "step", "--step-policies", "tf32", "--json", str(out)])
    doc = json.loads(out.read_text())
    assert doc["conv"] is None
    assert doc["step"]["rows"][0][4] == "no TF32 on a CPU"


@pytest.mark.parametrize("how", ["no cupy", "simulator"])
def test_cuda_without_a_gpu_refuses(monkeypatch, capsys, how):
    if how == "no cupy":
        monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
        monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    else:
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(SystemExit) as e:
        precision_step.main(["--device", "cuda"])
    assert e.value.code == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err


def test_tensor_core_launches_are_counted_at_the_launchers(monkeypatch):
    """The TC columns rest on this count: launches through the module attribute the
    backend calls (cuda_mma's gm.launch) are seen, and the launcher is put back."""
    gm = pytest.importorskip("gpudl.kernels.gemm_mma")
    from gpudl.backend import cuda_mma
    monkeypatch.setattr(gm, "launch", lambda *a, **k: "launched")
    with precision_conv.count_tc_calls(True) as calls:
        assert cuda_mma.gm.launch(1, 2, fmt="bf16") == "launched"
        cuda_mma.gm.launch()
    assert calls == [2] and gm.launch(0) == "launched"
    assert gm.launch.__name__ == "<lambda>"      # restored, not left wrapped
    with precision_conv.count_tc_calls(False) as calls:  # off a GPU nothing is patched
        gm.launch()
    assert calls == [0]
