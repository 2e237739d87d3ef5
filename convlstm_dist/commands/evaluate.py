"""``convlstm-dist evaluate`` (skill against baselines, on Ray tasks) and ``convlstm-dist nowcast``.

    convlstm-dist evaluate --model workdir/runs/demo-knmi/checkpoint_... --archive workdir/archive.zarr \
        --split val --crop 128x128 --out eval/skill.csv
    convlstm-dist evaluate --model demo-knmi --archive s3://bucket/knmi.zarr --start 2010-08-26T04:00 --end 2010-08-26T08:00
    convlstm-dist nowcast --model models:/demo-knmi/1 --archive workdir/archive.zarr --crop 384x352 --out forecast/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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
    e.add_argument("--baselines", default="persistence,optical_flow",
                   help="comma-separated baselines, or 'none' (default: persistence,optical_flow)")
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


def _open(args):
    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.storage import is_remote, storage_options_for
    from convlstm_dist.errors import UserError

    if not is_remote(args.archive) and not Path(args.archive).exists():
        raise UserError(f"archive {args.archive} does not exist")
    return open_archive(args.archive, storage_options_for(args.archive, args.endpoint_url))


def _trained_on(nc, archive) -> bool:
    """Whether ``archive`` may be one the model trained on (its pinned data version, or its recipe's
    archives, matched by URL or by file name: when in doubt, only the test split is scored)."""
    from convlstm_dist.data.storage import archive_key, archive_name

    cfg = nc.config.data
    urls = [str(p.get("url", "")) for p in nc.info.get("data_version") or []]
    urls += [cfg.archive] if cfg.archive else []
    urls += [e.url for e in cfg.archives or []]
    if not urls and cfg.source == "archive":
        return True  # a model of the default <workdir>/archive.zarr: cannot tell, stay on its test split
    key, name = archive_key(archive.url), archive_name(archive.url)
    return any(archive_key(u) == key or archive_name(u) == name for u in urls)


def _pinned(archive, nc, args):
    """The model's own archive at the frames its run was pinned to (``train/data_pin.py``): the
    split windows of a run are those of the data it trained on, even after later appends."""
    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.storage import archive_key, storage_options_for

    key = archive_key(archive.url)
    for pin in nc.info.get("data_version") or []:
        if archive_key(str(pin.get("url", ""))) == key and int(pin["frames"]) < len(archive.times):
            print(f"[evaluate] {archive.url}: the split of the run's pinned data ({pin['frames']} of "
                  f"{len(archive.times)} frames, up to {pin['last_time']})", flush=True)
            return open_archive(args.archive, storage_options_for(args.archive, args.endpoint_url),
                                int(pin["frames"]))
    return archive


def _tracking_uri(args, nc) -> str | None:
    import os

    from convlstm_dist.runtime import resolve_tracking_uri

    if args.no_mlflow:
        return None
    if args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(args.tracking_uri)
    if nc.info.get("tracking_uri"):
        return nc.info["tracking_uri"]
    uri = resolve_tracking_uri(None, args.workdir)
    return uri if Path(uri[len("sqlite:///"):]).exists() else None


def run_evaluate(args: argparse.Namespace) -> int:
    from convlstm_dist.errors import UserError
    from convlstm_dist.nowcast.evaluation import parse_crop, run_evaluation, select_windows
    from convlstm_dist.nowcast.nowcaster import Nowcaster
    from convlstm_dist.verify import format_table, plot_skill, write_csv

    t0 = time.time()
    crop = parse_crop(args.crop)
    if args.split and args.end:
        raise UserError("--end goes with --start (a time range), not with --split")
    nc = Nowcaster.load(args.model, args.tracking_uri, args.workdir, trust=args.trust_model)
    archive = _open(args)
    split = args.split
    if split is None and args.start is None and args.end is None:
        split = "test" if _trained_on(nc, archive) else "all"
        if split == "all":
            print(f"[evaluate] the model was not trained on {archive.url}: scoring all its gap-free windows",
                  flush=True)
    if split not in (None, "all"):
        archive = _pinned(archive, nc, args)
    sel = select_windows(nc, archive, split, args.start, args.end, args.n_out, args.max_windows)
    baselines = [] if args.baselines.strip().lower() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    print(f"[evaluate] {nc.source}: {len(sel.starts)} windows ({sel.label}) of {sel.in_len}+{sel.n_out} frames "
          f"from {archive.url}; methods {[nc.config.model.kind, *baselines]}"
          f"{' + probability matching' if args.probability_matching else ''}", flush=True)
    rows, record = run_evaluation(nc, archive, sel, crop, baselines, args.workers, args.ray_address,
                                  args.probability_matching)
    safe_label = sel.label.replace(":", "").replace("..", "_")
    out = Path(args.out) if args.out else Path(args.workdir) / "evaluate" / f"{nc.name}-{safe_label}.csv"
    csv_path = write_csv(rows, out)
    png_path = plot_skill(rows, out.with_suffix(".png"))
    table = format_table(rows)
    print(table)
    print(f"\n[evaluate] CSV {csv_path}\n[evaluate] plot {png_path}")
    uri = _tracking_uri(args, nc)
    if uri:
        run_id = _log_mlflow(uri, nc, args, record, rows, table, csv_path, png_path)
        print(f"[evaluate] MLflow run {run_id} in experiment evaluate-{nc.name} at {uri}")
    print(f"[evaluate] done in {time.time() - t0:.1f} s")
    return 0


def _log_mlflow(uri, nc, args, record, rows, table, csv_path, png_path) -> str:
    import json

    from convlstm_dist.nowcast.evaluation import metrics_from_rows
    from convlstm_dist.tracking.mlflow_tracker import Tracker, check_reachable

    check_reachable(uri)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    tracker, _ = Tracker.start_or_resume(uri, f"evaluate-{nc.name}", f"evaluate-{nc.name}-{stamp}-{time.time_ns() % 10**6}",
                                         tags={"convlstm_dist.kind": "evaluate"})
    tracker.log_params({"model": args.model, "archive": args.archive, "model_source": nc.source,
                        **{k: v for k, v in record.items() if not isinstance(v, dict)}})
    by_step: dict[int, dict] = {}
    for key, value, step in metrics_from_rows(rows):
        by_step.setdefault(step, {})[key] = value
    for step, metrics in sorted(by_step.items()):
        tracker.log_metrics(metrics, step)
    tracker.log_text(table, "skill_table.txt")
    tracker.log_text(json.dumps(record, indent=2, default=str), "evaluation.json")
    tracker.log_artifact(csv_path)
    tracker.log_artifact(png_path)
    tracker.end()
    return tracker.run_id


def run_nowcast(args: argparse.Namespace) -> int:
    import numpy as np

    from convlstm_dist.data.quantity import quantity_of_variable
    from convlstm_dist.errors import UserError
    from convlstm_dist.nowcast.evaluation import parse_crop, parse_time
    from convlstm_dist.nowcast.nowcaster import Nowcaster, forecast_gif, forecast_strip, write_forecast_zarr

    nc = Nowcaster.load(args.model, args.tracking_uri, args.workdir, trust=args.trust_model)
    archive = _open(args)
    nc.check_variable(archive.variable)
    times, step = archive.times, archive.timestep_s
    n_in, n_out = nc.in_len, int(args.n_out or nc.out_len)
    if args.at:
        at = parse_time(args.at, "--at")
        hit = np.flatnonzero(times == at)
        if not len(hit):
            raise UserError(f"--at {at} is not a frame time of {archive.url} ({times[0] if len(times) else '-'} .. "
                            f"{times[-1] if len(times) else '-'}, every {step} s)")
        i = int(hit[0])
    else:
        i = len(times) - 1
    if i + 1 < n_in:
        raise UserError(f"too few frames: the model needs {n_in} input frames up to the analysis time, "
                        f"{archive.url} has {i + 1}")
    sec = times[i + 1 - n_in:i + 1].astype("int64")
    if np.any(np.diff(sec) != step):
        raise UserError(f"the {n_in} frames up to {times[i]} have a time gap; pick another --at")
    _, H, W = archive.shape
    crop = parse_crop(args.crop) or (H, W)
    if crop[0] > H or crop[1] > W:
        raise UserError(f"crop {crop[0]}x{crop[1]} is larger than the archive grid {H}x{W}")
    y0, x0 = (H - crop[0]) // 2, (W - crop[1]) // 2
    ys, xs = slice(y0, y0 + crop[0]), slice(x0, x0 + crop[1])
    try:
        nc.check_grid(*crop)
    except UserError as err:
        raise UserError(f"{err} (pass --crop HxW for a centred crop)") from None
    raw = archive.read(i + 1 - n_in, i + 1, ys, xs)
    q = quantity_of_variable(archive.variable)
    frames = np.where(np.isnan(raw), np.nan, archive.to_rain_mmh(raw)) if q.has_rain_rate else raw
    variable = q.physical_variable
    fcst = nc.predict(frames, n_out, variable)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    a = archive.attrs
    attrs = {"convlstm_dist_forecast": 1, "source_archive": archive.url, "model": nc.source,
             "analysis_time": str(times[i]), "timestep_s": int(step), "in_len": n_in,
             "crop_y0": y0, "crop_x0": x0, **{k: a.get(k) for k in ("source", "zr_a", "zr_b", "projection",
                                                                  "pixel_size_m", "attribution")}}
    zpath = write_forecast_zarr(out / "forecast.zarr", fcst, times[i], step, archive.y[ys], archive.x[xs],
                                variable, attrs)
    lead = np.arange(1, n_out + 1) * step / 60.0
    units = q.units
    png = forecast_strip(out / "forecast.png", frames[-1], fcst, lead, f"{nc.name} nowcast from {times[i]} UTC", units)
    print(f"[nowcast] analysis {times[i]} UTC, {n_out} leads every {step / 60:g} min, grid {crop[0]}x{crop[1]}")
    print(f"[nowcast] zarr {zpath}")
    print(f"[nowcast] png  {png}")
    if args.gif:
        print(f"[nowcast] gif  {forecast_gif(out / 'forecast.gif', fcst, lead, units)}")
    return 0
