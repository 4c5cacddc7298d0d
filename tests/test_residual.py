"""Residual and Concat containers on the CPU backend: gradients to every branch,
merge errors, nested parameters in optimizers, summaries and model files."""
import numpy as np
import pytest

import gpudl
from gpudl.errors import ShapeError
from gpudl.gradcheck import check_layer, numeric_grad
from gpudl.layers import (BatchNorm, Concat, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Residual,
                          Tanh)


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def conv(cin, cout, k=3, seed=0, **kw):
    layer = Conv2D(cin, cout, k, padding="same", dtype=np.float64, seed=seed, **kw)
    if "b" in layer.params:
        layer.params["b"] = rand(cout, seed=seed + 50)
    return layer


def bn(c, seed=0):
    layer = BatchNorm(c, dtype=np.float64)
    layer.params["gamma"] = 1 + 0.3 * rand(c, seed=seed)
    layer.params["beta"] = rand(c, seed=seed + 1)
    return layer


def test_identity_add_gradient_reaches_input_and_block():
    layer = Residual([conv(3, 3, seed=1), Tanh(), conv(3, 3, seed=2)])
    errors = check_layer(layer, rand(2, 3, 5, 4))
    assert set(errors) == {"input", "block.0.W", "block.0.b", "block.2.W", "block.2.b"}


def test_projection_shortcut_with_batch_norm_in_training_mode():
    block = [conv(2, 4, seed=1, stride=2, bias=False), bn(4, seed=3), ReLU(),
             conv(4, 4, seed=2, bias=False), bn(4, seed=5)]
    layer = Residual(block, shortcut=[conv(2, 4, 1, seed=4, stride=2, bias=False), bn(4, seed=7)])
    x = rand(3, 2, 5, 5)
    x[np.abs(x) < 1e-2] = 0.5
    errors = check_layer(layer, x, training=True)
    assert {"block.1.gamma", "block.4.beta", "shortcut.0.W", "shortcut.1.gamma"} <= set(errors)
    assert layer.output_shape((2, 5, 5)) == (4, 3, 3)


def test_concat_merge_and_concat_of_three_branches_with_identity():
    errors = check_layer(Residual([conv(2, 3, seed=1)], merge="concat"), rand(2, 2, 4, 3))
    assert "block.0.W" in errors
    layer = Concat([[conv(2, 3, seed=1), Tanh()], conv(2, 1, 1, seed=2), None])
    assert layer.output_shape((2, 4, 3)) == (6, 4, 3)
    y = layer.forward(rand(2, 2, 4, 3))
    assert y.shape == (2, 6, 4, 3)
    np.testing.assert_array_equal(y[:, 4:], rand(2, 2, 4, 3))  # the identity branch, last
    errors = check_layer(layer, rand(2, 2, 4, 3))
    assert {"b0.0.W", "b1.0.W", "input"} <= set(errors)


def test_concat_of_dense_features():
    layer = Concat([Dense(3, 2, dtype=np.float64, seed=0), Dense(3, 4, dtype=np.float64, seed=1)])
    assert layer.output_shape((3,)) == (6,)
    check_layer(layer, rand(5, 3))


def test_add_gives_each_branch_the_whole_gradient():
    block = conv(2, 2, seed=1)
    layer = Residual([block])
    x = rand(2, 2, 3, 3)
    layer.forward(x)
    g = rand(2, 2, 3, 3, seed=9)
    dx = layer.backward(g)
    block.forward(x)
    dx_block = block.backward(g)
    np.testing.assert_allclose(dx, dx_block + g)  # identity path passes g unchanged


