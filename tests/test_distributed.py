"""gpudl.distributed: data-parallel training.

Without MPI or a GPU: the sampler, the buckets, launch-variable parsing,
gradient averaging and SyncBatchNorm over a fake world of threads
(ThreadGroup), the NCCL communicator's code over a fake NCCL working on
host memory, the TCP store and the collective timeout.

With mpi4py and mpich (the ``dist`` extra, installed by ``make test``):
real 2-process runs under ``mpiexec -n 2`` (tests/dist_scripts/worker.py):
the same weights as one process with twice the batch, identical weights
on every rank after every step, shards covering the data once, only rank 0
writing files, resume, a failing rank ending the job, ``gpudl train
--distributed``. The NCCL transport itself needs GPUs and is not run here.
"""
import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpudl
from gpudl import distributed as dist
from gpudl.distributed import comm as comm_mod
from gpudl.layers import BatchNorm

HERE = Path(__file__).parent
WORKER = HERE / "dist_scripts" / "worker.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.fixture(autouse=True)
def _cpu():
    gpudl.set_device("cpu")
    yield
    dist.shutdown()


def mlp_data(n=36):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n)


def mlp():
    gpudl.manual_seed(1)
    return gpudl.zoo.mlp((6,), 3, hidden=(8,))


def single_run(model, x, y, batch_size, epochs=2, seed=5):
    t = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1, momentum=0.9))
    return t.fit(x, y, epochs=epochs, batch_size=batch_size, seed=seed, verbose=False)


def max_diff(a, b):
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


# ---------------------------------------------------------------- sampler
@pytest.mark.parametrize("n,world", [(36, 2), (37, 2), (10, 3), (5, 4), (1, 2)])
def test_shards_cover_the_epoch_and_are_equally_long(n, world):
    order = np.random.default_rng(n).permutation(n)
    shards = [dist.DistributedSampler(world, r).shard(order) for r in range(world)]
    assert len({len(s) for s in shards}) == 1           # same number of steps everywhere
    assert len(shards[0]) == dist.DistributedSampler(world, 0).num_samples(n) == -(-n // world)
    taken = np.concatenate(shards)
    assert set(taken.tolist()) == set(range(n))          # every sample at least once
    assert len(taken) - n == (-n) % world                # padding: fewer than world repeats
    if n % world == 0:
        assert sorted(taken.tolist()) == list(range(n))  # exactly once


def test_drop_last_takes_each_sample_at_most_once():
    order = np.arange(37)
    shards = [dist.DistributedSampler(2, r, drop_last=True).shard(order) for r in range(2)]
    assert [len(s) for s in shards] == [18, 18]
    assert len(set(np.concatenate(shards).tolist())) == 36
    with pytest.raises(ValueError):
        dist.DistributedSampler(4, 0, drop_last=True).shard(np.arange(3))


def test_the_ranks_kth_batches_make_the_single_runs_kth_batch():
    order, world, b = np.random.default_rng(0).permutation(36), 3, 4
    shards = [dist.DistributedSampler(world, r).shard(order) for r in range(world)]
    for k in range(3):
        union = sorted(np.concatenate([s[k * b:(k + 1) * b] for s in shards]).tolist())
        assert union == sorted(order[k * world * b:(k + 1) * world * b].tolist())


def test_bad_rank_is_refused():
    with pytest.raises(ValueError):
        dist.DistributedSampler(2, 2)


# ---------------------------------------------------------------- buckets, launch variables
def test_buckets_group_consecutive_arrays_of_one_dtype():
    f, d = np.zeros(100, np.float32), np.zeros(100, np.float64)   # 400 and 800 bytes
    assert dist.make_buckets([f, f, f, d, d, f], 800) == [[0, 1], [2], [3], [4], [5]]
    assert dist.make_buckets([f] * 5, 10**6) == [[0, 1, 2, 3, 4]]
    assert dist.make_buckets([], 10) == []


def test_bucket_order_runs_from_the_last_layer():
    model = mlp()
    x, y = mlp_data()
    t = gpudl.Trainer(model, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1))
    t.fit(x, y, epochs=1, batch_size=36, verbose=False)
    ctx = dist.DataParallel(dist.SingleComm(), bucket_mb=100 / 2**20)  # 100-byte buckets
    order = ctx.bucket_order(model)
    assert order[0][0][0] == model.layers[-1].name
    assert order[-1][-1][0] == model.layers[0].name
    assert len(order) > 1


