"""The radar archive: one Zarr v3 group that `xarray.open_zarr(url)` reads as is.

Layout (see docs/archive_format.md for the full contract):

    <variable>      (time, y, x) float32, physical unit, NaN = no data  (rain_mmh | refl_dbz | intensity)
    time            (time,) int64, CF "seconds since 1970-01-01", proleptic_gregorian, UTC
    y, x            (y,), (x,) float64 projection coordinates in metres (or pixel indices)
    threshold       (threshold,) float64, wet thresholds in mm/h (intensity units for Moving MNIST)
    valid_fraction  (time,) float32   share of non-NaN pixels of each frame
    max_value       (time,) float32   frame maximum in the variable's unit (NaN if no valid pixel)
    wet_fraction    (time, threshold) float32  share of valid pixels >= threshold

Writes are ordered so that a crash leaves the archive readable at its old length: data first,
then statistics, then the `time` coordinate, then consolidated metadata, the one commit point.
The length of `time` *in the consolidated metadata* is authoritative (`committed_length`);
`Archive` never reads beyond it, and the next append starts there, overwriting any tail left by
a crashed write. Writers hold `data.lock.writer_lock`, so only one appends at a time. `Archive` is read-only and picklable (only url + storage_options travel).

Why this module is over 400 lines: it is the archive format in code, both of its sides. The
writers (`create_archive`, `append_frames` with its commit order and fault points, `consolidate`,
`committed_length`) and the reader (`Archive`) share the layout above, its constants, the Zarr
options and `GridSpec`, and change together when the format does; ingest, Moving MNIST, the
tests and the benchmarks import both sides from here. Split in two, each half would import the
shared part from a third module and this one would only re-export them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from convlstm_dist.data import units as U
from convlstm_dist.data.quantity import quantity_of_variable
from convlstm_dist.data.storage import exists, is_remote, storage_error, with_fast_fail
from convlstm_dist.data.verify import DamagedArchiveError, find_damaged, is_storage_error
from convlstm_dist.errors import UserError

FORMAT_VERSION = 1
DEFAULT_CHUNKS = (16, 256, 256)
STATS_CHUNK = 4096
TIME_UNITS = "seconds since 1970-01-01"
STAT_NAMES = ("valid_fraction", "max_value", "wet_fraction")
GRID_KEYS = ("variable", "units", "zr_a", "zr_b", "projection", "pixel_size_m", "timestep_s")


def _zarr_kwargs(url: str, storage_options: dict | None) -> dict:
    url = str(url)
    if "://" in url and not url.startswith("file://"):
        return {"storage_options": with_fast_fail(storage_options, url)}
    return {}


def _compressors():
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


@dataclass(frozen=True)
class GridSpec:
    """What every frame of one archive shares (from the reader metadata)."""

    variable: str
    units: str
    zr_a: float | None
    zr_b: float | None
    projection: str
    pixel_size_m: float | None
    timestep_s: int
    source: str
    shape: tuple[int, int]
    y: np.ndarray | None
    x: np.ndarray | None
    attribution: str = ""

    def attrs(self) -> dict:
        return {
            "convlstm_dist_format": FORMAT_VERSION, "variable": self.variable, "source": self.source,
            "units": self.units, "zr_a": self.zr_a, "zr_b": self.zr_b, "projection": self.projection,
            "pixel_size_m": self.pixel_size_m, "timestep_s": int(self.timestep_s),
            "attribution": self.attribution,
        }


def create_archive(url: str, grid: GridSpec, storage_options: dict | None = None,
                   chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
                   shards: int | tuple[int, int, int] | None = None) -> None:
    """Create an empty archive (time length 0). `shards`: frames per shard, or a full shape."""
    import zarr

    H, W = grid.shape
    ct, cy, cx = (int(c) for c in chunks)
    cy, cx = min(cy, H), min(cx, W)
    shard_shape = None
    if shards is not None:
        if isinstance(shards, int):
            shards = (shards, -(-H // cy) * cy, -(-W // cx) * cx)
        shard_shape = tuple(int(s) for s in shards)
        if any(s % c for s, c in zip(shard_shape, (ct, cy, cx))):
            raise UserError(f"shards {shard_shape} must be multiples of chunks {(ct, cy, cx)}")
    g = zarr.open_group(url, mode="w-", attributes=grid.attrs(), **_zarr_kwargs(url, storage_options))
    th = U.wet_thresholds(grid.variable)
    g.create_array(grid.variable, shape=(0, H, W), dtype="float32", chunks=(ct, cy, cx),
                   shards=shard_shape, compressors=_compressors(), fill_value=np.nan,
                   dimension_names=["time", "y", "x"],
                   attributes={"units": grid.units, "long_name": grid.variable,
                               "coordinates": "valid_fraction max_value wet_fraction"})
    g.create_array("time", shape=(0,), dtype="int64", chunks=(STATS_CHUNK,), dimension_names=["time"],
                   fill_value=0, attributes={"units": TIME_UNITS, "calendar": "proleptic_gregorian",
                                             "standard_name": "time", "long_name": "valid time (UTC)"})
    for name, coord in (("y", grid.y), ("x", grid.x)):
        n = H if name == "y" else W
        if coord is None:
            data, attrs = np.arange(n, dtype="float64"), {"units": "1", "long_name": f"{name} pixel index"}
        else:
            data = np.asarray(coord, dtype="float64")
            attrs = {"units": "m", "long_name": f"projection {name} coordinate (pixel centre)"}
        a = g.create_array(name, shape=(n,), dtype="float64", chunks=(n,), dimension_names=[name],
                           attributes=attrs)
        a[:] = data
    thr_units = quantity_of_variable(grid.variable).units
    a = g.create_array("threshold", shape=(len(th),), dtype="float64", chunks=(len(th),),
                       dimension_names=["threshold"],
                       attributes={"units": thr_units, "long_name": "wet threshold"})
    a[:] = th
    for name in ("valid_fraction", "max_value"):
        g.create_array(name, shape=(0,), dtype="float32", chunks=(STATS_CHUNK,), fill_value=np.nan,
                       dimension_names=["time"], attributes={"units": "1" if name == "valid_fraction"
                                                             else grid.units})
    g.create_array("wet_fraction", shape=(0, len(th)), dtype="float32", chunks=(STATS_CHUNK, len(th)),
                   fill_value=np.nan, dimension_names=["time", "threshold"], attributes={"units": "1"})
    consolidate(url, storage_options)


def consolidate(url: str, storage_options: dict | None = None) -> None:
    """Rewrite consolidated metadata (so plain `xarray.open_zarr(url)` works without warnings)."""
    import zarr

    kw = _zarr_kwargs(url, storage_options)
    store = zarr.storage.FsspecStore.from_url(url, **kw) if kw else url
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(store)


WRITE_STEPS = ("data-resize", "data", "stats", "time-resize", "time", "commit")
FAULT_ENV = "CONVLSTM_FAULT_APPEND"
HOLD_ENV = "CONVLSTM_FAULT_APPEND_HOLD"


def _fault(step: str) -> None:
    """Fault injection for crash tests: ``CONVLSTM_FAULT_APPEND=<step>`` SIGKILLs this process just
    before ``step`` (one of WRITE_STEPS) of an append; ``CONVLSTM_FAULT_APPEND_HOLD=<step>`` stops
    there instead (a line on stderr, then sleeps with the lock held) until the test kills or lets
    it go (SIGUSR1 resumes). Unset (always, outside tests): nothing."""
    import signal

    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(HOLD_ENV) == step:
        import sys
        import threading

        go = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *_: go.set())
        print(f"fault: process {os.getpid()} holds the write lock before step {step!r}", file=sys.stderr, flush=True)
        while not go.wait(0.2):
            pass


def committed_length(url: str, storage_options: dict | None = None) -> int:
    """The archive's length as every reader sees it: the `time` shape in the consolidated metadata.

    The consolidated metadata (the root ``zarr.json``) is written last and in one atomic put (a
    rename locally, one PUT on S3), so it is the single commit point of an append; raw array
    lengths may be ahead of it after a crash and are never trusted.
    """
    import zarr

    g = zarr.open_group(url, mode="r", use_consolidated=True, **_zarr_kwargs(url, storage_options))
    return int(g["time"].shape[0])


def append_frames(url: str, storage_options: dict | None, frames: np.ndarray, times_s: np.ndarray,
                  stats: dict[str, np.ndarray], _after_data=None, expected_length: int | None = None,
                  lock=None) -> int:
    """Append frames (n, H, W) with epoch-second times at the committed length; returns the new length.

    Order: data, statistics, time, then the consolidated metadata (the commit). Every array is
    resized to exactly ``t0 + n`` where ``t0`` is the *committed* length, so a tail left by a crashed
    append is overwritten (or cut off), never kept, and a rerun never duplicates frames. The caller
    must hold the archive's writer lock (``data.lock.writer_lock``, passed as ``lock``: it is checked
    once more right before the commit); ``expected_length`` guards against a length that changed
    since the caller decided what to write. ``_after_data`` is a test hook called after the data.
    """
    import zarr

    t0 = committed_length(url, storage_options)
    if expected_length is not None and t0 != expected_length:
        raise UserError(f"the archive {url} changed while this ingest was preparing its frames "
                        f"({expected_length} -> {t0} frames): run the same command again")
    g = zarr.open_group(url, mode="r+", use_consolidated=False, **_zarr_kwargs(url, storage_options))
    var = g.attrs["variable"]
    n = frames.shape[0]
    data = g[var]
    _fault("data-resize")
    data.resize((t0 + n,) + tuple(data.shape[1:]))
    _fault("data")
    data[t0:t0 + n] = frames.astype(np.float32, copy=False)
    if _after_data is not None:
        _after_data()
    _fault("stats")
    for name in STAT_NAMES:
        arr = g[name]
        arr.resize((t0 + n,) + tuple(arr.shape[1:]))
        arr[t0:t0 + n] = stats[name]
    _fault("time-resize")
    g["time"].resize((t0 + n,))
    _fault("time")
    g["time"][t0:t0 + n] = np.asarray(times_s, dtype=np.int64)
    if lock is not None:
        lock.verify()
    _fault("commit")
    consolidate(url, storage_options)
    return t0 + n


class Archive:
    """Read-only view of an archive. Picklable: holds url + storage_options (+ length), opens lazily.

    ``length``: see only the first ``length`` frames (a data version pinned to a run; frames appended
    later stay invisible). Longer than the archive: an error on first use.

    ``skip``: frame ranges ``[(t0, t1), ...]`` known to be damaged (``data.skip_damaged``): reads
    return NaN ("no data") there instead of decoding them. A read that hits a damaged chunk not in
    ``skip`` raises :class:`convlstm_dist.data.verify.DamagedArchiveError` naming the chunk and its times."""

    def __init__(self, url: str, storage_options: dict | None = None, length: int | None = None,
                 skip: list[tuple[int, int]] | None = None):
        self.url = str(url)
        self.storage_options = dict(storage_options or {})
        self.length = None if length is None else int(length)
        self.skip = [(int(a), int(b)) for a, b in (skip or ())]
        self._group = None
        self._cache: dict = {}

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options, "length": self.length,
                "skip": self.skip}

    def __setstate__(self, state):
        self.__init__(state["url"], state["storage_options"], state.get("length"), state.get("skip"))

    def __repr__(self):
        return f"Archive({self.url!r})" if self.length is None else f"Archive({self.url!r}, length={self.length})"

    @property
    def group(self):
        """The archive's Zarr group, opened read-only on first use and checked (format version, the
        radar variable and ``time`` present); :mod:`.verify` reads its arrays chunk by chunk."""
        if self._group is None:
            import zarr

            try:
                g = zarr.open_group(self.url, mode="r", **_zarr_kwargs(self.url, self.storage_options))
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - translated for the user
                if isinstance(exc, FileNotFoundError) and "://" not in self.url:
                    raise UserError(f"no archive at {self.url}") from None
                raise storage_error(self.url, self.storage_options, exc, "read") from None
            if g.attrs.get("convlstm_dist_format") != FORMAT_VERSION:
                raise UserError(f"{self.url} is not a convlstm-dist archive (format "
                                f"{g.attrs.get('convlstm_dist_format')!r}, expected {FORMAT_VERSION})")
            var = g.attrs.get("variable")
            if not isinstance(var, str) or var not in g or "time" not in g:  # consolidated: no extra request
                arrays = ", ".join(sorted(g.array_keys())) or "none"
                raise UserError(f"{self.url} is damaged: its 'variable' attribute names {var!r} but the archive has "
                                f"no such array, or no 'time' (arrays: {arrays}); fix the attribute or re-ingest")
            self._group = g  # only a checked group is kept: a failed check fails again on the next access
        return self._group

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def variable(self) -> str:
        return str(self.group.attrs["variable"])

    @property
    def units(self) -> str:
        return str(self.group.attrs["units"])

    @property
    def timestep_s(self) -> int:
        return int(self.group.attrs["timestep_s"])

    @property
    def times(self) -> np.ndarray:
        if "times" not in self._cache:
            t = self.group["time"]
            n = t.shape[0]
            if self.length is not None:
                if self.length > n:
                    raise UserError(f"the archive {self.url} has {n} frames, fewer than the {self.length} "
                                    "pinned for this run: it was replaced or truncated")
                n = self.length
            self._cache["times"] = np.asarray(t[:n], dtype="int64").astype("datetime64[s]")
        return self._cache["times"]

    @property
    def n_frames(self) -> int:
        """The number of frames from the (consolidated) metadata, without reading the time coordinate."""
        if "times" in self._cache:
            return len(self._cache["times"])
        n = int(self.group["time"].shape[0])
        return n if self.length is None else min(n, self.length)

    @property
    def shape(self) -> tuple[int, int, int]:
        _, H, W = self.group[self.variable].shape
        return (len(self.times), int(H), int(W))

    @property
    def time_chunk(self) -> int:
        return int(self.group[self.variable].chunks[0])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.group[self.variable].chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        s = self.group[self.variable].shards
        return tuple(int(c) for c in s) if s else None

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.group["y"][:])

    @property
    def x(self) -> np.ndarray:
        return np.asarray(self.group["x"][:])

    @property
    def coords_m(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(x, y)`` pixel centres in metres, or None for an archive written without coordinates
        (its ``x``/``y`` are pixel indices, units ``1``)."""
        if self.group["x"].attrs.get("units") != "m" or self.group["y"].attrs.get("units") != "m":
            return None
        return self.x, self.y

    @property
    def xy_units(self) -> str:
        """``m`` for projection coordinates, ``1`` for pixel indices (a source without georeference)."""
        return str(self.group["x"].attrs.get("units", "m"))

    @property
    def stats(self) -> dict[str, np.ndarray]:
        if "stats" not in self._cache:
            T = len(self.times)
            s = {name: np.asarray(self.group[name][:T]) for name in STAT_NAMES}
            s["thresholds"] = np.asarray(self.group["threshold"][:])
            self._cache["stats"] = s
        return self._cache["stats"]

    def read(self, t_start: int, t_stop: int, y: slice = slice(None), x: slice = slice(None)) -> np.ndarray:
        """Frames [t_start, t_stop) as float32 (t, h, w) in the archive's unit, NaN = no data."""
        T = self.n_frames  # a read task must not fetch the whole time coordinate (10 years: 8 MB) per read
        if not (0 <= t_start <= t_stop <= T):
            raise IndexError(f"time range [{t_start}, {t_stop}) outside archive of {T} frames")
        arr = self.group[self.variable]
        pieces, t = [], t_start
        for a, b in self.skip:  # known damaged ranges: "no data", never decoded
            a, b = max(a, t_start), min(b, t_stop)
            if a >= b:
                continue
            if a > t:
                pieces.append(self._read(arr, t, a, y, x))
            pieces.append(b - a)
            t = b
        if t < t_stop or not pieces:
            pieces.append(self._read(arr, t, t_stop, y, x))
        if len(pieces) == 1 and not isinstance(pieces[0], int):
            return pieces[0]
        shape = next((p.shape[1:] for p in pieces if isinstance(p, np.ndarray)), None)
        if shape is None:
            shape = np.empty(arr.shape[1:], dtype=np.int8)[y, x].shape
        return np.concatenate([p if isinstance(p, np.ndarray) else np.full((p,) + shape, np.nan, np.float32)
                               for p in pieces])

    def _read(self, arr, t_start: int, t_stop: int, y, x) -> np.ndarray:
        try:
            out = arr[t_start:t_stop, y, x]
        except Exception as exc:  # noqa: BLE001 - translated for the user
            if not is_storage_error(exc):  # a codec error: which chunk, which times?
                try:
                    damaged = find_damaged(self, t_start, t_stop)
                except Exception:  # noqa: BLE001 - the store failed while probing: report the first error
                    damaged = []
                if damaged:
                    raise DamagedArchiveError(self.url, damaged) from None
            raise storage_error(self.url, self.storage_options, exc, "read") from None
        return np.asarray(out, dtype=np.float32)

    def to_rain_mmh(self, arr: np.ndarray) -> np.ndarray:
        """Convert values of this archive's variable to mm/h (via its Z–R relation for dBZ)."""
        a = self.group.attrs
        return U.to_rain_mmh(arr, a["variable"], a.get("zr_a"), a.get("zr_b"))

    def grid(self) -> dict:
        """The grid-defining attributes plus shape/y/x, for comparing with new frames."""
        d = {k: self.group.attrs.get(k) for k in GRID_KEYS}
        d.update(shape=self.shape[1:], y=self.y, x=self.x)
        return d


