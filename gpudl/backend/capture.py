"""Recording a training step once and replaying it: CUDA graphs, and their
simulator twin.

A captured step is a fixed list of device work on fixed buffers. Three rules
make that list correct to replay:

- Every buffer the step touches stays alive, at the same address, for the
  graph's life. On a GPU the capture allocates from a private CuPy memory
  pool that the graph keeps (PyTorch does the same), so nothing outside the
  graph is handed its memory; under the simulator the recording keeps a
  reference to every array it launched on.
- Nothing in the step reads the host or is read by it. A read back
  (to_numpy), a synchronize or a host-to-device copy attempted while
  capturing raises CaptureError naming the op, instead of CUDA's
  cudaErrorStreamCaptureUnsupported (or, under the simulator, a silently
  stale value).
- What does change from step to step on the host (the learning rate, Adam's
  bias correction, dropout keys, augmentation parameters, the batch's offset
  into the epoch's permutation) enters through step inputs
  (Backend.step_input): a producer, a zero-argument function that advances
  its owner's host state and returns the step's values, and a device array
  the kernels read. Eagerly the producer runs and its values are copied up;
  while capturing it runs once and is recorded; before each replay every
  recorded producer runs again, in the recorded order, and its values are
  copied into the same device array. Host state (optimizer.iterations, a
  Dropout's call count) therefore advances exactly as it does eagerly, and
  checkpoints need no read back.

On a GPU the capture is a CUDA graph (cupy.cuda.Stream.begin_capture /
end_capture on a non-blocking stream; numba launches on CuPy's current
stream, so they land in it). Under NUMBA_ENABLE_CUDASIM=1 the twin records
each launch (kernel, grid, block, arguments) and each array operation the
backend does outside a kernel (a zero fill, a contiguous copy), executes
nothing while recording, exactly as a stream capture executes nothing, and
replays the list on the same arrays. That is how CI proves replay equals
eager bit for bit without a GPU.
"""
from __future__ import annotations

import numpy as np

from ..errors import CaptureError


def forbid(backend, op: str) -> None:
    """CaptureError if ``backend`` is capturing a step (``op`` needs the host)."""
    if getattr(backend, "_capture", None) is not None:
        raise CaptureError(
            f"{op} while capturing a training step as a graph: a captured step may not "
            f"read from or wait for the host, or copy host data to the device. Per-step "
            f"host values go through Backend.step_input; results are read after the step "
            f"(or run the step with graph=False)")


class _Capture:
    """What both kinds share: the step inputs, refreshed before each replay."""

    def __init__(self):
        self.inputs = []         # (producer, device arrays, host values of the capture)
        self.replays = 0

    def add_input(self, producer, arrays, values):
        self.inputs.append((producer, arrays, values))

    def _refresh(self, first):
        for producer, arrays, values in self.inputs:
            if not first:  # the capture already ran the producers once for this step
                values = producer()
                values = values if isinstance(values, tuple) else (values,)
            if len(values) != len(arrays):
                raise CaptureError(f"a step input's producer {producer!r} returned "
                                   f"{len(values)} arrays, not the {len(arrays)} it was "
                                   f"captured with")
            for dev, val in zip(arrays, values):
                val = np.asarray(val, dtype=dev.dtype)
                if val.shape != tuple(dev.shape):
                    raise CaptureError(f"a step input's producer {producer!r} returned "
                                       f"shape {val.shape}, not the {tuple(dev.shape)} it was "
                                       f"captured with")
                self._upload(dev, val)

    def replay(self, first=False):
        """Refresh the step inputs (unless this is the step the capture just
        recorded), then run the recorded work once."""
        self._refresh(first)
        self._run()
        self.replays += 1


class SimCapture(_Capture):
    """The simulator twin: a list of launches and array operations."""

    def __init__(self):
        super().__init__()
        self.ops = []            # (kernel, grid, block, args) or a zero-argument function

    def launch(self, kernel, grid, block, args):
        self.ops.append((kernel, grid, block, args))

    def op(self, fn):
        self.ops.append(fn)

    def alloc(self, shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def _upload(dev, val):
        dev[...] = val

    def _run(self):
        for op in self.ops:
            if callable(op):
                op()
            else:
                kernel, grid, block, args = op
                kernel[grid, block](*args)

    def __len__(self):
        return len(self.ops)


class CupyCapture(_Capture):
    """A CUDA graph captured on ``stream`` (a non-blocking cupy Stream)."""

    def __init__(self, cupy, stream):
        super().__init__()
        self.cp, self.stream = cupy, stream
        # The graph's own memory: nothing allocated outside the capture can be
        # handed a block the graph writes to, and the blocks live as long as it.
        self.pool = cupy.cuda.MemoryPool()
        self.graph = None
        self._alloc_ctx = None

    def begin(self):
        self._alloc_ctx = self.cp.cuda.using_allocator(self.pool.malloc)
        self._alloc_ctx.__enter__()
        self.stream.begin_capture()

    def end(self, failed=False):
        try:
            graph = self.stream.end_capture()
        finally:
            self._alloc_ctx.__exit__(None, None, None)
            self._alloc_ctx = None
        if not failed:
            self.graph = graph

    def alloc(self, shape, dtype):
        with self.cp.cuda.using_allocator(self.pool.malloc):
            return self.cp.empty(shape, dtype)

    def _upload(self, dev, val):
        dev.set(np.ascontiguousarray(val), stream=self.stream)

    def _run(self):
        self.graph.launch(stream=self.stream)

    def __len__(self):
        return 1
