"""Captured steps (gpudl.graph, gpudl/backend/capture.py) against eager ones.

Under the simulator a capture records every launch and array operation and
runs nothing; a replay runs the list on the same arrays. N replayed steps must
give bit for bit the weights, optimizer state, batch-norm statistics, losses
and host counters of N eager steps. On a real GPU the same tests run with
CUDA graphs.
"""
import numpy as np
import pytest

import gpudl
from gpudl import graph as graphs
from gpudl.augment import Augment
from gpudl.callbacks import LambdaCallback
from gpudl.checkpoint import ModelCheckpoint
from gpudl.errors import CaptureError
from gpudl.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU
from gpudl.schedules import CosineDecay, WarmUp


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, n)


def _model():
    gpudl.set_device("cuda")
    gpudl.manual_seed(5)
    return gpudl.Sequential([Conv2D(1, 2, 3), BatchNorm(2), ReLU(), Dropout(0.3), Flatten(),
                             Dense(32, 3)])


def _trainer(model):
    opt = gpudl.optim.Adam(WarmUp(CosineDecay(0.05, 12), 3), clip_norm=0.5, weight_decay=0.01)
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt)


def _fit(trainer, epochs, graph, n=10, **kw):
    x, y = _data(n)
    return trainer.fit(x, y, epochs=epochs, batch_size=4, seed=1, verbose=False, graph=graph,
                       augment=Augment(shift=1, flip=True, seed=2), **kw)


def _state(trainer):
    model, opt = trainer.model, trainer.optimizer
    out = dict(model.state_arrays())
    config, arrays = opt.state_dict()
    out.update(arrays)
    out["iterations"] = np.array(opt.iterations)
    out["dropout_calls"] = np.array([layer.calls for layer in model.walk()
                                     if isinstance(layer, Dropout)])
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_replayed_steps_equal_eager_steps_bit_for_bit(tmp_path):
    """Dropout, augmentation, batch norm, Adam with clipping and a warm-up +
    cosine schedule; batches of 4 and 2 (the last, smaller one gets its
    own graph); then a run cut after epoch 2 and resumed, also captured. Six
    samples, batches of 4 and 2: a shape's steps are eager, captured, then
    replayed, so three epochs replay both graphs, and every simulated step
    costs seconds."""
    eager = _trainer(_model())  # every _model() starts from the same seeded weights
    h_eager = _fit(eager, 3, False, n=6)

    graphed = _trainer(_model())
    h_graph = _fit(graphed, 3, True, n=6)
    assert graphed.graph_info["captured"] is True
    assert graphed.graph_info["steps"] == {4: "replayed", 2: "replayed"}
    assert h_graph["loss"] == h_eager["loss"] and h_graph["accuracy"] == h_eager["accuracy"]
    _assert_same(_state(graphed), _state(eager))
    # the run really trained, and dropout and the schedule really moved
    assert not np.array_equal(_state(graphed)["layers.5.W"], _model().state_arrays()["layers.5.W"])
    assert _state(graphed)["dropout_calls"][0] == 6

    path = tmp_path / "ck.npz"
    first = _trainer(_model())
    _fit(first, 2, True, n=6, callbacks=[ModelCheckpoint(path)])
    resumed = _trainer(_model())
    h_res = _fit(resumed, 3, True, n=6, callbacks=[ModelCheckpoint(path)], resume_from=path)
    assert h_res["loss"] == h_eager["loss"]
    _assert_same(_state(resumed), _state(eager))


def test_a_changed_setting_is_captured_again():
    """A callback that changes dropout's p between epochs: the step is
    recorded again, and the run still matches the eager one."""
    def bump(epoch, logs, trainer_box):
        trainer_box[0].model.layers[3].p = 0.5
    runs = []
    for graph in (False, True):
        box = []
        t = _trainer(_model())
        box.append(t)
        _fit(t, 2, graph, n=8,
             callbacks=[LambdaCallback(on_epoch_end=lambda e, logs: bump(e, logs, box))])
        runs.append(_state(t))
    _assert_same(runs[0], runs[1])


def _backend():
    gpudl.set_device("cuda")
    return gpudl.backend.get_backend()


@pytest.mark.parametrize("op", ["to_numpy", "synchronize", "asarray", "set_array"])
def test_host_ops_while_capturing_raise_capture_error(op):
    be = _backend()
    x = be.asarray(np.ones(4, np.float32))
    calls = {"to_numpy": lambda: be.to_numpy(x), "synchronize": be.synchronize,
             "asarray": lambda: be.asarray(np.ones(3)),
             "set_array": lambda: be.set_array(x, np.zeros(4, np.float32))}
    with pytest.raises(CaptureError, match=op):
        be.capture(lambda: (be.relu(x), calls[op]()))
    assert be._capture is None  # the backend is usable again
    np.testing.assert_array_equal(be.to_numpy(be.relu(x)), np.ones(4))


