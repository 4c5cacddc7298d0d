"""A whole training step, eager and replayed from a CUDA graph, gpudl against PyTorch.

Cases: the zoo's lenet (1x32x32) and resnet (3x32x32) at batch 32, 64 and
256, and the 784-512-512-10 MLP (zoo.mlp, the widths of dense_step.py) at
batch 128 and 1024; 10 classes, float32, TF32 off, SGD lr 0.01 momentum 0.9.
Each case is timed four ways:
  gpudl eager  trainer.train_on_batch(xb, yb), the Trainer's step on device arrays
  gpudl graph  gpudl.graph.GraphedStep around that call: eager, then captured,
               then replayed (the timed calls are all replays)
  torch eager  model_step.torch_step_fn (zero_grad, forward, loss, backward, step)
  torch graph  PyTorch's whole-network capture recipe (torch_graph_fn below)
Before timing, a case is checked, so the times are of steps that compute the
same thing: (1) model_step.check: one gpudl step and one PyTorch float32 step
from the same weights against PyTorch float64 on the CPU (its tolerances and
ReLU-flip rule); (2) one Trainer step from the same start gives the weights and
BN statistics of that checked step (to model_step.VALUE_TOL, relative to each
tensor's largest entry); (3) three GraphedStep calls give what three eager
Trainer steps give, and (4) PyTorch's warm-up steps plus one replay give what
as many eager steps give (both to VALUE_TOL).

GPU times are medians of CUDA-event intervals (common.time_cuda) after
warm-up; gpudl's graph replays on its own non-blocking stream, so its events
are recorded on that stream (see graph_stream). Ratios are times, gpudl / PyTorch:
below 1 means gpudl is faster. A last line times ``gpudl train`` on digits
(defaults, ``--quiet --save ""``) as a subprocess on the GPU and on the CPU.

With no gpudl.graph (or no Trainer.train_on_batch) the gpudl graph column says
"not available" and the gpudl eager column falls back to model_step's step.
On a CPU (--device cpu) gpudl eager runs against PyTorch CPU eager, graph
columns n/a. Under numba's CUDA simulator every gpudl path runs once on tiny
shapes with host timers against PyTorch on the CPU, to check the logic;
nothing is recorded. Usage:
  python -m benchmarks.graph_step [--device cpu|cuda] [--models lenet resnet mlp]
         [--batch N ...] [--size 32] [--repeat N] [--budget S] [--json out.json]
  NUMBA_ENABLE_CUDASIM=1 python -m benchmarks.graph_step --device cuda --batch 2 --size 8 \
         --models lenet
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import traceback

from . import dense_step as ds
from . import model_step as ms
from .common import cpu_name, gpu_name, record, time_cpu, time_cuda
from .torch_twin import twin

BATCHES = {"lenet": (32, 64, 256), "resnet": (32, 64, 256), "mobilenet": (32, 64, 256),
           "mlp": (128, 1024)}
#: GraphedStep calls compared with eager steps: eager, captured (+1 replay), replayed
GRAPH_CALLS = 3
#: PyTorch's warm-up steps on a side stream before capture (its docs use 3)
TORCH_WARMUP = 3
NA = "n/a"


def build(name, device, size):
    """The gpudl model, deterministic (model_step.build_gpudl's seeds)."""
    if name != "mlp":
        return ms.build_gpudl(name, device, size)
    import gpudl
    from gpudl import zoo
    from gpudl.layers import manual_seed
    gpudl.set_device(device)
    manual_seed(0)
    return zoo.mlp(in_shape=(ds.WIDTHS[0],), classes=ds.WIDTHS[-1], hidden=ds.WIDTHS[1:-1])


def graph_api():
    """(GraphedStep or None, why not): the API another change adds; absent is not an error."""
    import gpudl
    if not hasattr(gpudl.Trainer, "train_on_batch"):
        return None, "gpudl.Trainer has no train_on_batch"
    try:
        from gpudl.graph import GraphedStep
    except ImportError as e:
        return None, f"no gpudl.graph.GraphedStep ({e})"
    return GraphedStep, ""


def make_trainer(model, x, y):
    """A Trainer with model_step's SGD and the batch on the device, as fit would put it."""
    import gpudl
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                            gpudl.optim.SGD(ms.LR, momentum=ms.MOMENTUM))
    model.train()
    xd, yd, _ = trainer._prepare(x, y)  # fit's own conversion (dtypes, checks)
    return trainer, xd, yd


