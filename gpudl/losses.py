"""Losses: ``loss(pred, target)`` returns the batch mean; ``backward()`` its gradient."""
from __future__ import annotations

import numpy as np

from .backend import get_backend
from .errors import ShapeError


class Loss:
    """Call with (prediction, target) arrays of the current backend."""

    #: whether ``correct`` counts right answers (classification losses)
    has_accuracy = False

    def __init__(self):
        self._grad = None
        #: the backend to compute on; None means the current one. The Trainer
        #: sets it to the model's, so a model moved with .to() keeps working.
        self.backend = None

    def __call__(self, pred, target) -> float:
        self._check(pred, target)
        value, self._grad = self._compute(self.backend or get_backend(), pred, target)
        return value

    def accumulate(self, pred, target, metrics):
        """The loss of a batch without reading it back: keeps the gradient for
        backward(), adds the batch's loss sum (mean times batch size) to
        metrics[0], its number of correct answers to metrics[1] (when
        has_accuracy), and writes the loss sum to metrics[2]. ``metrics`` is a
        float64 array of the backend; the Trainer reads it a few times an
        epoch, not after every batch."""
        self._check(pred, target)
        be = self.backend or get_backend()
        items, self._grad = self._compute(be, pred, target, reduce=False)
        n = pred.shape[0]
        be.metric_add(metrics, 0, items, n / max(int(items.shape[0]), 1), last=2)
        if self.has_accuracy:
            be.metric_add(metrics, 1, self._correct_flags(be, pred, target))

    def _correct_flags(self, be, pred, target):
        raise NotImplementedError

    def nonfinite_hint(self, value):
        """What a non-finite mean loss means for this loss, if more than a
        diverged run (the Trainer's message then); None otherwise."""
        return None

    def backward(self):
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss")
        return self._grad

    # ---- used by the trainer
    def target_dtype(self, model_dtype):
        return model_dtype

    def check_targets(self, y: np.ndarray, out_shape: tuple) -> None:
        """Validate host targets against the model's per-sample output shape."""
        if tuple(y.shape[1:]) != tuple(out_shape):
            raise ShapeError(f"{type(self).__name__}: targets have per-sample shape "
                             f"{tuple(y.shape[1:])} but the model outputs {tuple(out_shape)}")

    def correct(self, pred_host: np.ndarray, y_host: np.ndarray):
        """Number of correct predictions (only called when has_accuracy)."""
        raise NotImplementedError

    def _check(self, pred, target):
        if tuple(pred.shape) != tuple(target.shape):
            raise ShapeError(f"{type(self).__name__}: prediction shape {tuple(pred.shape)} "
                             f"and target shape {tuple(target.shape)} differ")

    def _compute(self, be, pred, target, reduce=True):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class MSE(Loss):
    """Mean squared error over all elements."""

    def _compute(self, be, pred, target, reduce=True):
        return be.mse(pred, target, reduce=reduce)


class BinaryCrossEntropy(Loss):
    """-(t log p + (1 - t) log(1 - p)), averaged; targets in [0, 1].

    ``from_logits=True`` takes raw scores and applies the sigmoid inside,
    stably; otherwise predictions are probabilities (after a Sigmoid layer)."""

    has_accuracy = True

    def __init__(self, from_logits: bool = False):
        super().__init__()
        self.from_logits = from_logits

    def _compute(self, be, pred, target, reduce=True):
        return be.binary_cross_entropy(pred, target, from_logits=self.from_logits, reduce=reduce)

    def nonfinite_hint(self, value):
        # clipped probabilities bound every term: only a prediction outside
        # [0, 1] makes the loss infinite (the CUDA kernel's mark of one)
        if not self.from_logits and value == float("inf"):
            from .backend.base import BCE_RANGE
            return "BinaryCrossEntropy: " + BCE_RANGE.format(", got values outside it")
        return None

    def check_targets(self, y, out_shape):
        super().check_targets(y, out_shape)
        if y.size and (np.min(y) < 0 or np.max(y) > 1):
            raise ValueError(f"BinaryCrossEntropy: targets must lie in [0, 1], "
                             f"got values from {np.min(y)} to {np.max(y)}")

    def correct(self, pred_host, y_host):
        threshold = 0.0 if self.from_logits else 0.5
        return int(np.sum((pred_host >= threshold) == (y_host >= 0.5)))

    def _correct_flags(self, be, pred, target):
        return be.correct_flags(pred, target, "threshold", 0.0 if self.from_logits else 0.5)

    def __repr__(self):
        return f"BinaryCrossEntropy(from_logits={self.from_logits})"


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits (N, C) and integer labels (N,) in [0, C)."""

    has_accuracy = True

    def _check(self, pred, target):
        if pred.ndim != 2 or target.ndim != 1 or target.shape[0] != pred.shape[0]:
            raise ShapeError(f"CrossEntropy expects logits (N, C) and labels (N,), got "
                             f"logits {tuple(pred.shape)} and labels {tuple(target.shape)}")
        if target.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropy: labels must be integers, got dtype {target.dtype}")

    def _compute(self, be, pred, target, reduce=True):
        return be.softmax_cross_entropy(pred, target, reduce=reduce)

    def _correct_flags(self, be, pred, target):
        return be.correct_flags(pred, target, "argmax")

    def target_dtype(self, model_dtype):
        return np.int64

    def check_targets(self, y, out_shape):
        if y.ndim != 1:
            raise ShapeError(f"CrossEntropy: labels must be a 1-D array of class indices, "
                             f"got shape {y.shape}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ValueError("CrossEntropy: labels must be whole numbers (class indices)")
        elif y.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropy: labels must be integers, got dtype {y.dtype}")
        classes = out_shape[-1]
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)]
            raise ValueError(f"CrossEntropy: labels must lie in [0, {classes}) for a model with "
                             f"{classes} outputs; found {len(bad)} out of range, e.g. {bad[0]}")

    def correct(self, pred_host, y_host):
        return int(np.sum(pred_host.argmax(axis=1) == y_host))


LOSSES = {"mse": MSE, "binary_cross_entropy": BinaryCrossEntropy, "cross_entropy": CrossEntropy}
