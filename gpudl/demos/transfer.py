"""Transfer learning and fine-tuning (course notes 3.6) on the 8x8 digits.

1. Pretrain the zoo's small CNN on digits 0-4 (the "large" source task).
2. Transfer learning: drop its head, freeze the base, append a new head for
   digits 5-9 and train only the head on a small training set (a few samples
   per class).
3. Fine-tuning: unfreeze the last convolution block and train it together
   with the head, at a lower learning rate.
4. Baseline: the same network trained from scratch on the same small set for
   as many epochs as steps 2 and 3 together, and, for reference, for many
   more epochs.

The convolutions learned on 0-4 (strokes, corners) are useful on 5-9: with
little data and a small training budget the reused network is far ahead of
the one trained from scratch. On these easy 8x8 images the scratch network
catches up given many more epochs (the last row), so the gain here is
mostly speed and reliability. (A logistic regression on the frozen
features is no better than one on the raw pixels, about 0.90 either way
with 10 samples per class, which is why fine-tuning matters.)
"""
from __future__ import annotations

import time

import numpy as np

from .. import layers, losses, optim, zoo
from ..data import load_digits
from ..layers import manual_seed
from ..train import Trainer
from . import new_figure, save_figure, table

#: sizes for the full run and the few-second test run
FULL = {"pretrain_epochs": 10, "head_epochs": 3, "finetune_epochs": 3, "per_class": 10,
        "long_epochs": 40}
QUICK = {"pretrain_epochs": 3, "head_epochs": 3, "finetune_epochs": 3, "per_class": 10,
         "long_epochs": 20}


def _subset(x, y, per_class, rng):
    """``per_class`` random samples of each class, shuffled."""
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                          for c in np.unique(y)])
    idx = rng.permutation(idx)
    return x[idx], y[idx]


def _fit(model, x, y, epochs, lr, seed, momentum=0.9):
    """A new optimizer each phase: its state is keyed by layer index, and the
    head at the last index is a new layer."""
    trainer = Trainer(model, losses.CrossEntropy(), optim.SGD(lr, momentum=momentum))
    trainer.fit(x, y, epochs=epochs, batch_size=16, seed=seed, verbose=False)
    return trainer


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=512), axis=1) == y))


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print, **sizes) -> dict:
    """Run the four steps and return their test accuracies (on 5-9 unless
    named "pretrain"), the sizes used and the seconds taken. ``sizes``
    overrides entries of FULL/QUICK (pretrain_epochs, head_epochs,
    finetune_epochs, per_class). With ``out_dir=None`` no plot is saved."""
    cfg = {**(QUICK if quick else FULL), **sizes}
    t0 = time.perf_counter()
    (x_tr, y_tr), (x_te, y_te) = load_digits(flatten=False)
    src_tr, src_te = y_tr < 5, y_te < 5
    rng = np.random.default_rng(seed)
    # the target task: digits 5-9 as classes 0-4, a few samples per class
    x_new, y_new = _subset(x_tr[~src_tr], y_tr[~src_tr] - 5, cfg["per_class"], rng)
    x_new_te, y_new_te = x_te[~src_te], y_te[~src_te] - 5
    lr = 0.05

    # 1. pretrain on 0-4
    manual_seed(seed)
    model = zoo.small_cnn(in_shape=(1, 8, 8), classes=5)
    _fit(model, x_tr[src_tr], y_tr[src_tr], cfg["pretrain_epochs"], lr, seed)
    pretrain_acc = _accuracy(model, x_te[src_te], y_te[src_te])

    # 2. transfer learning: new head on the frozen base
    old_head = model.pop()
    model.freeze()
    model.add(layers.Dense(old_head.in_features, 5, seed=seed + 1, name="head"))
    base_before = [p.copy() for layer in model.layers[:-1] for p in layer.params.values()]
    _fit(model, x_new, y_new, cfg["head_epochs"], lr, seed)
    base_after = [p for layer in model.layers[:-1] for p in layer.params.values()]
    base_unchanged = all(np.array_equal(a, b) for a, b in zip(base_before, base_after))
    transfer_acc = _accuracy(model, x_new_te, y_new_te)
    trainable_transfer = model.num_params(trainable_only=True)

    # 3. fine-tuning: the last convolution block trains too, at a lower rate
    last_conv = [i for i, layer in enumerate(model.layers) if isinstance(layer, layers.Conv2D)][-1]
    model.unfreeze(slice(last_conv, None))
    _fit(model, x_new, y_new, cfg["finetune_epochs"], lr / 10, seed)
    finetune_acc = _accuracy(model, x_new_te, y_new_te)
    trainable_finetune = model.num_params(trainable_only=True)

    # 4. the same network from scratch, same data, same number of epochs (and more)
    budget = cfg["head_epochs"] + cfg["finetune_epochs"]
    scratch_accs = []
    for epochs in (budget, cfg["long_epochs"]):
        manual_seed(seed + 2)
        scratch = zoo.small_cnn(in_shape=(1, 8, 8), classes=5)
        _fit(scratch, x_new, y_new, epochs, lr, seed)
        scratch_accs.append(_accuracy(scratch, x_new_te, y_new_te))
    scratch_acc, scratch_long_acc = scratch_accs

    result = {"pretrain_acc": pretrain_acc, "transfer_acc": transfer_acc,
              "finetune_acc": finetune_acc, "scratch_acc": scratch_acc,
              "scratch_long_acc": scratch_long_acc,
              "base_unchanged": base_unchanged, "train_samples": int(len(y_new)),
              "test_samples": int(len(y_new_te)), "trainable_transfer": trainable_transfer,
              "trainable_finetune": trainable_finetune, "total_params": model.num_params(),
              **cfg, "seconds": time.perf_counter() - t0}
    n = cfg["per_class"]
    rows = [("pretrain (0-4, all data)", "all", cfg["pretrain_epochs"], pretrain_acc),
            ("transfer: frozen base, new head", trainable_transfer, cfg["head_epochs"],
             transfer_acc),
            ("fine-tune: + last conv block, lr/10", trainable_finetune,
             cfg["finetune_epochs"], finetune_acc),
            ("from scratch, same budget", model.num_params(), budget, scratch_acc),
            ("from scratch, long (reference)", model.num_params(), cfg["long_epochs"],
             scratch_long_acc)]
    print_fn(f"digits 5-9 with {n} training samples per class, tested on {len(y_new_te)}")
    print_fn(table(("step", "trained params", "epochs", "test accuracy"), rows,
                   floatfmt="{:.3f}"))
    if out_dir is not None:
        fig = new_figure(figsize=(5, 3))
        if fig is not None:
            ax = fig.add_subplot()
            names = ["transfer", "fine-tune", f"scratch\n{budget} epochs",
                     f"scratch\n{cfg['long_epochs']} epochs"]
            values = [transfer_acc, finetune_acc, scratch_acc, scratch_long_acc]
            ax.bar(names, values, color=["tab:blue", "tab:green", "tab:gray", "lightgray"])
            for i, v in enumerate(values):
                ax.text(i, v + 0.01, f"{v:.2f}", ha="center")
            ax.set_ylim(0, 1.08)
            ax.set_ylabel("test accuracy, digits 5-9")
            ax.set_title(f"{n} samples per class; base pretrained on 0-4")
        result["plot"] = save_figure(fig, out_dir, "transfer.png", print_fn)
    return result
