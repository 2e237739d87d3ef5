"""``convlstm-dist data-check``: what to run when onboarding your own archive."""

from __future__ import annotations

import argparse

from convlstm_dist.commands.archive import format_summary
from convlstm_dist.commands.common import add_config_args, add_workdir_arg
from convlstm_dist.data import DataPlan, check_batches, distinct_archives, summary
from convlstm_dist.ray_session import start_or_join_ray


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

    from convlstm_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    plan = DataPlan.from_config(cfg, args.workdir)
    many = len(plan.sources) > 1
    print("== archives ==" if many else "== archive ==")
    for index, arc in distinct_archives(plan):
        print((f"[src {index}] " if many else "") + format_summary(summary(arc)))
    print("== windows ==")
    print(format_windows(plan))
    for src in plan.sources:
        for k in ("n_gap_free_windows", "n_dry_dropped", "rule"):
            if k in src.record:
                print(f"  [src {src.index}] {k}: {src.record[k]}" if many else f"  {k}: {src.record[k]}")
    print("== data version (pinned with a run) ==")
    print(json.dumps(plan.version(), indent=2))
    start_or_join_ray(cfg.scaling.ray_address)
    print("== one epoch's first batches through Ray Data ==")
    b = check_batches(plan, cfg.data, args.batches)
    if b.samples:
        print(f"  x {b.x_shape} {b.x_dtype}  range [{b.x_range[0]:.4f}, {b.x_range[1]:.4f}]  (model range)")
        print(f"  y {b.y_shape}  range [{b.y_range[0]:.4f}, {b.y_range[1]:.4f}]")
        print(f"  valid-mask fraction {b.valid_fraction:.3f}")
    print(f"  {b.samples} samples in {b.seconds:.2f} s = {b.samples / b.seconds:.1f} samples/s (includes Ray Data start-up)")
    print(f"  samples per archive (src): {b.per_source}")
    return 0
