"""``convlstm-dist data-check``: what to run when onboarding your own archive."""

from __future__ import annotations

import argparse

from convlstm_dist.commands.common import add_config_args, add_workdir_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-check", help="check a recipe's data: archive summary, windows per split, one batch through Ray Data",
        description="Onboarding check for an archive: prints the archive summary (time range, gaps, "
                    "statistics), the number of training windows per split under the recipe's rules, "
                    "then pulls batches through Ray Data exactly as training would and prints their "
                    "shape, value range, valid-mask fraction and samples/s.")
    add_config_args(p)
    add_workdir_arg(p)
    p.add_argument("--batches", type=int, default=3, help="batches to pull through Ray Data (default 3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np
    import ray

    from convlstm_dist.config import load_config
    from convlstm_dist.data.archive import summary
    from convlstm_dist.data.plan import DataPlan

    cfg = load_config(args.config, args.overrides)
    plan = DataPlan.from_config(cfg, args.workdir)
    arc = plan.archives["train"]
    print("== archive ==")
    print(json.dumps(summary(arc), indent=2, default=str))
    print("== windows ==")
    print(f"window = {plan.in_len} in + {plan.out_len} out frames, crop {plan.crop[0]}x{plan.crop[1]}")
    for split, n in plan.counts().items():
        print(f"  {split:<6}{n:>8} windows")
    for k in ("n_gap_free_windows", "n_dry_dropped", "rule"):
        if k in plan.record:
            print(f"  {k}: {plan.record[k]}")
    if not ray.is_initialized():
        ray.init(address=cfg.scaling.ray_address or "local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = plan.datasets(cfg.data.seed, None, cfg.data.crops_per_window, cfg.data.augment)["train"]
    print("== one epoch's first batches through Ray Data ==")
    t0 = time.perf_counter()
    n = 0
    for i, batch in enumerate(ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy")):
        x, y, m = batch["x"], batch["y"], batch["mask"]
        n += len(x)
        if i == 0:
            print(f"  x {tuple(x.shape)} {x.dtype}  range [{x.min():.4f}, {x.max():.4f}]  (model range)")
            print(f"  y {tuple(y.shape)}  range [{y.min():.4f}, {y.max():.4f}]")
            print(f"  valid-mask fraction {float(np.mean(m)):.3f}")
        if i + 1 >= args.batches:
            break
    dt = time.perf_counter() - t0
    print(f"  {n} samples in {dt:.2f} s = {n / dt:.1f} samples/s (includes Ray Data start-up)")
    return 0
