"""Damaged chunks: find the chunk objects of an archive that no longer decode, and the time they cover.

A chunk object whose bytes changed (a flipped bit on disk, a truncated upload) fails in the codec
(Blosc/Zstd) when it is read. :func:`verify_archive` reads every chunk object of every time-indexed
array in parallel (``archive-info --verify``); :func:`find_damaged` probes only the chunks of one
frame range (an ``Archive.read`` that failed in a codec). Each damaged object becomes a
:class:`DamagedChunk` naming its key and the frames and times it holds.

Storage errors (an unreachable store, a refused key) are not damage: they propagate as they are.
Not detected: a chunk that decodes to wrong values (no checksums in the format), and a deleted chunk
object, which Zarr reads as "no data" (all-NaN chunks are never written, so absence is normal).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from convlstm_dist.errors import UserError


@dataclass(frozen=True)
class DamagedChunk:
    array: str       # array name in the archive (e.g. rain_mmh)
    key: str         # the object's key under the archive (e.g. rain_mmh/c/3/0/1)
    t_start: int     # first frame it holds
    t_stop: int      # one past its last frame (within the committed length)
    first: str       # time of t_start (UTC)
    last: str        # time of t_stop - 1 (UTC)
    reason: str      # the codec's complaint, one line

    def describe(self) -> str:
        return (f"{self.key} (frames {self.t_start}..{self.t_stop - 1}, {self.first} .. {self.last}): "
                f"{self.reason}")


class DamagedArchiveError(UserError):
    """A read hit chunk objects that no longer decode; ``damaged`` lists them."""

    def __init__(self, url: str, damaged: list[DamagedChunk]):
        self.url, self.damaged = url, list(damaged)
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        super().__init__(f"the archive {url} is damaged: chunk {damaged[0].describe()}{more}; "
                         f"list every damaged range with `convlstm-dist archive-info --verify {url}`, "
                         "re-ingest those times, or set data.skip_damaged: true to train without the windows "
                         "that touch them")

    def __reduce__(self):  # picklable across Ray tasks (the message is rebuilt from the fields)
        return (type(self), (self.url, self.damaged))


def is_storage_error(exc: BaseException) -> bool:
    """True for errors of the store (network, permissions, missing bucket), false for codec errors."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (OSError, TimeoutError, asyncio.TimeoutError, UserError)):
            return True
        if type(seen).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip().rstrip(":")


def _objects(arr, t_lo: int, t_hi: int):
    """``(coords, region)`` of every storage object of ``arr`` overlapping frames [t_lo, t_hi)."""
    grid = tuple(int(c) for c in (arr.shards or arr.chunks))
    shape = tuple(int(s) for s in arr.shape)
    if not shape or shape[0] == 0 or t_hi <= t_lo:
        return []
    ranges = [range(t_lo // grid[0], -(-min(t_hi, shape[0]) // grid[0]))]
    ranges += [range(-(-n // g)) for n, g in zip(shape[1:], grid[1:])]
    out = []
    for coords in np.ndindex(*[len(r) for r in ranges]):
        c = tuple(r[i] for r, i in zip(ranges, coords))
        out.append((c, tuple(slice(ci * g, min((ci + 1) * g, n)) for ci, g, n in zip(c, grid, shape))))
    return out


def _check(archive, name: str, arr, coords, region, n_frames: int):
    """None if the object decodes, else its DamagedChunk; storage errors propagate."""
    try:
        arr[region]
        return None
    except Exception as exc:  # noqa: BLE001 - classified below
        if is_storage_error(exc):
            raise
        t0, t1 = region[0].start, min(region[0].stop, n_frames)
        times = archive.times
        key = f"{name}/{arr.metadata.chunk_key_encoding.encode_chunk_key(coords)}"
        return DamagedChunk(name, key, int(t0), int(t1), str(times[t0]), str(times[t1 - 1]), _reason(exc))


def _time_arrays(archive) -> list[str]:
    g = archive.group
    names = [archive.variable] + [n for n in sorted(g.array_keys())
                                  if n != archive.variable and getattr(g[n].metadata, "dimension_names", None)
                                  and g[n].metadata.dimension_names[0] == "time"]
    return names


def _run(archive, jobs, workers: int, progress: Callable[[int, int], None] | None) -> list[DamagedChunk]:
    n_frames = archive.n_frames
    found: list[DamagedChunk] = []
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_check, archive, name, arr, c, r, n_frames) for name, arr, c, r in jobs]
        for f in futures:
            d = f.result()
            done += 1
            if d is not None:
                found.append(d)
            if progress is not None:
                progress(done, len(jobs))
    return sorted(found, key=lambda d: (d.t_start, d.key))


def verify_archive(archive, workers: int = 8, progress: Callable[[int, int], None] | None = None,
                   data_only: bool = False) -> list[DamagedChunk]:
    """Read every chunk object of the archive's time-indexed arrays (``data_only``: only the radar
    variable) within its committed length; return the damaged ones, in time order."""
    n = archive.n_frames
    archive.times  # noqa: B018 - read the time coordinate once, before the threads need it
    names = [archive.variable] if data_only else _time_arrays(archive)
    jobs = []
    for name in names:
        arr = archive.group[name]
        jobs += [(name, arr, c, r) for c, r in _objects(arr, 0, n)]
    return _run(archive, jobs, workers, progress)


def find_damaged(archive, t_start: int, t_stop: int, workers: int = 4) -> list[DamagedChunk]:
    """The damaged objects of the radar variable that hold frames [t_start, t_stop)."""
    arr = archive.group[archive.variable]
    jobs = [(archive.variable, arr, c, r) for c, r in _objects(arr, t_start, t_stop)]
    return _run(archive, jobs, workers, None)


def merge_ranges(damaged: list[DamagedChunk]) -> list[tuple[int, int]]:
    """The damaged frame ranges [t_start, t_stop), sorted and merged."""
    out: list[list[int]] = []
    for t0, t1 in sorted({(d.t_start, d.t_stop) for d in damaged}):
        if out and t0 <= out[-1][1]:
            out[-1][1] = max(out[-1][1], t1)
        else:
            out.append([t0, t1])
    return [(a, b) for a, b in out]


def windows_touching(starts: np.ndarray, length: int, ranges: list[tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the windows ``[s, s + length)`` that overlap any of ``ranges``."""
    starts = np.asarray(starts, dtype=np.int64)
    hit = np.zeros(len(starts), dtype=bool)
    for t0, t1 in ranges:
        hit |= (starts < t1) & (starts + length > t0)
    return hit
