"""The Trainer's checks of a run: a model and loss that do not fit each other,
and a loss that says the run diverged."""
from __future__ import annotations

import math
import warnings

#: a mean loss this many times the starting one means the run diverged; the
#: starting loss counts as at least 1e-3, so a loss that starts near 0 may move
DIVERGED_FACTOR = 1e3


def warn_double_softmax(model, loss):
    from .layers import Softmax
    from .losses import CrossEntropy
    layers = getattr(model, "layers", None)
    if layers and isinstance(layers[-1], Softmax) and isinstance(loss, CrossEntropy):
        warnings.warn(f"Trainer: the model ends with layer '{layers[-1].name}' (Softmax) and the "
                      f"loss is CrossEntropy, which applies the softmax itself (it takes logits): "
                      f"that is a double softmax. Remove the Softmax layer (predict_proba gives "
                      f"probabilities)", UserWarning, stacklevel=3)


def diverged(value, start, loss, lr, epoch, where):
    """The error that stops the run when ``value`` (a mean loss) is not finite
    or has grown DIVERGED_FACTOR times past ``start`` (None: not measured);
    None while the run is fine. ``where`` names the batches."""
    grew = (start is not None and math.isfinite(value)
            and value > DIVERGED_FACTOR * max(start, 1e-3))
    if math.isfinite(value) and not grew:
        return None
    hint = loss.nonfinite_hint(value)
    if hint is not None:
        return ValueError(f"{hint} (the loss became {value} at epoch {epoch}, {where})")
    what = f"grew from {start:.4g} at the start to {value:.4g}" if grew else f"became {value}"
    return FloatingPointError(f"the loss {what} at epoch {epoch}, {where}: the run diverged; "
                              f"lower the learning rate (now {lr})")


def check_arrays(model, loss, x, y, what="x"):
    """Host arrays x, y after fit's input checks (batch axis, matching counts,
    numbers, finite values, targets that fit the model's outputs); a streamed
    batch goes through the same checks, with ``what`` naming it."""
    import numpy as np

    from .errors import ShapeError
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2:
        raise ShapeError(f"{what}: expected a batch of shape (N, features...), got {x.shape}")
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"{what} has {x.shape[0]} samples but its targets have {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is empty")
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{what}: expected numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x) if x.dtype.kind == "f" else None
    if bad is not None and bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{what} contains {int(bad.sum())} NaN or infinite values "
                         f"(first at index {first})")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise ValueError(f"the targets of {what} contain NaN or infinite values")
    loss.check_targets(y, model.output_shape(x.shape[1:]))
    return x, y


def metrics_result(loss, m, n) -> dict:
    """evaluate()'s dict from the device metrics ``m`` read back (summed loss,
    correct count) over ``n`` samples; a non-finite loss is an error that says
    what the loss suspects (BinaryCrossEntropy's inputs outside [0, 1], say)."""
    result = {"loss": float(m[0]) / n}
    hint = loss.nonfinite_hint(result["loss"])
    if hint is not None:
        raise ValueError(hint)
    if loss.has_accuracy:
        result["accuracy"] = float(m[1]) / n
    return result
