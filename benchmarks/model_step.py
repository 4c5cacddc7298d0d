"""A whole training step of the zoo networks, gpudl against the same network in PyTorch.

One step = forward (training mode: batch norm on batch statistics), softmax
cross-entropy, backward, SGD with momentum, the work of one batch in
``gpudl.Trainer`` (model.forward(x, training=True), loss(out, y),
model.backward(loss.backward(), need_input_grad=False), optimizer.step(model)).
The PyTorch twin (benchmarks/torch_twin.py) is built by walking the gpudl
model and copying its weights, so both start from the same point; PyTorch runs
eager, float32 (TF32 off; cudnn.benchmark on a GPU; all logical CPUs on a CPU),
on the same device in the same run.

Before timing, both take one step on the same batch from the same weights,
and PyTorch float64 on the CPU computes the same step as the referee: the
losses must agree to 1e-4 relative, gpudl's gradients must agree with the
float64 ones to 1e-3 and its weights and batch-norm running statistics after
the step to 1e-5, each relative to the tensor's largest entry (PyTorch
float32 is reported against float64 too, not judged). A float32 forward may
put a ReLU input that is within rounding of 0 on the other side of it (a
"flip", about one in a million inputs), which moves the gradient of every
layer below by up to a few 1e-3: flips are counted for both, and where gpudl
has one its tolerances loosen to 3e-2 and 1e-3. Batch norm's gamma and beta
start randomised (not 1 and 0) so that they take part.

Under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the CUDA path runs once
with host timers against PyTorch on the CPU, only to check the logic; nothing
is recorded. Usage:
  python -m benchmarks.model_step [--device cpu|cuda] [--models lenet resnet]
         [--batch N] [--size 32] [--repeat N] [--json out.json]
  NUMBA_ENABLE_CUDASIM=1 python -m benchmarks.model_step --device cuda --batch 2 --size 8
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from .common import cpu_name, gpu_name, record, time_cpu, time_cuda
from .torch_twin import twin

#: name -> (zoo builder name, per-sample input shape)
MODELS = {"lenet": ("lenet", (1, 32, 32)), "resnet": ("resnet", (3, 32, 32)),
          "mobilenet": ("mobilenet", (3, 32, 32))}
CLASSES = 10
LR, MOMENTUM = 0.01, 0.9
LOSS_TOL, GRAD_TOL, VALUE_TOL = 1e-4, 1e-3, 1e-5
#: looser bounds for when gpudl's float32 forward puts a ReLU input on the other
#: side of 0 from float64's (see check): one such element was seen to move the
#: gradients of every layer below it by 1e-3 of their largest entry
KINK_GRAD_TOL, KINK_VALUE_TOL = 3e-2, 1e-3


def data(batch, in_shape, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + tuple(in_shape), dtype=np.float32)
    return x, rng.integers(0, CLASSES, batch).astype(np.int64)


def build_gpudl(name, device, size=32):
    import gpudl
    from gpudl import zoo
    from gpudl.layers import BatchNorm, manual_seed
    gpudl.set_device(device)
    manual_seed(0)
    builder, in_shape = MODELS[name]
    model = getattr(zoo, builder)(in_shape=in_shape[:1] + (size, size), classes=CLASSES)
    rng = np.random.default_rng(2)
    for layer in model.walk():
        if isinstance(layer, BatchNorm):  # not 1 and 0, so the check sees them
            c, be = layer.num_features, layer.backend
            layer.params["gamma"] = be.asarray(1 + 0.2 * rng.standard_normal(c), np.float32)
            layer.params["beta"] = be.asarray(0.2 * rng.standard_normal(c), np.float32)
    return model


def gpudl_step_fn(model, x, y):
    import gpudl
    be = model.backend
    xd, yd = be.asarray(x), be.asarray(y)
    loss = gpudl.losses.CrossEntropy()
    loss.backend = be
    opt = gpudl.optim.SGD(LR, momentum=MOMENTUM)
    model.train()

    def step():
        value = loss(model.forward(xd, training=True), yd)
        model.backward(loss.backward(), need_input_grad=False)
        opt.step(model)
        return value
    return step


def torch_step_fn(torch, net, dev, x, y):
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = lossf(net(xt), yt)
        loss.backward()
        opt.step()
        return loss
    step.net = net
    return step


def _rel(a, b):
    """max |a - b| relative to the largest |b| (0 when both are all zero)."""
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / scale if scale else diff


class ReluSigns:
    """Records which inputs of every torch.nn.ReLU in a net are > 0, in order."""

    def __init__(self, torch, net):
        self.signs = []
        self._handles = [m.register_forward_hook(self._hook) for m in net.modules()
                         if isinstance(m, torch.nn.ReLU)]

    def _hook(self, module, inputs, output):
        self.signs.append((inputs[0] > 0).cpu().numpy())

    def remove(self):
        for h in self._handles:
            h.remove()
        return self.signs


def gpudl_relu_signs(model):
    """Which inputs of every gpudl ReLU were > 0 in the last forward, in walk order
    (the twin's module order)."""
    from gpudl.layers import ReLU
    return [l.backend.to_numpy(l._x) > 0 for l in model.walk() if isinstance(l, ReLU)]


def _flips(signs, ref_signs):
    return sum(int(np.count_nonzero(a != b)) for a, b in zip(signs, ref_signs))


def reference_step(torch, model, x, y):
    """Gradients, weights after one SGD step and BN running statistics of the
    network in float64 on the CPU: the referee when the float32 results differ;
    and the signs of its ReLU inputs."""
    net, pairs = twin(model, torch, "cpu", dtype=torch.float64)
    net.train()
    rec = ReluSigns(torch, net)
    loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x).double()),
                                             torch.from_numpy(y))
    loss.backward()
    signs = rec.remove()
    out = []
    for _, _, _, kind, t in pairs:
        if kind == "param":  # the first step of momentum SGD is w - lr * g
            out.append((t.grad.numpy(), (t - LR * t.grad).detach().numpy()))
        else:
            out.append((None, t.detach().numpy()))
    return float(loss.detach()), out, signs


