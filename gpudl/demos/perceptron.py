"""The notes' perceptron expressivity: one threshold unit draws one line, so it
learns NAND (linearly separable) and never XOR (not separable: whatever line
it draws, at least one of the four corners is wrong, so at most 75%); a
two-layer MLP, Dense(2, 4)-Tanh-Dense(4, 1)-Sigmoid trained with binary
cross-entropy, composes two lines and learns XOR."""
from __future__ import annotations

import numpy as np

from . import new_figure, save_figure, table


def _mlp_xor(x, y, seed, epochs):
    import gpudl
    from gpudl.layers import Dense, Sigmoid, Tanh
    model = gpudl.Sequential([Dense(2, 4, seed=seed), Tanh(), Dense(4, 1, seed=seed + 1), Sigmoid()])
    trainer = gpudl.Trainer(model, gpudl.losses.BinaryCrossEntropy(),
                            gpudl.optim.SGD(0.5, momentum=0.9))
    history = trainer.fit(x, y.reshape(-1, 1), epochs=epochs, batch_size=None, verbose=False,
                          seed=seed)
    pred = (model.predict(x)[:, 0] > 0.5).astype(np.float32)
    return model, history, float(np.mean(pred == y))


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print) -> dict:
    import gpudl
    from gpudl.data import logic_gate
    from gpudl.layers import Perceptron

    gpudl.manual_seed(seed)
    epochs = 50 if quick else 200
    rows, result, units = [], {}, {}
    for gate in ("nand", "xor"):
        x, y = logic_gate(gate)
        p = Perceptron(2, seed=seed)
        mistakes = p.fit(x, y, epochs=epochs, lr=1.0, seed=seed)
        acc = float(np.mean(p.predict(x) == y))
        converged = mistakes[-1] == 0
        result[f"perceptron_{gate}_accuracy"] = acc
        result[f"perceptron_{gate}_epochs"] = len(mistakes)
        result[f"perceptron_{gate}_converged"] = converged
        rows.append([f"perceptron on {gate.upper()}", f"{acc:.0%}", len(mistakes),
                     "yes" if converged else "no"])
        units[gate] = p
    x, y = logic_gate("xor")
    mlp_epochs = 300 if quick else 1000
    model, history, acc = None, None, 0.0
    # a tiny net can land in a poor start; a handful of restarts is the usual cure
    for attempt in range(5):
        model, history, acc = _mlp_xor(x, y, seed + 10 * attempt, mlp_epochs)
        if acc == 1.0:
            break
    result["mlp_xor_accuracy"] = acc
    result["mlp_xor_final_loss"] = float(history["loss"][-1])
    result["mlp_xor_restarts"] = attempt
    rows.append(["MLP 2-4-1 on XOR", f"{acc:.0%}", len(history["loss"]),
                 "yes" if acc == 1.0 else "no"])
    print_fn("Perceptron expressivity (the four corners of each truth table)")
    print_fn(table(["model", "accuracy", "epochs", "learned"], rows))

    fig = new_figure(figsize=(10, 3.3))
    if fig is not None:
        g = np.linspace(-0.5, 1.5, 201, dtype=np.float32)
        gx, gy = np.meshgrid(g, g)
        grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
        panels = [("perceptron, NAND", units["nand"].predict(grid), "nand"),
                  ("perceptron, XOR", units["xor"].predict(grid), "xor"),
                  ("MLP 2-4-1, XOR", model.predict(grid)[:, 0], "xor")]
        for k, (title, z, gate) in enumerate(panels):
            ax = fig.add_subplot(1, 3, k + 1)
            ax.contourf(gx, gy, z.reshape(gx.shape), levels=[-0.1, 0.5, 1.1],
                        colors=["#f4c7c3", "#c6e2c6"])
            xs, ys = logic_gate(gate)
            for label, marker in ((0, "o"), (1, "s")):
                m = ys == label
                ax.scatter(xs[m, 0], xs[m, 1], marker=marker, s=80, edgecolors="k",
                           c="white" if label == 0 else "black", label=f"target {label}")
            acc = result["mlp_xor_accuracy"] if k == 2 else result[f"perceptron_{gate}_accuracy"]
            ax.set_title(f"{title}: {acc:.0%}")
            ax.set_xlim(-0.5, 1.5)
            ax.set_ylim(-0.5, 1.5)
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
        fig.axes[0].legend(loc="lower left", fontsize=8)
    result["plot"] = save_figure(fig, out_dir, "perceptron.png", print_fn)
    return result
