"""The notes' vanishing gradient: backpropagation multiplies one factor per
layer, and sigmoid's derivative is at most 1/4, so in a deep sigmoid network
the first layers' gradients are orders of magnitude smaller than the last
ones'. ReLU (derivative 1 where active) was designed against it; residual
connections y = F(x) + x give the gradient a path around every block.

Three networks on the 64-pixel digits, each with 10 hidden layers of width
32 and freshly initialised (Glorot uniform, the same seed): sigmoid, ReLU,
and sigmoid with every hidden layer after the first a residual block
Residual([Dense(32, 32), Sigmoid()]). One forward and one backward pass of
softmax cross-entropy on a batch of 256 digits; the norm of each Dense
layer's grads["W"], first (input) layer to last (output) layer.
"""
from __future__ import annotations

import numpy as np

from . import new_figure, save_figure, table


def build(kind, depth, width, n_in, n_out):
    import gpudl
    from gpudl.layers import Dense, ReLU, Residual, Sigmoid
    act = ReLU if kind == "relu" else Sigmoid
    layers = [Dense(n_in, width), act()]
    for _ in range(depth - 1):
        if kind == "residual sigmoid":
            layers.append(Residual([Dense(width, width), Sigmoid()]))
        else:
            layers += [Dense(width, width), act()]
    layers.append(Dense(width, n_out))
    return gpudl.Sequential(layers)


def gradient_norms(model, x, y) -> list:
    """Norm of each Dense layer's weight gradient (forward order) after one backward."""
    import gpudl
    from gpudl.layers import Dense
    be = model.backend
    loss = gpudl.losses.CrossEntropy()
    loss.backend = be
    out = model.forward(be.asarray(x, dtype=model.dtype), training=True)
    loss(out, be.asarray(y, dtype=loss.target_dtype(model.dtype)))
    model.backward(loss.backward(), need_input_grad=False)
    return [float(np.linalg.norm(be.to_numpy(layer.grads["W"])))
            for layer in model.walk() if isinstance(layer, Dense)]


def run(quick=False, seed=0, out_dir="runs/demos", print_fn=print) -> dict:
    import gpudl
    from gpudl.data import load_digits
    (x, y), _ = load_digits(seed=seed)
    batch = 64 if quick else 256
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), batch, replace=False)
    x, y = x[idx], y[idx]
    depth, width = 10, 32
    result, rows = {"depth": depth, "width": width, "networks": {}}, []
    for kind in ("sigmoid", "relu", "residual sigmoid"):
        gpudl.manual_seed(seed)
        norms = gradient_norms(build(kind, depth, width, x.shape[1], 10), x, y)
        ratio = norms[0] / norms[-1]
        result["networks"][kind] = {"norms": norms, "first_last_ratio": ratio}
        rows.append([kind, norms[0], norms[len(norms) // 2], norms[-1], ratio])
    print_fn(f"Gradient norms |dL/dW| after one backward pass: {depth} hidden layers of {width}, "
             f"{batch} digits (layer 1 is the input layer)")
    print_fn(table(["network", "layer 1", f"layer {depth // 2 + 1}", f"layer {depth + 1}",
                    "first / last"], rows, floatfmt="{:.3g}"))

    fig = new_figure(figsize=(6.5, 4))
    if fig is not None:
        ax = fig.add_subplot(1, 1, 1)
        for kind, rec in result["networks"].items():
            ax.semilogy(range(1, len(rec["norms"]) + 1), rec["norms"], "o-",
                        label=f"{kind} (first/last {rec['first_last_ratio']:.2g})")
        ax.set_xlabel("Dense layer (1 = input side)")
        ax.set_ylabel("|dL/dW|")
        ax.set_title(f"gradient norms per layer, {depth} hidden layers, at initialisation")
        ax.legend(fontsize=8)
    result["plot"] = save_figure(fig, out_dir, "vanishing.png", print_fn)
    return result
