"""Trainer.fit, evaluate and predict on streamed data: the same seed trains on the
same batches as the in-memory path, so on the CPU the weights and histories are
equal bit for bit (arrays, ArrayDataset, memmaps, the IDX reader, per-sample
data sets, iterables, resumed runs, two ranks); bad batches are named; the loader
thread never outlives fit."""
import threading

import numpy as np
import pytest

import gpudl
from gpudl import distributed as dist
from gpudl import graph as graphs
from gpudl.callbacks import Callback, EarlyStopping, LambdaCallback
from gpudl.checkpoint import ModelCheckpoint
from gpudl.data import ArrayDataset
from gpudl.datasets import open_idx
from gpudl.errors import ShapeError
from gpudl.layers import BatchNorm, Dense, Dropout, ReLU

from test_streaming_data import idx_pair, loader_threads

FIT = dict(epochs=3, batch_size=8, seed=3, verbose=False)


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")
    yield
    assert not loader_threads(), "a loader thread outlived its loop"


def make_trainer(features=6, classes=3):
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(features, 16), BatchNorm(16), ReLU(), Dropout(0.2),
                              Dense(16, classes)])
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                         gpudl.optim.SGD(0.05, momentum=0.9, weight_decay=1e-3))


def data(n=50, features=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, 3, n)


def same_run(a, b):
    """Two trainers after fit: the same weights, buffers and history, bit for bit."""
    sa, sb = a.model.state_arrays(), b.model.state_arrays()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    ha = {k: v for k, v in a.history.items() if k != "time"}
    hb = {k: v for k, v in b.history.items() if k != "time"}
    assert ha == hb


