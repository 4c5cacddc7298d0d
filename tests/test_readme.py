"""The README's ```python samples run as written, in order, in one namespace
(as a reader pasting them into one session would), so they cannot drift from
the code. The tour trains the digits MLP for its 20 epochs: a few seconds."""
import re
from pathlib import Path

import numpy as np
import pytest

import gpudl

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_python_samples_run(tmp_path, monkeypatch, capsys):
    # the interop samples need the test extra's torch and onnxruntime (make test installs them)
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    blocks = _blocks()
    assert len(blocks) >= 3, "the README's python samples were not found"
    monkeypatch.chdir(tmp_path)                              # model.save("digits.npz") lands here
    monkeypatch.setenv("GPUDL_CACHE", str(tmp_path / "cache"))  # the profiler's ceilings
    ns = {}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md python block {i + 1}", "exec"), ns)
    finally:
        gpudl.set_precision("fp32")   # the mixed-precision sample sets a global policy
        gpudl.set_device("cpu")
    out = capsys.readouterr().out
    assert "'accuracy'" in out and "top_5_accuracy" in out
    assert ns["trainer"].evaluate(ns["x_test"], ns["y_test"])["accuracy"] > 0.9
    np.testing.assert_allclose(ns["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert (tmp_path / "digits.npz").exists() and (tmp_path / "trace.json").exists()
    assert "PyTorch round trip" in out and "onnxruntime matches predict: (5, 10)" in out
    assert len(ns["stream_history"]["loss"]) == 1 and ns["stream_history"]["val_loss"][0] > 0
