"""Checkpoints and resume, early stopping, history files: a killed run resumes to
the same weights, bit for bit, and a broken write never costs the last good file."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gpudl
from gpudl.callbacks import EarlyStopping, LambdaCallback
from gpudl.checkpoint import CheckpointError, ModelCheckpoint, read_checkpoint
from gpudl.history import CSVLogger, history_to_csv, history_to_json, plot_history
from gpudl.layers import BatchNorm, Dense, Dropout, ReLU


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


RUN = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import gpudl
    from gpudl.callbacks import Callback, EarlyStopping
    from gpudl.checkpoint import ModelCheckpoint
    from gpudl.layers import BatchNorm, Dense, Dropout, ReLU

    ckpt, out, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(6, 16), BatchNorm(16), ReLU(), Dropout(0.3), Dense(16, 3)])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 6)).astype(np.float32)
    y = rng.integers(0, 3, 50)

    class Kill(Callback):
        runs_last = True       # after the checkpoint of the same epoch
        def on_epoch_end(self, epoch, logs):
            if epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                            gpudl.optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3))
    history = trainer.fit(x, y, epochs=5, batch_size=8, seed=3, verbose=False,
                          validation_data=(x[:10], y[:10]),
                          callbacks=[EarlyStopping(patience=10), ModelCheckpoint(ckpt), Kill()],
                          resume_from=ckpt if resume else None)
    np.savez(out, **model.state_arrays())
    with open(out + ".json", "w") as f:
        import json; json.dump(history, f)
""")


