"""Sequential: summary counts, save/load, reproducibility, the three gradient-descent modes."""
import numpy as np
import pytest

import gpudl
from gpudl.layers import Dense, ReLU, Softmax, Tanh


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def mlp(seed=0, widths=(6, 10, 4)):
    gpudl.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [Dense(a, b), ReLU()]
    return gpudl.Sequential(layers[:-1])


@pytest.mark.parametrize("widths", [(64, 128, 10), (3, 1), (784, 300, 100, 10)])
def test_summary_counts_follow_the_notes(widths):
    model = mlp(widths=widths)
    text = model.summary(print_fn=None)
    pairs = list(zip(widths[:-1], widths[1:]))
    params = sum(s_in * s_out + s_out for s_in, s_out in pairs)
    dense_flops = sum(s_in * s_out for s_in, s_out in pairs)
    relu_flops = sum(s_out for _, s_out in pairs[:-1])
    assert model.num_params() == params
    assert f"Total params: {params:,}" in text
    assert f"FLOPs per sample: {dense_flops + relu_flops:,}" in text
    for s_in, s_out in pairs:
        assert f"{s_in * s_out + s_out:,}" in text and f"(None, {s_out})" in text


def test_mismatched_layers_fail_at_construction():
    with pytest.raises(gpudl.ShapeError, match="expects 5 input features"):
        gpudl.Sequential([Dense(4, 3), ReLU(), Dense(5, 2)])


def test_save_load_round_trip(tmp_path):
    model = gpudl.Sequential([Dense(6, 10), Tanh(), Dense(10, 4), Softmax()])
    model.layers[0].trainable = False
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = gpudl.load(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [type(l).__name__ for l in loaded.layers] == ["Dense", "Tanh", "Dense", "Softmax"]
    assert loaded.layers[0].trainable is False
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    model = mlp()
    model.save(path)
    before = path.read_bytes()

    def explode(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        mlp(seed=1).save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(gpudl.ModelFileError, match="no model file"):
        gpudl.load(tmp_path / "nope.npz")
    path = tmp_path / "m.npz"
    mlp().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(gpudl.ModelFileError, match="corrupt"):
        gpudl.load(path)
    path.write_bytes(b"not a model at all")
    with pytest.raises(gpudl.ModelFileError):
        gpudl.load(path)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(gpudl.ModelFileError):
        gpudl.load(tmp_path / "other.npz")


def _train(seed, batch_size, epochs=3):
    model = mlp(seed=seed)
    rng = np.random.default_rng(42)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    history = trainer.fit(x, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=False)
    return model, history, trainer.optimizer


def test_same_seed_same_weights():
    a, _, _ = _train(7, 8)
    b, _, _ = _train(7, 8)
    c, _, _ = _train(8, 8)
    for k, v in a.state_arrays().items():
        np.testing.assert_array_equal(v, b.state_arrays()[k])
    assert any(not np.array_equal(v, c.state_arrays()[k]) for k, v in a.state_arrays().items())


@pytest.mark.parametrize("batch_size,steps", [(None, 1), (1, 40), (16, 3)])
def test_full_batch_online_and_mini_batch(batch_size, steps):
    model, history, opt = _train(0, batch_size, epochs=2)
    assert opt.iterations == 2 * steps  # one update per batch, 40 samples per epoch
    assert len(history["loss"]) == 2 and history["loss"][1] < history["loss"][0]


def test_full_batch_is_one_gradient_step_of_the_whole_loss():
    """batch_size=None takes exactly the full-data gradient step."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6)).astype(np.float64)
    y = rng.integers(0, 4, 12)
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(6, 4, dtype=np.float64)])
    w0 = model.layers[0].params["W"].copy()
    loss = gpudl.losses.CrossEntropy()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    expected = w0 - 0.3 * model.layers[0].grads["W"]
    trainer = gpudl.Trainer(model, loss, gpudl.optim.SGD(0.3))
    trainer.fit(x, y, epochs=1, batch_size=None, verbose=False)
    np.testing.assert_allclose(model.layers[0].params["W"], expected, rtol=1e-12)


def test_online_sgd_makes_one_update_per_sample():
    model = mlp()
    opt = gpudl.optim.SGD(0.01)
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    gpudl.Trainer(model, gpudl.losses.CrossEntropy(), opt).fit(
        x, np.arange(9) % 4, epochs=2, batch_size=1, verbose=False)
    assert opt.iterations == 18


def test_backward_without_input_gradient_gives_the_same_weight_gradients():
    model = mlp()
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    model.forward(x)
    assert model.backward(g).shape == (5, 6)
    full = {k: v.copy() for k, v in model.layers[0].grads.items()}
    model.forward(x)
    assert model.backward(g, need_input_grad=False) is None
    for k, v in model.layers[0].grads.items():
        np.testing.assert_array_equal(v, full[k])


def test_load_onto_a_named_device_leaves_the_current_one(tmp_path):
    mlp().save(tmp_path / "m.npz")
    loaded = gpudl.load(tmp_path / "m.npz", device="cpu")
    assert loaded.backend.name == "cpu" and gpudl.get_device() == "cpu"
    with pytest.raises(gpudl.DeviceError, match="unknown device"):
        gpudl.load(tmp_path / "m.npz", device="tpu")
