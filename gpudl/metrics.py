"""Classification metrics beyond accuracy, on host arrays: top-k accuracy, the
confusion matrix and per-class precision, recall and F1 (sklearn's
definitions, without needing sklearn).

    scores = model.predict(x_test)                 # (N, classes) logits
    gpudl.metrics.top_k_accuracy(y_test, scores, k=3)
    gpudl.metrics.confusion_matrix(y_test, scores)  # argmax taken for 2-D scores
    gpudl.metrics.precision_recall_f1(y_test, scores)["f1"]

``Trainer.evaluate(x, y, metrics=["top_k", "confusion", "precision_recall_f1"])``
adds them to its result.
"""
from __future__ import annotations

import re

import numpy as np


def _labels(y, what="y_true"):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of class labels, got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{what}: class labels must be whole numbers")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{what}: expected integer class labels, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{what}: class labels must be >= 0, got {y.min()}")
    return y.astype(np.int64)


def _predictions(y_pred):
    """Labels from labels (1-D) or from scores (2-D: argmax over classes)."""
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        return np.argmax(y_pred, axis=1), y_pred.shape[1]
    return _labels(y_pred, "y_pred"), None


def _classes(num_classes, *label_arrays):
    seen = max((int(a.max()) + 1 for a in label_arrays if a.size), default=0)
    if num_classes is None:
        return seen
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if seen > num_classes:
        raise ValueError(f"a label {seen - 1} is outside num_classes={num_classes}")
    return int(num_classes)


def top_k_accuracy(y_true, scores, k=5) -> float:
    """The share of samples whose true class is among the k highest scores
    (ties broken towards the lower class index)."""
    y = _labels(y_true)
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[0] != y.shape[0]:
        raise ValueError(f"top_k_accuracy: scores must be (N, classes) with N = {len(y)}, "
                         f"got {scores.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k_accuracy: k must be a positive integer, got {k!r}")
    if y.size and y.max() >= scores.shape[1]:
        raise ValueError(f"top_k_accuracy: label {y.max()} is outside the {scores.shape[1]} "
                         f"classes of the scores")
    if y.size == 0:
        raise ValueError("top_k_accuracy: no samples")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :min(k, scores.shape[1])]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def confusion_matrix(y_true, y_pred, num_classes=None) -> np.ndarray:
    """(classes, classes) int64 counts: row i, column j holds the samples of
    true class i predicted as j. ``y_pred`` is labels or (N, classes) scores."""
    y = _labels(y_true)
    pred, width = _predictions(y_pred)
    if pred.shape != y.shape:
        raise ValueError(f"confusion_matrix: {len(y)} true labels but {len(pred)} predictions")
    n = _classes(num_classes if num_classes is not None else width, y, pred)
    return np.bincount(y * n + pred, minlength=n * n).reshape(n, n).astype(np.int64)


def precision_recall_f1(y_true, y_pred, num_classes=None) -> dict:
    """Per class (arrays indexed by class): ``precision`` = TP / (TP + FP),
    ``recall`` = TP / (TP + FN), ``f1`` their harmonic mean and ``support``
    (true samples); a ratio whose denominator is 0 is 0 (as sklearn's
    zero_division=0). Also ``macro_*``: the unweighted means over classes."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)
    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support,
            "macro_precision": float(precision.mean()), "macro_recall": float(recall.mean()),
            "macro_f1": float(f1.mean())}


#: what ``Trainer.evaluate(metrics=[...])`` accepts: "top_k" (k = 5) or "top_K"
#: for another k, "confusion" and "precision_recall_f1"
METRICS = ("top_k", "confusion", "precision_recall_f1")


def check_names(names) -> list:
    if isinstance(names, str):
        names = [names]
    names = list(names)
    for name in names:
        if name not in METRICS and not (isinstance(name, str) and re.fullmatch(r"top_\d+", name)):
            raise ValueError(f"evaluate: unknown metric {name!r}; choose from {METRICS} "
                             f"(or top_K such as top_3)")
    return names


def compute(names, scores, y_true) -> dict:
    """The metrics ``names`` (see METRICS) of (N, classes) ``scores``."""
    out = {}
    for name in check_names(names):
        if name.startswith("top_"):
            k = 5 if name == "top_k" else int(name[4:])
            out[f"top_{k}_accuracy"] = top_k_accuracy(y_true, scores, k)
        elif name == "confusion":
            out["confusion_matrix"] = confusion_matrix(y_true, scores, scores.shape[1])
        else:
            out.update(precision_recall_f1(y_true, scores, scores.shape[1]))
    return out
