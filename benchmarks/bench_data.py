"""Data-path throughput at scale: training samples delivered by the plain single-process loop and by
Ray Data (1 and 2 CPUs) from a large archive, on local disk and on a loopback SeaweedFS S3 server.

    python benchmarks/bench_data.py                      # the at-scale run (below)
    python benchmarks/bench_data.py --samples 3000 --no-s3 --crops-per-window 4 ...
    python benchmarks/bench_data.py --sample-archive [--epochs 2] [--crop 128] [--in-len 5] [--out-len 15] [--no-s3]

**At scale** (the default). The archive is ``benchmarks/make_archive.py``'s: ``--frames`` (20,000)
frames of 512x512, 5-minute steps, chunks (16, 256, 256), shards of 256 frames, real radar
events advected and rotated. It is built once into the cache folder (``--cache``, env
``CONVLSTM_DIST_BENCH_CACHE``, default ``~/.cache/convlstm-dist/bench``) and copied once into a
SeaweedFS server whose data folder lives there too, so a second run starts at once.

Every configuration reads the *train* windows (default split rule) of 5+15 frames in the order
the training pipe uses (read tasks = groups of windows starting in one time chunk, shuffled by
``(seed, epoch)``), cuts ``--crops-per-window`` 128x128 crops per window as compact rows
(float16 x/y, uint8 mask: ``compact=True``) and stops after ``--samples`` samples:

* ``plain``: one process, ``samples.read_windows`` per one-chunk group (what ``train --local`` does);
* ``ray N``: ``datasource.window_dataset(..., shuffle=True, compact=True)`` (what ``DataPlan.datasets``
  builds: read tasks over ``data.read_block_mb`` of frames, 4 time chunks here) under
  ``ray.init(num_cpus=N)``, consumed with ``iter_batches``; and once (local, 1 CPU) with one chunk per
  task, the read path before 2026-12-04 (``--no-before`` skips it).

Reported per configuration: samples/s and MB/s of delivered rows (after the first batch), bytes
per sample, time to first batch from ``ray.init`` (cold) and, on the running Ray, from the call that
builds a second dataset (warm), peak RSS of the benchmark's process tree (driver + Ray's processes +
the S3 server; RSS counts shared pages in every process that maps them) and per kind of process,
peak object-store use and spilled bytes (Ray's memory summary, sampled every 0.5 s), CPU seconds per
delivered sample per kind of process (read tasks, consumer, Ray services, Ray Data actors, starting
workers; from the dataset's build to the last batch), and for the plain loop the storage reads behind
each sample (requests and bytes, counted at the zarr store). The object store is sized from the data
(``store_bytes_for``: read CPUs + 1 tasks' rows), not fixed. "per CPU vs plain" divides by the Ray
CPUs; on this 2-core machine the driver that consumes the batches runs beside them. The memory check
reads 5x the 1-CPU object store. fsspec's own caches are not used: with zarr 3.1 on this
sharded archive ``simplecache::``/``filecache::`` fail on the first read (OSError EINVAL on the
shard index's suffix range) and ``blockcache::`` fails from a second handle in one process
(see benchmarks/results/data-scale-2026-11-29.md). The result lines at the end:
``first_batch_warm_s=``, ``first_batch_cold_s=``, ``cpu_s_per_sample_*=``, then
``ray_over_plain_per_cpu_s3=X.XX`` and last ``ray_over_plain_per_cpu=X.XX``: Ray Data with 1 CPU
against the plain loop (S3, local archive).

**Sample archive** (``--sample-archive``): the earlier benchmark on the shipped KNMI sample (92
frames 765x700), full epochs, ratios printed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

CACHE_ENV = "CONVLSTM_DIST_BENCH_CACHE"
BUCKET = "convlstm-bench"
MIB = 1 << 20


# =============================================================================================
# measurement helpers
# =============================================================================================

class StoreCounter:
    """Counts the requests and bytes zarr asks of its store (local files or fsspec/S3), in this process."""

    def __init__(self):
        self.requests = 0
        self.bytes = 0
        self._orig = {}

    def __enter__(self):
        import zarr.storage

        for cls in (zarr.storage.LocalStore, zarr.storage.FsspecStore):
            orig = cls.get
            self._orig[cls] = orig

            async def get(store, key, prototype=None, byte_range=None, _orig=orig):
                buf = await _orig(store, key, prototype, byte_range)
                if buf is not None and not key.endswith("zarr.json"):
                    self.requests += 1
                    self.bytes += len(buf)
                return buf

            cls.get = get
        return self

    def __exit__(self, *exc):
        for cls, orig in self._orig.items():
            cls.get = orig


def _kind(proc) -> str:
    """What a process of the benchmark's tree is doing now, by its title: a Ray read task, an idle (or
    starting) Ray worker, one of Ray Data's actors, Ray's own services, the S3 server."""
    try:
        name = proc.name()
        title = " ".join(proc.cmdline()[:3])
    except Exception:  # gone or not readable: not ours to classify
        return "other"
    if "weed" in name or "weed" in title:
        return "s3 server"
    if title.startswith("ray::Read") or name.startswith("ray::Read"):
        return "ray read tasks"
    if title.startswith("ray::IDLE") or "default_worker.py" in title:
        return "ray idle workers"
    if title.startswith("ray::") or name.startswith("ray::"):
        return "ray actors"  # Ray Data's stats and autoscaling actors
    return "ray services"  # raylet, gcs_server, agents, log monitor


class MemorySampler:
    """Every 0.5 s: peak RSS of this process and of its whole process tree (also per kind of process),
    Ray's object-store use and spilled bytes, and the CPU time of every process of the tree (so that
    read tasks, the consumer and Ray's services can be costed apart)."""

    def __init__(self, ray_address: str | None = None, period_s: float = 0.5):
        self.addr, self.period = ray_address, period_s
        self.peak_driver = self.peak_tree = 0
        self.peak_plasma = self.spilled = 0
        self.peak_kind: dict[str, int] = {}
        self.own_cpu = 0.0
        self._last: dict[int, float] = {}
        self._cpu_kind: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        import psutil

        me = psutil.Process()
        rss = me.memory_info().rss
        tree = rss
        per: dict[str, int] = {"driver (consumer)": rss}
        for c in me.children(recursive=True):
            try:
                kind = _kind(c)
                r = c.memory_info().rss
                t = c.cpu_times()
            except psutil.Error:
                continue
            tree += r
            per[kind] = per.get(kind, 0) + r
            # CPU since the last sample goes to what the process is now (a worker's title changes with its task)
            now = t.user + t.system
            last = self._last.get(c.pid, 0.0)
            self._cpu_kind[kind] = self._cpu_kind.get(kind, 0.0) + now - last
            self._last[c.pid] = now
        self.peak_driver = max(self.peak_driver, rss)
        self.peak_tree = max(self.peak_tree, tree)
        for k, v in per.items():
            self.peak_kind[k] = max(self.peak_kind.get(k, 0), v)
        if self.addr:
            with contextlib.suppress(Exception):  # a missed sample is not an error
                from ray._private.internal_api import memory_summary

                text = memory_summary(self.addr, stats_only=True)
                m = re.search(r"Plasma memory usage (\d+) MiB", text)
                if m:
                    self.peak_plasma = max(self.peak_plasma, int(m.group(1)) * MIB)
                m = re.search(r"Spilled (\d+) MiB", text)
                if m:
                    self.spilled = max(self.spilled, int(m.group(1)) * MIB)

    def mark(self):
        """Start the CPU count here (children's CPU time so far is not counted)."""
        with self._lock:
            self._sample()
            self._cpu_kind = {}

    def child_cpu(self) -> dict[str, float]:
        """CPU seconds per kind of child process since :meth:`mark` (by what each process was doing at
        each 0.5 s sample; processes seen by the sampler)."""
        with self._lock:
            self._sample()
            return dict(self._cpu_kind)

    def _run(self):
        t = time.thread_time()
        while not self._stop.is_set():
            with self._lock:
                self._sample()
            self.own_cpu = time.thread_time() - t  # the sampler's CPU (not the consumer's)
            self._stop.wait(self.period)

    def __enter__(self):
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        with self._lock:
            self._sample()


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


