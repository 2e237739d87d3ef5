"""Radar file readers behind one registry and one contract.

`get_reader(name).read(path) -> (data, meta)`:

* `data`: float32 (H, W) in the physical unit named by `meta["variable"]`
  (`rain_mmh` mm/h, `refl_dbz` dBZ), NaN = no data (outside radar range / missing).
  Row 0 is the north edge.
* `meta` has exactly `METADATA_KEYS`: `time` (numpy datetime64[s], valid time in UTC: the end of
  an accumulation, or the observation time), `variable`, `units`, `zr_a`, `zr_b` (Z = a R^b or
  None), `projection` (proj4, metres), `pixel_size_m`, `timestep_s`, `source`, `shape`, and
  `y`, `x` (pixel-centre projection coordinates in metres, or None when the file does not give
  them without a projection library). `timestep_s` is None when the file does not state one
  (ODIM): ingest then takes the step from the spacing of the frames.

A file that cannot be decoded (truncated, corrupt, wrong product) raises `ReadError` naming it.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path
from typing import Callable

import numpy as np

from convlstm_dist.errors import UserError

METADATA_KEYS = ("time", "variable", "units", "zr_a", "zr_b", "projection", "pixel_size_m",
                 "timestep_s", "source", "shape", "y", "x")


class ReadError(UserError):
    """A radar file could not be decoded; the message names the file."""


class Reader:
    """A named reader: `read(path) -> (float32 array, metadata dict)`; errors name the file."""

    def __init__(self, name: str, fn: Callable, description: str):
        self.name, self._fn, self.description = name, fn, description

    def read(self, path) -> tuple[np.ndarray, dict]:
        path = Path(path)
        try:
            data, meta = self._fn(path)
        except ReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoding failure names the file
            raise ReadError(f"cannot read {path} with reader {self.name!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
        assert set(meta) == set(METADATA_KEYS), sorted(set(meta) ^ set(METADATA_KEYS))
        return data, meta

    def __reduce__(self):  # ship by name to Ray tasks
        return (get_reader, (self.name,))

    def __repr__(self):
        return f"Reader({self.name!r})"


_READERS: dict[str, Reader] = {}


def register_reader(name: str, description: str):
    def deco(fn):
        _READERS[name] = Reader(name, fn, description)
        return fn
    return deco


def list_readers() -> list[str]:
    return sorted(_READERS)


def get_reader(name: str | Reader) -> Reader:
    """The reader registered under `name`; an unknown name raises listing the valid ones."""
    if isinstance(name, Reader):
        return name
    try:
        return _READERS[name]
    except KeyError:
        raise UserError(f"unknown reader {name!r}; valid readers: {', '.join(list_readers())}") from None


def _meta(**kw) -> dict:
    return {k: kw.get(k) for k in METADATA_KEYS}


def _s(v) -> str:
    v = np.asarray(v).ravel()[0] if np.ndim(v) else v
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def _f(v) -> float:
    return float(np.asarray(v).ravel()[0])


# ---------------------------------------------------------------- KNMI HDF5 (5-min accumulation)
def _knmi_time(text: str) -> np.datetime64:
    t = dt.datetime.strptime(text.strip(), "%d-%b-%Y;%H:%M:%S.%f")
    return np.datetime64(t.replace(microsecond=0), "s")


@register_reader("knmi_hdf5", "KNMI HDF5 5-min accumulation (mm) -> rain_mmh")
def read_knmi_hdf5(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        pv = f["image1/image_data"][:]
        cal = f["image1/calibration"].attrs
        m = re.match(r"GEO\s*=\s*([-+0-9.eE]+)\s*\*\s*PV\s*([-+]\s*[0-9.eE]+)?", _s(cal["calibration_formulas"]))
        if not m:
            raise ValueError(f"unsupported calibration formula {_s(cal['calibration_formulas'])!r}")
        gain = float(m.group(1))
        offset = float(m.group(2).replace(" ", "")) if m.group(2) else 0.0
        missing = {int(_f(cal[k])) for k in ("calibration_missing_data", "calibration_out_of_image") if k in cal}
        param = _s(f["image1"].attrs.get("image_geo_parameter", b""))
        if "PRECIPITATION" not in param or "MM" not in param:
            raise ValueError(f"expected an accumulation in mm, got {param!r}")
        ov = f["overview"].attrs
        t_end = _knmi_time(_s(ov["product_datetime_end"]))
        t_start = _knmi_time(_s(ov["product_datetime_start"]))
        geo = f["geographic"].attrs
        proj4 = _s(f["geographic/map_projection"].attrs["projection_proj4_params"])
        dx, dy = _f(geo["geo_pixel_size_x"]), _f(geo["geo_pixel_size_y"])
        col0, row0 = _f(geo["geo_column_offset"]), _f(geo["geo_row_offset"])
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
    return rate, _meta(time=t_end, variable="rain_mmh", units="mm/h", zr_a=200.0, zr_b=1.6,
                       projection=proj_m + " +units=m", pixel_size_m=abs(dx) * 1000.0,
                       timestep_s=accum_s, source="KNMI", shape=(H, W), y=y, x=x)


# ---------------------------------------------------------------- FMI PGM (dBZ composite)
FMI_PROJ = ("+proj=stere +lon_0=25E +lat_0=90N +lat_ts=60 +a=6371288 +x_0=380886.310 "
            "+y_0=3395677.920 +no_defs +units=m")


def _parse_pgm(raw: bytes) -> tuple[np.ndarray, dict]:
    """Binary PGM (P5, 8-bit) with '#' comment metadata → (uint8 array, header dict)."""
    pos, tokens, meta = 0, [], {}
    while len(tokens) < 4:
        if pos >= len(raw):
            raise ValueError("truncated PGM header")
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            end = raw.index(b"\n", pos)
            k, *v = raw[pos + 1:end].decode("ascii", "replace").split()
            meta.setdefault(k, v)
            pos = end + 1
            continue
        m = re.compile(rb"\S+").match(raw, pos)
        tokens.append(m.group())
        pos = m.end()
    if tokens[0] != b"P5":
        raise ValueError(f"not a binary PGM (magic {tokens[0]!r})")
    w, h, maxval = (int(t) for t in tokens[1:])
    if maxval > 255:
        raise ValueError("only 8-bit PGM is supported")
    body = raw[pos + 1:pos + 1 + w * h]
    if len(body) != w * h:
        raise ValueError(f"truncated PGM: {len(body)} of {w * h} pixel bytes")
    return np.frombuffer(body, np.uint8).reshape(h, w), meta


@register_reader("fmi_pgm", "FMI gzip PGM reflectivity composite (dBZ) -> refl_dbz")
def read_fmi_pgm(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    dn, hdr = _parse_pgm(raw)
    H, W = dn.shape
    dbz = np.where(dn == 255, np.nan, (dn.astype(np.float32) - 64.0) / 2.0).astype(np.float32)
    t = np.datetime64(dt.datetime.strptime(hdr["obstime"][0], "%Y%m%d%H%M"), "s")
    dx = float(hdr.get("metersperpixel_x", ["999.674053"])[0])
    dy = float(hdr.get("metersperpixel_y", ["999.62859"])[0])
    x = (np.arange(W) + 0.5) * dx
    y = (H - np.arange(H) - 0.5) * dy
    return dbz, _meta(time=t, variable="refl_dbz", units="dBZ", zr_a=223.0, zr_b=1.53,
                      projection=FMI_PROJ, pixel_size_m=round((dx + dy) / 2, 3), timestep_s=300,
                      source="FMI", shape=(H, W), y=y, x=x)


# ---------------------------------------------------------------- OPERA ODIM_H5 (Cartesian image)
ODIM_QUANTITIES = {"DBZH": ("refl_dbz", "dBZ"), "RATE": ("rain_mmh", "mm/h")}
UNDETECT_DBZ = -32.0  # "no echo" level for reflectivity (FMI's DN 0); rates use 0 mm/h


@register_reader("odim_hdf5", "OPERA ODIM_H5 Cartesian image, DBZH -> refl_dbz or RATE -> rain_mmh")
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
    qty = _s(what.get("quantity", b""))
    if qty not in ODIM_QUANTITIES:
        raise ValueError(f"quantity {qty!r} not supported; supported: {sorted(ODIM_QUANTITIES)}")
    variable, units = ODIM_QUANTITIES[qty]
    gain, offset = _f(what.get("gain", 1.0)), _f(what.get("offset", 0.0))
    vals = (raw.astype(np.float64) * gain + offset)
    if "undetect" in what:
        vals[raw == _f(what["undetect"])] = 0.0 if variable == "rain_mmh" else UNDETECT_DBZ
    if "nodata" in what:
        vals[raw == _f(what["nodata"])] = np.nan
    # Valid time = the product's nominal time, root `what/date` + `what/time` (15:50:00 for a 5-min
    # composite of scans 15:49:08..15:49:27; 18:00:00 for an OPERA composite of scans 17:50..18:05).
    # `dataset1/what` start/end date/time give the span of the scans that went into the product:
    # neither the valid time nor a time step. ODIM makes the root date/time mandatory; only a file
    # that lacks it falls back to the scan end, the nearest thing to a nominal time it still states.
    # The file gives no time step: timestep_s is None and ingest takes the step from the spacing of
    # the frames (or from the archive it appends to).
    if "date" in top and "time" in top:
        date, time = _s(top["date"]), _s(top["time"])
    elif "enddate" in what and "endtime" in what:
        date, time = _s(what["enddate"]), _s(what["endtime"])
    else:
        raise ValueError("no nominal time (what/date, what/time) and no dataset1/what enddate/endtime")
    t = np.datetime64(dt.datetime.strptime(date + time, "%Y%m%d%H%M%S"), "s")
    xs, ys = _f(where.get("xscale", np.nan)), _f(where.get("yscale", np.nan))
    zr_a = _f(how["zr_a"]) if "zr_a" in how else (200.0 if variable == "refl_dbz" else None)
    zr_b = _f(how["zr_b"]) if "zr_b" in how else (1.6 if variable == "refl_dbz" else None)
    return vals.astype(np.float32), _meta(
        time=t, variable=variable, units=units, zr_a=zr_a, zr_b=zr_b,
        projection=_s(where.get("projdef", b"")), pixel_size_m=None if np.isnan(xs) else (xs + ys) / 2,
        timestep_s=None, source=_s(top.get("source", b"ODIM")), shape=raw.shape, y=None, x=None)
