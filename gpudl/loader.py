"""A background thread that prepares the next batches while the current one trains.

    with Prefetcher(tasks, produce) as batches:
        for batch in batches:        # produce(task) for each task, made ahead
            train(batch)

``produce`` runs in one background thread, at most ``depth`` results ahead
of the consumer (a bounded queue), so reading from disk and decoding (NumPy
copies and casts, which release the GIL) overlap the training step instead
of adding to it. An exception in the thread is raised in the consumer, with
the traceback of where it happened; closing (the end of a ``with`` block, a
``break``, an exception or KeyboardInterrupt in the consumer) stops the
thread and waits for it, so no thread outlives its loop.

Pinned uploads (a real GPU, opt-in): with GPUDL_PINNED_UPLOAD=1 the thread
copies each batch into page-locked host memory and the consumer's upload is
an asynchronous DMA on the current stream (PinnedStaging). Off by default
until a GPU check has run it: this session had no GPU.
"""
from __future__ import annotations

import os
import queue
import threading

#: batches prepared ahead of the one training
DEPTH = 2
#: seconds between checks of the stop flag while waiting on the queue
_POLL = 0.05

_DONE = object()


class _Failure:
    def __init__(self, error):
        self.error = error


class Prefetcher:
    """Iterate ``produce(task)`` for each of ``tasks``, computed in a daemon
    thread at most ``depth`` ahead. ``close()`` (also on ``with`` exit and
    when iteration ends) stops and joins the thread."""

    def __init__(self, tasks, produce, depth=DEPTH, name="gpudl-loader"):
        if depth < 1:
            raise ValueError(f"Prefetcher: depth must be at least 1, got {depth}")
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._tasks, self._produce = tasks, produce
        self._finished = False
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _work(self):
        try:
            for task in self._tasks:
                if self._stop.is_set():
                    return
                if not self._put(self._produce(task)):
                    return
        except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised there)
            self._put(_Failure(e))
            return
        self._put(_DONE)

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self._queue.empty():
                    self.close()  # it stopped without a word: closed from elsewhere
                    raise StopIteration from None
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error  # its __traceback__ still holds the thread's frames
        return item

    def close(self, timeout=10.0):
        """Stop the thread and wait for it (up to ``timeout`` seconds: a
        produce call in progress finishes first). Safe to call twice."""
        self._finished = True
        self._stop.set()
        while True:  # unblock a put in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def pinned_requested(backend) -> bool:
    """GPUDL_PINNED_UPLOAD=1 on a real GPU (a CuPy-backed backend)."""
    return (os.environ.get("GPUDL_PINNED_UPLOAD") == "1"
            and getattr(backend, "_cp", None) is not None)


class PinnedStaging:
    """A ring of page-locked host buffers per batch shape. ``stage(a)`` (the
    loader thread) copies a batch into the next free buffer; ``upload(p)``
    (the consumer) starts the asynchronous copy to the device on the current
    stream and records an event, which ``stage`` waits on before it writes
    into that buffer again. ``slots`` must exceed the prefetch depth + 1."""

    def __init__(self, cupy, slots=DEPTH + 2):
        import cupyx
        self._cp, self._cupyx, self.slots = cupy, cupyx, slots
        self._rings = {}
        self._events = {}
        self._lock = threading.Lock()

    def stage(self, a):
        key = (a.shape, a.dtype.str)
        with self._lock:
            ring = self._rings.setdefault(key, {"next": 0, "bufs": []})
            k = ring["next"]
            ring["next"] = (k + 1) % self.slots
            if len(ring["bufs"]) <= k:
                ring["bufs"].append(self._cupyx.empty_pinned(a.shape, a.dtype))
            buf = ring["bufs"][k]
            event = self._events.pop(id(buf), None)
        if event is not None:
            event.synchronize()  # the last upload from this buffer has finished
        buf[...] = a
        return buf

    def upload(self, buf):
        cp = self._cp
        stream = cp.cuda.get_current_stream()
        out = cp.empty(buf.shape, buf.dtype)
        out.set(buf, stream=stream)
        event = cp.cuda.Event()
        event.record(stream)
        with self._lock:
            self._events[id(buf)] = event
        return out