def row_bytes(batch: dict) -> int:
    return int(sum(v.nbytes for v in batch.values()))


def result(name, where, cpus, n, nbytes, t_first, t_end, t_start, mem, extra=None) -> dict:
    """One configuration's numbers; rates are measured after the first batch (steady state)."""
    span = max(t_end - t_first[0], 1e-9)
    r = {"archive": where, "path": name, "cpus": cpus, "samples": n,
         "samples_per_s": (n - t_first[1]) / span, "mb_per_s": (nbytes - t_first[2]) / span / 1e6,
         "bytes_per_sample": nbytes / max(n, 1), "first_batch_s": t_first[0] - t_start,
         "wall_s": t_end - t_start, "peak_rss_driver_mb": mem.peak_driver / MIB,
         "peak_rss_tree_mb": mem.peak_tree / MIB, "peak_object_store_mb": mem.peak_plasma / MIB,
         "spilled_mb": mem.spilled / MIB, "load_avg_1min": os.getloadavg()[0]}
    r.update(extra or {})
    return r


# =============================================================================================
# the two read paths
# =============================================================================================

def task_groups(archive, starts, chunks_per_task: int = 1):
    from convlstm_dist.data.windows import group_by_chunk

    return group_by_chunk(np.sort(np.asarray(starts)), archive.time_chunk * chunks_per_task)


