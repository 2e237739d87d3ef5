"""``convlstm-dist table1`` and ``convlstm-dist table1-report``: Table 1 of Shi et al. (2015), Moving MNIST.

    convlstm-dist table1 --out DIR --time-budget 540 [--device cuda]          # six models on one device
    convlstm-dist table1 --out DIR --time-budget 120 --device cpu --dry-run   # the whole path in seconds
    convlstm-dist table1-report --workdir DIR --out DIR/table1.md          # from `train --local` runs
"""

from __future__ import annotations

import argparse
import sys

from convlstm_dist.commands.common import add_set_arg, add_time_budget_arg
from convlstm_dist.experiments import table1_report_from_runs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "table1", help="the six Moving MNIST models of Table 1 on one device, in a time budget",
        description="The six Moving MNIST models of Table 1 (Shi et al. 2015), one after another on one "
                    "device, data generated there, within a time budget (convlstm_dist.experiments.table1_device). "
                    "Writes PREFIX.md, .csv, -curves.csv, .png and .json under --out after every model.")
    p.add_argument("--out", required=True, help="folder for the report files")
    add_time_budget_arg(p, "wall-clock seconds for the whole run", dest="budget_s", required=True)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--dry-run", action="store_true", help="tiny models, a couple of steps each: proves the path")
    p.add_argument("--prefix", default=None, help="report file names (default table1, dry run table1-dryrun)")
    p.add_argument("--models", nargs="*", default=None, help="only recipes whose name contains one of these")
    add_set_arg(p, "recipe override for every model, e.g. data.batch_size=32 or train.lr=5e-4")
    p.add_argument("--val-n", type=int, default=None, help="validation sequences (default 1000; dry 4)")
    p.add_argument("--test-n", type=int, default=None, help="test sequences (default the recipes' 3000; dry 4)")
    p.add_argument("--val-points", type=int, default=6, help="validations per model, the start included")
    p.add_argument("--eval-batch", type=int, default=None, help="sequences per evaluation batch (default 100)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps per model (default: the time share)")
    p.add_argument("--engine", default=None, choices=["auto", "eager", "compiled", "graph"],
                   help="step engine (default: the recipes' train.engine, auto)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the gate arithmetic (CUDA; about a minute of compilation in the first model)")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W",
                   help="share of the budget of the recipes whose name contains NAME, relative to 1 (default: "
                        "equal shares), e.g. --weight 5x5-128-64-64=2")
    p.add_argument("--fp32-test", action="store_true", help="also score the test set with a float32 forward")
    p.add_argument("--seed", type=int, default=0, help="training seed (data and weights)")
    p.add_argument("--images", default=None, help="MNIST test images (default ../shared/data/mnist or the shipped copy)")
    p.set_defaults(func=run_table1)

    r = sub.add_parser(
        "table1-report", help="Table 1 of the paper next to the `train --local` Moving MNIST runs of a workdir",
        description="Table 1 of Shi et al. (2015) next to our Moving MNIST runs (convlstm-dist train --local "
                    "of convlstm_dist/recipes/moving_mnist/*.yaml, found under WORKDIR/local/mm-*).")
    r.add_argument("--workdir", required=True, help="the --workdir of the runs")
    r.add_argument("--out", default=None, help="write the Markdown table here (and table1.png beside it)")
    r.set_defaults(func=run_table1_report)


def run_table1(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from convlstm_dist.experiments import Table1Options, run_table1_on_device

    opts = Table1Options(**{f.name: getattr(args, f.name) for f in fields(Table1Options)})
    command = " ".join(["convlstm-dist", *getattr(args, "argv", sys.argv[1:])])
    res = run_table1_on_device(opts, command, say=lambda m: print(m, flush=True))
    v = res.verdict
    print(res.markdown)
    print(f"[table1] ranking {'reproduced' if v['ranking_reproduced'] else 'not reproduced'} "
          f"(Kendall tau {v['kendall_tau']:.2f}); target {'met' if v['target_met'] else 'not met'}; "
          f"total {res.wall_s:.1f} s of {opts.budget_s:.0f} s")
    print("[table1] wrote " + ", ".join(str(f) for f in res.files))
    return 0


def run_table1_report(args: argparse.Namespace) -> int:
    text, files = table1_report_from_runs(args.workdir, args.out)
    print(text)
    if files:
        print(f"wrote {files[0]} and {files[1]}")
    return 0