@pytest.mark.parametrize("env,expect", [
    ({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}, ("mpi", 1, 4, 1)),
    ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, ("mpi", 5, 8, 1)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node0",
      "MASTER_PORT": "29500"}, ("env", 3, 4, 1)),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"}, ("slurm", 2, 4, 0)),
    ({}, ("none", 0, 1, 0)),
])
def test_launch_variables(env, expect):
    info = dist.launch_info(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank) == expect
    if "MASTER_PORT" in env:
        assert (info.master_addr, info.master_port) == ("node0", 29500)


def test_init_without_a_launcher_is_a_world_of_one(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("PMI_", "OMPI_", "PMIX_", "SLURM_")) or k in ("RANK", "WORLD_SIZE"):
            monkeypatch.delenv(k)
    ctx = dist.init(device="cpu", abort_on_error=False)
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    assert dist.current() is ctx
    x, y = mlp_data()
    a, b = mlp(), mlp()
    gpudl.Trainer(a, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1, momentum=0.9),
                  distributed=ctx).fit(x, y, epochs=2, batch_size=8, seed=5, verbose=False)
    single_run(b, x, y, 8)
    assert max_diff(a.state_arrays(), b.state_arrays()) == 0.0


# ---------------------------------------------------------------- a fake world of threads
def thread_fit(comms, models, x, y, batch_size, **kw):
    """One Trainer per thread-rank; returns each rank's history."""
    group_comms = comms

    def run(comm):
        ctx = dist.DataParallel(comm, **kw)
        t = gpudl.Trainer(models[comm.rank], gpudl.losses.CrossEntropy(),
                          gpudl.optim.SGD(0.1, momentum=0.9), distributed=ctx)
        return t.fit(x, y, epochs=2, batch_size=batch_size, seed=5, verbose=False)
    return group_comms(run)


def test_two_thread_ranks_train_as_one_process_with_twice_the_batch():
    x, y = mlp_data()
    models = [mlp(), mlp()]
    gpudl.manual_seed(99)
    models[1] = gpudl.zoo.mlp((6,), 3, hidden=(8,))   # other initial weights: rank 0's win
    group = dist.ThreadGroup(2)
    histories = thread_fit(group.run, models, x, y, 4, bucket_mb=64 / 2**20)  # several buckets
    ref = mlp()
    hist = single_run(ref, x, y, 8)
    assert max_diff(models[0].state_arrays(), models[1].state_arrays()) == 0.0
    assert max_diff(models[0].state_arrays(), ref.state_arrays()) < 1e-5
    assert histories[0]["loss"] == pytest.approx(hist["loss"], rel=1e-5)
    assert histories[0]["accuracy"] == histories[1]["accuracy"] == hist["accuracy"]
    calls = [c for c in group.comms[0].calls if c[0] == "allreduce" and c[1] == "float32"]
    assert len(calls) > 10 * 2  # more than one bucket per step (10 steps)


def test_three_ranks_with_an_uneven_epoch():
    x, y = mlp_data(37)          # 37 = 3 * 13 - 2: two samples repeated per epoch
    models = [mlp() for _ in range(3)]
    thread_fit(dist.ThreadGroup(3).run, models, x, y, 5)
    assert max_diff(models[0].state_arrays(), models[2].state_arrays()) == 0.0


def sync_bn_check(world, shape):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 3 + 5).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    c = shape[1]
    ref = BatchNorm(c)
    ref.params["gamma"] = np.linspace(0.5, 1.5, c).astype(np.float32)
    y_ref = ref.forward(x, training=True)
    dx_ref = ref.backward(dy)
    parts = np.array_split(np.arange(shape[0]), world)

    def run(comm):
        layer = dist.SyncBatchNorm(c, comm=comm)
        layer.params["gamma"] = ref.params["gamma"].copy()
        idx = parts[comm.rank]
        y = layer.forward(x[idx], training=True)
        # each rank's upstream gradient is that of its own mean loss: world times
        # the global one (equal shards; see gpudl.distributed.syncbn), and the
        # weight gradients are then averaged over the ranks
        dx = layer.backward(dy[idx] * world)
        return y, dx / world, layer.grads["gamma"], layer.buffers
    out = dist.ThreadGroup(world).run(run)
    np.testing.assert_allclose(np.concatenate([o[0] for o in out]), y_ref, atol=2e-5)
    np.testing.assert_allclose(np.concatenate([o[1] for o in out]), dx_ref, atol=2e-5)
    np.testing.assert_allclose(sum(o[2] for o in out) / world, ref.grads["gamma"], rtol=1e-4,
                               atol=1e-4)
    for o in out:
        for k in ("running_mean", "running_var"):
            np.testing.assert_allclose(o[3][k], ref.buffers[k], rtol=1e-5)


