"""The notes' overfitting and its cures. A big MLP (64-256-256-10, ReLU) trained
long on a small training set (150 digits) learns it perfectly and does
clearly worse on the 360 test digits. Then each cure the notes list, alone,
with the same training budget (epochs, batch size, SGD lr 0.05 momentum 0.9):

- early stopping: EarlyStopping on the loss of a separate validation set
  (300 other training digits, never trained on), restoring the best weights;
- regularization: L2 weight decay, SGD(weight_decay=...);
- neurons dropout: Dropout(0.5) after each hidden layer;
- more data: augmentation, gpudl.augment.Augment(shift=1), a random shift of
  up to one pixel per image and batch;
- model averaging: gpudl.averaging.Ensemble of five such MLPs (different
  initial weights and batch orders; three in the quick run), the mean of
  their softmax probabilities;
- a simpler model: 64-16-10.

The augmentation and averaging rows need gpudl.augment and gpudl.averaging;
where one is missing its row is skipped with a note.
"""
from __future__ import annotations

from . import new_figure, save_figure, table

BIG, SMALL = (256, 256), (16,)


def _mlp(hidden, dropout=0.0):
    import gpudl
    from gpudl.layers import Dense, Dropout, Flatten, ReLU
    layers, prev = [Flatten()], 64
    for w in hidden:
        layers += [Dense(prev, w), ReLU()]
        if dropout:
            layers.append(Dropout(dropout))
        prev = w
    layers.append(Dense(prev, 10))
    return gpudl.Sequential(layers, input_shape=(1, 8, 8))


def _train(data, budget, seed, hidden=BIG, dropout=0.0, weight_decay=0.0, callbacks=(),
           augment=None, validation=False):
    import gpudl
    (x, y), (x_val, y_val), _ = data
    gpudl.manual_seed(seed)
    model = _mlp(hidden, dropout)
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(),
                            gpudl.optim.SGD(0.05, momentum=0.9, weight_decay=weight_decay))
    history = trainer.fit(x, y, epochs=budget["epochs"], batch_size=32, seed=seed,
                          verbose=False, callbacks=list(callbacks), augment=augment,
                          validation_data=(x_val, y_val) if validation else None)
    return model, trainer, history


def _scores(trainer, data):
    (x, y), _, (x_test, y_test) = data
    train, test = trainer.evaluate(x, y), trainer.evaluate(x_test, y_test)
    return {"train_accuracy": train["accuracy"], "test_accuracy": test["accuracy"],
            "test_loss": test["loss"]}


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print) -> dict:
    import time

    from gpudl.callbacks import EarlyStopping
    t0 = time.perf_counter()
    from gpudl.data import load_digits
    (x_pool, y_pool), (x_test, y_test) = load_digits(seed=seed, flatten=False)
    n_train, n_val = 150, 300
    budget = {"epochs": 60 if quick else 150}
    members = 3 if quick else 5
    data = ((x_pool[:n_train], y_pool[:n_train]),
            (x_pool[n_train:n_train + n_val], y_pool[n_train:n_train + n_val]),
            (x_test, y_test))
    results, notes = {}, []

    _, trainer, history = _train(data, budget, seed, validation=True)
    results["baseline (64-256-256-10)"] = _scores(trainer, data)
    curves = {"baseline": history}

    stop = EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True)
    _, trainer, history = _train(data, budget, seed, callbacks=[stop], validation=True)
    results["early stopping"] = dict(_scores(trainer, data), epochs=len(history["loss"]),
                                     best_epoch=stop.best_epoch)
    curves["early stopping"] = history

    _, trainer, _ = _train(data, budget, seed, weight_decay=5e-3)
    results["L2 weight decay 5e-3"] = _scores(trainer, data)

    _, trainer, _ = _train(data, budget, seed, dropout=0.5)
    results["dropout 0.5"] = _scores(trainer, data)

    try:
        from gpudl.augment import Augment
    except ImportError:
        notes.append("augmentation skipped: gpudl.augment is not installed yet")
    else:
        _, trainer, _ = _train(data, budget, seed, augment=Augment(shift=1, seed=seed))
        results["augmentation (shift 1)"] = _scores(trainer, data)

    try:
        from gpudl.averaging import Ensemble
    except ImportError:
        notes.append("model averaging skipped: gpudl.averaging is not installed yet")
    else:
        ens = Ensemble([_train(data, budget, seed + 1000 * k)[0] for k in range(members)])
        (x, y), _, _ = data
        results[f"averaging ({members} MLPs)"] = {
            "train_accuracy": ens.evaluate(x, y)["accuracy"],
            "test_accuracy": ens.evaluate(x_test, y_test)["accuracy"], "test_loss": None}

    _, trainer, _ = _train(data, budget, seed, hidden=SMALL)
    results["smaller model (64-16-10)"] = _scores(trainer, data)

    base = results["baseline (64-256-256-10)"]
    rows = []
    for name, r in results.items():
        gap = r["train_accuracy"] - r["test_accuracy"]
        rows.append([name, f"{r['train_accuracy']:.1%}", f"{r['test_accuracy']:.1%}",
                     f"{gap:+.1%}", f"{r['test_accuracy'] - base['test_accuracy']:+.1%}",
                     "-" if r["test_loss"] is None else f"{r['test_loss']:.3f}"])
    print_fn(f"Overfitting {n_train} training digits ({budget['epochs']} epochs, batch 32, "
             f"SGD 0.05 momentum 0.9; {len(x_test)} test digits)")
    print_fn(table(["model / cure", "train acc", "test acc", "gap", "vs baseline", "test loss"],
                   rows))
    es = results["early stopping"]
    print_fn(f"early stopping stopped after epoch {es['epochs']} (best epoch {es['best_epoch']})")
    for note in notes:
        print_fn(note)

    fig = new_figure(figsize=(11, 4))
    if fig is not None:
        ax = fig.add_subplot(1, 2, 1)
        h = curves["baseline"]
        epochs = range(1, len(h["loss"]) + 1)
        ax.plot(epochs, h["loss"], label="baseline: training loss")
        ax.plot(epochs, h["val_loss"], label="baseline: validation loss")
        ax.axvline(es["best_epoch"], color="gray", ls="--", label="early stopping's best epoch")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title("the baseline overfits: validation loss turns up")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        names = list(results)
        pos = range(len(names))
        ax.barh([p + 0.2 for p in pos], [results[n]["train_accuracy"] for n in names], 0.4,
                label="train")
        ax.barh([p - 0.2 for p in pos], [results[n]["test_accuracy"] for n in names], 0.4,
                label="test")
        ax.set_yticks(list(pos))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0.5, 1.0)
        ax.set_xlabel("accuracy")
        ax.set_title("each cure alone")
        ax.legend(fontsize=8, loc="lower right")
    path = save_figure(fig, out_dir, "overfitting.png", print_fn)
    return {"seconds": time.perf_counter() - t0, "n_train": n_train, "n_val": n_val, "epochs": budget["epochs"], "results": results,
            "notes": notes, "plot": path}
