"""Ray Train overhead: samples/s of 1 and 2 Ray Train workers against a plain single-process
training loop at the same global batch, on the demo recipe (KNMI sample), in one run.

    python benchmarks/bench_train.py [--epochs 3] [--use-gpu --precision bf16]

The plain loop reads the same training windows (``read_windows``), builds the same model and
optimizer and runs the same number of epochs; Ray's rate is the ``samples_per_s`` the workers
report for their last epoch (after start-up), summed over workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

RECIPE = Path(__file__).resolve().parent.parent / "convlstm_dist" / "recipes" / "demo.yaml"


def plain(cfg, plan, epochs: int, device: str) -> float:
    import torch

    from convlstm_dist.config import build_model_from_config
    from convlstm_dist.data.datasource import read_windows
    from convlstm_dist.data.windows import group_by_chunk
    from convlstm_dist.models import get_loss

    model = build_model_from_config(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), cfg.train.lr)
    arc, starts = plan.archives["train"], plan.starts["train"]
    bs = cfg.data.batch_size * cfg.scaling.num_workers  # same global batch as the Ray run
    n, t_last = 0, 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for g in group_by_chunk(starts, arc.time_chunk):
            w = read_windows(arc, g, plan.in_len, plan.out_len, plan.crop, 0, epoch, cfg.data.crops_per_window)
            for i in range(0, len(w["x"]), bs):
                x = torch.from_numpy(w["x"][i:i + bs]).to(device)
                y = torch.from_numpy(w["y"][i:i + bs]).to(device)
                m = torch.from_numpy(w["mask"][i:i + bs]).to(device) > 0.5
                opt.zero_grad()
                pred, _ = model(x, plan.out_len)
                get_loss(cfg.train.loss)(pred, y, m).backward()
                opt.step()
                n += len(x)
        t_last = time.perf_counter() - t0
    return n / t_last


def ray_rate(cfg, workdir: Path) -> float:
    from convlstm_dist.train.driver import run_training

    out = run_training(cfg, workdir, progress=False)
    return float(out.metrics["samples_per_s"])


def main() -> int:
    import ray

    from convlstm_dist.config import load_config
    from convlstm_dist.data.ingest import ingest
    from convlstm_dist.data.plan import DataPlan
    from convlstm_dist.data.sample import SAMPLE_READER, sample_files

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    wd = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ingest(SAMPLE_READER, sample_files(), str(wd / "archive.zarr"), parallel=False, progress=False)
    base = ["tracking.enabled=false", f"train.epochs={args.epochs}", f"train.precision={args.precision}",
            "train.schedule=none"]
    if args.use_gpu:
        base += ["scaling.use_gpu=true"]
    results = []
    ref_cfg = load_config(RECIPE, base + ["scaling.num_workers=2"])
    plan = DataPlan.from_config(ref_cfg, wd)
    rate_plain = plain(ref_cfg, plan, args.epochs, "cuda" if args.use_gpu else "cpu")
    results.append(("plain loop, 1 process", rate_plain))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    for n in (1, 2):
        # same global batch: per-worker batch = global / n
        cfg = load_config(RECIPE, base + [f"scaling.num_workers={n}", f"data.batch_size={8 // n}",
                                          f"run.name=bench-{n}w-{int(time.time())}"])
        results.append((f"Ray Train, {n} worker(s)", ray_rate(cfg, wd)))
    ray.shutdown()
    print(f"\ndemo recipe, global batch 8, {args.epochs} epochs (rate of the last), "
          f"{'GPU' if args.use_gpu else 'CPU'}, machine: {os.cpu_count()} CPUs")
    print(f"{'path':<26}{'samples/s':>11}{'vs plain':>10}")
    for name, r in results:
        print(f"{name:<26}{r:>11.1f}{r / rate_plain:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
