"""`gpudl train`'s flag checks (all before any data loads), per-optimizer
defaults, the data set's class count, resuming a finished run, and the
train / validation / test discipline (no test-set leakage)."""
import json
import os

import numpy as np
import pytest

from gpudl import cli_train
from gpudl.cli import main
from gpudl.data import load_digits


@pytest.fixture
def no_data(monkeypatch):
    """Any data load fails the test: the checks must come first."""
    def refuse(*a, **k):
        raise AssertionError("data was loaded before the flags were checked")
    monkeypatch.setattr(cli_train, "_load_data", refuse)


def _error(capsys, argv):
    assert main(["train", "--device", "cpu"] + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    return err.splitlines()[0]


@pytest.mark.parametrize("argv, flag, words", [
    (["--lr", "nan"], "--lr", "finite"),
    (["--lr", "inf"], "--lr", "finite"),
    (["--lr", "0"], "--lr", "positive"),
    (["--momentum", "1.5"], "--momentum", "< 1"),
    (["--momentum", "1"], "--momentum", "< 1"),
    (["--momentum", "-0.1"], "--momentum", ">= 0"),
    (["--weight-decay", "-1"], "--weight-decay", ">= 0"),
    (["--weight-decay", "nan"], "--weight-decay", "finite"),
    (["--clip-norm", "inf"], "--clip-norm", "finite"),
    (["--augment", "-1"], "--augment", ">= 0"),
    (["--augment", "8"], "--augment", "8x8"),            # digits are 8x8 for resnet
    (["--model", "lenet", "--augment", "32"], "--augment", "32x32"),  # upscaled to 32x32
    (["--val-split", "1"], "--val-split", "< 1"),
    (["--seed", "-1"], "--seed", ">= 0"),
    (["--epochs", "2.5"], "--epochs", "integer"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum", "sgd only"),
    (["--optimizer", "rmsprop", "--nesterov"], "--nesterov", "sgd only"),
    (["--optimizer", "adagrad", "--momentum", "0"], "--momentum", "sgd only"),
    (["--momentum", "0", "--nesterov"], "--nesterov", "momentum > 0"),
    (["--sync-bn"], "--sync-bn", "--distributed"),
    (["--hidden", "32"], "--hidden", "mlp only"),
    (["--data-dir", "/tmp"], "--data-dir", "digits"),
    (["--model", "mlp", "--augment", "1"], "--augment", "image model"),
    (["--val-split", "0", "--early-stopping", "2"], "--early-stopping", "--val-split"),
    (["--resume"], "--resume", "--checkpoint"),
])
def test_bad_values_and_combinations_name_the_flag(argv, flag, words, no_data, capsys):
    line = _error(capsys, argv)
    assert line.startswith(f"gpudl train: error: {flag}: ") and words in line, line


def test_paths_that_cannot_be_written_are_refused(tmp_path, no_data, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for flag in ("--save", "--metrics-out", "--history", "--checkpoint"):
        line = _error(capsys, [flag, str(tmp_path)])           # a folder
        assert line.startswith(f"gpudl train: error: {flag}: ") and "is a folder" in line
        line = _error(capsys, [flag, str(a_file / "sub" / "x")])  # below a file
        assert "is a file, not a folder" in line, line
    line = _error(capsys, ["--checkpoint", str(tmp_path / "ck-{step}.npz")])
    assert line.startswith("gpudl train: error: --checkpoint: ") and "{epoch}" in line
    line = _error(capsys, ["--checkpoint", str(tmp_path / "none.npz"), "--resume"])
    assert "--resume: no checkpoint at" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_refused(tmp_path, no_data, capsys):
    tmp_path.chmod(0o500)
    try:
        line = _error(capsys, ["--metrics-out", str(tmp_path / "m.json")])
    finally:
        tmp_path.chmod(0o700)
    assert "no write permission" in line


def _run(tmp_path, capsys, argv):
    metrics = tmp_path / "m.json"
    assert main(["train", "--device", "cpu", "--model", "mlp", "--epochs", "1", "--limit", "100",
                 "--quiet", "--save", "", "--metrics-out", str(metrics)] + argv) == 0
    return capsys.readouterr().out, json.loads(metrics.read_text())


@pytest.mark.parametrize("opt, lr", [("adam", 1e-3), ("adamw", 1e-3), ("rmsprop", 1e-2),
                                     ("adagrad", 1e-2), ("sgd", 0.05)])
def test_learning_rate_defaults_per_optimizer(opt, lr, tmp_path, capsys):
    out, metrics = _run(tmp_path, capsys, ["--optimizer", opt])
    assert metrics["lr"] == lr
    # the run header: optimizer, lr, batch size, epochs, precision and device
    wd = ", weight decay 0.01" if opt == "adamw" else ""   # AdamW's own default decay
    assert metrics["weight_decay"] == (0.01 if opt == "adamw" else 0.0)
    assert f"optimizer: {opt}, lr {lr:g}, batch size 32, 1 epochs{wd}; precision: fp32; " \
           f"device: cpu" in out


def test_class_count_is_the_data_sets_not_the_labels_seen(tmp_path, capsys, monkeypatch):
    (xtr, ytr), (xte, yte) = load_digits(flatten=True)
    keep_tr, keep_te = ytr < 5, yte < 5   # only 5 of the 10 digits present
    monkeypatch.setattr(cli_train, "_load_data",
                        lambda args, images: ((xtr[keep_tr], ytr[keep_tr]),
                                              (xte[keep_te], yte[keep_te])))
    model = tmp_path / "m.npz"
    _run(tmp_path, capsys, ["--save", str(model)])
    import gpudl
    assert gpudl.load(model, device="cpu").output_shape((64,)) == (10,)


def test_labels_outside_the_data_set_are_an_error(capsys, monkeypatch):
    (xtr, ytr), test = load_digits(flatten=True)
    ytr = ytr.copy()
    ytr[7] = 255   # a corrupt label file
    monkeypatch.setattr(cli_train, "_load_data", lambda args, images: ((xtr, ytr), test))
    assert main(["train", "--device", "cpu", "--model", "mlp", "--save", ""]) == 2
    err = capsys.readouterr().err
    assert "10 classes 0-9" in err and "255 at index 7" in err and "Traceback" not in err


def test_resume_of_a_finished_run_does_nothing(tmp_path, capsys):
    ckpt, model = tmp_path / "ck.npz", tmp_path / "model.npz"
    common = ["train", "--device", "cpu", "--model", "mlp", "--limit", "100", "--quiet",
              "--checkpoint", str(ckpt)]
    assert main(common + ["--epochs", "2", "--save", ""]) == 0
    before = ckpt.read_bytes()
    capsys.readouterr()
    assert main(common + ["--epochs", "2", "--resume", "--save", str(model)]) == 0
    out = capsys.readouterr().out
    assert "already holds 2 epochs (--epochs 2): nothing to do" in out
    assert len(out.splitlines()) == 1   # no header, no history reprinted, no training
    assert not model.exists() and ckpt.read_bytes() == before


def test_validation_split_keeps_the_test_set_out_of_training(tmp_path, capsys, monkeypatch):
    import gpudl
    seen = {"fit": [], "evaluate": []}
    fit, evaluate = gpudl.Trainer.fit, gpudl.Trainer.evaluate

    def spy_fit(self, x, y, **kw):
        seen["fit"].append((np.asarray(x), kw["validation_data"]))
        return fit(self, x, y, **kw)

    def spy_evaluate(self, x, y, **kw):
        seen["evaluate"].append(np.asarray(x))
        return evaluate(self, x, y, **kw)
    monkeypatch.setattr(gpudl.Trainer, "fit", spy_fit)
    monkeypatch.setattr(gpudl.Trainer, "evaluate", spy_evaluate)
    out, metrics = _run(tmp_path, capsys, ["--epochs", "3", "--early-stopping", "5"])
    (xtr, _), (xte, _) = load_digits(flatten=True)
    (x_fit, (x_val, _)), = seen["fit"]
    assert len(x_fit) == 90 and len(x_val) == 10   # --limit 100, --val-split 0.1
    rows = {r.tobytes() for r in xtr[:100]}
    assert all(r.tobytes() in rows for r in np.concatenate([x_fit, x_val]))
    assert not {r.tobytes() for r in x_fit} & {r.tobytes() for r in x_val}
    # the test set: evaluated once, after training, and only there
    assert len(seen["evaluate"]) == 1 and np.array_equal(seen["evaluate"][0], xte)
    assert f"90 train / 10 validation / {len(xte)} test samples" in out
    for key in ("test_loss", "test_accuracy", "val_loss", "val_accuracy", "best_epoch"):
        assert key in metrics, metrics
    assert "test accuracy" in out and "early stopping:" in out


def test_early_stopping_says_where_it_stopped_and_what_it_restored(capsys):
    from gpudl.callbacks import EarlyStopping
    stopper = EarlyStopping(patience=2, restore_best_weights=True)
    stopper.stopped_epoch, stopper.best_epoch, stopper.best = 7, 4, 0.25
    stopper.best_weights = {}
    lines = []
    cli_train._say_early_stopping(lines.append, stopper, 7)
    assert lines == ["early stopping: stopped after epoch 7 (val_loss had not improved "
                     "for 3 epochs)",
                     "early stopping: restored the weights of epoch 4 (best val_loss 0.2500)"]
    stopper.stopped_epoch, stopper.best_epoch = 0, 5
    lines.clear()
    cli_train._say_early_stopping(lines.append, stopper, 5)   # ran to the end, last was best
    assert lines == ["early stopping: kept the last epoch's weights (epoch 5, "
                     "best val_loss 0.2500)"]


def test_a_split_that_leaves_no_validation_samples_is_refused(capsys):
    line = _error(capsys, ["--model", "mlp", "--limit", "4", "--save", ""])
    assert line.startswith("gpudl train: error: --val-split: ") and "no validation" in line


def test_a_diverged_run_is_one_line(capsys):
    assert main(["train", "--device", "cpu", "--model", "mlp", "--limit", "200", "--epochs",
                 "3", "--lr", "1e6", "--quiet", "--save", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpudl train: error: the loss ") and "learning rate" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _checked(argv):
    from gpudl.cli import make_parser
    args = make_parser().parse_args(["train"] + argv)
    cli_train.check_train_args(args)
    return args


def test_lenet_defaults_are_its_recipe_and_flags_override_it(tmp_path):
    a = _checked(["--model", "lenet", "--save", ""])
    assert (a.epochs, a.lr, a.augment, a.schedule, a.weight_decay) == (25, 0.03, 2, "cosine",
                                                                       5e-4)
    a = _checked(["--model", "lenet", "--save", "", "--augment", "0", "--schedule", "constant",
                  "--weight-decay", "0", "--lr", "0.01"])
    assert (a.lr, a.augment, a.schedule, a.weight_decay) == (0.01, 0, "constant", 0)
    a = _checked(["--model", "lenet", "--save", "", "--optimizer", "adam"])
    assert (a.lr, a.weight_decay, a.augment) == (1e-3, 0.0, 2)   # adam's own lr and decay
    a = _checked(["--model", "mlp", "--save", ""])
    assert (a.epochs, a.lr, a.augment, a.schedule, a.weight_decay) == (30, 0.05, 0, "constant",
                                                                       0.0)
    assert _checked(["--optimizer", "adamw", "--save", ""]).weight_decay == 0.01
