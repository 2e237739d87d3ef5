"""Ray Train overhead on the same resources: samples/s of a plain single-process loop against Ray
Train with 1 worker (and with 2, and 1 worker streaming through Ray Data), on the demo recipe
(KNMI sample), in one run.

    python benchmarks/bench_train.py [--epochs 3] [--use-gpu --precision bf16] [--loader stream]

Both sides run the same step engine (``train.engine``, ``convlstm_dist.train.engine.StepEngine``)
at the same global batch, and both get all of this machine's cores for torch: the plain loop sets
``torch.set_num_threads(os.cpu_count())``; the 1-worker Ray run gives its worker the same number of
torch threads (``CONVLSTM_THREADS``) and leaves one logical CPU for the Ray Data read tasks, which
share the same physical cores (a worker holding every logical CPU would starve them: STACK.md). The
plain loop reads the same training windows (``read_windows``); Ray's rate is the ``samples_per_s``
the workers report for their last epoch (after start-up), summed over workers.

The last line is ``ray_over_plain=X.XX`` (1 worker / plain, throughput).
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
    from convlstm_dist.data.quantity import quantity_of_variable
    from convlstm_dist.data.windows import group_by_chunk
    from convlstm_dist.train.engine import StepEngine, choose_engine
    from convlstm_dist.train.optim import make_optimizer, training_loss

    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device(device)
    choice = choose_engine(cfg, dev, 1)
    mode = choice.mode
    model = build_model_from_config(cfg, compile=mode != "eager", channels_last=choice.channels_last).to(dev)
    opt = make_optimizer(cfg.train, model.parameters(), dev if mode == "graph" else None)
    engine = StepEngine(model, model, opt, torch.amp.GradScaler("cuda", enabled=choice.precision == "fp16"),
                        training_loss(cfg.train.loss, quantity_of_variable(plan.variable).name), plan.out_len,
                        choice.amp_dtype, cfg.train.grad_clip, mode, dev, say=lambda m: None)
    arc, starts = plan.archives["train"], plan.starts["train"]
    bs = cfg.data.batch_size * cfg.scaling.num_workers  # same global batch as the Ray run
    n, t_last = 0, 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for g in group_by_chunk(starts, arc.time_chunk):
            w = read_windows(arc, g, plan.in_len, plan.out_len, plan.crop, 0, epoch, cfg.data.crops_per_window)
            for i in range(0, len(w["x"]), bs):
                x = torch.from_numpy(w["x"][i:i + bs]).to(dev)
                y = torch.from_numpy(w["y"][i:i + bs]).to(dev)
                m = torch.from_numpy(w["mask"][i:i + bs]).to(dev) > 0.5
                engine.step(x, y, m)
                n += len(x)
        engine.check()
        if dev.type == "cuda":
            torch.cuda.synchronize()
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
    from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--precision", default="auto")
    p.add_argument("--loader", default="auto", choices=("auto", "stream", "memory"),
                   help="data.loader of the Ray runs (auto: memory for the demo archive); a 1-worker Ray Data "
                        "stream run is added for comparison")
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
    cores = os.cpu_count() or 1
    runs = [(1, args.loader), (2, args.loader)] + ([(1, "stream")] if args.loader != "stream" else [])
    for n, loader in runs:
        # same global batch: per-worker batch = global / n; the workers' torch threads share all cores
        os.environ["CONVLSTM_THREADS"] = str(max(1, cores // n))
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"CONVLSTM_THREADS": os.environ["CONVLSTM_THREADS"],
                                           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
        per_worker = max(0.25, (cores - 1) / n) if not args.use_gpu else 1
        cfg = load_config(RECIPE, base + [f"scaling.num_workers={n}", f"data.batch_size={8 // n}",
                                          f"data.loader={loader}",
                                          f"scaling.cpus_per_worker={per_worker}",
                                          f"run.name=bench-{n}w-{int(time.time())}"])
        from convlstm_dist.train.driver import data_loader

        results.append((f"Ray Train, {n} worker(s), {data_loader(cfg, plan)}", ray_rate(cfg, wd)))
        ray.shutdown()
    print(f"\ndemo recipe, global batch 8, {args.epochs} epochs (rate of the last), "
          f"{'GPU' if args.use_gpu else 'CPU'}, machine: {os.cpu_count()} CPUs")
    print(f"{'path':<36}{'samples/s':>11}{'vs plain':>10}")
    for name, r in results:
        print(f"{name:<36}{r:>11.1f}{r / rate_plain:>9.2f}x")
    print(f"ray_over_plain={results[1][1] / rate_plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
