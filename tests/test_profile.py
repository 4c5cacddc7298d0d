"""gpudl.profile on the CPU: what it records in a training step, FLOP and byte
counts against hand counts, the Chrome trace, and that it leaves nothing behind."""
import json

import numpy as np
import pytest

import gpudl
from gpudl import layers as L
from gpudl import backend as backends
from gpudl.backend.cpu import CPUBackend
from gpudl.opcost import A, op_cost
from gpudl.profile import OPS, measure_ceilings, profile


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUDL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_current", backends._current)  # set_device undone after


def tiny_trainer():
    gpudl.set_device("cpu")
    gpudl.manual_seed(0)
    model = gpudl.Sequential([L.Conv2D(1, 4, 3, padding="same"), L.ReLU(), L.MaxPool2D(2),
                              L.Flatten(), L.Dense(4 * 4 * 4, 10)], input_shape=(1, 8, 8))
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    return trainer, x, np.arange(16) % 10


def names(records):
    out = {}
    for r in records:
        out[r.name] = out.get(r.name, 0) + 1
    return out


def test_records_a_training_step():
    trainer, x, y = tiny_trainer()
    with profile() as prof:
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)   # 2 batches
    ops = prof.ops
    assert ops and not prof.kernels and all(r.device == "cpu" for r in ops)
    assert all(r.timer == "monotonic" and r.duration_s > 0 for r in ops)
    n = names(ops)
    # per batch: conv, bias, relu, pool, dense forward; loss; dense (dW, dx), pool,
    # relu and conv (dW only: the first layer needs no input gradient) backward;
    # 4 parameter updates
    per_batch = {"conv2d": 1, "add_channel_bias": 1, "relu": 1, "max_pool2d": 1, "add_bias": 1,
                 "softmax_cross_entropy": 1, "sum_rows": 1, "max_pool2d_backward": 1,
                 "relu_backward": 1, "conv2d_backward_weight": 1, "sum_channels": 1,
                 "matmul": 3, "sgd_update": 4}
    for op, count in per_batch.items():
        assert n[op] == 2 * count, (op, n)
    assert "conv2d_backward_input" not in n
    conv = [r for r in ops if r.name == "conv2d"]
    assert conv[0].shapes == ((8, 1, 8, 8), (4, 1, 3, 3))
    pool = [r for r in ops if r.name == "max_pool2d"]
    assert pool[0].shapes == ((8, 4, 8, 8),)
    loss = [r for r in ops if r.name == "softmax_cross_entropy"]
    assert loss[0].shapes == ((8, 10), (8,))
    # records are in call order: the forward conv comes before its backward
    order = [r.name for r in ops]
    assert order.index("conv2d") < order.index("softmax_cross_entropy") < \
        order.index("conv2d_backward_weight")
    rows = prof.summary("op")
    by = {(r["name"], r["shapes"]): r for r in rows}
    row = by[("conv2d", ((8, 1, 8, 8), (4, 1, 3, 3)))]
    assert row["calls"] == 2 and row["total_s"] > 0 and row["median_s"] > 0
    assert row["flops"] == 2 * (2 * 8 * 4 * 8 * 8 * 1 * 3 * 3)
    assert abs(sum(r["percent"] for r in rows) - 100) < 1e-6
    text = prof.format_table(ceilings=False)
    assert "conv2d" in text and "(8,1,8,8) (4,1,3,3)" in text and "memory" in text


# ---- hand counts ----------------------------------------------------------------
F32 = 4


def test_matmul_counts():
    a, b = A((3, 5), F32), A((5, 7), F32)
    assert op_cost("matmul", (a, b)) == (2 * 3 * 5 * 7, (15 + 35 + 21) * F32)
    # op(a) = a.T (5, 3) -> (3, 5); op(b) = b.T (7, 5) -> (5, 7): the same product
    flags = {"trans_a": True, "trans_b": True}
    assert op_cost("matmul", (A((5, 3), F32), A((7, 5), F32)), flags) == \
        (2 * 3 * 5 * 7, (15 + 35 + 21) * F32)
    assert op_cost("matmul", (A((3, 5), 8), A((5, 7), 8))) == (210, 71 * 8)


