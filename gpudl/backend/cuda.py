"""CUDA backend: arrays in device memory, every op a numba.cuda kernel from gpudl.kernels.

On a GPU, arrays are CuPy arrays and CuPy only allocates and copies; under
numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) they are NumPy arrays and the
same kernels run as Python threads, so the whole CUDA path is testable
without a GPU. Semantics follow cpu.py, the reference, op for op.

Ordering without syncs: kernels are launched on CuPy's current stream, so a
kernel runs after the CuPy allocation/copy before it and before the CuPy
work after it, and numba is told not to synchronise arrays it imports.
"""
from __future__ import annotations

import os

# Both must be set before numba is first imported to take effect. The sync
# only matters for arrays numba imports through __cuda_array_interface__;
# launch() hands CuPy arrays over through DLPack, which never syncs the host.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")

import numpy as np  # noqa: E402
from numba import cuda  # noqa: E402

from ..errors import ShapeError  # noqa: E402
from ..kernels import dropout as dk  # noqa: E402
from ..kernels import elementwise as ew  # noqa: E402
from ..kernels import matmul as mm  # noqa: E402
from ..kernels import reduce as rk  # noqa: E402
from ..kernels import softmax as sk  # noqa: E402
from . import capture as cap  # noqa: E402
from . import (cuda_bn, cuda_concat, cuda_conv, cuda_lowp, cuda_optim, cuda_pool,  # noqa: E402
               cuda_steps)
from . import dropout_key, fastlaunch  # noqa: E402
from .base import Backend  # noqa: E402
from .cuda_act import CUDAActivations  # noqa: E402


