"""The one backend interface every layer, loss and optimizer talks to.

A backend owns its arrays (NumPy on the CPU, CuPy on a GPU, NumPy under the
numba CUDA simulator) and one method per op. Layers call these methods and never
branch on the device. The CPU backend is the reference: every CUDA kernel is
tested against it.

Conventions shared by all implementations:
- 2-D activations are (batch, features), row-major and C-contiguous.
- Ops return new arrays unless their name or docstring says "in place".
- Losses return ``(loss, grad)`` where ``loss`` is a Python float (the mean
  over the batch) and ``grad`` is d(loss)/d(prediction), already divided by
  the batch size.
"""
from __future__ import annotations

import abc
import operator

import numpy as np

from .. import precision as prec
from ..errors import ShapeError


#: binary_cross_entropy(from_logits=False) on a prediction that is not a probability
BCE_RANGE = ("binary_cross_entropy: predictions must be probabilities in [0, 1]{}; for raw "
             "scores (a model without a final Sigmoid) use BinaryCrossEntropy(from_logits=True)")


class Backend(abc.ABC):
    #: "cpu" or "cuda"
    name: str = "?"
    #: the array module used for allocation (numpy or cupy)
    xp = None

    # ---- memory -----------------------------------------------------------
    @abc.abstractmethod
    def asarray(self, x, dtype=None):
        """Copy a host (NumPy) array, or an array of this backend, to this backend."""

    @abc.abstractmethod
    def to_numpy(self, x):
        """Return a host NumPy copy of an array of this backend."""

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self):
        """Wait until queued device work is done (a no-op on the CPU)."""

    # ---- per-step host values and captured steps (gpudl/backend/capture.py)
    #: the capture in progress, or None
    _capture = None
    #: whether capture() records steps (the CUDA backend, GPU and simulator)
    can_capture = False

    #: whether reading an array back costs nothing (host memory): the Trainer
    #: then checks the loss after every batch instead of a few times an epoch
    reads_are_free = False

    def set_array(self, dst, host):
        """In place: dst[...] = host (a NumPy array), a host-to-device copy into
        an array that keeps its address (the epoch's permutation, the metrics)."""
        dst[...] = host

    def step_input(self, producer):
        """The step's host values as arrays of this backend: ``producer()``
        returns a NumPy array (or a tuple of them); each becomes an array of
        this backend. While a step is being captured the producer is
        recorded too and runs again before every replay, its values copied
        into the same arrays (see capture.py); here, on the host, the values
        are returned as they are."""
        return producer()

    def capture(self, fn):
        """Run ``fn`` once as a captured step and return the capture, whose
        ``replay()`` repeats it; the capture's own run happens only at its
        first ``replay(first=True)``."""
        raise NotImplementedError(f"the {self.name} backend has no captured steps")

    def device_name(self) -> str:
        return self.name

    # ---- linear algebra ---------------------------------------------------
    @abc.abstractmethod
    def matmul(self, a, b, trans_a=False, trans_b=False, precision=None):
        """op(a) @ op(b) for 2-D arrays, op(x) = x.T when its flag is set.
        ``precision`` ("tf32", "bf16", "fp16"; float32 arrays only): the
        inputs are rounded to that format first and the products summed in
        float32, as a tensor core does (gpudl/precision.py)."""

    @abc.abstractmethod
    def round_to(self, x, fmt):
        """A float32 array of x's values rounded to fmt ("tf32", "bf16", "fp16"),
        bit for bit as gpudl.precision.round_to."""

    def _lowp(self, fmt, *arrays):
        """The arrays rounded to fmt for a reduced-precision matmul/conv (as
        they are for fmt None)."""
        if fmt is None:
            return arrays
        prec.check_format(fmt)
        for a in arrays:
            if np.dtype(a.dtype) != np.float32:
                raise ValueError(f"precision={fmt!r} applies to float32 arrays, got {a.dtype} "
                                 f"(float64 layers always compute in float64)")
        return tuple(self.round_to(a, fmt) for a in arrays)

    @abc.abstractmethod
    def add_bias(self, z, b):
        """In place: z[n, j] += b[j] for z (N, F) and b (F,)."""

    @abc.abstractmethod
    def sum_rows(self, g):
        """Sum over the batch axis: (N, F) -> (F,). The bias gradient."""

    @abc.abstractmethod
    def axpby(self, alpha, x, beta, y, out=None):
        """alpha * x + beta * y, elementwise, same shapes; into ``out`` (which may
        be x or y: a running average updated in place) when given."""

    # ---- convolution (NCHW; w (O, C // groups, KH, KW); no bias) --------
    # stride and dilation are (h, w) pairs, pads is (top, bottom, left, right);
    # precision as for matmul: both inputs rounded, float32 sums.
    @abc.abstractmethod
    def conv2d(self, x, w, stride, pads, dilation, groups=1, precision=None):
        """(N, C, H, W) -> (N, O, OH, OW). groups = C is depthwise."""

    @abc.abstractmethod
    def conv2d_backward_input(self, dy, w, in_hw, stride, pads, dilation, groups=1, precision=None):
        """d(loss)/dx, (N, C, H, W) with (H, W) = in_hw, from dy (N, O, OH, OW).
        Also the forward pass of a transposed convolution."""

    @abc.abstractmethod
    def conv2d_backward_weight(self, dy, x, k_hw, stride, pads, dilation, groups=1, precision=None):
        """d(loss)/dw, (O, C // groups, KH, KW), from dy and the forward input x."""

    def pad_bottom_right(self, x, rows, cols):
        """A new (N, C, H + rows, W + cols) array: x with zeros appended below and
        to the right. Array work in stream order (CuPy's copy on a GPU)."""
        n, c, h, w = x.shape
        out = self.zeros((n, c, h + rows, w + cols), x.dtype)
        self._assign(out[:, :, :h, :w], x)
        return out

    def crop_bottom_right(self, x, h, w):
        """A new C-contiguous (N, C, h, w) array: x's top-left h x w corner."""
        out = self.empty(tuple(x.shape[:2]) + (h, w), x.dtype)
        self._assign(out, x[:, :, :h, :w])
        return out

    def _assign(self, dst, src):
        dst[...] = src

    @abc.abstractmethod
    def add_channel_bias(self, y, b):
        """In place: y[n, c, h, w] += b[c] for y (N, C, H, W)."""

    @abc.abstractmethod
    def sum_channels(self, g):
        """Sum over N, H, W: (N, C, H, W) -> (C,). A convolution's bias gradient."""

    # ---- pooling (NCHW; k_hw, stride (h, w) pairs; pads (top, bottom, left, right))
    @abc.abstractmethod
    def max_pool2d(self, x, k_hw, stride, pads):
        """(N, C, H, W) -> (y (N, C, OH, OW), argmax (N, C, OH, OW) int64): the max of
        each window and the flat index ih * W + iw of the element that held it (the
        first one in row-major window order on ties). Padding never wins: a window
        lying wholly in the padding is an error of the caller (pads < kernel)."""

    @abc.abstractmethod
    def max_pool2d_backward(self, dy, argmax, in_hw, k_hw, stride, pads):
        """d(loss)/dx (N, C, H, W): each dy goes to the element its argmax names;
        an element chosen by several overlapping windows receives their sum. The
        geometry lets a gather visit only the windows that hold an element."""

    @abc.abstractmethod
    def avg_pool2d(self, x, k_hw, stride, pads):
        """Mean of each window over the elements inside the image: padding is
        excluded from the count (PyTorch's count_include_pad=False)."""

    @abc.abstractmethod
    def avg_pool2d_backward(self, dy, in_hw, k_hw, stride, pads):
        """d(loss)/dx: each dy spread evenly over the in-image elements of its window."""

    # ---- batch normalization (x is (N, C, H, W); a dense (N, C) batch is (N, C, 1, 1))
    @abc.abstractmethod
    def batchnorm_stats(self, x):
        """Per-channel mean and biased variance over N, H, W: two (C,) arrays.
        Numerically stable (two passes or Welford), never E[x^2] - E[x]^2."""

    @abc.abstractmethod
    def batchnorm_forward(self, x, mean, var, gamma, beta, eps):
        """y = gamma (x - mean) / sqrt(var + eps) + beta per channel; returns
        (y, invstd) with invstd = 1 / sqrt(var + eps), shape (C,)."""

    @abc.abstractmethod
    def batchnorm_backward(self, dy, x, mean, invstd, gamma):
        """The training-mode gradient (mean and variance depend on x):
        dbeta = sum(dy), dgamma = sum(dy * xhat) with xhat = (x - mean) invstd,
        dx = gamma invstd (dy - dbeta / M - xhat dgamma / M), M = N H W.
        Returns (dx, dgamma, dbeta)."""

    # ---- dropout
    @abc.abstractmethod
    def dropout_mask(self, shape, p, seed, counter, dtype):
        """An inverted-dropout mask: 1 / (1 - p) for kept units, 0 for dropped ones,
        drawn from the counter-based generator of kernels/dropout.py, so every
        backend gives the same mask for the same (seed, counter)."""

    @abc.abstractmethod
    def dropout_mask_keyed(self, shape, p, keys, dtype):
        """dropout_mask with the draw's [key, threshold] (uint64, from
        dropout_key.key_and_threshold) already an array of this backend, as a
        step input: a captured step draws a new mask each replay."""

    @abc.abstractmethod
    def multiply(self, a, b):
        """a * b, elementwise, same shapes."""

    # ---- data augmentation (gpudl.augment draws theta; kernels/augment.py samples)
    @abc.abstractmethod
    def augment_affine(self, x, theta, fill=0.0, nearest=False):
        """A new array like x (N, C, H, W), float: sample n, output pixel (i, j)
        shows x[n] at sy = t0 i + t1 j + t2, sx = t3 i + t4 j + t5, t = theta[n]
        (host (N, 6), cast to x's dtype), read bilinearly (or at the nearest
        pixel, for integer theta) with fill outside the image."""

    @abc.abstractmethod
    def augment_affine_device(self, x, theta, fill=0.0, nearest=False):
        """augment_affine with theta already an array of this backend, typed
        like x (a step input)."""

    @staticmethod
    def _affine_check(x, theta):
        if len(x.shape) != 4 or tuple(theta.shape) != (x.shape[0], 6):
            raise ShapeError(f"augment_affine: x must be (N, C, H, W) and theta (N, 6); got "
                             f"x of shape {tuple(x.shape)} and theta of shape {tuple(theta.shape)}")
        if x.dtype.kind != "f":
            raise TypeError(f"augment_affine: x must be a float array, got {x.dtype}")

    # ---- activations (forward takes the input; backward takes what it names)
    @abc.abstractmethod
    def relu(self, x): ...

    @abc.abstractmethod
    def relu_backward(self, x, grad):
        """grad * (x > 0), x the forward input."""

    @abc.abstractmethod
    def sigmoid(self, x): ...

    @abc.abstractmethod
    def sigmoid_backward(self, y, grad):
        """grad * y * (1 - y), y the forward output."""

    @abc.abstractmethod
    def tanh(self, x): ...

    @abc.abstractmethod
    def tanh_backward(self, y, grad):
        """grad * (1 - y**2), y the forward output."""

    @abc.abstractmethod
    def step(self, x):
        """The perceptron threshold: 1 where x >= 0, else 0."""

    @abc.abstractmethod
    def softmax(self, x):
        """Row-wise softmax of (N, C), shifted by the row max for stability."""

    @abc.abstractmethod
    def softmax_backward(self, y, grad):
        """Row-wise Jacobian-vector product: y * (grad - sum(grad * y, axis=1))."""

    # ---- losses -----------------------------------------------------------
    # With reduce=False each returns (per-item losses, grad) and reads nothing
    # back: 1-D losses, one per sample (cross-entropy) or per element (MSE,
    # BCE), whose sum times ``loss_factor`` is the batch's share of an epoch
    # sum (Trainer metrics). The grad is the same as with reduce=True.
    @staticmethod
    def _check_labels(labels, classes):
        """Host labels in [0, classes), one error for every backend: NumPy would
        raise its own IndexError past the end and wrap a negative label."""
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise IndexError(f"softmax_cross_entropy: label {int(labels[row])} (row {row}) is out "
                             f"of range for {classes} classes: labels must lie in [0, {classes})")

    @abc.abstractmethod
    def softmax_cross_entropy(self, logits, labels, reduce=True):
        """Mean cross-entropy of softmax(logits) (N, C) against integer labels (N,).

        Returns (loss, grad) with grad = (softmax(logits) - onehot(labels)) / N."""

    @abc.abstractmethod
    def mse(self, pred, target, reduce=True):
        """Mean over all elements of (pred - target)**2; grad = 2 (pred - target) / size."""

    @abc.abstractmethod
    def binary_cross_entropy(self, pred, target, from_logits=False, reduce=True):
        """Mean over all elements of -(t log p + (1 - t) log(1 - p)).

        With from_logits, pred holds logits z and p = sigmoid(z), computed
        stably as max(z, 0) - z t + log(1 + exp(-|z|)); grad = (p - t) / size.
        Otherwise p is clipped to [eps, 1 - eps], eps = 1e-7, and
        grad = (p - t) / (p (1 - p)) / size."""

    # ---- optimizer --------------------------------------------------------
    # Every update is in place on ``param`` and its state arrays (shaped like
    # param, C-contiguous), one fused pass. Each follows the gradient
    #     g = grad_scale * grad + weight_decay * param + l1 * sign(param)
    # (grad_scale: gradient clipping's factor, 1 when not clipping; a float or
    # a (1,) array of this backend from clip_scales). The formulas are
    # PyTorch's (torch.optim docs), written out in each method. ``hyper``, when
    # given, is the kernel's row of per-step scalars (gpudl/backend/hyper.py)
    # as an array of this backend typed like param, and the scalar arguments
    # are then only the host's copy of the same values.
    @abc.abstractmethod
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0,
                   nesterov=False, weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        """SGD: v = momentum * v - lr * g                   (the notes' momentum)
        param += v                  (plain momentum, or plain SGD when momentum = 0)
        param += momentum * v - lr * g                 (nesterov)
        ``velocity`` may be None when momentum == 0."""

    @abc.abstractmethod
    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, step,
                    weight_decay=0.0, decoupled=False, l1=0.0, grad_scale=1.0, hyper=None):
        """Adam step number ``step`` (1 for the first), with bias correction:
        param *= 1 - lr * weight_decay   (decoupled, AdamW; then g has no L2 term)
        m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2
        param -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)"""

    @abc.abstractmethod
    def rmsprop_update(self, param, grad, square_avg, buf, lr, alpha, eps, momentum=0.0,
                       weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        """RMSprop: s = alpha s + (1 - alpha) g^2, d = g / (sqrt(s) + eps);
        param -= lr d, or with momentum buf = momentum buf + d, param -= lr buf.
        ``buf`` may be None when momentum == 0."""

    @abc.abstractmethod
    def adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay=0.0, l1=0.0,
                       grad_scale=1.0, hyper=None):
        """Adagrad: sum_sq += g^2, param -= lr g / (sqrt(sum_sq) + eps)."""

    @abc.abstractmethod
    def sum_squares(self, arrays):
        """Sum of x**2 over every element of every array in the list, as a Python
        float: the squared global norm that gradient clipping scales by. One
        host read per dtype present (once per step in practice)."""

    def clip_scales(self, grads, clip_norm):
        """Gradient clipping by global norm without a host read where the
        device allows: (norm, {dtype: scale}), norm = sqrt of the sum of
        squares of every gradient and scale = clip_norm / (norm + 1e-6) when
        below 1, else 1. Here both are host floats; the CUDA backend returns
        device arrays ((2,) float64 [norm, scale] and (1,) per dtype)."""
        import math
        norm = math.sqrt(self.sum_squares(grads))
        coef = clip_norm / (norm + 1e-6)
        scale = coef if coef < 1.0 else 1.0
        return norm, {g.dtype: scale for g in grads}

    @staticmethod
    def _check_state(op, param, grad, contiguous=True, **slots):
        """ShapeError unless grad is shaped like param and every slot array
        (None allowed) is shaped like param, all but grad C-contiguous where
        ``contiguous`` (the kernels view them flat)."""
        if tuple(grad.shape) != tuple(param.shape):
            raise ShapeError(f"{op}: param has shape {tuple(param.shape)} but grad has shape "
                             f"{tuple(grad.shape)}; they must match")
        if contiguous and not param.flags.c_contiguous:
            raise ShapeError(f"{op} updates param in place and needs it C-contiguous")
        for name, x in slots.items():
            if x is not None and (tuple(x.shape) != tuple(param.shape)
                                  or (contiguous and not x.flags.c_contiguous)):
                raise ShapeError(f"{op}: {name} must be C-contiguous and shaped like param "
                                 f"{tuple(param.shape)}, got {tuple(x.shape)}")

    # ---- channel concatenation (concat merges, inception branches) -------
    @abc.abstractmethod
    def concat_channels(self, xs):
        """A new C-contiguous array: the arrays of the list or tuple xs, all (N, C_i)
        or all (N, C_i, H, W) and equal on every axis but 1, concatenated along axis 1."""

    @abc.abstractmethod
    def split_channels(self, g, sizes):
        """concat_channels undone: a list of new C-contiguous arrays, g (N, C) or
        (N, C, H, W) cut along axis 1 into pieces of sizes, which sum to C."""

    @staticmethod
    def _concat_shapes(xs):
        """The shapes of xs as tuples; ShapeError naming them all unless they concatenate."""
        if not isinstance(xs, (list, tuple)):
            raise TypeError(f"concat_channels takes a list or tuple of arrays, "
                            f"got {type(xs).__name__}")
        shapes = [tuple(int(d) for d in x.shape) for x in xs]
        if (not shapes or len(shapes[0]) not in (2, 4)
                or any(len(s) != len(shapes[0]) or s[:1] + s[2:] != shapes[0][:1] + shapes[0][2:]
                       for s in shapes)):
            raise ShapeError("concat_channels needs one or more arrays, all (N, C_i) or all "
                             "(N, C_i, H, W), equal on every axis but 1; got shapes "
                             f"[{', '.join(map(str, shapes))}]")
        return shapes

    @staticmethod
    def _split_sizes(g, sizes):
        """sizes as a list of ints; ShapeError naming g's shape unless they cut g's axis 1."""
        sizes = [operator.index(s) for s in sizes]
        if g.ndim not in (2, 4) or any(s < 0 for s in sizes) or sum(sizes) != g.shape[1]:
            raise ShapeError(f"split_channels: g must be (N, C) or (N, C, H, W) and sizes "
                             f"non-negative with sum C; got g of shape {tuple(g.shape)} and "
                             f"sizes {sizes} (sum {sum(sizes)})")
        return sizes

    # ---- data movement and metrics ---------------------------------------
    @abc.abstractmethod
    def take_rows(self, x, idx):
        """Gather rows: x[idx] for x (N, ...) and an integer index array (M,)."""

    @abc.abstractmethod
    def argmax_rows(self, x):
        """Index of the largest entry of each row of (N, C), as int64 (N,)."""

    @abc.abstractmethod
    def take_rows_at(self, x, perm, offset, count):
        """x[perm[offset[0] : offset[0] + count]] with perm (P,) int64 and offset
        (1,) int64 arrays of this backend: a batch gathered from a device-
        resident data set by the epoch's permutation, the offset a step input."""

    @abc.abstractmethod
    def metric_add(self, metrics, slot, values, factor=1.0, last=-1):
        """In place, float64 metrics: metrics[slot] += sum(values) * factor, and
        metrics[last] = sum(values) * factor when last >= 0. Nothing is read back."""

    @abc.abstractmethod
    def correct_flags(self, pred, target, kind, threshold=0.5):
        """1-D float64 0/1 flags: kind "argmax", one per row, argmax(pred[r]) ==
        target[r]; kind "threshold", one per element, (pred >= threshold) ==
        (target >= 0.5)."""
