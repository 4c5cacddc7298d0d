"""A run's history (the dict Trainer.fit returns) as CSV, JSON or a PNG plot."""
from __future__ import annotations

import csv
import io
import json
import os

from .callbacks import Callback
from .archive import atomic_write


def _columns(history: dict):
    keys = list(history)
    n = max((len(v) for v in history.values()), default=0)
    return keys, n


def history_to_csv(history: dict, path) -> None:
    """One row per epoch (``epoch``, then each key), written atomically."""
    keys, n = _columns(history)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["epoch"] + keys)
    for e in range(n):
        w.writerow([e + 1] + [history[k][e] if e < len(history[k]) else "" for k in keys])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def history_to_json(history: dict, path) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(history, indent=1).encode()))


def plot_history(history: dict, path, title=None) -> str:
    """Training curves as a PNG: losses on the left, other metrics on the right.
    Needs matplotlib (``pip install 'gpudl[plot]'``)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plot_history needs matplotlib: pip install 'gpudl[plot]'") from e
    losses = [k for k in history if k.endswith("loss")]
    others = [k for k in history if k not in losses and k != "time"
              and all(isinstance(v, (int, float)) for v in history[k])]
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(10 if others else 5, 3.6),
                             squeeze=False)
    for ax, keys, label in ((axes[0][0], losses, "loss"),
                            (axes[0][-1] if others else None, others, "metric")):
        if ax is None:
            continue
        for k in keys:
            ax.plot(range(1, len(history[k]) + 1), history[k], marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return os.fspath(path)


class CSVLogger(Callback):
    """Rewrite the history as CSV (and JSON with ``json_path``) after every epoch,
    so a killed run leaves its curves behind."""

    runs_last = True

    def __init__(self, path, json_path=None):
        self.path, self.json_path = path, json_path

    def on_epoch_end(self, epoch, logs):
        history_to_csv(self.trainer.history, self.path)
        if self.json_path:
            history_to_json(self.trainer.history, self.json_path)
