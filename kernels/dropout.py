"""Inverted-dropout masks from a counter-based generator (splitmix64).

Element i of the mask drawn at (seed, counter) keeps its value when the top
53 bits of mix(seed, counter, i) reach p * 2^53, and then holds 1 / (1 - p).
A hash of the element's own index needs no generator state per thread, any
grid draws the same mask, and the CPU backend computes the same hash with
NumPy, so both backends drop the same units. The comparison is on integers:
no float64 enters a float32 kernel.
"""
from numba import cuda, uint64

GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


@cuda.jit(device=True, inline=True)
def _mix(z):
    z = (z ^ (z >> uint64(30))) * uint64(MIX1)
    z = (z ^ (z >> uint64(27))) * uint64(MIX2)
    return z ^ (z >> uint64(31))


@cuda.jit
def dropout_mask(out, keys, scale):
    """out[i] = scale if mix(key + (i + 1) * GOLDEN) >> 11 >= threshold else 0,
    keys = [key, threshold] (uint64, on the device).

    key = mix(seed * GOLDEN + counter) is computed on the host and read from
    device memory, so a captured step draws a new mask each replay;
    threshold is round(p * 2^53) and scale 1 / (1 - p), typed like out."""
    key = keys[0]
    threshold = keys[1]
    zero = out.dtype.type(0)
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        z = _mix(key + (uint64(i) + uint64(1)) * uint64(GOLDEN))
        out[i] = scale if (z >> uint64(11)) >= threshold else zero


@cuda.jit
def multiply(a, b, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, out.shape[0], stride):
        out[i] = a[i] * b[i]
