"""The host side of the dropout generator (kernels/dropout.py), shared by both
backends: the per-draw key and the keep threshold, and the NumPy mask."""
from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix(z):
    """splitmix64's finaliser on uint64 NumPy values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def key_and_threshold(p, seed, counter):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must lie in [0, 1), got {p!r}")
    with np.errstate(over="ignore"):
        key = mix(np.uint64(seed % 2**64) * GOLDEN + np.uint64(counter % 2**64))
    return np.uint64(key), np.uint64(round(p * 2**53))


def mask(shape, p, seed, counter, dtype):
    """1 / (1 - p) where a unit is kept, 0 where it is dropped."""
    key, threshold = key_and_threshold(p, seed, counter)
    return mask_from_key(shape, p, key, threshold, dtype)


def mask_from_key(shape, p, key, threshold, dtype):
    """mask() for a draw's (key, threshold) from key_and_threshold."""
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = mix(key + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * GOLDEN)
    keep = (z >> np.uint64(11)) >= threshold
    return np.where(keep, np.asarray(1.0 / (1.0 - p), dtype), np.asarray(0, dtype)).reshape(shape)