class PerSample:
    """A data set read one sample at a time (no index arrays)."""

    def __init__(self, x, y):
        self.x, self.y = list(x), list(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_a_streamed_fit_trains_on_the_same_batches_bit_for_bit(tmp_path):
    x, y = data()
    ref = make_trainer()
    ref.fit(x, y, validation_data=(x[:10], y[:10]), **FIT)
    assert ref._feed is None  # in-memory arrays keep the device-gather path
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    xm, ym = (np.load(tmp_path / f, mmap_mode="r") for f in ("x.npy", "y.npy"))
    for train, kw in ((ArrayDataset(x, y), dict(stream=True)),
                      ((xm, ym), {}),                      # memmaps stream by default
                      (PerSample(x, y), {})):
        t = make_trainer()
        args = train if isinstance(train, tuple) else (train,)
        t.fit(*args, validation_data=ArrayDataset(x[:10], y[:10]), **FIT, **kw)
        assert t._feed is not None
        same_run(ref, t)


def test_fit_from_the_idx_reader_equals_fit_on_the_decoded_arrays(tmp_path):
    img, lab, images, labels = idx_pair(tmp_path, n=40, h=4, w=6)
    x = images.reshape(40, -1).astype(np.float32)
    x /= 255
    ref = make_trainer(features=24, classes=10)
    ref.fit(x, labels.astype(np.int64), **FIT)
    t = make_trainer(features=24, classes=10)
    t.fit(open_idx(img, lab, flatten=True), **FIT)
    same_run(ref, t)
    ds = open_idx(img, lab, flatten=True)
    assert t.evaluate(ds, batch_size=16) == ref.evaluate(x, labels, batch_size=16)


def test_an_iterable_of_batches_is_read_in_its_own_order():
    x, y = data()
    ref = make_trainer()
    ref.fit(x, y, **{**FIT, "batch_size": 8}, shuffle=False)
    batches = [(x[s:s + 8], y[s:s + 8]) for s in range(0, 50, 8)]
    t = make_trainer()
    t.fit(batches, **FIT, shuffle=False)
    same_run(ref, t)
    one = make_trainer()
    gen = ((x[s:s + 8], y[s:s + 8]) for s in range(0, 50, 8))
    one.fit(gen, epochs=1, verbose=False, shuffle=False)  # a generator serves one epoch
    with pytest.raises(ValueError, match="cannot be shuffled: pass shuffle=False"):
        make_trainer().fit(batches, epochs=1, verbose=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        make_trainer().fit(iter(batches), epochs=2, verbose=False, shuffle=False)
    with pytest.raises(ValueError, match="gave no batches"):
        make_trainer().fit((b for b in []), epochs=1, verbose=False, shuffle=False)
    with pytest.raises(ValueError, match="validation_split holds out samples by index"):
        make_trainer().fit(batches, shuffle=False, validation_split=0.2, verbose=False)


def test_stream_false_reads_a_data_set_into_memory_once():
    x, y = data()
    ref = make_trainer()
    ref.fit(x, y, **FIT)
    t = make_trainer()
    t.fit(PerSample(x, y), stream=False, **FIT)
    assert t._feed is None
    same_run(ref, t)
    fast = make_trainer()  # an ArrayDataset over ndarrays keeps the fast path by default
    fast.fit(ArrayDataset(x, y), **FIT)
    assert fast._feed is None
    same_run(ref, fast)


def test_a_resumed_streamed_run_matches_the_uninterrupted_one(tmp_path):
    x, y = data()
    ds = ArrayDataset(x, y)
    whole = make_trainer()
    whole.fit(ds, **{**FIT, "epochs": 4}, stream=True,
              callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.ckpt")])
    resumed = make_trainer()
    resumed.fit(ds, **{**FIT, "epochs": 4}, stream=True,
                callbacks=[ModelCheckpoint(tmp_path / "r{epoch}.ckpt")],
                resume_from=tmp_path / "e2.ckpt")
    same_run(whole, resumed)
    in_memory = make_trainer()   # and a checkpoint of the in-memory run resumes streamed
    in_memory.fit(x, y, **{**FIT, "epochs": 2}, callbacks=[ModelCheckpoint(tmp_path / "m.ckpt")])
    mixed = make_trainer()
    mixed.fit(ds, **{**FIT, "epochs": 4}, stream=True, resume_from=tmp_path / "m.ckpt")
    same_run(whole, mixed)


def test_validation_split_of_a_data_set_holds_out_the_same_samples():
    x, y = data()
    ref = make_trainer()
    ref.fit(x, y, validation_split=0.2, **FIT)
    t = make_trainer()
    t.fit(ArrayDataset(x, y), validation_split=0.2, stream=True, **FIT)
    same_run(ref, t)
    assert "val_loss" in t.history


def test_evaluate_and_predict_stream_to_the_same_numbers(tmp_path):
    x, y = data(37)
    t = make_trainer()
    t.fit(x, y, **FIT)
    ds = ArrayDataset(x, y)
    names = ["top_3", "confusion"]
    want = t.evaluate(x, y, batch_size=10, metrics=names)
    got = t.evaluate(ds, batch_size=10, metrics=names, stream=True)
    assert got["loss"] == want["loss"] and got["accuracy"] == want["accuracy"]
    np.testing.assert_array_equal(got["confusion_matrix"], want["confusion_matrix"])
    assert t.evaluate(PerSample(x, y), batch_size=10) == t.evaluate(x, y, batch_size=10)
    out = t.predict(x, batch_size=10)
    np.testing.assert_array_equal(t.predict(ds, batch_size=10), out)
    np.testing.assert_array_equal(t.model.predict([(x[:20], y[:20]), (x[20:], y[20:])]),
                                  np.concatenate([t.predict(x[:20], 20), t.predict(x[20:], 17)]))
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(
        t.model.predict(np.load(tmp_path / "x.npy", mmap_mode="r"), batch_size=10), out)
    np.testing.assert_array_equal(t.predict_proba(ds, 10), t.predict_proba(x, 10))


class Shaped(ArrayDataset):
    """An ArrayDataset whose batch ``bad`` is broken by ``spoil``."""

    def __init__(self, x, y, bad, spoil):
        super().__init__(x, y)
        self.calls, self.bad, self.spoil = 0, bad, spoil

    def __getitem__(self, idx):
        xb, yb = super().__getitem__(idx)
        k, self.calls = self.calls, self.calls + 1
        return self.spoil(xb, yb) if k == self.bad else (xb, yb)


def test_bad_batches_are_named():
    x, y = data()
    with pytest.raises(ValueError, match="x is a data set .* leave y out"):
        make_trainer().fit(ArrayDataset(x, y), y)
    with pytest.raises(ValueError, match="y is missing"):
        make_trainer().fit(x)
    with pytest.raises(ValueError, match="stream must be True, False or 'auto'"):
        make_trainer().fit(x, y, stream="yes")
    with pytest.raises(ShapeError, match=r"fit: ArrayDataset\(50 samples.* batch 0"):
        make_trainer(features=5).fit(ArrayDataset(x, y), stream=True, verbose=False)
    cases = [(lambda xb, yb: (xb[:, :5], yb), ShapeError, "batch 2 .*samples of shape"),
             (lambda xb, yb: (np.where(xb > 1, np.nan, xb), yb), ValueError,
              "batch 3 .*NaN or infinite"),
             (lambda xb, yb: (xb, yb + 5), ValueError, "batch 1 .*label")]
    for bad, (spoil, error, match) in zip((2, 3, 1), cases):
        with pytest.raises(error, match=match):
            make_trainer().fit(Shaped(x, y, bad, spoil), stream=True, epochs=1,
                               batch_size=8, verbose=False, seed=0)


class Failing(ArrayDataset):
    def __getitem__(self, idx):
        if 7 in np.asarray(idx):
            raise RuntimeError("disk read failed")
        return super().__getitem__(idx)


def test_an_error_in_the_loader_reaches_fit_with_its_traceback():
    x, y = data()
    with pytest.raises(RuntimeError, match="disk read failed") as info:
        make_trainer().fit(Failing(x, y), stream=True, shuffle=False, verbose=False)
    assert any(f.name == "__getitem__" for f in info.traceback)


def test_the_loader_stops_when_fit_stops_early_or_raises():
    x, y = data(200)
    ds = ArrayDataset(x, y)

    class StopAt(Callback):
        def on_batch_end(self, batch, logs):
            if batch == 2:
                self.trainer.stop_training = True
    t = make_trainer()
    t.fit(ds, stream=True, epochs=5, batch_size=8, verbose=False, callbacks=[StopAt()])
    assert t.epoch == 1 and not loader_threads()
    t = make_trainer()
    t.fit(ds, stream=True, epochs=50, batch_size=50, verbose=False, validation_data=ds,
          callbacks=[EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0)])
    assert t.epoch < 50 and not loader_threads()
    for exc in (RuntimeError("a callback failed"), KeyboardInterrupt()):
        def boom(batch, logs, exc=exc):
            if batch == 1:
                raise exc
        with pytest.raises(type(exc)):
            make_trainer().fit(ds, stream=True, batch_size=4, verbose=False,
                               callbacks=[LambdaCallback(on_batch_end=boom)])
        assert not loader_threads()


def test_graph_capture_is_off_for_a_streamed_fit_and_says_why():
    x, y = data()
    t = make_trainer()
    t.fit(ArrayDataset(x, y), stream=True, epochs=1, verbose=False)
    assert any("stream from a data set" in b for b in graphs.blockers(t))


def test_two_ranks_shard_the_streamed_order_as_they_shard_arrays():
    x, y = data(37)

    def run(train, **kw):
        models = {}

        def rank(comm):
            t = make_trainer()
            t.distributed = dist.DataParallel(comm)
            models[comm.rank] = t
            return t.fit(*train, epochs=2, batch_size=5, seed=5, verbose=False, **kw)
        dist.ThreadGroup(2).run(rank)
        return models
    ref = run((x, y))
    got = run((ArrayDataset(x, y),), stream=True)
    for r in (0, 1):
        same_run(ref[r], got[r])
    with pytest.raises(ValueError, match="distributed training gives each rank"):
        t = make_trainer()
        t.distributed = object()
        t.fit([(x, y)], shuffle=False, verbose=False)


def test_no_loader_thread_is_left_behind():
    # counted by name: other threads (tqdm's monitor, say) may start meanwhile
    assert not loader_threads()
    x, y = data()
    make_trainer().fit(ArrayDataset(x, y), stream=True, **FIT,
                       validation_data=ArrayDataset(x, y))
    assert not loader_threads()
