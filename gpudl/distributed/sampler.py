"""Which samples each rank trains on in an epoch.

Every rank draws the same permutation (the Trainer's generator, seeded
alike on every rank: gpudl.distributed agrees on the seed), pads it to a
multiple of the world size and takes positions ``rank::world``. So

- the shards of an epoch are disjoint and cover the data exactly once when
  the world size divides the number of samples;
- otherwise the permutation is padded by repeating its first samples
  (``world - n % world`` of them, at most world - 1), so every rank takes
  the same number of samples and therefore the same number of steps (a rank
  with one step more would wait for ever in its all-reduce); those few
  samples count twice in that epoch. ``drop_last=True`` drops the tail
  instead (at most world - 1 samples skipped per epoch, a different tail
  each epoch when shuffling);
- step k of rank r takes shard positions k B .. k B + B - 1, i.e. permutation
  positions W (k B + j) + r: the union over the ranks of their k-th batches
  is permutation[k W B : (k + 1) W B], exactly the k-th batch of one process
  training with batch W B and the same seed. Data-parallel training with
  per-rank batch B is thus mini-batch SGD with batch W B on the same
  sequence of batches.
"""
from __future__ import annotations

import numpy as np


class DistributedSampler:
    def __init__(self, num_replicas: int, rank: int, drop_last: bool = False):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank {rank} is not in a world of "
                             f"{num_replicas}")
        self.num_replicas, self.rank, self.drop_last = int(num_replicas), int(rank), bool(drop_last)

    def num_samples(self, n: int) -> int:
        """Samples (positions) each rank takes from an epoch of n."""
        w = self.num_replicas
        return n // w if self.drop_last else -(-n // w)

    def shard(self, order) -> np.ndarray:
        """This rank's part of the epoch's order (a permutation of 0..n-1)."""
        order = np.asarray(order)
        n, w = len(order), self.num_replicas
        if self.drop_last:
            if n < w:
                raise ValueError(f"DistributedSampler: {n} samples cannot give each of {w} "
                                 f"ranks one with drop_last=True")
            order = order[:n - n % w]
        elif n % w:
            order = np.concatenate([order, np.resize(order, w - n % w)])
        return order[self.rank::w]
