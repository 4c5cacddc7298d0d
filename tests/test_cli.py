"""The main job (`gpudl train`) and `gpudl info`, run in-process."""
import json

import pytest

from gpudl.cli import main


@pytest.mark.slow
def test_default_training_run_reaches_98_percent(tmp_path, capsys):
    """The default network (resnet) on the digits, as `make train` runs it."""
    metrics = tmp_path / "m.json"
    model = tmp_path / "model.npz"
    assert main(["train", "--device", "cpu", "--quiet", "--metrics-out", str(metrics),
                 "--save", str(model)]) == 0
    result = json.loads(metrics.read_text())
    assert result["test_accuracy"] >= 0.98, result
    assert result["model"] == "resnet"
    assert result["device"] == "cpu"
    out = capsys.readouterr().out
    assert "test accuracy" in out and "Total params" in out and "epoch 10/10:" in out
    import gpudl
    gpudl.set_device("cpu")
    loaded = gpudl.load(model)
    from gpudl.zoo import resnet
    assert loaded.num_params() == resnet((1, 8, 8), 10).num_params()
    assert loaded.state_arrays().keys() == resnet((1, 8, 8), 10).state_arrays().keys()


def test_info_names_device_and_versions(capsys):
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("device: cpu", "numpy:", "numba:", "numba-cuda:"):
        assert word in out


def test_unknown_device_is_a_clean_error(capsys):
    assert main(["info", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_bad_flag_values_are_rejected(capsys):
    assert main(["train", "--lr", "-1"]) == 2
    assert "gpudl train: error: --lr: must be positive, got -1" in capsys.readouterr().err


def test_train_the_cnn_from_the_command_line(tmp_path):
    metrics = tmp_path / "m.json"
    # 330 samples: 297 to train on and 33 held out for validation (--val-split 0.1);
    # 3 epochs give 70-80% test accuracy over seeds 0-2, 2 epochs were borderline
    assert main(["train", "--model", "cnn", "--device", "cpu", "--epochs", "3", "--limit", "330",
                 "--quiet", "--save", "", "--metrics-out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert result["model"] == "cnn" and result["test_accuracy"] > 0.5


def test_training_toolkit_flags_and_resume(tmp_path, capsys):
    ckpt, hist = tmp_path / "run.ckpt", tmp_path / "h.csv"
    common = ["train", "--model", "cnn", "--device", "cpu", "--limit", "120", "--quiet",
              "--save", "", "--optimizer", "adamw", "--lr", "0.003", "--weight-decay", "0.01",
              "--clip-norm", "5", "--augment", "1", "--checkpoint", str(ckpt),
              "--early-stopping", "3"]
    assert main(common + ["--epochs", "2", "--history", str(hist)]) == 0
    assert len(hist.read_text().splitlines()) == 3
    capsys.readouterr()
    assert main(common + ["--epochs", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    # --quiet prints each epoch as it ends: the resumed run prints epoch 3 alone
    assert "epoch 3/3:" in out and "epoch 1/" not in out and "epoch 2/" not in out
    from gpudl.checkpoint import read_checkpoint
    meta, _ = read_checkpoint(ckpt)
    assert meta["epoch"] == 3 and meta["optimizer"]["class"] == "AdamW"


def test_resume_without_checkpoint_is_refused(capsys):
    assert main(["train", "--device", "cpu", "--resume", "--epochs", "1", "--limit", "50"]) == 2
    assert "--resume: needs --checkpoint" in capsys.readouterr().err
