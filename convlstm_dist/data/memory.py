"""A split's frames held in memory, cut into batches in the trainer's process (no Ray Data).

The single-process backend of the training loop (``train --local``) reads each split's frames
once (:func:`convlstm_dist.data.samples.load_block`) and cuts batches from them
(:func:`convlstm_dist.data.samples.cut_windows`), in compact rows like the Ray Data path. Build
them through :meth:`convlstm_dist.data.plan.DataPlan.memory_splits`.
"""

from __future__ import annotations

import numpy as np

from convlstm_dist.data.samples import cut_windows, load_block


class MemorySplit:
    """One split's frames of one archive in memory (model units) and its window starts; cuts batches."""

    def __init__(self, archive, starts: np.ndarray, in_len: int, out_len: int, crop):
        self.starts = np.sort(np.asarray(starts, dtype=np.int64))
        self.in_len, self.out_len, self.crop = in_len, out_len, crop
        self.lo = int(self.starts.min())
        self.vals, self.valid = load_block(archive, self.lo, int(self.starts.max()) + in_len + out_len)
        self.cache: dict = {}  # per window: validity map + summed-area table (crop choice)

    @property
    def n_windows(self) -> int:
        return len(self.starts)

    @staticmethod
    def nbytes(archive, starts, length: int) -> int:
        _, H, W = archive.shape
        return (int(np.max(starts)) + length - int(np.min(starts))) * H * W * 5  # float32 + bool

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle: bool, cpw: int = 1,
                augment: bool = False, drop_last: bool = False):
        """Numpy batches (dicts as ``cut_windows``, compact); training order and crops drawn from (seed, epoch)."""
        order = np.repeat(self.starts, cpw)
        draws = np.tile(np.arange(cpw), len(self.starts))
        if shuffle:
            perm = np.random.default_rng([seed, epoch, 7919]).permutation(len(order))
            order, draws = order[perm], draws[perm]
        n = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, n, batch_size):
            yield cut_windows(self.vals, self.valid, self.lo, order[i:i + batch_size], self.in_len, self.out_len,
                              self.crop, seed, epoch, augment=augment, draws=draws[i:i + batch_size],
                              cache=self.cache, compact=True)
