"""Fractions Skill Score (Roberts & Lean 2008), mergeable: init / accumulate / merge / compute.

The same definition as pysteps' ``verification.spatialscores.fss_init / fss_accum / fss_merge /
fss_compute`` (a test compares them on a fixed case), for many lead times, thresholds and scales
at once, so that ``evaluate`` can count in many Ray tasks and merge on the driver:

* a pixel is an event at threshold ``thr`` when its value is ``>= thr``; NaN (no data) is never
  an event;
* the event fractions are the mean of the binary field over a ``scale x scale`` square
  (``scipy.ndimage.uniform_filter``, zero outside the grid), scale 1 being the pixel itself;
* FSS = 1 - sum((Pf - Po)^2) / (sum(Pf^2) + sum(Po^2)), the sums taken over every pixel of every
  accumulated field, so the FSS of merged accumulators is that of the pooled fields (not a mean of
  per-field scores). An FSS with no event in either field is NaN.

Scales are given in kilometres (:data:`FSS_SCALES_KM`) and turned into pixels with the archive's
pixel size (:func:`scale_pixels`); an archive without one counts a pixel as 1 km.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from convlstm_dist.verify._arrays import as_bthw
from convlstm_dist.vocabulary import FSS_SCALES_KM, FSS_THRESHOLDS_MMH

_SUMS = ("sum_ff", "sum_fo", "sum_oo")


def scale_pixels(scales_km: Sequence[float], pixel_size_m: float | None) -> list[int]:
    """Each scale in km as an odd-or-even window size in pixels (at least 1); ``pixel_size_m``
    None (a grid without projection) counts a pixel as 1 km."""
    px_km = (float(pixel_size_m) / 1000.0) if pixel_size_m else 1.0
    return [max(1, int(round(float(s) / px_km))) for s in scales_km]


def fss_key(scale_km: float) -> str:
    """The row/CSV column of one scale: ``fss_4km``."""
    return f"fss_{float(scale_km):g}km"


class FSSAccumulator:
    """Sums of squared fractions per lead time, threshold and scale."""

    def __init__(self, thresholds_mmh: Sequence[float] = FSS_THRESHOLDS_MMH, scales_km: Sequence[float] = FSS_SCALES_KM,
                 n_leads: int = 1, pixel_size_m: float | None = None, scales_px: Sequence[int] | None = None):
        self.thresholds_mmh = np.asarray(thresholds_mmh, dtype=np.float64).reshape(-1)
        self.scales_km = np.asarray(scales_km, dtype=np.float64).reshape(-1)
        px = scale_pixels(self.scales_km, pixel_size_m) if scales_px is None else [int(s) for s in scales_px]
        if len(px) != self.scales_km.size or min(px, default=1) < 1:
            raise ValueError(f"scales_px must hold one size >= 1 per scale, got {px}")
        if int(n_leads) < 1:
            raise ValueError(f"n_leads must be >= 1, got {n_leads}")
        self.scales_px = np.asarray(px, dtype=np.int64)
        self.n_leads = int(n_leads)
        shape = (self.n_leads, self.thresholds_mmh.size, self.scales_km.size)
        for key in _SUMS:
            setattr(self, key, np.zeros(shape, dtype=np.float64))

    def accumulate(self, fcst, obs) -> "FSSAccumulator":
        """Add fields of shape ``(B, T_lead, H, W)`` (numpy or torch, any float); NaN = no data."""
        from scipy.ndimage import uniform_filter

        f, o = as_bthw(fcst, "fcst"), as_bthw(obs, "obs")
        if f.shape != o.shape:
            raise ValueError(f"fcst and obs shapes differ: {f.shape} vs {o.shape}")
        if f.shape[1] != self.n_leads:
            raise ValueError(f"got {f.shape[1]} lead times, the accumulator has n_leads={self.n_leads}")
        with np.errstate(invalid="ignore"):
            for k, thr in enumerate(self.thresholds_mmh):
                ef = (f >= thr).astype(np.float64)  # NaN >= thr is False: no data is no event
                eo = (o >= thr).astype(np.float64)
                for j, size in enumerate(self.scales_px):
                    if size > 1:
                        pf = uniform_filter(ef, size=(1, 1, int(size), int(size)), mode="constant", cval=0.0)
                        po = uniform_filter(eo, size=(1, 1, int(size), int(size)), mode="constant", cval=0.0)
                    else:
                        pf, po = ef, eo
                    self.sum_ff[:, k, j] += (pf * pf).sum(axis=(0, 2, 3))
                    self.sum_fo[:, k, j] += (pf * po).sum(axis=(0, 2, 3))
                    self.sum_oo[:, k, j] += (po * po).sum(axis=(0, 2, 3))
        return self

    def _check_layout(self, other: "FSSAccumulator") -> None:
        same = (other.n_leads == self.n_leads and np.array_equal(other.thresholds_mmh, self.thresholds_mmh)
                and np.array_equal(other.scales_px, self.scales_px))
        if not same:
            raise ValueError("cannot merge FSS accumulators with different leads, thresholds or scales")

    def merge(self, other: "FSSAccumulator") -> "FSSAccumulator":
        """Add ``other``'s sums into this one in place; returns self."""
        self._check_layout(other)
        for key in _SUMS:
            getattr(self, key)[...] += getattr(other, key)
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays (copies), safe to send through Ray."""
        state = {key: getattr(self, key).copy() for key in _SUMS}
        state.update(thresholds_mmh=self.thresholds_mmh.copy(), scales_km=self.scales_km.copy(),
                     scales_px=self.scales_px.copy(), n_leads=np.asarray(self.n_leads))
        return state

    @classmethod
    def from_state(cls, state: dict) -> "FSSAccumulator":
        acc = cls(state["thresholds_mmh"], state["scales_km"], int(state["n_leads"]), scales_px=state["scales_px"])
        for key in _SUMS:
            value = np.asarray(state[key], dtype=np.float64)
            if value.shape != getattr(acc, key).shape:
                raise ValueError(f"FSS state[{key!r}] has shape {value.shape}, expected {getattr(acc, key).shape}")
            setattr(acc, key, value.copy())
        return acc

    def compute(self) -> np.ndarray:
        """FSS of shape ``(n_leads, n_thresholds, n_scales)`` (NaN where neither field has an event)."""
        return fss_from_sums(self.sum_ff, self.sum_fo, self.sum_oo)

    def columns(self, lead_index: int, threshold_mmh: float) -> dict[str, float]:
        """One row's FSS columns (``fss_<km>km``, and the three sums per scale so that rows pool
        exactly: ``fss_<km>km_ff``/``_fo``/``_oo``); NaN columns for a threshold not counted."""
        match = np.flatnonzero(self.thresholds_mmh == float(threshold_mmh))
        out = {}
        score = self.compute()
        for j, km in enumerate(self.scales_km):
            key = fss_key(km)
            if match.size:
                k = int(match[0])
                out[key] = float(score[lead_index, k, j])
                for s in _SUMS:
                    out[f"{key}_{s[-2:]}"] = float(getattr(self, s)[lead_index, k, j])
            else:
                out[key] = float("nan")
                for s in _SUMS:
                    out[f"{key}_{s[-2:]}"] = float("nan")
        return out


def fss_from_sums(sum_ff, sum_fo, sum_oo) -> np.ndarray:
    ff, fo, oo = (np.asarray(v, dtype=np.float64) for v in (sum_ff, sum_fo, sum_oo))
    den = ff + oo
    out = np.full(np.broadcast(ff, oo).shape, np.nan)
    np.divide(ff - 2.0 * fo + oo, den, out=out, where=den > 0)
    return np.where(den > 0, 1.0 - out, np.nan)


def pool_fss(rows: Sequence[dict], scales_km: Sequence[float]) -> dict[str, float]:
    """FSS columns of rows pooled exactly: the sums of each scale added, then the score."""
    out = {}
    for km in scales_km:
        key = fss_key(km)
        parts = [[float(r.get(f"{key}_{s}", float("nan"))) for s in ("ff", "fo", "oo")] for r in rows]
        parts = [p for p in parts if all(np.isfinite(p))]
        if not parts:
            out[key] = float("nan")
            for s in ("ff", "fo", "oo"):
                out[f"{key}_{s}"] = float("nan")
            continue
        total = np.sum(np.asarray(parts), axis=0)
        out[key] = float(fss_from_sums(*total))
        for s, v in zip(("ff", "fo", "oo"), total):
            out[f"{key}_{s}"] = float(v)
    return out
