"""Training windows from a Zarr archive, streamed through Ray Data.

Ray's built-in ``read_zarr`` reads Zarr v2 only; :class:`WindowDatasource` reads our v3
archive (``convlstm_dist.data.archive``) on local disk or ``s3://`` through Ray's
``Datasource`` API.

* **Read tasks are sized by bytes.** Window starts are grouped by the time chunk of their first
  frame, and one read task covers as many consecutive chunks as ``read_block_mb`` of decoded
  frames allow (``data.read_block_mb``; :func:`windows.chunks_per_task`). A task reads only the
  frames its windows touch, chunk by chunk, each frame once (:func:`samples.iter_windows`), and
  streams its rows out in blocks of at most one chunk's windows and ``OUT_BLOCK_BYTES``: the
  object store holds a few such blocks, never a whole task. A chunk that the last windows of one
  task reach into is read again by the next task (at most twice in all).
* **The window table travels once.** Archives, window starts and task bounds are one object in
  the object store (``ray.put`` when the dataset first plans its tasks); a read task carries only
  its slot and fetches the table once per worker process.
* **Rows** (one per window and crop): ``x`` (in_len, 1, h, w) and ``y`` (out_len, 1, h, w) in the
  model's range (``transforms``), NaN → 0; ``mask`` (out_len, 1, h, w) 1.0 where the target is
  valid; ``t0`` (window start index in its archive), ``cy``/``cx`` (crop corner), ``src`` (int16,
  the archive's index in the plan).
* **Several archives** (``sources``): read tasks per archive (a task never spans two), per-archive
  training weights applied per epoch (:mod:`convlstm_dist.data.mix`).
* **Epochs.** Which group a task reads and where it crops are drawn from ``(seed, epoch)``: the
  training loop tells the read tasks the epoch through a small named Ray actor
  (:class:`EpochClock`), so every epoch reshuffles the block order and re-crops, deterministically.
  Validation data uses a fixed epoch: always the same crops.

:func:`read_windows` (``convlstm_dist.data.samples``, re-exported here) is the same read without Ray.
"""

from __future__ import annotations

import copy
import functools
import sys
import time

