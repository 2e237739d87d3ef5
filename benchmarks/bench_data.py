"""Data-path throughput: samples/s of training windows delivered through Ray Data against a
plain single-process loop reading the same windows with zarr, on local disk and on a loopback
SeaweedFS S3 server, and against the model's training-step rate. One run, ratios printed.

    python benchmarks/bench_data.py [--epochs 2] [--crop 128] [--in-len 5] [--out-len 15]

The archive is the shipped KNMI sample (92 frames 765x700), ingested into a temp folder and into
S3. "per CPU" divides by the CPUs Ray Data may use (``ray.init(num_cpus=N)``).
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


def plain_loop(archive, starts, args) -> float:
    from convlstm_dist.data.datasource import read_windows
    from convlstm_dist.data.windows import group_by_chunk

    n, t0 = 0, time.perf_counter()
    for epoch in range(args.epochs):
        for g in group_by_chunk(starts, archive.time_chunk):
            n += len(read_windows(archive, g, args.in_len, args.out_len, (args.crop, args.crop), 0, epoch)["t0"])
    return n / (time.perf_counter() - t0)


def ray_loop(archive, starts, args, num_cpus: int) -> float:
    import ray

    from convlstm_dist.data.datasource import window_dataset

    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ds = window_dataset(archive, starts, args.in_len, args.out_len, (args.crop, args.crop), shuffle=True)
        # warm-up: one pass to start the workers (Ray's start-up is not data throughput)
        for _ in ds.iter_batches(batch_size=8, batch_format="numpy"):
            break
        n, t0 = 0, time.perf_counter()
        for _ in range(args.epochs):
            for b in ds.iter_batches(batch_size=8, batch_format="numpy"):
                n += len(b["t0"])
        return n / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def model_rate(args) -> float:
    import torch

    from convlstm_dist.config import build_model_from_config, load_config
    from convlstm_dist.models import get_loss

    cfg = load_config(Path(__file__).resolve().parent.parent / "convlstm_dist" / "recipes" / "demo.yaml",
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


def main() -> int:
    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.ingest import ingest
    from convlstm_dist.data.sample import SAMPLE_READER, sample_files
    from fixtures_s3 import SeaweedServer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--in-len", type=int, default=5)
    p.add_argument("--out-len", type=int, default=15)
    p.add_argument("--no-s3", action="store_true")
    args = p.parse_args()
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
            base = plain_loop(arc, starts, args)
            rows.append((where, "plain loop (1 process)", 1, base, 1.0))
            for n in sorted({1, ncpu}):
                r = ray_loop(arc, starts, args, n)
                rows.append((where, f"Ray Data, {n} CPU", n, r, r / n / base))
    finally:
        if server:
            server.stop()
    step = model_rate(args)
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


if __name__ == "__main__":
    sys.exit(main())
