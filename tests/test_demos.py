"""The demos (gpudl demo NAME) run in their quick versions and show the notes' claims."""
import importlib.util
import os

import pytest

import gpudl
from gpudl import demos
from gpudl.cli import main

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def _quiet(*args, **kwargs):
    pass


def _plot_ok(result, tmp_path, name):
    if HAVE_MPL:
        assert result["plot"] == os.path.join(str(tmp_path), name)
        assert os.path.getsize(result["plot"]) > 1000
    else:
        assert result["plot"] is None


def test_perceptron(tmp_path):
    r = demos.run("perceptron", quick=True, seed=0, out_dir=str(tmp_path), print_fn=_quiet)
    assert r["perceptron_nand_accuracy"] == 1.0
    assert r["perceptron_xor_accuracy"] <= 0.75  # no line separates XOR
    assert not r["perceptron_xor_converged"]
    assert r["mlp_xor_accuracy"] == 1.0
    _plot_ok(r, tmp_path, "perceptron.png")


def test_approximation(tmp_path):
    r = demos.run("approximation", quick=True, seed=0, out_dir=str(tmp_path), print_fn=_quiet)
    shallow = r["shallow"]
    assert [s["units"] for s in shallow] == sorted(s["units"] for s in shallow)
    assert shallow[-1]["max_error"] < shallow[0]["max_error"] / 2
    assert shallow[-1]["mean_error"] < shallow[0]["mean_error"] / 2
    assert r["deep"] and all(len(d["widths"]) >= 2 for d in r["deep"])
    _plot_ok(r, tmp_path, "approximation.png")


def test_sgd(tmp_path):
    r = demos.run("sgd", quick=True, seed=0, out_dir=str(tmp_path), print_fn=_quiet)
    v = r["variants"]
    assert len(v) == 7
    for name, rec in v.items():
        assert rec["epoch_loss"][-1] < rec["epoch_loss"][0], name
        assert len(rec["epoch_time"]) == len(rec["epoch_loss"]) == r["epochs"] + 1
        assert rec["epoch_time"] == sorted(rec["epoch_time"]), name
    # every variant started from the same weights
    assert len({round(rec["epoch_loss"][0], 6) for rec in v.values()}) == 1
    # steps per epoch: 1 (full batch), ceil(n / 32), n (online)
    n = r["samples"]
    assert v["full-batch"]["steps"] == r["epochs"]
    assert v["online"]["steps"] == n * r["epochs"]
    # momentum and Nesterov are not worse than plain SGD (here clearly better)
    for mode in ("full-batch", "mini-batch 32"):
        plain = v[mode]["epoch_loss"][-1]
        assert v[f"{mode} + momentum"]["epoch_loss"][-1] <= plain * 1.05
        assert v[f"{mode} + Nesterov"]["epoch_loss"][-1] <= plain * 1.05
    _plot_ok(r, tmp_path, "sgd.png")


def test_vanishing(tmp_path):
    r = demos.run("vanishing", quick=True, seed=0, out_dir=str(tmp_path), print_fn=_quiet)
    nets = r["networks"]
    assert all(len(n["norms"]) == r["depth"] + 1 for n in nets.values())
    sig = nets["sigmoid"]["first_last_ratio"]
    assert sig < 1e-2
    assert nets["residual sigmoid"]["first_last_ratio"] > 10 * sig
    assert nets["relu"]["first_last_ratio"] > 10 * sig
    _plot_ok(r, tmp_path, "vanishing.png")


def test_overfitting(tmp_path):
    r = demos.run("overfitting", quick=True, seed=0, out_dir=str(tmp_path), print_fn=_quiet)
    res = r["results"]
    base = res["baseline (64-256-256-10)"]
    assert base["train_accuracy"] >= 0.99
    assert base["train_accuracy"] - base["test_accuracy"] >= 0.05
    cures = ("early stopping", "L2 weight decay 5e-3", "dropout 0.5")
    assert all(c in res for c in cures)
    assert max(res[c]["test_accuracy"] for c in cures) > base["test_accuracy"]
    _plot_ok(r, tmp_path, "overfitting.png")


def test_registry_lists_every_demo():
    assert set(demos.DEMOS) == {"perceptron", "approximation", "sgd", "vanishing",
                                "overfitting", "transfer"}
    assert {"perceptron", "approximation", "sgd", "vanishing", "overfitting"} <= \
        set(demos.available())
    with pytest.raises(ValueError, match="unknown demo"):
        demos.load("nope")


def test_cli_demo_list(capsys):
    assert main(["demo", "--list"]) == 0
    out = capsys.readouterr().out
    for name in demos.DEMOS:
        assert name in out


def test_cli_demo_perceptron(tmp_path, capsys):
    assert main(["demo", "perceptron", "--quick", "--device", "cpu",
                 "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "perceptron on NAND" in out and "MLP 2-4-1 on XOR" in out
    if HAVE_MPL:
        assert (tmp_path / "perceptron.png").exists()


def test_cli_demo_unknown(capsys):
    assert main(["demo", "nope"]) == 2
    assert "unknown demo" in capsys.readouterr().err
