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

Besides the native readers (`knmi_hdf5`, `fmi_pgm`, `odim_hdf5`), `get_reader("pysteps:<importer>",
options)` wraps any pysteps importer (`PystepsReader`, at the end of this module): pysteps units,
accumulation time and transform are mapped to `rain_mmh`/`refl_dbz`, the time comes from the file
name (`fn_pattern`). pysteps is imported lazily and quietly (its import prints to stdout).
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
    """The native readers, plus `pysteps:<importer>` (any importer of `pysteps.io`)."""
    return sorted(_READERS) + [PYSTEPS_PREFIX + "<importer>"]


def get_reader(name: str | Reader, options: dict | None = None) -> Reader:
    """The reader registered under `name`, or `pysteps:<importer>` (with `options`: importer keyword
    arguments plus `fn_pattern`, `timestep_s`, `source`, `zr_a`, `zr_b`); an unknown name raises
    listing the valid ones. Native readers take no options."""
    if isinstance(name, Reader):
        if options:
            raise UserError(f"reader {name.name!r} is already built; pass options when creating it")
        return name
    if str(name).startswith(PYSTEPS_PREFIX):
        return PystepsReader(str(name)[len(PYSTEPS_PREFIX):], options)
    if options:
        raise UserError(f"reader {name!r} takes no options (got {', '.join(sorted(options))}); "
                        "only pysteps:<importer> readers do")
    try:
        return _READERS[name]
    except KeyError:
        raise UserError(f"unknown reader {name!r}; valid readers: {', '.join(list_readers())}") from None


def _meta(**kw) -> dict:
    return {k: kw.get(k) for k in METADATA_KEYS}


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


@register_reader("knmi_hdf5", "KNMI HDF5 5-min accumulation (mm) -> rain_mmh")
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
    return vals.astype(np.float32), _meta(
        time=t, variable=variable, units=units, zr_a=zr_a, zr_b=zr_b,
        projection=_as_str(where.get("projdef", b"")), pixel_size_m=None if np.isnan(xs) else (xs + ys) / 2,
        timestep_s=None, source=_as_str(top.get("source", b"ODIM")), shape=raw.shape, y=None, x=None)


# ---------------------------------------------------------------- any pysteps importer
# `pysteps:<importer>` wraps `pysteps.io.get_method(<importer>, "importer")`. pysteps importers return
# (field, quality, metadata) but no time: the valid time comes from the file name through a strftime
# pattern (`fn_pattern`, default from pysteps' own data-source table for that importer). Options
# (`--reader-option KEY=VALUE`) are importer keyword arguments, except the reader's own keys below.
PYSTEPS_PREFIX = "pysteps:"
PYSTEPS_READER_KEYS = ("fn_pattern", "timestep_s", "source", "zr_a", "zr_b")
# Short source names (the keys of ingest.ATTRIBUTIONS) for pysteps' `institution` strings.
PYSTEPS_SOURCES = {"MeteoSwiss": "MeteoSwiss", "Finnish Meteorological Institute": "FMI",
                   "KNMI - Royal Netherlands Meteorological Institute": "KNMI", "Odyssey datacentre": "OPERA"}
# Used when pysteps' configuration (pystepsrc) has no data source for the importer.
PYSTEPS_FALLBACK = {
    "mch_gif": {"fn_pattern": "AQC%y%j%H%M?_00005.801", "timestep": 5,
                "importer_kwargs": {"product": "AQC", "unit": "mm", "accutime": 5.0}},
    "knmi_hdf5": {"fn_pattern": "RAD_NL25_RAP_5min_%Y%m%d%H%M", "timestep": 5,
                  "importer_kwargs": {"qty": "ACRR", "accutime": 5.0}},
}


