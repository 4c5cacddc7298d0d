"""Memory-mapped readers of the MNIST (IDX) and CIFAR-10 (binary) files.

The loaders of gpudl.datasets read a whole file into memory; these map it
(np.memmap) and read only the samples a batch asks for, decoding them
(uint8 -> float in [0, 1]) one batch at a time, so a data set larger than
memory trains as one that fits. Trainer.fit streams them: a background
thread reads and decodes the next batch while the current one trains.

    train = gpudl.datasets.open_idx("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    trainer.fit(train, epochs=5, batch_size=64)

A memory map needs the raw bytes on disk, so a ``.gz`` file must be
decompressed first (``gunzip -k file.gz``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError

CIFAR10_BIN_DIR = "cifar-10-batches-bin"
CIFAR10_BIN_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
#: one CIFAR-10 binary record: a label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR10_RECORD = 1 + 3 * 32 * 32


def _no_gzip(path, what):
    if Path(path).suffix == ".gz":
        raise DataError(f"{path}: a .gz file cannot be memory-mapped; decompress it first "
                        f"(gunzip -k {path}) and open the {what} file it makes")


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e


def idx_header(path, magic):
    """(shape, header bytes) of an IDX file, reading only its header and
    checking the file's size against it; ``magic`` is IDX_IMAGES or IDX_LABELS."""
    from .datasets import IDX_IMAGES, parse_idx_header
    _no_gzip(path, "IDX " + ("images" if magic == IDX_IMAGES else "labels"))
    size = _file_size(path)
    with open(path, "rb") as f:
        raw = f.read(4 + 4 * (magic & 0xFF))
    return parse_idx_header(path, raw, magic, size)


def _decode(raw, dtype, flatten):
    # the same arithmetic as gpudl.datasets._scale, so a streamed batch equals
    # the same rows of the in-memory loader's arrays bit for bit
    x = raw.astype(dtype)
    x /= 255
    return x.reshape(len(x), -1) if flatten else x


def _index(idx, n, where):
    """idx as an int64 array (or a scalar for one sample), negatives wrapped, bounds checked."""
    arr = np.asarray(idx)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{where}: indices must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    arr = np.where(arr < 0, arr + n, arr)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise IndexError(f"{where}: index out of range for {n} samples")
    return arr


class IDXDataset:
    """An IDX images file and its labels file (MNIST, Fashion-MNIST) as a
    memory-mapped data set: ``ds[idx]`` reads rows idx only and returns
    ``(x, y)``: x float (len(idx), 1, H, W) in [0, 1] ((len(idx), H*W) with
    ``flatten``) and y int64, the values gpudl.datasets.load_mnist gives."""

    batched = True

    def __init__(self, images, labels, flatten=False, dtype=np.float32):
        from .datasets import IDX_IMAGES, IDX_LABELS, _float_dtype
        self.dtype = _float_dtype(dtype)
        self.flatten = bool(flatten)
        self.paths = (Path(images), Path(labels))
        dims, head = idx_header(images, IDX_IMAGES)
        ldims, lhead = idx_header(labels, IDX_LABELS)
        if dims[0] != ldims[0]:
            raise DataError(f"count mismatch: {images} has {dims[0]} images "
                            f"but {labels} has {ldims[0]} labels")
        self.images = np.memmap(images, np.uint8, mode="r", offset=head, shape=dims)
        self.labels = np.memmap(labels, np.uint8, mode="r", offset=lhead, shape=ldims)

    def __len__(self):
        return int(self.images.shape[0])

    @property
    def sample_shape(self) -> tuple:
        """The shape of one decoded image."""
        h, w = self.images.shape[1:]
        return (h * w,) if self.flatten else (1, h, w)

    def __getitem__(self, idx):
        i = _index(idx, len(self), repr(self))
        if i.ndim == 0:
            x, y = self[i[None]]
            return x[0], y[0]
        return _decode(self.images[i][:, None], self.dtype, self.flatten), \
            self.labels[i].astype(np.int64)

    def __repr__(self):
        return f"IDXDataset({os.fspath(self.paths[0])!r}, {len(self)} images)"


