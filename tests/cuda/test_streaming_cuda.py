"""A streamed fit on the CUDA backend (simulator or GPU), one tiny batch (a
simulated step costs seconds): the consumer uploads the batch once (x and y),
the weights equal the in-memory run's, and graph capture is refused with the
reason."""
import numpy as np
import pytest

import gpudl
from gpudl.data import ArrayDataset
from gpudl.layers import Dense, ReLU


def _trainer():
    gpudl.set_device("cuda")
    gpudl.manual_seed(2)
    model = gpudl.Sequential([Dense(5, 4), ReLU(), Dense(4, 3)])
    return gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1, momentum=0.9))


def test_streamed_batches_upload_once_each_and_train_like_the_device_gather(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    ref = _trainer()
    ref.fit(x, y, epochs=1, batch_size=6, seed=1, verbose=False)
    t = _trainer()
    calls = []
    orig = type(t.model.backend).asarray
    monkeypatch.setattr(type(t.model.backend), "asarray",
                        lambda self, a, dtype=None: calls.append(a.shape) or orig(self, a, dtype))
    t.fit(ArrayDataset(x, y), epochs=1, batch_size=6, seed=1, verbose=False, stream=True)
    monkeypatch.undo()
    assert calls == [(6, 5), (6,)]
    a, b = ref.model.state_arrays(), t.model.state_arrays()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=0, err_msg=k)
    assert "stream from a data set" in t.graph_info["reason"]
    with pytest.raises(ValueError, match="stream from a data set"):
        _trainer().fit(ArrayDataset(x, y), epochs=1, batch_size=6, verbose=False,
                       stream=True, graph=True)
