"""``convlstm-dist evaluate`` (skill against baselines, on Ray tasks), ``nowcast`` and ``hindcast``.

    convlstm-dist evaluate --model workdir/runs/demo-knmi/checkpoint_... --archive workdir/archive.zarr \
        --split val --crop 128x128 --out eval/skill.csv
    convlstm-dist evaluate --model demo-knmi --archive s3://bucket/knmi.zarr --start 2010-08-26T04:00 --end 2010-08-26T08:00
    convlstm-dist nowcast --model models:/demo-knmi/1 --archive workdir/archive.zarr --out fc.nc
    convlstm-dist nowcast --model demo-knmi --archive s3://bucket/knmi.zarr --out s3://bucket/fc/latest.zarr
    convlstm-dist nowcast --model demo-knmi --reader knmi_hdf5 data/knmi/RAD_NL25_RAP_5min_2010082607*.h5
    convlstm-dist hindcast --model demo-knmi --archive workdir/archive.zarr --start 2010-08-26T04:00 \
        --end 2010-08-26T06:00 --out s3://bucket/hindcast.zarr
"""

from __future__ import annotations

import argparse
import time

from convlstm_dist.commands.common import add_scoring_args, add_workdir_arg, parse_baselines
from convlstm_dist.data import parse_reader_options
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast import (
    evaluate_on_archive, evaluation_tracking_uri, log_evaluation, nowcast_from_archive, nowcast_from_files, parse_crop,
    run_hindcast as hindcast,
)

MODEL_HELP = ("checkpoint directory or checkpoint.pt, an MLflow model URI (models:/NAME/VERSION, models:/NAME@ALIAS, "
              "runs:/RUN_ID/model) or a registered model name (latest version)")


def _common(p: argparse.ArgumentParser, archive_required: bool = True, crop: bool = True) -> None:
    p.add_argument("--model", required=True, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--trust-model", action="store_true",
                   help="also load model files that need full unpickling (checkpoints or MLflow models "
                        "written by older versions). Unpickling runs code named in the file: use only for "
                        "files you trust. Without it, models load as tensors + plain data only")
    p.add_argument("--archive", required=archive_required, metavar="URL",
                   help="archive: local path or s3://bucket/x.zarr")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint of archives and outputs (default: AWS_ENDPOINT_URL[_S3])")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///WORKDIR/mlflow.db)")
    if crop:
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
    add_scoring_args(e, crop=False)  # --crop comes with the arguments evaluate shares with nowcast and hindcast
    e.add_argument("--probability-matching", action="store_true",
                   help="also score the model's forecast after probability matching to the last input frame "
                        "(method <model>_pm: the forecast's pattern with the observed intensity distribution)")
    e.add_argument("--ray-address", default=None, help="attach to this Ray cluster instead of starting a local one")
    e.add_argument("--no-mlflow", action="store_true", help="do not log the evaluation to MLflow")
    e.set_defaults(func=run_evaluate)

    n = sub.add_parser(
        "nowcast", help="forecast from the latest (or given) frames of an archive or of raw radar files; "
                        "writes a CF-1.8 Zarr or NetCDF + PNG",
        description="Forecast n_out frames from the in_len frames ending at --at (default: the archive's last "
                    "frame), or from the latest in_len of raw radar FILES decoded with --reader (the readers of "
                    "`ingest`, no archive needed). Writes one CF-1.8 dataset: rain_mmh(forecast_reference_time, "
                    "forecast_period, y, x) in mm h-1 (standard_name lwe_precipitation_rate), NaN where the model "
                    "has no observed source; valid time, x/y in metres and a crs grid mapping (pyproj.CRS.from_cf) "
                    "when the data has a projection. Plus forecast.png (and --gif forecast.gif).")
    _common(n, archive_required=False)
    n.add_argument("--reader", default=None,
                   help="forecast from raw FILES decoded by this reader instead of an --archive: knmi_hdf5, "
                        "fmi_pgm, odim_hdf5 or pysteps:IMPORTER (as `ingest --reader`)")
    n.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of a pysteps:IMPORTER reader (repeatable), as for `ingest`")
    n.add_argument("files", nargs="*", metavar="FILE", help="radar files for --reader (the latest in_len are used)")
    n.add_argument("--at", default=None, metavar="TIME", help="analysis time = last input frame (default: latest)")
    n.add_argument("--out", default=None, metavar="PATH|URL",
                   help="a .zarr or .nc path or s3:// URL (the dataset), or a directory for forecast.zarr/.nc "
                        "+ forecast.png (default: WORKDIR/forecast/)")
    n.add_argument("--format", dest="fmt", choices=("zarr", "netcdf"), default=None,
                   help="dataset format (default: netcdf for a .nc --out, else zarr)")
    n.add_argument("--gif", action="store_true", help="also write an animated forecast.gif")
    n.set_defaults(func=run_nowcast)

    h = sub.add_parser(
        "hindcast", help="every forecast of a period (Ray Data actors) into one CF dataset; streams and resumes",
        description="Run the forecast of every analysis time in [--start, --end] that has in_len gap-free frames "
                    "up to it, on a pool of model actors (Ray Data map_batches; a GPU each with --gpus), and write "
                    "them into one CF-1.8 dataset: rain_mmh(forecast_reference_time, forecast_period, y, x), NaN "
                    "where there is no observed source, plus forecast_written(forecast_reference_time). Each batch "
                    "is written into its region of a store created up front, so the period never sits in memory; "
                    "the same command again skips the forecasts already written (resume).")
    _common(h, crop=False)
    h.add_argument("--start", default=None, metavar="TIME", help="first analysis time (ISO 8601, UTC; default: first)")
    h.add_argument("--end", default=None, metavar="TIME", help="last analysis time (default: the archive's last frame)")
    h.add_argument("--out", required=True, metavar="PATH|URL", help="the dataset: a local path or s3:// URL")
    h.add_argument("--format", dest="fmt", choices=("zarr", "netcdf"), default=None,
                   help="zarr (default; written in place, resumable) or netcdf (staged as Zarr under "
                        "WORKDIR/hindcast/, converted at the end; default for a .nc --out)")
    h.add_argument("--batch-size", type=int, default=4, metavar="N", help="forecasts per model call (default 4)")
    h.add_argument("--actors", type=int, default=1, metavar="N", help="model actors (default 1)")
    h.add_argument("--gpus", action="store_true", help="one GPU per actor")
    h.add_argument("--ray-address", default=None, help="attach to this Ray cluster instead of starting a local one")
    h.set_defaults(func=run_hindcast)


