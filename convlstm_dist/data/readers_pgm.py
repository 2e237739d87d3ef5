"""Decoder of FMI's PGM reflectivity composite (``fmi_pgm``, gzipped or not) behind the reader
contract (:mod:`.readers`)."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from pathlib import Path

import numpy as np

from convlstm_dist.data.reader_contract import metadata


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
    return dbz, metadata(time=t, variable="refl_dbz", units="dBZ", zr_a=223.0, zr_b=1.53,
                      projection=FMI_PROJ, pixel_size_m=round((dx + dy) / 2, 3), timestep_s=300,
                      source="FMI", shape=(H, W), y=y, x=x)