def test_capture_runs_nothing_until_replayed_and_replays_read_fresh_inputs():
    be = _backend()
    x = be.asarray(np.array([-1.0, 2.0, -3.0, 4.0], np.float32))
    counter = iter(range(1, 100))
    box = {}

    def step():
        row = be.step_input(lambda: np.array([next(counter), 0, 0], np.float32))
        box["out"] = be.relu(x)
        be.sgd_update(x, be.relu(x), None, 0.0, hyper=row)  # x -= lr * relu(x), lr from the row
    cap = be.capture(step)
    np.testing.assert_array_equal(be.to_numpy(x), [-1, 2, -3, 4])  # nothing ran yet
    cap.replay(first=True)   # lr 1: positive entries go to 0
    np.testing.assert_array_equal(be.to_numpy(x), [-1, 0, -3, 0])
    be.set_array(x, np.array([1, 1, 1, 1], np.float32))
    cap.replay()             # lr 2 from a fresh producer call: 1 - 2 * 1
    np.testing.assert_array_equal(be.to_numpy(x), [-1, -1, -1, -1])
    np.testing.assert_array_equal(be.to_numpy(box["out"]), [1, 1, 1, 1])


def _lambda_batch():
    return LambdaCallback(on_batch_end=lambda batch, logs: None)


def test_fallback_rules(monkeypatch):
    x, y = _data(4)  # one step an epoch: these fits check the plan, not the steps
    with pytest.raises(ValueError, match="LambdaCallback runs every batch"):
        _trainer(_model()).fit(x, y, batch_size=4, verbose=False, graph=True,
                               callbacks=[_lambda_batch()])
    t = _trainer(_model())
    t.fit(x, y, batch_size=4, verbose=False, graph="auto", callbacks=[_lambda_batch()])
    assert t.graph_info["captured"] is False and "LambdaCallback" in t.graph_info["reason"]
    with pytest.raises(ValueError, match="plain callable"):
        _trainer(_model()).fit(x, y, batch_size=4, verbose=False, graph=True,
                               augment=lambda xb, step: xb)
    with pytest.raises(ValueError, match="profile"):
        t = _trainer(_model())
        with gpudl.profile(t):
            t.fit(x, y, batch_size=4, verbose=False, graph=True)
    # "auto": eager until switched on for the device, then captured
    t = _trainer(_model())
    t.fit(x, y, batch_size=4, verbose=False)
    assert t.graph_info["captured"] is False and "not yet switched on" in t.graph_info["reason"]
    monkeypatch.setitem(graphs.AUTO, "simulator", True)
    monkeypatch.setitem(graphs.AUTO, "gpu", True)
    t = _trainer(_model())
    t.fit(x, y, batch_size=4, epochs=3, verbose=False)  # eager, captured, replayed
    assert t.graph_info["captured"] is True and t.graph_info["steps"][4] == "replayed"


@pytest.mark.parametrize("graph", [False, True])
def test_no_host_copies_inside_a_step(graph, monkeypatch):
    """Per epoch: one read of the metrics, and two in-place uploads (the
    order, the metrics reset); per step nothing but step inputs."""
    x, y = _data(8)  # two steps an epoch, of one shape: eager, captured, replayed, replayed
    t = _trainer(_model())
    be = t.model.backend
    counts = {"to_numpy": 0, "asarray": 0, "set_array": 0, "step_input": 0}
    for name in counts:  # on the class: an instance attribute would look like gpudl.profile
        orig = getattr(type(be), name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(type(be), name, counted)
    monkeypatch.setattr(t, "progress_interval", 1e9)
    t.fit(x, y, batch_size=4, epochs=2, verbose=False, graph=graph, seed=0)
    monkeypatch.undo()
    # _prepare uploads x and y once (2), then nothing; 2 steps per epoch
    assert counts["asarray"] == 2
    assert counts["to_numpy"] == 1 + 2  # divergence's reference loss once, then each epoch
    assert counts["set_array"] == 4
    # eager: offset, dropout keys, optimizer rows each step; graphed: only the
    # eager warm-up step and the capture call step_input (replays refill in place)
    assert counts["step_input"] == (3 * 4 if not graph else 3 * 2)
