"""Local data set loaders, on tiny files written here in the real formats
(IDX with big-endian headers, plain and gzipped; CIFAR-10 pickles, protocol 2)."""
import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest

from gpudl import datasets
from gpudl.datasets import DATASETS, describe, load_cifar10, load_fashion_mnist, load_mnist
from gpudl.errors import DataError, DataNotFoundError, GpudlError


def write_idx(path, arr, gz=False, magic=None):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    blob = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(blob)


def make_idx_set(folder, gz=False, n_train=5, n_test=3):
    """Writes the four IDX files; returns the raw arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", x, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", y, gz)
        sets[prefix] = (x, y)
    return sets


def write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", b"data": data, b"labels": list(labels)}, f, protocol=2)


def make_cifar(root, n=2):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    raw = {}
    for name in names:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        write_batch(folder / name, data, labels)
        raw[name] = (data, labels)
    return folder, raw


def test_mnist_shapes_dtype_scaling_labels(tmp_path):
    raw = make_idx_set(tmp_path / "mnist")
    (xtr, ytr), (xte, yte) = load_mnist(tmp_path)
    assert xtr.shape == (5, 1, 28, 28) and xte.shape == (3, 1, 28, 28)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64 and yte.dtype == np.int64
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    np.testing.assert_allclose(xtr[:, 0], raw["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ytr, raw["train"][1])
    np.testing.assert_array_equal(yte, raw["t10k"][1])


def test_mnist_gz_directly_in_root_flatten_float64(tmp_path):
    raw = make_idx_set(tmp_path, gz=True)
    (xtr, _), (xte, yte) = load_mnist(tmp_path, flatten=True, dtype=np.float64)
    assert xtr.shape == (5, 784) and xte.shape == (3, 784) and xtr.dtype == np.float64
    np.testing.assert_array_equal(xte, raw["t10k"][0].reshape(3, -1) / 255.0)
    np.testing.assert_array_equal(yte, raw["t10k"][1])


def test_fashion_mnist_from_gpudl_data_env(tmp_path, monkeypatch):
    raw = make_idx_set(tmp_path / "fashion-mnist", n_train=4, n_test=2)
    monkeypatch.setenv("GPUDL_DATA", str(tmp_path))
    (xtr, ytr), (xte, _) = load_fashion_mnist()
    assert xtr.shape == (4, 1, 28, 28) and xte.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(ytr, raw["train"][1])


def test_default_root_is_home_gpudl_data(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUDL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert datasets.data_root() == tmp_path / ".gpudl" / "data"
    with pytest.raises(DataNotFoundError, match=str(tmp_path / ".gpudl" / "data" / "mnist")):
        load_mnist()


def test_missing_file_names_path_folder_and_url(tmp_path):
    make_idx_set(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, GpudlError)
    msg = str(e.value)
    assert str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte") in msg
    assert "train-images" not in msg and "yann.lecun.com/exdb/mnist" in msg and "ossci-datasets" in msg
    with pytest.raises(DataNotFoundError, match="zalandoresearch/fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(DataNotFoundError) as e:
        load_cifar10(tmp_path)
    assert "cifar-10-python.tar.gz" in str(e.value) and "data_batch_1" in str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)


def test_truncated_idx_and_gz(tmp_path):
    make_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="size mismatch") as e:
        load_mnist(tmp_path)
    assert str(path) in str(e.value)

    make_idx_set(tmp_path / "gz", gz=True)
    gz = tmp_path / "gz" / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path / "gz")


def test_bad_magic_and_count_mismatch(tmp_path):
    make_idx_set(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros((5, 28, 28)))  # images as labels
    with pytest.raises(DataError, match="bad magic number 0x00000803, expected 0x00000801") as e:
        load_mnist(tmp_path)
    assert "train-labels-idx1-ubyte" in str(e.value)

    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError, match="count mismatch: .* 5 images .* 4 labels"):
        load_mnist(tmp_path)


def test_non_float_dtype_refused(tmp_path):
    with pytest.raises(ValueError, match="floating"):
        load_mnist(tmp_path, dtype=np.uint8)


def test_cifar10_shapes_channels_labels_flatten(tmp_path):
    _, raw = make_cifar(tmp_path)
    (xtr, ytr), (xte, yte) = load_cifar10(tmp_path)
    assert xtr.shape == (10, 3, 32, 32) and xte.shape == (2, 3, 32, 32)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int64
    d0 = raw["data_batch_1"][0]
    # rows are 1024 red, then green, then blue values, each row-major 32x32
    assert xtr[0, 1, 0, 0] == np.float32(d0[0, 1024]) / np.float32(255)
    assert xtr[1, 2, 31, 31] == np.float32(d0[1, 3071]) / np.float32(255)
    np.testing.assert_array_equal(ytr, sum((raw[f"data_batch_{i}"][1] for i in range(1, 6)), []))
    np.testing.assert_array_equal(yte, raw["test_batch"][1])
    (xtr, _), (xte, _) = load_cifar10(tmp_path / "cifar-10-batches-py", flatten=True)
    assert xtr.shape == (10, 3072) and xte.shape == (2, 3072) and 0 <= xtr.min() <= xtr.max() <= 1


def test_cifar10_wrong_keys_and_truncated(tmp_path):
    folder, _ = make_cifar(tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match="data_batch_3: wrong keys"):
        load_cifar10(tmp_path)
    write_batch(folder / "data_batch_3", np.zeros((2, 3072), np.uint8), [0])
    with pytest.raises(DataError, match="count mismatch"):
        load_cifar10(tmp_path)
    blob = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 batch"):
        load_cifar10(tmp_path)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, as in the original CIFAR-10 batches."""

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes}


def test_cifar10_python2_style_batch(tmp_path):
    folder, raw = make_cifar(tmp_path)
    data = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"data": data, b"labels": [7, 9]})
    # numpy 1.x (as in 2009) names numpy.core, numpy 2 numpy._core: both must load
    blob = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"_codecs" not in blob and b"numpy.core.multiarray\n_reconstruct" in blob
    (folder / "test_batch").write_bytes(blob)
    _, (xte, yte) = load_cifar10(tmp_path, flatten=True)
    np.testing.assert_array_equal(xte, data / np.float32(255))
    np.testing.assert_array_equal(yte, [7, 9])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_pickle_with_disallowed_global_is_refused(tmp_path):
    folder, _ = make_cifar(tmp_path)
    marker = tmp_path / "ran"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": _Evil(marker)}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle the global (posix|nt|os)\.system") as e:
        load_cifar10(tmp_path)
    assert "test_batch" in str(e.value)
    assert not marker.exists()


def test_registry_and_describe(tmp_path):
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10"}
    assert DATASETS["cifar10"] is load_cifar10
    text = describe(tmp_path)
    assert text.count("\n") == 2 and str(tmp_path / "fashion-mnist") in text and "cifar-10-python" in text
