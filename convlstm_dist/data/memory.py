"""A split's frames held in memory, cut into batches in the trainer's process (no Ray Data).

The single-process backend of the training loop (``train --local``) reads each split's frames
once (:func:`convlstm_dist.data.samples.load_block`) and cuts batches from them
(:func:`convlstm_dist.data.samples.cut_windows`), in compact rows like the Ray Data path. Build
them through :meth:`convlstm_dist.data.plan.DataPlan.memory_splits`.
"""

from __future__ import annotations

import numpy as np

from convlstm_dist.data.mix import epoch_units, shuffled, units_per_epoch
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

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle: bool, crops_per_window: int = 1,
                augment: bool = False, drop_last: bool = False):
        """Numpy batches (dicts as ``cut_windows``, compact); training order and crops drawn from (seed, epoch)."""
        order = np.repeat(self.starts, crops_per_window)
        draws = np.tile(np.arange(crops_per_window), len(self.starts))
        if shuffle:
            perm = np.random.default_rng([seed, epoch, 7919]).permutation(len(order))
            order, draws = order[perm], draws[perm]
        n = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, n, batch_size):
            yield cut_windows(self.vals, self.valid, self.lo, order[i:i + batch_size], self.in_len, self.out_len,
                              self.crop, seed, epoch, augment=augment, draws=draws[i:i + batch_size],
                              cache=self.cache, compact=True)


class MultiMemorySplit:
    """One split over several archives: one :class:`MemorySplit` per archive (``parts[i]`` is archive
    ``i`` of the plan, ``None`` where that archive has no window in the split), training weights
    applied per epoch (:mod:`convlstm_dist.data.mix`). Batches may mix archives; each sample is one
    window of one archive, and the ``src`` column (int16) says which. With one archive of weight 1
    it yields exactly what that archive's :class:`MemorySplit` yields, plus ``src``."""

    def __init__(self, parts: list, weights=None):
        self.parts = list(parts)
        self.weights = [1.0] * len(self.parts) if weights is None else [float(w) for w in weights]

    def _sizes(self) -> list[int]:
        return [0 if p is None else p.n_windows for p in self.parts]

    @property
    def n_windows(self) -> int:
        """Training windows per epoch with the weights applied (what ``batches(shuffle=True)`` yields,
        divided by ``crops_per_window``)."""
        return sum(units_per_epoch(n, w) for n, w in zip(self._sizes(), self.weights))

    def batches(self, batch_size: int, seed: int, epoch: int, shuffle: bool, crops_per_window: int = 1,
                augment: bool = False, drop_last: bool = False, shard: tuple[int, int] = (0, 1)):
        """Numpy batches (compact rows of ``cut_windows`` plus ``src``). Training (``shuffle``): weighted
        and shuffled from (seed, epoch); otherwise every window once, archive by archive.

        ``shard=(rank, world)``: every rank draws the same epoch order and cuts only its own batches
        (batch i goes to rank ``i % world``), the same number on every rank (DDP steps in lockstep):
        the remaining ``< world`` batches of the epoch are left out."""
        units = epoch_units(self._sizes(), self.weights, seed, epoch, shuffle=False, weighted=shuffle)
        src = np.repeat(units[:, 0], crops_per_window)
        win = np.repeat(units[:, 1], crops_per_window)
        draws = (np.repeat(units[:, 2], crops_per_window) * crops_per_window
                 + np.tile(np.arange(crops_per_window), len(units))).astype(np.int64)
        if shuffle:
            perm = shuffled(len(src), seed, epoch)
            src, win, draws = src[perm], win[perm], draws[perm]
        n = len(src) - (len(src) % batch_size if drop_last else 0)
        rank, world = shard
        starts = list(range(0, n, batch_size))
        if world > 1:
            starts = starts[:len(starts) - len(starts) % world][rank::world]
        for i in starts:
            yield self._cut(src[i:i + batch_size], win[i:i + batch_size], draws[i:i + batch_size],
                            seed, epoch, augment)

    def _cut(self, src, win, draws, seed, epoch, augment) -> dict:
        pieces, where = [], []
        for s in np.unique(src):
            sel = np.flatnonzero(src == s)
            p = self.parts[int(s)]
            b = cut_windows(p.vals, p.valid, p.lo, p.starts[win[sel]], p.in_len, p.out_len, p.crop, seed, epoch,
                            augment=augment, draws=draws[sel], cache=p.cache, compact=True)
            b["src"] = np.full(len(sel), int(s), dtype=np.int16)
            pieces.append(b)
            where.append(sel)
        if len(pieces) == 1:
            return pieces[0]
        order = np.argsort(np.concatenate(where), kind="stable")
        return {k: np.concatenate([b[k] for b in pieces])[order] for k in pieces[0]}
