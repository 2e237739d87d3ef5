"""From a config to training data: archives, window index per split, Ray datasets.

``DataPlan.from_config`` runs on the driver *before* any cluster work, so a missing archive,
an empty split or a crop larger than a grid is a clear error up front.

* ``data.source: archive`` — one archive (``data.archive``: a local path or ``s3://``; default
  ``<workdir>/archive.zarr``) or several (``data.archives``: entries ``{url, weight, split,
  endpoint_url}``; relative local paths resolve against the workdir), each split by time blocks
  (its own ``split`` or ``data.split``). Windows never cross archives; every archive's values are
  converted to the model's quantity with its own unit and Z–R relation; ``weight`` is the relative
  sampling weight of its training windows per epoch (:mod:`convlstm_dist.data.mix`). Rows carry
  ``src``, the archive's index in :attr:`DataPlan.sources`.
* ``data.source: moving_mnist`` — three generated archives (train/val/test, fixed seeds) under
  ``<workdir>/moving_mnist/``, created on first use; every 20-frame sequence is one window.

**Data version.** :meth:`DataPlan.version` lists, per archive, the URL, the frame count, the last
frame time and a hash of the archive's metadata. ``DataPlan.from_config(cfg, workdir, pinned=that
list)`` plans on exactly those first frames of every archive, even after later appends (the time of
the last pinned frame and the metadata hash must match; a shorter archive is an error).
"""

from __future__ import annotations

import re

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlstm_dist.data import moving_mnist
from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.memory import MemorySplit, MultiMemorySplit
from convlstm_dist.data.quantity import quantity_of_variable
from convlstm_dist.data.shipped import mnist_images_path
from convlstm_dist.data.storage import archive_name, exists, is_remote, storage_options_for
from convlstm_dist.data.verify import merge_ranges, verify_archive, windows_touching
from convlstm_dist.data.windows import SPLITS, SplitRule, WindowIndex, build_index, gap_free_starts
from convlstm_dist.errors import UserError

MNIST_SEEDS = {"train": 1, "val": 2, "test": 3}


def default_archive_url(workdir: str | Path) -> str:
    return str(Path(workdir) / "archive.zarr")


def resolve_url(url: str, workdir: str | Path) -> str:
    """An entry of ``data.archives``: URLs and absolute paths as they are, relative paths under the workdir."""
    if "://" in url or Path(url).is_absolute():
        return url
    return str(Path(workdir) / url)


def _threshold_column(archive, thr_mmh: float) -> np.ndarray:
    st = archive.stats
    thr = np.asarray(st["thresholds"], dtype=float)
    j = int(np.argmin(np.abs(thr - thr_mmh)))
    if abs(thr[j] - thr_mmh) > 1e-6:
        raise UserError(f"data.wet_threshold_mmh={thr_mmh} is not one of the archive {archive.url}'s "
                        f"thresholds {thr.tolist()}")
    return np.asarray(st["wet_fraction"])[:, j]


