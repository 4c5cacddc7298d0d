"""The notes' universal approximation: a shallow network (one hidden layer of N
sigmoid units, a linear output) approximates a continuous f : R -> [0, 1],
here f(x) = 0.5 + 0.4 sin(3x) exp(-x^2 / 4) on [-3, 3], better as N grows;
a deeper network (two or three hidden layers) gets a comparable error with
fewer units.

Training: MSE, full-batch gradient descent with momentum on 256 evenly spaced
points; the error is measured on 1,001 points. The first layer starts as the
theorem's construction does: unit i is a sigmoid step centred at a random
point c_i of the interval (z = s (x - c_i), slope s = +-max(2, N/3)); every
weight then trains. Each size keeps the best of a few restarts (lowest
training loss), since gradient descent on a tiny network can stall in a
poor minimum whatever the network could represent.
"""
from __future__ import annotations

import numpy as np

from . import new_figure, save_figure, table

LOW, HIGH = -3.0, 3.0


def target(x):
    return 0.5 + 0.4 * np.sin(3 * x) * np.exp(-x ** 2 / 4)


def build(widths, rng):
    import gpudl
    from gpudl.layers import Dense, Sigmoid
    layers, prev = [], 1
    for w in widths:
        layers += [Dense(prev, w, seed=int(rng.integers(2**31))), Sigmoid()]
        prev = w
    layers.append(Dense(prev, 1, seed=int(rng.integers(2**31))))
    model = gpudl.Sequential(layers)
    n = widths[0]
    centres = np.sort(rng.uniform(LOW, HIGH, n))
    slope = rng.choice([-1.0, 1.0], n) * max(2.0, n / 3)
    first = model.layers[0]
    be = first.backend
    first.params["W"] = be.asarray(slope.reshape(n, 1), dtype=first.dtype)
    first.params["b"] = be.asarray(-slope * centres, dtype=first.dtype)
    return model


def fit_one(widths, x, y, x_eval, epochs, restarts, rng, lr=0.05):
    """Best of ``restarts`` trainings: (model, max error, mean error, train loss)."""
    import gpudl
    best = None
    for _ in range(restarts):
        model = build(widths, rng)
        trainer = gpudl.Trainer(model, gpudl.losses.MSE(), gpudl.optim.SGD(lr, momentum=0.9))
        history = trainer.fit(x, y, epochs=epochs, batch_size=None, shuffle=False, verbose=False)
        loss = history["loss"][-1]
        if best is None or loss < best[3]:
            err = np.abs(model.predict(x_eval)[:, 0] - target(x_eval[:, 0]))
            best = (model, float(err.max()), float(err.mean()), float(loss))
    return best


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print) -> dict:
    import gpudl
    gpudl.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.linspace(LOW, HIGH, 256, dtype=np.float32).reshape(-1, 1)
    y = target(x).astype(np.float32)
    x_eval = np.linspace(LOW, HIGH, 1001, dtype=np.float32).reshape(-1, 1)
    if quick:
        shallow, deep, epochs, restarts = (2, 8, 32), ([6, 6],), 1500, 1
    else:
        shallow, deep, epochs, restarts = (2, 4, 8, 16, 32), ([4, 4], [6, 6], [5, 5, 5]), 8000, 3
    rows, curves, result = [], {}, {"shallow": [], "deep": []}
    for kind, configs in (("shallow", [[n] for n in shallow]), ("deep", list(deep))):
        for widths in configs:
            model, emax, emean, loss = fit_one(widths, x, y, x_eval, epochs, restarts, rng)
            entry = {"widths": list(widths), "units": int(sum(widths)),
                     "params": int(model.num_params()), "max_error": emax,
                     "mean_error": emean, "train_mse": loss}
            result[kind].append(entry)
            label = "-".join(str(w) for w in widths)
            rows.append([kind, label, entry["units"], entry["params"], emax, emean])
            curves[f"{kind} {label}"] = model.predict(x_eval)[:, 0]
    print_fn(f"Approximating f(x) = 0.5 + 0.4 sin(3x) exp(-x^2/4) on [{LOW:g}, {HIGH:g}] "
             f"(sigmoid hidden units; {epochs} full-batch epochs, best of {restarts})")
    print_fn(table(["network", "hidden", "units", "params", "max |error|", "mean |error|"], rows,
                   floatfmt="{:.4f}"))
    # depth against width: how many shallow units match each deep network's error
    for d in result["deep"]:
        match = [s["units"] for s in result["shallow"] if s["max_error"] <= d["max_error"]]
        d["shallow_units_for_same_error"] = min(match) if match else None
        label = "-".join(map(str, d["widths"]))
        print_fn(f"deep {label} ({d['units']} units, {d['params']} params, max error "
                 f"{d['max_error']:.4f}): " + (f"the smallest shallow network as good has "
                 f"{min(match)} units" if match else "no shallow network tried is as good"))

    fig = new_figure(figsize=(11, 4))
    if fig is not None:
        ax = fig.add_subplot(1, 2, 1)
        ax.plot(x_eval[:, 0], target(x_eval[:, 0]), "k", lw=2.5, label="f(x)")
        for name, pred in curves.items():
            if name.startswith("shallow"):
                ax.plot(x_eval[:, 0], pred, lw=1, label=name.replace("shallow ", "N = "))
        ax.set_title("shallow networks, N sigmoid units")
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
        ax = fig.add_subplot(1, 2, 2)
        for kind, marker in (("shallow", "o-"), ("deep", "s")):
            pts = result[kind]
            ax.plot([p["units"] for p in pts], [p["max_error"] for p in pts], marker,
                    label=f"{kind}: max |error|")
            ax.plot([p["units"] for p in pts], [p["mean_error"] for p in pts], marker,
                    alpha=0.5, label=f"{kind}: mean |error|")
            for p in pts if kind == "deep" else ():
                ax.annotate("-".join(map(str, p["widths"])), (p["units"], p["max_error"]),
                            fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden units")
        ax.set_ylabel("error on [-3, 3]")
        ax.set_title("error against network size")
        ax.legend(fontsize=8)
    result["plot"] = save_figure(fig, out_dir, "approximation.png", print_fn)
    return result
