"""``convlstm-dist evaluate`` (skill against baselines, on Ray tasks) and ``convlstm-dist nowcast``.

    convlstm-dist evaluate --model workdir/runs/demo-knmi/checkpoint_... --archive workdir/archive.zarr \
        --split val --crop 128x128 --out eval/skill.csv
    convlstm-dist evaluate --model demo-knmi --archive s3://bucket/knmi.zarr --start 2010-08-26T04:00 --end 2010-08-26T08:00
    convlstm-dist nowcast --model models:/demo-knmi/1 --archive workdir/archive.zarr --crop 384x352 --out forecast/
"""

from __future__ import annotations

import argparse
import time

from convlstm_dist.commands.common import add_workdir_arg

MODEL_HELP = ("checkpoint directory or checkpoint.pt, an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, "
              "runs:/RUN_ID/model) or a registered model name (latest version)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--trust-model", action="store_true",
                   help="also load model files that need full unpickling (checkpoints or MLflow models "
                        "written by older versions). Unpickling runs code named in the file: use only for "
                        "files you trust. Without it, models load as tensors + plain data only")
    p.add_argument("--archive", required=True, metavar="URL", help="archive: local path or s3://bucket/x.zarr")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)")
    p.add_argument("--crop", default=None, metavar="HxW",
                   help="evaluate/forecast an HxW crop instead of the full grid (any size; a grid the model's "
                        "patch does not divide is padded with no-data and the forecast cropped back)")
    p.add_argument("--n-out", type=int, default=None, metavar="N", help="lead times (default: the model's out_len)")
    add_workdir_arg(p)


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate", help="score a model against persistence / optical flow (CSI, POD, FAR, HSS, MSE per lead)",
        description="Run the model and the baselines on exactly the same windows of an archive, spread over "
                    "local Ray tasks, and report skill per lead time and threshold in rain rate: a table on "
                    "stdout, a CSV, a skill-vs-lead PNG next to it, and an MLflow run in experiment "
                    "evaluate-<model name>.")
    _common(e)
    g = e.add_mutually_exclusive_group()
    g.add_argument("--split", choices=("test", "val", "train", "all"), default=None,
                   help="windows of this split of the model's own split rule, or all gap-free windows (default: "
                        "test on an archive the model was trained on, all on any other archive)")
    g.add_argument("--start", default=None, metavar="TIME", help="windows inside [--start, --end] (ISO 8601, UTC)")
    e.add_argument("--end", default=None, metavar="TIME", help="end of the time range (default: last frame)")
    e.add_argument("--out", default=None, metavar="FILE.csv", help="CSV path (default: WORKDIR/evaluate/<model>-<split>.csv)")
    e.add_argument("--baselines", default="persistence,optical_flow,sprog,anvil",
                   help="comma-separated baselines, or 'none' (default: persistence,optical_flow,sprog,anvil: extrapolation, S-PROG and ANVIL on one motion field; a method needing more input frames than the model has is left out)")
    e.add_argument("--probability-matching", action="store_true",
                   help="also score the model's forecast after probability matching to the last input frame "
                        "(method <model>_pm: the forecast's pattern with the observed intensity distribution)")
    e.add_argument("--workers", type=int, default=2, help="Ray tasks run in parallel (local Ray CPUs; default 2)")
    e.add_argument("--ray-address", default=None, help="attach to this Ray cluster instead of starting a local one")
    e.add_argument("--max-windows", type=int, default=None, metavar="N", help="evenly spaced subset of N windows")
    e.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation to MLflow")
    e.set_defaults(func=run_evaluate)

    n = sub.add_parser(
        "nowcast", help="forecast from the latest (or given) frames of an archive; writes forecast.zarr + PNG",
        description="Forecast n_out frames from the in_len frames ending at --at (default: the archive's last "
                    "frame). Writes DIR/forecast.zarr (xarray-readable: <variable>(time, lead_time, y, x), "
                    "lead_time in minutes) and DIR/forecast.png (and --gif DIR/forecast.gif).")
    _common(n)
    n.add_argument("--at", default=None, metavar="TIME", help="analysis time = last input frame (default: latest)")
    n.add_argument("--out", default="forecast", metavar="DIR", help="output directory (default: ./forecast)")
    n.add_argument("--gif", action="store_true", help="also write an animated forecast.gif")
    n.set_defaults(func=run_nowcast)


def run_evaluate(args: argparse.Namespace) -> int:
    from convlstm_dist.nowcast import (
        evaluate_on_archive,
        evaluation_tracking_uri,
        log_evaluation,
        parse_crop,
    )

    t0 = time.time()
    crop = parse_crop(args.crop)
    baselines = [] if args.baselines.strip().lower() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    ev = evaluate_on_archive(
        args.model, args.archive, split=args.split, start=args.start, end=args.end, n_out=args.n_out,
        max_windows=args.max_windows, crop=crop, baselines=baselines, probability_matching=args.probability_matching,
        workers=args.workers, ray_address=args.ray_address, out=args.out, workdir=args.workdir,
        tracking_uri=args.tracking_uri, endpoint_url=args.endpoint_url, trust=args.trust_model,
        say=lambda m: print(m, flush=True))
    print(ev.table)
    print(f"\n[evaluate] CSV {ev.csv_path}\n[evaluate] plot {ev.png_path}")
    if ev.case_png:
        print(f"[evaluate] forecast figure (wettest window) {ev.case_png}")
    uri = None if args.no_mlflow else evaluation_tracking_uri(ev.nowcaster, args.tracking_uri, args.workdir)
    if uri:
        run_id = log_evaluation(uri, ev, args.model)
        print(f"[evaluate] MLflow run {run_id} in experiment evaluate-{ev.nowcaster.name} at {uri}")
    print(f"[evaluate] done in {time.time() - t0:.1f} s")
    return 0


def run_nowcast(args: argparse.Namespace) -> int:
    from convlstm_dist.nowcast import nowcast_from_archive, parse_crop

    f = nowcast_from_archive(args.model, args.archive, args.out, at=args.at, n_out=args.n_out,
                             crop=parse_crop(args.crop), gif=args.gif, workdir=args.workdir,
                             tracking_uri=args.tracking_uri, endpoint_url=args.endpoint_url, trust=args.trust_model)
    print(f"[nowcast] analysis {f.analysis_time} UTC, {f.n_out} leads every {f.timestep_s / 60:g} min, "
          f"grid {f.grid[0]}x{f.grid[1]}")
    print(f"[nowcast] zarr {f.zarr}")
    print(f"[nowcast] png  {f.png}")
    if f.gif:
        print(f"[nowcast] gif  {f.gif}")
    return 0
