"""Data sets that need no network at run time, splitting helpers, and the
data set protocol that Trainer.fit, evaluate and predict stream from.

A data set is anything with ``__len__`` and ``__getitem__``: given an integer
index array it returns the batch ``(x, y)`` of those samples as NumPy arrays
(ArrayDataset, gpudl.datasets.IDXDataset, CIFAR10BinDataset); a data set whose
``__getitem__`` takes one integer and returns one sample ``(x, y)`` works too
(its samples are stacked). Set a class attribute ``batched = True`` (or False)
to say which; without it the Trainer asks for two samples by an index array
once and falls back to one at a time if that fails. An iterable of ``(x, y)``
batches (a generator, a list of tuples) is read in its own order.
"""
from __future__ import annotations

import numpy as np

GATES = {
    "and": [0, 0, 0, 1],
    "or": [0, 1, 1, 1],
    "nand": [1, 1, 1, 0],
    "xor": [0, 1, 1, 0],
}


def logic_gate(name: str):
    """The truth table of a two-input gate: x (4, 2) float32 and y (4,) float32."""
    key = name.lower()
    if key not in GATES:
        raise ValueError(f"logic_gate: unknown gate {name!r}; choose one of {sorted(GATES)}")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    return x, np.array(GATES[key], dtype=np.float32)


def train_test_split(x, y, test_fraction=0.2, seed=0, stratify=True):
    """Shuffle and split; with ``stratify`` each class keeps its share in both parts."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"train_test_split: x has {len(x)} samples, y has {len(y)}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    test = []
    for g in groups:
        g = rng.permutation(g)
        test.append(g[:int(round(len(g) * test_fraction))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    train = rng.permutation(train)
    test = rng.permutation(test)
    return (x[train], y[train]), (x[test], y[test])


def validation_split_indices(n, fraction, seed=None):
    """(train, validation) sorted index arrays of fit(validation_split=fraction):
    round(fraction * n) of the n samples, drawn with a generator of its own
    derived from ``seed`` (not the shuffling one)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) \
            or not 0 < fraction < 1:
        raise ValueError(f"fit: validation_split must be a fraction in (0, 1), got {fraction!r}")
    n_val = int(round(n * float(fraction)))
    if not 0 < n_val < n:
        raise ValueError(f"fit: validation_split={fraction} of {n} samples leaves "
                         f"{'no validation' if n_val == 0 else 'no training'} samples")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_digits(test_fraction=0.2, seed=0, flatten=True, upscale=1):
    """The 1,797 8x8 handwritten digits that scikit-learn ships (UCI optical
    recognition data): pixels scaled to [0, 1], labels 0-9, a stratified split.

    Returns ((x_train, y_train), (x_test, y_test)); x is (N, 64) float32, or
    (N, 1, 8, 8) with ``flatten=False``. ``upscale=4`` repeats each pixel into
    a 4x4 block, giving the 32x32 images LeNet was designed for."""
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:
        raise ImportError("the digits data set comes with scikit-learn: "
                          "pip install 'gpudl[data]' (or scikit-learn)") from e
    if isinstance(upscale, bool) or not isinstance(upscale, (int, np.integer)) or upscale < 1:
        raise ValueError(f"load_digits: upscale must be a positive integer, got {upscale!r}")
    bunch = _sk_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x = x.repeat(upscale, axis=2).repeat(upscale, axis=3)
    if flatten:
        x = x.reshape(len(x), -1)
    y = bunch.target.astype(np.int64)
    return train_test_split(x, y, test_fraction=test_fraction, seed=seed)


DATASETS = {"digits": load_digits}


class ArrayDataset:
    """Arrays x (N, ...) and y (N, ...) as a data set: ``ds[idx]`` is
    ``(x[idx], y[idx])`` for an index array (or one sample for an integer).

    Over np.memmap arrays (``np.load(path, mmap_mode="r")``) only the rows a
    batch asks for are read, so the arrays may be larger than memory. Over
    ordinary in-memory arrays Trainer.fit takes its fast path by default (the
    arrays uploaded once, batches gathered on the device); ``stream=True``
    streams them instead."""

    batched = True

    def __init__(self, x, y):
        if not hasattr(x, "shape") or not hasattr(y, "shape"):
            x, y = np.asarray(x), np.asarray(y)
        if len(x.shape) == 0 or len(y.shape) == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"ArrayDataset: x {tuple(x.shape)} and y {tuple(y.shape)} must "
                             f"have the same number of samples along axis 0")
        self.x, self.y = x, y

    @property
    def in_memory(self) -> bool:
        """True when both arrays are ordinary ndarrays (no memory map)."""
        return all(type(a) is np.ndarray for a in (self.x, self.y))

    def __len__(self):
        return int(self.x.shape[0])

    def __getitem__(self, idx):
        return np.asarray(self.x[idx]), np.asarray(self.y[idx])

    def __repr__(self):
        kind = "in memory" if self.in_memory else "memory-mapped"
        return f"ArrayDataset({len(self)} samples of {tuple(self.x.shape[1:])}, {kind})"


class Subset:
    """The samples ``indices`` of ``dataset``, in that order, as a data set
    (fit's validation_split on a data set holds out a Subset)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batched = getattr(dataset, "batched", None)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, idx):
        return self.dataset[self.indices[idx]]

    def __repr__(self):
        return f"Subset({len(self)} samples of {self.dataset!r})"
