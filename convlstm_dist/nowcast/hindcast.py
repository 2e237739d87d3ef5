"""Every forecast of a period (a hindcast) as one CF dataset, on Ray Data actors, streamed and resumable.

    convlstm-dist hindcast --model demo-knmi --archive workdir/archive.zarr \
        --start 2010-08-26T04:00 --end 2010-08-26T06:00 --out workdir/hindcast.zarr

* **Which forecasts.** One per analysis time ``t`` in ``[start, end]`` that has ``in_len`` gap-free
  frames up to it (the forecast ``nowcast --at t`` makes), ``n_out`` leads each.
* **Where.** A CF-1.8 Zarr (:mod:`.cf`): ``rain_mmh(forecast_reference_time, forecast_period, y, x)``,
  one chunk per forecast and lead, local or ``s3://``. It is created up front with every analysis
  time (NaN until written) and a marker ``forecast_written(forecast_reference_time)`` (0/1).
  ``--format netcdf`` streams into a Zarr staging store under ``WORKDIR/hindcast/`` and converts it
  to NetCDF-4 at the end, one forecast at a time.
* **How.** ``ray.data.from_items`` of the analysis indices → ``map_batches`` on a pool of model
  actors (:class:`ForecastActor`, ``actors`` of them, one GPU each if ``gpus``, else one CPU). Each
  actor reads its batch's frames from the archive, forecasts (:meth:`.Nowcaster.predict_batch`: NaN
  where there is no observed source) and writes the forecasts into their region of the store, then
  sets their markers. Only indices travel back to the driver: the period is never in memory.
* **Resume.** A rerun with the same arguments opens the store, skips every analysis time whose
  marker is 1 and forecasts the rest. A store made by another model, archive, period or lead count
  is refused (choose another ``--out``). A marker is set only after its forecast's data are written,
  so a forecast cut off by a kill is redone.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlstm_dist.data import (
    archive_name, consolidate, filesystem, gap_free_starts, is_remote, quantity_of_variable, storage_error,
    storage_options_for,
)
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast.cf import TIME_ENCODING, WRITTEN, cf_skeleton, pick_format, rain_attrs
from convlstm_dist.nowcast.evaluation import parse_time
from convlstm_dist.nowcast.nowcaster import Nowcaster
from convlstm_dist.nowcast.run import open_archive_at
from convlstm_dist.ray_session import ray_session

# Fault injection (tests): once an actor has written N forecasts it SIGKILLs the driver and writes no more,
# so a kill lands mid-period however far Ray Data's streaming runs ahead of the driver.
FAULT_ENV = "CONVLSTM_FAULT_HINDCAST_KILL_AFTER"


@dataclass
class Hindcast:
    out: str
    format: str
    total: int              # forecasts in the period
    already: int            # found written by an earlier run (resumed)
    written: int            # forecast by this run
    n_out: int
    timestep_s: int
    first: object
    last: object
    note: str
    seconds: float


def analysis_indices(archive, in_len: int, start: str | None, end: str | None) -> np.ndarray:
    """Frame indices ``i`` with ``times[i]`` in ``[start, end]`` and ``in_len`` gap-free frames up to ``i``."""
    times = archive.times
    if not len(times):
        raise UserError(f"{archive.url} has no frames")
    lo = parse_time(start, "--start") if start else times[0]
    hi = parse_time(end, "--end") if end else times[-1]
    if hi < lo:
        raise UserError(f"--end {hi} is before --start {lo}")
    idx = gap_free_starts(times, archive.timestep_s, in_len) + in_len - 1
    idx = idx[(times[idx] >= lo) & (times[idx] <= hi)]
    if not len(idx):
        raise UserError(f"no forecast in [{lo}, {hi}]: no analysis time there has {in_len} gap-free frames up to it "
                        f"({archive.url}: {times[0]} .. {times[-1]}, every {archive.timestep_s} s)")
    return np.asarray(idx, dtype=np.int64)


def _identity(nc, archive, idx: np.ndarray, n_out: int) -> dict:
    return {"model": nc.source, "archive": archive.url, "n_out": int(n_out), "in_len": nc.in_len,
            "first": str(archive.times[idx[0]]), "last": str(archive.times[idx[-1]]), "count": int(len(idx))}


def _open_group(url: str, storage_options: dict | None, mode: str):
    import zarr

    kw = {"storage_options": storage_options} if is_remote(url) else {}
    return zarr.open_group(url, mode=mode, **kw)


def _store_exists(url: str, storage_options: dict | None) -> bool:
    fs, path = filesystem(url, storage_options)
    return bool(fs.exists(path.rstrip("/") + "/zarr.json"))


def create_store(url: str, storage_options: dict | None, nc, archive, idx: np.ndarray, n_out: int,
                 identity: dict) -> str:
    """Create the CF Zarr of every forecast (NaN, markers 0); the identity attribute is written last
    (with the consolidated metadata), so a store cut off while being created is created again."""
    variable = quantity_of_variable(archive.variable).physical_variable
    a = archive.attrs
    attrs = {"convlstm_dist_forecast": 1, "model": nc.source, "source_archive": archive.url, "in_len": nc.in_len,
             "timestep_s": int(archive.timestep_s),
             **{k: a.get(k) for k in ("source", "zr_a", "zr_b", "projection", "pixel_size_m", "attribution")}}
    ds, gm, note = cf_skeleton(archive.times[idx], n_out, archive.timestep_s, archive.y, archive.x,
                               xy_units=archive.xy_units, projection=a.get("projection"), attrs=attrs)
    kw = {"storage_options": storage_options} if "://" in url else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(url, mode="w", consolidated=False, encoding={
            "forecast_reference_time": dict(TIME_ENCODING), "time": dict(TIME_ENCODING)}, **kw)
    g = _open_group(url, storage_options, "r+")
    _, H, W = archive.shape
    va = rain_attrs(variable)
    if gm:
        va["grid_mapping"] = gm
    va["coordinates"] = "time"
    g.create_array(variable, shape=(len(idx), n_out, H, W), dtype="float32", chunks=(1, 1, H, W),
                   fill_value=np.nan, dimension_names=["forecast_reference_time", "forecast_period", "y", "x"],
                   attributes=va)
    g.create_array(WRITTEN, shape=(len(idx),), dtype="int8", chunks=(1,), fill_value=0,
                   dimension_names=["forecast_reference_time"],
                   attributes={"long_name": "1 where this forecast has been written (hindcast resume marker)",
                               "units": "1", "flag_values": [0, 1], "flag_meanings": "missing written"})
    g.attrs["hindcast"] = json.dumps(identity, sort_keys=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        consolidate(url, storage_options)
    return note


def written_markers(url: str, storage_options: dict | None) -> np.ndarray:
    return np.asarray(_open_group(url, storage_options, "r")[WRITTEN][:]) == 1


class ForecastActor:
    """A model on one Ray actor: reads the frames of its batch, forecasts, writes them to the store."""

    def __init__(self, nc, archive, url: str, storage_options: dict | None, variable: str, n_out: int,
                 use_gpu: bool = False, fault: tuple[int, int] | None = None):
        import torch

        self.fault, self.count = fault, 0  # fault: (driver pid, kill after N forecasts), tests only

        if use_gpu and torch.cuda.is_available():
            nc.model = nc.model.to("cuda")
            nc.device = "cuda"
        self.nc, self.archive, self.variable, self.n_out = nc, archive, variable, int(n_out)
        self.url, self.storage_options = url, storage_options
        self.group = _open_group(url, storage_options, "r+")

        self.q = quantity_of_variable(archive.variable)

    def __call__(self, batch: dict) -> dict:
        rows = np.asarray(batch["row"], dtype=np.int64)
        frame = np.asarray(batch["frame"], dtype=np.int64)
        n_in = self.nc.in_len
        lo, hi = int(frame.min()) + 1 - n_in, int(frame.max()) + 1
        raw = self.archive.read(lo, hi)
        rate = self.archive.to_rain_mmh(raw) if self.q.has_rain_rate else raw
        rate = np.where(np.isnan(raw), np.nan, rate).astype(np.float32)
        x = np.stack([rate[f + 1 - n_in - lo:f + 1 - lo] for f in frame])
        fcst = self.nc.predict_batch(x, self.n_out, self.q.physical_variable)
        arr, marks = self.group[self.variable], self.group[WRITTEN]
        try:
            for r, f in zip(rows, fcst):
                arr[int(r)] = f          # data first ...
            for r in rows:
                marks[int(r)] = 1        # ... then the marker: a kill in between redoes the forecast
        except Exception as exc:  # noqa: BLE001 - a storage problem names the store

            raise storage_error(self.url, self.storage_options, exc, "write") from None
        self.count += len(rows)
        if self.fault and self.count >= self.fault[1]:
            os.kill(self.fault[0], signal.SIGKILL)  # the driver dies mid-period ...
            time.sleep(3600)                        # ... and this actor writes nothing more
        return {"row": rows, "nan_fraction": np.isnan(fcst).mean(axis=(1, 2, 3))}


def run_hindcast(model: str, archive_url: str, out: str, *, start: str | None = None, end: str | None = None,
                 fmt: str | None = None, n_out: int | None = None, batch_size: int = 4, actors: int = 1,
                 gpus: bool = False, ray_address: str | None = None, workdir: str | Path = "workdir",
                 tracking_uri: str | None = None, endpoint_url: str | None = None, trust: bool = False,
                 say=print) -> Hindcast:
    """Write every forecast of ``[start, end]`` to ``out`` (see the module docstring); resumes."""
    import hashlib

    t0 = time.monotonic()
    if batch_size < 1 or actors < 1:
        raise UserError("--batch-size and --actors must be >= 1")
    fmt = pick_format(out, fmt)
    if fmt == "netcdf":
        _need_netcdf4()
    nc = Nowcaster.load(model, tracking_uri, workdir, trust=trust)
    archive = open_archive_at(archive_url, endpoint_url)
    nc.check_variable(archive.variable)
    q = quantity_of_variable(archive.variable)
    if q.has_rain_rate:
        archive.to_rain_mmh(np.zeros(1, np.float32))  # no Z–R relation → UserError now, not in an actor
    _, H, W = archive.shape
    nc.check_grid(H, W)
    n_out = int(n_out or nc.out_len)
    idx = analysis_indices(archive, nc.in_len, start, end)
    identity = _identity(nc, archive, idx, n_out)
    out = str(out).rstrip("/")
    if fmt == "zarr":
        store = out
    else:
        key = hashlib.sha256(out.encode()).hexdigest()[:12]
        store = str(Path(workdir) / "hindcast" / f"{archive_name(out).removesuffix('.nc')}-{key}.staging.zarr")
    opts = storage_options_for(store, endpoint_url)
    note = ""
    g = _open_group(store, opts, "r") if _store_exists(store, opts) else None
    if g is not None and "hindcast" in g.attrs:
        found = json.loads(g.attrs["hindcast"])
        if found != identity:
            diff = ", ".join(f"{k}: {found.get(k)!r} there, {v!r} now" for k, v in identity.items() if found.get(k) != v)
            raise UserError(f"{store} holds another hindcast ({diff}); choose another --out or delete it")
        done = written_markers(store, opts)
        note = g.attrs.get("grid_mapping_note", "")
        if done.any():
            say(f"[hindcast] resuming {store}: {int(done.sum())} of {len(idx)} forecasts already written")
    else:
        if g is not None and not is_remote(store):
            say(f"[hindcast] {store} was cut off while being created: creating it again")
        try:
            note = create_store(store, opts, nc, archive, idx, n_out, identity)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a storage problem names the store

            raise storage_error(store, opts, exc, "write") from None
        done = np.zeros(len(idx), bool)
    todo = np.flatnonzero(~done)
    already = int(done.sum())
    say(f"[hindcast] {nc.source}: {len(idx)} forecasts of {n_out} leads ({archive.times[idx[0]]} .. "
        f"{archive.times[idx[-1]]}) from {archive.url}; {len(todo)} to write, {actors} actor(s) x batch {batch_size}")
    if len(todo):
        with ray_session(ray_address, num_cpus=None if ray_address else max(2, actors)):
            _run_actors(nc, archive, store, opts, q.physical_variable, n_out, idx, todo, batch_size, actors, gpus,
                        say)
    missing = int((~written_markers(store, opts)).sum())
    if missing:
        raise UserError(f"{missing} forecast(s) of {store} were not written; run the same command again to resume")
    if fmt == "netcdf":
        say(f"[hindcast] converting {store} to NetCDF {out}")
        zarr_to_netcdf(store, opts, out, storage_options_for(out, endpoint_url), Path(workdir) / "tmp")
    return Hindcast(out, fmt, len(idx), already, len(todo), n_out, int(archive.timestep_s),
                    archive.times[idx[0]], archive.times[idx[-1]], note, time.monotonic() - t0)


def _run_actors(nc, archive, store, opts, variable, n_out, idx, todo, batch_size, actors, gpus, say) -> None:
    import ray

    items = [{"row": int(r), "frame": int(idx[r])} for r in todo]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
    ds = ds.map_batches(ForecastActor, batch_size=batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"nc": nc, "archive": archive, "url": store, "storage_options": opts,
                                               "variable": variable, "n_out": n_out, "use_gpu": gpus,
                                               "fault": _fault()},
                        num_gpus=1 if gpus else 0, num_cpus=1)
    n, t0 = 0, time.monotonic()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n += len(batch["row"])
            say(f"[hindcast] {n}/{len(todo)} forecasts written ({time.monotonic() - t0:.0f} s)")
    except Exception as exc:  # noqa: BLE001 - a UserError in an actor (e.g. an S3 write) stays one clear message
        cause = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise UserError(f"{cause} ({n} of {len(todo)} forecasts written; run the same command again "
                            "to resume)") from None
        raise


def _fault() -> tuple[int, int] | None:
    n = int(os.environ.get(FAULT_ENV) or 0)
    return (os.getpid(), n) if n > 0 else None


def _need_netcdf4() -> None:
    try:
        import netCDF4  # noqa: F401 - the NetCDF conversion appends with it, one forecast at a time
    except ImportError:
        raise UserError("hindcast --format netcdf needs netCDF4 (pip install 'convlstm-dist[radar]'); "
                        "or write --format zarr") from None


def zarr_to_netcdf(store: str, store_opts: dict | None, out: str, out_opts: dict | None, scratch: Path) -> None:
    """Copy the CF Zarr ``store`` to NetCDF-4 ``out`` one forecast at a time (never the whole period in memory)."""
    import tempfile

    import xarray as xr

    kw = {"storage_options": store_opts} if is_remote(store) else {}
    src = xr.open_zarr(store, decode_timedelta=False, **kw)
    var = next(v for v in src.data_vars if src[v].ndim == 4)
    skeleton = src.drop_vars([var, WRITTEN])
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        local = Path(tmp) / "hindcast.nc" if is_remote(out) else Path(out)
        local.parent.mkdir(parents=True, exist_ok=True)
        enc = {"forecast_reference_time": dict(TIME_ENCODING), "time": dict(TIME_ENCODING)}
        for name in skeleton.variables:
            skeleton[name].encoding.pop("chunks", None)
            skeleton[name].encoding.pop("compressors", None)
            skeleton[name].encoding.pop("preferred_chunks", None)
        skeleton.to_netcdf(local, engine="netcdf4", format="NETCDF4", encoding=enc)
        import netCDF4 as nc4

        R, L, H, W = src[var].shape
        with nc4.Dataset(local, "a") as f:
            v = f.createVariable(var, "f4", ("forecast_reference_time", "forecast_period", "y", "x"),
                                 zlib=True, complevel=4, chunksizes=(1, 1, H, W), fill_value=np.float32(np.nan))
            v.setncatts({k: val for k, val in src[var].attrs.items()})
            for r in range(R):
                v[r] = src[var][r].values
        if is_remote(out):
            fs, path = filesystem(out, out_opts)
            fs.put_file(str(local), path)