def plain_run(archive, starts, a, where, seed=0, epoch=0, chunks_per_task=1, name="plain loop") -> dict:
    """The single-process loop: read_windows over the read-task groups in the pipe's shuffled order."""
    from convlstm_dist.data.archive import Archive
    from convlstm_dist.data.samples import read_windows

    arc = Archive(archive.url, archive.storage_options)  # a fresh handle: opening counts, as in a task
    groups = task_groups(archive, starts, chunks_per_task)
    order = np.random.default_rng([seed, epoch, 7919]).permutation(len(groups))
    n = nbytes = 0
    first = None
    read_cpu = 0.0
    with MemorySampler() as mem, StoreCounter() as ctr:
        cpu0 = _cpu_self()
        t0 = time.perf_counter()
        for gi in order:
            c = _cpu_self()
            b = read_windows(arc, groups[gi], a.in_len, a.out_len, (a.crop, a.crop), seed, epoch,
                             a.crops_per_window, compact=True)
            read_cpu += _cpu_self() - c
            n += len(b["t0"])
            nbytes += row_bytes(b)
            if first is None:
                first = (time.perf_counter(), n, nbytes)
            if n >= a.samples:
                break
        t1 = time.perf_counter()
        cpu = _cpu_self() - cpu0
    return result(name, where, 1, n, nbytes, first, t1, t0, mem,
                  {"store_requests_per_sample": ctr.requests / n, "store_bytes_per_sample": ctr.bytes / n,
                   "cpu_s_per_sample": cpu / n, "read_cpu_s_per_sample": read_cpu / n,
                   "consumer_cpu_s_per_sample": (cpu - read_cpu) / n})


def store_bytes_for(task_out_bytes: int, num_cpus: int, batch_bytes: int) -> int:
    """The object store a stream gets, from its block size: the rows of one read task per read CPU and
    one more task's, plus the consumer's current and prefetched batch. Measured (2026-12-04): Ray Data
    reads a running task's blocks out of its generator ahead of the consumer, so a read task's whole
    output can sit in the store; a store sized in output blocks (8 per read CPU + 8) spilled with
    tasks over 6 chunks and 1 read CPU (benchmarks/results/data-scale-2026-12-04.md)."""
    return max(256 * MIB, (num_cpus + 1) * task_out_bytes + 2 * batch_bytes)


