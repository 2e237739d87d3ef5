"""Mergeable skill scores per lead time and threshold (init / accumulate / merge / compute).

The same pattern as pysteps' ``verification.detcatscores`` (``det_cat_fct_init / _accum /
_merge / _compute``), gathered in one object so that many Ray workers can each score a shard
of the test set and the driver merges their partial sums::

    acc = SkillAccumulator(n_leads=20)              # on each worker
    acc.accumulate(fcst_mmh, obs_mmh)               # (B, T_lead, H, W), any number of times
    state = acc.to_state()                          # plain dict of numpy arrays → through Ray
    total = SkillAccumulator.from_state(states[0])  # on the driver
    for s in states[1:]:
        total.merge(SkillAccumulator.from_state(s))
    rows = total.compute()

Contract
--------
* Inputs are rain rates in mm/h, shape ``(B, T_lead, H, W)`` (or ``(B, T_lead, 1, H, W)``),
  numpy or torch. A pixel is counted only where both forecast and observation are finite:
  NaN in either one is no data, never "no rain".
* Events use ``>=``: a pixel is an event at threshold ``thr`` when its rain rate is
  ``>= thr`` mm/h, as in the HKO-7 benchmark. pysteps' ``det_cat_fct`` uses a strict ``>``;
  the two agree whenever no value equals a threshold exactly.
* Contingency counts (int64, shape ``(n_leads, n_thresholds)``): a = hits (fcst and obs
  events), b = false alarms (fcst only), c = misses (obs only), d = correct negatives.
  CSI = a/(a+b+c), POD = a/(a+c), FAR = b/(a+b),
  HSS = 2(ad − bc) / ((a+c)(c+d) + (a+b)(b+d))  (Heidke; same as pysteps).
* Continuous scores per lead (float64 sums): MSE, MAE, balanced MSE with the HKO-7 weights
  w(obs) = 1 below 2 mm/h, 2 for [2, 5), 5 for [5, 10), 10 for [10, 30), 30 for >= 30 mm/h,
  reported as the mean of ``w · (f − o)²`` over counted pixels (a per-pixel mean, so it does
  not depend on the image size), and the Pearson correlation from the sums of x, y, x², y²,
  xy and n.
* A score whose denominator is zero (no events, no pixels, constant field) is NaN.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from convlstm_dist.data.quantity import SKILL_THRESHOLDS_MMH
from convlstm_dist.verify._arrays import as_bthw

DEFAULT_THRESHOLDS_MMH = SKILL_THRESHOLDS_MMH  # the thresholds of validation during training too

_COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")
_SUMS = ("n", "sum_se", "sum_ae", "sum_wse", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")
ROW_KEYS = ("lead_index", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae", "bmse", "corr", "n")


def bmse_weights(obs_mmh: np.ndarray) -> np.ndarray:
    """HKO-7 balancing weights for observed rain rates in mm/h (NaN gets weight 1): the numpy twin of
    ``models.losses.hko7_weights``, from the same table (weight 1 below the first edge, then the
    weight of the highest edge reached)."""
    from convlstm_dist.models.losses import HKO7_THRESHOLDS_MMH, HKO7_WEIGHTS  # torch only when scoring

    w = np.full(np.shape(obs_mmh), HKO7_WEIGHTS[0])
    with np.errstate(invalid="ignore"):
        for edge, weight in zip(HKO7_THRESHOLDS_MMH, HKO7_WEIGHTS[1:]):
            w[obs_mmh >= edge] = weight
    return w


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


class SkillAccumulator:
    """Partial sums of categorical and continuous scores, per lead time (and threshold)."""

    def __init__(self, thresholds_mmh: Sequence[float] = DEFAULT_THRESHOLDS_MMH, n_leads: int = 1):
        thr = np.asarray(thresholds_mmh, dtype=np.float64).reshape(-1)
        if thr.size == 0 or not np.all(np.isfinite(thr)):
            raise ValueError(f"thresholds_mmh must be finite numbers, got {thresholds_mmh!r}")
        if int(n_leads) < 1:
            raise ValueError(f"n_leads must be >= 1, got {n_leads}")
        self.thresholds_mmh = thr
        self.n_leads = int(n_leads)
        shape = (self.n_leads, thr.size)
        for key in _COUNTS:
            setattr(self, key, np.zeros(shape, dtype=np.int64))
        self.n = np.zeros(self.n_leads, dtype=np.int64)
        for key in _SUMS[1:]:
            setattr(self, key, np.zeros(self.n_leads, dtype=np.float64))

    # -- accumulate -------------------------------------------------------------------------
    def accumulate(self, fcst, obs) -> "SkillAccumulator":
        """Add a batch: ``fcst`` and ``obs`` in mm/h, shape ``(B, T_lead, H, W)``; returns self."""
        f = as_bthw(fcst, "fcst")
        o = as_bthw(obs, "obs")
        if f.shape != o.shape:
            raise ValueError(f"fcst and obs shapes differ: {f.shape} vs {o.shape}")
        if f.shape[1] != self.n_leads:
            raise ValueError(f"got {f.shape[1]} lead times, the accumulator has n_leads={self.n_leads}")
        for t in range(self.n_leads):  # one lead at a time keeps temporaries small
            self._accumulate_lead(t, f[:, t], o[:, t])
        return self

    def _accumulate_lead(self, t: int, f: np.ndarray, o: np.ndarray) -> None:
        valid = np.isfinite(f) & np.isfinite(o)
        fv, ov = f[valid], o[valid]
        for k, thr in enumerate(self.thresholds_mmh):
            fe, oe = fv >= thr, ov >= thr
            hits = np.count_nonzero(fe & oe)
            n_fe, n_oe = np.count_nonzero(fe), np.count_nonzero(oe)
            self.hits[t, k] += hits
            self.false_alarms[t, k] += n_fe - hits
            self.misses[t, k] += n_oe - hits
            self.correct_negatives[t, k] += fv.size - n_fe - n_oe + hits
        err = fv - ov
        se = err * err
        self.n[t] += fv.size
        self.sum_se[t] += se.sum()
        self.sum_ae[t] += np.abs(err).sum()
        self.sum_wse[t] += (bmse_weights(ov) * se).sum()
        self.sum_x[t] += fv.sum()
        self.sum_y[t] += ov.sum()
        self.sum_xx[t] += (fv * fv).sum()
        self.sum_yy[t] += (ov * ov).sum()
        self.sum_xy[t] += (fv * ov).sum()

    # -- merge / state ----------------------------------------------------------------------
    def merge(self, other: "SkillAccumulator") -> "SkillAccumulator":
        """Add ``other``'s sums into this accumulator **in place** and return ``self``.

        ``other`` is not modified. Thresholds and ``n_leads`` must match exactly.
        """
        if other.n_leads != self.n_leads or not np.array_equal(other.thresholds_mmh, self.thresholds_mmh):
            raise ValueError(
                "cannot merge accumulators with different layouts: "
                f"n_leads {self.n_leads} vs {other.n_leads}, thresholds "
                f"{self.thresholds_mmh.tolist()} vs {other.thresholds_mmh.tolist()}"
            )
        for key in _COUNTS + _SUMS:
            getattr(self, key)[...] += getattr(other, key)
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """All sums as a plain dict of numpy arrays (copies), safe to send through Ray."""
        state = {key: getattr(self, key).copy() for key in _COUNTS + _SUMS}
        state["thresholds_mmh"] = self.thresholds_mmh.copy()
        state["n_leads"] = np.asarray(self.n_leads, dtype=np.int64)
        return state

    @classmethod
    def from_state(cls, state: dict) -> "SkillAccumulator":
        """Rebuild an accumulator from :meth:`to_state`'s dict."""
        missing = sorted(set(_COUNTS + _SUMS + ("thresholds_mmh", "n_leads")) - set(state))
        if missing:
            raise ValueError(f"not a SkillAccumulator state, missing keys: {missing}")
        acc = cls(state["thresholds_mmh"], int(state["n_leads"]))
        for key in _COUNTS + _SUMS:
            value = np.asarray(state[key], dtype=getattr(acc, key).dtype)
            if value.shape != getattr(acc, key).shape:
                raise ValueError(f"state[{key!r}] has shape {value.shape}, expected {getattr(acc, key).shape}")
            setattr(acc, key, value.copy())
        return acc

    # -- compute ----------------------------------------------------------------------------
    def categorical(self) -> dict[str, np.ndarray]:
        """CSI, POD, FAR, HSS as arrays of shape ``(n_leads, n_thresholds)`` (NaN if undefined)."""
        a = self.hits.astype(np.float64)
        b = self.false_alarms.astype(np.float64)
        c = self.misses.astype(np.float64)
        d = self.correct_negatives.astype(np.float64)
        return {
            "csi": _ratio(a, a + b + c),
            "pod": _ratio(a, a + c),
            "far": _ratio(b, a + b),
            "hss": _ratio(2.0 * (a * d - b * c), (a + c) * (c + d) + (a + b) * (b + d)),
        }

    def continuous(self) -> dict[str, np.ndarray]:
        """MSE, MAE, B-MSE, Pearson correlation as arrays of shape ``(n_leads,)``."""
        n = self.n.astype(np.float64)
        cov = self.sum_xy - _ratio(self.sum_x * self.sum_y, n)
        var_x = self.sum_xx - _ratio(self.sum_x**2, n)
        var_y = self.sum_yy - _ratio(self.sum_y**2, n)
        den = np.sqrt(np.clip(var_x, 0.0, None) * np.clip(var_y, 0.0, None))
        return {
            "mse": _ratio(self.sum_se, n),
            "mae": _ratio(self.sum_ae, n),
            "bmse": _ratio(self.sum_wse, n),
            "corr": np.clip(_ratio(cov, den), -1.0, 1.0),
        }

    def compute(self) -> list[dict]:
        """One row per (lead, threshold) with keys :data:`ROW_KEYS`; lead-only scores repeat."""
        cat, cont = self.categorical(), self.continuous()
        rows = []
        for t in range(self.n_leads):
            for k, thr in enumerate(self.thresholds_mmh):
                row = {"lead_index": t, "threshold_mmh": float(thr)}
                row.update({key: float(cat[key][t, k]) for key in ("csi", "pod", "far", "hss")})
                row.update({key: float(cont[key][t]) for key in ("mse", "mae", "bmse", "corr")})
                row["n"] = int(self.n[t])
                rows.append(row)
        return rows

    def summary(self) -> list[dict]:
        """Per threshold: CSI and HSS averaged over the lead times where they are defined."""
        cat = self.categorical()
        rows = []
        for k, thr in enumerate(self.thresholds_mmh):
            row = {"threshold_mmh": float(thr)}
            for key in ("csi", "hss"):
                col = cat[key][:, k]
                row[key] = float(np.mean(col[np.isfinite(col)])) if np.isfinite(col).any() else float("nan")
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        return (f"SkillAccumulator(thresholds_mmh={self.thresholds_mmh.tolist()}, "
                f"n_leads={self.n_leads}, pixels={int(self.n.sum())})")
