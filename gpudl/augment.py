"""Image augmentation per training batch, seeded, on the device where the batch lives.

    aug = gpudl.augment.Augment(shift=2, flip=True, rotate=10, seed=0)
    trainer.fit(x, y, augment=aug)        # the Trainer calls aug(x_batch, step)

More data is a cure for overfitting; shifted, mirrored and slightly rotated
copies of the training images are data for free. Each sample of a batch gets
its own random

- translation by (dy, dx), integers uniform in [-shift, shift]: the same as
  zero-padding by ``shift`` and cropping back to H x W at a random offset;
- horizontal flip, with probability 1/2 when ``flip``;
- rotation about the image centre by an angle uniform in [-rotate, rotate]
  degrees (positive turns the picture counter-clockwise, as np.rot90 does);

and the output shows flip(shift(rotate(input))), with ``fill`` where it
shows nothing of the input. Without rotation every output pixel is an exact
copy of an input pixel (nearest sampling); with it, pixels are interpolated
bilinearly.

The random numbers come from splitmix64 (as dropout's, gpudl/backend/
dropout_key.py) keyed by (seed, step, sample index, which draw), so a batch's
augmentation depends on nothing but those: the same on every backend, for
any batch size before it, and again on a resumed run. The per-sample work
(four hashes, a cos and a sin) is done here on the host, in float64, and
composed into six numbers per sample, theta (see affine_theta); the
per-pixel work is Backend.augment_affine, a numba.cuda kernel
(kernels/augment.py) on the CUDA backend and its NumPy twin on the CPU.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_backend
from .backend.dropout_key import GOLDEN, mix
from .errors import ShapeError
from .layers.base import init_rng

# XORed into the seed, so an Augment and a Dropout given the same seed draw
# unrelated numbers.
_SALT = np.uint64(0xA0761D6478BD642F)
_DRAWS = 4  # per sample: dy, dx, flip, angle


def draw(seed, step, n, shift=0, flip=False, rotate=0.0):
    """The random parameters of batch ``step``'s n samples:
    (dy int64 (n,), dx int64 (n,), flipped bool (n,), angle float64 degrees (n,)).

    Sample k's draws are mix(key + (4 k + d + 1) * GOLDEN), d = 0..3, with
    key = mix((seed ^ SALT) * GOLDEN + step): each parameter has its own draw,
    so turning one option on or off leaves the others' values unchanged."""
    span = 2 * int(shift) + 1
    with np.errstate(over="ignore"):
        key = mix((np.uint64(int(seed) % 2**64) ^ _SALT) * GOLDEN + np.uint64(int(step) % 2**64))
        ctr = (np.arange(n, dtype=np.uint64)[:, None] * np.uint64(_DRAWS)
               + np.arange(1, _DRAWS + 1, dtype=np.uint64))
        z = mix(key + ctr * GOLDEN)                                    # (n, 4)
    # the top 32 bits times span, over 2^32: uniform on 0 .. span-1 (span < 2^32)
    d = ((z[:, :2] >> np.uint64(32)) * np.uint64(span)) >> np.uint64(32)
    dy, dx = d.astype(np.int64).T - int(shift)
    flipped = ((z[:, 2] >> np.uint64(63)) == 1) & bool(flip)
    u = (z[:, 3] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1)
    return dy, dx, flipped, float(rotate) * (2.0 * u - 1.0)


