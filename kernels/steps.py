"""Kernels of a training step that never waits for the host: the batch gathered
from a device-resident data set, and the epoch's metrics accumulated in place.

The Trainer uploads the epoch's permutation once; each step reads its offset
into it from a one-element device array (a step input the host fills), so
the same launch, captured once, gathers a different batch every replay.
Loss sums and correct counts go into a float64 metrics array the host reads
a few times an epoch instead of after every batch.
"""
from numba import cuda


@cuda.jit
def take_rows_at(x, perm, offset, out):
    """out[r, :] = x[perm[offset[0] + r], :] for x (N, D), perm (P,) int64,
    offset (1,) int64, out (M, D). The host guarantees offset + M <= P and
    perm's entries in [0, N)."""
    d = x.shape[1]
    base = offset[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, out.shape[0] * d, stride):
        r = e // d
        out[r, e - r * d] = x[perm[base + r], e - r * d]


@cuda.jit
def metric_add(metrics, slot, total, factor, last):
    """One thread: metrics[slot] += total[0] * factor in float64, and
    metrics[last] = total[0] * factor when last >= 0 (the latest batch's
    value, for callbacks that ask for it)."""
    if cuda.grid(1) == 0:
        value = total[0] * factor
        metrics[slot] += value
        if last >= 0:
            metrics[last] = value


@cuda.jit
def correct_argmax(logits, labels, out):
    """out[r] = 1 when the first largest entry of row r is labels[r], else 0
    (out float64, one thread per row: rows are short, class counts small)."""
    c = logits.shape[1]
    for r in range(cuda.grid(1), logits.shape[0], cuda.gridsize(1)):
        best = 0
        for j in range(1, c):
            if logits[r, j] > logits[r, best]:
                best = j
        out[r] = 1.0 if best == labels[r] else 0.0


@cuda.jit
def correct_threshold(pred, target, threshold, out):
    """out[i] = 1 when (pred[i] >= threshold) == (target[i] >= 0.5), else 0."""
    half = target.dtype.type(0.5)
    for i in range(cuda.grid(1), pred.shape[0], cuda.gridsize(1)):
        out[i] = 1.0 if (pred[i] >= threshold) == (target[i] >= half) else 0.0