def run_evaluate(args: argparse.Namespace) -> int:
    t0 = time.time()
    crop = parse_crop(args.crop)
    baselines = parse_baselines(args.baselines)
    ev = evaluate_on_archive(
        args.model, args.archive, split=args.split, start=args.start, end=args.end, n_out=args.n_out,
        max_windows=args.max_windows, crop=crop, baselines=baselines, probability_matching=args.probability_matching,
        motion=args.motion, workers=args.workers, ray_address=args.ray_address, out=args.out, workdir=args.workdir,
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
    common = dict(n_out=args.n_out, crop=parse_crop(args.crop), gif=args.gif, fmt=args.fmt, workdir=args.workdir,
                  tracking_uri=args.tracking_uri, endpoint_url=args.endpoint_url, trust=args.trust_model)
    if args.reader:
        if args.archive or args.at:
            raise UserError("--reader forecasts from the latest FILES: leave out --archive and --at")
        if not args.files:
            raise UserError("--reader needs radar FILES (the latest in_len frames are used)")

        f = nowcast_from_files(args.model, args.reader, args.files, args.out,
                               reader_options=parse_reader_options(args.reader_option), **common)
    else:
        if not args.archive:
            raise UserError("nowcast needs --archive URL, or --reader NAME FILES...")
        if args.files:
            raise UserError(f"FILES ({args.files[0]} ...) go with --reader NAME; with --archive give none")
        f = nowcast_from_archive(args.model, args.archive, args.out, at=args.at, **common)
    print(f"[nowcast] analysis {f.analysis_time} UTC, {f.n_out} leads every {f.timestep_s / 60:g} min, "
          f"grid {f.grid[0]}x{f.grid[1]}, {100 * f.nan_fraction:.1f}% no data")
    print(f"[nowcast] {f.format} {f.dataset}")
    if f.note:
        print(f"[nowcast] no grid_mapping in the dataset: {f.note}")
    print(f"[nowcast] png  {f.png}")
    if f.gif:
        print(f"[nowcast] gif  {f.gif}")
    return 0


def run_hindcast(args: argparse.Namespace) -> int:
    h = hindcast(args.model, args.archive, args.out, start=args.start, end=args.end, fmt=args.fmt, n_out=args.n_out,
                 batch_size=args.batch_size, actors=args.actors, gpus=args.gpus, ray_address=args.ray_address,
                 workdir=args.workdir, tracking_uri=args.tracking_uri, endpoint_url=args.endpoint_url,
                 trust=args.trust_model, say=lambda m: print(m, flush=True))
    print(f"[hindcast] {h.total} forecasts ({h.first} .. {h.last}, {h.n_out} leads every {h.timestep_s / 60:g} min): "
          f"{h.written} written now, {h.already} resumed; {h.format} {h.out} [{h.seconds:.1f} s]")
    if h.note:
        print(f"[hindcast] no grid_mapping in the dataset: {h.note}")
    return 0