def check(torch, model, pairs, gstep, tstep, x, y, name, verbose=True):
    """One step of gpudl and of PyTorch float32 from the same weights on the
    same batch, and one of PyTorch float64 as the referee.

    Gradients are compared directly: comparing w after - w before instead
    would be limited by the float32 spacing of w (about 1e-7 |w|), coarse
    against an update of lr * grad.

    ReLU has a kink at 0: a float32 forward may put an input that float64
    puts at +1e-7 at -1e-8, and that one element's gradient then differs by
    its whole size in every layer below it (seen: one of the 1M inputs of
    resnet's second ReLU in gpudl, of mobilenet's in PyTorch, each moving
    those layers' gradients by 1-3e-3). Such "flips" against float64 are
    counted for both; where gpudl has any, its tolerances loosen to
    KINK_GRAD_TOL and KINK_VALUE_TOL. Returns the loss's relative error, the
    worst relative errors (see _rel): gradients gpudl vs PyTorch, gpudl vs
    float64, PyTorch vs float64, weights after the step and BN running
    statistics gpudl vs PyTorch; and the flips of gpudl and PyTorch."""
    def host(layer, store, key):
        return layer.backend.to_numpy(getattr(layer, store)[key])

    def t_host(t):
        return t.detach().cpu().numpy()

    for pname, l, k, kind, t in pairs:  # the copies really are equal
        if not np.array_equal(t_host(t), host(l, "params" if kind == "param" else "buffers", k)):
            raise AssertionError(f"{name}: PyTorch's {pname} was not copied from gpudl's")
    # the referee first, before gpudl's step moves the weights it reads
    ref_loss, ref, ref_signs = reference_step(torch, model, x, y)
    g_loss = gstep()
    g_flips = _flips(gpudl_relu_signs(model), ref_signs)
    rec = ReluSigns(torch, tstep.net)
    t_loss = float(tstep().item())
    t_flips = _flips(rec.remove(), ref_signs)
    loss_rel = abs(g_loss - t_loss) / abs(t_loss)
    loss_ref = abs(g_loss - ref_loss) / abs(ref_loss)
    rows = []
    worst = dict.fromkeys(("g_t", "g_64", "t_64", "w", "buf"), 0.0)
    for (pname, l, k, kind, t), (ref_grad, ref_val) in zip(pairs, ref):
        if kind == "param":
            gg, tg = host(l, "grads", k), t_host(t.grad)
            errs = (_rel(gg, tg), _rel(gg, ref_grad), _rel(tg, ref_grad))
            for key, e in zip(("g_t", "g_64", "t_64"), errs):
                worst[key] = max(worst[key], e)
            g_val = host(l, "params", k)
        else:
            errs = None
            g_val = host(l, "buffers", k)
        v_rel, v_ref = _rel(g_val, t_host(t)), _rel(g_val, ref_val)
        worst["w" if kind == "param" else "buf"] = max(worst["w" if kind == "param" else "buf"],
                                                       v_rel)
        rows.append((pname, kind, tuple(t.shape), errs, v_rel, v_ref))
    if verbose:
        print(f"\n{name}: loss gpudl {g_loss:.7f}, PyTorch {t_loss:.7f} (rel. err {loss_rel:.1e}), "
              f"float64 {ref_loss:.7f}; ReLU inputs on the other side of 0 from float64's: "
              f"gpudl {g_flips}, PyTorch {t_flips}")
        print(f"  {'tensor':<28} {'kind':<6} {'shape':<16} {'grad: gpudl/torch':>17} "
              f"{'gpudl/f64':>9} {'torch/f64':>9} {'value after: gpudl/torch':>24} "
              f"{'gpudl/f64':>9}")
        for pname, kind, shape, errs, v_rel, v_ref in rows:
            e = ["-"] * 3 if errs is None else [f"{v:.1e}" for v in errs]
            print(f"  {pname:<28} {kind:<6} {str(shape):<16} {e[0]:>17} {e[1]:>9} {e[2]:>9} "
                  f"{v_rel:>24.1e} {v_ref:>9.1e}")
    # gpudl must match the float64 referee; PyTorch float32 is reported, not judged
    grad_tol, value_tol = (KINK_GRAD_TOL, KINK_VALUE_TOL) if g_flips else (GRAD_TOL, VALUE_TOL)
    if g_flips and verbose:
        print(f"  (gpudl has {g_flips} ReLU flip(s): tolerances {grad_tol} for gradients, "
              f"{value_tol} for values)")
    bad = [r for r in rows if (r[3] is not None and r[3][1] > grad_tol) or r[5] > value_tol]
    if not (loss_rel <= LOSS_TOL and loss_ref <= LOSS_TOL) or bad:
        raise AssertionError(
            f"{name}: gpudl disagrees after one step: loss rel. err {loss_rel:.1e} vs PyTorch, "
            f"{loss_ref:.1e} vs float64 (tolerance {LOSS_TOL}); tensors over {grad_tol} "
            f"(gradient) or {value_tol} (value after the step), both vs float64: "
            + (", ".join(f"{r[0]} {r[3][1] if r[3] else 0:.1e}/{r[5]:.1e}" for r in bad)
               or "none") + f"; ReLU flips vs float64: gpudl {g_flips}, PyTorch {t_flips}")
    return loss_rel, worst, (g_flips, t_flips)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet"], choices=list(MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32,
                   help="image side (default 32; smaller only to check the logic quickly, "
                        "e.g. under the simulator; lenet pads up to 32)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed steps (default 20 on a GPU, 10 on a CPU, 1 under the simulator)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import gpudl
    be = gpudl.set_device(args.device)
    sim = args.device == "cuda" and be.simulator
    on_gpu = args.device == "cuda" and not sim
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("model_step: PyTorch sees no GPU; it must run on the same device")
    tdev = "cuda" if on_gpu else "cpu"  # under the simulator PyTorch checks on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(os.cpu_count())
    warmup = 3 if on_gpu else (0 if sim else 1)
    repeat = args.repeat or (20 if on_gpu else (1 if sim else 10))

    rows = []
    for name in args.models:
        t0 = time.perf_counter()
        model = build_gpudl(name, args.device, args.size)
        x, y = data(args.batch, model.input_shape)
        net, pairs = twin(model, torch, tdev)
        gstep = gpudl_step_fn(model, x, y)
        tstep = torch_step_fn(torch, net, tdev, x, y)
        loss_rel, worst, flips = check(torch, model, pairs, gstep, tstep, x, y, name)
        t_check = time.perf_counter() - t0
        # one after the other, as dense_step: alternating single steps on a CPU
        # was tried and slowed PyTorch 2-10x (OpenBLAS threads still spinning
        # after gpudl's products take the cores its OpenMP threads need)
        timer = time_cuda if on_gpu else time_cpu
        t_gpudl = timer(gstep, warmup=warmup, repeat=repeat)
        t_torch = timer(tstep, warmup=warmup, repeat=repeat)
        print(f"{name}: check {t_check:.1f} s, gpudl {t_gpudl * 1e3:.2f} ms, "
              f"PyTorch {t_torch * 1e3:.2f} ms", flush=True)
        has_bn = any(kind == "buffer" for *_, kind, _t in pairs)
        label = name if args.size == 32 else f"{name} ({args.size}x{args.size})"
        rows.append([label, args.batch, f"{model.num_params():,}", f"{t_gpudl * 1e3:.2f}",
                     f"{t_torch * 1e3:.2f}", f"{t_torch / t_gpudl:.2f}", f"{loss_rel:.1e}",
                     f"{worst['g_t']:.1e}", f"{worst['g_64']:.1e}", f"{worst['t_64']:.1e}",
                     f"{worst['w']:.1e}", f"{worst['buf']:.1e}" if has_bn else "-",
                     f"{flips[0]}/{flips[1]}"])

    if on_gpu:
        where, base = gpu_name(), "PyTorch CUDA eager (TF32 off, cudnn.benchmark)"
    elif sim:
        where, base = "CUDA simulator (timings meaningless)", "PyTorch CPU (check only)"
        os.environ["GPUDL_BENCH_NO_RECORD"] = "1"  # simulator timings are not results
    else:
        where, base = cpu_name(), f"PyTorch CPU ({torch.get_num_threads()} threads)"
    header = ["model", "batch", "params", "gpudl ms", "torch ms", "torch/gpudl",
              "loss err", "grad err", "grad err gpudl/f64", "grad err torch/f64",
              "weight err", "BN stats err", "ReLU flips gpudl/torch"]
    record(f"Training step of zoo models (SGD momentum), float32, {args.device}, vs {base}",
           where, header, rows, json_path=args.json,
           notes=f"Median of {repeat} steps after {warmup} warm-up steps"
                 + (" (CUDA events)" if on_gpu else "") + ", gpudl's then PyTorch's. "
                 + "torch/gpudl = PyTorch "
                 "time / gpudl time (above 1: gpudl faster). One step = forward in training "
                 "mode, softmax cross-entropy, backward, SGD update (lr "
                 f"{LR}, momentum {MOMENTUM}); gpudl's step reads the loss back to the host, "
                 "as its Trainer does, PyTorch's does not. Errors (max |a - b| over the tensor's "
                 "max |b|, worst tensor) from one step of each from the same weights on the "
                 "same batch, before timing: loss and grad err gpudl vs PyTorch float32; grad "
                 "err of each against PyTorch float64 on the CPU (the referee); weights after "
                 "the update and BN running statistics gpudl vs PyTorch float32. ReLU flips: "
                 "ReLU inputs (of all, over the batch) on the other side of 0 from float64's; "
                 "one moves every gradient below it (the grad errors near 1e-3).")


if __name__ == "__main__":
    main()
