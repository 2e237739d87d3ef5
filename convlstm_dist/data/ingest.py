"""Ingest radar files into an archive: decode everything, validate everything, then write.

Rules (docs/archive_format.md, "Ingest"):
* all files are decoded first (on Ray when `parallel`), so a corrupt file aborts before any write;
* every frame must share the archive's grid: variable, units, Z–R, projection, pixel size,
  time step, shape and y/x coordinates; otherwise the whole call is refused;
* frames are sorted by time; duplicate times within one call are merged when the data are
  identical and refused (naming both files) when they differ;
* frames whose time is already in the archive are skipped (re-ingest changes nothing); if their
  data differ from the archived frame, the report and a warning say so;
* one writer at a time: the archive's writer lock (data/lock.py) is held from reading the archive
  to the commit, so concurrent ingests serialise instead of overwriting each other;
* frames older than the archive's last time that are not in it would need an insert in the
  middle: refused (the archive is append-only);
* writing goes data → statistics → time → consolidated metadata (see archive.py).
"""

from __future__ import annotations

import sys
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlstm_dist.data import units as U
from convlstm_dist.data.archive import Archive, DEFAULT_CHUNKS, GRID_KEYS, GridSpec, append_frames, create_archive
from convlstm_dist.data.lock import DEFAULT_TIMEOUT_S, writer_lock
from convlstm_dist.data.readers import Reader, get_reader
from convlstm_dist.data.storage import exists, redact, storage_error
from convlstm_dist.errors import UserError
from convlstm_dist.ray_session import start_or_join_ray

ATTRIBUTIONS = {
    "KNMI": "Contains radar data from KNMI (Royal Netherlands Meteorological Institute), "
            "via the pysteps example data (CC BY 4.0)",
    "FMI": "Contains radar data from the Finnish Meteorological Institute (FMI), "
           "via the pysteps example data (CC BY 4.0)",
    "MeteoSwiss": "Contains radar data from MeteoSwiss, via the pysteps example data (no licence stated "
                  "by the source: tests and experiments only)",
    "OPERA": "Contains radar data from EUMETNET OPERA, via the pysteps example data (no licence stated "
             "by the source: tests only)",
}


@dataclass
class IngestReport:
    archive_url: str
    files: int
    written: int
    skipped_present: int
    deduplicated: int
    frames_total: int
    first_written: str | None
    last_written: str | None
    created: bool
    seconds: float
    storage_options: dict = field(default_factory=dict, repr=False)
    differing: list[str] = field(default_factory=list)  # already-archived times whose data differ

    def __str__(self):
        return (f"ingested {self.files} files into {self.archive_url}: {self.written} frames written "
                f"({self.first_written} .. {self.last_written}), {self.skipped_present} already present, "
                f"{self.deduplicated} duplicates merged; archive now has {self.frames_total} frames "
                f"[{self.seconds:.1f} s]" + (f"\n{len(self.differing)} file(s) NOT written: their time is "
                                             "already in the archive with different data: "
                                             + ", ".join(self.differing[:5]) if self.differing else ""))


def _decode_batch(reader: Reader, paths: list[str]):
    return [(p, *reader.read(p)) for p in paths]


