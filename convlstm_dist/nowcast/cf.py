"""Forecasts as CF-1.8 datasets (Zarr or NetCDF, local or ``s3://``): what ``nowcast`` and ``hindcast`` write.

One layout for one forecast and for a hindcast of many::

    <variable>(forecast_reference_time, forecast_period, y, x) float32   NaN = no observed source
    forecast_reference_time(forecast_reference_time)   analysis time (last input frame), UTC
    forecast_period(forecast_period)                    lead time in minutes
    time(forecast_reference_time, forecast_period)      valid time, UTC
    y(y), x(x)                                          projection coordinates in metres (pixel centres)
    crs                                                 grid mapping (pyproj ``CRS.to_cf()``)

The rain variable is ``rain_mmh`` with ``standard_name: lwe_precipitation_rate`` (canonical unit
m s-1, so ``mm h-1`` is a compatible unit; ``rainfall_rate`` is a mass flux in kg m-2 s-1, which
mm/h is not). Moving MNIST models write ``intensity`` (units 1, no standard name). A grid with no
CRS pyproj reads (no projection, a synthetic one, pixel-index coordinates, or pyproj not
installed) gets no ``crs`` variable, and :func:`cf_skeleton` returns a note saying why.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from convlstm_dist.data import filesystem, is_remote, quantity_of_variable, storage_error
from convlstm_dist.errors import UserError

FORMATS = ("zarr", "netcdf")
TIME_ENCODING = {"units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "int64"}
WRITTEN = "forecast_written"  # hindcast resume marker along forecast_reference_time


def rain_attrs(variable: str) -> dict:
    if not quantity_of_variable(variable).has_rain_rate:
        return {"units": "1", "long_name": f"forecast {variable} (no rain rate: no CF standard name)"}
    return {"standard_name": "lwe_precipitation_rate", "units": "mm h-1",
            "long_name": "forecast rain rate (liquid water equivalent); NaN where the model has no observed source"}


def grid_mapping(projection: str | None, xy_units: str) -> tuple[dict | None, str]:
    """``(CF grid-mapping attributes, "")`` for a proj4 string, or ``(None, why there is none)``."""
    if xy_units != "m":
        return None, "the grid has pixel-index coordinates, not projection coordinates in metres"
    if not projection:
        return None, "the data has no projection"
    try:
        import pyproj
    except ImportError:
        return None, "pyproj is not installed (pip install 'convlstm-dist[radar]')"
    try:
        crs = pyproj.CRS.from_user_input(projection)
    except pyproj.exceptions.CRSError:
        return None, f"its projection {projection!r} is not a CRS pyproj reads"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # to_cf warns about the PROJ string's lossy parts
        attrs = crs.to_cf()
    return attrs, ""


def cf_skeleton(ref_times, n_out: int, timestep_s: int, y, x, *, xy_units: str = "m", projection: str | None = None,
                attrs: dict | None = None):
    """``(xarray.Dataset of the coordinates and crs, grid-mapping name or None, note)``: everything but the data."""
    import xarray as xr

    ref = np.asarray(ref_times).astype("datetime64[ns]")
    lead_min = np.arange(1, n_out + 1, dtype="float64") * timestep_s / 60.0
    valid = ref[:, None] + (np.arange(1, n_out + 1) * int(timestep_s)).astype("timedelta64[s]")[None]
    gm, note = grid_mapping(projection, xy_units)
    if xy_units == "m":
        xa = {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X",
              "long_name": "x coordinate of projection (pixel centre)"}
        ya = {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y",
              "long_name": "y coordinate of projection (pixel centre)"}
    else:
        xa = {"units": "1", "long_name": "x pixel index"}
        ya = {"units": "1", "long_name": "y pixel index"}
    coords = {
        "forecast_reference_time": ("forecast_reference_time", ref,
                                    {"standard_name": "forecast_reference_time", "long_name": "analysis time (UTC)"}),
        "forecast_period": ("forecast_period", lead_min,
                            {"standard_name": "forecast_period", "units": "minutes", "long_name": "lead time"}),
        "time": (("forecast_reference_time", "forecast_period"), valid.astype("datetime64[ns]"),
                 {"standard_name": "time", "long_name": "valid time (UTC)"}),
        "y": ("y", np.asarray(y, dtype="float64"), ya),
        "x": ("x", np.asarray(x, dtype="float64"), xa),
    }
    data_vars = {}
    if gm is not None:
        data_vars["crs"] = ((), np.int32(0), gm)
    glob = {"Conventions": "CF-1.8", "title": "precipitation nowcast (convlstm-dist)",
            **{k: ("" if v is None else v) for k, v in (attrs or {}).items()}}
    if note:
        glob["grid_mapping_note"] = f"no grid_mapping: {note}"
    return xr.Dataset(data_vars, coords=coords, attrs=glob), ("crs" if gm is not None else None), note


def forecast_dataset(fcst: np.ndarray, ref_times, timestep_s: int, y, x, *, variable: str = "rain_mmh",
                     xy_units: str = "m", projection: str | None = None, attrs: dict | None = None):
    """``(xarray.Dataset, note)`` of forecasts ``fcst`` (R, n_out, H, W) from analysis times ``ref_times`` (R,)."""
    ds, gm, note = cf_skeleton(ref_times, fcst.shape[1], timestep_s, y, x, xy_units=xy_units,
                               projection=projection, attrs=attrs)
    va = rain_attrs(variable)
    if gm:
        va["grid_mapping"] = gm
    ds[variable] = (("forecast_reference_time", "forecast_period", "y", "x"), np.asarray(fcst, np.float32), va)
    return ds, note


def pick_format(out: str, fmt: str | None) -> str:
    """``fmt``, else ``netcdf`` for a ``.nc`` path and ``zarr`` for anything else."""
    if fmt:
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        return fmt
    return "netcdf" if str(out).rstrip("/").endswith((".nc", ".nc4")) else "zarr"


def _encoding(ds, variable: str, fmt: str) -> dict:
    H, W = ds.sizes["y"], ds.sizes["x"]
    enc = {"forecast_reference_time": dict(TIME_ENCODING), "time": dict(TIME_ENCODING)}
    if fmt == "zarr":
        enc[variable] = {"chunks": (1, 1, H, W)}
    else:
        enc[variable] = {"chunksizes": (1, 1, H, W), "zlib": True, "complevel": 4, "_FillValue": np.float32(np.nan)}
    return enc


def netcdf_engine() -> str:
    for mod, engine in (("netCDF4", "netcdf4"), ("h5netcdf", "h5netcdf")):
        try:
            __import__(mod)
            return engine
        except ImportError:
            continue
    raise UserError("writing NetCDF needs netCDF4 (pip install 'convlstm-dist[radar]') or h5netcdf; "
                    "or write --format zarr")


def write_dataset(ds, out: str, fmt: str, variable: str, storage_options: dict | None = None,
                  scratch: str | Path | None = None) -> str:
    """Write ``ds`` to ``out`` (a local path or ``s3://``) as Zarr or NetCDF-4; returns ``out``.

    NetCDF to ``s3://`` is written to a temporary file under ``scratch`` and uploaded."""
    out = str(out)
    enc = _encoding(ds, variable, fmt)
    try:
        if fmt == "zarr":
            kw = {"storage_options": storage_options} if is_remote(out) else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zarr v3: "consolidated metadata is not in the spec"
                ds.to_zarr(out, mode="w", consolidated=True, encoding=enc, **kw)
        elif not is_remote(out):
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            ds.to_netcdf(out, engine=netcdf_engine(), format="NETCDF4", encoding=enc)
        else:
            Path(scratch or tempfile.gettempdir()).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=scratch) as tmp:
                local = Path(tmp) / "forecast.nc"
                ds.to_netcdf(local, engine=netcdf_engine(), format="NETCDF4", encoding=enc)
                fs, path = filesystem(out, storage_options)
                fs.put_file(str(local), path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - a storage problem names the URL

        raise storage_error(out, storage_options, exc, "write") from None
    return out