def gpudl_state(model):
    """(name, host copy) of every parameter and buffer, in walk order."""
    be = model.backend
    return [(f"{layer.name}.{k}", be.to_numpy(v)) for layer in model.walk()
            for store in (layer.params, layer.buffers) for k, v in store.items()]


def torch_state(net):
    return [(k, v.detach().cpu().numpy()) for k, v in net.state_dict().items()]


def compare(a, b, what, tol=ms.VALUE_TOL):
    """Worst model_step._rel over matching tensors; AssertionError past tol."""
    errs = [(ms._rel(va.astype("f8"), vb.astype("f8")), na) for (na, va), (_, vb) in zip(a, b)]
    worst, where = max(errs) if errs else (0.0, "-")
    if len(a) != len(b) or worst > tol:
        raise AssertionError(f"{what}: {where} differs by {worst:.1e} of its largest entry "
                             f"(tolerance {tol}; {len(a)} vs {len(b)} tensors)")
    return worst


def torch_graph_fn(torch, net, x, y, warmup=TORCH_WARMUP):
    """PyTorch's documented whole-network capture (CUDA semantics notes, "Whole-network
    capture"): static input tensors; warm-up iterations on a side stream, which also
    create SGD's momentum buffers, so the captured optimizer.step() updates tensors
    that already exist (SGD needs no capturable flag: its lr is a Python float, baked
    into the graph); grads set to None before capture, so backward inside the capture
    allocates them from the graph's private pool and every replay overwrites them.
    Returns replay() (one step per call); the warm-up steps have been taken."""
    static_x = torch.from_numpy(x).to("cuda")
    static_y = torch.from_numpy(y).to("cuda")
    opt = torch.optim.SGD(net.parameters(), lr=ms.LR, momentum=ms.MOMENTUM)
    lossf = torch.nn.CrossEntropyLoss()
    net.train()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.zero_grad(set_to_none=True)
            lossf(net(static_x), static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = lossf(net(static_x), static_y)
        static_loss.backward()
        opt.step()

    def replay():
        graph.replay()
        return static_loss
    replay.graph, replay.static = graph, (static_x, static_y)  # keep them alive
    return replay


@contextlib.contextmanager
def graph_stream(be):
    """Run inside the stream gpudl's graphs replay on, as Trainer.fit(graph=...) does,
    and yield the synchronize for it. On a real GPU that is the backend's non-blocking
    stream (capture needs one): it does not order with the legacy default stream, so
    the uploads made there are waited for first, and CUDA events recorded on the
    current stream inside (common.time_cuda) time the replays. Elsewhere nothing."""
    if getattr(be, "_cp", None) is None or not hasattr(be, "graph_stream"):
        yield be.synchronize
        return
    be.synchronize()
    stream = be.graph_stream()
    with stream:
        yield stream.synchronize
    stream.synchronize()


def run_case(ctx, name, batch):
    """One case: the checks, then the four timings. Returns a result dict."""
    torch, dev, tdev, on_gpu, sim = ctx["torch"], ctx["device"], ctx["tdev"], ctx["on_gpu"], \
        ctx["sim"]
    GraphedStep = ctx["GraphedStep"]
    res = {"gpudl eager": NA, "gpudl graph": NA, "torch eager": NA, "torch graph": NA,
           "errors": []}
    # (1) model_step's check: gpudl (its step) and PyTorch float32 against float64
    model = build(name, dev, ctx["size"])
    x, y = ms.data(batch, model.input_shape)
    res["params"] = model.num_params()
    net, pairs = twin(model, torch, tdev)
    gstep = ms.gpudl_step_fn(model, x, y)
    tstep = ms.torch_step_fn(torch, net, tdev, x, y)
    res["loss err"], worst, res["flips"] = ms.check(torch, model, pairs, gstep, tstep, x, y,
                                                    name, verbose=ctx["verbose"])
    res["grad err f64"] = worst["g_64"]
    checked = gpudl_state(model)
    del gstep, net, pairs

    # fresh copies from the same start: gpudl eager (and graph), PyTorch eager (and graph)
    m_e = build(name, dev, ctx["size"])
    net_e, _ = twin(m_e, torch, tdev)
    net_g = twin(m_e, torch, tdev)[0] if on_gpu else None
    timer = time_cuda if on_gpu else time_cpu
    sync = m_e.backend.synchronize
    w, r = ctx["warmup"], ctx["repeat"]

    if not ctx["trainer"]:
        eager = ms.gpudl_step_fn(m_e, x, y)  # model_step's step (reads the loss back)
        eager()
        res["trainer err"] = compare(gpudl_state(m_e), checked, f"{name}: model_step's step")
    else:
        # (2) the Trainer's step is the step that was checked
        trainer_e, xe, ye = make_trainer(m_e, x, y)

        def eager():
            trainer_e.train_on_batch(xe, ye)
        eager()
        sync()
        res["trainer err"] = compare(gpudl_state(m_e), checked,
                                     f"{name}: Trainer.train_on_batch vs model_step's step")
    step = None
    if GraphedStep is not None and (on_gpu or sim):
        # (3) GRAPH_CALLS graphed calls against as many eager steps
        try:
            m_g = build(name, dev, ctx["size"])
            trainer_g, xg, yg = make_trainer(m_g, x, y)
            step = GraphedStep(lambda: trainer_g.train_on_batch(xg, yg), m_g.backend)
            modes = []
            with graph_stream(m_g.backend) as gsync:
                for _ in range(GRAPH_CALLS):
                    step()
                    modes.append(step.mode)
                gsync()
            for _ in range(GRAPH_CALLS - 1):
                eager()
            sync()
            res["modes"] = modes
            if modes != ["eager", "captured"] + ["replayed"] * (GRAPH_CALLS - 2):
                raise AssertionError(f"GraphedStep modes {modes}: not eager, captured, "
                                     f"then replays")
            res["graph err"] = compare(gpudl_state(m_e), gpudl_state(m_g),
                                       f"{name}: gpudl graph vs eager after {GRAPH_CALLS} steps")
        except Exception as e:  # report it in the row, go on with the other columns
            traceback.print_exc()
            res["errors"].append(f"gpudl graph: {type(e).__name__}: {e}")
            res["gpudl graph"], step = "failed", None
    elif GraphedStep is None and (on_gpu or sim):
        res["gpudl graph"] = "not available"
    tgraph = None
    tstep_e = ms.torch_step_fn(torch, net_e, tdev, x, y)
    if on_gpu:
        # (4) PyTorch: warm-up steps + one replay against as many eager steps
        try:
            tgraph = torch_graph_fn(torch, net_g, x, y)
            tgraph()
            for _ in range(TORCH_WARMUP + 1):
                tstep_e()
            torch.cuda.synchronize()
            res["torch graph err"] = compare(torch_state(net_e), torch_state(net_g),
                                             f"{name}: PyTorch graph vs eager")
        except Exception as e:
            traceback.print_exc()
            res["errors"].append(f"torch graph: {type(e).__name__}: {e}")
            res["torch graph"], tgraph = "failed", None

    # the timings, one implementation after the other (see model_step.main)
    res["gpudl eager"] = timer(eager, warmup=w, repeat=r)
    if step is not None:
        with graph_stream(m_g.backend) as gsync:  # CUDA events on the graph's stream
            res["gpudl graph"] = (time_cuda(step, warmup=w, repeat=r) if on_gpu else
                                  time_cpu(lambda: (step(), gsync()), warmup=w, repeat=r))
        res["graph mode timed"] = step.mode
    res["torch eager"] = timer(tstep_e, warmup=w, repeat=r)
    if tgraph is not None:
        res["torch graph"] = time_cuda(tgraph, warmup=w, repeat=r)
    return res


def time_train(device, extra, timeout):
    """Wall seconds of ``gpudl train --device DEVICE --quiet --save ""`` as a subprocess,
    or a string saying why there is none."""
    if timeout < 5:
        return "skipped (time)"
    cmd = [sys.executable, "-m", "gpudl.cli", "train", "--device", device, "--quiet",
           "--save", ""] + extra
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (stopped)"
    wall = time.perf_counter() - t0
    last = (p.stdout.strip().splitlines() or [""])[-1]
    print(f"  gpudl train --device {device}: {wall:.1f} s, rc {p.returncode}: {last}")
    if p.returncode:
        print(p.stderr[-2000:])
        return f"failed (rc {p.returncode})"
    return wall


def _ms(v):
    return f"{v * 1e3:.3f}" if isinstance(v, float) else v


def _ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else NA


def _err(v):
    return f"{v:.1e}" if isinstance(v, float) else "-"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet", "mlp"],
                   choices=list(BATCHES))
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes for every model (default: 32 64 256 for the CNNs, "
                        "128 1024 for the MLP)")
    p.add_argument("--size", type=int, default=32,
                   help="image side of the CNNs (smaller only to check the logic)")
    p.add_argument("--repeat", type=int, default=None,
                   help="timed steps (default 20 on a GPU, 5 on a CPU, 1 under the simulator)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds: cases not started by then are reported as skipped, and "
                        "the train runs get what is left")
    p.add_argument("--no-train", action="store_true", help="skip the gpudl train line")
    p.add_argument("--train-args", default="",
                   help="extra arguments for both gpudl train runs (e.g. '--epochs 1')")
    p.add_argument("--train-timeout", type=float, default=120)
    p.add_argument("--verbose", action="store_true", help="model_step's per-tensor table")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    left = lambda: float("inf") if args.budget is None else args.budget - (
        time.perf_counter() - t_start)

    import torch
    import gpudl
    be = gpudl.set_device(args.device)
    sim = args.device == "cuda" and be.simulator
    on_gpu = args.device == "cuda" and not sim
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("graph_step: PyTorch sees no GPU; it must run on the same device")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 against float32
    torch.backends.cudnn.allow_tf32 = False
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(os.cpu_count())
    GraphedStep, why = graph_api()
    if GraphedStep is None:
        print(f"gpudl graph: not available ({why})")
    ctx = {"torch": torch, "device": args.device, "tdev": "cuda" if on_gpu else "cpu",
           "on_gpu": on_gpu, "sim": sim, "size": args.size, "verbose": args.verbose,
           "GraphedStep": GraphedStep, "trainer": hasattr(gpudl.Trainer, "train_on_batch"),
           "warmup": 3 if on_gpu else (0 if sim else 1),
           "repeat": args.repeat or (20 if on_gpu else (1 if sim else 5))}

    rows, results, failed = [], [], False
    for name in args.models:
        for batch in args.batch or BATCHES[name]:
            label = name if args.size == 32 or name == "mlp" else \
                f"{name} ({args.size}x{args.size})"
            if left() <= 0:
                rows.append([label, batch] + ["skipped (time)"] * 4 + [NA] * 3 + ["-"] * 4)
                continue
            t0 = time.perf_counter()
            try:
                r = run_case(ctx, name, batch)
            except AssertionError as e:  # a check failed: no times for a wrong step
                print(f"{label} batch {batch}: CHECK FAILED: {e}", flush=True)
                failed = True
                rows.append([label, batch] + ["check failed"] * 4 + [NA] * 3 + ["-"] * 4)
                results.append({"model": label, "batch": batch, "error": str(e)})
                continue
            failed |= bool(r["errors"])
            ge, gg, te, tg = (r[k] for k in ("gpudl eager", "gpudl graph", "torch eager",
                                             "torch graph"))
            print(f"{label} batch {batch}: {time.perf_counter() - t0:.1f} s; ms/step gpudl "
                  f"eager {_ms(ge)}, graph {_ms(gg)}, torch eager {_ms(te)}, graph {_ms(tg)}"
                  + (f"; modes {r['modes']}" if "modes" in r else ""), flush=True)
            rows.append([label, batch, _ms(ge), _ms(gg), _ms(te), _ms(tg), _ratio(gg, te),
                         _ratio(gg, tg), _ratio(ge, te), _err(r["grad err f64"]),
                         _err(r["trainer err"]),
                         f"{_err(r.get('graph err'))}/{_err(r.get('torch graph err'))}",
                         f"{r['flips'][0]}/{r['flips'][1]}"])
            results.append({"model": label, "batch": batch, "params": r["params"],
                            **{k: v for k, v in r.items() if k not in ("flips", "params")},
                            "relu flips gpudl/torch": list(r["flips"])})

    train = {}
    if not (args.no_train or sim):  # the simulator would take hours
        extra = shlex.split(args.train_args)
        for dev in (["cuda"] if on_gpu else []) + ["cpu"]:
            t = args.train_timeout if args.budget is None else min(args.train_timeout, left())
            train[dev] = time_train(dev, extra, t)
        if not on_gpu:
            train["cuda"] = NA

    if on_gpu:
        where = gpu_name()
    elif sim:
        where = "CUDA simulator (timings meaningless)"
        os.environ["GPUDL_BENCH_NO_RECORD"] = "1"  # simulator timings are not results
    else:
        where = cpu_name()
    tname = "PyTorch CUDA (TF32 off, cudnn.benchmark)" if on_gpu else \
        f"PyTorch CPU ({torch.get_num_threads()} threads)"
    header = ["model", "batch", "gpudl eager ms", "gpudl graph ms", "torch eager ms",
              "torch graph ms", "gpudl graph / torch eager", "gpudl graph / torch graph",
              "gpudl eager / torch eager", "grad err gpudl/f64", "Trainer vs checked step",
              "graph vs eager gpudl/torch", "ReLU flips gpudl/torch"]
    fmt = lambda v: f"{v:.1f} s" if isinstance(v, float) else v
    train_line = ""
    if train:
        how = f", {args.train_args}" if args.train_args else ""
        train_line = (f"`gpudl train` on digits (defaults{how}, --quiet --save \"\") wall time: "
                      f"--device cuda {fmt(train['cuda'])}, --device cpu {fmt(train['cpu'])}"
                      + (f" (cpu / cuda {train['cpu'] / train['cuda']:.2f})"
                         if all(isinstance(train[k], float) for k in ("cpu", "cuda")) else ""))
        print(train_line)
    notes = (f"Median ms per step of {ctx['repeat']} steps after {ctx['warmup']} warm-up "
             + ("(CUDA events; gpudl graph's on its non-blocking stream)" if on_gpu
                else "(host timer)")
             + f", against {tname}. Ratios are time ratios, gpudl / PyTorch: below 1 means "
             "gpudl is faster. One step = forward in training mode, softmax cross-entropy, "
             f"backward, SGD (lr {ms.LR}, momentum {ms.MOMENTUM}); gpudl eager is "
             + ("Trainer.train_on_batch, gpudl graph gpudl.graph.GraphedStep replaying it"
                if GraphedStep else f"model_step's step (gpudl graph not available: {why})")
             + "; torch graph is PyTorch's whole-network torch.cuda.graph capture, replayed. "
             "Checked before timing: grad err = worst gradient of one gpudl step against "
             "PyTorch float64 (model_step.check, which also bounds loss and weights); "
             "Trainer vs checked step = weights/BN statistics after one Trainer step against "
             f"that checked step; graph vs eager = after {GRAPH_CALLS} GraphedStep calls "
             f"(gpudl) or {TORCH_WARMUP} warm-up steps and a replay (PyTorch) against as many "
             "eager steps; errors relative to each tensor's largest entry."
             + (f"\n\n{train_line}" if train_line else ""))
    title = (f"Training step, eager and CUDA graph, gpudl vs PyTorch, float32, {args.device}"
             + (" (check only)" if sim else ""))
    record(title, where, header, rows, notes=notes, json_path=args.json)
    if args.json:  # record writes the table; add the per-case details and the train line
        with open(args.json) as f:
            doc = json.load(f)
        doc.update(cases=results, train=train, graph_api=why or "available", notes=notes)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
    if failed:
        raise SystemExit("graph_step: a check or a graph capture failed (see above)")


if __name__ == "__main__":
    main()
