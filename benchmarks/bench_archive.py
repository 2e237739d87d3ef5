"""Archive throughput: ingest frames/s (1 CPU vs all CPUs on Ray) and training-window reads
(20 frames x 256 x 256 crops) from a local archive and from a loopback SeaweedFS S3 server,
against decoding the source files directly. One run, ratios printed.

    python benchmarks/bench_archive.py [--windows 20] [--reader knmi_hdf5] [FILES...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _windows(rng, T, H, W, n, length, crop):
    return [(int(rng.integers(0, T - length + 1)), int(rng.integers(0, H - crop + 1)),
             int(rng.integers(0, W - crop + 1))) for _ in range(n)]


def bench_reads(archive, wins, length, crop):
    t0 = time.perf_counter()
    nbytes = 0
    for t, y, x in wins:
        nbytes += archive.read(t, t + length, slice(y, y + crop), slice(x, x + crop)).nbytes
    dt = time.perf_counter() - t0
    return len(wins) * length / dt, nbytes / dt / 1e6


def bench_decode(reader, files, wins, length, crop):
    t0 = time.perf_counter()
    nbytes = 0
    for t, y, x in wins:
        block = np.stack([reader.read(f)[0][y:y + crop, x:x + crop] for f in files[t:t + length]])
        nbytes += block.nbytes
    dt = time.perf_counter() - t0
    return len(wins) * length / dt, nbytes / dt / 1e6


def main() -> int:
    import ray

    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.ingest import ingest
    from convlstm_dist.data.readers import get_reader
    from convlstm_dist.data.shipped import sample_files
    from fixtures_s3 import SeaweedServer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reader", default="knmi_hdf5")
    p.add_argument("--windows", type=int, default=20)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("files", nargs="*")
    a = p.parse_args()
    files = [Path(f) for f in a.files] or sample_files()
    reader = get_reader(a.reader)
    tmp = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    res = {}

    t0 = time.perf_counter()
    ingest(reader, files, str(tmp / "serial.zarr"), parallel=False, progress=False)
    res["ingest_1cpu"] = len(files) / (time.perf_counter() - t0)
    ncpu = os.cpu_count() or 1
    ray.init(num_cpus=ncpu, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
    ray.get(ray.remote(lambda: 0).remote())  # warm the worker pool (not timed)
    t0 = time.perf_counter()
    ingest(reader, files, str(tmp / "par.zarr"), parallel=True, progress=False)
    res[f"ingest_{ncpu}cpu"] = len(files) / (time.perf_counter() - t0)
    ray.shutdown()

    local = open_archive(str(tmp / "serial.zarr"))
    T, H, W = local.shape
    wins = _windows(np.random.default_rng(0), T, H, W, a.windows, a.length, a.crop)
    res["read_decode"] = bench_decode(reader, files, wins, a.length, a.crop)
    res["read_local"] = bench_reads(local, wins, a.length, a.crop)
    with SeaweedServer() as s3:
        url = s3.url("bench.zarr")
        ingest(reader, files, url, s3.storage_options(), parallel=False, progress=False, shards=32)
        remote = open_archive(url, s3.storage_options(readonly=True))
        bench_reads(remote, wins[:2], a.length, a.crop)  # warm the connection
        res["read_s3"] = bench_reads(remote, wins, a.length, a.crop)

    print(f"files: {len(files)} x {H}x{W} ({reader.name}); windows: {a.windows} x {a.length} frames x "
          f"{a.crop}x{a.crop}; CPUs: {ncpu}")
    print(f"ingest  1 CPU          {res['ingest_1cpu']:8.1f} frames/s")
    print(f"ingest  {ncpu} CPUs (Ray)    {res[f'ingest_{ncpu}cpu']:8.1f} frames/s   "
          f"x{res[f'ingest_{ncpu}cpu'] / res['ingest_1cpu']:.2f}")
    base = res["read_decode"][0]
    for k, label in (("read_decode", "decode source files"), ("read_local", "archive, local disk"),
                     ("read_s3", "archive, loopback S3 (sharded)")):
        fps, mbs = res[k]
        print(f"windows {label:32s} {fps:8.1f} frames/s {mbs:8.1f} MB/s   x{fps / base:.2f} vs decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
