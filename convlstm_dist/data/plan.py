"""From a config to training data: archives, window index per split, Ray datasets.

``DataPlan.from_config`` runs on the driver *before* any cluster work, so a missing archive,
an empty split or a crop larger than the grid is a clear error up front.

* ``data.source: archive`` — one archive (local path or ``s3://``), split by time blocks
  (``data.windows``).
* ``data.source: moving_mnist`` — three generated archives (train/val/test, fixed seeds) under
  ``<workdir>/moving_mnist/``, created on first use; every 20-frame sequence is one window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.storage import exists, is_remote, storage_options_for
from convlstm_dist.data.windows import SplitRule, WindowIndex, build_index
from convlstm_dist.errors import UserError

MNIST_SEEDS = {"train": 1, "val": 2, "test": 3}


def default_archive_url(workdir: str | Path) -> str:
    return str(Path(workdir) / "archive.zarr")


def _threshold_column(archive, thr_mmh: float) -> np.ndarray:
    st = archive.stats
    thr = np.asarray(st["thresholds"], dtype=float)
    j = int(np.argmin(np.abs(thr - thr_mmh)))
    if abs(thr[j] - thr_mmh) > 1e-6:
        raise UserError(f"data.wet_threshold_mmh={thr_mmh} is not one of the archive's thresholds {thr.tolist()}")
    return np.asarray(st["wet_fraction"])[:, j]


@dataclass
class DataPlan:
    archives: dict[str, object]           # split -> Archive
    starts: dict[str, np.ndarray]         # split -> window start indices into that archive
    in_len: int
    out_len: int
    crop: tuple[int, int]
    variable: str
    record: dict = field(default_factory=dict)  # JSON-able: what was chosen (logged with the run)

    @classmethod
    def from_config(cls, cfg, workdir: str | Path = "workdir") -> "DataPlan":
        d = cfg.data
        crop = (cfg.model.height, cfg.model.width)
        if d.source == "moving_mnist":
            plan = cls._moving_mnist(cfg, Path(workdir))
        else:
            url = d.archive or default_archive_url(workdir)
            opts = storage_options_for(url, d.endpoint_url)
            if not is_remote(url) and not Path(url).exists():
                raise UserError(f"archive {url} does not exist: create it with `convlstm-dist ingest --archive {url} ...` "
                                "or set data.archive")
            if is_remote(url) and not exists(url, opts):
                raise UserError(f"archive {url} does not exist (or is not readable with the current credentials)")
            arc = open_archive(url, opts)
            rule = SplitRule(d.split.block_hours, d.split.val_every, d.split.test_every, d.split.gap_steps)
            wet = _threshold_column(arc, d.wet_threshold_mmh) if d.min_wet_fraction > 0 else None
            idx: WindowIndex = build_index(arc.times, arc.timestep_s, d.in_len, d.out_len, rule, wet,
                                           d.min_wet_fraction, d.wet_threshold_mmh)
            plan = cls({s: arc for s in idx.starts}, idx.starts, d.in_len, d.out_len, crop, arc.variable,
                       {"archive": url, **idx.summary()})
        plan._check()
        return plan

    @classmethod
    def _moving_mnist(cls, cfg, workdir: Path) -> "DataPlan":
        from convlstm_dist.data import moving_mnist
        from convlstm_dist.data.sample import mnist_images_path
        from convlstm_dist.data.windows import gap_free_starts

        d = cfg.data
        length = d.in_len + d.out_len
        root = workdir / "moving_mnist"
        archives, starts, counts = {}, {}, {}
        for split, n in (("train", d.mnist_train), ("val", d.mnist_val), ("test", d.mnist_test)):
            url = root / f"{split}-{n}x{length}-seed{MNIST_SEEDS[split]}.zarr"
            if not url.exists():
                moving_mnist.write_archive(str(url), n, seq_len=length, size=cfg.model.height,
                                           seed=MNIST_SEEDS[split], images_path=mnist_images_path())
            arc = open_archive(str(url))
            archives[split] = arc
            starts[split] = gap_free_starts(arc.times, arc.timestep_s, length)
            counts[split] = len(starts[split])
        return cls(archives, starts, d.in_len, d.out_len, (cfg.model.height, cfg.model.width), "intensity",
                   {"archive": str(root), "source": "moving_mnist", "seeds": MNIST_SEEDS, "counts": counts})

    def _check(self) -> None:
        arc = self.archives["train"]
        _, H, W = arc.shape
        h, w = self.crop
        if h > H or w > W:
            raise UserError(f"model.height x model.width = {h}x{w} (the training crop) is larger than the "
                            f"archive grid {H}x{W}; lower them")
        for split in ("train", "val"):
            if len(self.starts[split]) == 0:
                raise UserError(
                    f"the {split} split has no windows of {self.in_len}+{self.out_len} frames "
                    f"({self.record.get('counts')}); use a longer archive, shorter windows, or change "
                    "data.split (block_hours, val_every, gap_steps)")

    def memory_bytes(self) -> int:
        """Bytes :meth:`memory_splits` will hold (float32 values + validity of every split's frame span)."""
        from convlstm_dist.data.memory import MemorySplit

        length = self.in_len + self.out_len
        return sum(MemorySplit.nbytes(self.archives[s], self.starts[s], length) for s in self.starts
                   if len(self.starts[s]))

    def memory_splits(self) -> dict:
        """Split -> :class:`convlstm_dist.data.memory.MemorySplit` (frames read into memory once),
        for the single-process backend; splits without windows are left out."""
        from convlstm_dist.data.memory import MemorySplit

        return {s: MemorySplit(self.archives[s], self.starts[s], self.in_len, self.out_len, self.crop)
                for s in ("train", "val", "test") if s in self.starts and len(self.starts[s])}

    def counts(self) -> dict[str, int]:
        return {s: int(len(v)) for s, v in self.starts.items()}

    def datasets(self, seed: int, clock_name: str | None, crops_per_window: int = 1, augment: bool = False) -> dict:
        from convlstm_dist.data.datasource import window_dataset

        return {
            "train": window_dataset(self.archives["train"], self.starts["train"], self.in_len, self.out_len,
                                    self.crop, seed=seed, shuffle=True, clock_name=clock_name,
                                    crops_per_window=crops_per_window, augment=augment, compact=True),
            "val": window_dataset(self.archives["val"], self.starts["val"], self.in_len, self.out_len,
                                  self.crop, seed=seed + 10_000, shuffle=False, fixed_epoch=0, compact=True),
        }
