"""gpudl.profile on the CUDA backend: ops and the kernel launches inside them.
Under the simulator there is no CuPy, so the timer is the monotonic clock; on a
GPU it is CUDA events (the timer field says which)."""
import json

import numpy as np

import gpudl
from gpudl.backend import simulator_enabled
from gpudl.layers import Dense, ReLU
from gpudl.profile import OPS, profile

TIMER = "monotonic" if simulator_enabled() else "cuda-event"


def test_ops_and_kernel_launches(be, tmp_path):
    rng = np.random.default_rng(0)
    a = be.asarray(rng.standard_normal((3, 4)).astype(np.float32))
    b = be.asarray(rng.standard_normal((5, 4)).astype(np.float32))
    x = be.asarray(rng.standard_normal(10).astype(np.float32))
    logits = be.asarray(rng.standard_normal((4, 3)).astype(np.float32))
    labels = np.array([0, 2, 1, 2])
    with profile(be, all_backends=False) as prof:
        be.matmul(a, b, trans_b=True)
        be.relu(x)
        be.softmax_cross_entropy(logits, labels)
    # the loss reads its mean back with to_numpy: part of the loss, not an op of its own
    assert [r.name for r in prof.ops] == ["matmul", "relu", "softmax_cross_entropy"]
    assert [r.launches for r in prof.ops] == [1, 1, 3]
    kernels = [(r.name, r.parent) for r in prof.kernels]
    assert kernels == [("matmul_blocked[nt]", "matmul"), ("relu", "relu"),
                       ("softmax_cross_entropy", "softmax_cross_entropy"),
                       ("sum_1d", "softmax_cross_entropy"), ("sum_1d", "softmax_cross_entropy")]
    assert all(r.device == "cuda" and r.timer == TIMER and r.duration_s > 0
               for r in prof.records)
    mm_op, mm_kernel = prof.ops[0], prof.kernels[0]
    assert mm_op.shapes == ((3, 4), (5, 4)) and mm_kernel.shapes == ((3, 4), (5, 4), (3, 5))
    assert mm_op.flops == mm_kernel.flops == 2 * 3 * 5 * 4
    assert mm_op.bytes == mm_kernel.bytes == (12 + 20 + 15) * 4
    assert prof.kernels[1].bytes == 2 * 10 * 4
    text = prof.format_table(ceilings=False)
    assert "matmul_blocked[nt] < matmul" in text and "kernels" in text
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(prof.records) == 8
    assert sum(e["cat"] == "kernel" and e["tid"] == 2 for e in events) == 5
    for name in OPS + ("launch",):
        assert name not in be.__dict__


def test_training_step_on_the_cuda_backend(monkeypatch):
    from gpudl import backend as backends
    monkeypatch.setattr(backends, "_current", backends._current)  # set_device undone after
    gpudl.set_device("cuda")
    gpudl.manual_seed(0)
    model = gpudl.Sequential([Dense(4, 3), ReLU(), Dense(3, 2)])
    trainer = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    y = np.array([0, 1, 1, 0])
    with profile(trainer) as prof:
        trainer.fit(x, y, epochs=1, batch_size=None, shuffle=False, verbose=False)
    be = model.backend
    n = {}
    for r in prof.ops:
        n[r.name] = n.get(r.name, 0) + 1
    assert n["matmul"] == 2 + 3 and n["sgd_update"] == 4 and n["softmax_cross_entropy"] == 1
    # every op launched what it says, and the launches are the kernel records
    assert sum(r.launches for r in prof.ops) == len([k for k in prof.kernels if k.parent])
    assert any(k.name.startswith("matmul_blocked") for k in prof.kernels)
    assert all(k.name == "sgd" for k in prof.kernels if k.parent == "sgd_update")
    for name in OPS + ("launch",):
        assert name not in be.__dict__


def test_reduced_precision_ops_get_their_own_rows_and_tensor_core_marks(be, monkeypatch):
    """matmul@bf16 is its own row; '/tc' only where tensor-core kernels really ran."""
    rng = np.random.default_rng(1)
    a = be.asarray(rng.standard_normal((5, 7)).astype(np.float32))
    b = be.asarray(rng.standard_normal((7, 3)).astype(np.float32))
    with profile(be, all_backends=False) as prof:
        be.matmul(a, b)
        be.matmul(a, b, precision="bf16")
    names = [r["name"] for r in prof.summary()]
    assert sorted(names) == ["matmul", "matmul"]
    assert {r["precision"] for r in prof.summary()} == {None, "bf16"}
    assert not any(r["tensor_cores"] for r in prof.summary())
    assert "matmul@bf16 " in prof.format_table(ceilings=False)
    monkeypatch.setenv("GPUDL_TENSOR_CORES", "1")
    with profile(be, all_backends=False) as prof:
        be.matmul(a, b, precision="bf16")
    (row,) = prof.summary()
    assert row["tensor_cores"] and "matmul@bf16/tc" in prof.format_table(ceilings=False)
