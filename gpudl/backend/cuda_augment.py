"""The augmentation launch for the CUDA backend: theta (N, 6), drawn on the
host by gpudl.augment, goes to the device in x's dtype, and one grid-stride
launch of kernels/augment.affine_sample writes every output element."""
from __future__ import annotations

import numpy as np

from ..kernels import augment as ak


def augment_affine(be, x, theta, fill, nearest):
    theta = np.asarray(theta, np.float64)
    be._affine_check(x, theta)
    x = be._c(x)
    dt = np.dtype(x.dtype)
    return augment_affine_device(be, x, be.asarray(theta, dtype=dt), fill, nearest)


def augment_affine_device(be, x, th, fill, nearest):
    """theta already on the device, typed like x (a step input)."""
    be._affine_check(x, th)
    x = be._c(x)
    dt = np.dtype(x.dtype)
    if th.dtype != dt:
        raise TypeError(f"augment_affine_device: theta must be {dt} like x, got {th.dtype}")
    out = be.empty(tuple(x.shape), dt)
    be._launch_flat(ak.affine_sample, out.size, x, th, out, dt.type(fill), bool(nearest))
    return out