def test_unmergeable_shapes_name_both():
    with pytest.raises(ShapeError, match=r"block \(4, 5, 5\).*shortcut \(3, 5, 5\).*shortcut"):
        gpudl.Sequential([Residual([Conv2D(3, 4, 3, padding="same")])], input_shape=(3, 5, 5))
    with pytest.raises(ShapeError, match=r"block \(3, 2, 2\), shortcut \(3, 5, 5\)"):
        Residual(MaxPool2D(2), merge="concat").output_shape((3, 5, 5))
    # shapes unknown until data arrives: the error comes from forward, before any merge
    with pytest.raises(ShapeError, match=r"\(N=2\) \(4, 3, 3\)"):
        Residual(Conv2D(3, 4, 3, padding="same")).forward(rand(2, 3, 3, 3).astype(np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="merge must be one of"):
        Residual(ReLU(), merge="mul")
    with pytest.raises(ValueError, match="at least one layer"):
        Residual([])
    with pytest.raises(TypeError, match="item 1 of block is int"):
        Residual([ReLU(), 3])
    with pytest.raises(ValueError, match="at least two branches"):
        Concat([ReLU()])


def test_backward_before_forward_is_an_error():
    layer = Residual(ReLU(), merge="concat")
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(rand(1, 2, 2, 2))


def small_resnet(seed=0):
    gpudl.manual_seed(seed)
    return gpudl.Sequential([
        Conv2D(1, 4, 3, padding="same", bias=False), BatchNorm(4), ReLU(),
        Residual([Conv2D(4, 8, 3, stride=2, padding="same", bias=False), BatchNorm(8), ReLU(),
                  Conv2D(8, 8, 3, padding="same", bias=False), BatchNorm(8)],
                 shortcut=[Conv2D(4, 8, 1, stride=2, bias=False), BatchNorm(8)]),
        ReLU(), Residual(Conv2D(8, 2, 1), merge="concat"), Flatten(), Dense(10 * 3 * 3, 3)],
        input_shape=(1, 6, 6))


def test_nested_parameters_train_and_skip_weight_decay():
    model = small_resnet()
    res = model.layers[3]
    assert res.no_decay == {"block.1.gamma", "block.1.beta", "block.4.gamma", "block.4.beta",
                            "shortcut.1.gamma", "shortcut.1.beta"}
    before = {k: v.copy() for k, v in res.params.items()}
    x = rand(16, 1, 6, 6).astype(np.float32)
    y = np.arange(16) % 3
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.05, momentum=0.9))
    history = trainer.fit(x, y, epochs=8, batch_size=8, verbose=False, seed=0)
    assert history["loss"][-1] < history["loss"][0]
    for k, v in res.params.items():
        assert not np.array_equal(v, before[k]), f"{k} was not updated"
    assert not np.array_equal(res.buffers["block.1.running_mean"], np.zeros(8))


def test_names_are_unique_across_containers():
    names = [layer.name for layer in small_resnet().walk()]
    assert len(names) == len(set(names)) and "conv2d_3" in names


def test_summary_counts_children_once():
    model = small_resnet()
    text = model.summary(print_fn=None)
    res = model.layers[3]
    expected = (4 * 8 * 9 + 16) + (8 * 8 * 9 + 16) + (4 * 8 + 16)
    assert res.num_params() == expected
    assert f"residual (Residual)" in text and "  shortcut: conv2d" in text
    assert "  shortcut: identity" in text  # the concat residual's identity branch
    assert f"Total params: {model.num_params():,}" in text
    top = sum(layer.num_params() for layer in model.layers)
    assert model.num_params() == top
    flops = sum(layer.flops(s) for layer, s in zip(model.layers, _shapes(model)))
    assert f"FLOPs per sample: {flops:,}" in text


def _shapes(model):
    shape, out = model.input_shape, []
    for layer in model.layers:
        out.append(shape)
        shape = layer.output_shape(shape)
    return out


def test_save_and_load_round_trip_with_nested_buffers(tmp_path):
    model = small_resnet()
    x = rand(8, 1, 6, 6).astype(np.float32)
    model.forward(x, training=True)  # move the running averages off their start
    model.save(tmp_path / "r.npz")
    loaded = gpudl.load(tmp_path / "r.npz")
    a, b = model.state_arrays(), loaded.state_arrays()
    assert a.keys() == b.keys() and "layers.3.buffer.shortcut.1.running_var" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert isinstance(loaded.layers[3], Residual) and loaded.layers[5].merge == "concat"


def test_model_modes_and_inference_uses_running_averages():
    model = small_resnet()
    x = rand(8, 1, 6, 6).astype(np.float32)
    assert model.training is False
    model.train()
    y_train = model.forward(x)
    model.eval()
    y_eval = model.forward(x)
    assert not np.allclose(y_train, y_eval)
    np.testing.assert_array_equal(y_eval, model.forward(x, training=False))
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01))
    trainer.fit(x, np.zeros(8, np.int64), epochs=1, verbose=False)
    assert model.training is False  # fit hands back the mode it found


def test_residual_gradient_through_whole_model():
    gpudl.manual_seed(1)
    model = gpudl.Sequential([Residual([Dense(4, 4, dtype=np.float64), Tanh(),
                                        Dense(4, 4, dtype=np.float64)]),
                              Dense(4, 2, dtype=np.float64)], input_shape=(4,))
    x, g = rand(3, 4), rand(3, 2, seed=3)
    model.forward(x)
    dx = model.backward(g)
    num = numeric_grad(lambda: float(np.sum(model.forward(x) * g)), x)
    np.testing.assert_allclose(dx, num, rtol=1e-5, atol=1e-7)
