"""Window index and train/val/test splits — pure numpy, reads no pixels.

A *window* is ``in_len + out_len`` consecutive frames at the archive's constant time step:
``frames[t0 : t0 + length]``. Rules, in order:

1. **No gaps.** A window never spans a gap in time (consecutive times differ by exactly
   ``timestep_s``). 92 gap-free frames give ``92 - 20 + 1 = 73`` windows of 20 frames.
2. **Wet filter (optional).** The mean, over the window's frames, of the per-frame wet fraction
   at ``wet_threshold_mmh`` (from the archive's statistics) must be ``>= min_wet_fraction``.
3. **Splits by time blocks.** Time is cut into blocks of ``block_hours`` counted from the Unix
   epoch (so appending data never reassigns old frames). Block ``k`` is *test* when
   ``test_every > 0`` and ``k % test_every == test_every - 1``, else *val* when
   ``k % val_every == val_every - 1``, else *train*. Every frame takes its block's split; a window
   belongs to split ``s`` when all its frames, and the ``gap_steps`` frames on each side of it that
   exist in the archive, are in ``s``. With ``gap_steps >= 1`` windows of different splits never
   share or neighbour a frame.
   ``whole`` (a split name) overrides the blocks: every window is in that split (a held-out archive
   of a multi-archive recipe).

Everything returns integer frame indices into the archive's time axis (``t0`` of each window).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRule:
    block_hours: float = 24.0
    val_every: int = 5
    test_every: int = 0
    gap_steps: int = 1
    whole: str | None = None

    def __post_init__(self) -> None:
        if self.whole is not None and self.whole not in SPLITS:
            raise ValueError(f"whole must be one of {SPLITS} or None, got {self.whole!r}")
        if self.block_hours <= 0:
            raise ValueError(f"block_hours must be > 0, got {self.block_hours}")
        if self.val_every < 2:
            raise ValueError(f"val_every must be >= 2 (every n-th block is validation), got {self.val_every}")
        if self.test_every < 0 or self.gap_steps < 0:
            raise ValueError("test_every and gap_steps must be >= 0")


@dataclass
class WindowIndex:
    """Window start indices per split, plus what produced them (recorded with every run)."""

    length: int
    timestep_s: int
    starts: dict[str, np.ndarray]
    rule: SplitRule
    min_wet_fraction: float = 0.0
    wet_threshold_mmh: float = 0.5
    n_frames: int = 0
    n_candidates: int = 0
    n_dry_dropped: int = 0
    extra: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {s: int(len(self.starts[s])) for s in SPLITS}

    def summary(self) -> dict:
        """A JSON-able record of the split (logged with each run)."""
        return {
            "length": self.length,
            "timestep_s": self.timestep_s,
            "n_frames": self.n_frames,
            "n_gap_free_windows": self.n_candidates,
            "n_dry_dropped": self.n_dry_dropped,
            "min_wet_fraction": self.min_wet_fraction,
            "wet_threshold_mmh": self.wet_threshold_mmh,
            "rule": asdict(self.rule),
            "counts": self.counts(),
            **self.extra,
        }


def _as_seconds(times: np.ndarray) -> np.ndarray:
    t = np.asarray(times)
    if np.issubdtype(t.dtype, np.datetime64):
        return t.astype("datetime64[s]").astype(np.int64)
    return t.astype(np.int64)


def gap_free_starts(times: np.ndarray, timestep_s: int, length: int) -> np.ndarray:
    """Start indices of all windows of ``length`` frames that span no time gap."""
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    if timestep_s <= 0:
        raise ValueError(f"timestep_s must be > 0, got {timestep_s}")
    sec = _as_seconds(times)
    n = len(sec)
    if n < length:
        return np.zeros(0, dtype=np.int64)
    if n > 1 and np.any(np.diff(sec) <= 0):
        raise ValueError("archive times must be strictly increasing")
    ok_step = np.diff(sec) == timestep_s  # ok_step[i]: frame i -> i+1 is one step
    # bad[i] = 1 where step i is broken; a window at t0 needs steps t0 .. t0+length-2 all ok
    bad = np.concatenate([[0], np.cumsum(~ok_step)])
    t0 = np.arange(n - length + 1)
    return t0[bad[t0 + length - 1] - bad[t0] == 0].astype(np.int64)


def frame_splits(times: np.ndarray, rule: SplitRule) -> np.ndarray:
    """Split label per frame: 0 train, 1 val, 2 test."""
    block = np.floor_divide(_as_seconds(times), int(round(rule.block_hours * 3600)))
    if rule.whole is not None:
        return np.full(len(block), SPLITS.index(rule.whole), dtype=np.int8)
    label = np.zeros(len(block), dtype=np.int8)
    label[block % rule.val_every == rule.val_every - 1] = 1
    if rule.test_every > 0:
        label[block % rule.test_every == rule.test_every - 1] = 2
    return label


def build_index(
    times: np.ndarray,
    timestep_s: int,
    in_len: int,
    out_len: int,
    rule: SplitRule | None = None,
    wet_fraction: np.ndarray | None = None,
    min_wet_fraction: float = 0.0,
    wet_threshold_mmh: float = 0.5,
) -> WindowIndex:
    """All windows of ``in_len + out_len`` frames, filtered and split (see module doc).

    ``wet_fraction`` is the per-frame fraction of valid pixels at or above ``wet_threshold_mmh``
    (shape ``(T,)``; the caller picks the threshold column from the archive statistics).
    """
    if in_len < 1 or out_len < 1:
        raise ValueError(f"in_len and out_len must be >= 1, got {in_len} and {out_len}")
    rule = rule or SplitRule()
    length = in_len + out_len
    starts = gap_free_starts(times, timestep_s, length)
    n_candidates = len(starts)
    n_dry = 0
    if min_wet_fraction > 0:
        if wet_fraction is None:
            raise ValueError("min_wet_fraction > 0 needs the archive's per-frame wet fractions")
        wf = np.nan_to_num(np.asarray(wet_fraction, dtype=np.float64), nan=0.0)
        csum = np.concatenate([[0.0], np.cumsum(wf)])
        mean_wet = (csum[starts + length] - csum[starts]) / length
        keep = mean_wet >= min_wet_fraction
        n_dry = int((~keep).sum())
        starts = starts[keep]

    label = frame_splits(times, rule)
    n = len(label)
    g = rule.gap_steps
    out: dict[str, np.ndarray] = {}
    for code, name in enumerate(SPLITS):
        is_s = np.concatenate([[0], np.cumsum(label == code)])
        lo = np.maximum(starts - g, 0)
        hi = np.minimum(starts + length + g, n)
        out[name] = starts[(is_s[hi] - is_s[lo]) == (hi - lo)]
    return WindowIndex(
        length=length,
        timestep_s=int(timestep_s),
        starts=out,
        rule=rule,
        min_wet_fraction=min_wet_fraction,
        wet_threshold_mmh=wet_threshold_mmh,
        n_frames=n,
        n_candidates=n_candidates,
        n_dry_dropped=n_dry,
    )


def group_by_chunk(starts: np.ndarray, time_chunk: int) -> list[np.ndarray]:
    """Window starts grouped by the time chunk their first frame falls in (chunk-aligned read tasks)."""
    if len(starts) == 0:
        return []
    chunk = starts // time_chunk
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    return [g for g in np.split(np.asarray(starts), cuts) if len(g)]


def chunks_per_task(frame_bytes: int, time_chunk: int, length: int, target_bytes: int) -> int:
    """How many consecutive time chunks one read task covers so that the frames it holds (the windows
    starting in those chunks reach ``length - 1`` frames further) stay within ``target_bytes``; at least
    one chunk, and enough chunks that a task spans a whole window (then no chunk is read by more than
    two tasks)."""
    if frame_bytes <= 0 or time_chunk <= 0 or length < 1 or target_bytes <= 0:
        raise ValueError("frame_bytes, time_chunk, length and target_bytes must be > 0")
    k = int((target_bytes // frame_bytes - (length - 1)) // time_chunk)
    return max(k, 1, -(-(length - 1) // time_chunk))


def group_by_chunks(starts: np.ndarray, time_chunk: int, chunks: int) -> list[np.ndarray]:
    """Window starts (sorted) grouped into read tasks of up to ``chunks`` *consecutive* time chunks (by
    the chunk of each window's first frame); a task ends early where the next window starts in a chunk
    that does not follow the task's last one (a gap in the windows: another split, dry or missing
    frames). ``chunks=1`` is :func:`group_by_chunk`."""
    per_chunk = group_by_chunk(starts, time_chunk)
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    first = prev = -2
    for g in per_chunk:
        c = int(g[0]) // time_chunk
        if cur and (c != prev + 1 or c - first >= chunks):
            out.append(np.concatenate(cur))
            cur = []
        if not cur:
            first = c
        cur.append(g)
        prev = c
    if cur:
        out.append(np.concatenate(cur))
    return out


def read_runs(starts: np.ndarray, length: int) -> list[tuple[int, int]]:
    """The frame ranges ``[lo, hi)`` a group of windows (sorted starts) needs, as few contiguous reads:
    windows whose frames touch or overlap share a read, a gap between them starts a new one."""
    s = np.asarray(starts, dtype=np.int64)
    if len(s) == 0:
        return []
    cuts = np.flatnonzero(s[1:] > s[:-1] + length) + 1
    return [(int(p[0]), int(p[-1]) + length) for p in np.split(s, cuts)]


def chunks_read(starts: np.ndarray, length: int, time_chunk: int) -> set[int]:
    """The time chunks a group of windows reads (the chunks of its :func:`read_runs`)."""
    out: set[int] = set()
    for lo, hi in read_runs(starts, length):
        out.update(range(lo // time_chunk, (hi - 1) // time_chunk + 1))
    return out
