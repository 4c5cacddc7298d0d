"""The course notes' experiments, runnable: ``gpudl demo NAME`` (``--list`` names them).

Each demo is a module with ``run(quick=False, seed=0, out_dir="runs/demos") -> dict``
that prints its result as a short table, saves a PNG plot under ``out_dir``
(when matplotlib is installed; otherwise it says so in one line) and returns
the numbers it printed. ``quick=True`` is a few-second version for tests.

Modules are imported only when a demo is asked for (``load(name)``), so a
demo whose module is missing fails alone, with an error that names it.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

#: name -> (module under gpudl.demos, one-line description)
DEMOS = {
    "perceptron": ("perceptron", "a perceptron learns NAND, never XOR; a 2-layer MLP learns XOR"),
    "approximation": ("approximation", "shallow sigmoid networks approximate a function better "
                                       "as they widen; deeper ones compared"),
    "sgd": ("sgd", "full-batch, mini-batch and online SGD; plain, momentum and Nesterov: "
                   "loss against epochs and against time"),
    "vanishing": ("vanishing", "per-layer gradient norms of deep sigmoid, ReLU and residual "
                               "sigmoid networks"),
    "overfitting": ("overfitting", "an MLP overfits 150 digits; early stopping, L2, dropout, "
                                   "augmentation, averaging and a smaller model against it"),
    "transfer": ("transfer", "transfer learning and fine-tuning a pretrained network"),
}


def load(name: str):
    """The module of demo ``name`` (imported now); ValueError for an unknown
    name, ImportError naming the file when its module is not there."""
    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; choose one of {', '.join(DEMOS)}")
    module = DEMOS[name][0]
    full = f"{__name__}.{module}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name != full:  # the demo exists but something it imports does not
            raise
        raise ImportError(f"demo {name!r} is not available: gpudl/demos/{module}.py "
                          f"is missing from this installation") from e


def available() -> list:
    """Names of the demos whose module is installed."""
    return [n for n, (m, _) in DEMOS.items()
            if importlib.util.find_spec(f"{__name__}.{m}") is not None]


def run(name: str, **kwargs) -> dict:
    return load(name).run(**kwargs)


# ---- helpers the demos share

def table(headers, rows, floatfmt="{:.4g}") -> str:
    """A plain-text table: one header line, a rule, one line per row."""
    def cell(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)
    cells = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def new_figure(*args, **kwargs):
    """A matplotlib Figure (no pyplot, no global backend state), or None
    when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(*args, **kwargs)


def save_figure(fig, out_dir, filename, print_fn=print):
    """Save ``fig`` as out_dir/filename and return the path; with no figure
    (no matplotlib) print a one-line note and return None."""
    if fig is None:
        print_fn("(plot skipped: matplotlib is not installed; pip install matplotlib)")
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print_fn(f"plot saved to {path}")
    return path
