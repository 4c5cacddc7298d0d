"""The benchmark entry point (python -m benchmarks): its CPU groups run in
quick mode, write the JSON result file and leave RESULTS.md alone; a wrong
implementation is caught by the check before timing and reported as a failure."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def results_md(tmp_path, monkeypatch):
    """RESULTS.md must not be touched: any write would land in tmp instead."""
    other = tmp_path / "RESULTS-should-not-exist.md"
    monkeypatch.setenv("GPUDL_RESULTS_MD", str(other))
    with open(common.RESULTS_MD, "rb") as f:
        before = f.read()
    yield other
    with open(common.RESULTS_MD, "rb") as f:
        assert f.read() == before, "the benchmark test wrote benchmarks/RESULTS.md"
    assert not other.exists()


def test_quick_cpu_suite_checks_times_and_writes_json(tmp_path, results_md):
    out = tmp_path / "bench.json"
    rc = run.main(["--device", "cpu", "--quick", "--no-record", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == run.SCHEMA
    assert doc["device"]["kind"] == "cpu" and doc["groups"] == list(run.GROUPS)
    assert doc["failures"] == 0 and doc["quick"] and doc["repeat"] == 2
    for key in ("date", "commit", "versions", "results", "sweep", "seconds"):
        assert key in doc
    by_group = {g: [e for e in doc["results"] if e["group"] == g] for g in run.GROUPS}
    assert all(by_group.values()), "every group reports something"
    for e in doc["results"]:
        assert e["status"] in ("ok", "skipped"), e
        if e["status"] == "ok":  # checked, then timed
            assert e["rel_err"] is not None and e["rel_err"] < e["tol"]
            assert e["median_ms"] > 0
    gemm = [e for e in by_group["gemm"] if e["status"] == "ok"]
    assert gemm and "NumPy" in gemm[0]["baselines"]
    assert gemm[0]["baselines"]["NumPy"]["ratio"] > 0 and gemm[0]["gflop_s"] > 0
    relu = [e for e in by_group["memory"] if "relu" in e["case"]]
    assert relu and all(e["status"] == "ok" and "copy" in e["baselines"] for e in relu)
    dense = [e for e in by_group["train"] if e["case"].startswith("dense")]
    assert dense[0]["status"] == "ok" and "NumPy" in dense[0]["baselines"]
    try:
        import torch  # noqa: F401
        assert "torch" in gemm[0]["baselines"]
        assert all(e["status"] == "ok" for e in doc["results"])
    except ImportError:
        pass


def test_wrong_result_is_reported_as_failure_and_not_timed(tmp_path, results_md, monkeypatch):
    from gpudl.backend.cpu import CPUBackend
    right = CPUBackend.matmul

    def wrong(self, a, b, trans_a=False, trans_b=False):
        c = right(self, a, b, trans_a, trans_b)
        c[0, 0] += 1000.0  # one wrong element
        return c
    monkeypatch.setattr(CPUBackend, "matmul", wrong)
    timed = []
    real_time = run.Ctx.time

    def spy(self, fn, repeat=None):
        timed.append(fn)
        return real_time(self, fn, repeat)
    monkeypatch.setattr(run.Ctx, "time", spy)
    out = tmp_path / "bench.json"
    rc = run.main(["--groups", "gemm", "--device", "cpu", "--quick", "--sizes", "32", "48",
                   "--no-record", "--json", str(out)])
    assert rc == 1
    doc = json.loads(out.read_text())
    assert doc["failures"] == 2
    for e in doc["results"]:
        assert e["status"] == "fail" and "tolerance" in e["message"]
        assert e["median_ms"] is None and e["baselines"] == {}
        assert e["rel_err"] > e["tol"]
    assert timed == [], "a failed implementation (or its baselines) was timed"


def test_nan_output_fails_the_check(tmp_path, results_md, monkeypatch):
    from gpudl.backend.cpu import CPUBackend
    monkeypatch.setattr(CPUBackend, "relu", lambda self, x: np.full_like(x, np.nan))
    out = tmp_path / "bench.json"
    assert run.main(["--groups", "memory", "--device", "cpu", "--quick", "--no-record",
                     "--json", str(out)]) == 1
    doc = json.loads(out.read_text())
    failed = [e for e in doc["results"] if e["status"] == "fail"]
    assert [e["case"].split()[:2] for e in failed] == [["fwd", "relu"]]
    assert failed[0]["median_ms"] is None


def test_entry_point_cli_lists_groups_and_rejects_unknown():
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert all(g in res.stdout for g in run.GROUPS)
    res = subprocess.run([sys.executable, "-m", "benchmarks", "--groups", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "unknown group" in res.stderr
