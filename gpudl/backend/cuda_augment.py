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
    th = be.asarray(theta, dtype=dt)
    out = be.empty(tuple(x.shape), dt)
    be._launch_flat(ak.affine_sample, out.size, x, th, out, dt.type(fill), bool(nearest))
    return out
