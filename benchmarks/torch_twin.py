"""The same network in PyTorch as a gpudl Sequential, for the step benchmarks.

The conversion itself is gpudl.interop.to_torch (the package's, tested in
tests/test_interop.py); this adds what a benchmark needs to compare the two
after a step: every parameter and buffer as a pair of the gpudl layer holding
it and the live torch tensor.
"""
from __future__ import annotations


def twin(model, torch, device="cpu", dtype=None):
    """(torch module on ``device``, [(name, gpudl_layer, key, "param"|"buffer", tensor)]).

    ``dtype`` (say torch.float64, for a reference) converts the copy."""
    from gpudl.interop import to_torch, walk
    net = to_torch(model, dtype=dtype, device=device)
    live = dict(net.named_parameters())
    live.update(dict(net.named_buffers()))
    pairs = [(f"{layer.name}.{name}", layer, name, "param" if store == "params" else "buffer",
              live[key]) for key, layer, store, name in walk(model.layers)]
    return net, pairs
