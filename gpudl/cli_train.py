"""``gpudl train``: its flags, their checks (all made before any data loads)
and the run itself. A bad flag is a one-line error naming it and exit code 2,
as argparse's own errors (gpudl.cli.UsageError)."""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import sys
import time

from . import __version__
from .precision import POLICIES


class UsageError(Exception):
    """A flag value or combination gpudl cannot run with; gpudl.cli.main
    prints ``gpudl COMMAND: error: MESSAGE`` and returns 2."""


#: per model: epochs, SGD learning rate, batch size, digits upscale factor
TRAIN_DEFAULTS = {"mlp": (30, 0.05, 32, 1), "cnn": (30, 0.05, 32, 1), "lenet": (25, 0.03, 32, 4),
                  "resnet": (10, 0.05, 32, 1), "mobilenet": (10, 0.05, 32, 1)}
#: the rest of a model's recipe, where it has more than the above: --augment,
#: --schedule, and --weight-decay (with sgd). LeNet's plain 15 epochs of SGD gave
#: 96.4-98.3% on the digits over seeds 0-2, too close to its 97% bar; this gave
#: 98.3-99.7% over seeds 0-4 (README)
RECIPE_EXTRAS = {"lenet": {"augment": 2, "schedule": "cosine", "weight_decay": 5e-4}}
#: the number of classes each data set defines (labels are 0 .. n-1)
DATA_CLASSES = {"digits": 10, "mnist": 10, "fashion-mnist": 10, "cifar10": 10}
#: image side (pixels) of each data set; digits are 8x8 times the model's upscale
DATA_SIDE = {"digits": 8, "mnist": 28, "fashion-mnist": 28, "cifar10": 32}
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
#: SGD's momentum when --momentum is not given
SGD_MOMENTUM = 0.9


def _optimizer_class(name):
    from . import optim
    return {"sgd": optim.SGD, "adam": optim.Adam, "adamw": optim.AdamW,
            "rmsprop": optim.RMSprop, "adagrad": optim.Adagrad}[name]


def _default(cls, name):
    return inspect.signature(cls).parameters[name].default


