"""``convlstm-dist skill-report``: the held-out-event protocol (:mod:`convlstm_dist.experiments.skill_report`).

    convlstm-dist skill-report --config pipelines/radar_multi.yaml --workdir WD --time-budget 240
    convlstm-dist skill-report --config pipelines/radar_multi.yaml --workdir WD --holdout mch-20160711 fmi-20160928
"""

from __future__ import annotations

import argparse

from convlstm_dist.commands.common import (
    DeprecatedConst, add_config_args, add_scoring_args, add_time_budget_arg, add_workdir_arg, parse_baselines,
)
from convlstm_dist.nowcast import parse_crop


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "skill-report", help="held-out-event skill: train on some events, score model/persistence/optical flow on the others",
        description="Leave-one-out over the recipe's events (data.archives), or one fold holding out --holdout "
                    "events. Each fold trains the recipe on its training events only (single process, "
                    "--time-budget seconds), then scores every held-out event on all its windows with the model, "
                    "persistence and optical flow on the same windows: CSI/POD/FAR/HSS at 0.5/2/5/10 mm/h per "
                    "lead time. Writes WORKDIR/skill-report/<recipe>/ (CSV, markdown, PNG) and one MLflow run "
                    "tagged with the trained and scored events. A scored event is never a training event.")
    add_config_args(p)
    add_workdir_arg(p)
    p.add_argument("--events", nargs="+", default=None, metavar="URL",
                   help="the events (archives; relative paths resolve against the workdir); default: the "
                        "recipe's data.archives")
    p.add_argument("--holdout", nargs="+", default=None, metavar="EVENT",
                   help="score only these events (name like mch-20160711, or URL), training one model on all "
                        "the others; default: leave-one-out over every event")
    add_time_budget_arg(p, "training time per fold (default 300)", dest="budget_s", default=300.0)
    p.add_argument("--device", default="cpu", help="training/scoring device for the fold models (default cpu)")
    add_scoring_args(p, windows="windows per event", workers="Ray tasks for scoring (default 2)")
    p.add_argument("--no-mlflow", action="store_true", help="track neither the fold trainings nor the report")
    p.add_argument("--quiet", action="store_true", help="no training and scoring progress")
    p.add_argument("--verbose", dest="quiet", action=DeprecatedConst, const=False,
                   new="nothing (progress is now the default; --quiet turns it off)")
    p.set_defaults(func=run_skill_report)


def run_skill_report(args: argparse.Namespace) -> int:
    from convlstm_dist.config import load_config
    from convlstm_dist.experiments import events_from_config, format_summary, run_protocol

    cfg = load_config(args.config, args.overrides)
    events = events_from_config(cfg, args.events)
    baselines = parse_baselines(args.baselines)
    res = run_protocol(cfg, args.workdir, events, args.holdout, args.budget_s, args.device, baselines,
                       parse_crop(args.crop), args.max_windows, args.workers, not args.no_mlflow, not args.quiet,
                       motion=args.motion)
    print(format_summary(res))
    return 0
