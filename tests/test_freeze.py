"""Freezing, transfer learning and fine-tuning: Sequential.freeze/unfreeze and
their selectors, pop/add, frozen layers costing nothing through fit, the
frozen batch-norm policy (inference mode) and its gradient, model files."""
import numpy as np
import pytest

import gpudl
from gpudl import losses, optim, zoo
from gpudl.gradcheck import check_layer
from gpudl.layers import BatchNorm, Conv2D, Dense, Flatten, ReLU, Residual


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def flags(model):
    return {layer.name: layer.trainable for layer in model.walk()}


def nested():
    """conv2d, relu, residual(conv2d_1, batchnorm, relu_1), relu_2, flatten, dense."""
    return gpudl.Sequential([
        Conv2D(1, 4, 3, padding="same"), ReLU(),
        Residual([Conv2D(4, 4, 3, padding="same"), BatchNorm(4), ReLU()]), ReLU(),
        Flatten(), Dense(4 * 6 * 6, 3)], input_shape=(1, 6, 6))


def data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, n)


def fit(model, epochs=2, momentum=0.9, **kw):
    trainer = gpudl.Trainer(model, losses.CrossEntropy(), optim.SGD(0.05, momentum=momentum))
    trainer.fit(*data(), epochs=epochs, batch_size=8, seed=0, verbose=False, **kw)
    return trainer


# ---- selectors

def test_freeze_all_and_unfreeze_all():
    model = nested()
    assert model.freeze() is model
    assert not any(flags(model).values())
    assert model.unfreeze() is model
    assert all(flags(model).values())


def test_selectors_index_negative_slice_name_and_layer():
    model = nested()
    model.freeze(0, -1)
    assert not model.layers[0].trainable and not model.layers[-1].trainable
    assert model.layers[1].trainable
    model.unfreeze().freeze(slice(None, 2))
    assert [l.trainable for l in model.layers] == [False, False, True, True, True, True]
    model.unfreeze().freeze("conv2d_1")  # a nested layer, by name
    assert flags(model)["conv2d_1"] is False and flags(model)["residual"] is True
    model.unfreeze().freeze(model.layers[5])
    assert model.layers[5].trainable is False


def test_freezing_a_container_freezes_its_children():
    model = nested().freeze("residual")
    f = flags(model)
    assert not f["residual"] and not f["conv2d_1"] and not f["batchnorm"] and not f["relu_1"]
    assert f["conv2d"] and f["dense"]


def test_unfreezing_a_nested_layer_makes_its_container_trainable():
    model = nested().freeze()
    model.unfreeze("batchnorm")
    f = flags(model)
    assert f["batchnorm"] and f["residual"]
    assert not f["conv2d_1"] and not f["conv2d"]  # siblings and the rest stay frozen
    assert model.num_params(trainable_only=True) == 8  # gamma and beta


def test_selector_errors_name_the_valid_choices():
    model = nested()
    with pytest.raises(KeyError, match="no layer named 'nope'.*conv2d, relu, residual, conv2d_1"):
        model.freeze("nope")
    with pytest.raises(IndexError, match="out of range for 6 layers.*-6 to 5"):
        model.freeze(6)
    with pytest.raises(IndexError, match="-6 to 5"):
        model.unfreeze(-7)
    with pytest.raises(ValueError, match="not part of this model"):
        model.freeze(Dense(2, 2))
    with pytest.raises(TypeError, match="indices, slices, names or Layer objects"):
        model.freeze(1.5)
    assert all(flags(model).values())  # nothing half-done


# ---- counts

def test_summary_counts_nested_frozen_layers():
    model = nested()
    total = model.num_params()
    conv1 = model.layers[2].block[0].num_params()  # 4*4*9 + 4 = 148
    model.freeze("conv2d_1")
    assert model.num_params(trainable_only=True) == total - conv1
    text = model.summary(print_fn=None)
    assert f"Trainable params: {total - conv1:,}" in text
    assert f"Non-trainable params: {conv1:,}" in text
    model.freeze("residual")  # the whole block: conv and batch norm
    block = model.layers[2].num_params()
    assert f"Non-trainable params: {block:,}" in model.summary(print_fn=None)
    assert model.trainable_layers() == [model.layers[0], model.layers[5]]


# ---- frozen layers cost nothing

def test_fit_leaves_frozen_weights_bit_identical_top_level_and_nested():
    model = nested()
    model.freeze(0, "conv2d_1", "batchnorm")
    frozen = [model.layers[0], model.layers[2].block[0], model.layers[2].block[1]]
    before = [{k: v.copy() for k, v in (*l.params.items(), *l.buffers.items())} for l in frozen]
    head = model.layers[-1].params["W"].copy()
    fit(model)
    for layer, saved in zip(frozen, before):
        for k, v in saved.items():
            now = layer.params.get(k, layer.buffers.get(k))
            np.testing.assert_array_equal(now, v, err_msg=f"{layer.name}.{k} changed")
    assert not np.array_equal(model.layers[-1].params["W"], head)  # the rest trained