# ---- flag types (argparse reports their errors, naming the flag)
def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """A parser of finite numbers in [low, high] (open ends where asked)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value < low or (low_open and value == low)):
            rule = "must be positive" if low == 0 and low_open else \
                f"must be {'>' if low_open else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, "
                                             f"got {text}")
        return value
    return parse


def positive(kind):
    return _number(kind, 0, low_open=True)


def add_train_parser(sub, device_default):
    from .zoo import MODELS
    t = sub.add_parser("train", help="train a network of the model zoo on a data set")
    t.add_argument("--device", default=device_default, help="auto (default), cpu or cuda")
    t.add_argument("--model", default="resnet", choices=sorted(MODELS),
                   help="resnet (default: ResNet-8 with batch norm, the most accurate that "
                        "trains in well under a minute on a 2-core CPU), mlp, cnn (two "
                        "convolutions), lenet (LeNet-5) or mobilenet (depthwise-separable)")
    t.add_argument("--data", default="digits", choices=list(DATA_CLASSES),
                   help="digits (default, ships with scikit-learn) or a data set read from "
                        "local files in its standard format")
    t.add_argument("--data-dir", default=None,
                   help="folder holding the mnist, fashion-mnist or cifar10 files "
                        "(default $GPUDL_DATA or ~/.gpudl/data)")
    t.add_argument("--epochs", type=positive(int), default=None,
                   help="default depends on the model (30 for mlp, 15 for lenet, ...)")
    t.add_argument("--batch-size", type=positive(int), default=None)
    t.add_argument("--lr", type=positive(float), default=None,
                   help="default: the model's for sgd, the optimizer's own otherwise "
                        "(1e-3 for adam and adamw, 1e-2 for rmsprop and adagrad)")
    t.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    t.add_argument("--momentum", type=_number(float, 0, 1, high_open=True), default=None,
                   help=f"SGD momentum in [0, 1) (default {SGD_MOMENTUM}); sgd only")
    t.add_argument("--nesterov", action="store_true", help="Nesterov momentum; sgd only")
    t.add_argument("--weight-decay", type=_number(float, 0), default=None,
                   help="L2 weight decay (decoupled for adamw), never on biases or batch "
                        "norm; default: the optimizer's (0.01 for adamw, else 0; 5e-4 for "
                        "lenet with sgd)")
    t.add_argument("--clip-norm", type=positive(float), default=None,
                   help="clip the global gradient norm to this")
    t.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                   help="learning-rate schedule over the run (default: the model's; "
                        "cosine for lenet, else constant)")
    t.add_argument("--augment", type=_number(int, 0), default=None, metavar="SHIFT",
                   help="random shifts of up to SHIFT pixels per training batch (images; "
                        "default: the model's, 2 for lenet, else 0)")
    t.add_argument("--val-split", type=_number(float, 0, 1, high_open=True), default=0.1,
                   metavar="FRACTION",
                   help="share of the training data held out (at random, seeded) for val_* "
                        "metrics, early stopping and the best weights (default 0.1; 0: none); "
                        "the test set is evaluated once, after training")
    t.add_argument("--early-stopping", type=positive(int), default=None, metavar="PATIENCE",
                   help="stop when val_loss has not improved for PATIENCE epochs, "
                        "keeping the best weights")
    t.add_argument("--checkpoint", default=None,
                   help="write a checkpoint here after every epoch (atomically)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --checkpoint")
    t.add_argument("--history", default=None, help="write the history as CSV here")
    t.add_argument("--hidden", type=positive(int), nargs="+", default=None,
                   help="hidden layer widths of the mlp (default: 256 128); mlp only")
    t.add_argument("--seed", type=_number(int, 0), default=0)
    t.add_argument("--precision", choices=list(POLICIES), default="fp32",
                   help="matmul/conv input precision (gpudl.set_precision): fp32 (default), "
                        "tf32, bf16-mixed or fp16-mixed (with dynamic loss scaling)")
    t.add_argument("--limit", type=positive(int), default=None,
                   help="use only the first N training samples (quick runs)")
    t.add_argument("--save", default=None,
                   help="where to save the trained model (default runs/DATA-MODEL.npz; "
                        "'' to skip)")
    t.add_argument("--metrics-out", default=None, help="write final metrics as JSON here")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bars: one line per epoch, printed as it ends")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training, one process per GPU or CPU share, launched "
                        "by mpiexec (or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT with NCCL); "
                        "--batch-size is per process; see docs/distributed.md")
    t.add_argument("--sync-bn", action="store_true",
                   help="with --distributed: batch-norm statistics over every process's batch")
    t.set_defaults(run=cmd_train)
    return t


# ---- checks of values and combinations, before anything loads
def _writable(flag, path):
    """Raise UsageError unless a file can be written at ``path`` (its folder
    may not exist yet: the nearest existing one must be a writable folder)."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.isdir(full):
        raise UsageError(f"{flag}: {path} is a folder, not a file name")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise UsageError(f"{flag}: {path} exists and is not writable")
    folder = os.path.dirname(full)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{flag}: cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag}: cannot write {path}: no write permission in {folder}")