def ray_run(archive, starts, a, where, num_cpus, object_store_bytes=None, samples=None, read_block_mb="default",
            name=None, warm=True) -> dict:
    """Ray Data: window_dataset (as DataPlan.datasets builds it), consumed with iter_batches.

    Times: ``first_batch_s`` (cold) from before ``ray.init``; ``first_batch_warm_s`` from the call that
    builds a second dataset on the running Ray to its first batch. CPU: the driver (the consumer:
    fetching blocks and forming batches), Ray's worker processes (the read tasks) and Ray's services,
    from the first dataset's build to its last batch."""
    import ray

    from convlstm_dist.data.datasource import READ_BLOCK_MB, WindowDatasource, window_dataset

    samples = samples or a.samples
    block_mb = READ_BLOCK_MB if read_block_mb == "default" else read_block_mb
    src = WindowDatasource(archive, starts, a.in_len, a.out_len, (a.crop, a.crop), 0, True, None, 0,
                           a.crops_per_window, False, True,
                           read_block_bytes=None if block_mb is None else int(block_mb * MIB))
    out_block = src.out_block_bytes()
    batch_bytes = a.batch_size * src._row_bytes[0]
    if object_store_bytes is None:
        object_store_bytes = store_bytes_for(src.task_out_bytes(), num_cpus, batch_bytes)

    def build(seed):
        return window_dataset(archive, starts, a.in_len, a.out_len, (a.crop, a.crop), seed=seed, shuffle=True,
                              crops_per_window=a.crops_per_window, compact=True, read_block_mb=block_mb)

    tmp = tempfile.mkdtemp(prefix="bd-", dir="/tmp")
    t0 = time.perf_counter()
    for attempt in range(1, 4):  # on an overloaded machine the raylet can miss ray.init's fixed 30 s start-up wait
        try:
            ray.init(num_cpus=num_cpus, object_store_memory=int(object_store_bytes), include_dashboard=False,
                     log_to_driver=False, _temp_dir=tmp, logging_level="ERROR")
            break
        except Exception as e:  # noqa: BLE001  (Ray raises a bare Exception for this)
            if "timed out during startup" not in str(e) or attempt == 3:
                raise
            print(f"  ray.init timed out (attempt {attempt}, load {os.getloadavg()[0]:.0f}); again", flush=True)
            ray.shutdown()
    init_s = time.perf_counter() - t0  # the cold first batch counts every attempt
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        n = nbytes = 0
        first = None
        addr = ray.get_runtime_context().gcs_address
        with MemorySampler(addr) as mem:
            # CPU from the dataset's build to the last batch, divided by the samples delivered: worker
            # start-up included (blocks read ahead before the first batch would be missed by a count
            # that starts at the first batch)
            mem.mark()
            cpu0, own0 = _cpu_self(), mem.own_cpu
            ds = build(0)
            for b in ds.iter_batches(batch_size=a.batch_size, batch_format="numpy"):
                n += len(b["t0"])
                nbytes += row_bytes(b)
                if first is None:
                    first = (time.perf_counter(), n, nbytes)
                if n >= samples:
                    break
            t1 = time.perf_counter()
            cpu_driver = _cpu_self() - cpu0 - (mem.own_cpu - own0)
            child = mem.child_cpu()
            steady = n
            warm_s = None
            if warm:  # a second dataset on the running Ray: build to first batch
                del ds
                tw = time.perf_counter()
                for _ in build(1).iter_batches(batch_size=a.batch_size, batch_format="numpy"):
                    break
                warm_s = time.perf_counter() - tw
        out = result(name or f"Ray Data, {num_cpus} CPU", where, num_cpus, n, nbytes, first, t1, t0, mem,
                     {"object_store_limit_mb": object_store_bytes / MIB, "ray_init_s": init_s, "ray_init_attempts": attempt,
                      "first_batch_warm_s": warm_s, "read_block_mb": block_mb,
                      "chunks_per_task": src.chunks_per_task[0], "read_tasks": len(src.groups),
                      "out_block_mb": out_block / MIB, "task_out_mb": src.task_out_bytes() / MIB,
                      "read_cpu_s_per_sample": child.get("ray read tasks", 0.0) / steady,
                      "idle_workers_cpu_s_per_sample": child.get("ray idle workers", 0.0) / steady,
                      "ray_actors_cpu_s_per_sample": child.get("ray actors", 0.0) / steady,
                      "consumer_cpu_s_per_sample": cpu_driver / steady,
                      "ray_services_cpu_s_per_sample": child.get("ray services", 0.0) / steady,
                      "peak_rss_by_kind_mb": {k: v / MIB for k, v in mem.peak_kind.items()}})
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# =============================================================================================
# archive and S3 setup
# =============================================================================================

