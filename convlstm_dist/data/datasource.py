"""Training windows from a Zarr archive, streamed through Ray Data.

Ray's built-in ``read_zarr`` reads Zarr v2 only; :class:`WindowDatasource` reads our v3
archive (``convlstm_dist.data.archive``) on local disk or ``s3://`` through Ray's
``Datasource`` API.

* **Read tasks are chunk-aligned.** Window starts are grouped by the time chunk of their first
  frame; one read task reads its group's frames in one call (its chunk plus the ``length - 1``
  frames the last windows reach into the next chunk) and emits every window of the group.
* **Rows** (one per window and crop): ``x`` (in_len, 1, h, w) and ``y`` (out_len, 1, h, w) in the
  model's range (``transforms``), NaN → 0; ``mask`` (out_len, 1, h, w) 1.0 where the target is
  valid; ``t0`` (window start index), ``cy``/``cx`` (crop corner).
* **Epochs.** Which group a task reads and where it crops are drawn from ``(seed, epoch)``: the
  training loop tells the read tasks the epoch through a small named Ray actor
  (:class:`EpochClock`), so every epoch reshuffles the block order and re-crops, deterministically.
  Validation data uses a fixed epoch: always the same crops.

:func:`read_windows` (``convlstm_dist.data.samples``, re-exported here) is the same read without Ray.
"""

from __future__ import annotations

import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from convlstm_dist.data.samples import read_windows  # noqa: F401  (re-exported)
from convlstm_dist.data.windows import group_by_chunk


class EpochClock:
    """Small shared state of one run (a named Ray actor, 0 CPU): the current epoch for the read
    tasks, why training stopped early and the progress lines (set by rank 0, read by the driver)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.stop = None
        self.lines: list[str] = []

    def note_line(self, line: str) -> None:
        """A progress line from rank 0, printed by the driver (worker output stays in Ray's logs)."""
        self.lines.append(str(line))

    def lines_since(self, n: int) -> list[str]:
        return self.lines[n:]

    def set(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get(self) -> int:
        return self.epoch

    def note_stop(self, reason: str) -> None:
        self.stop = reason

    def stop_reason(self):
        return self.stop


def epoch_clock(name: str):
    """Get or create the named :class:`EpochClock` actor."""
    return ray.remote(num_cpus=0)(EpochClock).options(name=name, get_if_exists=True).remote()


def _current_epoch(clock_name: str | None, fixed_epoch: int) -> int:
    if clock_name is None:
        return fixed_epoch
    return int(ray.get(ray.get_actor(clock_name).get.remote()))


def _read_task_fn(archive, groups, slot, in_len, out_len, crop, seed, shuffle, clock_name, fixed_epoch, cpw,
                  augment=False, compact=False):
    def fn():
        epoch = _current_epoch(clock_name, fixed_epoch)
        g = slot
        if shuffle:
            g = int(np.random.default_rng([seed, epoch, 7919]).permutation(len(groups))[slot])
        batch = read_windows(archive, groups[g], in_len, out_len, crop, seed, epoch, cpw, augment, compact=compact)
        return [BlockAccessor.batch_to_block(batch)]

    return fn


class WindowDatasource(Datasource):
    """Ray Data datasource over the windows ``starts`` of an archive (see module docstring)."""

    def __init__(self, archive, starts, in_len, out_len, crop=None, seed=0, shuffle=False,
                 clock_name=None, fixed_epoch=0, crops_per_window=1, augment=False, compact=False):
        super().__init__()
        self.augment, self.compact = augment, compact
        self.archive = archive
        self.groups = group_by_chunk(np.sort(np.asarray(starts)), archive.time_chunk)
        self.in_len, self.out_len = in_len, out_len
        self.crop = crop
        self.seed, self.shuffle = seed, shuffle
        self.clock_name, self.fixed_epoch = clock_name, fixed_epoch
        self.cpw = crops_per_window
        _, H, W = archive.shape
        h, w = crop or (H, W)
        self._row_bytes = ((2 * (in_len + out_len) + out_len) if compact else 4 * (in_len + 2 * out_len)) * h * w + 24

    def get_name(self) -> str:
        return "ZarrWindows"

    def estimate_inmemory_data_size(self) -> int:
        return sum(len(g) for g in self.groups) * self.cpw * self._row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        tasks = []
        mean_rows = int(np.mean([len(g) for g in self.groups]) * self.cpw) if self.groups else 0
        for slot, g in enumerate(self.groups):
            rows = (len(g) * self.cpw) if not self.shuffle else mean_rows
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * self._row_bytes, input_files=None, exec_stats=None)
            fn = _read_task_fn(self.archive, self.groups, slot, self.in_len, self.out_len, self.crop, self.seed,
                               self.shuffle, self.clock_name, self.fixed_epoch, self.cpw, self.augment, self.compact)
            tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks


def window_dataset(archive, starts, in_len, out_len, crop=None, seed=0, shuffle=False, clock_name=None,
                   fixed_epoch=0, crops_per_window=1, augment=False, compact=False):
    """A ``ray.data.Dataset`` of training windows (rows as in the module docstring; ``compact``:
    float16 values and a uint8 mask, see ``samples.cut_windows``)."""
    if len(starts) == 0:
        raise ValueError("no windows to read: the split is empty (check data.split and the archive's time range)")
    src = WindowDatasource(archive, starts, in_len, out_len, crop, seed, shuffle, clock_name, fixed_epoch,
                           crops_per_window, augment, compact)
    return ray.data.read_datasource(src, override_num_blocks=max(1, len(src.groups)))
