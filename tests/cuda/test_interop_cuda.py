"""gpudl.interop with a model on the CUDA backend (simulator or GPU): the state
dict reads the device arrays back, to_torch's copy computes what the CUDA
model predicts, and weights loaded from torch tensors land on the device."""
import numpy as np
import pytest

import gpudl
from gpudl.layers import BatchNorm, Conv2D, Dense, Flatten, ReLU

torch = pytest.importorskip("torch")


def _model():
    gpudl.set_device("cuda")
    gpudl.manual_seed(4)
    return gpudl.Sequential([Conv2D(1, 2, 3, stride=2, padding="same"), BatchNorm(2), ReLU(),
                             Flatten(), Dense(18, 3)], input_shape=(1, 5, 5))


def test_cuda_model_round_trip_through_torch():
    from gpudl.interop import from_torch, to_torch
    model = _model()
    assert model.backend.name == "cuda"
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 5, 5)).astype(np.float32)
    net = to_torch(model)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
    # torch-side weights into the CUDA model: device arrays, the torch values
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(net.parameters()) + [b for b in net.buffers() if b.is_floating_point()]:
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    from_torch(net, model=model)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[k], v.numpy(), err_msg=k)
    device_type = type(model.backend.zeros((1,), np.float32))  # CuPy on a GPU
    assert all(type(layer.params[n]) is device_type and layer.params[n].dtype == np.float32
               for layer in model.layers for n in layer.params)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-5, atol=1e-6)
