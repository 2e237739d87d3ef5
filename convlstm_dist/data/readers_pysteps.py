"""What the ``pysteps:<importer>`` reader (:class:`convlstm_dist.data.readers.PystepsReader`) needs
from pysteps and around it: the quiet import of ``pysteps.io``, reader options, pysteps' defaults for
an importer, the valid time from a file name, and the mapping of a pysteps field and its metadata to
the reader contract (:func:`pysteps_to_contract`). pysteps itself is imported only when used."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from convlstm_dist.data.reader_contract import metadata
from convlstm_dist.errors import UserError


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
    return np.ascontiguousarray(data, dtype=np.float32), metadata(
        time=np.datetime64(t, "s"), variable=variable, units=units,
        zr_a=None if zr_a is None else float(zr_a), zr_b=None if zr_b is None else float(zr_b),
        projection=proj, pixel_size_m=pixel, timestep_s=timestep_s, source=str(source), shape=(H, W), y=y, x=x)
