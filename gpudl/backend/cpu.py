"""NumPy backend: vectorised, and the reference every CUDA kernel is tested against."""
from __future__ import annotations

import math

import numpy as np

from . import cpu_bn, cpu_conv, cpu_pool, dropout_key
from .. import precision as prec
from ..errors import ShapeError
from .base import BCE_RANGE, Backend

BCE_EPS = 1e-7


class CPUBackend(Backend):
    name = "cpu"
    xp = np
    reads_are_free = True

    def asarray(self, x, dtype=None):
        return np.array(x, dtype=dtype, copy=True, order="C")

    def to_numpy(self, x):
        return np.array(x, copy=True)

    def device_name(self):
        return "NumPy on the host CPU"

    # ---- linear algebra
    def matmul(self, a, b, trans_a=False, trans_b=False, precision=None):
        a, b = self._lowp(precision, a, b)
        a = a.T if trans_a else a
        b = b.T if trans_b else b
        return np.ascontiguousarray(a @ b)

    def add_bias(self, z, b):
        z += b

    def sum_rows(self, g):
        return g.sum(axis=0)

    def axpby(self, alpha, x, beta, y, out=None):
        if out is None:
            return alpha * x + beta * y
        out[...] = alpha * x + beta * y
        return out

    # ---- convolution
    def round_to(self, x, fmt):
        return prec.round_to(x, fmt)

    def conv2d(self, x, w, stride, pads, dilation, groups=1, precision=None):
        x, w = self._lowp(precision, x, w)
        return cpu_conv.conv2d(x, w, stride, pads, dilation, groups)

    def conv2d_backward_input(self, dy, w, in_hw, stride, pads, dilation, groups=1,
                              precision=None):
        dy, w = self._lowp(precision, dy, w)
        return cpu_conv.conv2d_backward_input(dy, w, in_hw, stride, pads, dilation, groups)

    def conv2d_backward_weight(self, dy, x, k_hw, stride, pads, dilation, groups=1,
                               precision=None):
        dy, x = self._lowp(precision, dy, x)
        return cpu_conv.conv2d_backward_weight(dy, x, k_hw, stride, pads, dilation, groups)

    def add_channel_bias(self, y, b):
        y += b.reshape(1, -1, 1, 1)

    def sum_channels(self, g):
        return g.sum(axis=(0, 2, 3))

    # ---- pooling
    def max_pool2d(self, x, k_hw, stride, pads):
        return cpu_pool.max_pool2d(x, k_hw, stride, pads)

    def max_pool2d_backward(self, dy, argmax, in_hw, k_hw, stride, pads):
        return cpu_pool.max_pool2d_backward(dy, argmax, in_hw, k_hw, stride, pads)

    def avg_pool2d(self, x, k_hw, stride, pads):
        return cpu_pool.avg_pool2d(x, k_hw, stride, pads)

    def avg_pool2d_backward(self, dy, in_hw, k_hw, stride, pads):
        return cpu_pool.avg_pool2d_backward(dy, in_hw, k_hw, stride, pads)

    # ---- batch normalization
    def batchnorm_stats(self, x):
        return cpu_bn.batchnorm_stats(x)

    def batchnorm_forward(self, x, mean, var, gamma, beta, eps):
        return cpu_bn.batchnorm_forward(x, mean, var, gamma, beta, eps)

    def batchnorm_backward(self, dy, x, mean, invstd, gamma):
        return cpu_bn.batchnorm_backward(dy, x, mean, invstd, gamma)

    # ---- dropout
    def dropout_mask(self, shape, p, seed, counter, dtype):
        return dropout_key.mask(shape, p, seed, counter, dtype)

    def dropout_mask_keyed(self, shape, p, keys, dtype):
        return dropout_key.mask_from_key(shape, p, np.uint64(keys[0]), np.uint64(keys[1]), dtype)

    def multiply(self, a, b):
        if a.shape != b.shape:
            raise ShapeError(f"multiply: shapes {a.shape} and {b.shape} differ")
        return a * b

    # ---- data augmentation: the reference of kernels/augment.py, same operation order
    def augment_affine_device(self, x, theta, fill=0.0, nearest=False):
        return self.augment_affine(x, theta, fill, nearest)

    def augment_affine(self, x, theta, fill=0.0, nearest=False):
        theta = np.asarray(theta, np.float64)
        self._affine_check(x, theta)
        x = np.ascontiguousarray(x)
        dt = x.dtype.type
        n, c, h, w = x.shape
        t = theta.astype(x.dtype)[:, :, None, None]                   # (N, 6, 1, 1)
        i, j = np.arange(h, dtype=x.dtype)[:, None], np.arange(w, dtype=x.dtype)[None, :]
        sy = t[:, 0] * i + t[:, 1] * j + t[:, 2]                      # (N, H, W)
        sx = t[:, 3] * i + t[:, 4] * j + t[:, 5]
        ns, cs = np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]

        def tap(iy, ix):  # x[n, :, iy, ix] (N, C, H, W), fill outside the image
            inside = ((iy >= 0) & (iy < h) & (ix >= 0) & (ix < w))[:, None]
            v = x[ns, cs, np.clip(iy, 0, h - 1)[:, None], np.clip(ix, 0, w - 1)[:, None]]
            return np.where(inside, v, dt(fill))

        with np.errstate(invalid="ignore"):  # a far-off point: cast garbage, then fill
            if nearest:
                return tap(np.floor(sy + dt(0.5)).astype(np.int64),
                           np.floor(sx + dt(0.5)).astype(np.int64))
            fy, fx = np.floor(sy), np.floor(sx)
            y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
        wy, wx, one = (sy - fy)[:, None], (sx - fx)[:, None], dt(1)
        top = (one - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1)
        bot = (one - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)
        return (one - wy) * top + wy * bot

    # ---- activations
    def relu(self, x):
        return np.maximum(x, 0)

    def relu_backward(self, x, grad):
        return grad * (x > 0)

    def sigmoid(self, x):
        # Split by sign so exp never overflows.
        out = np.empty_like(x)
        pos = x >= 0
        out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
        e = np.exp(x[~pos])
        out[~pos] = e / (1.0 + e)
        return out

    def sigmoid_backward(self, y, grad):
        return grad * y * (1 - y)

    def tanh(self, x):
        return np.tanh(x)

    def tanh_backward(self, y, grad):
        return grad * (1 - y * y)

    def step(self, x):
        return (x >= 0).astype(x.dtype)

    def softmax(self, x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def softmax_backward(self, y, grad):
        return y * (grad - (grad * y).sum(axis=1, keepdims=True))

    # ---- losses
    def softmax_cross_entropy(self, logits, labels, reduce=True):
        if logits.ndim != 2 or labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ShapeError(f"softmax_cross_entropy: logits must be (N, C) and labels (N,), got "
                             f"logits of shape {tuple(logits.shape)} and labels of shape "
                             f"{tuple(labels.shape)}")
        self._check_labels(labels, logits.shape[1])
        n = logits.shape[0]
        shifted = logits - logits.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(shifted).sum(axis=1))
        rows = np.arange(n)
        losses = logsum - shifted[rows, labels]
        grad = np.exp(shifted - logsum[:, None])
        grad[rows, labels] -= 1
        grad /= n
        return (float(np.sum(losses) / n) if reduce else losses), grad

    def mse(self, pred, target, reduce=True):
        diff = pred - target
        sq = diff * diff
        return (float(np.sum(sq) / diff.size) if reduce else sq.reshape(-1)), \
            (2.0 / diff.size) * diff

    def binary_cross_entropy(self, pred, target, from_logits=False, reduce=True):
        size = pred.size
        if from_logits:
            z = pred
            loss = np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
            grad = (self.sigmoid(z) - target) / size
        else:
            outside = (pred < 0) | (pred > 1)
            if outside.any():
                first = tuple(int(i) for i in np.argwhere(outside)[0])
                raise ValueError(BCE_RANGE.format(f", got {float(pred[first])} at index {first}"))
            p = np.clip(pred, BCE_EPS, 1 - BCE_EPS)
            loss = -(target * np.log(p) + (1 - target) * np.log1p(-p))
            grad = (p - target) / (p * (1 - p)) / size
        grad = grad.astype(pred.dtype, copy=False)
        return (float(np.sum(loss) / size) if reduce else loss.reshape(-1)), grad

    # ---- optimizer (scalars enter as Python floats, so float32 stays float32)
    @staticmethod
    def _effective_grad(param, grad, weight_decay, l1, grad_scale):
        g = grad * float(grad_scale) if grad_scale != 1 else grad
        if weight_decay:
            g = g + float(weight_decay) * param
        if l1:
            g = g + float(l1) * np.sign(param)
        return g

    def sgd_update(self, param, grad, velocity, lr, momentum=0.0,
                   nesterov=False, weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        self._check_state("sgd_update", param, grad, False, velocity=velocity)
        g = self._effective_grad(param, grad, weight_decay, l1, grad_scale)
        lr, momentum = float(lr), float(momentum)
        if momentum == 0.0:
            param -= lr * g
            return
        velocity *= momentum
        velocity -= lr * g
        if nesterov:
            param += momentum * velocity - lr * g
        else:
            param += velocity

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, step,
                    weight_decay=0.0, decoupled=False, l1=0.0, grad_scale=1.0, hyper=None):
        self._check_state("adam_update", param, grad, False, m=m, v=v)
        lr, beta1, beta2, eps = float(lr), float(beta1), float(beta2), float(eps)
        g = self._effective_grad(param, grad, 0.0 if decoupled else weight_decay, l1, grad_scale)
        if decoupled and weight_decay:
            param *= 1.0 - lr * float(weight_decay)
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * g * g
        step_size = lr / (1.0 - beta1 ** step)
        bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
        param -= step_size * m / (np.sqrt(v) / bc2_sqrt + eps)

    def rmsprop_update(self, param, grad, square_avg, buf, lr, alpha, eps, momentum=0.0,
                       weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        self._check_state("rmsprop_update", param, grad, False, square_avg=square_avg, buf=buf)
        lr, alpha, eps, momentum = float(lr), float(alpha), float(eps), float(momentum)
        g = self._effective_grad(param, grad, weight_decay, l1, grad_scale)
        square_avg *= alpha
        square_avg += (1.0 - alpha) * g * g
        d = g / (np.sqrt(square_avg) + eps)
        if momentum == 0.0:
            param -= lr * d
            return
        buf *= momentum
        buf += d
        param -= lr * buf

    def adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay=0.0, l1=0.0,
                       grad_scale=1.0, hyper=None):
        self._check_state("adagrad_update", param, grad, False, sum_sq=sum_sq)
        g = self._effective_grad(param, grad, weight_decay, l1, grad_scale)
        sum_sq += g * g
        param -= float(lr) * g / (np.sqrt(sum_sq) + float(eps))

    def sum_squares(self, arrays):
        return float(sum(np.dot(a.ravel(), a.ravel()) for a in arrays))

    # ---- channel concatenation
    def concat_channels(self, xs):
        self._concat_shapes(xs)
        return np.concatenate([np.asarray(x) for x in xs], axis=1)

    def split_channels(self, g, sizes):
        sizes = self._split_sizes(g, sizes)
        starts = np.cumsum([0] + sizes)
        return [g[:, a:b].copy() for a, b in zip(starts[:-1], starts[1:])]

    # ---- data movement and metrics
    def take_rows(self, x, idx):
        return np.ascontiguousarray(x[idx])

    def argmax_rows(self, x):
        return x.argmax(axis=1).astype(np.int64)

    def take_rows_at(self, x, perm, offset, count):
        start = int(offset[0])
        return np.ascontiguousarray(x[perm[start:start + count]])

    def metric_add(self, metrics, slot, values, factor=1.0, last=-1):
        value = float(np.sum(values)) * float(factor)
        metrics[slot] += value
        if last >= 0:
            metrics[last] = value

    def correct_flags(self, pred, target, kind, threshold=0.5):
        if kind == "argmax":
            return (pred.argmax(axis=1) == target).astype(np.float64)
        return ((pred >= threshold) == (target >= 0.5)).astype(np.float64).reshape(-1)