def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch():
    sync_bn_check(2, (8, 3, 4, 4))
    sync_bn_check(3, (7, 5))            # unequal shards, dense (N, C) input


def test_sync_batchnorm_alone_is_batchnorm_and_converts_back():
    model = gpudl.zoo.resnet((1, 8, 8), 3, widths=(4, 8))
    n_bn = sum(type(l) is BatchNorm for l in model.walk())
    dist.convert_sync_batchnorm(model)
    assert sum(type(l) is dist.SyncBatchNorm for l in model.walk()) == n_bn > 2
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    model.forward(x, training=True)   # no context: per-process statistics
    model.backward(np.ones((4, 3), np.float32))
    dist.revert_sync_batchnorm(model)
    assert sum(type(l) is BatchNorm for l in model.walk()) == n_bn


def test_per_rank_batchnorm_statistics_are_averaged_each_epoch():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 16)

    def build():
        gpudl.manual_seed(2)
        return gpudl.zoo.resnet((1, 8, 8), 3, widths=(4, 8))
    models = [build(), build()]
    thread_fit(dist.ThreadGroup(2).run, models, x, y, 4)
    assert max_diff(models[0].state_arrays(), models[1].state_arrays()) == 0.0


# ---------------------------------------------------------------- NCCL code over a fake NCCL
class FakeNCCL:
    """cupy.cuda.nccl's names, working on host memory at the addresses given:
    checks that NCCLComm passes the right pointers, counts, types and roots."""
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT32, NCCL_INT64 = 6, 7, 8, 2, 4
    NCCL_UINT8, NCCL_INT8, NCCL_SUM = 1, 0, 0
    CTYPES = {7: ctypes.c_float, 8: ctypes.c_double, 4: ctypes.c_int64}

    def __init__(self, size):
        self.group = dist.ThreadGroup(size)

    def get_unique_id(self):
        return tuple(int(v) for v in np.random.default_rng(0).integers(-128, 128, 128))

    def NcclCommunicator(self, size, uid, rank):
        assert len(uid) == 128
        fake = self

        class Comm:
            def view(self, ptr, count, dtype):
                return np.ctypeslib.as_array((fake.CTYPES[dtype] * count).from_address(ptr))

            def allReduce(self, send, recv, count, dtype, op, stream):
                assert op == fake.NCCL_SUM
                self.view(recv, count, dtype)[:] = fake.group.comms[rank].allreduce(
                    self.view(send, count, dtype).copy())

            def bcast(self, ptr, count, dtype, root, stream):
                fake.group.comms[rank].broadcast(self.view(ptr, count, dtype), root)

            def allGather(self, send, recv, count, dtype, stream):
                got = fake.group.comms[rank].allgather(self.view(send, count, dtype).copy())
                self.view(recv, count * size, dtype)[:] = got.reshape(-1)

            def abort(self):
                fake.aborted = True
        return Comm()


class FakeEvent:
    done = True

    def __init__(self, **kw):
        pass

    def record(self):
        pass


FAKE_CUPY = SimpleNamespace(
    ascontiguousarray=np.ascontiguousarray, empty=np.empty, asarray=np.asarray,
    cuda=SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=0), Event=FakeEvent))


def test_nccl_communicator_code_over_a_fake_nccl():
    fake = FakeNCCL(2)
    boot = dist.ThreadGroup(2)
    x, y = mlp_data()
    models = [mlp(), mlp()]

    def run(comm):
        c = dist.NCCLComm(comm.rank, 2, boot.comms[comm.rank], timeout=10, nccl=fake,
                          cupy=FAKE_CUPY)
        assert c.allreduce_host([1.0, comm.rank])[1] == 1.0
        assert c.allgather(np.array([comm.rank], np.int64)).tolist() == [[0], [1]]
        ctx = dist.DataParallel(c)
        t = gpudl.Trainer(models[comm.rank], gpudl.losses.CrossEntropy(),
                          gpudl.optim.SGD(0.1, momentum=0.9), distributed=ctx)
        return t.fit(x, y, epochs=2, batch_size=4, seed=5, verbose=False)
    boot.run(run)
    ref = mlp()
    single_run(ref, x, y, 8)
    assert max_diff(models[0].state_arrays(), ref.state_arrays()) < 1e-5
    assert max_diff(models[0].state_arrays(), models[1].state_arrays()) == 0.0