def _decode(reader: Reader, files: list[Path], parallel: bool, progress: bool):
    from tqdm.auto import tqdm

    paths = [str(f) for f in files]
    bar = tqdm(total=len(paths), desc=f"decode ({reader.name})", unit="file", disable=not progress)
    out = []
    if not parallel or len(paths) < 2:
        for p in paths:
            out += _decode_batch(reader, [p])
            bar.update(1)
        bar.close()
        return out
    import ray

    start_or_join_ray()  # a local Ray (or the job's cluster); reuses a running one
    n_cpu = max(1, int(ray.available_resources().get("CPU", 1)))
    size = max(1, min(16, -(-len(paths) // (4 * n_cpu))))
    task = ray.remote(num_cpus=1, max_retries=0)(_decode_batch)
    pending = {task.remote(reader, paths[i:i + size]): min(size, len(paths) - i)
               for i in range(0, len(paths), size)}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                out += ray.get(ref)
                bar.update(pending.pop(ref))
    except ray.exceptions.RayTaskError as exc:
        # Let the other decode tasks finish instead of ray.cancel()-ing them: in Ray 2.60 a cancel
        # racing a task's completion can abort the driver process (core worker "Check failed: ...
        # Tried to complete task that was not pending", seen in CI). Decodes are short.
        ray.wait(list(pending), num_returns=len(pending), timeout=120)
        raise _one_line(exc) from None
    finally:
        bar.close()
    return out


def _one_line(exc) -> UserError:
    """The user's message from a failed decode task, without Ray's remote traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError) and cause.args:
        return UserError(str(cause.args[0]))
    if cause is not None:
        return UserError(f"decoding failed on a Ray worker: {type(cause).__name__}: "
                         f"{str(cause.args[0]) if cause.args else cause}")
    return UserError(f"decoding failed on a Ray worker: {str(exc).splitlines()[-1]}")


def _grid_of(meta: dict) -> dict:
    d = {k: meta[k] for k in GRID_KEYS}
    d.update(shape=tuple(meta["shape"]), y=meta["y"], x=meta["x"])
    return d


def _grid_diff(a: dict, b: dict) -> list[str]:
    diffs = []
    for k in GRID_KEYS + ("shape",):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, float) or isinstance(vb, float):
            same = (va is None and vb is None) or (va is not None and vb is not None and
                                                   np.isclose(float(va), float(vb), rtol=1e-6))
        else:
            same = (tuple(va) == tuple(vb)) if k == "shape" else va == vb
        if not same:
            diffs.append(f"{k}: {va!r} vs {vb!r}")
    for k in ("y", "x"):
        va, vb = a.get(k), b.get(k)
        if va is not None and vb is not None and not (
                np.shape(va) == np.shape(vb) and np.allclose(va, vb, rtol=0, atol=1e-3)):
            diffs.append(f"{k} coordinates differ")
    return diffs


def _sorted_unique(decoded):
    """Sort by time; merge identical duplicates, refuse differing ones. -> (items, n_merged)."""
    decoded = sorted(decoded, key=lambda d: (d[2]["time"], d[0]))
    items, merged = [], 0
    for item in decoded:
        if items and items[-1][2]["time"] == item[2]["time"]:
            prev = items[-1]
            if not np.array_equal(prev[1], item[1], equal_nan=True):
                raise UserError(f"two files for {item[2]['time']} with different data: "
                                f"{prev[0]} and {item[0]}")
            merged += 1
            continue
        items.append(item)
    return items, merged


def _validate_against(items, ref_grid: dict, where: str):
    for path, _, meta in items:
        diffs = _grid_diff(ref_grid, _grid_of(meta))
        if diffs:
            raise UserError(f"{path} does not match {where}: " + "; ".join(diffs))


def _fill_timestep(items, archive_url: str, storage_options: dict | None) -> None:
    """Set `timestep_s` on frames whose file states none (ODIM; `items` sorted, distinct times).

    Appending: the archive's step; the frames must lie on its step grid counted from the archive's
    first time. New archive: the smallest positive spacing of the call's times, and every frame
    must lie on that grid; a single frame cannot give a step and is refused (ingest two or more).
    """
    if not items or all(it[2]["timestep_s"] is not None for it in items):
        return
    t = np.array([_epoch(it[2]["time"]) for it in items], dtype=np.int64)
    origin = int(t[0])
    if exists(archive_url, storage_options):
        arc = Archive(archive_url, storage_options)
        step, what = arc.timestep_s, f"the step grid of the archive {archive_url} ({arc.timestep_s} s"
        if len(arc.times):
            origin = _epoch(arc.times[0])
            what += f" from {arc.times[0]}"
        what += ")"
    elif len(t) < 2:
        raise UserError(f"{items[0][0]} states no time step and is the only frame for the new archive "
                        f"{archive_url}: the step comes from the spacing of the frames, so ingest two or "
                        "more consecutive files to create it (later single files can be appended)")
    else:
        step = int(np.diff(t).min())
        what = f"the {step} s step grid inferred from the spacing of the files (from {items[0][2]['time']})"
    off = [it for it, ti in zip(items, t) if (int(ti) - origin) % step]
    if off:
        raise UserError(f"{len(off)} frame(s) are not on {what}: first {off[0][0]} at {off[0][2]['time']}")
    for it in items:
        if it[2]["timestep_s"] is None:
            it[2]["timestep_s"] = step


def input_files(files) -> list[Path]:
    """``files`` as paths; none, or one that is not a file, is a ``UserError`` naming them."""
    files = [Path(f) for f in files]
    if not files:
        raise UserError("no input files given")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"input file(s) not found: {', '.join(missing[:5])}")
    return files


def ingest(reader: str | Reader, files, archive_url: str, storage_options: dict | None = None,
           chunks: tuple[int, int, int] = DEFAULT_CHUNKS, shards: int | tuple | None = None,
           parallel: bool = True, progress: bool = True, lock_timeout_s: float = DEFAULT_TIMEOUT_S,
           _after_data=None) -> IngestReport:
    """Decode `files` with `reader`, validate, and append them to the archive at `archive_url`.

    Creates the archive (with `chunks`/`shards`) if it does not exist; otherwise those are ignored.
    Decoding runs without the lock; reading the archive, deciding and writing run under the
    archive's writer lock (waiting up to `lock_timeout_s` for a concurrent writer).
    Raises UserError (nothing written) on corrupt files, grid mismatch, conflicting duplicates,
    or frames that would need an insert before the archive's last time.
    """
    t_begin = _time.perf_counter()
    reader = get_reader(reader)
    files = input_files(files)
    items, merged = _sorted_unique(_decode(reader, files, parallel, progress))
    _fill_timestep(items, archive_url, storage_options)
    _validate_against(items, _grid_of(items[0][2]), f"the grid of {items[0][0]}")

    with writer_lock(archive_url, storage_options, lock_timeout_s) as lock:
        # Everything from here reads the archive as it is *now*, under the lock: a concurrent
        # ingest that finished while we decoded is seen, never overwritten.
        created = not exists(archive_url, storage_options)
        skipped, differing, length = 0, [], 0
        if not created:
            arc = Archive(archive_url, storage_options)
            _validate_against(items, arc.grid(), f"the archive {archive_url}")
            length = len(arc.times)
            index = {t: i for i, t in enumerate(arc.times.astype("int64").tolist())}
            last = arc.times[-1] if length else None
            new = [it for it in items if _epoch(it[2]["time"]) not in index]
            differing = [it for it in items if _epoch(it[2]["time"]) in index
                         and not _same_as_archived(arc, index[_epoch(it[2]["time"])], it[1])]
            skipped = len(items) - len(new)
            older = [it for it in new if last is not None and it[2]["time"] < last]
            if older:
                raise UserError(f"{len(older)} frame(s) are older than the archive's last time {last} and not "
                                f"in it (first: {older[0][0]} at {older[0][2]['time']}); the archive is "
                                "append-only: ingest them into a new archive instead")
            items = new
        if items:
            frames = np.stack([it[1] for it in items]).astype(np.float32, copy=False)
            meta = items[0][2]
            stats = U.frame_stats(frames, U.thresholds_in_unit(meta["variable"], meta["zr_a"], meta["zr_b"]))
            times = np.array([_epoch(it[2]["time"]) for it in items], dtype=np.int64)
            try:
                if created:
                    create_archive(archive_url, _grid_spec(meta), storage_options, chunks=chunks, shards=shards)
                total = append_frames(archive_url, storage_options, frames, times, stats,
                                      _after_data=_after_data, expected_length=length, lock=lock)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - storage problems become a clear message
                raise storage_error(archive_url, storage_options, exc, "write") from None
        else:
            total = length
    if differing:
        print(f"warning: {len(differing)} file(s) have a time already in {archive_url} but DIFFERENT data; "
              f"they were not written (the archive keeps its first version; first: {differing[0][0]} at "
              f"{differing[0][2]['time']})", file=sys.stderr, flush=True)
    return IngestReport(
        archive_url=archive_url, files=len(files), written=len(items), skipped_present=skipped,
        deduplicated=merged, frames_total=total, differing=[str(it[0]) for it in differing],
        first_written=str(items[0][2]["time"]) if items else None,
        last_written=str(items[-1][2]["time"]) if items else None, created=created and bool(items),
        seconds=_time.perf_counter() - t_begin, storage_options=redact(storage_options or {}))


def _same_as_archived(arc: Archive, i: int, frame: np.ndarray) -> bool:
    return np.array_equal(arc.read(i, i + 1)[0], np.asarray(frame, dtype=np.float32), equal_nan=True)


def _epoch(t) -> int:
    return int(np.datetime64(t, "s").astype("int64"))


def _grid_spec(meta: dict) -> GridSpec:
    return GridSpec(variable=meta["variable"], units=meta["units"], zr_a=meta["zr_a"], zr_b=meta["zr_b"],
                    projection=meta["projection"], pixel_size_m=meta["pixel_size_m"],
                    timestep_s=int(meta["timestep_s"]), source=meta["source"], shape=tuple(meta["shape"]),
                    y=meta["y"], x=meta["x"], attribution=ATTRIBUTIONS.get(meta["source"], ""))


def decode_latest(reader: str | Reader, files, n: int, progress: bool = False) -> tuple[np.ndarray, dict]:
    """The ``n`` latest frames of ``files`` as ``ingest`` would decode them, without an archive:
    ``(float32 (n, H, W) in the reader's variable, NaN = no data; meta of the last frame + "times")``.

    Same rules as ``ingest``: every file decoded (a corrupt one names itself), sorted by time,
    identical duplicates merged, one grid for all; a reader that states no time step takes the
    spacing of the files. The ``n`` latest frames must be consecutive (no time gap)."""
    reader = get_reader(reader)
    files = input_files(files)
    items, _ = _sorted_unique(_decode(reader, files, parallel=False, progress=progress))
    if len(items) < n:
        raise UserError(f"too few frames: the model needs {n} input frames, {len(files)} file(s) give "
                        f"{len(items)} distinct times")
    items = items[-n:]
    if any(it[2]["timestep_s"] is None for it in items):
        t = np.array([_epoch(it[2]["time"]) for it in items], dtype=np.int64)
        step = int(np.diff(t).min()) if len(t) > 1 else None
        if not step:
            raise UserError(f"{items[-1][0]} states no time step; pass two or more consecutive files")
        for it in items:
            it[2]["timestep_s"] = it[2]["timestep_s"] or step
    _validate_against(items, _grid_of(items[-1][2]), f"the grid of {items[-1][0]}")
    step = int(items[-1][2]["timestep_s"])
    t = np.array([_epoch(it[2]["time"]) for it in items], dtype=np.int64)
    if np.any(np.diff(t) != step):
        raise UserError(f"the {n} latest frames ({items[0][0]} .. {items[-1][0]}) are not every {step} s: "
                        "a time gap; pass consecutive files")
    meta = dict(items[-1][2], times=np.array([it[2]["time"] for it in items], dtype="datetime64[s]"),
                attribution=ATTRIBUTIONS.get(items[-1][2]["source"], ""))
    return np.stack([it[1] for it in items]).astype(np.float32, copy=False), meta
