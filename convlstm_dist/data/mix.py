"""Several archives in one epoch: per-archive sampling weights, deterministic from (seed, epoch).

An epoch's training units (windows in memory, chunk groups of windows in Ray Data read tasks) are
drawn per archive: weight ``w`` takes every unit ``floor(w)`` times, plus ``round(frac(w) * n)``
units chosen without replacement from ``(seed, epoch, archive)``; an archive with units always
gets at least one. The count per epoch is fixed (it does not depend on the epoch), only the choice
and the order change. Repeat ``r`` of a unit draws its crops as ``r * crops_per_window + k``, so
repeated windows are cropped differently. With one archive of weight 1 the result (and the order
after shuffling) is exactly that of a plain single-archive epoch.
"""

from __future__ import annotations

import math

import numpy as np


def units_per_epoch(n: int, weight: float) -> int:
    """How many units an archive with ``n`` units contributes per epoch at ``weight``."""
    if n <= 0:
        return 0
    full = int(math.floor(weight + 1e-9))
    return max(1, full * n + int(round((weight - full) * n)))


def epoch_units(sizes, weights, seed: int, epoch: int, shuffle: bool, weighted: bool | None = None) -> np.ndarray:
    """The epoch's units as rows ``(archive, unit, repeat)`` (int64, shape (N, 3)).

    ``sizes[i]``: units of archive ``i``; ``weights[i]``: its weight, applied when ``weighted``
    (default: when shuffling; validation takes everything once). With ``shuffle`` the rows are
    permuted by ``(seed, epoch)``, else they come archive by archive, unit by unit."""
    weighted = shuffle if weighted is None else weighted
    parts = []
    for i, (n, w) in enumerate(zip(sizes, weights)):
        n = int(n)
        if n <= 0:
            continue
        w = float(w) if weighted else 1.0
        full = int(math.floor(w + 1e-9))
        for r in range(full):
            parts.append(np.stack([np.full(n, i), np.arange(n), np.full(n, r)], axis=1))
        k = units_per_epoch(n, w) - full * n
        if k > 0:
            pick = np.sort(np.random.default_rng([seed, epoch, 7919, i, full]).choice(n, size=k, replace=False))
            parts.append(np.stack([np.full(k, i), pick, np.full(k, full)], axis=1))
    rows = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), np.int64)
    if shuffle and len(rows):
        rows = rows[shuffled(len(rows), seed, epoch)]
    return rows


def shuffled(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` training rows for ``(seed, epoch)`` (the one ``epoch_units`` uses)."""
    return np.random.default_rng([seed, epoch, 7919]).permutation(n)
