"""Convolution layers on the CPU backend: the notes' convolution matrix as the
oracle, float64 gradient checks, output sizes, counts, and bad configurations."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpudl
from gpudl.convmatrix import conv_matrix
from gpudl.gradcheck import check_layer
from gpudl.layers import Conv2D, Conv2DTranspose, DepthwiseConv2D, Flatten, SeparableConv2D


@pytest.fixture(autouse=True)
def cpu():
    gpudl.set_device("cpu")


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_the_notes_4x4_image_3x3_kernel_matrix():
    w = np.arange(1, 10).reshape(3, 3)  # w[p, q] = 3 p + q + 1
    m = conv_matrix(w, (4, 4))
    col0 = [1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0]
    assert m.shape == (16, 4)
    np.testing.assert_array_equal(m[:, 0], col0)
    np.testing.assert_array_equal(m[:, 1], np.roll(col0, 1))
    np.testing.assert_array_equal(m[:, 2], np.roll(col0, 4))
    np.testing.assert_array_equal(m[:, 3], np.roll(col0, 5))


configs = st.fixed_dictionaries({
    "c": st.integers(1, 3), "o": st.integers(1, 3), "groups": st.sampled_from([1, 2, "depthwise"]), "h": st.integers(3, 9), "w": st.integers(3, 9),
    "k": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "stride": st.tuples(st.integers(1, 4), st.integers(1, 4)),
    "dilation": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "padding": st.one_of(st.just("valid"), st.just("same"),
                         st.tuples(st.integers(0, 4), st.integers(0, 4))),
    "seed": st.integers(0, 2**16)})


def _layer(cfg, dtype=np.float64):
    """groups 2 doubles the channels; depthwise gives each input channel o kernels."""
    g = cfg["groups"]
    c, o = cfg["c"], cfg["o"]
    if g == 2:
        c, o = 2 * c, 2 * o
    elif g == "depthwise":
        g, o = c, c * o
    return Conv2D(c, o, cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"], groups=g,
                  dtype=dtype, seed=cfg["seed"])


def _fits(cfg):
    try:
        layer = _layer(cfg)
        layer.output_shape((layer.in_channels, cfg["h"], cfg["w"]))
        return True
    except gpudl.ShapeError:
        return False


@settings(max_examples=80, deadline=None)
@given(cfg=configs.filter(_fits))
def test_forward_and_both_gradients_equal_the_convolution_matrix(cfg):
    layer = _layer(cfg)
    x = rand(2, layer.in_channels, cfg["h"], cfg["w"], seed=cfg["seed"])
    m, index = conv_matrix(layer.params["W"], x.shape[1:], cfg["stride"], cfg["padding"],
                           cfg["dilation"], layer.groups, return_index=True)
    layer.params["b"][:] = 0
    y = layer.forward(x)
    np.testing.assert_allclose(y.reshape(2, -1), x.reshape(2, -1) @ m, atol=1e-12)
    dy = rand(*y.shape, seed=cfg["seed"] + 1)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx.reshape(2, -1), dy.reshape(2, -1) @ m.T, atol=1e-12)
    # weight gradient: each kernel cell sums the updates x_row * dy_col of its entries
    rows, cols = np.nonzero(index >= 0)
    expect = np.zeros(layer.params["W"].size)
    for n in range(2):
        np.add.at(expect, index[rows, cols], x.reshape(2, -1)[n, rows] * dy.reshape(2, -1)[n, cols])
    np.testing.assert_allclose(layer.grads["W"].reshape(-1), expect, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], dy.sum(axis=(0, 2, 3)), atol=1e-12)


@pytest.mark.parametrize("kwargs,x_shape", [
    (dict(in_channels=2, out_channels=3, kernel_size=3), (2, 2, 5, 6)),
    (dict(in_channels=1, out_channels=2, kernel_size=(2, 3), stride=3, padding="same"), (1, 1, 7, 5)),
    (dict(in_channels=2, out_channels=2, kernel_size=3, dilation=2, padding=3), (2, 2, 5, 5)),
    (dict(in_channels=4, out_channels=2, kernel_size=2, groups=2, stride=(1, 2)), (2, 4, 4, 5)),
])
def test_conv2d_gradcheck(kwargs, x_shape):
    layer = Conv2D(**kwargs, dtype=np.float64, seed=1)
    layer.params["b"] = rand(layer.out_channels, seed=5)
    assert set(check_layer(layer, rand(*x_shape))) == {"input", "W", "b"}


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_gradcheck(mult):
    layer = DepthwiseConv2D(3, 3, stride=2, padding="same", depth_multiplier=mult,
                            dtype=np.float64, seed=2)
    check_layer(layer, rand(2, 3, 6, 5))


def test_separable_gradcheck():
    layer = SeparableConv2D(3, 4, 3, padding=1, dilation=2, dtype=np.float64, seed=3)
    layer.params["b"][:] = rand(4, seed=9)
    errors = check_layer(layer, rand(2, 3, 6, 6))
    assert set(errors) == {"input", "W_depthwise", "W_pointwise", "b"}


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3), dict(kernel_size=3, stride=2),
                                    dict(kernel_size=(2, 3), stride=(2, 3), padding=1,
                                         output_padding=1),
                                    dict(kernel_size=2, dilation=2, stride=3, output_padding=2)])
def test_transposed_gradcheck(kwargs):
    layer = Conv2DTranspose(2, 3, dtype=np.float64, seed=4, **kwargs)
    layer.params["b"] = rand(3, seed=6)
    check_layer(layer, rand(2, 2, 4, 3))


def test_transposed_is_the_transposed_convolution_matrix():
    layer = Conv2DTranspose(2, 3, 3, stride=2, padding=1, output_padding=1, dtype=np.float64,
                            seed=0, bias=False)
    x = rand(1, 2, 4, 4)
    y = layer.forward(x)
    assert y.shape == (1, 3, 8, 8)  # (4 - 1) 2 - 2 + 3 + 1, the upsampling use
    # the convolution from y's shape back to x's, with the same weight
    m = conv_matrix(layer.params["W"], y.shape[1:], 2, 1)
    np.testing.assert_allclose(y.reshape(-1), m @ x.reshape(-1), atol=1e-12)


def test_flatten_round_trip():
    x = rand(2, 3, 4, 5)
    f = Flatten()
    assert f.forward(x).shape == (2, 60)
    np.testing.assert_array_equal(f.backward(f.forward(x)), x)
    check_layer(Flatten(), x)


@pytest.mark.parametrize("size,k,s,d,expect", [(5, 2, 1, 1, (0, 1)), (7, 3, 2, 1, (1, 1)),
                                               (6, 3, 2, 1, (0, 1)), (8, 3, 1, 2, (2, 2)),
                                               (4, 1, 3, 1, (0, 0))])
def test_same_padding_matches_keras(size, k, s, d, expect):
    layer = Conv2D(1, 1, (k, 1), (s, 1), "same", (d, 1))
    assert layer.pads((size, 1))[:2] == expect
    assert layer.output_shape((1, size, 1))[1] == -(-size // s)  # ceil(W / S)


@pytest.mark.parametrize("w,k,s,p,d", [(32, 3, 1, 0, 1), (32, 5, 2, 2, 1), (28, 3, 2, 1, 2),
                                       (7, 7, 1, 0, 1), (10, 3, 4, 3, 3)])
def test_output_size_is_the_notes_formula(w, k, s, p, d):
    layer = Conv2D(1, 1, k, s, p, d)
    assert layer.output_shape((1, w, w))[1:] == ((w + 2 * p - (d * (k - 1) + 1)) // s + 1,) * 2


def test_against_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    x = rand(2, 4, 9, 7)
    for kw in (dict(stride=2, padding=(1, 2), dilation=(2, 1), groups=2), dict(stride=3)):
        layer = Conv2D(4, 6, (3, 2), dtype=np.float64, seed=0, **kw)
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(layer.params["W"]),
                                         **kw)
        np.testing.assert_allclose(layer.forward(x), ref.numpy(), atol=1e-12)
    t = Conv2DTranspose(4, 3, 3, stride=2, padding=1, output_padding=1, dilation=2,
                        dtype=np.float64, seed=1, bias=False)
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(t.params["W"]),
                                               stride=2, padding=1, output_padding=1, dilation=2)
    np.testing.assert_allclose(t.forward(x), ref.numpy(), atol=1e-12)


def scatter_transpose(x, w, b, stride, padding, output_padding, dilation):
    """The transposed convolution by its definition: each input pixel adds
    x * W at i * S - P + k * D; output_padding rows past the end get only b."""
    n, _, h, wd = x.shape
    _, o, kh, kw = w.shape
    (s0, s1), (p0, p1), (q0, q1), (d0, d1) = stride, padding, output_padding, dilation
    oh = (h - 1) * s0 - 2 * p0 + d0 * (kh - 1) + 1 + q0
    ow = (wd - 1) * s1 - 2 * p1 + d1 * (kw - 1) + 1 + q1
    y = np.zeros((n, o, oh, ow)) + b.reshape(1, -1, 1, 1)
    for i, j, ki, kj in np.ndindex(h, wd, kh, kw):
        r, c = i * s0 - p0 + ki * d0, j * s1 - p1 + kj * d1
        if 0 <= r < oh and 0 <= c < ow:
            y[:, :, r, c] += x[:, :, i, j] @ w[:, :, ki, kj]
    return y


# output_padding >= stride on an axis (allowed below the dilation), with and
# without padding to absorb it; the 4x4 case first
TRANSPOSED_PAST_STRIDE = [
    dict(kernel_size=3, dilation=2, output_padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), dilation=(3, 1), output_padding=(2, 1)),
    dict(kernel_size=2, stride=(2, 1), padding=(0, 1), dilation=3, output_padding=(2, 2)),
    dict(kernel_size=3, stride=2, padding=1, dilation=4, output_padding=3),
]


@pytest.mark.parametrize("kwargs", TRANSPOSED_PAST_STRIDE)
def test_transposed_output_padding_past_the_stride_is_the_scatter(kwargs):
    layer = Conv2DTranspose(2, 3, dtype=np.float64, seed=2, **kwargs)
    layer.params["b"] = rand(3, seed=3)
    x = rand(2, 2, 4, 4, seed=1)
    y = layer.forward(x)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])
    geo = [layer.stride, layer.padding, layer.output_padding, layer.dilation]
    np.testing.assert_allclose(y, scatter_transpose(x, layer.params["W"], layer.params["b"],
                                                    *geo), atol=1e-12)
    check_layer(layer, x)


@pytest.mark.parametrize("kwargs", TRANSPOSED_PAST_STRIDE)
def test_transposed_output_padding_past_the_stride_against_pytorch(kwargs):
    torch = pytest.importorskip("torch")
    layer = Conv2DTranspose(2, 3, dtype=np.float64, seed=2, **kwargs)
    layer.params["b"] = rand(3, seed=3)
    x = rand(2, 2, 4, 5, seed=1)
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(layer.params["W"]).requires_grad_()
    bt = torch.from_numpy(layer.params["b"]).requires_grad_()
    ref = torch.nn.functional.conv_transpose2d(
        xt, wt, bt, stride=layer.stride, padding=layer.padding,
        output_padding=layer.output_padding, dilation=layer.dilation)
    np.testing.assert_allclose(layer.forward(x), ref.detach().numpy(), atol=1e-12)
    g = rand(*ref.shape, seed=4)
    ref.backward(torch.from_numpy(g))
    np.testing.assert_allclose(layer.backward(g), xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], wt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], bt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("kh,kw,din,dout,hw", [(3, 3, 1, 8, (8, 8)), (5, 3, 4, 6, (11, 9)),
                                               (1, 1, 16, 32, (4, 4))])
def test_summary_counts_follow_the_notes(kh, kw, din, dout, hw):
    model = gpudl.Sequential([Conv2D(din, dout, (kh, kw))], input_shape=(din,) + hw)
    oh, ow = hw[0] - kh + 1, hw[1] - kw + 1
    text = model.summary(print_fn=None)
    assert model.num_params() == kh * kw * din * dout + dout
    assert f"FLOPs per sample: {kh * kw * din * dout * oh * ow:,}" in text
    assert f"(None, {dout}, {oh}, {ow})" in text


def test_separable_depthwise_and_transposed_counts():
    k, din, dout = 3, 8, 16
    sep = SeparableConv2D(din, dout, k, padding="same")
    assert sep.num_params() == k * k * din + din * dout + dout
    assert sep.flops((din, 10, 10)) == k * k * din * 100 + din * dout * 100
    dw = DepthwiseConv2D(din, k, depth_multiplier=2)
    assert dw.num_params() == k * k * din * 2 + din * 2
    assert dw.flops((din, 10, 10)) == k * k * din * 2 * 64
    t = Conv2DTranspose(din, dout, k, stride=2)
    assert t.num_params() == k * k * din * dout + dout
    assert t.flops((din, 5, 5)) == k * k * din * dout * 25


def test_empty_output_names_the_sizes():
    with pytest.raises(gpudl.ShapeError, match=r"input 4x4 .*kernel 3x3, dilation \(3, 3\) "
                                               r"\(effective kernel 7x7\).*empty output"):
        Conv2D(1, 1, 3, dilation=3).forward(rand(1, 1, 4, 4))
    with pytest.raises(gpudl.ShapeError, match="Conv2DTranspose.*empty output"):
        Conv2DTranspose(1, 1, 1, padding=2).output_shape((1, 2, 2))


@pytest.mark.parametrize("make,match", [
    (lambda: Conv2D(3, 4, 3, groups=2), "divisible by groups"),
    (lambda: Conv2D(1, 1, 0), "kernel_size"),
    (lambda: Conv2D(1, 1, 3, padding="full"), "padding must be"),
    (lambda: Conv2D(1, 1, 3, stride=(1, 0)), "stride"),
    (lambda: Conv2DTranspose(1, 1, 3, stride=2, output_padding=2), "output_padding"),
])
def test_bad_configurations(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_channels_name_the_layer():
    with pytest.raises(gpudl.ShapeError, match=r"'conv2d'.*\(batch, 3, H, W\).*\(2, 5, 5\)"):
        Conv2D(3, 4, 3).forward(rand(1, 2, 5, 5).astype(np.float32))
    with pytest.raises(gpudl.ShapeError, match=r"\(N, 3, H, W\)"):
        Conv2D(3, 4, 3).forward(rand(3, 5, 5).astype(np.float32))


def test_conv_model_save_load(tmp_path):
    model = gpudl.Sequential([Conv2D(1, 4, 3, padding="same"), DepthwiseConv2D(4, 3, stride=2),
                              SeparableConv2D(4, 6, 2), Conv2DTranspose(6, 2, 2, stride=2),
                              Flatten()], input_shape=(1, 9, 9))
    x = rand(2, 1, 9, 9).astype(np.float32)
    model.save(tmp_path / "cnn.npz")
    loaded = gpudl.load(tmp_path / "cnn.npz")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded.num_params() == model.num_params()


def test_backend_conv_ops_reject_mismatched_shapes():
    be = gpudl.get_backend()
    x, w = rand(1, 3, 5, 5), rand(2, 2, 3, 3)
    geo = ((1, 1), (0, 0, 0, 0), (1, 1))
    with pytest.raises(gpudl.ShapeError, match=r"3 input channels and w of shape \(2, 2, 3, 3\)"):
        be.conv2d(x, w, *geo)
    with pytest.raises(gpudl.ShapeError, match=r"gradient of shape \(1, 2, 3, 3\).*\(1, 2, 2, 2\)"):
        be.conv2d_backward_input(rand(1, 2, 2, 2), rand(2, 3, 3, 3), (5, 5), *geo)
    with pytest.raises(gpudl.ShapeError, match="4-D"):
        be.conv2d(rand(3, 5, 5), rand(2, 3, 3, 3), *geo)
    with pytest.raises(ValueError, match="groups"):
        be.conv2d_backward_weight(rand(1, 2, 3, 3), x, (3, 3), *geo, groups=0)


def test_non_positive_dilation_and_stride():
    with pytest.raises(ValueError, match=r"dilation must be an int >= 1.*0"):
        Conv2D(1, 1, 3, dilation=0)
    with pytest.raises(ValueError, match=r"stride must be an int >= 1.*-1"):
        Conv2DTranspose(1, 1, 3, stride=-1)


def test_wrong_weight_shape_on_load(tmp_path):
    import json
    import zipfile
    model = gpudl.Sequential([Conv2D(2, 4, 3)], input_shape=(2, 6, 6))
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    config = json.loads(arrays["__config__"].tobytes())
    config["layers"][0]["config"]["kernel_size"] = [5, 5]  # the file's weight is 3x3
    arrays["__config__"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    np.savez(path, **arrays)
    assert zipfile.is_zipfile(path)
    with pytest.raises(gpudl.ModelFileError,
                       match=r"layers.0.W should have shape \(4, 2, 5, 5\), found \(4, 2, 3, 3\)"):
        gpudl.load(path)
