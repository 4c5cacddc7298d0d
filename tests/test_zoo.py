"""The model zoo: shapes and parameter counts on the data sets' image sizes,
model files, the command line, and LeNet's accuracy on the digits."""
import numpy as np
import pytest

import gpudl
from gpudl import zoo
from gpudl.cli import main
from gpudl.layers import BatchNorm, DepthwiseConv2D, Residual


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def test_lenet5_has_the_papers_shapes_and_61706_parameters():
    for shape in [(1, 32, 32), (1, 28, 28)]:  # 28x28 MNIST gets 2 pixels of padding
        model = zoo.lenet(shape, 10)
        assert model.num_params() == 61_706  # LeCun et al. 1998, with a dense F6/output
        maps = []
        s = shape
        for layer in model.layers:
            s = layer.output_shape(s)
            maps.append(s)
        assert maps[0] == (6, 28, 28) and maps[2] == (6, 14, 14)
        assert maps[3] == (16, 10, 10) and maps[5] == (16, 5, 5)
    with pytest.raises(ValueError, match="at most 32x32"):
        zoo.lenet((3, 64, 64))


def test_resnet_parameter_count_follows_the_notes():
    model = zoo.resnet((3, 32, 32), 10)
    conv = lambda k, cin, cout: k * k * cin * cout  # no biases: batch norm follows
    bn = lambda c: 2 * c
    expected = (conv(3, 3, 16) + bn(16)
                + 2 * (conv(3, 16, 16) + bn(16))
                + conv(3, 16, 32) + conv(3, 32, 32) + 2 * bn(32) + conv(1, 16, 32) + bn(32)
                + conv(3, 32, 64) + conv(3, 64, 64) + 2 * bn(64) + conv(1, 32, 64) + bn(64)
                + 64 * 10 + 10)
    assert model.num_params() == expected
    assert sum(isinstance(l, Residual) for l in model.layers) == 3
    assert model.output_shape() == (10,)
    deep = zoo.resnet((3, 32, 32), 10, blocks=3)  # ResNet-20
    assert sum(isinstance(l, Residual) for l in deep.layers) == 9
    # two more blocks per stage, each two 3x3 convolutions and two batch norms
    extra = 2 * 2 * (conv(3, 16, 16) + bn(16) + conv(3, 32, 32) + bn(32) + conv(3, 64, 64) + bn(64))
    assert deep.num_params() == expected + extra  # 272,474: the 0.27 M He et al. report


def test_mobilenet_is_depthwise_separable():
    model = zoo.mobilenet((3, 32, 32), 10)
    dw = [l for l in model.walk() if isinstance(l, DepthwiseConv2D)]
    assert len(dw) == 4 and all(l.num_params() == 9 * l.in_channels for l in dw)
    assert sum(isinstance(l, BatchNorm) for l in model.walk()) == 9
    assert model.output_shape() == (10,)


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_builds_runs_and_reloads(name, shape, tmp_path):
    build, images = zoo.MODELS[name]
    gpudl.manual_seed(0)
    model = build(shape if images else (int(np.prod(shape)),), 7)
    x = np.random.default_rng(0).random((2,) + shape).astype(np.float32)
    x = x if images else x.reshape(2, -1)
    out = model.forward(x, training=True)
    assert out.shape == (2, 7) and np.all(np.isfinite(out))
    model.summary(print_fn=None)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(gpudl.load(tmp_path / "m.npz").predict(x), model.predict(x))


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_cli_trains_every_model(name, tmp_path, capsys):
    metrics = tmp_path / "m.json"
    assert main(["train", "--model", name, "--epochs", "1", "--limit", "64", "--quiet",
                 "--device", "cpu", "--save", str(tmp_path / "m.npz"),
                 "--metrics-out", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert f"model: {name}" in out and "test accuracy" in out
    assert (tmp_path / "m.npz").exists() and metrics.exists()


def test_cli_names_the_missing_data_files(tmp_path, capsys):
    assert main(["train", "--data", "mnist", "--data-dir", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path) in err


@pytest.mark.slow
def test_lenet_reaches_97_percent_on_digits():
    """The issue's bar: LeNet-5 on the digits (upscaled to 32x32), CPU. With
    seeded 2-pixel shifts, weight decay and a cosine schedule it reached
    98.1%, 99.7% and 98.9% on the splits of seeds 0-2 (plain SGD for 15
    epochs: 97.5% on seed 0, too close to the bar to test)."""
    from gpudl.augment import Augment
    from gpudl.data import load_digits
    from gpudl.schedules import CosineDecay, epochs_to_steps, steps_per_epoch
    gpudl.manual_seed(0)
    (x, y), (xt, yt) = load_digits(flatten=False, upscale=4, seed=0)
    model = zoo.lenet((1, 32, 32), 10)
    lr = CosineDecay(0.03, epochs_to_steps(25, steps_per_epoch(len(x), 32)))
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                            gpudl.optim.SGD(lr, momentum=0.9, weight_decay=5e-4))
    trainer.fit(x, y, epochs=25, batch_size=32, seed=0, verbose=False,
                augment=Augment(shift=2, seed=0))
    assert trainer.evaluate(xt, yt)["accuracy"] >= 0.97
