"""Synchronised batch normalization: batch statistics over every rank's batch.

Plain BatchNorm in a data-parallel run normalises each rank's batch with its
own statistics (the default, as in PyTorch DDP): with a per-rank batch of B
it behaves like batch norm with batch B, and the running averages of the
ranks drift apart (gpudl.distributed averages them at the end of each epoch).

SyncBatchNorm computes the statistics of the global batch:

- forward: every rank computes its per-channel (count, mean, biased
  variance) with the backend's stable two-pass kernel; one all-gather brings
  every rank's triple and each rank merges them with Chan et al.'s parallel
  formula, M2 = sum_r (M2_r + n_r (mean_r - mean)^2), so no E[x^2] - E[x]^2
  cancellation. The running averages take the global mean and the unbiased
  global variance (times M / (M - 1), M the global count).
- backward: dx = gamma invstd (dy - sum(dy) / M - xhat sum(dy xhat) / M)
  needs the two per-channel sums over the global batch: one all-reduce of
  the 2C local sums. gamma's and beta's gradients stay local sums (the
  gradient averaging that follows averages them like every other gradient).

With a per-rank upstream gradient dL_r/dy (each rank's loss is a mean over
its own batch) the result, after gradient averaging, is the gradient of the
mean loss over the global batch: W ranks with batch B and SyncBatchNorm
train exactly as one process with batch W B and BatchNorm.

A model file records it as "SyncBatchNorm"; ``revert_sync_batchnorm``
turns the layers back into BatchNorm before saving a model for plain use.
"""
from __future__ import annotations

import numpy as np

from ..layers import LAYER_TYPES, BatchNorm
from .comm import array_module


class SyncBatchNorm(BatchNorm):
    """BatchNorm whose training statistics span every rank. ``comm`` is a
    gpudl.distributed communicator; None uses the one gpudl.distributed.init
    set up (and plain BatchNorm behaviour in a world of one)."""

    def __init__(self, *args, comm=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.comm = comm
        self._sync_saved = None

    def _group(self):
        if self.comm is not None:
            return self.comm
        from .env import current
        ctx = current()
        return None if ctx is None else ctx.comm

    def forward(self, x, training=False):
        comm = self._group()
        self._sync_saved = None
        if not training or not self.trainable or comm is None or comm.size == 1:
            return super().forward(x, training=training)
        be, x4 = self.backend, self._as4d(x)
        xp = array_module(x4)
        c = self.num_features
        m = x4.shape[0] * x4.shape[2] * x4.shape[3]
        mean, var = be.batchnorm_stats(x4)
        local = xp.concatenate([xp.full((1,), m, dtype=np.float64),
                                mean.astype(np.float64), var.astype(np.float64)])
        every = comm.allgather(local)                      # (W, 1 + 2C)
        counts, means, variances = every[:, :1], every[:, 1:1 + c], every[:, 1 + c:]
        total = float(counts.sum())
        if total < 2:
            raise ValueError(f"layer '{self.name}' (SyncBatchNorm): training needs more than "
                             f"one value per channel over all ranks, got {total:g}")
        gmean = (counts * means).sum(axis=0) / total
        m2 = (counts * variances).sum(axis=0) + (counts * (means - gmean) ** 2).sum(axis=0)
        gmean, gvar = gmean.astype(self.dtype), (m2 / total).astype(self.dtype)
        y, invstd = be.batchnorm_forward(x4, gmean, gvar, self.params["gamma"],
                                         self.params["beta"], self.eps)
        mom = self.momentum
        self.buffers["running_mean"] = be.axpby(1 - mom, self.buffers["running_mean"], mom, gmean)
        self.buffers["running_var"] = be.axpby(1 - mom, self.buffers["running_var"],
                                               mom * total / (total - 1), gvar)
        self._saved = None
        self._sync_saved = (comm, x4, gmean, invstd, total)
        self._out_shape = tuple(x.shape)
        return y.reshape(x.shape)

    def backward(self, grad, need_input_grad=True):
        if self._sync_saved is None:
            return super().backward(grad, need_input_grad=need_input_grad)
        self._check_grad(grad)
        comm, x4, mean, invstd, total = self._sync_saved
        dy = grad.reshape(x4.shape)
        c = self.num_features
        bshape = (1, c, 1, 1)
        xhat = (x4 - mean.reshape(bshape)) * invstd.reshape(bshape)
        dbeta = dy.sum(axis=(0, 2, 3))
        dgamma = (dy * xhat).sum(axis=(0, 2, 3))
        if self.trainable:
            self.grads["gamma"] = dgamma.astype(self.dtype)
            self.grads["beta"] = dbeta.astype(self.dtype)
        if not need_input_grad:  # the same on every rank, so all skip the reduction
            return None
        xp = array_module(dy)
        sums = comm.allreduce(xp.concatenate([dbeta, dgamma]).astype(np.float64))
        gdbeta = sums[:c].astype(self.dtype).reshape(bshape)
        gdgamma = sums[c:].astype(self.dtype).reshape(bshape)
        scale = (self.params["gamma"] * invstd).reshape(bshape)
        dx = scale * (dy - gdbeta / total - xhat * (gdgamma / total))
        return dx.astype(self.dtype, copy=False).reshape(grad.shape)


LAYER_TYPES.setdefault("SyncBatchNorm", SyncBatchNorm)  # model files and checkpoints name it


def convert_sync_batchnorm(model, comm=None):
    """Turn every BatchNorm of ``model`` (nested ones included) into a
    SyncBatchNorm in place, keeping its parameters and running statistics.
    Returns the model."""
    for layer in model.walk():
        if type(layer) is BatchNorm:
            layer.__class__ = SyncBatchNorm
            layer.comm = comm
            layer._sync_saved = None
    return model


def revert_sync_batchnorm(model):
    """The inverse of convert_sync_batchnorm (before saving a model for plain use)."""
    for layer in model.walk():
        if type(layer) is SyncBatchNorm:
            layer.__class__ = BatchNorm
            del layer.comm, layer._sync_saved
    return model
