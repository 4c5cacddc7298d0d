"""Image data sets read from local files: MNIST, Fashion-MNIST and CIFAR-10.

Nothing is downloaded (gpudl may run where there is no network), so a missing
file raises DataNotFoundError naming the file, the folders searched and where
to get it. Files live under ``root`` (default: $GPUDL_DATA, else ~/.gpudl/data):

    mnist/ and fashion-mnist/   train-images-idx3-ubyte  train-labels-idx1-ubyte
                                t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
                                (each may also end in .gz; files directly in root work too)
    cifar-10-batches-py/        data_batch_1 .. data_batch_5, test_batch

Each loader returns ((x_train, y_train), (x_test, y_test)): x is float in [0, 1]
shaped (N, C, H, W), or (N, C*H*W) with ``flatten=True``; y is int64.

To stream a data set from disk instead of loading it, the memory-mapped
readers of gpudl/datasets_mmap.py (open_idx, open_mnist, IDXDataset,
open_cifar10_bin, CIFAR10BinDataset) are importable from here too.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from .errors import DataError, DataNotFoundError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # 0x08: uint8 elements; low byte: number of dims
MNIST_URL = ("https://yann.lecun.com/exdb/mnist/ or a mirror such as "
             "https://ossci-datasets.s3.amazonaws.com/mnist/")
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def data_root(root=None) -> Path:
    """``root``, else $GPUDL_DATA, else ~/.gpudl/data; read at each call so a job
    (or a test) can point it elsewhere after import."""
    if root is None:
        root = os.environ.get("GPUDL_DATA") or "~/.gpudl/data"
    return Path(root).expanduser()


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type (pixels are scaled to [0, 1]), got {dtype}")
    return dtype


def _scale(raw, dtype, flatten):
    x = raw.astype(dtype)
    x /= 255  # in place: a float64 temporary of full CIFAR-10 would be 1.5 GB
    return x.reshape(len(x), -1) if flatten else x


def _locate(title, dirs, names, gz, how):
    """The path of each of ``names``, taken from the first of ``dirs`` that has it."""
    suffixes = ("", ".gz") if gz else ("",)
    found, missing = [], []
    for name in names:
        hits = [d / (name + s) for d in dirs for s in suffixes if (d / (name + s)).is_file()]
        found.append(hits[0] if hits else None)
        if not hits:
            missing.append(f"{dirs[0] / name}" + (" (or .gz)" if gz else ""))
    if missing:
        raise DataNotFoundError(
            f"{title}: file(s) not found: {', '.join(missing)}. Searched {' and '.join(map(str, dirs))}. "
            f"{how} (or pass root= / set GPUDL_DATA to use another folder).")
    return found


def parse_idx_header(path, raw, magic, size):
    """(shape, header bytes) from the start of an IDX file (``raw``: at least its
    header, or all it has), checked against the file's ``size`` in bytes."""
    kind = "images" if magic == IDX_IMAGES else "labels"
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {size} bytes, too short for an IDX header")
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise DataError(f"{path}: bad magic number 0x{got:08X}, expected 0x{magic:08X} (IDX uint8 {kind}); "
                        f"not an IDX {kind} file, still compressed, or images and labels swapped")
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if size < head or len(raw) < head:
        raise DataError(f"{path}: truncated: {size} bytes, shorter than the {head}-byte IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:head])
    want = head + int(np.prod(dims, dtype=np.int64))
    if size != want:
        raise DataError(f"{path}: size mismatch: the header gives shape {dims}, i.e. {want} bytes, "
                        f"but the file has {size} (truncated or corrupt)")
    return tuple(int(d) for d in dims), head


def read_idx(path, magic):
    """One IDX file (plain or .gz) as a uint8 array of the shape its header gives;
    ``magic`` is IDX_IMAGES or IDX_LABELS."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:  # a cut-off .gz ends in EOFError, a non-gzip one in BadGzipFile
        raise DataError(f"{path}: cannot read: {e}") from e
    dims, head = parse_idx_header(path, raw, magic, len(raw))
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _load_idx_set(title, sub, url, root, flatten, dtype):
    dtype = _float_dtype(dtype)
    base = data_root(root)
    dirs = [base / sub, base]
    paths = _locate(title, dirs, IDX_FILES, True, f"Get the four files from {url} and put them in {dirs[0]}")
    out = []
    for img_path, lab_path in (paths[:2], paths[2:]):
        images, labels = read_idx(img_path, IDX_IMAGES), read_idx(lab_path, IDX_LABELS)
        if len(images) != len(labels):
            raise DataError(f"count mismatch: {img_path} has {len(images)} images "
                            f"but {lab_path} has {len(labels)} labels")
        out.append((_scale(images[:, None], dtype, flatten), labels.astype(np.int64)))
    return tuple(out)


def load_mnist(root=None, flatten=False, dtype=np.float32):
    """MNIST handwritten digits: 60,000 train and 10,000 test, x (N, 1, 28, 28) in [0, 1]."""
    return _load_idx_set("MNIST", "mnist", MNIST_URL, root, flatten, dtype)


def load_fashion_mnist(root=None, flatten=False, dtype=np.float32):
    """Fashion-MNIST (Zalando clothing, 10 classes), same files and shapes as MNIST."""
    return _load_idx_set("Fashion-MNIST", "fashion-mnist", FASHION_MNIST_URL, root, flatten, dtype)


def _latin1(text, encoding="latin1"):
    # Python 3 writes bytes into pickle protocols < 3 as _codecs.encode(text, "latin1");
    # other codecs are not needed for that, so they are not let through.
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # whichever of numpy.core / numpy._core is installed
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): bytes,  # how protocol 2 writes an empty bytes object
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals a dict of numpy arrays needs: a plain pickle.load
    imports and calls whatever the file names, os.system included."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")  # the batches were pickled by Python 2
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise DataError(f"{self.path}: refusing to unpickle the global {module}.{name}: a CIFAR-10 "
                            "batch holds only numpy arrays, lists and bytes, and loading this could run code")
        return _ALLOWED[(module, name)]


def _read_batch(path):
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the caller
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        got = list(batch) if isinstance(batch, dict) else f"a {type(batch).__name__}"
        raise DataError(f"{path}: wrong keys: expected a dict with b'data' and b'labels', got {got!r}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (3072,)):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' should be a (N, 3072) uint8 array, got {got}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: b'labels' is not a list of integers ({e})") from e
    if labels.shape != (len(data),):
        raise DataError(f"{path}: count mismatch: {len(data)} images but labels of shape {labels.shape}")
    return data, labels


def load_cifar10(root=None, flatten=False, dtype=np.float32):
    """CIFAR-10 (32x32 colour, 10 classes): 50,000 train and 10,000 test,
    x (N, 3, 32, 32) in [0, 1] with channels R, G, B."""
    dtype = _float_dtype(dtype)
    base = data_root(root)
    dirs = [base / CIFAR10_DIR, base]
    tarball = base / "cifar-10-python.tar.gz"
    if tarball.is_file():
        how = f"{tarball} is there but not extracted: run tar xzf {tarball} -C {base}"
    else:
        how = f"Download {CIFAR10_URL} and extract it in {base}, which makes {dirs[0]}"
    parts = [_read_batch(p) for p in _locate("CIFAR-10", dirs, CIFAR10_FILES, False, how)]
    out = []
    for chunk in (parts[:5], parts[5:]):
        raw = np.concatenate([d for d, _ in chunk]).reshape(-1, 3, 32, 32)
        out.append((_scale(raw, dtype, flatten), np.concatenate([y for _, y in chunk])))
    return tuple(out)


from .datasets_mmap import (CIFAR10BinDataset, IDXDataset, open_cifar10_bin,  # noqa: E402,F401
                            open_idx, open_mnist)

DATASETS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}

_WHERE = {"mnist": ("mnist", MNIST_URL), "fashion-mnist": ("fashion-mnist", FASHION_MNIST_URL),
          "cifar10": (CIFAR10_DIR, CIFAR10_URL)}


def describe(root=None) -> str:
    """One line per data set: its loader's summary, the folder it reads and where to get the files."""
    base = data_root(root)
    lines = []
    for name, loader in DATASETS.items():
        sub, url = _WHERE[name]
        summary = " ".join(loader.__doc__.split())
        lines.append(f"{name}: {summary} Files in {base / sub}; from {url}")
    return "\n".join(lines)
