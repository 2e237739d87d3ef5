"""A small synthetic rain archive (moving Gaussian blobs, NaN border) for data-path tests."""

from __future__ import annotations

import numpy as np

from convlstm_dist.data import units as U
from convlstm_dist.data.archive import GridSpec, append_frames, create_archive

T0 = np.datetime64("2021-06-01T00:00:00", "s")


def rain_frames(n: int, h: int = 48, w: int = 48, seed: int = 0, nan_border: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.1 * w, 0.4 * w)
    frames = np.empty((n, h, w), np.float32)
    for t in range(n):
        y0, x0 = (cy + 0.3 * t) % h, (cx + 0.7 * t) % w
        frames[t] = 20.0 * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * (0.15 * h) ** 2))
    if nan_border:
        frames[:, :nan_border, :] = np.nan
    return frames


def make_archive(url, n=40, h=48, w=48, chunk_t=8, step_s=300, storage_options=None, skip=(), seed=0,
                 frames=None):
    """Create an archive of ``n`` frames (frame indices in ``skip`` left out → time gaps)."""
    frames = rain_frames(n, h, w, seed) if frames is None else frames
    keep = np.array([i for i in range(n) if i not in set(skip)])
    times = (T0 + keep * np.timedelta64(step_s, "s")).astype("datetime64[s]").astype(np.int64)
    grid = GridSpec(variable="rain_mmh", units="mm/h", zr_a=200.0, zr_b=1.6, projection="synthetic",
                    pixel_size_m=1000.0, timestep_s=step_s, source="synthetic", shape=(h, w), y=None, x=None)
    create_archive(str(url), grid, storage_options, chunks=(chunk_t, h, w))
    sel = frames[keep]
    stats = U.frame_stats(sel, U.wet_thresholds("rain_mmh"))
    append_frames(str(url), storage_options, sel, times, stats)
    return frames