def check_train_args(args):
    """Fill the defaults that depend on other flags and check every value and
    combination; raise UsageError naming the flag."""
    from .zoo import MODELS
    images = MODELS[args.model][1]
    epochs, lr, batch_size, upscale = TRAIN_DEFAULTS[args.model]
    cls = _optimizer_class(args.optimizer)
    if args.optimizer != "sgd":
        for flag, given in (("--momentum", args.momentum is not None),
                            ("--nesterov", args.nesterov)):
            if given:
                raise UsageError(f"{flag}: applies to --optimizer sgd only, not {args.optimizer}")
    elif args.nesterov and args.momentum == 0:
        raise UsageError("--nesterov: needs --momentum > 0")
    if args.sync_bn and not args.distributed:
        raise UsageError("--sync-bn: applies to --distributed runs only")
    if args.hidden is not None and args.model != "mlp":
        raise UsageError(f"--hidden: applies to --model mlp only, not {args.model}")
    if args.data_dir is not None and args.data == "digits":
        raise UsageError("--data-dir: the digits come with scikit-learn; it applies to "
                         "mnist, fashion-mnist and cifar10")
    extras = RECIPE_EXTRAS.get(args.model, {})
    if args.augment is None:
        args.augment = extras.get("augment", 0)
    if args.schedule is None:
        args.schedule = extras.get("schedule", "constant")
    if args.augment:
        if not images:
            raise UsageError(f"--augment: needs an image model, not {args.model}")
        side = DATA_SIDE[args.data] * (upscale if args.data == "digits" else 1)
        if args.augment >= side:
            raise UsageError(f"--augment: a shift of {args.augment} pixels is not smaller than "
                             f"the {side}x{side} images of {args.data}")
    if args.early_stopping and not args.val_split:
        raise UsageError("--early-stopping: needs validation data (--val-split > 0)")
    if args.resume and not args.checkpoint:
        raise UsageError("--resume: needs --checkpoint PATH")
    args.epochs = args.epochs or epochs
    args.batch_size = args.batch_size or batch_size
    args.lr = args.lr or (lr if args.optimizer == "sgd" else _default(cls, "lr"))
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = SGD_MOMENTUM
    if args.weight_decay is None:
        args.weight_decay = extras["weight_decay"] if (
            args.optimizer == "sgd" and "weight_decay" in extras) else _default(cls, "weight_decay")
    args.hidden = args.hidden or [256, 128]
    if args.save is None:
        args.save = os.path.join("runs", f"{args.data}-{args.model}.npz")
    for flag, path in (("--save", args.save), ("--metrics-out", args.metrics_out),
                       ("--history", args.history)):
        if path:
            _writable(flag, path)
    if args.checkpoint:
        try:
            first = args.checkpoint.format(epoch=1)
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"--checkpoint: {args.checkpoint!r} may hold {{epoch}} and no other "
                             f"braces ({type(e).__name__}: {e})") from None
        if args.resume and not os.path.isfile(args.checkpoint):
            raise UsageError(f"--resume: no checkpoint at {args.checkpoint}")
        _writable("--checkpoint", first)
    return images


# ---- the run
def _load_data(args, images):
    """((x_train, y_train), (x_test, y_test)) of the data set asked for."""
    if args.data == "digits":
        from .data import load_digits
        return load_digits(test_fraction=0.2, seed=args.seed, flatten=not images,
                           upscale=TRAIN_DEFAULTS[args.model][3])
    from .datasets import DATASETS
    return DATASETS[args.data](root=args.data_dir, flatten=not images)


def _check_labels(args, parts):
    """Labels must be 0 .. classes-1 of the data set's definition."""
    import numpy as np

    from .errors import DataError
    classes = DATA_CLASSES[args.data]
    for what, y in parts:
        bad = (y < 0) | (y >= classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{args.data}: {int(bad.sum())} {what} labels outside the data "
                            f"set's {classes} classes 0-{classes - 1} (first: {int(y[i])} at "
                            f"index {i}); the label file is corrupt or of another data set")
    return classes


def _optimizer(args, n_train):
    from . import schedules
    lr = args.lr
    if args.schedule == "cosine":
        total = schedules.epochs_to_steps(args.epochs,
                                          schedules.steps_per_epoch(n_train, args.batch_size))
        lr = schedules.CosineDecay(args.lr, total)
    kw = {"weight_decay": args.weight_decay, "clip_norm": args.clip_norm}
    if args.optimizer == "sgd":
        kw.update(momentum=args.momentum, nesterov=args.nesterov)
    return _optimizer_class(args.optimizer)(lr, **kw)


def _toolkit(args, images):
    """The callbacks and augmentation the flags ask for."""
    from .callbacks import EarlyStopping
    from .checkpoint import ModelCheckpoint
    callbacks, stopper = [], None
    if args.early_stopping:
        stopper = EarlyStopping("val_loss", patience=args.early_stopping,
                                restore_best_weights=True)
        callbacks.append(stopper)
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(args.checkpoint))
    if args.history:
        from .history import CSVLogger
        callbacks.append(CSVLogger(args.history))
    augment = None
    if args.augment:
        from .augment import Augment
        augment = Augment(shift=args.augment, seed=args.seed)
    return callbacks, augment, stopper


def _say_early_stopping(say, stopper, epochs_run):
    if stopper.stopped_epoch:
        say(f"early stopping: stopped after epoch {stopper.stopped_epoch} (val_loss had not "
            f"improved for {stopper.stopped_epoch - stopper.best_epoch} epochs)")
    if stopper.best_weights is not None and stopper.best_epoch != epochs_run:
        say(f"early stopping: restored the weights of epoch {stopper.best_epoch} "
            f"(best val_loss {stopper.best:.4f})")
    elif stopper.best_epoch:
        say(f"early stopping: kept the last epoch's weights (epoch {stopper.best_epoch}, "
            f"best val_loss {stopper.best:.4f})")


