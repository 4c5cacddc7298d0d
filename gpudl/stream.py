"""Streaming batches from a data set into Trainer.fit, evaluate and predict.

What is streamed (``stream="auto"``, the default): a data set object (see
gpudl.data: ``__len__`` and ``__getitem__``), np.memmap arrays and an
iterable of ``(x, y)`` batches. In-memory ndarrays, and an ArrayDataset over
them, keep the fast path: uploaded once, batches gathered on the device.
``stream=True`` streams those too; ``stream=False`` reads a data set into
memory once and takes the fast path.

A streamed epoch draws its order exactly as the in-memory one does (one
``trainer.rng.permutation(n)`` when shuffling, then the distributed shard),
so the same seed trains on the same samples in the same order: on the CPU
the weights are the in-memory run's bit for bit, and a resumed run's are the
uninterrupted one's. A background thread (gpudl.loader.Prefetcher) reads,
decodes, checks and casts the next batches while the current one trains;
the consumer uploads each (on a GPU with GPUDL_PINNED_UPLOAD=1, from pinned
memory, asynchronously).

An iterable of batches is read in its own order, with its own batch sizes:
it cannot be shuffled (fit(shuffle=True) says so), sharded over ranks or
split (validation_split), and a one-shot iterator (a generator) serves one
epoch only.
"""
from __future__ import annotations

import numpy as np

from .data import ArrayDataset, Subset, validation_split_indices
from .errors import ShapeError
from .loader import PinnedStaging, Prefetcher, pinned_requested
from .train_checks import check_arrays, metrics_result

STREAM_CHOICES = (True, False, "auto")


def _array_like(x) -> bool:
    return isinstance(x, np.ndarray) or any(
        hasattr(x, a) for a in ("__array__", "__array_interface__", "__cuda_array_interface__"))


def _is_dataset(x) -> bool:
    return (hasattr(x, "__len__") and hasattr(x, "__getitem__") and not _array_like(x)
            and not isinstance(x, (list, tuple, str, bytes, dict)))


def _is_batch_list(x) -> bool:
    """A list or tuple of (x, y) batches (or of x batches), not nested numbers."""
    if not isinstance(x, (list, tuple)) or not x:
        return False
    first = x[0]
    if isinstance(first, (list, tuple)):
        return len(first) in (1, 2) and _array_like(first[0]) and np.ndim(first[0]) >= 1
    return isinstance(first, np.ndarray) and first.ndim >= 2


def is_source(x) -> bool:
    """Whether x is something fit/evaluate/predict stream from rather than an array."""
    if _array_like(x) or isinstance(x, (str, bytes)):
        return False
    if isinstance(x, (list, tuple)):
        return _is_batch_list(x)
    return _is_dataset(x) or hasattr(x, "__iter__")


def describe(x) -> str:
    """How errors name a data set: its repr when it has its own, else its type and size."""
    if type(x).__repr__ is not object.__repr__:
        text = repr(x)
        return text if len(text) <= 80 else text[:77] + "..."
    size = f" of {len(x)} samples" if hasattr(x, "__len__") else ""
    return f"{type(x).__name__}{size}"


