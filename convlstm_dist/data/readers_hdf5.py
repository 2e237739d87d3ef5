"""Decoders of the HDF5 radar formats behind the reader contract (:mod:`.readers`): KNMI's 5-minute
accumulation (``knmi_hdf5``) and OPERA ODIM_H5 Cartesian images (``odim_hdf5``). h5py is imported
when a file is read."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np

from convlstm_dist.data.reader_contract import metadata


def _as_str(v) -> str:
    """An HDF5 attribute (scalar or one-element array, bytes or text) as text."""
    v = np.asarray(v).ravel()[0] if np.ndim(v) else v
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def _as_float(v) -> float:
    """An HDF5 attribute (scalar or one-element array) as a float."""
    return float(np.asarray(v).ravel()[0])


# ---------------------------------------------------------------- KNMI HDF5 (5-min accumulation)
def _knmi_time(text: str) -> np.datetime64:
    t = dt.datetime.strptime(text.strip(), "%d-%b-%Y;%H:%M:%S.%f")
    return np.datetime64(t.replace(microsecond=0), "s")


def read_knmi_hdf5(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        pv = f["image1/image_data"][:]
        cal = f["image1/calibration"].attrs
        m = re.match(r"GEO\s*=\s*([-+0-9.eE]+)\s*\*\s*PV\s*([-+]\s*[0-9.eE]+)?", _as_str(cal["calibration_formulas"]))
        if not m:
            raise ValueError(f"unsupported calibration formula {_as_str(cal['calibration_formulas'])!r}")
        gain = float(m.group(1))
        offset = float(m.group(2).replace(" ", "")) if m.group(2) else 0.0
        missing = {int(_as_float(cal[k])) for k in ("calibration_missing_data", "calibration_out_of_image") if k in cal}
        param = _as_str(f["image1"].attrs.get("image_geo_parameter", b""))
        if "PRECIPITATION" not in param or "MM" not in param:
            raise ValueError(f"expected an accumulation in mm, got {param!r}")
        ov = f["overview"].attrs
        t_end = _knmi_time(_as_str(ov["product_datetime_end"]))
        t_start = _knmi_time(_as_str(ov["product_datetime_start"]))
        geo = f["geographic"].attrs
        proj4 = _as_str(f["geographic/map_projection"].attrs["projection_proj4_params"])
        dx, dy = _as_float(geo["geo_pixel_size_x"]), _as_float(geo["geo_pixel_size_y"])
        col0, row0 = _as_float(geo["geo_column_offset"]), _as_float(geo["geo_row_offset"])
    accum_s = int((t_end - t_start) / np.timedelta64(1, "s"))
    if accum_s <= 0:
        raise ValueError(f"accumulation period {t_start}..{t_end} is not positive")
    H, W = pv.shape
    mm = np.where(np.isin(pv, list(missing)), np.nan, pv * gain + offset)
    rate = (mm * (3600.0 / accum_s)).astype(np.float32)
    # projection in km (a=6378.137): coordinates and proj string converted to metres
    proj_m = proj4.replace("+a=6378.137", "+a=6378137").replace("+b=6356.752", "+b=6356752")
    x = (np.arange(W) + col0 + 0.5) * dx * 1000.0
    y = (np.arange(H) + row0 + 0.5) * dy * 1000.0
    return rate, metadata(time=t_end, variable="rain_mmh", units="mm/h", zr_a=200.0, zr_b=1.6,
                       projection=proj_m + " +units=m", pixel_size_m=abs(dx) * 1000.0,
                       timestep_s=accum_s, source="KNMI", shape=(H, W), y=y, x=x)


# ---------------------------------------------------------------- OPERA ODIM_H5 (Cartesian image)
ODIM_QUANTITIES = {"DBZH": ("refl_dbz", "dBZ"), "RATE": ("rain_mmh", "mm/h")}
UNDETECT_DBZ = -32.0  # "no echo" level for reflectivity (FMI's DN 0); rates use 0 mm/h


def read_odim_hdf5(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        if "dataset1/data1/data" not in f:
            raise ValueError("no dataset1/data1/data (not an ODIM_H5 image?)")
        raw = f["dataset1/data1/data"][:]
        # ODIM attributes inherit downwards: `dataset1/data1/what` overrides `dataset1/what`. OPERA
        # composites keep quantity, gain, offset, nodata and undetect in `dataset1/what` only.
        what = {}
        for group in ("dataset1/what", "dataset1/data1/what"):
            if group in f:
                what.update(f[group].attrs)
        top = dict(f["what"].attrs) if "what" in f else {}
        where = dict(f["where"].attrs) if "where" in f else {}
        how = dict(f["how"].attrs) if "how" in f else {}
    qty = _as_str(what.get("quantity", b""))
    if qty not in ODIM_QUANTITIES:
        raise ValueError(f"quantity {qty!r} not supported; supported: {sorted(ODIM_QUANTITIES)}")
    variable, units = ODIM_QUANTITIES[qty]
    gain, offset = _as_float(what.get("gain", 1.0)), _as_float(what.get("offset", 0.0))
    vals = (raw.astype(np.float64) * gain + offset)
    if "undetect" in what:
        vals[raw == _as_float(what["undetect"])] = 0.0 if variable == "rain_mmh" else UNDETECT_DBZ
    if "nodata" in what:
        vals[raw == _as_float(what["nodata"])] = np.nan
    # Valid time = the product's nominal time, root `what/date` + `what/time` (15:50:00 for a 5-min
    # composite of scans 15:49:08..15:49:27; 18:00:00 for an OPERA composite of scans 17:50..18:05).
    # `dataset1/what` start/end date/time give the span of the scans that went into the product:
    # neither the valid time nor a time step. ODIM makes the root date/time mandatory; only a file
    # that lacks it falls back to the scan end, the nearest thing to a nominal time it still states.
    # The file gives no time step: timestep_s is None and ingest takes the step from the spacing of
    # the frames (or from the archive it appends to).
    if "date" in top and "time" in top:
        date, time = _as_str(top["date"]), _as_str(top["time"])
    elif "enddate" in what and "endtime" in what:
        date, time = _as_str(what["enddate"]), _as_str(what["endtime"])
    else:
        raise ValueError("no nominal time (what/date, what/time) and no dataset1/what enddate/endtime")
    t = np.datetime64(dt.datetime.strptime(date + time, "%Y%m%d%H%M%S"), "s")
    xs, ys = _as_float(where.get("xscale", np.nan)), _as_float(where.get("yscale", np.nan))
    zr_a = _as_float(how["zr_a"]) if "zr_a" in how else (200.0 if variable == "refl_dbz" else None)
    zr_b = _as_float(how["zr_b"]) if "zr_b" in how else (1.6 if variable == "refl_dbz" else None)
    return vals.astype(np.float32), metadata(
        time=t, variable=variable, units=units, zr_a=zr_a, zr_b=zr_b,
        projection=_as_str(where.get("projdef", b"")), pixel_size_m=None if np.isnan(xs) else (xs + ys) / 2,
        timestep_s=None, source=_as_str(top.get("source", b"ODIM")), shape=raw.shape, y=None, x=None)
