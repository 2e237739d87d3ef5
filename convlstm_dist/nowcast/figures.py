"""The figures of ``nowcast`` and ``evaluate``, drawn by :mod:`convlstm_dist.verify.figures`.

* :func:`observed_after` — the frames an archive holds after a nowcast's analysis time (none when
  it is the last frame), drawn as "observed" in ``forecast.png`` by ``nowcast`` (``run._forecast_products``:
  inputs, observed, the model and optical flow per lead in minutes, on the extent in km where the
  grid has a CRS).
* :func:`case_figure` — the same figure for one window of an evaluation (the wettest of those
  scored), written beside the skill CSV/PNG of ``evaluate``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from convlstm_dist.data import quantity_of_variable
from convlstm_dist.data.crops import choose_crop
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast.evaluation import model_motion, window_motion
from convlstm_dist.verify import flow_row, forecast_figure


def observed_after(archive, i: int, n_out: int, ys: slice, xs: slice) -> np.ndarray | None:
    """Up to ``n_out`` frames after frame ``i`` that follow it without a time gap, in mm/h for rain
    archives (NaN = no data); None when there are none."""
    times, step = archive.times, int(archive.timestep_s)
    k = 0
    while k < n_out and i + 1 + k < len(times) and \
            int((times[i + 1 + k] - times[i]).astype("timedelta64[s]").astype("int64")) == (k + 1) * step:
        k += 1
    if not k:
        return None
    return physical(archive, archive.read(i + 1, i + 1 + k, ys, xs))


def grid_coords(archive, ys: slice, xs: slice) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The crop's pixel centres in metres, or (None, None) for an archive without coordinates."""
    coords = getattr(archive, "coords_m", None)
    if coords is None:
        return None, None
    x, y = coords
    return np.asarray(x)[xs], np.asarray(y)[ys]


def physical(archive, raw: np.ndarray) -> np.ndarray:
    """Archive values in the units of the forecast (rain rate for rain archives), NaN kept."""
    if quantity_of_variable(archive.variable).has_rain_rate:
        return np.where(np.isnan(raw), np.nan, archive.to_rain_mmh(raw)).astype("float32")
    return np.asarray(raw, dtype="float32")


def case_figure(path: Path, nc, archive, sel, crop: tuple[int, int] | None = None) -> Path | None:
    """``forecast.png``-style figure of one evaluated window: the one of ``sel.starts`` whose lead
    frames are the wettest (the archive's per-frame ``wet_fraction`` at its lowest threshold), cut
    as ``evaluate`` cut it (``choose_crop`` seeded by ``(data.seed, t0)``), the model and optical flow
    moving along the whole frame's motion field as ``evaluate`` scored them (``motion="shared"``).
    None without windows."""
    starts = np.asarray(sel.starts, dtype="int64")
    if not len(starts):
        return None
    wet = np.nan_to_num(np.asarray(archive.stats["wet_fraction"], dtype="float64")[:, 0])
    s = int(starts[np.argmax([wet[t + sel.in_len:t + sel.in_len + sel.n_out].mean() for t in starts])])
    block = physical(archive, archive.read(s, s + sel.in_len + sel.n_out))
    h, w = crop or block.shape[1:]
    cy, cx = choose_crop(np.isfinite(block).all(axis=0), (h, w), np.random.default_rng([nc.config.data.seed, 0, s, 0]))
    ys, xs = slice(cy, cy + h), slice(cx, cx + w)
    q = quantity_of_variable(archive.variable)
    velocity = None
    if q.has_rain_rate:
        try:
            velocity = window_motion(block[:sel.in_len], ys, xs)
        except UserError:  # no pysteps: each method its own motion, the figure still drawn
            velocity = None
    block = block[:, ys, xs]
    inputs, observed = block[:sel.in_len], block[sel.in_len:]
    fcst = nc.predict(inputs, sel.n_out, q.physical_variable, motion=model_motion(nc, velocity))
    flow = flow_row(inputs, sel.n_out, q.has_rain_rate, velocity)
    x, y = grid_coords(archive, ys, xs)
    t0 = archive.times[s + sel.in_len - 1]
    return forecast_figure(path, inputs=inputs, model=fcst, observed=observed, flow=flow,
                           timestep_s=archive.timestep_s, units=q.display_unit, x=x, y=y,
                           projection=archive.attrs.get("projection"), model_label=nc.name,
                           title=f"{nc.name}: the wettest evaluated window ({sel.label}), from {t0} UTC, {h}x{w}")