def _silent(*args, **kwargs):
    pass


def cmd_train(args) -> int:
    images = check_train_args(args)
    if args.resume:
        from .checkpoint import read_checkpoint
        done = int(read_checkpoint(args.checkpoint)[0]["epoch"])
        if done >= args.epochs:
            print(f"gpudl train: {args.checkpoint} already holds {done} epochs "
                  f"(--epochs {args.epochs}): nothing to do")
            return 0
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
    build = MODELS[args.model][0]
    (x_train, y_train), (x_test, y_test) = _load_data(args, images)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    classes = _check_labels(args, (("training", y_train), ("test", y_test)))
    val = None
    if args.val_split:  # fit(validation_split=...)'s seeded split, made here to report it
        from .data import validation_split_indices
        try:
            train, held = validation_split_indices(len(x_train), args.val_split, args.seed)
        except ValueError as e:
            raise UsageError(f"--val-split: {str(e).removeprefix('fit: ')}; raise --limit "
                             f"or pass --val-split 0") from None
        (x_train, y_train), val = (x_train[train], y_train[train]), (x_train[held],
                                                                      y_train[held])
    model = build(x_train.shape[1:], classes, args.hidden) if args.model == "mlp" else \
        build(x_train.shape[1:], classes)
    say(f"gpudl {__version__} on {be.name} ({be.device_name()}); model: {args.model}; "
        f"data set: {args.data}, {len(x_train)} train / "
        f"{len(val[0]) if val else 0} validation / {len(x_test)} test samples")
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
    say(f"optimizer: {args.optimizer}, lr {args.lr:g}"
        f"{' (cosine)' if args.schedule == 'cosine' else ''}, batch size {args.batch_size}, "
        f"{args.epochs} epochs" + (f", weight decay {args.weight_decay:g}"
                                   if args.weight_decay else "")
        + (f", augment {args.augment}" if args.augment else "")
        + f"; precision: {args.precision}; device: {be.name}")
    callbacks, augment, stopper = _toolkit(args, images)
    t0 = time.perf_counter()
    try:
        history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                              validation_data=val, seed=args.seed,
                              verbose=2 if args.quiet else True, callbacks=callbacks,
                              augment=augment,
                              resume_from=args.checkpoint if args.resume else None)
    except FloatingPointError as e:  # a diverged run: its one-line reason, no traceback
        print(f"gpudl train: error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    if dist is not None and args.sync_bn:
        from .distributed import revert_sync_batchnorm
        revert_sync_batchnorm(model)  # a plain model file
    if dist is not None and not dist.is_main:
        return 0  # rank 0 evaluates, reports and saves
    if stopper is not None:
        _say_early_stopping(say, stopper, trainer.epoch)
    test = trainer.evaluate(x_test, y_test)  # the one look at the test set
    print(f"test accuracy: {test['accuracy']:.4f}  test loss: {test['loss']:.4f}  "
          f"({seconds:.1f} s training)")
    if args.save:
        model.save(args.save)
        print(f"saved model to {args.save}")
    if args.metrics_out:
        metrics = {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                   "train_loss": history["loss"][-1], "train_accuracy": history["accuracy"][-1],
                   "model": args.model, "epochs": args.epochs, "epochs_run": trainer.epoch,
                   "seconds": seconds, "device": be.name, "device_name": be.device_name(),
                   "seed": args.seed, "precision": args.precision, "optimizer": args.optimizer,
                   "lr": args.lr, "schedule": args.schedule, "weight_decay": args.weight_decay,
                   "augment": args.augment, "val_split": args.val_split}
        if "val_loss" in history:
            best = stopper.best_epoch - 1 if stopper is not None and stopper.best_epoch else -1
            metrics.update(val_loss=history["val_loss"][best],
                           val_accuracy=history["val_accuracy"][best])
        if stopper is not None:
            metrics.update(stopped_epoch=stopper.stopped_epoch, best_epoch=stopper.best_epoch)
        folder = os.path.dirname(os.path.abspath(args.metrics_out))
        os.makedirs(folder, exist_ok=True)
        with open(args.metrics_out, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0