def test_a_stuck_nccl_collective_aborts(monkeypatch):
    class Stuck(FakeEvent):
        done = False
    fake = FakeNCCL(1)
    fake.aborted = False
    cupy = SimpleNamespace(**{**vars(FAKE_CUPY), "cuda": SimpleNamespace(
        get_current_stream=FAKE_CUPY.cuda.get_current_stream, Event=Stuck)})
    c = dist.NCCLComm(0, 1, dist.SingleComm(), timeout=0.2, nccl=fake, cupy=cupy)

    def abort(code=1, message=None):
        raise dist.DistributedError(message)
    monkeypatch.setattr(c, "abort", abort)
    t0 = time.monotonic()
    with pytest.raises(dist.DistributedError, match="did not finish within 0.2 s"):
        c.synchronize("gradient all-reduce")
    assert time.monotonic() - t0 < 5 and fake.aborted


def test_tcp_store_hands_rank_0s_object_to_the_others():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = [None] * 3

    def run(rank):
        store = dist.TCPStore("127.0.0.1", port, rank, 3, timeout=20)
        got[rank] = store.bcast_object({"id": [1, -2, 3]} if rank == 0 else None)
        store.barrier()
        store.close()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert got == [{"id": [1, -2, 3]}] * 3


# ---------------------------------------------------------------- real processes under MPI
def _mpi_or_skip():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'gpudl[dist]')")
    if not MPIEXEC.exists():
        found = shutil.which("mpiexec")
        if not found:
            pytest.skip(f"no mpiexec next to {sys.executable} or on PATH "
                        f"(pip install mpich)")
        return found
    return str(MPIEXEC)


def mpirun(args, limit=60, **kw):
    env = dict(os.environ, GPUDL_DEVICE="cpu", PYTHONPATH=str(HERE.parent),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [_mpi_or_skip(), "-n", "2"] + [str(a) for a in args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=env,
                          cwd=kw.get("cwd", HERE.parent))
    proc.seconds = time.monotonic() - t0
    return proc


def worker(scenario, out, **kw):
    proc = mpirun([sys.executable, WORKER, scenario, out], **kw)
    return proc


def test_mpi_two_ranks_equal_one_process_with_twice_the_batch(tmp_path):
    proc = worker("equiv", tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "equiv.npz")
    info = json.loads((tmp_path / "equiv.json").read_text())
    ref = mlp()
    x, y = mlp_data()
    hist = single_run(ref, x, y, 8)
    assert max_diff(dict(got), ref.state_arrays()) < 1e-5
    assert info["steps_checked"] == 10          # 2 epochs x ceil(18 / 4): same weights each step
    assert info["history"]["loss"] == pytest.approx(hist["loss"], rel=1e-5)
    for epoch in info["shards"]:                # each epoch: two disjoint halves of the data
        assert sorted(epoch[0] + epoch[1]) == list(range(36))


def test_mpi_sync_batchnorm_resnet_equals_one_process(tmp_path):
    proc = worker("syncbn", tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "syncbn.npz")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 32)
    gpudl.manual_seed(2)
    ref = gpudl.zoo.resnet((1, 8, 8), 3, widths=(4, 8))
    t = gpudl.Trainer(ref, gpudl.losses.CrossEntropy(), gpudl.optim.SGD(0.1, momentum=0.9))
    t.fit(x, y, epochs=2, batch_size=8, seed=7, verbose=False)
    state = ref.state_arrays()
    assert any("running_var" in k for k in state)
    assert max_diff(dict(got), state) < 1e-4


def test_mpi_only_rank_0_writes_and_resume_works(tmp_path):
    proc = worker("files", tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-rank0.npz", "hist-rank0.csv"], names
    assert proc.stdout.count("epoch 1/2:") == 1    # one progress line per epoch, from rank 0
    assert "resume ok" in proc.stdout
    assert len((tmp_path / "hist-rank0.csv").read_text().splitlines()) == 1 + 3


def test_mpi_a_failing_rank_ends_the_job(tmp_path):
    proc = worker("fail", tmp_path, limit=90)
    assert proc.returncode != 0
    assert proc.seconds < 60
    assert "rank 1 fails on purpose" in proc.stderr
    assert "aborting the job" in proc.stderr


def test_mpi_gpudl_train_distributed(tmp_path):
    metrics = tmp_path / "m.json"
    proc = mpirun([sys.executable, "-m", "gpudl.cli", "train", "--distributed", "--device",
                   "cpu", "--model", "resnet", "--sync-bn", "--epochs", "1", "--limit", "256",
                   "--quiet", "--save", tmp_path / "model.npz", "--metrics-out", metrics,
                   "--checkpoint", tmp_path / "ck.npz"], limit=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1 and "2 ranks (mpi)" in proc.stdout
    assert json.loads(metrics.read_text())["epochs"] == 1
    model = gpudl.load(tmp_path / "model.npz")     # a plain model file: BatchNorm again
    assert any(type(l) is BatchNorm for l in model.walk())