def test_conv_counts():
    # x (2, 3, 9, 9), w (4, 3, 3, 3), stride 2, pads 1: OH = OW = (9 + 2 - 3) // 2 + 1 = 5
    x, w, dy = A((2, 3, 9, 9), F32), A((4, 3, 3, 3), F32), A((2, 4, 5, 5), F32)
    geo = ((2, 2), (1, 1, 1, 1), (1, 1))
    macs = 2 * 4 * 5 * 5 * 3 * 3 * 3  # N O OH OW C KH KW
    assert op_cost("conv2d", (x, w) + geo) == (2 * macs, (486 + 108 + 200) * F32)
    assert op_cost("conv2d_backward_input", (dy, w, (9, 9)) + geo) == \
        (2 * macs, (200 + 108 + 486) * F32)
    assert op_cost("conv2d_backward_weight", (dy, x, (3, 3)) + geo) == \
        (2 * macs, (200 + 486 + 108) * F32)
    # groups = 3, w (6, 1, 3, 3); dilation 2: OH = (9 + 2 - 5) // 2 + 1 = 4
    xg, wg, dyg = A((2, 3, 9, 9), F32), A((6, 1, 3, 3), F32), A((2, 6, 4, 4), F32)
    geo = ((2, 2), (1, 1, 1, 1), (2, 2))
    macs = 2 * 6 * 4 * 4 * 1 * 3 * 3
    assert op_cost("conv2d", (xg, wg) + geo, {"groups": 3}) == \
        (2 * macs, (486 + 54 + 192) * F32)
    assert op_cost("conv2d_backward_input", (dyg, wg, (9, 9)) + geo, {"groups": 3}) == \
        (2 * macs, (192 + 54 + 486) * F32)
    assert op_cost("conv2d_backward_weight", (dyg, xg, (3, 3)) + geo, {"groups": 3}) == \
        (2 * macs, (192 + 486 + 54) * F32)


def test_pool_counts():
    x = A((2, 3, 6, 6), F32)                      # 216 elements
    y = A((2, 3, 3, 3), F32)                      # 2x2 windows, stride 2: 54 outputs
    assert op_cost("max_pool2d", (x, (2, 2), (2, 2), (0, 0, 0, 0))) == \
        (54 * 4, (216 + 54) * F32 + 54 * 8)        # 4 compares per output; argmax int64
    assert op_cost("max_pool2d_backward", (y, A((2, 3, 3, 3), 8), (6, 6), (2, 2), (2, 2),
                                           (0, 0, 0, 0))) == (54, (54 + 216) * F32 + 54 * 8)
    # 3x3 windows, stride 2, pad 1: OH = (6 + 2 - 3) // 2 + 1 = 3
    assert op_cost("avg_pool2d", (x, (3, 3), (2, 2), (1, 1, 1, 1))) == (54 * 9, (216 + 54) * F32)
    assert op_cost("avg_pool2d_backward", (y, (6, 6), (3, 3), (2, 2), (1, 1, 1, 1))) == \
        (54 * 9, (54 + 216) * F32)


def test_recorded_costs_match_the_model():
    be = gpudl.set_device("cpu")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    geo = ((2, 2), (1, 1, 1, 1), (1, 1))
    with profile(be) as prof:
        y = be.conv2d(x, w, *geo)
        be.conv2d_backward_input(y, w, (9, 9), *geo)
        be.conv2d_backward_weight(y, x, (3, 3), *geo)
        be.matmul(x.reshape(6, 81), x.reshape(6, 81), trans_b=True)
        be.max_pool2d(x[:, :, :6, :6].copy(), (2, 2), (2, 2), (0, 0, 0, 0))
    macs = 2 * 4 * 5 * 5 * 3 * 3 * 3
    got = [(r.name, r.flops, r.bytes) for r in prof.ops]
    assert got == [("conv2d", 2 * macs, 794 * F32), ("conv2d_backward_input", 2 * macs, 794 * F32),
                   ("conv2d_backward_weight", 2 * macs, 794 * F32),
                   ("matmul", 2 * 6 * 6 * 81, (486 + 486 + 36) * F32),
                   ("max_pool2d", 54 * 4, 270 * F32 + 54 * 8)]


def test_every_op_has_a_cost_model():
    from gpudl.opcost import OPS as COSTED
    assert set(OPS) == set(COSTED)


# ---- the trace ------------------------------------------------------------------
def test_chrome_trace(tmp_path):
    trainer, x, y = tiny_trainer()
    with profile() as prof:
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    complete = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == len(prof.records) == len(prof.ops)
    assert [e["name"] for e in complete] == [r.name for r in prof.records]
    for e in complete:
        assert e["cat"] == "op" and e["dur"] > 0 and e["ts"] >= 0
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
    starts = [e["ts"] for e in complete]
    assert starts == sorted(starts)


# ---- off means off --------------------------------------------------------------
def _pristine(be):
    for name in OPS + ("launch",):
        assert name not in be.__dict__, name
    for name in OPS:
        assert getattr(be, name).__func__ is getattr(type(be), name)


def test_off_records_nothing_and_restores_the_methods():
    trainer, x, y = tiny_trainer()
    be = trainer.model.backend
    make = backends._make
    never = profile()                                 # never entered
    trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)
    assert never.records == []
    with profile() as prof:
        assert be.__dict__["matmul"].__wrapped__.__func__ is CPUBackend.matmul
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)
    count = len(prof.records)
    assert count > 0
    trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)   # after exit
    assert len(prof.records) == count and never.records == []
    _pristine(be)
    assert backends._make is make