class IndexedSource:
    """A data set read by index arrays (``batched``) or one sample at a time."""

    n_known = True

    def __init__(self, dataset, name):
        self.dataset, self.name = dataset, name
        self.n = len(dataset)
        if self.n == 0:
            raise ValueError(f"{name} is empty")
        self.batched = getattr(dataset, "batched", None)
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        # gpudl's own data sets return new arrays for every batch: no copy needed
        self.fresh = type(base).__module__ in ("gpudl.data", "gpudl.datasets_mmap")

    def tasks(self, order, batch_size):
        """(batch number, first position, indices) for each batch of ``order``
        (None: 0..n-1), consumed by the loader thread."""
        order = np.arange(self.n) if order is None else order
        for k, start in enumerate(range(0, len(order), batch_size)):
            yield k, start, order[start:start + batch_size]

    def _probe(self, idx):
        """Whether the data set takes an index array: it must give a pair whose
        parts have len(idx) rows; otherwise it is read sample by sample."""
        try:
            item = self.dataset[idx]
            parts = item if isinstance(item, tuple) else (item,)
            return all(np.ndim(p) >= 1 and len(p) == len(idx) for p in parts)
        except (TypeError, IndexError, KeyError, ValueError):
            return False

    def fetch(self, task):
        """(batch number, first position, the data set's batch) of one task."""
        k, start, idx = task
        if self.batched is None:  # decided once, on the first two indices asked for
            self.batched = self._probe(np.asarray(idx[:2]))
        if self.batched:
            item = self.dataset[np.asarray(idx)]
        else:
            samples = [self.dataset[int(i)] for i in idx]
            if isinstance(samples[0], tuple):
                item = tuple(np.stack([np.asarray(s[j]) for s in samples])
                             for j in range(len(samples[0])))
            else:
                item = np.stack([np.asarray(s) for s in samples])
        return k, start, item


class IterableSource:
    """An iterable of batches, read in its own order."""

    n_known = False
    n = None
    fresh = False

    def __init__(self, iterable, name):
        self.iterable, self.name = iterable, name
        self.one_shot = iter(iterable) is iterable

    def tasks(self, order, batch_size):
        """(batch number, first position, batch) for each batch the iterable
        yields; ``order`` and ``batch_size`` do not apply."""
        start = 0
        for k, item in enumerate(self.iterable):
            yield k, start, item
            start += len(item[0] if isinstance(item, (tuple, list)) else item)

    def fetch(self, task):
        """The task is the batch already."""
        return task


def _wrap(x, name):
    return IndexedSource(x, name) if _is_dataset(x) else IterableSource(x, name)


def source(x, y, stream, where, targets=True):
    """The source to stream x (and y) from, or None for the in-memory path
    (then arrays_of gives the arrays). A ValueError when the pair makes no
    sense (y with a data set, no y with arrays)."""
    if stream not in STREAM_CHOICES or isinstance(stream, np.bool_):
        raise ValueError(f"{where}: stream must be True, False or 'auto', got {stream!r}")
    if is_source(x):
        if y is not None:
            raise ValueError(f"{where}: x is a data set ({describe(x)}), which gives its own "
                             f"targets: leave y out (y=None)")
        if stream is False or (stream == "auto" and isinstance(x, ArrayDataset) and x.in_memory):
            return None
        return _wrap(x, f"{where}: {describe(x)}")
    if y is None and targets:
        raise ValueError(f"{where}: y is missing: x is an array, so give its targets y "
                         f"(or pass a data set that yields (x, y) batches)")
    mapped = any(isinstance(a, np.memmap) for a in (x, y))
    if stream is True or (stream == "auto" and mapped):
        ds = ArrayDataset(x, np.zeros(len(x), np.int8) if y is None else y)  # predict: no y
        return IndexedSource(ds, f"{where}: {describe(ds)}")
    return None


def arrays_of(x, y):
    """(x, y) for the in-memory path: the arrays themselves, an ArrayDataset's,
    or a data set or iterable read into memory once (stream=False)."""
    if isinstance(x, ArrayDataset):
        return np.asarray(x.x), np.asarray(x.y)
    if not is_source(x):
        return x, y
    src = _wrap(x, describe(x))
    xs, ys = [], []
    for task in src.tasks(None, 4096):
        _, _, item = src.fetch(task)
        xs.append(np.asarray(item[0]))
        ys.append(np.asarray(item[1]))
    return np.concatenate(xs), np.concatenate(ys)


