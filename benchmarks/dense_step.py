"""One dense training step (forward, backward, SGD update) of an MNIST-sized MLP.

gpudl on the chosen device, against the same network written plainly in
NumPy and, where installed, PyTorch (CPU, or CUDA eager on a GPU).
Usage: python -m benchmarks.dense_step [--device cpu|cuda] [--batch 128]
"""
from __future__ import annotations

import argparse

import numpy as np

from .common import cpu_name, gpu_name, record, time_cpu, time_cuda

WIDTHS = (784, 512, 512, 10)


def init(seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.uniform(-1, 1, (b, a)).astype(np.float32) * np.sqrt(6 / (a + b))
          for a, b in zip(WIDTHS[:-1], WIDTHS[1:])]
    return ws, [np.zeros(b, np.float32) for b in WIDTHS[1:]]


def data(batch, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((batch, WIDTHS[0]), dtype=np.float32), rng.integers(0, WIDTHS[-1], batch)


def numpy_step(ws, bs, x, y, lr=0.01):
    """The plain NumPy baseline: the same MLP, forward, backward and update by hand."""
    acts, a = [x], x
    for i, (w, b) in enumerate(zip(ws, bs)):
        a = a @ w.T + b
        if i < len(ws) - 1:
            a = np.maximum(a, 0)
        acts.append(a)
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    delta = p / len(y)
    for i in reversed(range(len(ws))):
        gw, gb = delta.T @ acts[i], delta.sum(0)
        if i:
            delta = (delta @ ws[i]) * (acts[i] > 0)
        ws[i] -= lr * gw
        bs[i] -= lr * gb


def gpudl_step_fn(device, x, y):
    import gpudl
    from gpudl.layers import Dense, ReLU
    gpudl.set_device(device)
    ws, bs = init()
    layers = []
    for i, (w, b) in enumerate(zip(ws, bs)):
        d = Dense(w.shape[1], w.shape[0])
        d.params["W"], d.params["b"] = d.backend.asarray(w), d.backend.asarray(b)
        layers += [d, ReLU()] if i < len(ws) - 1 else [d]
    model = gpudl.Sequential(layers)
    be = model.backend
    xd, yd = be.asarray(x), be.asarray(y.astype(np.int64))
    loss, opt = gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01)
    loss.backend = be

    def step():
        loss(model.forward(xd, training=True), yd)
        model.backward(loss.backward(), need_input_grad=False)
        opt.step(model)
    return step, model


def torch_step_fn(device, x, y):
    import torch
    torch.manual_seed(0)
    ws, bs = init()
    layers = []
    for i, (w, b) in enumerate(zip(ws, bs)):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()] if i < len(ws) - 1 else [lin]
    dev = "cuda" if device == "cuda" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    model = torch.nn.Sequential(*layers).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    lossf = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        lossf(model(xt), yt).backward()
        opt.step()
    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    x, y = data(args.batch)

    # correctness first: one step of each implementation from the same weights
    ws, bs = init()
    numpy_step(ws, bs, x, y)
    step, model = gpudl_step_fn(args.device, x, y)
    step()
    be = model.backend
    dense = [l for l in model.layers if "W" in l.params]
    for d, w in zip(dense, ws):
        err = np.abs(be.to_numpy(d.params["W"]) - w).max()
        assert err < 1e-5, f"gpudl's step differs from the NumPy baseline by {err}"

    timer = time_cuda if args.device == "cuda" else time_cpu
    t_gpudl = timer(step, repeat=args.repeat)
    rows = [["gpudl", f"{t_gpudl * 1e3:.3f}", "1.00"]]
    if args.device == "cpu":
        ws, bs = init()
        t_np = time_cpu(lambda: numpy_step(ws, bs, x, y), repeat=args.repeat)
        rows.append(["NumPy, written plainly", f"{t_np * 1e3:.3f}", f"{t_np / t_gpudl:.2f}"])
    try:
        import torch  # noqa: F401
        if args.device == "cpu":
            t_torch = time_cpu(torch_step_fn("cpu", x, y), repeat=args.repeat)
            name = f"PyTorch CPU ({torch.get_num_threads()} threads)"
        else:
            fn = torch_step_fn("cuda", x, y)
            t_torch = time_cuda(fn, repeat=args.repeat)
            name = "PyTorch CUDA eager (TF32 off)"
        rows.append([name, f"{t_torch * 1e3:.3f}", f"{t_torch / t_gpudl:.2f}"])
    except ImportError:
        rows.append(["PyTorch", "not installed", "-"])
    device = gpu_name() if args.device == "cuda" else cpu_name()
    record(f"Dense training step, MLP {'-'.join(map(str, WIDTHS))}, batch {args.batch}, "
           f"float32, {args.device}", device, ["implementation", "median ms", "baseline / gpudl"],
           rows, notes="A ratio above 1 means gpudl is faster than that baseline. "
                       "One step = forward, softmax cross-entropy, backward, SGD update; "
                       "checked against the NumPy baseline's weights before timing.",
           json_path=args.json)


if __name__ == "__main__":
    main()
