"""ReduceLROnPlateau: Keras's rule, checked on a hand-computed sequence, in a
real fit, across a checkpoint resume, and its argument checks."""
import numpy as np
import pytest

import gpudl
from gpudl.callbacks import ReduceLROnPlateau
from gpudl.checkpoint import ModelCheckpoint


class _Run:
    def __init__(self, lr):
        self.optimizer, self.epoch = gpudl.optim.SGD(lr), 0


def test_hand_computed_sequence():
    cb = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1)
    cb.set_trainer(_Run(0.1))
    cb.on_train_begin({})
    lrs = []
    for epoch, v in enumerate([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.5, 0.6, 0.7], 1):
        logs = {"val_loss": v}
        cb.on_epoch_end(epoch, logs)
        lrs.append(logs["lr"])
    # epochs 3-4 do not improve: halved after 4; epoch 5 is the cooldown's (its
    # count restarts there), 5-6 make 2 more: halved after 6; 7 improves, 8-9 not
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025]
    assert cb.trainer.optimizer.lr == 0.0125 and cb.best == 0.5


def test_min_lr_is_a_floor():
    cb = ReduceLROnPlateau(factor=0.1, patience=0, min_lr=0.004)
    cb.set_trainer(_Run(0.1))
    cb.on_train_begin({})
    for epoch in range(1, 5):
        cb.on_epoch_end(epoch, {"val_loss": 1.0})
    assert cb.trainer.optimizer.lr == 0.004


def _fit(tmp_path, epochs, resume=False):
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    model = gpudl.Sequential([gpudl.layers.Dense(5, 2)])
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    # mode "max" on a falling training loss: never an improvement after epoch 1
    cb = ReduceLROnPlateau("loss", factor=0.5, patience=0, mode="max")
    history = trainer.fit(x, y, epochs=epochs, batch_size=10, seed=0, verbose=False,
                          callbacks=[cb, ModelCheckpoint(tmp_path / "ck.npz")],
                          resume_from=tmp_path / "ck.npz" if resume else None)
    return trainer, history


def test_in_a_fit_and_across_a_resume(tmp_path):
    # history["lr"]: the rate each epoch ran with; halved at the end of epochs 2, 3, ...
    trainer, history = _fit(tmp_path, 3)
    assert history["lr"] == [0.1, 0.1, 0.05] and trainer.optimizer.lr == 0.025
    trainer, history = _fit(tmp_path, 4, resume=True)   # a fresh optimizer at lr 0.1
    assert history["lr"] == [0.1, 0.1, 0.05, 0.025] and trainer.optimizer.lr == 0.0125


def test_a_schedule_is_refused():
    cb = ReduceLROnPlateau()
    run = _Run(0.1)
    run.optimizer.lr = gpudl.schedules.CosineDecay(0.1, 10)
    cb.set_trainer(run)
    with pytest.raises(TypeError, match="schedule"):
        cb.on_train_begin({})


@pytest.mark.parametrize("kw", [{"factor": 1.0}, {"factor": 0}, {"patience": -1},
                                {"cooldown": 1.5}, {"min_lr": -1}, {"mode": "up"}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        ReduceLROnPlateau(**kw)


def test_missing_monitor_names_the_logs():
    cb = ReduceLROnPlateau()
    cb.set_trainer(_Run(0.1))
    with pytest.raises(KeyError, match="val_loss"):
        cb.on_epoch_end(1, {"loss": 1.0})