def open_archive(url: str, storage_options: dict | None = None, length: int | None = None) -> Archive:
    """Open an archive read-only (only its first ``length`` frames if given); raise UserError if it is
    missing or unreachable."""
    if is_remote(url):
        exists(url, storage_options)  # one request under a deadline: a silent endpoint fails in seconds
    a = Archive(url, storage_options, length)
    a.group  # noqa: B018 - fail now, not in the first Ray task
    return a


def find_gaps(times: np.ndarray, timestep_s: int) -> list[tuple[np.datetime64, np.datetime64, int]]:
    """(last time before, first time after, missing frames) for every step longer than timestep."""
    t = np.asarray(times, dtype="datetime64[s]").astype("int64")
    d = np.diff(t)
    idx = np.nonzero(d != timestep_s)[0]
    return [(times[i], times[i + 1], int(d[i] // timestep_s) - 1) for i in idx]


def summary(archive: Archive) -> dict:
    """Everything `convlstm-dist archive-info` prints, as plain data."""
    times, st = archive.times, archive.stats
    vf = st["valid_fraction"]
    return {
        "url": archive.url, "variable": archive.variable, "units": archive.units,
        "frames": len(times), "shape": archive.shape, "timestep_s": archive.timestep_s,
        "first": str(times[0]) if len(times) else None, "last": str(times[-1]) if len(times) else None,
        "gaps": [(str(a), str(b), n) for a, b, n in find_gaps(times, archive.timestep_s)],
        "chunks": archive.chunks, "shards": archive.shards,
        "mean_valid_fraction": float(vf.mean()) if len(vf) else None,
        "max_value": float(np.nanmax(st["max_value"])) if np.isfinite(st["max_value"]).any() else None,
        "thresholds": st["thresholds"].tolist(),
        "wet_fraction": (np.average(st["wet_fraction"], axis=0, weights=vf).tolist()
                         if len(vf) and vf.sum() > 0 else None),
        "attrs": archive.attrs,
    }
