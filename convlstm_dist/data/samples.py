"""Cutting training samples out of archive frames, without Ray.

One sample = one window (``in_len + out_len`` consecutive frames) at one crop:

* ``x`` (in_len, 1, h, w) and ``y`` (out_len, 1, h, w) in the model's range (``data.quantity``),
  NaN → 0; ``mask`` (out_len, 1, h, w) 1.0 where the target is valid; ``t0`` (window start),
  ``cy``/``cx`` (crop corner).
* The crop (and, with ``augment``, one of the 8 flips/rotations of the square, the same for every
  frame of the window) is drawn from ``(seed, epoch, t0, k)``: deterministic, and different in
  every epoch.

:func:`read_windows` reads and cuts in one call (Ray read tasks, evaluation, figures);
:func:`load_block` + :func:`cut_windows` let a single-process trainer keep the frames in memory
and cut batches from them (``convlstm_dist.train.local``).
"""

from __future__ import annotations

import numpy as np

from convlstm_dist.data.crops import choose_crop, valid_integral
from convlstm_dist.data.quantity import quantity_of_variable
from convlstm_dist.data.windows import group_by_chunk, read_runs


def load_block(archive, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``lo:hi`` in model units (float32, NaN → 0) and their validity (bool)."""
    raw = archive.read(lo, hi)  # (t, H, W) physical unit, NaN = no data
    valid = np.isfinite(raw)
    vals = quantity_of_variable(archive.variable).to_model(raw, archive.variable, archive.to_rain_mmh)
    return np.where(valid, vals, 0.0).astype(np.float32), valid


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square on the last two axes (k = 0 is the identity)."""
    a = np.rot90(a, k % 4, axes=(-2, -1))
    return a[..., ::-1] if k >= 4 else a


def cut_windows(vals: np.ndarray, valid: np.ndarray, offset: int, starts, in_len: int, out_len: int,
                crop: tuple[int, int] | None, seed: int = 0, epoch: int = 0, crops_per_window: int = 1,
                augment: bool = False, draws=None, cache: dict | None = None,
                compact: bool = False) -> dict[str, np.ndarray]:
    """Samples of the windows ``starts`` from frames ``vals``/``valid`` whose first frame is the
    archive's frame ``offset``. Returns the columns of the module docstring stacked on axis 0.

    Each start gives ``crops_per_window`` samples (draws k = 0..n-1), or, with ``draws`` (one
    int per start), exactly one sample: draw ``draws[i]``. ``cache`` (a dict the caller keeps) holds
    each window's validity map and its summed-area table between calls, so repeated cuts of the
    same window skip that work (the bulk of it on large grids). ``compact``: rows for the training
    pipe, ``x``/``y`` as float16 and ``mask`` as uint8 (0.9 instead of 2.3 MB per 5+15-frame 128²
    sample); the trainers convert them to float32/bool on the device (:func:`to_compute`)."""
    length = in_len + out_len
    _, H, W = vals.shape
    h, w = crop or (H, W)
    xs, ys, ms, t0s, cys, cxs = [], [], [], [], [], []
    for i, s in enumerate(np.asarray(starts, dtype=np.int64)):
        a = int(s) - offset
        if cache is not None and int(s) in cache:
            win_valid, integral = cache[int(s)]
        else:
            win_valid = valid[a:a + length].all(axis=0)
            integral = valid_integral(win_valid) if (h, w) != (H, W) else None
            if cache is not None:
                cache[int(s)] = (win_valid, integral)
        for k in (range(crops_per_window) if draws is None else (int(draws[i]),)):
            rng = np.random.default_rng([seed, epoch, int(s), k])
            cy, cx = choose_crop(win_valid, (h, w), rng, integral=integral)
            block = vals[a:a + length, cy:cy + h, cx:cx + w]
            mask = valid[a + in_len:a + length, cy:cy + h, cx:cx + w]
            if augment:
                sym = int(rng.integers(8 if h == w else 4))
                sym = sym if h == w else (0, 2, 4, 6)[sym]  # rectangles: flips only
                block, mask = dihedral(block, sym), dihedral(mask, sym)
            xs.append(block[:in_len, None])
            ys.append(block[in_len:, None])
            ms.append(mask[:, None].astype(np.uint8 if compact else np.float32))
            t0s.append(int(s))
            cys.append(cy)
            cxs.append(cx)
    vdt = np.float16 if compact else np.float32
    return {
        "x": np.ascontiguousarray(np.stack(xs), dtype=vdt),
        "y": np.ascontiguousarray(np.stack(ys), dtype=vdt),
        "mask": np.ascontiguousarray(np.stack(ms)),
        "t0": np.asarray(t0s, dtype=np.int64),
        "cy": np.asarray(cys, dtype=np.int32),
        "cx": np.asarray(cxs, dtype=np.int32),
    }


def read_windows(archive, starts: np.ndarray, in_len: int, out_len: int, crop: tuple[int, int] | None,
                 seed: int = 0, epoch: int = 0, crops_per_window: int = 1,
                 augment: bool = False, compact: bool = False, draw_offset: int = 0) -> dict[str, np.ndarray]:
    """Read the windows starting at ``starts`` (one read call over their span) and cut them.
    ``draw_offset``: use crop draws ``draw_offset + k`` instead of ``k`` (a repeated window)."""
    starts = np.asarray(starts, dtype=np.int64)
    lo, hi = int(starts.min()), int(starts.max()) + in_len + out_len
    vals, valid = load_block(archive, lo, hi)
    h, w = crop or vals.shape[1:]
    if compact and len(starts) * crops_per_window * (in_len + out_len) * h * w > vals.size:
        vals = vals.astype(np.float16)  # crops cover the block more than once: convert once (same rows)
    if draw_offset:
        draws = np.tile(np.arange(crops_per_window), len(starts)) + int(draw_offset)
        return cut_windows(vals, valid, lo, np.repeat(starts, crops_per_window), in_len, out_len, crop, seed, epoch,
                           augment=augment, draws=draws, compact=compact)
    return cut_windows(vals, valid, lo, starts, in_len, out_len, crop, seed, epoch, crops_per_window, augment,
                       compact=compact)


def to_compute(x, y, mask):
    """Batch tensors (compact or not, already on the device) as the step wants them: float32
    inputs and targets, a bool mask. Conversion happens on the device, after the copy."""
    return x.float(), y.float(), mask > 0


def iter_windows(archive, starts: np.ndarray, in_len: int, out_len: int, crop: tuple[int, int] | None,
                 seed: int = 0, epoch: int = 0, crops_per_window: int = 1, augment: bool = False,
                 compact: bool = False, draw_offset: int = 0, max_rows: int | None = None, load=None):
    """The rows of :func:`read_windows` for a read task over several time chunks, as a stream of
    batches (each at most ``max_rows`` rows, windows in time order). ``load(archive, lo, hi)`` reads
    frames ``[lo, hi)`` as :func:`load_block` does (default: it; the Ray read tasks retry it while
    the store is unreachable).

    The task reads only the frames its windows touch (:func:`windows.read_runs`), each frame once:
    it reads chunk by chunk, keeping the ``length - 1`` frames the windows of one chunk reach into
    the next, so it holds about one chunk plus one window of frames at a time, never the whole task.
    Every row is bit-identical to :func:`read_windows`'s row of the same window and draw."""
    starts = np.sort(np.asarray(starts, dtype=np.int64))
    length = in_len + out_len
    tc = archive.time_chunk
    _, H, W = archive.shape
    h, w = crop or (H, W)
    per_window = max(1, (max_rows or 1 << 30) // crops_per_window)
    for lo, hi in read_runs(starts, length):
        run = starts[(starts >= lo) & (starts < hi)]
        vals = valid = None
        off = have = lo  # the buffer holds frames [off, have)
        for g in group_by_chunk(run, tc):
            need = int(g[-1]) + length
            keep = int(g[0]) - off
            if vals is not None and keep > 0:
                vals, valid, off = vals[keep:], valid[keep:], int(g[0])
            if need > have:
                v, m = (load or load_block)(archive, have, need)
                if compact and len(g) * crops_per_window * length * h * w > (need - int(g[0])) * H * W:
                    v = v.astype(np.float16)  # as read_windows: crops cover the frames more than once
                if vals is not None and vals.dtype != v.dtype:
                    vals = vals.astype(v.dtype)
                vals = v if vals is None else np.concatenate([vals, v])
                valid = m if valid is None else np.concatenate([valid, m])
                have = need
            for i in range(0, len(g), per_window):
                part = g[i:i + per_window]
                if draw_offset:
                    draws = np.tile(np.arange(crops_per_window), len(part)) + int(draw_offset)
                    yield cut_windows(vals, valid, off, np.repeat(part, crops_per_window), in_len, out_len, crop,
                                      seed, epoch, augment=augment, draws=draws, compact=compact)
                else:
                    yield cut_windows(vals, valid, off, part, in_len, out_len, crop, seed, epoch, crops_per_window,
                                      augment, compact=compact)
