"""The two jobs of a trained model on an archive: skill against baselines, and a forecast to files.

* :func:`evaluate_on_archive` — which windows (the model's own test split on an archive it trained
  on, at the frames its run was pinned to; all gap-free windows on any other archive; or a time
  range), the model and baselines on them over Ray tasks (:func:`.evaluation.run_evaluation`),
  skill CSV + skill-vs-lead PNG + the forecast figure of the wettest window (:mod:`.figures`).
  :func:`log_evaluation` puts it in an MLflow run.
* :func:`nowcast_from_archive` — the ``in_len`` frames up to an analysis time (default the last
  frame), a centred crop, the forecast as a CF dataset (Zarr or NetCDF, local or ``s3://``,
  :mod:`.cf`) + ``forecast.png`` (+ ``forecast.gif``); :func:`nowcast_from_files` the same from the
  latest raw radar files, decoded by an ingest reader, without an archive. With a crop smaller than
  the grid, motion as in ``evaluate`` (``motion="shared"``): a Lagrangian model and the figure's
  optical-flow row move along the crop's slice of the motion field estimated on the whole frame
  (:func:`.evaluation.window_motion`); on the whole grid each estimates its own, as a hindcast's
  forecasts do (:mod:`.hindcast`).

A model is anything :meth:`.Nowcaster.load` takes (checkpoint, MLflow URI, registered name);
``trust`` allows full unpickling of files written by older versions. ``say`` gets progress lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from convlstm_dist.addresses import missing_sqlite, resolve_tracking_uri
from convlstm_dist.data import (
    archive_key, archive_name, decode_latest, get_reader, is_remote, open_archive, quantity_of_variable,
    storage_options_for, to_rain_mmh,
)
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast.cf import forecast_dataset, pick_format, write_dataset
from convlstm_dist.nowcast.evaluation import (
    metrics_from_rows, model_motion, parse_time, run_evaluation, select_windows, window_motion,
)
from convlstm_dist.nowcast.figures import case_figure, observed_after
from convlstm_dist.nowcast.nowcaster import Nowcaster
from convlstm_dist.tracking import check_reachable, log_stamped_run
from convlstm_dist.verify import (
    DEFAULT_BASELINES, flow_row, forecast_figure, forecast_gif, format_table, plot_skill, write_csv,
)
from convlstm_dist.verify.fss import fss_key
from convlstm_dist.verify.table import CSV_COLUMNS
from convlstm_dist.vocabulary import FSS_SCALES_KM


def open_archive_at(url: str, endpoint_url: str | None = None):
    """The archive at ``url`` (a local folder must exist; ``s3://`` opens with ``endpoint_url``)."""
    if not is_remote(url) and not Path(url).exists():
        raise UserError(f"archive {url} does not exist")
    return open_archive(url, storage_options_for(url, endpoint_url))


def trained_on(nc, archive) -> bool:
    """Whether ``archive`` may be one the model trained on (its pinned data version, or its recipe's
    archives, matched by URL or by file name: when in doubt, only the test split is scored)."""
    cfg = nc.config.data
    urls = [str(p.get("url", "")) for p in nc.info.get("data_version") or []]
    urls += [cfg.archive] if cfg.archive else []
    urls += [e.url for e in cfg.archives or []]
    if not urls and cfg.source == "archive":
        return True  # a model of the default <workdir>/archive.zarr: cannot tell, stay on its test split
    key, name = archive_key(archive.url), archive_name(archive.url)
    return any(archive_key(u) == key or archive_name(u) == name for u in urls)


def pinned_archive(nc, archive, url: str, endpoint_url: str | None = None, say=print):
    """The model's own archive at the frames its run was pinned to (``train/data_pin.py``): the
    split windows of a run are those of the data it trained on, even after later appends."""
    key = archive_key(archive.url)
    for pin in nc.info.get("data_version") or []:
        if archive_key(str(pin.get("url", ""))) == key and int(pin["frames"]) < len(archive.times):
            say(f"[evaluate] {archive.url}: the split of the run's pinned data ({pin['frames']} of "
                f"{len(archive.times)} frames, up to {pin['last_time']})")
            return open_archive(url, storage_options_for(url, endpoint_url), int(pin["frames"]))
    return archive


def evaluation_tracking_uri(nc, tracking_uri: str | None, workdir: str | Path) -> str | None:
    """Where an evaluation is logged: ``tracking_uri`` or ``MLFLOW_TRACKING_URI``, else the model's own
    tracking URI, else the workdir's ``mlflow.db`` if it exists; ``None``: nowhere."""
    import os

    if tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(tracking_uri)
    if nc.info.get("tracking_uri"):
        return nc.info["tracking_uri"]
    uri = resolve_tracking_uri(None, workdir)
    return None if missing_sqlite(uri) else uri


@dataclass
class Evaluation:
    nowcaster: object       # the loaded model (:class:`.Nowcaster`)
    archive_url: str
    rows: list[dict]        # labelled skill rows of every method (:func:`convlstm_dist.verify.label_rows`)
    record: dict            # what was evaluated: windows, crop, methods, timings
    table: str              # the skill table as text
    csv_path: Path
    png_path: Path
    case_png: Path | None = None  # forecast figure of the wettest window (:func:`.figures.case_figure`)


def evaluate_on_archive(model: str, archive_url: str, *, split: str | None = None, start: str | None = None,
                        end: str | None = None, n_out: int | None = None, max_windows: int | None = None,
                        crop: tuple[int, int] | None = None, baselines=None,
                        probability_matching: bool = False, motion: str = "shared", workers: int = 2, ray_address: str | None = None,
                        out: str | Path | None = None, workdir: str | Path = "workdir",
                        tracking_uri: str | None = None, endpoint_url: str | None = None, trust: bool = False,
                        say=print) -> Evaluation:
    """Score ``model`` and ``baselines`` on the same windows of ``archive_url``; write the CSV (``out``,
    default ``WORKDIR/evaluate/<model>-<windows>.csv``), the skill PNG and ``<out>-case.png`` beside it.
    ``split=None`` with no time range: ``test`` on an archive the model trained on, ``all`` on any other."""
    baselines = list(DEFAULT_BASELINES if baselines is None else baselines)
    if split and end:
        raise UserError("--end goes with --start (a time range), not with --split")
    nc = Nowcaster.load(model, tracking_uri, workdir, trust=trust)
    archive = open_archive_at(archive_url, endpoint_url)
    if split is None and start is None and end is None:
        split = "test" if trained_on(nc, archive) else "all"
        if split == "all":
            say(f"[evaluate] the model was not trained on {archive.url}: scoring all its gap-free windows")
    if split not in (None, "all"):
        archive = pinned_archive(nc, archive, archive_url, endpoint_url, say)
    sel = select_windows(nc, archive, split, start, end, n_out, max_windows)
    say(f"[evaluate] {nc.source}: {len(sel.starts)} windows ({sel.label}) of {sel.in_len}+{sel.n_out} frames "
        f"from {archive.url}; methods {[nc.config.model.kind, *baselines]}"
        f"{' + probability matching' if probability_matching else ''}")
    rows, record = run_evaluation(nc, archive, sel, crop, list(baselines), workers, ray_address, probability_matching,
                                 motion=motion)
    safe_label = sel.label.replace(":", "").replace("..", "_")
    out = Path(out) if out else Path(workdir) / "evaluate" / f"{nc.name}-{safe_label}.csv"

    fss_cols = [fss_key(km) for km in FSS_SCALES_KM if all(fss_key(km) in r for r in rows)]
    csv_path = write_csv(rows, out, (*CSV_COLUMNS, *fss_cols))
    png_path = plot_skill(rows, out.with_suffix(".png"))
    case_png = case_figure(out.with_name(out.stem + "-case.png"), nc, archive, sel, crop)
    return Evaluation(nc, archive_url, rows, record, format_table(rows), csv_path, png_path, case_png)


def log_evaluation(uri: str, ev: Evaluation, model: str) -> str:
    """One MLflow run in experiment ``evaluate-<model name>`` at ``uri``: parameters, skill per lead
    as metrics (step = lead in minutes), the table, the record, CSV and PNG. Returns the run id."""
    nc = ev.nowcaster
    check_reachable(uri)
    files = [ev.csv_path, ev.png_path] + ([ev.case_png] if ev.case_png else [])
    return log_stamped_run(
        uri, f"evaluate-{nc.name}", f"evaluate-{nc.name}", tags={"convlstm_dist.kind": "evaluate"},
        params={"model": model, "archive": ev.archive_url, "model_source": nc.source,
                **{k: v for k, v in ev.record.items() if not isinstance(v, dict)}},
        metrics=metrics_from_rows(ev.rows),
        texts={"skill_table.txt": ev.table, "evaluation.json": json.dumps(ev.record, indent=2, default=str)},
        files=files)


@dataclass
class Forecast:
    analysis_time: object   # numpy datetime64 of the last input frame
    n_out: int
    timestep_s: int
    grid: tuple[int, int]
    dataset: str            # the CF dataset (local path or s3:// URL)
    format: str             # zarr | netcdf
    png: Path
    gif: Path | None = None
    note: str = ""          # why the dataset has no grid_mapping ("" when it has one)
    nan_fraction: float = 0.0  # share of forecast pixels with no observed source


def forecast_paths(out: str | Path | None, fmt: str | None, workdir: str | Path) -> tuple[str, str, Path]:
    """``(dataset URL, format, figure directory + stem)`` for ``--out``:

    * none: ``WORKDIR/forecast/forecast.zarr`` (or ``.nc``), figures beside it;
    * a path or URL ending in ``.zarr`` / ``.nc``, or any ``s3://`` URL: the dataset itself; figures
      beside a local one, under ``WORKDIR/forecast/`` for a remote one;
    * any other local path: a directory with ``forecast.zarr`` (or ``.nc``) and the figures."""
    out = str(out) if out else None
    if out and (is_remote(out) or out.rstrip("/").endswith((".zarr", ".nc", ".nc4"))):
        fmt = pick_format(out, fmt)
        if is_remote(out):
            return out.rstrip("/"), fmt, Path(workdir) / "forecast" / archive_name(out).removesuffix(".nc")
        p = Path(out.rstrip("/"))
        return str(p), fmt, p.parent / p.stem
    folder = Path(out) if out else Path(workdir) / "forecast"
    fmt = pick_format("", fmt)
    return str(folder / ("forecast.nc" if fmt == "netcdf" else "forecast.zarr")), fmt, folder / "forecast"


def analysis_index(archive, at: str | None, n_in: int) -> int:
    """The frame index of the analysis time ``at`` (default the last frame), with ``n_in`` gap-free frames up to it."""
    import numpy as np

    times, step = archive.times, archive.timestep_s
    if at:
        t = parse_time(at, "--at")
        hit = np.flatnonzero(times == t)
        if not len(hit):
            raise UserError(f"--at {t} is not a frame time of {archive.url} ({times[0] if len(times) else '-'} .. "
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
    return i


def nowcast_from_archive(model: str, archive_url: str, out: str | Path | None = None, *, at: str | None = None,
                         n_out: int | None = None, crop: tuple[int, int] | None = None, gif: bool = False,
                         fmt: str | None = None, workdir: str | Path = "workdir", tracking_uri: str | None = None,
                         endpoint_url: str | None = None, trust: bool = False) -> Forecast:
    """Forecast ``n_out`` (default the model's ``out_len``) frames from the frames up to ``at`` of a
    centred ``crop`` (default the full grid); write the CF dataset and the figures (:func:`forecast_paths`)."""
    import numpy as np

    nc = Nowcaster.load(model, tracking_uri, workdir, trust=trust)
    archive = open_archive_at(archive_url, endpoint_url)
    nc.check_variable(archive.variable)
    times, step = archive.times, archive.timestep_s
    n_in = nc.in_len
    i = analysis_index(archive, at, n_in)
    _, H, W = archive.shape
    ys, xs, crop = _centred(crop, H, W, nc)
    raw = archive.read(i + 1 - n_in, i + 1)  # the whole frame: its motion field
    q = quantity_of_variable(archive.variable)
    frames = np.where(np.isnan(raw), np.nan, archive.to_rain_mmh(raw)) if q.has_rain_rate else raw
    velocity = _shared_motion(frames, ys, xs, q)
    frames = frames[:, ys, xs]
    a = archive.attrs
    attrs = {"source_archive": archive.url, "crop_y0": ys.start, "crop_x0": xs.start,
             **{k: a.get(k) for k in ("source", "zr_a", "zr_b", "projection", "pixel_size_m", "attribution")}}

    observed = observed_after(archive, i, int(n_out or nc.out_len), ys, xs)  # drawn beside the forecast
    return _forecast_products(nc, frames, q.physical_variable, times[i], int(step), archive.y[ys], archive.x[xs],
                              archive.xy_units, a.get("projection"), attrs, n_out, out, fmt, gif, workdir,
                              endpoint_url, observed, f"{H}x{W} grid of {archive.url}", velocity)


def nowcast_from_files(model: str, reader: str, files, out: str | Path | None = None, *,
                       reader_options: dict | None = None, n_out: int | None = None,
                       crop: tuple[int, int] | None = None, gif: bool = False, fmt: str | None = None,
                       workdir: str | Path = "workdir", tracking_uri: str | None = None,
                       endpoint_url: str | None = None, trust: bool = False) -> Forecast:
    """The same forecast from the latest ``in_len`` of raw radar ``files``, decoded by ``reader`` (a name
    of ``convlstm_dist.data.readers``, as ``ingest`` takes), without an archive."""
    import numpy as np

    nc = Nowcaster.load(model, tracking_uri, workdir, trust=trust)
    raw, meta = decode_latest(get_reader(reader, reader_options), files, nc.in_len)
    nc.check_variable(meta["variable"])
    _, H, W = raw.shape
    ys, xs, crop = _centred(crop, H, W, nc)
    q = quantity_of_variable(meta["variable"])
    frames = (np.where(np.isnan(raw), np.nan, to_rain_mmh(raw, meta["variable"], meta["zr_a"], meta["zr_b"]))
              if q.has_rain_rate else raw)
    velocity = _shared_motion(frames, ys, xs, q)  # on the whole frame
    frames = frames[:, ys, xs]
    georef = meta["y"] is not None and meta["x"] is not None
    y = np.asarray(meta["y"])[ys] if georef else np.arange(H, dtype="float64")[ys]
    x = np.asarray(meta["x"])[xs] if georef else np.arange(W, dtype="float64")[xs]
    attrs = {"source_files": f"{len(files)} file(s) read with reader {reader}, latest "
                             f"{Path(str(files[-1])).name if files else ''}",
             "crop_y0": ys.start, "crop_x0": xs.start,
             **{k: meta.get(k) for k in ("source", "zr_a", "zr_b", "projection", "pixel_size_m", "attribution")}}
    return _forecast_products(nc, frames, q.physical_variable, meta["times"][-1], int(meta["timestep_s"]), y, x,
                              "m" if georef else "1", meta.get("projection"), attrs, n_out, out, fmt, gif,
                              workdir, endpoint_url, None, f"{len(files)} {reader} file(s)", velocity)


def _centred(crop, H: int, W: int, nc):
    crop = crop or (H, W)
    if crop[0] > H or crop[1] > W:
        raise UserError(f"crop {crop[0]}x{crop[1]} is larger than the grid {H}x{W}")
    y0, x0 = (H - crop[0]) // 2, (W - crop[1]) // 2
    try:
        nc.check_grid(*crop)
    except UserError as err:
        raise UserError(f"{err} (pass --crop HxW for a centred crop)") from None
    return slice(y0, y0 + crop[0]), slice(x0, x0 + crop[1]), crop


def _shared_motion(frames, ys: slice, xs: slice, q):
    """:func:`.evaluation.window_motion` of the whole ``frames``, cut to the crop ``ys, xs``; None (each
    method then estimates its own motion, from the frames it forecasts) when the crop is the whole
    grid, for a quantity that is no rain rate, or without pysteps."""
    H, W = frames.shape[-2:]
    if not q.has_rain_rate or (ys.indices(H)[:2], xs.indices(W)[:2]) == ((0, H), (0, W)):
        return None
    try:
        return window_motion(frames, ys, xs)
    except UserError:
        return None


def _forecast_products(nc, frames, variable: str, analysis_time, step: int, y, x, xy_units: str, projection,
                       attrs: dict, n_out, out, fmt, gif: bool, workdir, endpoint_url, observed=None,
                       where: str = "", velocity=None) -> Forecast:
    """Forecast, write the CF dataset (:mod:`.cf`) and the figures (``verify.figures``: the inputs,
    ``observed`` frames after the analysis time when known, the model and optical flow per lead);
    the :class:`Forecast` record. ``velocity`` (2, h, w): the motion of the model (Lagrangian) and
    of the optical-flow row (:func:`_shared_motion`)."""
    import numpy as np

    n_out = int(n_out or nc.out_len)
    url, fmt, stem = forecast_paths(out, fmt, workdir)

    fcst = nc.predict(frames, n_out, variable, motion=model_motion(nc, velocity))
    attrs = {"convlstm_dist_forecast": 1, "model": nc.source, "in_len": nc.in_len, "timestep_s": int(step),
             "analysis_time": str(analysis_time), **attrs}
    ds, note = forecast_dataset(fcst[None], [analysis_time], step, y, x, variable=variable, xy_units=xy_units,
                                projection=projection, attrs=attrs)
    write_dataset(ds, url, fmt, variable, storage_options_for(url, endpoint_url), scratch=Path(workdir) / "tmp")
    stem.parent.mkdir(parents=True, exist_ok=True)
    q = quantity_of_variable(variable)
    flow = flow_row(frames, n_out, q.has_rain_rate, velocity)
    x_m, y_m = (x, y) if xy_units == "m" else (None, None)
    title = f"{nc.name} nowcast from {analysis_time} UTC" + (f", {where}" if where else "")
    png = forecast_figure(stem.with_suffix(".png"), inputs=frames, model=fcst, observed=observed, flow=flow,
                          timestep_s=step, units=q.display_unit, x=x_m, y=y_m, projection=projection, title=title,
                          model_label=nc.name)
    gif_path = forecast_gif(stem.with_suffix(".gif"), fcst, step, q.display_unit, x_m, y_m, projection,
                            title=nc.name) if gif else None
    return Forecast(analysis_time, n_out, int(step), tuple(frames.shape[-2:]), url, fmt, png, gif_path, note,
                    float(np.isnan(fcst).mean()))
