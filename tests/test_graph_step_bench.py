"""benchmarks/graph_step.py on the CPU, tiny shapes: the checks pass before timing,
graph columns are n/a, the gpudl train line is timed and RESULTS.md is left alone."""
import json

import pytest

pytest.importorskip("torch")

from benchmarks import common, graph_step  # noqa: E402


def test_graph_step_cpu_checks_times_and_writes_json(tmp_path, monkeypatch):
    other = tmp_path / "RESULTS-should-not-exist.md"
    monkeypatch.setenv("GPUDL_RESULTS_MD", str(other))
    monkeypatch.setenv("GPUDL_BENCH_NO_RECORD", "1")
    with open(common.RESULTS_MD, "rb") as f:
        before = f.read()
    out = tmp_path / "graph-step.json"
    graph_step.main(["--device", "cpu", "--models", "mlp", "resnet", "--batch", "4",
                     "--size", "8", "--repeat", "1", "--json", str(out),
                     "--train-args", "--model mlp --epochs 1 --limit 50"])
    doc = json.loads(out.read_text())
    assert [r[:2] for r in doc["rows"]] == [["mlp", 4], ["resnet (8x8)", 4]]
    for row, case in zip(doc["rows"], doc["cases"]):
        assert float(row[2]) > 0 and float(row[4]) > 0       # gpudl eager, torch eager
        assert row[3] == row[5] == "n/a"                      # no graphs on a CPU
        assert case["errors"] == [] and case["trainer err"] <= 1e-5
        assert case["grad err f64"] < 1e-3
    assert isinstance(doc["train"]["cpu"], float) and doc["train"]["cuda"] == "n/a"
    with open(common.RESULTS_MD, "rb") as f:
        assert f.read() == before
    assert not other.exists()
