"""Spatial crops of a window: a random crop that prefers valid pixels, drawn the same way in training and scoring."""

from __future__ import annotations

import numpy as np


def valid_integral(valid: np.ndarray) -> np.ndarray:
    """Summed-area table of a 2-D validity map (padded: shape (H + 1, W + 1)), for :func:`choose_crop`."""
    dtype = np.int32 if valid.size < 2**31 else np.int64
    return np.pad(valid.astype(dtype).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def choose_crop(
    valid: np.ndarray, size: tuple[int, int], rng: np.random.Generator, tries: int = 8, min_valid: float = 0.5,
    integral: np.ndarray | None = None,
) -> tuple[int, int]:
    """Top-left corner of a random ``size`` crop, preferring crops with enough valid pixels.

    ``valid`` is a 2-D boolean map (valid in every frame of the window). Up to ``tries`` random
    corners are drawn from ``rng``; the first with a valid share ``>= min_valid`` wins, otherwise
    the best one seen. Deterministic for a given generator state. ``integral``: the map's
    :func:`valid_integral`, if the caller keeps it between calls.
    """
    h, w = size
    H, W = valid.shape
    if h > H or w > W:
        raise ValueError(f"crop {h}x{w} is larger than the archive grid {H}x{W}")
    if (h, w) == (H, W):
        return 0, 0
    if integral is None:
        integral = valid_integral(valid)
    best, best_share = (0, 0), -1.0
    for _ in range(tries):
        y = int(rng.integers(0, H - h + 1))
        x = int(rng.integers(0, W - w + 1))
        share = (integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]) / (h * w)
        if share >= min_valid:
            return y, x
        if share > best_share:
            best, best_share = (y, x), share
    return best