def _pysteps():
    """`pysteps.io`, imported quietly (pysteps prints where it found its configuration on import)."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        import pysteps
        import pysteps.io as pio
    return pysteps, pio


def parse_option_value(text: str):
    """`--reader-option` values: ints, floats, true/false, none/null, else the string."""
    t = text.strip()
    low = t.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_reader_options(items) -> dict:
    """`["product=AQC", "accutime=5"]` -> `{"product": "AQC", "accutime": 5}`."""
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"reader option {item!r} is not KEY=VALUE")
        out[key.strip()] = parse_option_value(value)
    return out


def pysteps_defaults(importer: str) -> dict:
    """`fn_pattern`, `timestep` (minutes) and `importer_kwargs` for `importer` from pysteps' data-source
    table (pystepsrc), or the built-in fallback; `{}` when neither knows it."""
    pysteps, _ = _pysteps()
    for src in dict(getattr(pysteps.rcparams, "data_sources", {}) or {}).values():
        if src.get("importer") == importer:
            return {"fn_pattern": src.get("fn_pattern"), "timestep": src.get("timestep"),
                    "importer_kwargs": dict(src.get("importer_kwargs") or {})}
    return dict(PYSTEPS_FALLBACK.get(importer, {}))


_STRF = {"Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "j": r"\d{3}", "H": r"\d{2}",
         "M": r"\d{2}", "S": r"\d{2}"}


def time_from_filename(name: str, pattern: str) -> np.datetime64:
    """Valid time from a file name with a strftime pattern (`%Y %y %m %d %j %H %M %S`; `?` is any one
    character, `*` any run). The pattern matches the start of the name (extensions may follow)."""
    regex, fields, i = "", [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            d = pattern[i + 1]
            if d == "%":
                regex += "%"
            elif d in _STRF:
                regex += f"({_STRF[d]})"
                fields.append(d)
            else:
                raise UserError(f"fn_pattern {pattern!r}: unsupported directive %{d} (use %Y %y %m %d %j %H %M %S)")
            i += 2
            continue
        regex += "." if c == "?" else ".*?" if c == "*" else re.escape(c)
        i += 1
    if not fields:
        raise UserError(f"fn_pattern {pattern!r} has no date/time directive")
    m = re.match(regex, name)
    if not m:
        raise ValueError(f"file name {name!r} does not match fn_pattern {pattern!r} "
                         "(set --reader-option fn_pattern=...)")
    t = dt.datetime.strptime(" ".join(m.groups()), " ".join(f"%{d}" for d in fields))
    return np.datetime64(t, "s")


def _scaled_km_projection(proj: str) -> str:
    """A proj string whose ellipsoid is given in km (KNMI) -> metres, so coordinates are in metres."""
    def fix(m):
        v = float(m.group(2))
        return f"{m.group(1)}{v * 1000.0:.10g}" if v < 1.0e5 else m.group(0)

    out = re.sub(r"(\+[ab]=)([-+0-9.eE]+)", fix, proj)
    return out if "+units=" in out else out + " +units=m"


class PystepsReader(Reader):
    """`pysteps:<importer>` with options: any pysteps importer behind the reader contract."""

    def __init__(self, importer: str, options: dict | None = None):
        self.importer = importer
        self.options = dict(options or {})
        _, pio = _pysteps()
        try:
            self._method = pio.get_method(importer, "importer")
        except ValueError:
            names = sorted(getattr(pio.interface, "_importer_methods", {}))
            raise UserError(f"unknown pysteps importer {importer!r}; pysteps has: {', '.join(names)}") from None
        defaults = pysteps_defaults(importer)
        self.fn_pattern = self.options.get("fn_pattern") or defaults.get("fn_pattern")
        self.kwargs = {**defaults.get("importer_kwargs", {}),
                       **{k: v for k, v in self.options.items() if k not in PYSTEPS_READER_KEYS}}
        step = self.options.get("timestep_s")
        if step is None and defaults.get("timestep"):
            step = float(defaults["timestep"]) * 60.0
        self.timestep_s = int(round(float(step))) if step is not None else None
        shown = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        super().__init__(PYSTEPS_PREFIX + importer + (f"[{shown}]" if shown else ""), self._read,
                         f"pysteps importer {importer!r} (pysteps.io.get_method)")

    def __reduce__(self):  # ship importer name + options to Ray tasks
        return (PystepsReader, (self.importer, self.options))

    def _read(self, path: Path):
        if not self.fn_pattern:
            raise UserError(f"reader {self.name!r}: pysteps has no file name pattern for {self.importer!r}; "
                            "give the time pattern with --reader-option fn_pattern=... (strftime, e.g. "
                            "'XYZ_%Y%m%d%H%M')")
        t = time_from_filename(path.name, self.fn_pattern)
        kwargs = dict(self.kwargs)
        if self.importer == "fmi_pgm" and "gzipped" not in kwargs:
            kwargs["gzipped"] = path.suffix == ".gz"
        out = self._method(str(path), **kwargs)
        field, meta = out[0], out[-1]
        return pysteps_to_contract(field, meta, t, self.timestep_s, self.options)


def pysteps_to_contract(field, pmeta: dict, t, timestep_s: int | None, options: dict | None = None):
    """A pysteps field + metadata -> (float32 array, reader metadata) of this module's contract.

    Units: `mm` over `accutime` minutes -> mm/h (x 60/accutime); `mm/h` as is; `dBZ` -> refl_dbz.
    `transform`: None, or `dB` (dBZ stays dBZ; dBR -> 10^(v/10) mm/h, the zerovalue -> 0); others refused.
    Grid: pixel centres from x1/x2/y1/y2 and the pixel sizes, km -> m; `yorigin: lower` is flipped so
    that row 0 is the north edge.
    """
    options = options or {}
    data = np.ma.filled(np.ma.asarray(field, dtype=np.float64), np.nan)
    data = np.where(np.isfinite(data), data, np.nan)
    unit, transform = pmeta.get("unit"), pmeta.get("transform")
    accutime = pmeta.get("accutime")
    if transform not in (None, "dB"):
        raise ValueError(f"pysteps transform {transform!r} is not supported (only none or dB)")
    if unit == "dBZ":
        variable, units = "refl_dbz", "dBZ"
    elif unit in ("mm/h", "mm"):
        variable, units = "rain_mmh", "mm/h"
        if transform == "dB":
            zero = pmeta.get("zerovalue")
            lin = np.power(10.0, data / 10.0)
            if zero is not None:
                lin[data <= float(zero)] = 0.0
            data = lin
        if unit == "mm":
            if not accutime or float(accutime) <= 0:
                raise ValueError("an accumulation in mm needs a positive accutime (minutes); "
                                 "set --reader-option accutime=...")
            data = data * (60.0 / float(accutime))
    else:
        raise ValueError(f"pysteps unit {unit!r} is not supported (mm/h, mm or dBZ)")
    zr_a = options.get("zr_a", pmeta.get("zr_a"))
    zr_b = options.get("zr_b", pmeta.get("zr_b"))
    if variable == "refl_dbz" and (zr_a is None or zr_b is None):
        zr_a, zr_b = 200.0, 1.6  # Marshall-Palmer, as the ODIM reader
    H, W = data.shape
    scale = {"m": 1.0, "km": 1000.0}.get(pmeta.get("cartesian_unit", "m"))
    proj = str(pmeta.get("projection") or "")
    y = x = pixel = None
    keys = ("x1", "x2", "y1", "y2", "xpixelsize", "ypixelsize")
    if scale is not None and all(pmeta.get(k) is not None for k in keys):
        dx, dy = abs(float(pmeta["xpixelsize"])) * scale, abs(float(pmeta["ypixelsize"])) * scale
        x = float(pmeta["x1"]) * scale + (np.arange(W) + 0.5) * dx
        y = float(pmeta["y2"]) * scale - (np.arange(H) + 0.5) * dy
        pixel = (dx + dy) / 2.0
        if scale != 1.0 and proj:
            proj = _scaled_km_projection(proj)
    if pmeta.get("yorigin", "upper") == "lower":
        data = data[::-1]
    if timestep_s is None and unit == "mm" and accutime:
        timestep_s = int(round(float(accutime) * 60.0))
    inst = str(pmeta.get("institution") or "pysteps")
    source = options.get("source") or PYSTEPS_SOURCES.get(inst, inst)
    return np.ascontiguousarray(data, dtype=np.float32), _meta(
        time=np.datetime64(t, "s"), variable=variable, units=units,
        zr_a=None if zr_a is None else float(zr_a), zr_b=None if zr_b is None else float(zr_b),
        projection=proj, pixel_size_m=pixel, timestep_s=timestep_s, source=str(source), shape=(H, W), y=y, x=x)
