"""Reduced precision, gpudl against PyTorch of the same precision, on the ResNet:
its 3x3 convolutions one by one (part "conv", benchmarks/precision_conv.py) and
its whole training step (part "step", here).

step: zoo.resnet (3x32x32, as graph_step.py) at batch 32, 64 and 256, one
Trainer.train_on_batch (forward, cross-entropy, backward, SGD momentum 0.9)
under gpudl's policy (gpudl.precision.using; fp32, and bf16-mixed with
GPUDL_TENSOR_CORES=0 and =1) against the torch_twin network with the same
weights in PyTorch eager: fp32 with TF32 off, and under
torch.autocast(dtype=torch.bfloat16). --step-policies tf32 adds gpudl tf32
against PyTorch with allow_tf32 on.

Checked before timing (a failure is reported, not timed, and exits 1): gpudl's
gradients after one step against the CPU backend's step under the same policy
from the same weights (worst |diff| over each tensor's largest entry). A
reduced-precision step is chaotic: moving the input by one FP32 ulp (what
another summation order does) moved BF16 gradients by up to 3e-2 and TF32 ones
by 6e-2 (batch 32, on the CPU), since a sum that changes in its last bit can
round to the neighbouring BF16 value, and batch norm's backward cancels most
of what it sums. So each tensor's tolerance is 3x that CPU step's own error
against PyTorch float64 (the policy's rounding noise), and at least 1e-3
(model_step's GRAD_TOL), 4 units of the format, or 3e-2 once a ReLU input
changes side (model_step's rule). PyTorch's step is checked against float64
for sanity: the norm error of all its gradients within 3x that of gpudl's CPU
step, at least 1e-3 (at random init both BF16 steps are ~0.1 off float64;
autocast also keeps activations in BF16, which gpudl does not, so the two are
not held to each other).

Times: medians of CUDA events after warm-up (host timer on a CPU). Ratios are
baseline time / gpudl time: above 1 means gpudl is faster. TFLOP/s: 2 per
multiply-add of the convolutions (all three ops alike) and, for the step, of
its conv/dense products forward and backward. --device cpu runs the same
paths tiny against PyTorch CPU (no TF32 there, nor tensor cores: those columns
say so); --device cuda without a GPU exits 2. Usage:
  python -m benchmarks.precision_step [--device cuda|cpu] [--parts conv step]
      [--conv-batch 32 64] [--step-batch 32 64 256] [--precisions fp32 tf32 bf16 fp16]
      [--step-policies fp32 bf16-mixed] [--size 32] [--repeat N] [--budget S] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback

import numpy as np

from . import model_step as ms
from . import precision_conv as pc
from .common import commit, cpu_name, gpu_name, record, time_cpu, time_cuda, versions
from .graph_step import make_trainer
from .precision_conv import (FORMATS, NA, _err, _ms, _ratio, _tf, count_tc_calls, norm_err,
                             tensor_cores, torch_tf32, unit, walk_shapes)
from .torch_twin import twin

POLICY_FMT = {"fp32": None, "tf32": "tf32", "bf16-mixed": "bf16"}
#: step tolerances: this many times the policy's own rounding noise (see the docstring)
NOISE_FACTOR = 3.0


def step_tol(fmt, flips):
    tol = max(ms.GRAD_TOL, 4 * unit(fmt) if fmt else 0.0)
    return max(tol, ms.KINK_GRAD_TOL) if flips else tol


def product_flops(model, batch):
    """Multiply-add FLOPs of one training step's convolutions and dense layers:
    forward, weight gradient and input gradient (none for the first layer)."""
    from gpudl.layers import Conv2D, Dense
    total, first = 0.0, True
    for layer, shape in walk_shapes(model.layers, tuple(model.input_shape)):
        if isinstance(layer, Conv2D):
            o, oh, ow = layer.output_shape(shape)
            kh, kw = layer.kernel_size
            f = 2.0 * batch * o * oh * ow * (shape[0] // layer.groups) * kh * kw
        elif isinstance(layer, Dense):
            f = 2.0 * batch * layer.in_features * layer.out_features
        else:
            continue
        total += f * (2 if first else 3)
        first = False
    return total


# ---- (b) the whole step ------------------------------------------------------------
def leaf_params(model):
    return [(l, k) for l in model.walk() if not getattr(l, "layers", None) for k in l.params]


def gpudl_grads(model):
    be = model.backend
    return [be.to_numpy(l.grads[k]).astype(np.float64) for l, k in leaf_params(model)]


def torch_grads(model, pairs):
    """The twin's gradients, in gpudl's order (pairs name the gpudl layer of each tensor)."""
    by = {(id(l), k): t for _, l, k, kind, t in pairs if kind == "param"}
    return [by[(id(l), k)].grad.detach().double().cpu().numpy() for l, k in leaf_params(model)]


def worst(a, b):
    return max((ms._rel(u, v) for u, v in zip(a, b)), default=0.0)


def judge(g, g_ref, noise, floor):
    """(err, tol) of the tensor nearest its tolerance, tol = max(floor, NOISE_FACTOR x
    that tensor's noise), over gradients g against g_ref."""
    out = (0.0, floor)
    for a, r, n in zip(g, g_ref, noise):
        e, t = ms._rel(a, r), max(floor, NOISE_FACTOR * n)
        if e * out[1] > out[0] * t:
            out = (e, t)
    return out


def flat(gs):
    return np.concatenate([g.ravel() for g in gs])


def torch_step(torch, net, dev, x, y, policy):
    """model_step's PyTorch step, under autocast(bfloat16) for bf16-mixed."""
    xt, yt = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=ms.LR, momentum=ms.MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    net.train()
    cast = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if policy == "bf16-mixed" \
        else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with cast():
            loss = lossf(net(xt), yt)
        loss.backward()
        opt.step()
    return step


def step_case(ctx, batch, policy):
    """One batch size and policy: the CPU reference step, gpudl (TC off, on), PyTorch."""
    from gpudl import precision as prec
    torch, dev, on_gpu, size = ctx["torch"], ctx["device"], ctx["on_gpu"], ctx["size"]
    fmt = POLICY_FMT[policy]
    ref = ms.build_gpudl("resnet", "cpu", size)
    x, y = ms.data(batch, ref.input_shape)
    res = {"flops": product_flops(ref, batch), "modes": {}}
    # referees from the same start: PyTorch float64 (one forward/backward) and the
    # CPU backend's step under the same policy
    net64, pairs64 = twin(ref, torch, "cpu", dtype=torch.float64)
    net64.train()
    torch.nn.functional.cross_entropy(net64(torch.from_numpy(x).double()),
                                      torch.from_numpy(y)).backward()
    g64 = torch_grads(ref, pairs64)
    net_t, pairs_t = twin(ref, torch, ctx["tdev"])
    del net64, pairs64
    w0 = [ref.backend.to_numpy(l.params[k]).copy() for l, k in leaf_params(ref)]
    tr_ref, xr, yr = make_trainer(ref, x, y)
    with prec.using(policy):
        tr_ref.train_on_batch(xr, yr)
    g_ref, signs_ref = gpudl_grads(ref), ms.gpudl_relu_signs(ref)
    noise = [ms._rel(a, r) for a, r in zip(g_ref, g64)]  # the policy's own rounding noise
    res["cpu policy err f64"] = max(noise)
    for mode in ([False, True] if on_gpu and fmt else [None]):
        key = "TC" if mode else "gpudl"
        model = ms.build_gpudl("resnet", dev, size)
        if not all(np.array_equal(model.backend.to_numpy(l.params[k]), w) for (l, k), w in
                   zip(leaf_params(model), w0)):  # the builder's seeds must not depend on it
            raise AssertionError(f"step b{batch}: the {dev} model starts from other weights")
        trainer, xd, yd = make_trainer(model, x, y)
        step = lambda: trainer.train_on_batch(xd, yd)  # noqa: E731
        with prec.using(policy), tensor_cores(mode), count_tc_calls(on_gpu) as calls:
            step()
        g = gpudl_grads(model)
        flips = ms._flips(ms.gpudl_relu_signs(model), signs_ref)
        err, tol = judge(g, g_ref, noise, step_tol(fmt, flips))
        r = res["modes"][key] = {"err": err, "tol": tol, "relu flips": flips,
                                 "err f64": worst(g, g64), "tc calls": calls[0]}
        if not err <= tol:
            raise AssertionError(f"step b{batch} {policy} ({key}): gradients differ from the "
                                 f"CPU step of the same policy by {err:.1e} (tolerance {tol})")
        if mode and not calls[0]:
            r["time"] = "no TC call"
            continue
        with prec.using(policy), tensor_cores(mode):
            r["time"] = ctx["timer"](step, warmup=ctx["warmup"], repeat=ctx["repeat"])
    if policy == "tf32" and not on_gpu:
        res["torch"] = "no TF32 on a CPU"
        return res
    with torch_tf32(torch, policy == "tf32"):
        tstep = torch_step(torch, net_t, ctx["tdev"], x, y, policy)
        tstep()
        gt = torch_grads(ref, pairs_t)
        res["torch err f64"] = worst(gt, g64)
        err, bound = norm_err(flat(gt), flat(g64)), max(
            ms.GRAD_TOL, NOISE_FACTOR * norm_err(flat(g_ref), flat(g64)))
        res["torch norm err f64"], res["torch sanity bound"] = err, bound
        if not err <= bound:
            raise AssertionError(f"step b{batch} {policy}: PyTorch's gradients differ from "
                                 f"float64 by {err:.1e} in norm (sanity bound {bound:.1e})")
        res["torch"] = ctx["timer"](tstep, warmup=ctx["warmup"], repeat=ctx["repeat"])
    return res


def step_rows(batch, policy, res):
    rows = []
    for key, r in res["modes"].items():
        rows.append([batch, policy, "on" if key == "TC" else ("off" if len(res["modes"]) > 1
                                                             else NA),
                     _ms(r["time"]), _ms(res["torch"]), _ratio(res["torch"], r["time"]),
                     _tf(res["flops"], r["time"]), _tf(res["flops"], res["torch"]),
                     f"{_err(r['err'])} ({r['tol']:.0e})",
                     f"{_err(r['err f64'])} / {_err(res.get('torch err f64'))}",
                     r["relu flips"], r["tc calls"]])
    return rows


# ---- driver ------------------------------------------------------------------------
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--parts", nargs="+", default=["conv", "step"], choices=["conv", "step"])
    p.add_argument("--conv-batch", type=int, nargs="+", default=[32, 64])
    p.add_argument("--step-batch", type=int, nargs="+", default=[32, 64, 256])
    p.add_argument("--precisions", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--step-policies", nargs="+", default=["fp32", "bf16-mixed"],
                   choices=list(POLICY_FMT))
    p.add_argument("--size", type=int, default=32, help="image side (smaller to check the logic)")
    p.add_argument("--repeat", type=int, default=None, help="timed calls (20 GPU, 3 CPU)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds: cases not started by then are reported as skipped")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    left = lambda: float("inf") if args.budget is None else args.budget - (  # noqa: E731
        time.perf_counter() - t_start)
    try:
        import torch
    except ImportError:
        print("precision_step: needs PyTorch for its baselines; nothing was measured.",
              file=sys.stderr)
        sys.exit(2)
    on_gpu = args.device == "cuda"
    if on_gpu:
        pc._gpu_or_exit()
    import gpudl
    convs = pc.resnet_convs(args.size)  # built on the CPU backend: shapes only
    be = gpudl.set_device(args.device)
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(os.cpu_count())
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ctx = {"torch": torch, "be": be, "device": args.device, "tdev": "cuda" if on_gpu else "cpu",
           "on_gpu": on_gpu, "size": args.size, "timer": time_cuda if on_gpu else time_cpu,
           "warmup": 3 if on_gpu else 1, "repeat": args.repeat or (20 if on_gpu else 3)}
    failed = []
    conv = {"rows": [], "cases": []}
    step = {"rows": [], "cases": []}

    where = gpu_name() if on_gpu else cpu_name()
    tname = "PyTorch CUDA (cudnn.benchmark, allow_tf32 only for tf32)" if on_gpu else \
        f"PyTorch CPU ({torch.get_num_threads()} threads)"
    timing = (f"median of {ctx['repeat']} after {ctx['warmup']} warm-up, "
              + ("CUDA events" if on_gpu else "host timer"))
    size = "" if args.size == 32 else f", {args.size}x{args.size} input"
    notes = {
        "conv": (f"zoo.resnet's 3x3 convolutions{size}; gpudl backend ops with precision= "
                 f"(inputs rounded each call, FP32 sums; TC = GPUDL_TENSOR_CORES=1) against "
                 f"{tname} of the same precision (bfloat16/float16 tensors for the 16-bit "
                 f"ones); {timing}. torch / gpudl > 1: gpudl faster (best "
                 f"of TC off/on). Errors: ||got - ref|| / ||ref|| against the CPU backend's op "
                 f"of the same precision (tolerance {pc.OP_TOL} gpudl, 4 units of the format "
                 f"torch). 'no TC call': GPUDL_TENSOR_CORES=1 ran no tensor-core kernel."),
        "step": (f"zoo.resnet training step{size} (Trainer.train_on_batch, SGD momentum "
                 f"{ms.MOMENTUM}) under gpudl's policy against the same network in {tname} "
                 f"eager (bf16-mixed: under torch.autocast bfloat16); {timing}. torch / gpudl "
                 f"> 1: gpudl faster. TFLOP/s of the step's conv/dense products. Gradients "
                 f"after the first step against the CPU backend's step of the same policy (worst |diff| / largest entry, tolerance "
                 f"in brackets: {NOISE_FACTOR:g}x that step's own error against float64, "
                 f"at least a floor), and both against PyTorch float64.")}
    vers = versions()

    def dump(complete):
        """The JSON so far: rewritten after every case, so a run stopped by a timeout
        still leaves the cases it finished."""
        if not args.json:
            return
        doc = {"schema": "gpudl-precision-step/1", "device": where, "device_kind": args.device,
               "commit": commit(), "versions": vers, "complete": complete, "notes": notes,
               "tolerances": {"op": pc.OP_TOL, "torch op": {p: pc.torch_op_tol(FORMATS[p])
                                                         for p in FORMATS},
                              "step": {p: step_tol(f, 0) for p, f in POLICY_FMT.items()},
                              "step with ReLU flips": ms.KINK_GRAD_TOL,
                              "step noise factor": NOISE_FACTOR},
               "conv": conv if "conv" in args.parts else None,
               "step": step if "step" in args.parts else None}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)

    def run(kind, what, fn, rows_fn, out):
        case = dict(what)
        if left() <= 0:
            case["status"] = "skipped (time)"
        else:
            t0 = time.perf_counter()
            try:
                res = fn()
            except AssertionError as e:  # a wrong result is not timed
                print(f"CHECK FAILED: {e}", flush=True)
                failed.append(str(e))
                case.update(status="check failed", error=str(e))
            except Exception as e:  # one broken case must not lose the others' results
                traceback.print_exc()
                failed.append(f"{type(e).__name__}: {e}")
                case.update(status="error", error=f"{type(e).__name__}: {e}")
            else:
                case.update(status="ok", **res)
                out["rows"] += rows_fn(res)
            print(f"{kind} {what}: {case['status']} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
        if case["status"] != "ok":
            out["rows"].append([what["batch"], what.get("layer", what.get("policy")),
                                case["status"]] + ["-"] * (len(out["header"]) - 3))
        out["cases"].append(case)
        dump(False)

    conv["header"] = pc.HEADER
    step["header"] = ["batch", "policy", "TC", "gpudl ms", "torch ms", "torch / gpudl",
                      "gpudl TFLOP/s", "torch TFLOP/s", "err vs CPU policy (tol)",
                      "err f64 gpudl / torch", "ReLU flips", "TC calls"]
    for part in dict.fromkeys(args.parts):  # in the order given (gpu_check.sh: step first)
        if part == "conv":
            for batch in args.conv_batch:
                for cv in convs:
                    for pname in args.precisions:
                        run("conv", {"batch": batch, "layer": cv[0], "prec": pname},
                            lambda: pc.conv_case(ctx, cv, batch, pname),
                            lambda res: pc.conv_rows(cv[0], batch, pname, res), conv)
        else:
            for batch in args.step_batch:
                for policy in args.step_policies:
                    run("step", {"batch": batch, "policy": policy},
                        lambda: step_case(ctx, batch, policy),
                        lambda res: step_rows(batch, policy, res), step)

    title = f"Reduced precision vs PyTorch of the same precision, {args.device}"
    for part, out in (("conv", conv), ("step", step)):
        if part in args.parts:
            record(f"{title}: ResNet 3x3 convolutions" if part == "conv" else
                   f"{title}: ResNet training step", where, out["header"], out["rows"],
                   notes=notes[part])
    dump(True)
    if failed:
        raise SystemExit(f"precision_step: {len(failed)} check(s) failed (see above)")


if __name__ == "__main__":
    main()
