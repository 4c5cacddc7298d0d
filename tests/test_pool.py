"""Max, mean and global-average pooling on the CPU backend."""
import numpy as np
import pytest

import gpudl
from gpudl.gradcheck import check_layer
from gpudl.layers import AvgPool2D, Conv2D, Flatten, GlobalAvgPool2D, MaxPool2D


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


X = np.array([[1, 3, 2, 0],
              [4, 2, 1, 5],
              [0, 1, 9, 2],
              [3, 8, 4, 7]], dtype=np.float64).reshape(1, 1, 4, 4)


def test_max_and_mean_pooling_by_hand():
    np.testing.assert_array_equal(MaxPool2D(2).forward(X)[0, 0], [[4, 5], [8, 9]])
    np.testing.assert_array_equal(AvgPool2D(2).forward(X)[0, 0], [[2.5, 2], [3, 5.5]])
    np.testing.assert_array_equal(GlobalAvgPool2D().forward(X), [[X.mean()]])


def test_max_backward_routes_to_the_winner_and_sums_overlaps():
    pool = MaxPool2D(3, stride=1)          # two overlapping windows share the 9
    y = pool.forward(X)
    np.testing.assert_array_equal(y[0, 0], [[9, 9], [9, 9]])
    dx = pool.backward(np.ones_like(y))
    expect = np.zeros((4, 4))
    expect[2, 2] = 4.0
    np.testing.assert_array_equal(dx[0, 0], expect)


def test_mean_pooling_leaves_padding_out_of_the_average():
    y = AvgPool2D(3, stride=2, padding=1).forward(X)
    # top-left window covers rows 0-1, columns 0-1 of the image only
    assert y[0, 0, 0, 0] == pytest.approx((1 + 3 + 4 + 2) / 4)


@pytest.mark.parametrize("layer", [MaxPool2D(2), MaxPool2D(3, stride=2, padding=1),
                                   MaxPool2D((2, 3), stride=(1, 2)), AvgPool2D(2),
                                   AvgPool2D(3, stride=2, padding=1), AvgPool2D((3, 2), stride=1),
                                   GlobalAvgPool2D()])
def test_gradcheck(layer):
    check_layer(layer, rand(2, 3, 7, 6))


def test_against_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rand(2, 3, 9, 8)
    tx = torch.from_numpy(x)
    for k, s, p in [(2, 2, 0), (3, 2, 1), ((3, 2), (1, 3), (1, 0))]:
        np.testing.assert_allclose(MaxPool2D(k, s, p).forward(x), F.max_pool2d(tx, k, s, p).numpy())
        np.testing.assert_allclose(AvgPool2D(k, s, p).forward(x),
                                   F.avg_pool2d(tx, k, s, p, count_include_pad=False).numpy())


def test_shapes_counts_and_errors():
    model = gpudl.Sequential([Conv2D(1, 4, 3, padding="same"), MaxPool2D(2), AvgPool2D(2),
                              GlobalAvgPool2D()], input_shape=(1, 8, 8))
    assert model.output_shape() == (4,)
    text = model.summary(print_fn=None)
    assert "(None, 4, 4, 4)" in text and "(None, 4, 2, 2)" in text
    assert model.num_params() == 3 * 3 * 4 + 4
    assert MaxPool2D(2).flops((4, 8, 8)) == 4 * 4 * 16
    with pytest.raises(ValueError, match="at most half the kernel"):
        MaxPool2D(2, padding=2)
    with pytest.raises(gpudl.ShapeError, match="empty output"):
        MaxPool2D(5).forward(rand(1, 1, 4, 4))
    with pytest.raises(gpudl.ShapeError, match=r"\(N, C, H, W\)"):
        AvgPool2D(2).forward(rand(4, 4))
    with pytest.raises(gpudl.ShapeError, match="argmax"):
        gpudl.get_backend().max_pool2d_backward(rand(1, 1, 2, 2), np.zeros((1, 1, 2, 3), np.int64),
                                                (4, 4), (2, 2), (2, 2), (0, 0, 0, 0))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        gpudl.get_backend().max_pool2d(rand(1, 1, 4, 4), (2, 2), (2, 2), (2, 0, 0, 0))


def test_pooling_model_saves_and_loads(tmp_path):
    model = gpudl.Sequential([Conv2D(1, 2, 3), MaxPool2D(2, padding=1), AvgPool2D(2),
                              Flatten()], input_shape=(1, 7, 7))
    model.save(tmp_path / "p.npz")
    x = rand(2, 1, 7, 7).astype(np.float32)
    np.testing.assert_array_equal(gpudl.load(tmp_path / "p.npz").predict(x), model.predict(x))
