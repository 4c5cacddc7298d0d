"""Data parallelism: what the Trainer asks of a distributed run.

``DataParallel(comm)`` is the object ``Trainer(..., distributed=ctx)`` takes:

    prepare(model, seed) -> seed  broadcast rank 0's parameters and buffers;
                                  agree on the shuffling seed (rank 0's)
    shard(order)                  this rank's part of the epoch (DistributedSampler)
    average_gradients(model)      between backward and the optimizer step
    reduce_metrics(values)        sum the epoch's loss / accuracy counters
    end_epoch(model)              average the floating buffers (batch norm's
                                  running statistics) so every rank holds the same model
    is_main                       rank 0: the only one writing files and bars

Gradients are averaged in buckets: the gradients, taken from the last layer
to the first (the order backward produces them), are flattened into one
buffer per ``bucket_mb`` megabytes (25 by default, as PyTorch DDP), each
buffer is all-reduced (summed) once and scaled by 1 / world, and the
gradients become views of it. One collective per bucket instead of one per
tensor: the per-call latency of MPI or NCCL is paid a few times a step, not
once per weight matrix and bias.

Overlap: gpudl's backward runs layer by layer from the last, so the
gradients of the top layers are final while the lower ones are still being
computed and a bucket could start its all-reduce as soon as its layers are
done (PyTorch DDP's design). This implementation reduces after the whole
backward (post-backward bucketing): simple, the same result, and on the
CPU nothing would run in parallel anyway (the all-reduce and the backward
share the cores). ``bucket_order`` gives the order a per-layer hook would fill buckets in.
"""
from __future__ import annotations

import time

import numpy as np

from .comm import array_module
from .sampler import DistributedSampler


def _trainable_entries(model):
    """(layer, name, grad) of every gradient the optimizer will read, last layer first."""
    out = []
    for layer in reversed(model.layers):
        if not layer.trainable:
            continue
        for name in layer.params:
            grad = layer.grads.get(name)
            if grad is not None:
                out.append((layer, name, grad))
    return out


def make_buckets(arrays, bucket_bytes):
    """Indices of ``arrays`` grouped into consecutive buckets of one dtype and
    at least ``bucket_bytes`` each (the last may be smaller; one array larger
    than a bucket gets a bucket of its own)."""
    buckets, current, size, dtype = [], [], 0, None
    for i, a in enumerate(arrays):
        if current and (a.dtype != dtype or size >= bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        dtype = a.dtype
        size += a.size * a.dtype.itemsize
    if current:
        buckets.append(current)
    return buckets


class DataParallel:
    def __init__(self, comm, bucket_mb=25.0, drop_last=False):
        if not bucket_mb > 0:
            raise ValueError(f"DataParallel: bucket_mb must be positive, got {bucket_mb!r}")
        self.comm = comm
        self.rank, self.world_size = comm.rank, comm.size
        self.sampler = DistributedSampler(comm.size, comm.rank, drop_last=drop_last)
        self.bucket_bytes = int(bucket_mb * 2**20)
        #: seconds spent in gradient all-reduces (waiting for slower ranks included)
        self.comm_seconds = 0.0
        #: all-reduce calls made for gradients, and their total bytes
        self.allreduce_calls = 0
        self.allreduce_bytes = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        return (f"DataParallel(rank={self.rank}, world_size={self.world_size}, "
                f"comm={self.comm.name}, bucket_mb={self.bucket_bytes / 2**20:g})")

    # ---- start of a run
    def broadcast_model(self, model):
        """Every rank takes rank 0's parameters and buffers (bucketed broadcasts)."""
        if self.world_size == 1:
            return
        for layer in model.layers:
            for store in (layer.params, layer.buffers):
                keys = list(store)
                arrays = [store[k] for k in keys]
                for bucket in make_buckets(arrays, self.bucket_bytes):
                    flat = self._flatten([arrays[i] for i in bucket])
                    self.comm.broadcast(flat, 0)
                    for i, part in zip(bucket, self._split(flat, [arrays[i] for i in bucket])):
                        store[keys[i]] = part.copy()
        self.comm.synchronize("broadcast of the initial weights")

    def prepare(self, model, seed=None):
        """Called by Trainer.fit before training: rank 0's weights everywhere and
        one shuffling seed for all (rank 0's; drawn there when ``seed`` is None)."""
        self.broadcast_model(model)
        if seed is None and self.is_main:
            seed = int(np.random.SeedSequence().entropy % 2**63)
        if self.world_size > 1:
            seed = self.comm.bcast_object(None if seed is None else int(seed))
        return seed

    # ---- every epoch
    def shard(self, order):
        return self.sampler.shard(order)

    @staticmethod
    def _flatten(arrays):
        xp = array_module(arrays[0])
        return xp.concatenate([a.reshape(-1) for a in arrays])

    @staticmethod
    def _split(flat, like):
        out, offset = [], 0
        for a in like:
            out.append(flat[offset:offset + a.size].reshape(a.shape))
            offset += a.size
        return out

    def bucket_order(self, model):
        """[(layer name, param name), ...] per bucket, in reduction order."""
        entries = _trainable_entries(model)
        return [[(entries[i][0].name, entries[i][1]) for i in b]
                for b in make_buckets([e[2] for e in entries], self.bucket_bytes)]

    def average_gradients(self, model):
        """Called by the Trainer between model.backward and optimizer.step:
        every gradient becomes the mean over the ranks."""
        if self.world_size == 1:
            return
        t0 = time.perf_counter()
        entries = _trainable_entries(model)
        grads = [e[2] for e in entries]
        scale = 1.0 / self.world_size
        for bucket in make_buckets(grads, self.bucket_bytes):
            flat = self._flatten([grads[i] for i in bucket])
            self.comm.allreduce(flat)
            flat *= flat.dtype.type(scale)
            self.allreduce_calls += 1
            self.allreduce_bytes += flat.nbytes
            for i, part in zip(bucket, self._split(flat, [grads[i] for i in bucket])):
                layer, name, _ = entries[i]
                layer.grads[name] = part
        self.comm.synchronize("gradient all-reduce")
        self.comm_seconds += time.perf_counter() - t0

    def reduce_metrics(self, values):
        """Sums over the ranks of a few numbers (loss * samples, correct, samples)."""
        if self.world_size == 1:
            return list(values)
        return [float(v) for v in self.comm.allreduce_host(values)]

    def end_epoch(self, model):
        """Average the floating-point buffers (running mean and variance of a
        per-rank BatchNorm) so every rank evaluates and saves the same model."""
        if self.world_size == 1:
            return
        for layer in model.layers:
            keys = [k for k in layer.buffers if np.dtype(layer.buffers[k].dtype).kind == "f"]
            if not keys:
                continue
            arrays = [layer.buffers[k] for k in keys]
            flat = self._flatten(arrays)
            self.comm.allreduce(flat)
            flat *= flat.dtype.type(1.0 / self.world_size)
            for k, part in zip(keys, self._split(flat, arrays)):
                layer.buffers[k] = part.copy()
        self.comm.synchronize("buffer average")