def _run(tmp_path, ckpt, out, kill_at, resume):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    return subprocess.run([sys.executable, str(script), str(ckpt), str(out), str(kill_at),
                           "1" if resume else "0"], capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_to_the_same_weights_bit_for_bit(tmp_path):
    whole = _run(tmp_path, tmp_path / "a.ckpt", tmp_path / "whole.npz", 0, False)
    assert whole.returncode == 0, whole.stderr
    killed = _run(tmp_path, tmp_path / "b.ckpt", tmp_path / "never.npz", 2, False)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no clean-up ran
    assert not (tmp_path / "never.npz").exists()
    meta, _ = read_checkpoint(tmp_path / "b.ckpt")
    assert meta["epoch"] == 2 and len(meta["history"]["loss"]) == 2
    resumed = _run(tmp_path, tmp_path / "b.ckpt", tmp_path / "resumed.npz", 0, True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) and any("running_var" in k for k in a.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ha = json.loads((tmp_path / "whole.npz.json").read_text())
    hb = json.loads((tmp_path / "resumed.npz.json").read_text())
    assert ha["val_loss"] == hb["val_loss"] and len(hb["loss"]) == 5


def small_model(seed=0):
    gpudl.manual_seed(seed)
    return gpudl.Sequential([Dense(4, 8), ReLU(), Dense(8, 2)])


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def trainer_for(model, lr=0.1):
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(lr, momentum=0.9))


def test_interrupted_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.ckpt"
    x, y = data()
    t = trainer_for(small_model())
    t.fit(x, y, epochs=1, verbose=False, callbacks=[ModelCheckpoint(path)])
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the user pressed Ctrl-C mid-write

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        t.fit(x, y, epochs=1, verbose=False, callbacks=[ModelCheckpoint(path)])
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["c.ckpt"]  # no temporary file left behind


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, damage):
    path = tmp_path / "c.ckpt"
    x, y = data()
    trainer_for(small_model()).fit(x, y, epochs=1, verbose=False, callbacks=[ModelCheckpoint(path)])
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:len(raw) // 2], "garbage": b"not a checkpoint",
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        trainer_for(small_model()).fit(x, y, epochs=2, verbose=False, resume_from=path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        trainer_for(small_model()).fit(x, y, epochs=2, verbose=False,
                                       resume_from=tmp_path / "missing.ckpt")


def test_resume_into_a_different_model_is_refused(tmp_path):
    path = tmp_path / "c.ckpt"
    x, y = data()
    trainer_for(small_model()).fit(x, y, epochs=1, verbose=False, callbacks=[ModelCheckpoint(path)])
    other = gpudl.Sequential([Dense(4, 5), ReLU(), Dense(5, 2)])
    with pytest.raises(CheckpointError, match="different model"):
        trainer_for(other).fit(x, y, epochs=2, verbose=False, resume_from=path)


def test_nan_loss_stops_training_and_the_last_good_checkpoint_survives(tmp_path):
    path = tmp_path / "c.ckpt"
    x, y = data()
    model = small_model()

    def poison(epoch, logs):  # a weight overflows during epoch 3
        if epoch == 3:
            model.layers[0].params["W"][0, 0] = np.inf

    t = trainer_for(model)
    with pytest.raises(FloatingPointError, match="epoch 3.*lower the learning rate"):
        t.fit(x, y, epochs=5, batch_size=8, verbose=False,
              callbacks=[LambdaCallback(on_epoch_begin=poison), ModelCheckpoint(path)])
    meta, arrays = read_checkpoint(path)
    assert meta["epoch"] == 2
    assert all(np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f")


def test_early_stopping_stops_and_restores_the_best_weights():
    x, y = data(60)
    xv, yv = data(30, seed=5)
    yv = 1 - yv  # validation labels flipped: val_loss rises as training fits
    model = small_model()
    seen = {}
    record = LambdaCallback(on_epoch_end=lambda e, logs: seen.__setitem__(e, model.state_arrays()))
    stop = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    t = trainer_for(model, lr=0.05)
    history = t.fit(x, y, epochs=40, verbose=False, validation_data=(xv, yv),
                    callbacks=[record, stop])
    assert stop.stopped_epoch == len(history["loss"]) == stop.best_epoch + 3
    assert stop.best == min(history["val_loss"])
    for k, v in model.state_arrays().items():
        np.testing.assert_array_equal(v, seen[stop.best_epoch][k], err_msg=k)


def test_early_stopping_arguments_and_missing_monitor():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=-1)
    x, y = data()
    with pytest.raises(KeyError, match="val_loss.*validation_data"):
        trainer_for(small_model()).fit(x, y, epochs=2, verbose=False, callbacks=[EarlyStopping()])


def test_history_files_and_plot(tmp_path):
    x, y = data()
    t = trainer_for(small_model())
    history = t.fit(x, y, epochs=3, verbose=False, validation_data=(x, y),
                    callbacks=[CSVLogger(tmp_path / "log.csv", json_path=tmp_path / "log.json")])
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,accuracy,val_loss") and len(rows) == 4
    assert json.loads((tmp_path / "log.json").read_text())["loss"] == history["loss"]
    history_to_csv(history, tmp_path / "h.csv")
    history_to_json(history, tmp_path / "h.json")
    pytest.importorskip("matplotlib")
    png = plot_history(history, tmp_path / "curves.png", title="digits")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_resume_with_adam_schedule_clipping_augmentation_and_ema(tmp_path):
    """Every piece of state a run carries: Adam's moments and step counts, a
    warm-up schedule, clipping, seeded augmentation, dropout, batch norm, EMA."""
    from gpudl.augment import Augment
    from gpudl.averaging import EMA
    from gpudl.layers import Conv2D, Flatten
    from gpudl.schedules import CosineDecay, WarmUp

    rng = np.random.default_rng(2)
    x = rng.random((24, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)

    def run(epochs, resume=None, ckpt=None):
        gpudl.manual_seed(7)
        model = gpudl.Sequential([Conv2D(1, 4, 3, padding="same"), BatchNorm(4), ReLU(),
                                  Flatten(), Dropout(0.2), Dense(144, 3)])
        opt = gpudl.optim.Adam(WarmUp(CosineDecay(0.01, 40), 5), clip_norm=1.0)
        ema = EMA(0.9)
        t = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt)
        cbs = [ema] + ([ModelCheckpoint(ckpt)] if ckpt else [])
        t.fit(x, y, epochs=epochs, batch_size=8, seed=1, verbose=False, callbacks=cbs,
              augment=Augment(shift=1, flip=True, seed=3), resume_from=resume)
        return model.state_arrays(), ema.arrays(), t.history

    whole, whole_ema, whole_history = run(4)
    run(2, ckpt=tmp_path / "c.ckpt")
    resumed, resumed_ema, resumed_history = run(4, resume=tmp_path / "c.ckpt")
    for k in ("loss", "accuracy"):
        assert resumed_history[k] == whole_history[k]
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k], err_msg=k)
    for k in whole_ema:
        np.testing.assert_array_equal(resumed_ema[k], whole_ema[k], err_msg=k)