def affine_theta(h, w, dy, dx, flipped, angle):
    """(n, 6) float64: for each sample, the map from output pixel (i, j) to the
    input point it shows, sy = t0 i + t1 j + t2, sx = t3 i + t4 j + t5, for the
    image flip(shift(rotate(x))) of an H x W image x (Backend.augment_affine).

    Output (i, j) is shifted-rotated (i, j') with j' = W-1-j if flipped else j;
    that shows rotated (i - dy, j' - dx); rotation by a about the centre
    (cy, cx) = ((H-1)/2, (W-1)/2) reads u = i - dy - cy, v = j' - dx - cx at
    sy = cy + cos(a) u + sin(a) v, sx = cx - sin(a) u + cos(a) v. Integer shifts
    and flips with angle 0 give integer theta, exact in any float type."""
    dy, dx, angle = (np.asarray(a, np.float64).reshape(-1) for a in (dy, dx, angle))
    f = np.where(np.asarray(flipped, bool).reshape(-1), -1.0, 1.0)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    rad = np.deg2rad(angle)
    c, s = np.cos(rad), np.sin(rad)
    a, b = cy + dy, f * cx + dx          # v = f (j - cx) - dx = f j - b
    return np.stack([c, s * f, cy - c * a - s * b,
                     -s, c * f, cx + s * a - c * b], axis=1)


def _check_int(name, value, low, high):
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not low <= value <= high):
        raise ValueError(f"Augment: {name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


class Augment:
    """``Augment(shift=0, flip=False, rotate=0.0, seed=None, fill=0.0)``; call as
    ``aug(x, step)`` with x a backend array (N, C, H, W) of floats: returns a new,
    augmented array of the same shape and dtype (see the module docstring).
    ``step`` is an int, or a function returning it when the batch's
    parameters are drawn (the Trainer passes one, so a captured step draws
    the parameters of each replay's step).

    ``seed=None`` draws one from gpudl's init generator, so gpudl.manual_seed
    fixes it. ``backend`` is the backend x lives on (default: the current one
    at call time)."""

    def __init__(self, shift=0, flip=False, rotate=0.0, seed=None, fill=0.0, *, backend=None):
        self.shift = _check_int("shift (pixels)", shift, 0, 2**30)
        if not isinstance(flip, (bool, np.bool_)):
            raise ValueError(f"Augment: flip must be True or False, got {flip!r}")
        self.flip = bool(flip)
        if (isinstance(rotate, bool) or not isinstance(rotate, numbers.Real)
                or not 0.0 <= rotate <= 180.0):
            raise ValueError(f"Augment: rotate must be a number of degrees in [0, 180], "
                             f"got {rotate!r}")
        self.rotate = float(rotate)
        if isinstance(fill, bool) or not isinstance(fill, numbers.Real) or not math.isfinite(fill):
            raise ValueError(f"Augment: fill must be a finite number, got {fill!r}")
        self.fill = float(fill)
        if seed is None:  # drawn from the init generator, so gpudl.manual_seed fixes it too
            seed = int(init_rng().integers(2**63))
        self.seed = _check_int("seed", seed, -2**63, 2**64 - 1)
        self.backend = backend

    def params(self, n, step):
        """(dy, dx, flipped, angle) of batch ``step``'s n samples (see draw)."""
        return draw(self.seed, step, n, self.shift, self.flip, self.rotate)

    def __call__(self, x, step):
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4:
            raise ShapeError(f"Augment: x must be a batch of images (N, C, H, W), got an array "
                             f"of shape {shape} ({len(shape)}-D)")
        if not callable(step):
            step = _check_int("step", step, 0, 2**64 - 1)
        n, _, h, w = shape
        dtype = getattr(x, "dtype", np.float32)

        def theta():  # a step input: a captured step draws again before each replay
            k = _check_int("step", step(), 0, 2**64 - 1) if callable(step) else step
            return affine_theta(h, w, *self.params(n, k)).astype(dtype)
        be = self.backend if self.backend is not None else get_backend()
        if np.dtype(dtype).kind != "f":
            return be.augment_affine(x, theta(), self.fill, nearest=self.rotate == 0.0)
        # without rotation theta is integer: nearest sampling copies pixels exactly
        return be.augment_affine_device(x, be.step_input(theta), self.fill,
                                        nearest=self.rotate == 0.0)

    def get_config(self):
        return {"shift": self.shift, "flip": self.flip, "rotate": self.rotate,
                "seed": self.seed, "fill": self.fill}

    def __repr__(self):
        return "Augment(" + ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) + ")"
