"""Loss kernels: each writes a per-row or per-element loss and the gradient.

The mean loss is then a full sum (reduce.sum_1d, two passes) divided by the
count, done by the caller. Gradients come out already divided by the count,
as the backend interface asks.

Scalars (inv/scale factors, clip bounds) must arrive typed like the arrays.
"""
import math

from numba import cuda

from .elementwise import sigmoid_scalar
from .reduce import RX, RY
from .softmax import row_max_sumexp


@cuda.jit
def softmax_cross_entropy(logits, labels, losses, grad):
    """losses[r] = logsumexp(z[r]) - z[r, label]; grad = (softmax(z) - onehot) / N.

    Shifted by the row max, so no exp overflows. A label outside [0, C)
    gives a NaN loss and gradient for its row (a kernel cannot raise; the
    backend turns a NaN loss into an error naming the bad label)."""
    red = cuda.shared.array((RY, RX), logits.dtype)
    n = logits.shape[0]
    c = logits.shape[1]
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.x * RY + ty
    m, s = row_max_sumexp(logits, row, red, tx, ty)
    if row >= n:
        return
    logsum = math.log(s)
    label = labels[row]
    ok = 0 <= label < c
    nf = grad.dtype.type(n)
    one = grad.dtype.type(1)
    nan = grad.dtype.type(math.nan)
    if tx == 0:
        if ok:
            losses[row] = logsum - (logits[row, label] - m)
        else:
            losses[row] = nan
    for j in range(tx, c, RX):
        p = math.exp(logits[row, j] - m - logsum)
        if not ok:
            grad[row, j] = nan
        elif j == label:
            grad[row, j] = (p - one) / nf
        else:
            grad[row, j] = p / nf


@cuda.jit
def mse(pred, target, losses, grad, scale):
    """losses = (p - t)**2; grad = scale * (p - t), scale = 2 / size."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, pred.shape[0], stride):
        d = pred[i] - target[i]
        losses[i] = d * d
        grad[i] = scale * d


@cuda.jit
def binary_cross_entropy(pred, target, losses, grad, lo, hi, size):
    """On probabilities clipped to [lo, hi]: -(t log p + (1 - t) log(1 - p)),
    grad = (p - t) / (p (1 - p)) / size. log1p(-p) keeps precision near p = 1.
    A prediction outside [0, 1] gets an infinite loss, which no probability
    can give (the clipping bounds it): a kernel cannot raise, so the backend
    and the Trainer turn it into the error that points to from_logits=True."""
    zero = pred.dtype.type(0)
    one = pred.dtype.type(1)
    inf = pred.dtype.type(math.inf)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, pred.shape[0], stride):
        x = pred[i]
        p = min(max(x, lo), hi)
        t = target[i]
        if x < zero or x > one:
            losses[i] = inf
        else:
            losses[i] = -(t * math.log(p) + (one - t) * math.log1p(-p))
        grad[i] = (p - t) / (p * (one - p)) / size


@cuda.jit
def binary_cross_entropy_logits(z, target, losses, grad, size):
    """From logits: max(z, 0) - z t + log(1 + exp(-|z|)), which never
    overflows; grad = (sigmoid(z) - t) / size."""
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, z.shape[0], stride):
        v = z[i]
        t = target[i]
        losses[i] = max(v, zero) - v * t + math.log1p(math.exp(-abs(v)))
        grad[i] = (sigmoid_scalar(v, one) - t) / size
