"""gpudl.interop: every zoo model and its PyTorch twin agree (float64 forward
and gradients, both directions); state dicts have PyTorch's keys and round-trip
bit for bit."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpudl import zoo  # noqa: E402
from gpudl.gradcheck import float64_copy  # noqa: E402
from gpudl.interop import StateDictError, from_torch, to_torch, walk  # noqa: E402
from gpudl.model import Sequential  # noqa: E402

#: zoo models on small inputs (CPU, float64: a second or so each)
ZOO = {"mlp": (zoo.mlp, (64,)), "cnn": (zoo.small_cnn, (1, 8, 8)),
       "lenet": (zoo.lenet, (1, 12, 12)), "resnet": (zoo.resnet, (3, 9, 9)),
       "mobilenet": (zoo.mobilenet, (3, 10, 10))}


def f64(model):
    return Sequential([float64_copy(l) for l in model.layers], input_shape=model.input_shape)


def randomize_gpudl(model, seed=0):
    """Weights and batch-norm statistics away from their initial values, so a
    wrong key or a missed buffer shows."""
    rng = np.random.default_rng(seed)
    for key, layer, store, name in walk(model.layers):
        arr = getattr(layer, store)[name]
        value = rng.uniform(0.5, 1.5, arr.shape) if name == "running_var" else \
            rng.normal(0, 0.3, arr.shape)
        getattr(layer, store)[name] = np.asarray(value, dtype=arr.dtype)
    return model


def randomize_torch(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if not t.dtype.is_floating_point:
                continue
            r = torch.rand(t.shape, generator=g, dtype=t.dtype)
            t.copy_(0.5 + r if name.endswith("running_var") else (r - 0.5) * 0.6)
    return net


def zoo_model(name, dtype=np.float64):
    build, shape = ZOO[name]
    model = build(shape, classes=5) if name != "mlp" else build(shape, classes=5, hidden=(16, 8))
    model = randomize_gpudl(model)
    return f64(model) if dtype == np.float64 else model


def compare(model, net, training=True, seed=3, batch=3):
    """Inference outputs; then with ``training`` the training-mode outputs, the
    input gradient, every parameter gradient and the updated running statistics
    of ``model`` and ``net``. (gpudl's batch norm differentiates the batch
    statistics only, so gradients are compared in training mode.)"""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + tuple(model.input_shape))
    net.eval()
    with torch.no_grad():
        want = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(model.forward(np.array(x), training=False), want,
                               rtol=1e-9, atol=1e-11)
    if not training:
        return
    net.train()
    net.zero_grad(set_to_none=True)
    out = model.forward(np.array(x), training=training)
    r = rng.normal(size=out.shape)
    dx = model.backward(np.array(r))
    xt = torch.tensor(x, requires_grad=True)
    outt = net(xt)
    (outt * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(out, outt.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-10)
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    n = 0
    for key, layer, store, name in walk(model.layers):
        if store == "params":
            np.testing.assert_allclose(layer.grads[name], params[key].grad.numpy(),
                                       rtol=1e-8, atol=1e-10, err_msg=key)
        else:
            np.testing.assert_allclose(layer.buffers[name], buffers[key].numpy(),
                                       rtol=1e-10, atol=1e-12, err_msg=key)
        n += 1
    assert n == len([k for k in net.state_dict() if not k.endswith("num_batches_tracked")])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_to_torch_matches(name):
    model = zoo_model(name)
    net = to_torch(model)
    assert next(net.parameters()).dtype == torch.float64
    compare(model, net)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_from_torch_matches(name):
    """PyTorch weights (drawn on the torch side) into a gpudl model: built from
    the torch module, and loaded into a given model of the same layers."""
    net = randomize_torch(to_torch(zoo_model(name)))
    built = from_torch(net, input_shape=ZOO[name][1])
    assert type(built.layers[0]) is type(zoo_model(name).layers[0])
    compare(built, net)
    given = from_torch(randomize_torch(net, seed=2), model=zoo_model(name))
    compare(given, net)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_round_trip_is_bit_exact(name):
    model = zoo_model(name, dtype=np.float32)
    model.eval()
    net = to_torch(model)
    assert list(net.state_dict()) == list(model.state_dict())
    back = from_torch(net, input_shape=model.input_shape)
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32
        assert np.array_equal(a[k], b[k]), k
    x = np.random.default_rng(0).normal(size=(4,) + model.input_shape).astype(np.float32)
    assert np.array_equal(model.predict(x), back.predict(x))
    # and a torch module loaded from the gpudl state dict holds the same bits
    net2 = randomize_torch(to_torch(model))
    net2.load_state_dict({k: torch.from_numpy(v) for k, v in a.items()})
    for k, v in net2.state_dict().items():
        assert np.array_equal(v.numpy(), a[k]), k


def test_state_dict_keys_read_like_pytorch():
    model = zoo.resnet((3, 8, 8), classes=4)
    keys = list(model.state_dict())
    assert keys[:6] == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                        "3.block.0.weight"]
    # stem conv, bn, relu (0-2); then a block and its relu per stage (3-8); pool, dense
    assert "5.shortcut.0.weight" in keys and "5.shortcut.1.running_var" in keys
    assert "3.shortcut.0.weight" not in keys  # the first block's shortcut is the identity
    assert keys[-2:] == ["10.weight", "10.bias"]
    assert list(to_torch(model).state_dict()) == keys


def test_load_state_dict_lists_every_problem_and_writes_nothing():
    model = zoo.small_cnn((1, 8, 8), classes=3)
    before = model.state_dict()
    bad = {k: v.copy() for k, v in before.items()}
    del bad["0.bias"]
    bad["2.weight"] = np.zeros((5, 16, 3, 3))
    bad["9.weight"] = np.zeros(3)
    bad["0.weight"] = bad["0.weight"] + 1.0  # valid, must not be written either
    with pytest.raises(StateDictError) as e:
        model.load_state_dict(bad)
    msg = str(e.value)
    assert "missing (1): 0.bias" in msg and "unexpected (1): 9.weight" in msg
    assert "2.weight: the model has shape (32, 16, 3, 3), the state dict (5, 16, 3, 3)" in msg
    for k, v in model.state_dict().items():
        assert np.array_equal(v, before[k])
    # strict=False skips the missing and the unexpected, still refuses bad shapes
    bad["2.weight"] = before["2.weight"]
    model.load_state_dict(bad, strict=False)
    assert np.array_equal(model.state_dict()["0.weight"], before["0.weight"] + 1.0)


def test_pytorch_extras_and_tensors_accepted(tmp_path):
    model = zoo.resnet((3, 8, 8), classes=4)
    net = randomize_torch(to_torch(model))
    net.train()
    net(torch.randn(2, 3, 8, 8))  # a step: PyTorch's own BN would count it
    sd = net.state_dict()
    plain = torch.nn.BatchNorm2d(4).state_dict()
    assert "num_batches_tracked" in plain  # what a user's PyTorch model carries
    sd["1.num_batches_tracked"] = torch.tensor(7)
    model.load_state_dict(sd)
    for k, v in model.state_dict().items():
        assert np.array_equal(v, sd[k].numpy()), k
    # torch.save / torch.load(weights_only=True) go straight in, as does a path
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    other = zoo.resnet((3, 8, 8), classes=4).load_state_dict(torch.load(path, weights_only=True))
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())
    third = zoo.resnet((3, 8, 8), classes=4).load_state_dict(path)
    assert all(np.array_equal(v, model.state_dict()[k]) for k, v in third.state_dict().items())


def test_safetensors_files_go_straight_in(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = randomize_gpudl(zoo.mobilenet((3, 8, 8), classes=4))
    path = tmp_path / "w.safetensors"
    st.save_file(model.state_dict(), str(path))
    fresh = zoo.mobilenet((3, 8, 8), classes=4)
    fresh.load_state_dict(st.load_file(str(path)))
    again = zoo.mobilenet((3, 8, 8), classes=4).load_state_dict(path)
    for m in (fresh, again):
        for k, v in m.state_dict().items():
            assert np.array_equal(v, model.state_dict()[k]), k


def test_a_users_pytorch_sequential_builds():
    """Plain PyTorch modules, as a user writes them, become gpudl layers."""
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 6, 2, padding="same", bias=False),
                        nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Tanh(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.0),
                        nn.Linear(6, 3), nn.Softmax(dim=1)).double()
    randomize_torch(net)
    model = from_torch(net, input_shape=(2, 9, 9))
    assert [type(l).__name__ for l in model.layers] == [
        "Conv2D", "BatchNorm", "ReLU", "MaxPool2D", "Conv2D", "AvgPool2D", "Tanh",
        "GlobalAvgPool2D", "Flatten", "Dropout", "Dense", "Softmax"]
    assert model.dtype == np.float64
    compare(model, net)  # (training mode too: a dropout of p > 0 would draw other masks)
    assert from_torch(nn.Sequential(nn.Dropout(0.3))).layers[0].p == 0.3
    assert list(model.state_dict()) == [k for k in net.state_dict()
                                        if not k.endswith("num_batches_tracked")]


def test_unsupported_modules_are_all_named():
    nn = torch.nn
    net = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2, bias=False),
                        nn.Conv2d(1, 1, 3, padding_mode="reflect"))
    with pytest.raises(NotImplementedError) as e:
        from_torch(net)
    msg = str(e.value)
    assert "'1' (GELU)" in msg and "'2' (Linear): a Linear without bias" in msg
    assert "'3' (Conv2d): padding_mode 'reflect'" in msg
    with pytest.raises(TypeError, match="carries no architecture"):
        from_torch(net.state_dict())


def _layer_cases():
    from gpudl import layers as L
    return {
        # "same" with stride 2 and an even kernel: the odd extra pad at the bottom/right
        "same_stride2": (lambda: [L.Conv2D(2, 3, 2, stride=2, padding="same"),
                                  L.Conv2D(3, 3, 3, stride=2, padding="same"), L.Flatten()],
                         [(2, 7, 7), (2, 8, 8)]),
        "transpose": (lambda: [L.Conv2DTranspose(2, 3, 3, stride=2, padding=1, output_padding=1),
                               L.ReLU()], [(2, 5, 4)]),
        "separable_concat": (lambda: [L.SeparableConv2D(2, 4, 3, padding="same"),
                                      L.Concat([L.Conv2D(4, 2, 1), None,
                                                [L.MaxPool2D(3, 1, 1), L.Sigmoid()]]),
                                      L.AvgPool2D(3, 2, 1), L.DepthwiseConv2D(10, 3), L.Flatten()],
                             [(2, 8, 8)]),
        "residual_identity": (lambda: [L.Dense(6, 6), L.Residual([L.Dense(6, 6), L.Tanh()]),
                                       L.BatchNorm(6)], [(6,)]),
    }


@pytest.mark.parametrize("case", sorted(_layer_cases()))
def test_layer_cases_match_both_ways(case):
    build, shapes = _layer_cases()[case]
    for shape in shapes:
        model = f64(randomize_gpudl(Sequential(build(), input_shape=shape)))
        net = to_torch(model)
        compare(model, net, training=True)
        back = from_torch(randomize_torch(net), input_shape=shape)
        compare(back, net)


def test_same_padding_really_is_asymmetric():
    """The case above can fail: a symmetric pad gives other numbers."""
    from gpudl import layers as L
    conv = L.Conv2D(1, 1, 2, stride=2, padding="same")
    assert conv.pads((7, 7)) == (0, 1, 0, 1)
    model = f64(Sequential([conv], input_shape=(1, 7, 7)))
    net = to_torch(model)
    x = torch.randn(1, 1, 7, 7, dtype=torch.float64)
    sym = torch.nn.functional.conv2d(x, net[0].weight, net[0].bias, stride=2, padding=1)
    assert sym.shape != net(x).shape or not torch.allclose(sym, net(x))


def test_step_and_perceptron_convert():
    from gpudl import layers as L
    model = Sequential([L.Perceptron(3)], input_shape=(3,))
    net = to_torch(model)
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    got = net(torch.from_numpy(x)).detach().numpy()
    assert np.array_equal(got, model.forward(x))
    back = from_torch(net)
    assert type(back.layers[0]).__name__ == "Perceptron"
    step = Sequential([L.Dense(3, 2), L.Step()], input_shape=(3,))
    assert np.array_equal(to_torch(step)(torch.from_numpy(x)).detach().numpy(), step.forward(x))


def test_to_torch_needs_an_input_shape():
    from gpudl import layers as L
    with pytest.raises(ValueError, match="needs an input_shape"):
        to_torch(Sequential([L.Conv2D(1, 2, 3)]))
