"""The gpudl command: ``gpudl train`` (the main job), ``gpudl info``, ``demo``,
``profile`` and ``export`` (a saved model as ONNX)."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .cli_train import TRAIN_DEFAULTS, UsageError, add_train_parser, positive  # noqa: F401
from .precision import POLICIES


def library_versions(extra=()) -> dict:
    """Installed versions of the libraries gpudl runs on (and ``extra`` ones)."""
    from importlib import metadata
    out = {}
    for dist in ("numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "cupy") + tuple(extra):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def cmd_info(args) -> int:
    import gpudl
    be = gpudl.set_device(args.device)
    print(f"gpudl {__version__}")
    print(f"device: {be.name} ({be.device_name()})")
    mem = be.memory_info() if be.name == "cuda" else None
    if mem is not None:
        free, total = mem
        print(f"gpu memory: {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free")
    elif not gpudl.gpu_available():
        print("gpu: none visible to CuPy")
    for k, v in library_versions().items():
        print(f"{k}: {v}")
    return 0


def cmd_demo(args) -> int:
    """``gpudl demo NAME``: one of the notes' experiments (gpudl.demos); ``--list`` names them."""
    from .demos import DEMOS, available, load
    if args.list or not args.name:
        have = set(available())
        width = max(len(n) for n in DEMOS)
        for name, (_, about) in DEMOS.items():
            print(f"{name:<{width}}  {about}" + ("" if name in have else "  (not installed)"))
        if not args.list:
            print("usage: gpudl demo NAME [--quick] [--seed S] [--out-dir DIR] [--device D]",
                  file=sys.stderr)
            return 2
        return 0
    import gpudl
    be = gpudl.set_device(args.device)
    try:
        demo = load(args.name)
    except (ValueError, ImportError) as e:
        print(f"gpudl demo: error: {e}", file=sys.stderr)
        return 2
    print(f"gpudl demo {args.name} on {be.name} ({be.device_name()})"
          f"{', quick' if args.quick else ''}, seed {args.seed}")
    demo.run(quick=args.quick, seed=args.seed, out_dir=args.out_dir)
    return 0


def cmd_profile(args) -> int:
    """``gpudl profile``: a few training steps of a zoo model on random data, under
    gpudl.profile, after one warm-up step (kernel compilation, allocations)."""
    import inspect

    import numpy as np

    import gpudl
    from .profile import profile
    from .zoo import MODELS
    be = gpudl.set_device(args.device)
    gpudl.manual_seed(args.seed)
    gpudl.set_precision(args.precision)
    build = MODELS[args.model][0]
    in_shape = tuple(inspect.signature(build).parameters["in_shape"].default)
    model = build(in_shape, 10)
    rng = np.random.default_rng(args.seed)
    bs, n = args.batch_size, args.batch_size * args.steps
    x = rng.standard_normal((n,) + in_shape).astype(np.float32)
    y = rng.integers(0, 10, n)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.01, momentum=0.9))
    trainer.fit(x[:bs], y[:bs], epochs=1, batch_size=bs, verbose=False)
    be.synchronize()
    with profile(trainer) as prof:
        t0 = time.perf_counter()
        trainer.fit(x, y, epochs=1, batch_size=bs, verbose=False)
        be.synchronize()
        wall = time.perf_counter() - t0
    print(f"gpudl profile: {args.model} {in_shape}, batch {bs}, {args.steps} steps, "
          f"precision {args.precision}, on {be.name} "
          f"({be.device_name()}): {wall * 1e3:.1f} ms wall, {wall / args.steps * 1e3:.2f} ms/step")
    prof.table(limit=args.limit, ceilings=not args.no_ceilings)
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace} (open in chrome://tracing or ui.perfetto.dev)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line naming the flag (``gpudl train:
    error: --lr: must be positive, got -1``) and a pointer to --help, raised
    as UsageError so main() returns 2 instead of exiting."""

    def error(self, message):
        if message.startswith("argument "):  # "argument --lr: ..." -> "--lr: ..."
            message = message[len("argument "):]
        raise UsageError(message, self.prog)


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpudl", description=__doc__)
    p.add_argument("--version", action="version", version=f"gpudl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    device_default = os.environ.get("GPUDL_DEVICE", "auto")

    info = sub.add_parser("info", help="print the chosen device and library versions")
    info.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    info.set_defaults(run=cmd_info)

    from .zoo import MODELS
    add_train_parser(sub, device_default)

    d = sub.add_parser("demo", help="run one of the course notes' experiments (--list names them)")
    d.add_argument("name", nargs="?", help="perceptron, approximation, sgd, vanishing, "
                                           "overfitting or transfer")
    d.add_argument("--list", action="store_true", help="list the demos and exit")
    d.add_argument("--quick", action="store_true", help="a few-second version (smaller sizes)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out-dir", default=os.path.join("runs", "demos"),
                   help="where the PNG plot goes (default runs/demos)")
    d.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    d.set_defaults(run=cmd_demo)

    pr = sub.add_parser("profile", help="time every op and kernel of a few training steps "
                                        "of a zoo model (random data) and print a roofline table")
    pr.add_argument("--model", default="lenet", choices=sorted(MODELS))
    pr.add_argument("--batch-size", type=positive(int), default=32)
    pr.add_argument("--steps", type=positive(int), default=5, help="profiled steps (default 5)")
    pr.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    pr.add_argument("--trace", default=None, metavar="FILE",
                    help="also write a Chrome/Perfetto trace (JSON) here")
    pr.add_argument("--limit", type=positive(int), default=None, help="rows per section")
    pr.add_argument("--no-ceilings", action="store_true",
                    help="skip measuring (or reading the cached) copy and matmul ceilings")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--precision", choices=list(POLICIES), default="fp32",
                    help="matmul/conv input precision, as for train")
    pr.set_defaults(run=cmd_profile)

    from .cli_export import add_export_parser
    add_export_parser(sub)
    return p


def _usage(e, prog=None) -> int:
    prog = e.args[1] if len(e.args) > 1 else prog or "gpudl"
    print(f"{prog}: error: {e.args[0]}\n(see '{prog} --help')", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except UsageError as e:
        return _usage(e)
    from .errors import GpudlError
    try:
        return args.run(args)
    except UsageError as e:
        return _usage(e, f"gpudl {args.command}")
    except GpudlError as e:
        print(f"gpudl: error: {e}", file=sys.stderr)
        env = sys.modules.get("gpudl.distributed.env")
        if env is not None and env.current() is not None and env.current().world_size > 1:
            env.abort(f"gpudl: error: {e}", code=2)  # the other ranks must not wait for ever
        return 2


if __name__ == "__main__":
    sys.exit(main())