def cache_dir(a) -> Path:
    d = Path(a.cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "convlstm-dist" / "bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def local_archive(a, cache: Path) -> tuple[str, dict | None]:
    import make_archive as M

    url = str(cache / f"synthetic-{a.frames}x{M.DEFAULT_SIZE}-seed{a.seed}.zarr")
    info_path = Path(url + ".build.json")
    from convlstm_dist.data.storage import exists

    if exists(url) and info_path.exists():
        return url, json.loads(info_path.read_text())
    shutil.rmtree(url, ignore_errors=True)  # a build that did not finish
    print(f"building the benchmark archive {url} ({a.frames} frames; once, then cached)", flush=True)
    info = M.build(url, a.frames, seed=a.seed, progress=True)
    info_path.write_text(json.dumps(info, indent=1))
    return url, info


def s3_archive(local_url: str, server, cache: Path) -> tuple[str, float | None]:
    """The local archive's objects copied once into the (persistent) SeaweedFS bucket."""
    import s3fs

    from convlstm_dist.data.storage import exists

    url = f"s3://{server.bucket}/{Path(local_url).name}"
    opts = server.storage_options()
    marker = cache / (Path(local_url).name + ".s3-copied")
    if marker.exists() and exists(url, opts):
        return url, None
    t = time.perf_counter()
    fs = s3fs.S3FileSystem(**opts)
    fs.rm(url, recursive=True) if fs.exists(url) else None
    fs.put(local_url.rstrip("/") + "/", url, recursive=True)
    secs = time.perf_counter() - t
    marker.write_text(json.dumps({"upload_s": secs}))
    return url, secs


def start_server(cache: Path):
    from fixtures_s3 import SeaweedServer

    return SeaweedServer(cache / "seaweed", bucket=BUCKET).start()


# =============================================================================================
# the at-scale benchmark
# =============================================================================================

def at_scale(a) -> int:
    import platform

    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.windows import build_index

    t_all = time.perf_counter()
    cache = cache_dir(a)
    t = time.perf_counter()
    url, build_info = local_archive(a, cache)
    archive_s = time.perf_counter() - t
    arc = open_archive(url)
    idx = build_index(arc.times, arc.timestep_s, a.in_len, a.out_len)
    starts = idx.starts["train"]
    T, H, W = arc.shape
    print(f"archive {url}: {T} frames {H}x{W}, chunks {arc.chunks}, shards {arc.shards}, "
          f"{build_info['stored_bytes'] / 1e9:.2f} GB stored ({build_info['compression_ratio']}x), "
          f"built in {build_info['seconds']} s; {len(starts)} train windows in "
          f"{len(task_groups(arc, starts))} read tasks", flush=True)
    store_bytes = a.object_store_mb * MIB if a.object_store_mb else None  # None: sized from the block size
    rows: list[dict] = []

    def show(r):
        print(f"  {r['archive']:<8}{r['path']:<40}{r['samples_per_s']:>8.1f}/s {r['mb_per_s']:>7.1f} MB/s "
              f"first {r['first_batch_s']:>5.1f} s  rss {r['peak_rss_tree_mb']:>6.0f} MB  "
              f"store {r['peak_object_store_mb']:>5.0f} MB  spilled {r['spilled_mb']:.0f} MB  "
              f"load {r['load_avg_1min']:.1f}", flush=True)
        rows.append(r)

    def suite(archive, where, before=True):
        base = plain_run(archive, starts, a, where)
        show(base)
        for n in (1, 2):
            r = ray_run(archive, starts, a, where, n, store_bytes)
            r["per_cpu_vs_plain"] = r["samples_per_s"] / n / base["samples_per_s"]
            show(r)
        if before and not a.no_before:  # the read path before byte-sized tasks: one time chunk per task
            r = ray_run(archive, starts, a, where, 1, store_bytes, read_block_mb=None, warm=False,
                        name="Ray Data, 1 CPU, 1-chunk tasks (before)")
            r["per_cpu_vs_plain"] = r["samples_per_s"] / base["samples_per_s"]
            show(r)
        return base

    print("local archive:", flush=True)
    suite(arc, "local")

    mem_row = None
    if not a.no_memory_check:
        # bounded memory: read 5x the object store (sized from the block size) through Ray Data (1 CPU)
        bps = next(r["bytes_per_sample"] for r in rows if r["archive"] == "local")
        limit = int(a.memory_check_mb * MIB) if a.memory_check_mb else None
        probe = next(r for r in rows if r["archive"] == "local" and r["path"] == "Ray Data, 1 CPU")
        limit_b = limit or int(probe["object_store_limit_mb"] * MIB)
        n = int(5 * limit_b / bps) + 1
        mem_row = ray_run(arc, starts, a, "local", 1, limit, samples=n, warm=False,
                          name=f"memory check: read 5x a {limit_b / MIB:.0f} MB store")
        mem_row["bytes_read_mb"] = mem_row["samples"] * mem_row["bytes_per_sample"] / MIB
        show(mem_row)

    server = None
    s3_info = {}
    if not a.no_s3:
        t = time.perf_counter()
        server = start_server(cache)
        try:
            s3_info["server_start_s"] = time.perf_counter() - t
            s3_url, up = s3_archive(url, server, cache)
            s3_info["upload_s"] = up
            opts = server.storage_options(readonly=True)
            s3 = open_archive(s3_url, opts)
            print(f"S3 archive {s3_url} (SeaweedFS on loopback, read-only key):", flush=True)
            suite(s3, "s3", before=False)
        finally:
            server.stop()

    total_s = time.perf_counter() - t_all

    def row(where, path):
        return next((r for r in rows if r["archive"] == where and r["path"] == path), None)

    local_plain, ray1, ray2 = row("local", "plain loop"), row("local", "Ray Data, 1 CPU"), row("local", "Ray Data, 2 CPU")
    ratio = ray1["samples_per_s"] / local_plain["samples_per_s"]
    ratio_s3 = (row("s3", "Ray Data, 1 CPU")["samples_per_s"] / row("s3", "plain loop")["samples_per_s"]
                if row("s3", "plain loop") else None)
    print(f"\n{a.in_len}+{a.out_len}-frame windows, {a.crop}x{a.crop} crops x {a.crops_per_window} per window, "
          f"compact rows, batch {a.batch_size}, {a.samples} samples per configuration; Ray Data read tasks over "
          f"{ray1['chunks_per_task']} time chunks (data.read_block_mb={ray1['read_block_mb']:g}; up to "
          f"{ray1['task_out_mb']:.0f} MB of rows per task), blocks of at most {ray1['out_block_mb']:.0f} MB, object store {ray1['object_store_limit_mb']:.0f} MB (1 CPU) / "
          f"{ray2['object_store_limit_mb']:.0f} MB (2 CPUs) sized from the block size; "
          f"machine: {os.cpu_count()} CPUs, load average during the runs "
          f"{min(r['load_avg_1min'] for r in rows):.1f}-{max(r['load_avg_1min'] for r in rows):.1f} "
          "(other work on the machine slows every path)")
    print(f"{'archive':<8}{'path':<42}{'samples/s':>10}{'MB/s':>8}{'B/sample':>10}{'1st batch':>10}{'warm':>6}"
          f"{'RSS MB':>8}{'store MB':>9}{'spilled':>8}{'per CPU':>9}")
    for r in rows:
        pc = f"{r['per_cpu_vs_plain']:.2f}x" if "per_cpu_vs_plain" in r else ""
        warm = f"{r['first_batch_warm_s']:.1f}s" if r.get("first_batch_warm_s") is not None else ""
        print(f"{r['archive']:<8}{r['path']:<42}{r['samples_per_s']:>10.1f}{r['mb_per_s']:>8.1f}"
              f"{r['bytes_per_sample'] / 1e6:>9.3f}M{r['first_batch_s']:>9.1f}s{warm:>6}{r['peak_rss_tree_mb']:>8.0f}"
              f"{r['peak_object_store_mb']:>9.0f}{r['spilled_mb']:>8.0f}{pc:>9}")
    for r in rows:
        if "store_requests_per_sample" in r:
            print(f"storage reads ({r['archive']}, {r['path']}): {r['store_requests_per_sample']:.2f} requests and "
                  f"{r['store_bytes_per_sample'] / 1e6:.3f} MB per sample")
    print("CPU seconds per delivered sample, from the dataset's build to the last batch (read = Ray worker processes "
          "while titled ray::Read*, or the plain loop's read_windows calls; consumer = the driver that forms the "
          "batches; Ray services = raylet, GCS, agents; Ray Data actors = its stats/autoscaling actors; "
          "idle/starting workers = worker processes before their first task, mostly imports):")
    for r in rows:
        if "read_cpu_s_per_sample" in r:
            svc = (f", Ray services {r['ray_services_cpu_s_per_sample'] * 1e3:.2f} ms, Ray Data actors "
                   f"{r['ray_actors_cpu_s_per_sample'] * 1e3:.2f} ms, idle/starting workers "
                   f"{r['idle_workers_cpu_s_per_sample'] * 1e3:.2f} ms"
                   if "ray_services_cpu_s_per_sample" in r else "")
            print(f"cpu_ms_per_sample {r['archive']:<6}{r['path']:<42} read {r['read_cpu_s_per_sample'] * 1e3:6.2f} ms, "
                  f"consumer {r['consumer_cpu_s_per_sample'] * 1e3:6.2f} ms{svc}")
    for where in ("local", "s3"):
        r1, r2 = row(where, "Ray Data, 1 CPU"), row(where, "Ray Data, 2 CPU")
        if not r1:
            continue
        per = [r["samples_per_s"] / max(r["read_cpu_s_per_sample"] * r["samples_per_s"], 1e-9) for r in (r1, r2)]
        print(f"read tasks ({where}): 1 read CPU {r1['samples_per_s']:.1f} samples/s, 2 read CPUs "
              f"{r2['samples_per_s']:.1f} samples/s ({r2['samples_per_s'] / r1['samples_per_s']:.2f}x); "
              f"per busy read-CPU second {per[0]:.0f} / {per[1]:.0f} samples; the read tasks kept "
              f"{r1['read_cpu_s_per_sample'] * r1['samples_per_s']:.2f} / {r2['read_cpu_s_per_sample'] * r2['samples_per_s']:.2f} "
              f"CPUs busy, the consumer {r1['consumer_cpu_s_per_sample'] * r1['samples_per_s']:.2f} / "
              f"{r2['consumer_cpu_s_per_sample'] * r2['samples_per_s']:.2f}, Ray's services "
              f"{r1['ray_services_cpu_s_per_sample'] * r1['samples_per_s']:.2f} / "
              f"{r2['ray_services_cpu_s_per_sample'] * r2['samples_per_s']:.2f} (of {os.cpu_count()} cores)")
    for r in rows:
        if "peak_rss_by_kind_mb" in r:
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["peak_rss_by_kind_mb"].items()))
            print(f"peak RSS by process kind, MB ({r['archive']}, {r['path']}): {parts}")
    ray_rows = [r for r in rows if r.get("first_batch_warm_s") is not None]
    print(f"targets: Ray Data >= 1.0x plain per CPU: {ratio:.2f}x local"
          + (f", {ratio_s3:.2f}x S3" if ratio_s3 is not None else "")
          + f"; first batch warm <= 3 s: {max(r['first_batch_warm_s'] for r in ray_rows):.1f} s worst; "
          f"cold <= 10 s: {max(r['first_batch_s'] for r in ray_rows):.1f} s worst")
    if mem_row:
        print(f"memory check: {mem_row['bytes_read_mb']:.0f} MB read through a {mem_row['object_store_limit_mb']:.0f} MB "
              f"object store: peak use {mem_row['peak_object_store_mb']:.0f} MB, spilled {mem_row['spilled_mb']:.0f} MB, "
              f"peak RSS of the process tree {mem_row['peak_rss_tree_mb']:.0f} MB")
    inits = [f"{r['ray_init_s']:.1f}" for r in rows if "ray_init_s" in r]
    print(f"ray.init (inside the cold first batch): {', '.join(inits)} s")
    print(f"archive step {archive_s:.1f} s; benchmark total {total_s:.0f} s")
    out = Path(a.out) if a.out else cache / "data-scale-latest"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": dt.date.today().isoformat(), "machine": {"nproc": os.cpu_count(),
            "cpu": _cpu_model(), "python": platform.python_version()},
            "archive": build_info, "train_windows": len(starts),
            "read_tasks": len(task_groups(arc, starts)), "settings": vars(a), "s3": s3_info,
            "total_s": total_s, "archive_step_s": archive_s, "ray_over_plain_per_cpu": ratio,
            "ray_over_plain_per_cpu_s3": ratio_s3, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        keys = sorted({k for r in rows for k in r})
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out.with_suffix('.json')} and .csv")
    print(f"first_batch_warm_s={ray1['first_batch_warm_s']:.1f}")
    print(f"first_batch_cold_s={ray1['first_batch_s']:.1f}")
    for where in ("local", "s3"):
        for path in ("plain loop", "Ray Data, 1 CPU", "Ray Data, 2 CPU"):
            r = row(where, path)
            if r:
                key = re.sub(r"[^a-z0-9]+", "_", f"{where} {path}".lower()).strip("_")
                print(f"cpu_s_per_sample_{key}_read={r['read_cpu_s_per_sample']:.5f} "
                      f"cpu_s_per_sample_{key}_consumer={r['consumer_cpu_s_per_sample']:.5f}")
    if ratio_s3 is not None:
        print(f"ray_over_plain_per_cpu_s3={ratio_s3:.2f}")
    print(f"ray_over_plain_per_cpu={ratio:.2f}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# =============================================================================================
# the sample-archive benchmark (the earlier one: KNMI sample, whole epochs)
# =============================================================================================

def _sample_plain(archive, starts, args) -> float:
    from convlstm_dist.data.samples import read_windows
    from convlstm_dist.data.windows import group_by_chunk

    n, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        for g in group_by_chunk(starts, archive.time_chunk):
            n += len(read_windows(archive, g, args.in_len, args.out_len, (args.crop, args.crop), 0, epoch)["t0"])
    return n / (time.perf_counter() - t0)


def _sample_ray(archive, starts, args, num_cpus: int) -> float:
    import ray

    from convlstm_dist.data.datasource import window_dataset

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds = window_dataset(archive, starts, args.in_len, args.out_len, (args.crop, args.crop), shuffle=True)
        for _ in ds.iter_batches(batch_size=8, batch_format="numpy"):  # warm-up: start the workers
            break
        n, t0 = 0, time.perf_counter()
        for _ in range(args.epochs):
            for b in ds.iter_batches(batch_size=8, batch_format="numpy"):
                n += len(b["t0"])
        return n / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def _model_rate(args) -> float:
    import torch

    from convlstm_dist.config import build_model_from_config, load_config
    from convlstm_dist.models import get_loss

    cfg = load_config(HERE.parent / "convlstm_dist" / "recipes" / "demo.yaml",
                      [f"model.height={args.crop}", f"model.width={args.crop}",
                       f"data.in_len={args.in_len}", f"data.out_len={args.out_len}"])
    model = build_model_from_config(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    b = cfg.data.batch_size
    x = torch.rand(b, args.in_len, 1, args.crop, args.crop)
    y = torch.rand(b, args.out_len, 1, args.crop, args.crop)
    for i in range(4):
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        pred, _ = model(x, args.out_len)
        get_loss("mse")(pred, y).backward()
        opt.step()
    return 3 * b / (time.perf_counter() - t0)


def sample_archive(args) -> int:
    from fixtures_s3 import SeaweedServer

    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.ingest import ingest
    from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

    ncpu = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    local = str(tmp / "knmi.zarr")
    ingest(SAMPLE_READER, sample_files(), local, parallel=False, progress=False)
    arcs = {"local": open_archive(local)}
    server = None
    if not args.no_s3:
        server = SeaweedServer(tmp / "weed").start()
        url = server.url("knmi") + ".zarr"
        ingest(SAMPLE_READER, sample_files(), url, server.storage_options(), parallel=False, progress=False)
        arcs["s3"] = open_archive(url, server.storage_options())
    rows = []
    try:
        for where, arc in arcs.items():
            starts = np.arange(0, arc.shape[0] - args.in_len - args.out_len + 1)
            base = _sample_plain(arc, starts, args)
            rows.append((where, "plain loop (1 process)", 1, base, 1.0))
            for n in sorted({1, ncpu}):
                r = _sample_ray(arc, starts, args, n)
                rows.append((where, f"Ray Data, {n} CPU", n, r, r / n / base))
    finally:
        if server:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    step = _model_rate(args)
    print(f"\nwindows {args.in_len}+{args.out_len} frames, crop {args.crop}x{args.crop}, {args.epochs} epochs, "
          f"machine: {ncpu} CPUs")
    print(f"{'archive':<8}{'path':<26}{'samples/s':>11}{'per CPU vs plain':>18}")
    for where, name, n, r, ratio in rows:
        print(f"{where:<8}{name:<26}{r:>11.1f}{ratio:>17.2f}x")
    best = max(r for *_, r, _ in rows)
    print(f"model training steps (demo model, fp32, 1 process): {step:.1f} samples/s; "
          f"fastest data path delivers {best / step:.1f}x that "
          f"(data-wait share if the data path is the bottleneck: {max(0.0, 1 - best / step):.0%})")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample-archive", action="store_true",
                   help="the earlier benchmark on the shipped KNMI sample (whole epochs)")
    p.add_argument("--epochs", type=int, default=2, help="--sample-archive: epochs per configuration")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--in-len", type=int, default=5)
    p.add_argument("--out-len", type=int, default=15)
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--cache", default=None, help=f"cache folder (env {CACHE_ENV}; default ~/.cache/convlstm-dist/bench)")
    p.add_argument("--frames", type=int, default=20_000, help="frames of the at-scale archive")
    p.add_argument("--seed", type=int, default=0, help="archive seed")
    p.add_argument("--samples", type=int, default=2000, help="samples read per configuration")
    p.add_argument("--crops-per-window", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--object-store-mb", type=int, default=0,
                   help="Ray object store for the throughput runs (0: sized from the block size, store_bytes_for)")
    p.add_argument("--memory-check-mb", type=int, default=0,
                   help="object store of the memory check (>= 80; 0: the 1-CPU run's store, sized from the block size)")
    p.add_argument("--no-memory-check", action="store_true")
    p.add_argument("--no-before", action="store_true",
                   help="skip the local run with one time chunk per read task (the read path before 2026-12-04)")
    p.add_argument("--out", default=None,
                   help="write PATH.json and PATH.csv with every number (default: <cache>/data-scale-latest)")
    args = p.parse_args(argv)
    return sample_archive(args) if args.sample_archive else at_scale(args)


if __name__ == "__main__":
    sys.exit(main())
