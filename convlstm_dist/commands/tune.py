"""``convlstm-dist tune``: a hyperparameter sweep (Ray Tune + ASHA over distributed Ray Train trials)."""

from __future__ import annotations

import argparse
import os

from convlstm_dist.commands.common import add_workdir_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="hyperparameter sweep: Ray Tune + ASHA over distributed training trials, MLflow parent/child runs",
        description="Run the sweep described by a sweep YAML (base recipe, search space, ASHA settings; see "
                    "pipelines/sweeps/radar.yaml). Each trial is a distributed Ray Train run. Results go to "
                    "DIR/sweeps/<name> (or storage_path); running the same command again after an interruption "
                    "resumes the sweep without rerunning finished trials. The best trial's recipe is written to "
                    "DIR/sweeps/<name>/best_recipe.yaml and its model is registered in MLflow.")
    p.add_argument("--config", required=True, metavar="SWEEP", help="sweep YAML (e.g. pipelines/sweeps/radar.yaml)")
    p.add_argument("--smoke-test", action="store_true",
                   help="merge the file's smoke_test: section (tiny models, few epochs) — a real sweep in minutes on 2 CPUs")
    p.add_argument("--storage-path", default=None, metavar="PATH",
                   help="where Tune and the trials' checkpoints live (default DIR/sweeps; may be s3://bucket/prefix)")
    add_workdir_arg(p)
    p.add_argument("--quiet", action="store_true", help="less progress output")
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from convlstm_dist.tune import run_sweep

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    out = run_sweep(args.config, args.workdir, smoke_test=args.smoke_test, progress=not args.quiet,
                    storage_path=args.storage_path)
    if args.quiet and out.best_recipe:
        print(out.best_recipe)
    return 0 if out.best is not None else 1
