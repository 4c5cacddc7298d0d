"""The gpudl command: ``gpudl train`` (the main job) and ``gpudl info``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import __version__
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


#: per model: epochs, learning rate, batch size, digits upscale factor (when not given)
TRAIN_DEFAULTS = {"mlp": (30, 0.05, 32, 1), "cnn": (30, 0.05, 32, 1), "lenet": (15, 0.02, 32, 4),
                  "resnet": (10, 0.05, 32, 1), "mobilenet": (10, 0.05, 32, 1)}


def _load_data(args, images):
    """((x_train, y_train), (x_test, y_test)) of the data set asked for."""
    if args.data == "digits":
        from .data import load_digits
        return load_digits(test_fraction=0.2, seed=args.seed, flatten=not images,
                           upscale=TRAIN_DEFAULTS[args.model][3])
    from .datasets import DATASETS
    return DATASETS[args.data](root=args.data_dir, flatten=not images)


def _optimizer(args, n_train):
    from . import optim, schedules
    lr = args.lr
    if args.schedule == "cosine":
        total = schedules.epochs_to_steps(args.epochs,
                                          schedules.steps_per_epoch(n_train, args.batch_size))
        lr = schedules.CosineDecay(args.lr, total)
    kw = {"weight_decay": args.weight_decay, "clip_norm": args.clip_norm}
    if args.optimizer == "sgd":
        return optim.SGD(lr, momentum=args.momentum, nesterov=args.nesterov, **kw)
    cls = {"adam": optim.Adam, "adamw": optim.AdamW, "rmsprop": optim.RMSprop,
           "adagrad": optim.Adagrad}[args.optimizer]
    return cls(lr, **kw)


def _toolkit(args, images):
    """The callbacks and augmentation the flags ask for."""
    from .callbacks import EarlyStopping
    from .checkpoint import ModelCheckpoint
    callbacks = []
    if args.early_stopping:
        callbacks.append(EarlyStopping("val_loss", patience=args.early_stopping,
                                       restore_best_weights=True))
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(args.checkpoint))
    elif args.resume:
        raise SystemExit("gpudl train: --resume needs --checkpoint PATH")
    if args.history:
        from .history import CSVLogger
        callbacks.append(CSVLogger(args.history))
    augment = None
    if args.augment:
        if not images:
            raise SystemExit(f"gpudl train: --augment needs an image model, not {args.model}")
        from .augment import Augment
        augment = Augment(shift=args.augment, seed=args.seed)
    return callbacks, augment


def _silent(*args, **kwargs):
    pass


def cmd_train(args) -> int:
    import gpudl
    from .zoo import MODELS
    dist = None
    if args.distributed:  # rank, world and GPU from the launcher (gpudl.distributed)
        from . import distributed
        dist = distributed.init(device=args.device)
        be = gpudl.get_backend()
    else:
        be = gpudl.set_device(args.device)
    say = print if dist is None or dist.is_main else _silent  # rank 0 talks
    gpudl.manual_seed(args.seed)
    gpudl.set_precision(args.precision)
    build, images = MODELS[args.model]
    epochs, lr, batch_size, _ = TRAIN_DEFAULTS[args.model]
    args.epochs = args.epochs or epochs
    args.lr = args.lr or lr
    args.batch_size = args.batch_size or batch_size
    (x_train, y_train), (x_test, y_test) = _load_data(args, images)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    classes = int(max(y_train.max(), y_test.max())) + 1
    model = build(x_train.shape[1:], classes, args.hidden) if args.model == "mlp" else \
        build(x_train.shape[1:], classes)
    say(f"gpudl {__version__} on {be.name} ({be.device_name()}); model: {args.model}; "
        f"data set: {args.data}, "
        f"{len(x_train)} train / {len(x_test)} test samples")
    n_steps = len(x_train)
    if dist is not None:
        say(f"distributed: {dist.world_size} ranks ({dist.comm.name}), batch {args.batch_size} "
            f"per rank, {dist.world_size * args.batch_size} in all")
        n_steps = dist.sampler.num_samples(len(x_train))  # each rank's samples per epoch
        if args.sync_bn:
            from .distributed import convert_sync_batchnorm
            convert_sync_batchnorm(model)
    model.summary(print_fn=say)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), _optimizer(args, n_steps),
                            distributed=dist, precision=args.precision)
    say(f"optimizer: {args.optimizer}, lr {args.lr:g}, batch size {args.batch_size}, "
        f"{args.epochs} epochs; precision: {args.precision}")
    callbacks, augment = _toolkit(args, images)
    t0 = time.perf_counter()
    history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                          validation_data=(x_test, y_test), seed=args.seed,
                          verbose=not args.quiet, callbacks=callbacks, augment=augment,
                          resume_from=args.checkpoint if args.resume else None)
    seconds = time.perf_counter() - t0
    if dist is not None and args.sync_bn:
        from .distributed import revert_sync_batchnorm
        revert_sync_batchnorm(model)  # a plain model file
    if dist is not None and not dist.is_main:
        return 0  # rank 0 evaluates, reports and saves
    if args.quiet:
        for e in range(len(history["loss"])):
            print(f"epoch {e + 1}: " + ", ".join(f"{k}={v[e]:.4f}" for k, v in history.items()
                                                   if k != "time"))
    test = trainer.evaluate(x_test, y_test)
    print(f"test accuracy: {test['accuracy']:.4f}  test loss: {test['loss']:.4f}  "
          f"({seconds:.1f} s training)")
    save = os.path.join("runs", f"{args.data}-{args.model}.npz") if args.save is None else args.save
    if save:
        model.save(save)
        print(f"saved model to {save}")
    if args.metrics_out:
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                   "train_loss": history["loss"][-1], "train_accuracy": history["accuracy"][-1],
                   "model": args.model, "epochs": args.epochs, "seconds": seconds, "device": be.name,
                   "device_name": be.device_name(), "seed": args.seed,
                   "precision": args.precision}
        folder = os.path.dirname(os.path.abspath(args.metrics_out))
        os.makedirs(folder, exist_ok=True)
        with open(args.metrics_out, "w") as f:
            json.dump(metrics, f, indent=2)
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


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpudl", description=__doc__)
    p.add_argument("--version", action="version", version=f"gpudl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    device_default = os.environ.get("GPUDL_DEVICE", "auto")

    info = sub.add_parser("info", help="print the chosen device and library versions")
    info.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    info.set_defaults(run=cmd_info)

    from .zoo import MODELS
    t = sub.add_parser("train", help="train a network of the model zoo on a data set")
    t.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    t.add_argument("--model", default="resnet", choices=sorted(MODELS),
                   help="resnet (default: ResNet-8 with batch norm, the most accurate that "
                        "trains in well under a minute on a 2-core CPU), mlp, cnn (two "
                        "convolutions), lenet (LeNet-5) or mobilenet (depthwise-separable)")
    t.add_argument("--data", default="digits",
                   choices=["digits", "mnist", "fashion-mnist", "cifar10"],
                   help="digits (default, ships with scikit-learn) or a data set read from "
                        "local files in its standard format")
    t.add_argument("--data-dir", default=None,
                   help="folder holding the mnist, fashion-mnist or cifar10 files "
                        "(default $GPUDL_DATA or ~/.gpudl/data)")
    t.add_argument("--epochs", type=_positive(int), default=None,
                   help="default depends on the model (30 for mlp, 15 for lenet, ...)")
    t.add_argument("--batch-size", type=_positive(int), default=None)
    t.add_argument("--lr", type=_positive(float), default=None)
    t.add_argument("--optimizer", default="sgd",
                   choices=["sgd", "adam", "adamw", "rmsprop", "adagrad"])
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum for SGD")
    t.add_argument("--weight-decay", type=float, default=0.0,
                   help="L2 weight decay (decoupled for adamw); never on biases or batch norm")
    t.add_argument("--clip-norm", type=_positive(float), default=None,
                   help="clip the global gradient norm to this")
    t.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule over the run")
    t.add_argument("--augment", type=int, default=0, metavar="SHIFT",
                   help="random shifts of up to SHIFT pixels per training batch (images)")
    t.add_argument("--early-stopping", type=_positive(int), default=None, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs, "
                        "keeping the best weights")
    t.add_argument("--checkpoint", default=None,
                   help="write a checkpoint here after every epoch (atomically)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint")
    t.add_argument("--history", default=None, help="write the history as CSV here")
    t.add_argument("--hidden", type=_positive(int), nargs="+", default=[256, 128],
                   help="hidden layer widths of the mlp (default: 256 128)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", choices=list(POLICIES), default="fp32",
                   help="matmul/conv input precision (gpudl.set_precision): fp32 (default), "
                        "tf32, bf16-mixed or fp16-mixed (with dynamic loss scaling)")
    t.add_argument("--limit", type=_positive(int), default=None,
                   help="use only the first N training samples (quick runs)")
    t.add_argument("--save", default=None,
                   help="where to save the trained model (default runs/digits-MODEL.npz; "
                        "'' to skip)")
    t.add_argument("--metrics-out", default=None, help="write final metrics as JSON here")
    t.add_argument("--quiet", action="store_true", help="no progress bars; one line per epoch")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training, one process per GPU or CPU share, launched "
                        "by mpiexec (or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT with NCCL); "
                        "--batch-size is per process; see docs/distributed.md")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch-norm statistics over every process's batch")
    t.set_defaults(run=cmd_train)

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
    pr.add_argument("--batch-size", type=_positive(int), default=32)
    pr.add_argument("--steps", type=_positive(int), default=5, help="profiled steps (default 5)")
    pr.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    pr.add_argument("--trace", default=None, metavar="FILE",
                    help="also write a Chrome/Perfetto trace (JSON) here")
    pr.add_argument("--limit", type=_positive(int), default=None, help="rows per section")
    pr.add_argument("--no-ceilings", action="store_true",
                    help="skip measuring (or reading the cached) copy and matmul ceilings")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--precision", choices=list(POLICIES), default="fp32",
                    help="matmul/conv input precision, as for train")
    pr.set_defaults(run=cmd_profile)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    from .errors import GpudlError
    try:
        return args.run(args)
    except GpudlError as e:
        print(f"gpudl: error: {e}", file=sys.stderr)
        env = sys.modules.get("gpudl.distributed.env")
        if env is not None and env.current() is not None and env.current().world_size > 1:
            env.abort(f"gpudl: error: {e}", code=2)  # the other ranks must not wait for ever
        return 2


if __name__ == "__main__":
    sys.exit(main())
