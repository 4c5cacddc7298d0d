"""The notes' gradient descent variants on one problem (a 64-32-10 ReLU MLP on
the digits, softmax cross-entropy, learning rate 0.05, the same initial
weights for every run): full-batch, mini-batch (32) and online (1) gradient
descent, and plain, momentum (0.9) and Nesterov momentum (0.9).

A LambdaCallback times every epoch with time.perf_counter (training only)
and, after it, measures the loss on the whole training set, so every variant
is compared on the same quantity against epochs and against wall-clock time.
"""
from __future__ import annotations

import time

import numpy as np

from . import new_figure, save_figure, table

VARIANTS = [  # name, batch size (None = full batch), momentum, nesterov
    ("full-batch", None, 0.0, False),
    ("full-batch + momentum", None, 0.9, False),
    ("full-batch + Nesterov", None, 0.9, True),
    ("mini-batch 32", 32, 0.0, False),
    ("mini-batch 32 + momentum", 32, 0.9, False),
    ("mini-batch 32 + Nesterov", 32, 0.9, True),
    ("online", 1, 0.0, False),
]


def train_variant(x, y, batch_size, momentum, nesterov, epochs, seed, lr=0.05):
    """{"epoch_loss": [initial, after epoch 1, ...], "epoch_time": [0, cumulative s, ...],
    "batch_loss": per-step losses, "steps": optimizer steps}."""
    import gpudl
    from gpudl.callbacks import LambdaCallback
    from gpudl.layers import Dense, ReLU
    gpudl.manual_seed(seed)  # every variant starts from the same weights
    model = gpudl.Sequential([Dense(x.shape[1], 32), ReLU(), Dense(32, 10)])
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                            gpudl.optim.SGD(lr, momentum=momentum, nesterov=nesterov))
    rec = {"epoch_loss": [trainer.evaluate(x, y)["loss"]], "epoch_time": [0.0],
           "batch_loss": []}
    clock = {"start": 0.0, "total": 0.0}

    def epoch_begin(epoch, logs):
        clock["start"] = time.perf_counter()

    def epoch_end(epoch, logs):
        clock["total"] += time.perf_counter() - clock["start"]   # training time only
        rec["epoch_time"].append(clock["total"])
        rec["epoch_loss"].append(trainer.evaluate(x, y)["loss"])  # not timed

    def batch_end(batch, logs):
        rec["batch_loss"].append(logs["loss"])

    cb = LambdaCallback(on_epoch_begin=epoch_begin, on_epoch_end=epoch_end,
                        on_batch_end=batch_end)
    trainer.fit(x, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=False,
                callbacks=[cb])
    rec["steps"] = len(rec["batch_loss"])
    return rec


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print) -> dict:
    from gpudl.data import load_digits
    (x, y), _ = load_digits(seed=seed)
    if quick:
        x, y, epochs = x[:200], y[:200], 4
    else:
        epochs = 30
    result, rows = {"epochs": epochs, "samples": int(len(x)), "variants": {}}, []
    train_variant(x[:64], y[:64], 32, 0.0, False, 1, seed)  # warm-up: the first run's timing
    for name, bs, mom, nest in VARIANTS:
        rec = train_variant(x, y, bs, mom, nest, epochs, seed)
        result["variants"][name] = rec
        per_epoch = int(np.ceil(len(x) / (bs or len(x))))
        rows.append([name, bs or len(x), per_epoch, rec["epoch_loss"][0], rec["epoch_loss"][1],
                     rec["epoch_loss"][-1], f"{rec['epoch_time'][-1]:.2f}"])
    print_fn(f"Gradient descent variants: 64-32-10 MLP on {len(x)} digits, lr 0.05, "
             f"{epochs} epochs (loss on the whole training set)")
    print_fn(table(["variant", "batch", "steps/epoch", "initial loss", "after 1 epoch",
                    "final loss", "train s"], rows))

    fig = new_figure(figsize=(11, 4))
    if fig is not None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for name, rec in result["variants"].items():
            style = "--" if name.startswith("full") else (":" if name == "online" else "-")
            ax1.plot(range(len(rec["epoch_loss"])), rec["epoch_loss"], style, label=name)
            ax2.plot(rec["epoch_time"], rec["epoch_loss"], style, label=name)
        for ax, xl in ((ax1, "epoch"), (ax2, "training time (s)")):
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("training loss (cross-entropy)")
        ax2.set_xscale("symlog", linthresh=0.01)
        ax1.set_title("loss against epochs")
        ax2.set_title("loss against wall-clock time")
        ax1.legend(fontsize=7)
    result["plot"] = save_figure(fig, out_dir, "sgd.png", print_fn)
    return result