def meta_sha256(archive) -> str:
    """Hash of what defines an archive apart from its length: attributes, grid shape, y/x coordinates."""
    h = hashlib.sha256()
    _, H, W = archive.shape
    h.update(json.dumps({"attrs": archive.attrs, "shape": [H, W]}, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(archive.y, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(archive.x, dtype="<f8").tobytes())
    return h.hexdigest()


def archive_version(archive) -> dict:
    """One entry of :meth:`DataPlan.version` (JSON-able)."""
    t = archive.times
    return {"url": archive.url, "frames": int(len(t)), "last_time": str(t[-1]) if len(t) else None,
            "meta_sha256": meta_sha256(archive)}


def _pins(pinned) -> dict | None:
    if pinned is None:
        return None
    out = {}
    for e in pinned:
        if not isinstance(e, dict) or not {"url", "frames", "last_time", "meta_sha256"} <= set(e):
            raise UserError(f"pinned data version entry {e!r} lacks url/frames/last_time/meta_sha256")
        out[str(e["url"])] = e
    return out


def _open(url: str, opts: dict, pins: dict | None, what: str):
    """Open an archive, at its pinned length when ``pins`` is given, and check the pin still holds."""
    pin = None
    if pins is not None:
        pin = pins.get(url)
        if pin is None:
            raise UserError(f"{what} {url} is not in the pinned data version of this run (pinned: "
                            f"{', '.join(sorted(pins)) or 'none'}): the recipe's archives changed since the run "
                            "started; restore them or start a new run")
    arc = open_archive(url, opts, None if pin is None else int(pin["frames"]))
    if pin is not None:
        now = archive_version(arc)  # raises if the archive is now shorter than pinned
        if now["last_time"] != pin["last_time"]:
            raise UserError(f"{what} {url} changed under this run: its frame {int(pin['frames']) - 1} was "
                            f"{pin['last_time']} when the run started and is {now['last_time']} now (frames were "
                            "inserted or removed, not appended); restore the archive or start a new run")
        if now["meta_sha256"] != pin["meta_sha256"]:
            raise UserError(f"{what} {url} changed under this run: its metadata (attributes, grid) differ from "
                            "the pinned version; restore the archive or start a new run")
    return arc


def _skip_damaged(arc, starts: dict, length: int, what: str) -> tuple[dict, dict]:
    """``data.skip_damaged``: read every chunk of ``arc``'s variable, mark the damaged frame ranges as
    "no data" on the archive (reads never decode them) and drop the windows that touch them."""
    damaged = verify_archive(arc, data_only=True)
    ranges = merge_ranges(damaged)
    arc.skip = ranges
    kept, dropped = {}, {}
    for split, st in starts.items():
        hit = windows_touching(st, length, ranges)
        kept[split], dropped[split] = np.asarray(st)[~hit], int(hit.sum())
    times = arc.times
    rec = {"chunks": [d.key for d in damaged], "dropped_windows": dropped,
           "ranges": [[str(times[a]), str(times[b - 1])] for a, b in ranges]}
    if damaged:
        print(f"[convlstm-dist] data.skip_damaged: {what} {arc.url} has {len(damaged)} damaged chunk(s) "
              f"({'; '.join(f'{a} .. {b}' for a, b in rec['ranges'])}); dropped {sum(dropped.values())} windows "
              f"that touch them ({', '.join(f'{s} {n}' for s, n in dropped.items())})", flush=True)
    return kept, rec


@dataclass
class PlanArchive:
    """One archive of a plan (Moving MNIST: one entry whose three splits live in three archives)."""

    index: int
    url: str                                 # as resolved (what `version()` and errors name)
    archives: dict[str, object]              # split -> Archive (the same one for every split of a radar archive)
    starts: dict[str, np.ndarray]            # split -> window start indices into that split's archive
    weight: float = 1.0
    record: dict = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {s: int(len(self.starts.get(s, ()))) for s in SPLITS}


@dataclass
class DataPlan:
    sources: list[PlanArchive]
    in_len: int
    out_len: int
    crop: tuple[int, int]
    variable: str                          # the physical variable the model predicts (mixed rain: rain_mmh)
    record: dict = field(default_factory=dict)  # JSON-able: what was chosen (logged with the run)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg, workdir: str | Path = "workdir", pinned: list[dict] | None = None) -> "DataPlan":
        """The plan of ``cfg``. ``pinned``: a run's :meth:`version` — use exactly those frames."""
        d = cfg.data
        pins = _pins(pinned)
        if d.source == "moving_mnist":
            plan = cls._moving_mnist(cfg, Path(workdir), pins)
        else:
            if d.archives:
                entries = [(resolve_url(e.url, workdir), e.weight, e.split or d.split, e.endpoint_url or d.endpoint_url)
                           for e in d.archives]
            else:
                entries = [(d.archive or default_archive_url(workdir), 1.0, d.split, d.endpoint_url)]
            sources = [cls._radar(i, url, weight, split, endpoint, d, pins, len(entries) > 1)
                       for i, (url, weight, split, endpoint) in enumerate(entries)]
            plan = cls(sources, d.in_len, d.out_len, (cfg.model.height, cfg.model.width),
                       cls._model_variable(sources))
            plan.record = plan._record(single=d.archives is None)
        if pins is not None:
            used = {e["url"] for e in plan.version()}
            extra = sorted(set(pins) - used)
            if extra:
                raise UserError(f"the pinned data version lists archive(s) the recipe no longer has: {', '.join(extra)}")
            plan.record["pinned"] = True
        plan._check()
        return plan

    @staticmethod
    def _radar(i: int, url: str, weight: float, split, endpoint, d, pins, multi: bool) -> PlanArchive:
        what = f"archive #{i} of data.archives" if multi else "archive"
        opts = storage_options_for(url, endpoint)
        if not is_remote(url) and not Path(url).exists():
            hint = ("relative paths in data.archives resolve against the workdir; create it with "
                    f"`convlstm-dist ingest --archive {url} ...`" if multi else
                    f"create it with `convlstm-dist ingest --archive {url} ...` or set data.archive")
            raise UserError(f"{what} {url} does not exist: {hint}")
        if is_remote(url) and not exists(url, opts):
            raise UserError(f"{what} {url} does not exist (or is not readable with the current credentials)")
        arc = _open(url, opts, pins, what)
        rule = SplitRule(split.block_hours, split.val_every, split.test_every, split.gap_steps, split.whole)
        wet = _threshold_column(arc, d.wet_threshold_mmh) if d.min_wet_fraction > 0 else None
        idx: WindowIndex = build_index(arc.times, arc.timestep_s, d.in_len, d.out_len, rule, wet,
                                       d.min_wet_fraction, d.wet_threshold_mmh)
        rec = {"url": url, "weight": weight, "variable": arc.variable, "grid": list(arc.shape[1:]), **idx.summary()}
        starts = idx.starts
        if d.skip_damaged:
            starts, rec["damaged"] = _skip_damaged(arc, starts, d.in_len + d.out_len, what)
        return PlanArchive(i, url, {s: arc for s in SPLITS}, starts, float(weight), rec)

    @staticmethod
    def _model_variable(sources: list[PlanArchive]) -> str:
        variables = {s.url: s.archives["train"].variable for s in sources}
        quantities = {quantity_of_variable(v).name for v in variables.values()}
        if len(quantities) > 1:
            listing = ", ".join(f"{u} ({v} -> {quantity_of_variable(v).name})" for u, v in variables.items())
            raise UserError("data.archives mixes archives whose values map to different model quantities: "
                            f"{listing}; train on archives of one kind (radar rain/reflectivity, or Moving MNIST)")
        kinds = set(variables.values())
        if len(kinds) == 1:
            return kinds.pop()
        return "rain_mmh"  # rain rate and reflectivity archives: the model predicts rain (rain_norm of mm/h)

    def _record(self, single: bool) -> dict:
        steps = {s.record["timestep_s"] for s in self.sources}
        rec = {"length": self.in_len + self.out_len, "timestep_s": next(iter(steps)) if len(steps) == 1 else None,
               "counts": self.counts(), "variable": self.variable,
               "archives": [s.record for s in self.sources]}
        if single:  # the single-archive record keeps its flat keys (archive, rule, n_gap_free_windows, ...)
            src = self.sources[0].record
            rec = {"archive": src["url"], **{k: v for k, v in src.items() if k not in ("url",)}, **rec}
        return rec

    @classmethod
    def _moving_mnist(cls, cfg, workdir: Path, pins: dict | None) -> "DataPlan":
        d = cfg.data
        length = d.in_len + d.out_len
        root = workdir / "moving_mnist"
        archives, starts, counts = {}, {}, {}
        for split, n in (("train", d.mnist_train), ("val", d.mnist_val), ("test", d.mnist_test)):
            url = root / f"{split}-{n}x{length}-seed{MNIST_SEEDS[split]}.zarr"
            if not url.exists():
                moving_mnist.write_archive(str(url), n, seq_len=length, size=cfg.model.height,
                                           seed=MNIST_SEEDS[split], images_path=mnist_images_path())
            arc = _open(str(url), {}, pins, "Moving MNIST archive")
            archives[split] = arc
            starts[split] = gap_free_starts(arc.times, arc.timestep_s, length)
            counts[split] = len(starts[split])
        rec = {"archive": str(root), "source": "moving_mnist", "seeds": MNIST_SEEDS, "counts": counts,
               "timestep_s": archives["train"].timestep_s}
        src = PlanArchive(0, str(root), archives, starts, 1.0, dict(rec, url=str(root)))
        return cls([src], d.in_len, d.out_len, (cfg.model.height, cfg.model.width), "intensity", rec)

    def _check(self) -> None:
        h, w = self.crop
        for src in self.sources:
            for arc in {id(a): a for a in src.archives.values()}.values():
                _, H, W = arc.shape
                if h > H or w > W:
                    raise UserError(f"model.height x model.width = {h}x{w} (the training crop) is larger than the "
                                    f"grid {H}x{W} of the archive {arc.url}; lower them"
                                    + (" (the crop must fit every archive of data.archives)"
                                       if len(self.sources) > 1 else ""))
        steps = {src.url: src.archives["train"].timestep_s for src in self.sources}
        if len(set(steps.values())) > 1:
            raise UserError("the archives have different time steps ("
                            + ", ".join(f"{u}: {s} s" for u, s in steps.items())
                            + "): a window would mean different lead times; train on archives of one time step")
        counts = self.counts()
        for split in ("train", "val"):
            if counts[split] == 0:
                per = {src.url: src.counts() for src in self.sources}
                raise UserError(
                    f"the {split} split has no windows of {self.in_len}+{self.out_len} frames "
                    f"({per if len(self.sources) > 1 else self.record.get('counts')}); use a longer archive, "
                    "shorter windows, or change data.split (block_hours, val_every, gap_steps)")

    # ------------------------------------------------------------------ what the trainers read
    @property
    def archives(self) -> dict[str, object]:
        """Split -> Archive of the first archive with windows in that split (with :attr:`starts`: its
        windows). One archive: simply that archive. Several: use :meth:`windows` for all of them."""
        return {s: self._first(s).archives[s] for s in SPLITS}

    @property
    def starts(self) -> dict[str, np.ndarray]:
        """Split -> window starts into ``archives[split]`` (see :attr:`archives`)."""
        return {s: self._first(s).starts[s] for s in SPLITS}

    def _first(self, split: str) -> PlanArchive:
        return next((src for src in self.sources if len(src.starts.get(split, ()))), self.sources[0])

    def windows(self, split: str) -> list[tuple[int, object, np.ndarray]]:
        """``(src, archive, starts)`` of every archive with windows in ``split`` (src: index in :attr:`sources`)."""
        return [(src.index, src.archives[split], src.starts[split]) for src in self.sources
                if len(src.starts.get(split, ()))]

    def counts(self) -> dict[str, int]:
        """Windows per split over all archives (each window once; training weights not applied)."""
        return {s: int(sum(len(src.starts.get(s, ())) for src in self.sources)) for s in SPLITS}

    def source_names(self) -> list[str] | None:
        """Short unique names of a multi-archive plan's archives (file name without ``.zarr``, metric-name
        safe), indexed like the rows' ``src``; None for one archive."""
        if len(self.sources) < 2:
            return None
        names = []
        for src in self.sources:
            stem = re.sub(r"[^A-Za-z0-9_.\-]", "-", archive_name(src.url))
            names.append(stem if stem not in names else f"{stem}-{src.index}")
        return names

    def counts_per_archive(self) -> list[dict]:
        """``[{"src", "url", "weight", "train", "val", "test"}, ...]``."""
        return [{"src": src.index, "url": src.url, "weight": src.weight, **src.counts()} for src in self.sources]

    def version(self) -> list[dict]:
        """The data this plan uses, per archive: ``{"url", "frames", "last_time", "meta_sha256"}`` (JSON-able).
        Store it with the run; pass it back as ``from_config(..., pinned=...)`` to plan on the same frames."""
        seen, out = set(), []
        for src in self.sources:
            for arc in src.archives.values():
                if arc.url not in seen:
                    seen.add(arc.url)
                    out.append(archive_version(arc))
        return out

    def memory_bytes(self, splits=SPLITS) -> int:
        """Bytes :meth:`memory_splits` will hold (float32 values + validity of every split's frame span)."""
        length = self.in_len + self.out_len
        return sum(MemorySplit.nbytes(src.archives[s], src.starts[s], length)
                   for src in self.sources for s in splits if len(src.starts.get(s, ())))

    def memory_splits(self, splits=SPLITS) -> dict:
        """Split -> :class:`convlstm_dist.data.memory.MultiMemorySplit` (frames read into memory once, one
        part per archive, training weights applied), for in-memory batches (``data.loader: memory``);
        splits without windows are left out."""
        out = {}
        for s in splits:
            if not self.counts()[s]:
                continue
            parts = [MemorySplit(src.archives[s], src.starts[s], self.in_len, self.out_len, self.crop)
                     if len(src.starts.get(s, ())) else None for src in self.sources]
            out[s] = MultiMemorySplit(parts, [src.weight for src in self.sources])
        return out

    def datasets(self, seed: int, clock_name: str | None, crops_per_window: int = 1, augment: bool = False,
                 read_retries: int | None = None, read_block_mb: float | None = None) -> dict:
        """``{"train", "val"}`` Ray datasets of compact rows (+ ``src``); training weighted and reshuffled per epoch.
        ``read_retries``: see ``datasource.read_with_retries`` (None: its default); retries of both
        datasets are noted on ``clock_name``'s clock. ``read_block_mb``: decoded frames per read task
        (``data.read_block_mb``; None: the default)."""
        from convlstm_dist.data.datasource import DEFAULT_READ_RETRIES, READ_BLOCK_MB, window_dataset

        retry = {"read_retries": DEFAULT_READ_RETRIES if read_retries is None else int(read_retries),
                 "notes_name": clock_name,
                 "read_block_mb": READ_BLOCK_MB if read_block_mb is None else read_block_mb}

        def sources(split, weighted):
            return [(src.archives[split], src.starts[split], src.weight if weighted else 1.0) for src in self.sources]

        return {
            "train": window_dataset(None, None, self.in_len, self.out_len, self.crop, seed=seed, shuffle=True,
                                    clock_name=clock_name, crops_per_window=crops_per_window, augment=augment,
                                    compact=True, sources=sources("train", True), **retry),
            "val": window_dataset(None, None, self.in_len, self.out_len, self.crop, seed=seed + 10_000,
                                  shuffle=False, fixed_epoch=0, compact=True, sources=sources("val", False), **retry),
        }
