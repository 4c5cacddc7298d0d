"""benchmarks/streaming.py in quick mode: the streamed runs are checked to train
on the in-memory run's batches before their times count, every rate is
positive, and RESULTS.md is left alone."""
import json

from benchmarks import common, streaming


def test_streaming_benchmark_checks_times_and_writes_json(tmp_path, monkeypatch):
    other = tmp_path / "RESULTS-should-not-exist.md"
    monkeypatch.setenv("GPUDL_RESULTS_MD", str(other))
    with open(common.RESULTS_MD, "rb") as f:
        before = f.read()
    out = tmp_path / "stream.json"
    assert streaming.main(["--quick", "--samples", "128", "--models", "mlp",
                           "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["checks"] == {"mlp memmap": True, "mlp idx": True}
    (row,) = doc["rows"]
    assert row[0] == "mlp" and all(float(v.replace(",", "")) > 0 for v in row[2:])
    assert [r[0] for r in doc["loader_rows"]] == ["memmap (flat)", "idx (flat)"]
    with open(common.RESULTS_MD, "rb") as f:
        assert f.read() == before
    assert not other.exists()
