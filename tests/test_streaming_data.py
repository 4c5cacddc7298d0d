"""The streaming data sets and the loader thread: ArrayDataset, the memory-mapped
IDX and CIFAR-10 binary readers (which read only the samples asked for and
decode them to the values the in-memory loaders give) and the Prefetcher."""
import gzip
import struct
import threading
import time
import traceback
import tracemalloc

import numpy as np
import pytest

from gpudl.data import ArrayDataset, Subset
from gpudl.datasets import (CIFAR10BinDataset, IDX_FILES, load_mnist,
                            open_cifar10_bin, open_idx, open_mnist)
from gpudl.errors import DataError
from gpudl.loader import Prefetcher


def write_idx(path, arr):
    arr = np.ascontiguousarray(arr, np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | arr.ndim))
        f.write(struct.pack(f">{arr.ndim}I", *arr.shape))
        f.write(arr.tobytes())
    return path


def idx_pair(tmp_path, n=20, h=6, w=5, seed=0, prefix="train"):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    return (write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images),
            write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels), images, labels)


def write_cifar_bin(path, n, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1).tofile(path)
    return pixels, labels


def test_array_dataset_indexes_both_arrays_and_says_if_it_is_in_memory(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    y = np.arange(6)
    ds = ArrayDataset(x, y)
    xb, yb = ds[np.array([4, 1])]
    assert np.array_equal(xb, x[[4, 1]]) and np.array_equal(yb, [4, 1])
    assert len(ds) == 6 and ds.in_memory and ds.batched
    np.save(tmp_path / "x.npy", x)
    mapped = ArrayDataset(np.load(tmp_path / "x.npy", mmap_mode="r"), y)
    assert not mapped.in_memory and "memory-mapped" in repr(mapped)
    assert type(mapped[np.array([0, 5])][0]) is np.ndarray  # a copy, not a view of the map
    with pytest.raises(ValueError, match="same number of samples"):
        ArrayDataset(x, y[:5])
    sub = Subset(ds, [5, 0, 2])
    assert len(sub) == 3 and np.array_equal(sub[np.array([0, 2])][1], [5, 2])


def test_idx_reader_maps_the_file_and_decodes_like_load_mnist(tmp_path):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in zip(IDX_FILES, (30, 30, 7, 7)):
        shape = (n, 28, 28) if "images" in name else (n,)
        write_idx(root / "mnist" / name, rng.integers(0, 256 if len(shape) > 1 else 10, shape))
    (x_train, y_train), (x_test, y_test) = load_mnist(root)
    ds = open_mnist(root)
    assert isinstance(ds.images, np.memmap) and isinstance(ds.labels, np.memmap)
    assert len(ds) == 30 and ds.sample_shape == (1, 28, 28)
    xb, yb = ds[np.arange(30)]
    assert xb.dtype == np.float32 and yb.dtype == np.int64
    assert np.array_equal(xb, x_train) and np.array_equal(yb, y_train)  # bit for bit
    order = np.array([29, 3, 3, 0, -1])
    assert np.array_equal(ds[order][0], x_train[order])
    x1, y1 = ds[4]  # one sample, no batch axis
    assert x1.shape == (1, 28, 28) and y1 == y_train[4]
    test = open_mnist(root, train=False, flatten=True)
    assert np.array_equal(test[np.arange(7)][0], x_test.reshape(7, -1))
    with pytest.raises(IndexError, match="out of range"):
        ds[np.array([30])]


def test_idx_reader_reads_only_the_rows_asked_for(tmp_path):
    # a sparse file whose header claims 200,000 images of 64x64 (820 MB): a reader
    # that loaded it would take seconds and that much memory
    n, h, w = 200_000, 64, 64
    img = tmp_path / "big-images"
    with open(img, "wb") as f:
        f.write(struct.pack(">IIII", 0x0803, n, h, w))
        f.truncate(16 + n * h * w)
    lab = write_idx(tmp_path / "big-labels", np.zeros(n, np.uint8))
    tracemalloc.start()
    t0 = time.perf_counter()
    ds = open_idx(img, lab, flatten=True)
    xb, yb = ds[np.array([0, 123_456, n - 1])]
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert xb.shape == (3, h * w) and not xb.any()
    assert peak < 5 * 2**20 and took < 2.0, (peak, took)


def test_idx_reader_errors_name_the_file(tmp_path):
    img, lab, _, _ = idx_pair(tmp_path)
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        f.write(img.read_bytes())
    with pytest.raises(DataError, match=r"cannot be memory-mapped; decompress it first \(gunzip"):
        open_idx(gz, lab)
    with pytest.raises(DataError, match="bad magic"):
        open_idx(lab, img)  # swapped
    short = tmp_path / "short"
    short.write_bytes(img.read_bytes()[:-3])
    with pytest.raises(DataError, match="size mismatch"):
        open_idx(short, lab)
    _, lab7, _, _ = idx_pair(tmp_path, n=7, prefix="other")
    with pytest.raises(DataError, match="count mismatch"):
        open_idx(img, lab7)
    with pytest.raises(DataError, match="not found"):
        open_mnist(tmp_path / "nowhere")


def test_cifar_binary_reader_spans_files_and_decodes_the_planes(tmp_path):
    parts = [write_cifar_bin(tmp_path / f"data_batch_{i}.bin", n, seed=i)
             for i, n in zip(range(1, 6), (3, 4, 2, 5, 1))]
    write_cifar_bin(tmp_path / "test_batch.bin", 2, seed=9)
    pixels = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([l for _, l in parts]).astype(np.int64)
    ds = open_cifar10_bin(tmp_path)
    assert len(ds) == 15 and all(isinstance(m, np.memmap) for m in ds.maps)
    order = np.array([14, 0, 6, 3, 7, 2, 9])  # every file, out of order
    xb, yb = ds[order]
    ref = pixels[order].astype(np.float32)
    ref /= 255
    assert xb.shape == (7, 3, 32, 32) and np.array_equal(xb, ref)
    assert np.array_equal(yb, labels[order])
    # the first pixel of a record is red (0, 0), the 1025th green (0, 0)
    raw = (tmp_path / "data_batch_1.bin").read_bytes()
    assert xb[1, 0, 0, 0] == np.float32(raw[1]) / 255
    assert xb[1, 1, 0, 0] == np.float32(raw[1 + 1024]) / 255
    flat = CIFAR10BinDataset([tmp_path / "data_batch_2.bin"], flatten=True)
    assert flat[np.array([1])][0].shape == (1, 3072)
    assert len(open_cifar10_bin(tmp_path, train=False)) == 2
    bad = tmp_path / "bad.bin"
    bad.write_bytes(raw[:-1])
    with pytest.raises(DataError, match="whole number of 3073-byte"):
        CIFAR10BinDataset([bad])


# ---------------------------------------------------------------- the loader thread
def loader_threads():
    return [t for t in threading.enumerate() if t.name == "gpudl-loader" and t.is_alive()]


def test_prefetcher_keeps_order_and_stays_at_most_depth_ahead():
    made = []

    def produce(i):
        made.append(i)
        return i * i
    with Prefetcher(range(10), produce, depth=2) as batches:
        first = next(batches)
        time.sleep(0.2)
        assert first == 0 and len(made) <= 1 + 2 + 1  # consumed, queued, one in hand
        assert [first] + list(batches) == [i * i for i in range(10)]
    assert not loader_threads()


def test_an_error_in_the_thread_is_raised_with_its_traceback():
    def produce(i):
        if i == 3:
            raise KeyError("sample 3 is missing")
        return i

    got = []
    with pytest.raises(KeyError, match="sample 3 is missing") as info:
        with Prefetcher(range(10), produce) as batches:
            for b in batches:
                got.append(b)
    assert got == [0, 1, 2]
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "produce" in frames  # where it happened, in the loader thread
    assert not loader_threads()


def test_closing_stops_a_thread_blocked_on_a_full_queue():
    pf = Prefetcher(iter(range(10**9)), lambda i: i, depth=2)
    assert next(pf) == 0
    time.sleep(0.1)
    t0 = time.perf_counter()
    pf.close()
    assert time.perf_counter() - t0 < 2 and not pf.thread.is_alive()
    with pytest.raises(StopIteration):
        next(pf)


def test_pinned_staging_reuses_a_buffer_only_after_its_upload_finished(monkeypatch):
    """The opt-in GPU path's bookkeeping, on NumPy stand-ins for CuPy: it has
    not run on a GPU (none was lent), so only its logic is checked here."""
    import sys
    import types

    from gpudl.loader import PinnedStaging, pinned_requested
    waited = []

    class Event:
        def record(self, stream):
            self.stream = stream

        def synchronize(self):
            waited.append(self)

    class DeviceArray(np.ndarray):
        def set(self, host, stream=None):
            self[...] = host
    cuda = types.SimpleNamespace(get_current_stream=lambda: "stream", Event=Event)
    cupy = types.SimpleNamespace(cuda=cuda, empty=lambda s, d: np.empty(s, d).view(DeviceArray))
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    staging = PinnedStaging(cupy, slots=2)
    a, b, c = (np.full((2, 3), v, np.float32) for v in (1, 2, 3))
    pa, pb = staging.stage(a), staging.stage(b)
    assert pa is not pb and not waited
    out = staging.upload(pa)
    assert np.array_equal(out, a)
    pc = staging.stage(c)          # slot 0 again: waits for pa's upload first
    assert pc is pa and len(waited) == 1 and np.array_equal(pc, c)
    monkeypatch.setenv("GPUDL_PINNED_UPLOAD", "1")
    assert not pinned_requested(types.SimpleNamespace(_cp=None))  # CPU and simulator: off
    assert pinned_requested(types.SimpleNamespace(_cp=cupy))
    monkeypatch.delenv("GPUDL_PINNED_UPLOAD")
    assert not pinned_requested(types.SimpleNamespace(_cp=cupy))  # opt-in only