def _cdiv(a, b):
    return -(-a // b)


class CUDABackend(CUDAActivations, Backend):
    name = "cuda"
    can_capture = True

    def __init__(self, simulator: bool):
        self.simulator = bool(simulator)
        if self.simulator:
            self.xp = np
            self._cp = None
            # Few threads, few blocks: each simulated thread costs ~0.2 ms,
            # and a small grid still exercises the grid-stride loops.
            self._threads = 64
            self._max_blocks = 4
        else:
            import cupy
            self.xp = cupy
            self._cp = cupy
            sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
            self._threads = 256
            self._max_blocks = 8 * sms  # a few waves of blocks, then grid-stride
        self._streams = {}
        self._capture = None      # the step being captured (capture.py), or None
        self._constants = {}
        self._graph_stream = None
        #: tensor-core kernel launches so far (cuda_mma, cuda_conv_mma)
        self.tensor_core_launches = 0
        # GPUDL_FAST_LAUNCH=1 on a real GPU: launches skip numba's per-argument
        # typing (fastlaunch.py). Opt-in until a GPU check has timed it.
        self._fast = fastlaunch.FastLauncher() if fastlaunch.requested(self.simulator) else None

    # ---- launching ---------------------------------------------------------
    def _stream(self):
        if self._cp is None:
            return 0
        ptr = self._cp.cuda.get_current_stream().ptr
        stream = self._streams.get(ptr)
        if stream is None:
            stream = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
            self._streams[ptr] = stream
        return stream

    def launch(self, kernel, grid, block, *args):
        """kernel[grid, block](*args) on this backend's stream, arrays of this backend.

        CuPy arrays go to numba as they are: numba imports them through DLPack
        with the launch stream, which is CuPy's current stream, so nothing
        waits on the host. (Wrapping each in cuda.as_cuda_array(sync=False)
        also works, but measured 109 vs 63 us per small launch on an H200.)"""
        c = self._capture
        if c is not None and self._cp is None:  # the simulator twin records, runs nothing
            c.launch(kernel, grid, block, args)
            return
        if self._fast is not None:
            self._fast.launch(kernel, grid, block, self._stream(), args)
            return
        kernel[grid, block, self._stream()](*args)

    def graph_stream(self):
        """The non-blocking CuPy stream captured steps run on (a real GPU only):
        capture needs a stream that the legacy default stream does not
        implicitly join. The Trainer runs a graphed fit on it throughout."""
        if self._graph_stream is None:
            self._graph_stream = self._cp.cuda.Stream(non_blocking=True)
        return self._graph_stream

    # ---- captured steps (capture.py, cuda_steps.py)
    def step_input(self, producer):
        return cuda_steps.step_input(self, producer)

    def capture(self, fn):
        return cuda_steps.capture(self, fn)

    def _upload(self, host):
        return self.xp.array(host, copy=True, order="C")

    def _constant(self, value, dtype):
        """A cached (1,) device array holding value (made before any capture)."""
        key = (float(value), np.dtype(dtype))
        arr = self._constants.get(key)
        if arr is None:
            arr = self._constants[key] = self._upload(np.array([value], dtype))
        return arr

    def _sim_op(self, fn):
        """Array work done outside a kernel: recorded under the simulator's
        capture (replayed in order), done now otherwise. On a GPU it is CuPy
        work on the current stream, which the CUDA graph captures itself."""
        c = self._capture
        if c is not None and self._cp is None:
            c.op(fn)
        else:
            fn()

    def _assign(self, dst, src):
        """dst[...] = src, in stream order (see _sim_op)."""
        def run():
            dst[...] = src
        self._sim_op(run)

    def _launch_flat(self, kernel, n, *args):
        """A grid-stride elementwise kernel over n elements."""
        if n == 0:
            return
        blocks = max(1, min(_cdiv(n, self._threads), self._max_blocks))
        self.launch(kernel, blocks, self._threads, *args)

    def _rows(self, kernel, n_rows, *args):
        if n_rows == 0:
            return
        grid, block = sk.launch_config(n_rows)
        self.launch(kernel, grid, block, *args)

    # ---- memory ------------------------------------------------------------
    def asarray(self, x, dtype=None):
        cap.forbid(self, "asarray (a host-to-device copy)")
        return self.xp.array(x, dtype=dtype, copy=True, order="C")

    def set_array(self, dst, host):
        cap.forbid(self, "set_array (a host-to-device copy)")
        host = np.ascontiguousarray(host, dtype=dst.dtype)
        if host.shape != tuple(dst.shape):
            raise ShapeError(f"set_array: host values of shape {host.shape} do not fit an array "
                             f"of shape {tuple(dst.shape)}")
        if self._cp is None:
            dst[...] = host
        else:
            dst.set(host, stream=self._cp.cuda.get_current_stream())

    def zeros(self, shape, dtype):
        if self._capture is not None and self._cp is None:
            out = np.empty(shape, dtype)
            self._sim_op(lambda: out.fill(0))
            return out
        return self.xp.zeros(shape, dtype=dtype)

    def to_numpy(self, x):
        cap.forbid(self, "to_numpy (a device-to-host read)")
        if self._cp is not None and isinstance(x, self._cp.ndarray):
            return self._cp.asnumpy(x)
        return np.array(x, copy=True)

    def synchronize(self):
        cap.forbid(self, "synchronize")
        if self._cp is not None:
            self._cp.cuda.get_current_stream().synchronize()

    def device_name(self):
        if self._cp is None:
            return "CUDA simulator"
        dev = self._cp.cuda.Device()
        name = self._cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory_info(self):
        """(free, total) bytes of device memory, or None under the simulator."""
        if self._cp is None:
            return None
        return self._cp.cuda.runtime.memGetInfo()

    def _c(self, x, dtype=None):
        """x on this device, C-contiguous, of dtype (copies only if needed)."""
        out = self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))
        if self._capture is not None and self._cp is None and out is not x \
                and not np.shares_memory(out, x):
            # the copy just made read values no kernel has written yet: redo it on replay
            self._assign(out, x)
        return out

    def _pair(self, a, b):
        dt = np.result_type(a.dtype, b.dtype)
        return self._c(a, dt), self._c(b, dt)

    def _same_shape(self, op, a, b, names=("a", "b")):
        if a.shape != b.shape:
            raise ShapeError(f"{op}: {names[0]} has shape {tuple(a.shape)} but "
                             f"{names[1]} has shape {tuple(b.shape)}; they must match")

    def _mean(self, per_item):
        """Mean of a 1-D array as a Python float: two-pass sum_1d, then / size."""
        n = per_item.shape[0]
        blocks = max(1, min(_cdiv(n, rk.SUM_THREADS), self._max_blocks))
        partial = self.empty((blocks,), per_item.dtype)
        total = self.empty((1,), per_item.dtype)
        self.launch(rk.sum_1d, blocks, rk.SUM_THREADS, per_item, partial)
        self.launch(rk.sum_1d, 1, rk.SUM_THREADS, partial, total)
        return float(self.to_numpy(total)[0] / n)

    # ---- linear algebra ----------------------------------------------------
    def matmul(self, a, b, trans_a=False, trans_b=False, precision=None):
        if precision is not None:  # rounded inputs (tensor cores when enabled): cuda_lowp.py
            return cuda_lowp.matmul(self, a, b, trans_a, trans_b, precision)
        if a.ndim != 2 or b.ndim != 2:
            raise ShapeError(f"matmul needs 2-D arrays, got a of shape {tuple(a.shape)} "
                             f"and b of shape {tuple(b.shape)}")
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != k2:
            raise ShapeError(
                f"matmul: inner dimensions differ: op(a) is ({m}, {k}) from a of shape "
                f"{tuple(a.shape)} (trans_a={trans_a}), op(b) is ({k2}, {n}) from b of "
                f"shape {tuple(b.shape)} (trans_b={trans_b})")
        a, b = self._pair(a, b)
        c = self.empty((m, n), a.dtype)
        if m and n:
            grid, block = mm.launch_config(mm.MATMUL_DEFAULT, m, n)
            variant = ("t" if trans_a else "n") + ("t" if trans_b else "n")
            self.launch(mm.KERNELS[mm.MATMUL_DEFAULT][variant], grid, block, a, b, c)
        return c

    def add_bias(self, z, b):
        if z.ndim != 2 or b.ndim != 1 or b.shape[0] != z.shape[1]:
            raise ShapeError(f"add_bias: z must be (N, F) and b (F,), got z of shape "
                             f"{tuple(z.shape)} and b of shape {tuple(b.shape)}")
        b = self._c(b, z.dtype)
        if z.flags.c_contiguous:
            self._launch_flat(ew.add_bias, z.size, z.reshape(-1), b)
        else:  # in place on a view: work on a contiguous copy, then write it back
            tmp = self._c(z)
            self._launch_flat(ew.add_bias, tmp.size, tmp.reshape(-1), b)
            self._assign(z, tmp)

    def sum_rows(self, g):
        if g.ndim != 2:
            raise ShapeError(f"sum_rows needs a 2-D (N, F) array, got shape {tuple(g.shape)}")
        g = self._c(g)
        n, f = g.shape
        out = self.empty((f,), g.dtype)
        if f == 0:
            return out
        if n == 0:
            return self.zeros((f,), g.dtype)
        bx, by = rk.sum_rows_grid(n, f, self._max_blocks)
        block = (rk.SX, rk.SY)
        if by == 1:  # one row of partials is already the answer
            self.launch(rk.sum_rows_partial, (bx, 1), block, g, out.reshape(1, f))
            return out
        partial = self.empty((by, f), g.dtype)
        self.launch(rk.sum_rows_partial, (bx, by), block, g, partial)
        self.launch(rk.sum_rows_naive, _cdiv(f, self._threads), self._threads, partial, out)
        return out

    def axpby(self, alpha, x, beta, y, out=None):
        self._same_shape("axpby", x, y, ("x", "y"))
        if out is not None and (tuple(out.shape) != tuple(x.shape) or not out.flags.c_contiguous
                                or out.dtype != np.result_type(x.dtype, y.dtype)):
            raise ShapeError(f"axpby: out must be C-contiguous, shaped {tuple(x.shape)} and of "
                             f"{np.result_type(x.dtype, y.dtype)}, got {tuple(out.shape)} of "
                             f"{out.dtype}")
        x, y = self._pair(x, y)
        t = x.dtype.type
        if out is None:
            out = self.empty(x.shape, x.dtype)
        self._launch_flat(ew.axpby, x.size, t(alpha), x.reshape(-1), t(beta), y.reshape(-1),
                          out.reshape(-1))
        return out

    # ---- convolution (kernels and launches in cuda_conv.py) ------------------
    def round_to(self, x, fmt):
        return cuda_lowp.round_to(self, x, fmt)

    def conv2d(self, x, w, stride, pads, dilation, groups=1, precision=None):
        x, w = self._lowp(precision, x, w)
        return cuda_conv.conv2d(self, x, w, stride, pads, dilation, groups, fmt=precision)

    def conv2d_backward_input(self, dy, w, in_hw, stride, pads, dilation, groups=1,
                              precision=None):
        dy, w = self._lowp(precision, dy, w)
        return cuda_conv.conv2d_backward_input(self, dy, w, in_hw, stride, pads, dilation, groups,
                                               fmt=precision)

    def conv2d_backward_weight(self, dy, x, k_hw, stride, pads, dilation, groups=1,
                               precision=None):
        dy, x = self._lowp(precision, dy, x)
        return cuda_conv.conv2d_backward_weight(self, dy, x, k_hw, stride, pads, dilation, groups,
                                                fmt=precision)

    def add_channel_bias(self, y, b):
        cuda_conv.add_channel_bias(self, y, b)

    def sum_channels(self, g):
        return cuda_conv.sum_channels(self, g)

    # ---- pooling (kernels and launches in cuda_pool.py) ----------------------
    def max_pool2d(self, x, k_hw, stride, pads):
        return cuda_pool.max_pool2d(self, x, k_hw, stride, pads)

    def max_pool2d_backward(self, dy, argmax, in_hw, k_hw, stride, pads):
        return cuda_pool.max_pool2d_backward(self, dy, argmax, in_hw, k_hw, stride, pads)

    def avg_pool2d(self, x, k_hw, stride, pads):
        return cuda_pool.avg_pool2d(self, x, k_hw, stride, pads)

    def avg_pool2d_backward(self, dy, in_hw, k_hw, stride, pads):
        return cuda_pool.avg_pool2d_backward(self, dy, in_hw, k_hw, stride, pads)

    # ---- dropout ------------------------------------------------------------
    def dropout_mask(self, shape, p, seed, counter, dtype):
        key, threshold = dropout_key.key_and_threshold(p, seed, counter)
        return self.dropout_mask_keyed(shape, p, self.asarray(np.array([key, threshold])), dtype)

    def dropout_mask_keyed(self, shape, p, keys, dtype):
        if tuple(keys.shape) != (2,) or keys.dtype != np.uint64:
            raise ShapeError(f"dropout_mask_keyed: keys must be (2,) uint64 [key, threshold], "
                             f"got shape {tuple(keys.shape)} of {keys.dtype}")
        out = self.empty(tuple(shape), dtype)
        flat = out.reshape(-1)
        self._launch_flat(dk.dropout_mask, flat.size, flat, keys,
                          np.dtype(dtype).type(1.0 / (1.0 - p)))
        return out

    def multiply(self, a, b):
        self._same_shape("multiply", a, b)
        a, b = self._pair(a, b)
        out = self.empty(a.shape, a.dtype)
        self._launch_flat(dk.multiply, a.size, a.reshape(-1), b.reshape(-1), out.reshape(-1))
        return out

    # ---- data augmentation (kernel launch in cuda_augment.py) -----------------
    def augment_affine(self, x, theta, fill=0.0, nearest=False):
        from . import cuda_augment
        return cuda_augment.augment_affine(self, x, theta, fill, nearest)

    def augment_affine_device(self, x, theta, fill=0.0, nearest=False):
        from . import cuda_augment
        return cuda_augment.augment_affine_device(self, x, theta, fill, nearest)

    # ---- batch normalization (kernels and launches in cuda_bn.py) -------------
    def batchnorm_stats(self, x):
        return cuda_bn.batchnorm_stats(self, x)

    def batchnorm_forward(self, x, mean, var, gamma, beta, eps):
        return cuda_bn.batchnorm_forward(self, x, mean, var, gamma, beta, eps)

    def batchnorm_backward(self, dy, x, mean, invstd, gamma):
        return cuda_bn.batchnorm_backward(self, dy, x, mean, invstd, gamma)

    # ---- channel concatenation (kernels and launches in cuda_concat.py) -------
    def concat_channels(self, xs):
        return cuda_concat.concat_channels(self, xs)

    def split_channels(self, g, sizes):
        return cuda_concat.split_channels(self, g, sizes)

    # ---- optimizer: one fused kernel per update (launches in cuda_optim.py) --
    def sgd_update(self, param, grad, velocity, lr, momentum=0.0,
                   nesterov=False, weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        cuda_optim.sgd_update(self, param, grad, velocity, lr, momentum, nesterov,
                              weight_decay, l1, grad_scale, hyper)

    def adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, step,
                    weight_decay=0.0, decoupled=False, l1=0.0, grad_scale=1.0, hyper=None):
        cuda_optim.adam_update(self, param, grad, m, v, lr, beta1, beta2, eps, step,
                               weight_decay, decoupled, l1, grad_scale, hyper)

    def rmsprop_update(self, param, grad, square_avg, buf, lr, alpha, eps, momentum=0.0,
                       weight_decay=0.0, l1=0.0, grad_scale=1.0, hyper=None):
        cuda_optim.rmsprop_update(self, param, grad, square_avg, buf, lr, alpha, eps, momentum,
                                  weight_decay, l1, grad_scale, hyper)

    def adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay=0.0, l1=0.0,
                       grad_scale=1.0, hyper=None):
        cuda_optim.adagrad_update(self, param, grad, sum_sq, lr, eps, weight_decay, l1,
                                  grad_scale, hyper)

    def sum_squares(self, arrays):
        return cuda_optim.sum_squares(self, arrays)

    def clip_scales(self, grads, clip_norm):
        return cuda_optim.clip_scales(self, grads, clip_norm)

    # ---- data movement and metrics ----------------------------------------
    @staticmethod
    def _check_index(what, idx, size, axis=0):
        bad = (idx < -size) | (idx >= size)
        if bad.any():
            raise IndexError(f"{what}: index {int(idx[bad][0])} is out of bounds for axis "
                             f"{axis} with size {size}")

    def take_rows(self, x, idx):
        if x.ndim < 1:
            raise ShapeError("take_rows needs an array with a row axis, got a scalar")
        if isinstance(idx, np.ndarray) or not hasattr(idx, "__cuda_array_interface__"):
            idx = np.asarray(idx)
            if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
                raise ShapeError(f"take_rows needs a 1-D integer index array, got "
                                 f"shape {idx.shape} dtype {idx.dtype}")
            self._check_index("take_rows", idx, x.shape[0])
        idx = self._c(idx, np.int64)
        x = self._c(x)
        n = x.shape[0]
        d = int(np.prod(x.shape[1:], dtype=np.int64))
        out = self.empty((idx.shape[0],) + tuple(x.shape[1:]), x.dtype)
        self._launch_flat(ew.take_rows, idx.shape[0] * d, x.reshape(n, d), idx,
                          out.reshape(idx.shape[0], d))
        return out

    def argmax_rows(self, x):
        if x.ndim != 2:
            raise ShapeError(f"argmax_rows needs a 2-D (N, C) array, got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("argmax_rows: attempt to get argmax of an empty sequence (C = 0)")
        x = self._c(x)
        out = self.empty((x.shape[0],), np.int64)
        self._rows(rk.argmax_rows, x.shape[0], x, out)
        return out

    def take_rows_at(self, x, perm, offset, count):
        return cuda_steps.take_rows_at(self, x, perm, offset, count)

    def metric_add(self, metrics, slot, values, factor=1.0, last=-1):
        cuda_steps.metric_add(self, metrics, slot, values, factor, last)

    def correct_flags(self, pred, target, kind, threshold=0.5):
        return cuda_steps.correct_flags(self, pred, target, kind, threshold)