import numpy as np
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from convlstm_dist.data.mix import epoch_units
from convlstm_dist.data.windows import chunks_per_task, group_by_chunks
from convlstm_dist.errors import UserError
from convlstm_dist.data.samples import iter_windows, load_block, read_windows  # noqa: F401  (read_windows re-exported)


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
    """Get or create the named :class:`EpochClock` actor, on the node of the process that asks (the
    driver): the run's clock must outlive any worker node, since the workers restarted after a node
    dies ask it for the epoch (seen on a three-node cluster: a clock on the lost node failed the run)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0)(EpochClock).options(name=name, get_if_exists=True,
                                                      scheduling_strategy=here).remote()


def _current_epoch(clock_name: str | None, fixed_epoch: int) -> int:
    if clock_name is None:
        return fixed_epoch
    return int(ray.get(ray.get_actor(clock_name).get.remote()))


DEFAULT_READ_RETRIES = 6
MAX_BACKOFF_S = 15.0


def retry_delays(retries: int) -> list[float]:
    """The waits between the tries of a read: 1, 2, 4, 8, 15, 15, ... s (6 retries: 45 s in all)."""
    return [min(MAX_BACKOFF_S, 2.0 ** i) for i in range(max(0, int(retries)))]


def _note(notes_name: str | None, line: str) -> None:
    """A line for the run's log: the worker's log (stderr) and, in training, the driver's terminal
    (through the run's :class:`EpochClock`)."""
    print(line, file=sys.stderr, flush=True)
    if notes_name is not None:
        try:
            ray.get(ray.get_actor(notes_name).note_line.remote(line), timeout=10)
        except Exception:  # noqa: BLE001 - a log line must never fail a read
            pass


def read_with_retries(read, what: str, retries: int = DEFAULT_READ_RETRIES, notes_name: str | None = None,
                      sleep=time.sleep):
    """``read()``, retried with backoff (:func:`retry_delays`) while the store cannot be reached (a
    ``UserError`` marked ``transient`` by ``storage.storage_error``: connection refused or reset,
    timeout, 502/503). Other errors (a wrong key, a missing object) fail at once. Each retry and a
    recovery are noted in the run's log; past the budget the error names the endpoint, the key and
    the frames, and says how to allow a longer outage (``data.read_retries``)."""
    t0 = time.monotonic()
    delays = retry_delays(retries)
    for attempt in range(len(delays) + 1):
        try:
            out = read()
        except UserError as exc:
            if not getattr(exc, "transient", False):
                raise
            key = getattr(exc, "key", None) or what
            if attempt == len(delays):
                raise UserError(f"cannot reach the storage endpoint {getattr(exc, 'endpoint', '?')} while reading "
                                f"{what} (key {key}): still unreachable after {attempt + 1} tries over "
                                f"{time.monotonic() - t0:.0f} s; check that the S3 server is running, or let runs "
                                f"ride out longer outages with a larger data.read_retries (now {retries})") from None
            _note(notes_name, f"[data] storage unreachable while reading {what} (key {key}): "
                              f"retry {attempt + 1}/{len(delays)} in {delays[attempt]:g} s")
            sleep(delays[attempt])
            continue
        if attempt:
            _note(notes_name, f"[data] storage answered again: read {what} after {attempt + 1} tries "
                              f"({time.monotonic() - t0:.0f} s)")
        return out


def open_with_retries(archive, retries: int = DEFAULT_READ_RETRIES, notes_name: str | None = None,
                      sleep=time.sleep):
    """``archive`` with the metadata a read task needs (group, time coordinate, chunking, shape) read,
    retried like a read of frames (:func:`read_with_retries`): a read task in a worker process that has
    not opened the archive yet (a new process, a restarted worker group) may start while the store is
    down. A failed open leaves nothing half-open: the next try opens the group afresh."""
    def read():
        archive.time_chunk, archive.shape  # noqa: B018 - opens the group and reads the time coordinate
        return archive

    return read_with_retries(read, f"the metadata of {archive.url}", retries, notes_name, sleep)


OUT_BLOCK_BYTES = 32 << 20
"""Largest block a read task emits: a task streams its rows out in blocks of at most this size (and of
at most one time chunk's windows), so the object store holds a few of them, never a whole task."""

_TABLES: dict = {}  # per worker process: the window table of a dataset, fetched once (ObjectRef hex -> table)


def _table(ref):
    key = ref.hex()
    t = _TABLES.get(key)
    if t is None:
        if len(_TABLES) >= 4:  # a long-lived worker serves a few datasets (train, val) at a time
            _TABLES.pop(next(iter(_TABLES)))
        t = _TABLES[key] = ray.get(ref)
    return t


def _read_task_rows(table_ref, slot, in_len, out_len, crop, seed, shuffle, clock_name, fixed_epoch, crops_per_window,
                    augment, compact, max_rows, read_retries, notes_name):
    """Read task ``slot`` (a ``functools.partial`` of this module-level function, which pickles by
    reference, so a task carries only its slot and settings): at run time it looks up the epoch, draws
    the epoch's units (task groups of every archive, weighted; :mod:`convlstm_dist.data.mix`) and
    yields the blocks of unit number ``slot``'s rows. The window table (archives, starts, task bounds,
    weights) is one object in the object store, fetched once per worker process. Every read of frames
    is retried while the store is unreachable (:func:`read_with_retries`)."""
    sources = _table(table_ref)
    epoch = _current_epoch(clock_name, fixed_epoch)
    units = epoch_units([len(s["bounds"]) - 1 for s in sources], [s["weight"] for s in sources], seed, epoch,
                        shuffle)
    i, g, r = (int(v) for v in units[slot])
    src = sources[i]
    starts = src["starts"][src["bounds"][g]:src["bounds"][g + 1]]
    archive = open_with_retries(src["archive"], read_retries, notes_name)

    current = {}  # the archive this task reads through; a failed read swaps in a fresh copy (new connections)

    def load(archive, lo, hi):
        def read():
            a = current.setdefault("archive", archive)
            try:
                return load_block(a, lo, hi)
            except Exception:
                current["archive"] = copy.copy(archive)
                raise

        return read_with_retries(read, f"frames {lo}..{hi - 1} of {archive.url}", read_retries, notes_name)

    for batch in iter_windows(archive, starts, in_len, out_len, crop, seed, epoch, crops_per_window, augment,
                              compact, draw_offset=r * crops_per_window, max_rows=max_rows[i], load=load):
        batch["src"] = np.full(len(batch["t0"]), i, dtype=np.int16)
        yield BlockAccessor.batch_to_block(batch)


def frame_bytes(archive) -> int:
    """Bytes of one decoded frame (float32) of ``archive``: the unit of ``data.read_block_mb``."""
    _, H, W = archive.shape
    return 4 * H * W


class WindowDatasource(Datasource):
    """Ray Data datasource over the windows of one or several archives (see module docstring).

    ``sources``: a list of ``(archive, starts, weight)``, or pass ``archive, starts`` for one archive.
    Read tasks never span archives: each reads one group of consecutive time chunks of one archive,
    as many as ``read_block_bytes`` of decoded frames allow (:func:`windows.chunks_per_task`; None:
    one chunk per task). Rows carry ``src`` (int16), the index of their archive in ``sources``.
    Training (``shuffle``) applies the weights at the level of task groups (``mix.epoch_units``);
    validation reads every window once."""

    def __init__(self, archive=None, starts=None, in_len=1, out_len=1, crop=None, seed=0, shuffle=False,
                 clock_name=None, fixed_epoch=0, crops_per_window=1, augment=False, compact=False, sources=None,
                 read_block_bytes=None, read_retries=DEFAULT_READ_RETRIES, notes_name=None):
        super().__init__()
        self.read_retries, self.notes_name = int(read_retries), notes_name if notes_name is not None else clock_name
        if sources is None:
            sources = [(archive, starts, 1.0)]
        self.augment, self.compact = augment, compact
        length = in_len + out_len
        self.chunks_per_task = [1 if read_block_bytes is None else
                                chunks_per_task(frame_bytes(a), a.time_chunk, length, int(read_block_bytes))
                                for a, _, _ in sources]
        self.sources = [(a, group_by_chunks(np.sort(np.asarray(st)), a.time_chunk, k), float(w))
                        for (a, st, w), k in zip(sources, self.chunks_per_task)]
        self.archive = self.sources[0][0]
        self.groups = [g for _, gs, _ in self.sources for g in gs]  # every group once (sizes, estimates)
        self.in_len, self.out_len = in_len, out_len
        self.crop = crop
        self.seed, self.shuffle = seed, shuffle
        self.clock_name, self.fixed_epoch = clock_name, fixed_epoch
        self.crops_per_window = crops_per_window
        self._row_bytes = []
        for a, _, _ in self.sources:
            _, H, W = a.shape
            h, w = crop or (H, W)
            self._row_bytes.append(((2 * (in_len + out_len) + out_len) if compact else 4 * (in_len + 2 * out_len))
                                   * h * w + 26)
        self.max_rows = [max(crops_per_window, OUT_BLOCK_BYTES // rb) for rb in self._row_bytes]
        self._table_ref = None

    def get_name(self) -> str:
        return "ZarrWindows"

    def out_block_bytes(self) -> int:
        """The largest block a read task emits (bytes; rows of at most one time chunk and OUT_BLOCK_BYTES)."""
        return int(max(min(m, a.time_chunk * self.crops_per_window) * rb
                       for m, rb, (a, _, _) in zip(self.max_rows, self._row_bytes, self.sources)))

    def task_out_bytes(self) -> int:
        """The rows (bytes) of the largest read task: what one task puts into the object store in all."""
        return int(max((len(g) * self.crops_per_window * rb
                        for (_, gs, _), rb in zip(self.sources, self._row_bytes) for g in gs), default=0))

    def _units(self):
        # the epoch's count of units is the same in every epoch: plan the tasks with epoch 0
        return epoch_units([len(gs) for _, gs, _ in self.sources], [w for _, _, w in self.sources],
                           self.seed, 0, self.shuffle)

    def _table(self):
        """The window table in the object store (once per datasource; every read task fetches it by reference)."""
        if self._table_ref is None:
            table = []
            for a, gs, w in self.sources:
                sizes = np.array([len(g) for g in gs], dtype=np.int64)
                table.append({"archive": a, "weight": w,
                              "starts": np.concatenate(gs) if gs else np.zeros(0, np.int64),
                              "bounds": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)})
            self._table_ref = ray.put(table)
        return self._table_ref

    def estimate_inmemory_data_size(self) -> int:
        return int(sum(len(self.sources[i][1][g]) * self.crops_per_window * self._row_bytes[i]
                       for i, g, _ in self._units()))

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        units = self._units()
        rows_of = [len(self.sources[i][1][g]) * self.crops_per_window for i, g, _ in units]
        mean_rows = int(np.mean(rows_of)) if rows_of else 0
        row_bytes = int(np.mean([self._row_bytes[i] for i, _, _ in units])) if len(units) else 0
        ref = self._table()
        tasks = []
        for slot in range(len(units)):
            rows = rows_of[slot] if not self.shuffle else mean_rows
            meta = BlockMetadata(num_rows=rows, size_bytes=rows * row_bytes, input_files=None, exec_stats=None)
            fn = functools.partial(_read_task_rows, ref, slot, self.in_len, self.out_len, self.crop, self.seed,
                                   self.shuffle, self.clock_name, self.fixed_epoch, self.crops_per_window,
                                   self.augment, self.compact, self.max_rows, self.read_retries, self.notes_name)
            tasks.append(ReadTask(fn, meta, per_task_row_limit=per_task_row_limit))
        return tasks


READ_BLOCK_MB = 96.0
"""Default of ``data.read_block_mb`` (see :func:`window_dataset`; measured in
benchmarks/results/data-scale-2026-12-04.md)."""


def window_dataset(archive, starts, in_len, out_len, crop=None, seed=0, shuffle=False, clock_name=None,
                   fixed_epoch=0, crops_per_window=1, augment=False, compact=False, sources=None,
                   read_block_mb: float | None = READ_BLOCK_MB, read_retries=DEFAULT_READ_RETRIES, notes_name=None):
    """A ``ray.data.Dataset`` of training windows (rows as in the module docstring plus ``src``;
    ``compact``: float16 values and a uint8 mask, see ``samples.cut_windows``). Several archives:
    ``sources=[(archive, starts, weight), ...]`` (``archive``/``starts`` then ignored).
    ``read_block_mb``: decoded frames (MiB, float32) one read task covers; it sets how many
    consecutive time chunks a task reads (None: one chunk per task). ``read_retries``: retries of a
    read while the store is unreachable (:func:`read_with_retries`); ``notes_name``: the run's
    :class:`EpochClock` that gets those log lines (default ``clock_name``)."""
    if sources is None:
        sources = [(archive, starts, 1.0)]
    if sum(len(st) for _, st, _ in sources) == 0:
        raise ValueError("no windows to read: the split is empty (check data.split and the archive's time range)")
    src = WindowDatasource(in_len=in_len, out_len=out_len, crop=crop, seed=seed, shuffle=shuffle,
                           clock_name=clock_name, fixed_epoch=fixed_epoch, crops_per_window=crops_per_window,
                           augment=augment, compact=compact, sources=sources,
                           read_block_bytes=None if read_block_mb is None else int(read_block_mb * (1 << 20)),
                           read_retries=read_retries, notes_name=notes_name)
    return ray.data.read_datasource(src, override_num_blocks=max(1, len(src._units())))