def test_restores_after_an_exception_and_wraps_new_backends():
    be = gpudl.set_device("cpu")
    with pytest.raises(ValueError):
        with profile(all_backends=False) as prof:
            other = gpudl.set_device("cpu")         # created inside: wrapped too
            other.relu(np.ones(3, np.float32))
            raise ValueError("boom")
    assert [r.name for r in prof.ops] == ["relu"]
    _pristine(be)
    _pristine(other)


def test_nested_profilers_and_nested_ops():
    be = gpudl.set_device("cpu")
    x = np.ones((4, 3), np.float32)
    with profile(be) as outer:
        with profile(be) as inner:
            be.relu(x)
        be.relu(x)
    assert len(inner.ops) == 1 and len(outer.ops) == 2
    _pristine(be)

    class Nested(CPUBackend):      # an op that calls another op of its backend
        def relu(self, x):
            self.matmul(x, x, trans_b=True)
            return super().relu(x)

    nested = Nested()
    with profile(nested, all_backends=False) as prof:
        nested.relu(x)
        nested.matmul(x, x, trans_b=True)
    assert [r.name for r in prof.ops] == ["relu", "matmul"]   # the inner matmul is relu's


def test_ceilings_are_measured_once_and_cached(tmp_path, monkeypatch):
    from gpudl import opcost as mod
    name = CPUBackend().device_name()
    first = measure_ceilings(name)
    assert first["matmul_gflops"] > 0 and first["copy_gbps"] > 0
    assert (tmp_path / "cache" / "ceilings.json").exists()
    monkeypatch.setattr(mod, "_measure_cpu", lambda: pytest.fail("measured twice"))
    assert measure_ceilings(name) == first
    trainer, x, y = tiny_trainer()
    with profile() as prof:
        trainer.fit(x, y, epochs=1, batch_size=8, verbose=False)
    text = prof.format_table(ceilings=True)
    assert "measured ceiling" in text and "GB/s copy" in text
    assert mod.device_peak("NVIDIA H100 80GB HBM3")[0] == "H100 SXM"
    assert mod.device_peak("NVIDIA H100 PCIe")[0] == "H100 PCIe"
    assert mod.device_peak("NVIDIA H200")[0] == "H200 SXM"
    assert mod.device_peak(name) is None


def test_cli_profile(tmp_path, capsys):
    from gpudl.cli import main
    trace = tmp_path / "t.json"
    assert main(["profile", "--model", "cnn", "--steps", "2", "--batch-size", "4",
                 "--device", "cpu", "--trace", str(trace), "--no-ceilings"]) == 0
    out = capsys.readouterr().out
    assert "gpudl profile: cnn" in out and "conv2d" in out and "sgd_update" in out
    events = json.loads(trace.read_text())["traceEvents"]
    assert sum(e["name"] == "conv2d" and e["ph"] == "X" for e in events) == 2 * 2


def test_cuda_event_path_with_a_stand_in_cupy(monkeypatch):
    """The GPU timer, without a GPU: a stand-in for cupy's Event and get_elapsed_time.
    Two events per op and per launch, recorded on the current stream; none waited
    on until the results are read."""
    import sys
    import time
    import types

    log = []

    class Event:
        def __init__(self, block=False, disable_timing=False, interprocess=False):
            self.t = None

        def record(self, stream=None):
            log.append("record")
            self.t = time.perf_counter()

        def synchronize(self):
            log.append("sync")

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        Event=Event, get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3)
    monkeypatch.setitem(sys.modules, "cupy", cupy)

    class StandIn(CPUBackend):
        name, _cp = "cuda", cupy

        def device_name(self):
            return "NVIDIA H100 80GB HBM3"

        def launch(self, kernel, grid, block, *args):
            kernel(*args)

        def relu(self, x):
            def relu_kernel(x, out):
                np.maximum(x, 0, out=out)
            out = np.empty_like(x)
            self.launch(relu_kernel, 1, 1, x, out)
            return out

    be = StandIn()
    with profile(be, all_backends=False) as prof:
        be.relu(np.ones(1000, np.float32))
        be.matmul(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))
    assert "sync" not in log and log.count("record") == 1 + 2 * 3  # reference + 3 records
    assert [(r.name, r.kind, r.parent, r.timer) for r in prof.records] == [
        ("relu", "op", None, "cuda-event"), ("relu_kernel", "kernel", "relu", "cuda-event"),
        ("matmul", "op", None, "cuda-event")]
    relu, kernel, _ = prof.records
    assert relu.launches == 1 and 0 < kernel.duration_s <= relu.duration_s
    assert 0 <= relu.start_s <= kernel.start_s
    assert kernel.bytes == 2 * 1000 * 4
    text = prof.format_table(ceilings=False)
    assert "H100 SXM" in text and "relu_kernel < relu" in text
    _pristine(be)