def check_fit(src, shuffle, distributed, epochs, validation_split):
    """What fit cannot do with an iterable of batches, said before any work."""
    if src is None or src.n_known:
        return
    why = None
    if shuffle:
        why = "it cannot be shuffled: pass shuffle=False (it is read in its own order)"
    elif distributed is not None:
        why = "distributed training gives each rank its shard of the epoch's order"
    elif validation_split is not None:
        why = "validation_split holds out samples by index"
    elif src.one_shot and epochs > 1:
        why = (f"it is a one-shot iterator (a generator), which serves one epoch, not {epochs}: "
               f"pass a list of batches or an object whose __iter__ starts over")
    if why:
        raise ValueError(f"{src.name} is an iterable of batches and {why}; or give a data set "
                         f"with __len__ and __getitem__ (gpudl.data.ArrayDataset)")


def split(src, fraction, seed):
    """(train, validation) Subsets of an indexed source, the samples
    fit(validation_split=fraction) holds out of arrays of the same length."""
    train, val = validation_split_indices(src.n, fraction, seed)
    ds = src.dataset
    return (IndexedSource(Subset(ds, train), src.name),
            IndexedSource(Subset(ds, val), src.name.replace("fit: ", "validation_split: ", 1)))


class Feed:
    """A source bound to a model (and a loss, for targets): the loader thread
    fetches, checks and casts each batch; the consumer uploads it."""

    def __init__(self, model, loss, src):
        self.model, self.loss, self.src = model, loss, src
        self.backend = model.backend
        self.x_dtype = np.dtype(model.dtype)
        self.y_dtype = np.dtype(loss.target_dtype(model.dtype)) if loss is not None else None
        self.sample_shape = None
        self._pinned = PinnedStaging(self.backend._cp) if pinned_requested(self.backend) else None
        self.n = src.n

    def _check(self, k, start, x, y):
        count = len(x) if np.ndim(x) else 0
        what = f"{self.src.name} batch {k} (samples {start}-{start + count - 1} of the epoch)"
        if self.sample_shape is not None and np.ndim(x) >= 1 \
                and tuple(np.shape(x)[1:]) != self.sample_shape:
            raise ShapeError(f"{what}: samples of shape {tuple(np.shape(x)[1:])}, but batch 0's "
                             f"were {self.sample_shape}")
        try:
            if self.loss is not None:
                x, y = check_arrays(self.model, self.loss, x, y, what)
            else:
                from .model import check_finite
                x = np.asarray(x)
                if x.ndim < 2 or x.shape[0] == 0:
                    raise ShapeError(f"{what}: expected a batch of shape (N, features...), "
                                     f"got {x.shape}")
                check_finite(x, what)
                self.model.output_shape(x.shape[1:])
        except (ShapeError, ValueError, TypeError) as e:
            if what in str(e):
                raise
            raise type(e)(f"{what}: {e}") from e  # the model's or loss's own words, placed
        if self.sample_shape is None:
            self.sample_shape = tuple(x.shape[1:])
        return x, y

    def _cast(self, a, dtype):
        # a batch the data set may still hold (a cached array) is copied: training
        # must never see it change under it, nor change it
        a = (np.asarray(a, dtype=dtype, order="C") if self.src.fresh
             else np.array(a, dtype=dtype, order="C", copy=True))
        return self._pinned.stage(a) if self._pinned is not None else a

    def produce(self, task):
        """Loader thread: one batch fetched, checked and cast: (count, x, y)."""
        k, start, item = self.src.fetch(task)
        if isinstance(item, (tuple, list)):
            x, y = (item[0], item[1]) if len(item) > 1 else (item[0], None)
        else:
            x, y = item, None
        if self.loss is not None and y is None:
            raise ValueError(f"{self.src.name} batch {k}: gave no targets; a data set for "
                             f"fit and evaluate yields (x, y) pairs")
        x, y = self._check(k, start, x, y)
        return (len(x), self._cast(x, self.x_dtype),
                None if self.loss is None else self._cast(y, self.y_dtype))

    def upload(self, a):
        """Consumer: a host batch as an array of the model's backend."""
        if a is None or self.backend.reads_are_free:
            return a  # host memory already; the loader made it fresh
        if self._pinned is not None:
            return self._pinned.upload(a)
        return self.backend.asarray(a)

    def epoch(self, order, batch_size):
        """The batches of one pass over ``order`` (None: the data set's own),
        prepared in a background thread: an iterator of (count, x, y) on the
        device, to be closed (contextlib.closing, or its ``with``)."""
        return _Batches(self, self.src.tasks(order, batch_size))