def open_idx(images_path, labels_path, flatten=False, dtype=np.float32) -> IDXDataset:
    """A memory-mapped IDXDataset of an images file and its labels file."""
    return IDXDataset(images_path, labels_path, flatten=flatten, dtype=dtype)


def open_mnist(root=None, train=True, flatten=False, dtype=np.float32, sub="mnist") -> IDXDataset:
    """MNIST's train (or, with ``train=False``, t10k) files from the data root
    (see gpudl.datasets) as a memory-mapped IDXDataset; ``sub="fashion-mnist"``
    for Fashion-MNIST. The files must be decompressed."""
    from .datasets import IDX_FILES, MNIST_URL, _locate, data_root
    base = data_root(root)
    dirs = [base / sub, base]
    names = IDX_FILES[:2] if train else IDX_FILES[2:]
    images, labels = _locate(sub, dirs, names, True,
                             f"Get the files from {MNIST_URL}, put them in {dirs[0]} and gunzip them")
    return IDXDataset(images, labels, flatten=flatten, dtype=dtype)


class CIFAR10BinDataset:
    """CIFAR-10's binary files (data_batch_1.bin .. data_batch_5.bin,
    test_batch.bin: records of one label byte and 3,072 pixel bytes, the
    red, green and blue planes of a 32x32 image) as one memory-mapped data
    set over ``files`` in order: ``ds[idx]`` reads those records only and
    returns x float (len(idx), 3, 32, 32) in [0, 1] ((len(idx), 3072) with
    ``flatten``) and y int64."""

    batched = True

    def __init__(self, files, flatten=False, dtype=np.float32):
        from .datasets import _float_dtype
        self.dtype = _float_dtype(dtype)
        self.flatten = bool(flatten)
        self.paths = [Path(f) for f in ([files] if isinstance(files, (str, os.PathLike))
                                        else files)]
        if not self.paths:
            raise ValueError("CIFAR10BinDataset: no files given")
        self.maps = []
        for p in self.paths:
            _no_gzip(p, "CIFAR-10 binary")
            size = _file_size(p)
            if size == 0 or size % CIFAR10_RECORD:
                raise DataError(f"{p}: {size} bytes is not a whole number of {CIFAR10_RECORD}-byte "
                                f"CIFAR-10 records (truncated, or not the binary version)")
            self.maps.append(np.memmap(p, np.uint8, mode="r",
                                       shape=(size // CIFAR10_RECORD, CIFAR10_RECORD)))
        self.ends = np.cumsum([len(m) for m in self.maps])

    def __len__(self):
        return int(self.ends[-1])

    @property
    def sample_shape(self) -> tuple:
        """The shape of one decoded image."""
        return (3072,) if self.flatten else (3, 32, 32)

    def __getitem__(self, idx):
        i = _index(idx, len(self), repr(self))
        if i.ndim == 0:
            x, y = self[i[None]]
            return x[0], y[0]
        which = np.searchsorted(self.ends, i, side="right")
        rows = i - np.concatenate([[0], self.ends[:-1]])[which]
        records = np.empty((len(i), CIFAR10_RECORD), np.uint8)
        for f in np.unique(which):  # each file's rows in one fancy read
            mask = which == f
            records[mask] = self.maps[f][rows[mask]]
        x = _decode(records[:, 1:].reshape(-1, 3, 32, 32), self.dtype, self.flatten)
        return x, records[:, 0].astype(np.int64)

    def __repr__(self):
        return f"CIFAR10BinDataset({os.fspath(self.paths[0].parent)!r}, {len(self)} images)"


def open_cifar10_bin(root=None, train=True, flatten=False, dtype=np.float32) -> CIFAR10BinDataset:
    """CIFAR-10's binary files from the data root (its cifar-10-batches-bin/
    folder, or the root itself): the five training batches, or with
    ``train=False`` the test batch, as a CIFAR10BinDataset."""
    from .datasets import _locate, data_root
    base = data_root(root)
    dirs = [base / CIFAR10_BIN_DIR, base]
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    how = f"Download {CIFAR10_BIN_URL} and extract it in {base}, which makes {dirs[0]}"
    return CIFAR10BinDataset(_locate("CIFAR-10 (binary)", dirs, names, False, how),
                             flatten=flatten, dtype=dtype)
