"""``convlstm-dist train`` and ``convlstm-dist demo``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from convlstm_dist.commands.common import (
    DeprecatedConst, StoreWithAlias, add_config_args, add_set_arg, add_time_budget_arg, add_workdir_arg,
)
from convlstm_dist.data import SAMPLE_READER, sample_files
from convlstm_dist.data.ingest import ingest

DEMO_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model with Ray Train (DDP workers, checkpoints, MLflow)",
        description="Train the recipe's model on its archive with a Ray Train TorchTrainer. The run is "
                    "named after the recipe (or run.name): running the same command again resumes it "
                    "from its latest checkpoint and continues the same MLflow run.")
    add_config_args(p)
    add_workdir_arg(p)
    p.add_argument("--quiet", action="store_true", help="less progress output")
    add_time_budget_arg(p, "stop training after this many seconds, at a step boundary; the partial epoch is "
                           "validated and checkpointed (same as --set train.time_budget_s=SECONDS)")
    p.add_argument("--engine", default=None, choices=["auto", "eager", "compiled", "graph"],
                   help="step engine (same as --set train.engine=ENGINE; default the recipe's, auto: the whole "
                        "step as one CUDA graph on CUDA with the fast model)")
    p.add_argument("--memory-limit-gb", "--max-memory-gb", dest="memory_limit_gb", type=float, default=None, metavar="GB",
                   action=StoreWithAlias, aliases=("--max-memory-gb",),
                   help="host memory the archive's frames may take (same as --set data.memory_limit_gb=GB): "
                        "train's data.loader auto holds them in memory up to it (recipe default 2), --local refuses "
                        "archives above it (default 48 unless the recipe sets it) (--max-memory-gb: deprecated alias)")
    loc = p.add_argument_group(
        "single process (--local)",
        "train in this process without Ray: one GPU or the CPU, frames held in memory, the whole step as a "
        "CUDA graph on GPUs. Same checkpoints (DIR/local/RUN/best, latest; rerun to resume), same metrics, "
        "plus history.csv, curves.png and summary.json (with test-split scores)")
    loc.add_argument("--local", action="store_true", help="single-process training without Ray")
    loc.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    loc.add_argument("--cuda-graph", dest="cuda_graph", action=DeprecatedConst, const=True, default=None,
                     new="--engine graph")
    loc.add_argument("--no-cuda-graph", dest="cuda_graph", action=DeprecatedConst, const=False, new="--engine eager")
    p.set_defaults(func=run_train)

    d = sub.add_parser(
        "demo", help="ingest the shipped KNMI radar sample, train on 2 CPU workers, compare with persistence",
        description="The main job on embedded defaults: ingest the shipped KNMI radar sample into "
                    "DIR/archive.zarr, train a small ConvLSTM with 2 local Ray Train workers for a few "
                    "minutes, validate every epoch, log everything to MLflow (DIR/mlflow.db) and print "
                    "the model's skill against persistence.")
    add_workdir_arg(d)
    add_set_arg(d, "override a demo setting, e.g. --set train.epochs=2")
    d.set_defaults(func=run_demo)


def _print_summary(out, wd: Path) -> None:
    m = out.metrics
    print("\n=== summary ===")
    print(f"run {out.run_name}  checkpoint {out.checkpoint}")
    keys = [("val_mse", "val_persistence_mse", "MSE (mm/h)^2"), ("val_mae", "val_persistence_mae", "MAE mm/h")]
    keys += [(f"val_csi_{t}mmh", f"val_persistence_csi_{t}mmh", f"CSI >= {t} mm/h") for t in ("0.5", "2", "5")]
    print(f"{'score':<16}{'model':>10}{'persistence':>14}")
    for a, b, name in keys:
        if a in m:
            print(f"{name:<16}{m[a]:>10.4f}{m.get(b, float('nan')):>14.4f}")
    if "val_mse" in m and "val_persistence_mse" in m:
        ratio = m["val_mse"] / max(m["val_persistence_mse"], 1e-12)
        verdict = "beats" if ratio < 1 else "does NOT beat"
        print(f"the model {verdict} persistence in MSE on the validation windows (ratio {ratio:.3f})")
    if out.tracking_uri and out.tracking_uri.startswith("sqlite:"):
        print(f"\nbrowse the run:  convlstm-dist ui --workdir {wd}")
        print(f"           (or:  mlflow ui --backend-store-uri {out.tracking_uri})")


def train_config(args: argparse.Namespace):
    """The recipe with ``--set`` and the flags that are config keys (``--time-budget``, ``--engine``,
    ``--memory-limit-gb``) applied."""
    from convlstm_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.time_budget is not None:
        cfg.train.time_budget_s = args.time_budget
    if args.engine is not None:
        cfg.train.engine = args.engine
    if args.memory_limit_gb is not None:
        cfg.data.memory_limit_gb = args.memory_limit_gb
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from convlstm_dist.train import run_training

    cfg = train_config(args)
    if args.local:
        from convlstm_dist.train import train_local

        out = train_local(cfg, args.workdir, args.device, None, args.cuda_graph, None,
                          progress=not args.quiet)
        if out.stopped:
            print(f"convlstm-dist: training stopped early: {out.stopped}", file=sys.stderr)
            return 3
        return 0
    out = run_training(cfg, args.workdir, progress=not args.quiet)
    _print_summary(out, Path(args.workdir))
    if out.stopped:
        print(f"convlstm-dist: training stopped early: {out.stopped}", file=sys.stderr)
        return 3
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from convlstm_dist.config import load_config
    from convlstm_dist.train import run_training

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    wd = Path(args.workdir)
    wd.mkdir(parents=True, exist_ok=True)
    cfg = load_config(DEMO_RECIPE, args.overrides)
    archive = cfg.data.archive or str(wd / "archive.zarr")
    print(f"[demo] 1/3 ingest the shipped KNMI sample into {archive}")
    report = ingest(SAMPLE_READER, sample_files(), archive, parallel=False, progress=True)
    print(f"[demo]     {report}")
    print("[demo] 2/3 train with 2 Ray Train workers (progress below; MLflow in "
          f"{wd / 'mlflow.db'})")
    out = run_training(cfg, wd, progress=True)
    print("[demo] 3/3 validation skill (last epoch; the skill table, plot and forecast figure use the best checkpoint)")
    _print_summary(out, wd)
    return 0