class _Batches:
    def __init__(self, feed, tasks):
        self.feed = feed
        self._loader = Prefetcher(tasks, feed.produce)
        self._count = 0

    def __iter__(self):
        return self

    def __next__(self):
        try:
            count, x, y = next(self._loader)
        except StopIteration:
            if self._count == 0:
                hint = (" (a one-shot iterator already used up?)"
                        if getattr(self.feed.src, "one_shot", False) else "")
                raise ValueError(f"{self.feed.src.name} gave no batches{hint}") from None
            raise
        self._count += 1
        return count, self.feed.upload(x), self.feed.upload(y)

    def close(self):
        self._loader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def evaluate(trainer, src, batch_size, names=()):
    """Trainer.evaluate on a source: the same batches and sums as on arrays."""
    from . import metrics as metrics_mod
    be, model = trainer.model.backend, trainer.model
    trainer.loss.backend = be
    feed = Feed(model, trainer.loss, src)
    metrics = be.zeros((4,), np.float64)
    n, outs, ys = 0, [], []
    with feed.epoch(None, batch_size) as batches:
        for count, xb, yb in batches:
            out = model.forward(xb, training=False)
            trainer.loss.accumulate(out, yb, metrics)
            if names:
                outs.append(be.to_numpy(out))
                ys.append(be.to_numpy(yb))
            n += count
    result = metrics_result(trainer.loss, be.to_numpy(metrics), n)
    if names:
        result.update(metrics_mod.compute(names, np.concatenate(outs), np.concatenate(ys)))
    return result


class Validation:
    """fit's validation_data as a streamed data set, evaluated after every epoch."""

    def __init__(self, trainer, src):
        self.trainer, self.src = trainer, src

    def evaluate(self, batch_size=256):
        """The val_ metrics of one pass."""
        return evaluate(self.trainer, self.src, batch_size)


def validation(trainer, data, stream, epochs):
    """fit's validation_data, checked now: the _prepare tuple of arrays
    (uploaded once) or a Validation that streams it after every epoch."""
    if isinstance(data, IndexedSource):  # fit's validation_split of a data set
        return Validation(trainer, data)
    pair = isinstance(data, (tuple, list)) and len(data) == 2 \
        and not isinstance(data[0], (tuple, list))
    if not pair and not is_source(data):
        raise ValueError("fit: validation_data must be a pair (x_val, y_val) or a data set")
    x, y = (data[0], data[1]) if pair else (data, None)
    src = source(x, y, stream, "validation_data")
    if src is None:
        return trainer._prepare(*arrays_of(x, y), what="validation_data x")
    if not src.n_known and src.one_shot and epochs > 1:
        raise ValueError(f"{src.name} is a one-shot iterator: it can be evaluated once, not "
                         f"after each of {epochs} epochs; pass a list of batches or a data set")
    return Validation(trainer, src)


def predict(model, x, batch_size=None):
    """Sequential.predict on a data set or an iterable (batch_size checked
    there): outputs in its order (None: 256 a batch, never the whole data set
    at once)."""
    src = source(x, None, True, "predict", targets=False)
    feed = Feed(model, None, src)
    be = model.backend
    with feed.epoch(None, batch_size or 256) as batches:
        outs = [be.to_numpy(model.forward(xb, training=False)) for _, xb, _ in batches]
    return np.concatenate(outs)
