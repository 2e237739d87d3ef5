"""``convlstm-dist data-check``: what to run when onboarding your own archive."""

from __future__ import annotations

import argparse

from convlstm_dist.commands.common import add_config_args, add_workdir_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data-check", help="check a recipe's data: archive summaries, windows per archive and split, batches through Ray Data",
        description="Onboarding check for an archive: prints each archive's summary (time range, gaps, "
                    "statistics), the number of training windows per archive and split under the recipe's rules, "
                    "the data version a run would pin, "
                    "then pulls batches through Ray Data exactly as training would and prints their "
                    "shape, value range, valid-mask fraction and samples/s.")
    add_config_args(p)
    add_workdir_arg(p)
    p.add_argument("--batches", type=int, default=3, help="batches to pull through Ray Data (default 3)")
    p.set_defaults(func=run)


def format_windows(plan) -> str:
    """The windows table of ``data-check``: one row per archive and split, then the totals."""
    rows = plan.counts_per_archive()
    width = max([len("archive")] + [len(r["url"]) for r in rows])
    lines = [f"window = {plan.in_len} in + {plan.out_len} out frames, crop {plan.crop[0]}x{plan.crop[1]}, "
             f"model variable {plan.variable}",
             f"  {'src':>3}  {'archive':<{width}}  {'weight':>6}  {'train':>7}  {'val':>7}  {'test':>7}"]
    for r in rows:
        lines.append(f"  {r['src']:>3}  {r['url']:<{width}}  {r['weight']:>6g}  {r['train']:>7}  {r['val']:>7}  "
                     f"{r['test']:>7}")
    c = plan.counts()
    lines.append(f"  {'':>3}  {'total':<{width}}  {'':>6}  {c['train']:>7}  {c['val']:>7}  {c['test']:>7}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np
    import ray

    from convlstm_dist.commands.archive import format_summary
    from convlstm_dist.config import load_config
    from convlstm_dist.data.archive import summary
    from convlstm_dist.data.plan import DataPlan

    cfg = load_config(args.config, args.overrides)
    plan = DataPlan.from_config(cfg, args.workdir)
    print("== archives ==" if len(plan.sources) > 1 else "== archive ==")
    for src in plan.sources:
        seen = set()
        for arc in src.archives.values():
            if arc.url not in seen:
                seen.add(arc.url)
                print((f"[src {src.index}] " if len(plan.sources) > 1 else "") + format_summary(summary(arc)))
    print("== windows ==")
    print(format_windows(plan))
    for src in plan.sources:
        for k in ("n_gap_free_windows", "n_dry_dropped", "rule"):
            if k in src.record:
                print(f"  [src {src.index}] {k}: {src.record[k]}" if len(plan.sources) > 1
                      else f"  {k}: {src.record[k]}")
    print("== data version (pinned with a run) ==")
    print(json.dumps(plan.version(), indent=2))
    from convlstm_dist.runtime import start_or_join_ray

    start_or_join_ray(cfg.scaling.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = plan.datasets(cfg.data.seed, None, cfg.data.crops_per_window, cfg.data.augment)["train"]
    print("== one epoch's first batches through Ray Data ==")
    t0 = time.perf_counter()
    n = 0
    srcs: dict[int, int] = {}
    for i, batch in enumerate(ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy")):
        x, y, m = batch["x"], batch["y"], batch["mask"]
        n += len(x)
        for s in batch["src"].tolist():
            srcs[int(s)] = srcs.get(int(s), 0) + 1
        if i == 0:
            print(f"  x {tuple(x.shape)} {x.dtype}  range [{x.min():.4f}, {x.max():.4f}]  (model range)")
            print(f"  y {tuple(y.shape)}  range [{y.min():.4f}, {y.max():.4f}]")
            print(f"  valid-mask fraction {float(np.mean(m)):.3f}")
        if i + 1 >= args.batches:
            break
    dt = time.perf_counter() - t0
    print(f"  {n} samples in {dt:.2f} s = {n / dt:.1f} samples/s (includes Ray Data start-up)")
    print(f"  samples per archive (src): {dict(sorted(srcs.items()))}")
    return 0