def test_frozen_layers_compute_no_weight_gradients_and_get_no_momentum():
    model = nested()
    model.freeze(0, "conv2d_1")
    trainer = fit(model)
    assert model.layers[0].grads == {}
    assert model.layers[2].block[0].grads == {}
    keys = set(trainer.optimizer.state)
    assert keys and not any(k.startswith("0.") or k.startswith("2.block.0.") for k in keys)
    assert "5.W" in keys and "2.block.1.gamma" in keys


def test_backward_stops_below_the_lowest_layer_that_trains(monkeypatch):
    model = zoo.small_cnn(in_shape=(1, 6, 6), classes=3)
    model.pop()
    model.freeze()
    model.add(Dense(32 * 3 * 3, 3))
    for layer in model.layers[:-1]:
        monkeypatch.setattr(layer, "backward", lambda *a, **k: pytest.fail("frozen base ran"))
    fit(model)
    # the input gradient, when asked for, still goes through every layer
    monkeypatch.undo()
    model.forward(model.backend.asarray(data(4)[0]), training=True)
    assert model.backward(np.ones((4, 3), np.float32)).shape == (4, 1, 6, 6)


# ---- batch norm when frozen

def frozen_bn(c):
    layer = BatchNorm(c, dtype=np.float64)
    layer.params["gamma"] = 1 + 0.5 * rand(c, seed=7)
    layer.params["beta"] = rand(c, seed=8)
    layer.buffers["running_mean"] = rand(c, seed=9)
    layer.buffers["running_var"] = 0.5 + np.abs(rand(c, seed=10))
    layer.trainable = False
    return layer


def test_frozen_batchnorm_runs_in_inference_mode_while_training():
    layer = frozen_bn(3)
    x = rand(8, 3, 4, 4) * 3 + 2
    mean, var = layer.buffers["running_mean"].copy(), layer.buffers["running_var"].copy()
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, layer.forward(x, training=False))
    np.testing.assert_array_equal(layer.buffers["running_mean"], mean)
    np.testing.assert_array_equal(layer.buffers["running_var"], var)
    dx = layer.backward(np.ones_like(y))
    expect = layer.params["gamma"] / np.sqrt(var + layer.eps)
    np.testing.assert_allclose(dx, np.broadcast_to(expect.reshape(1, 3, 1, 1), x.shape))
    assert layer.grads == {}


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 5)])
def test_frozen_batchnorm_gradient(shape):
    errors = check_layer(frozen_bn(shape[1]), rand(*shape) * 3 + 1, training=True)
    assert set(errors) == {"input"}  # gamma and beta get no gradient


def test_trainable_batchnorm_still_refuses_backward_after_inference():
    layer = BatchNorm(2, dtype=np.float64)
    y = layer.forward(rand(4, 2), training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        layer.backward(np.ones_like(y))


# ---- pop and add

def test_pop_and_add_a_new_head():
    model = zoo.small_cnn(in_shape=(1, 8, 8), classes=10)
    head = model.pop()
    assert isinstance(head, Dense) and head.out_features == 10
    assert model.output_shape() == (32 * 4 * 4,)
    assert model.add(Dense(512, 64)).add(ReLU()).add(Dense(64, 5)) is model
    assert model.output_shape() == (5,)
    names = [l.name for l in model.walk()]
    assert len(set(names)) == len(names) and names[-3:] == ["dense", "relu_2", "dense_1"]


def test_add_a_head_that_does_not_fit_is_a_clear_error():
    model = zoo.small_cnn(in_shape=(1, 8, 8), classes=10)
    model.pop()
    before = list(model.layers)
    with pytest.raises(gpudl.ShapeError, match=r"'dense' \(Dense\) does not fit after 'flatten' "
                                               r"\(Flatten\).*\(512,\).*expects 100 input"):
        model.add(Dense(100, 5))
    assert model.layers == before


def test_add_and_pop_errors():
    model = gpudl.Sequential([Dense(3, 2)])
    with pytest.raises(ValueError, match="only layer"):
        model.pop()
    with pytest.raises(TypeError, match="expected a Layer"):
        model.add("dense")
    with pytest.raises(ValueError, match="already in the model"):
        model.add(model.layers[0])


def test_added_names_stay_unique_when_suffixes_are_taken():
    model = gpudl.Sequential([Dense(3, 3), Dense(3, 3), Dense(3, 3, name="dense_2")])
    model.add(Dense(3, 3))
    names = [l.name for l in model.layers]
    assert len(set(names)) == 4, names


# ---- model files

def test_save_load_keeps_trainable_flags_nested(tmp_path):
    model = nested().freeze(0, "batchnorm")
    model.save(tmp_path / "m.npz")
    loaded = gpudl.load(tmp_path / "m.npz")
    assert flags(loaded) == flags(model)
    assert loaded.num_params(trainable_only=True) == model.num_params(trainable_only=True)
    x = data(4)[0]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
