"""The one skill accumulator: mergeable scores per lead time and threshold (init / accumulate / merge / compute).

The same pattern as pysteps' ``verification.detcatscores`` (``det_cat_fct_init / _accum /
_merge / _compute``), gathered in one object. ``evaluate`` scores shards of the test set in many
Ray tasks and merges their states on the driver; validation during training counts on the
device (torch tensors, no host sync per batch) and all-reduces one flat state tensor::

    acc = SkillAccumulator(n_leads=20)              # on each worker
    acc.accumulate(fcst_mmh, obs_mmh)               # (B, T_lead, H, W), any number of times
    state = acc.to_state()                          # plain dict of numpy arrays → through Ray
    total = SkillAccumulator.from_state(states[0])  # on the driver
    for s in states[1:]:
        total.merge(SkillAccumulator.from_state(s))
    rows = total.compute()

    flat = allreduce(acc.flat(device))              # training: one tensor, summed over ranks
    acc.load_flat(flat)

Contract
--------
* Inputs are rain rates in mm/h, shape ``(B, T_lead, H, W)`` (or ``(B, T_lead, 1, H, W)``),
  numpy or torch. A pixel is counted only where both forecast and observation are finite (and
  ``mask``, if given, is True): NaN in either one is no data, never "no rain".
* Storage follows the input: numpy inputs keep numpy sums (torch is imported to count them);
  torch inputs move the sums to the inputs' device, where they stay until :meth:`to_state`,
  :meth:`load_flat` or a score brings them to the host. Differences are computed in the
  inputs' dtype, sums are float64, counts int64.
* Events use ``>=``: a pixel is an event at threshold ``thr`` when its rain rate is
  ``>= thr`` mm/h, as in the HKO-7 benchmark. pysteps' ``det_cat_fct`` uses a strict ``>``;
  the two agree whenever no value equals a threshold exactly.
* Contingency counts (int64, shape ``(n_leads, n_thresholds)``): a = hits (fcst and obs
  events), b = false alarms (fcst only), c = misses (obs only), d = correct negatives.
  CSI = a/(a+b+c), POD = a/(a+c), FAR = b/(a+b),
  HSS = 2(ad − bc) / ((a+c)(c+d) + (a+b)(b+d))  (Heidke; same as pysteps).
* Continuous scores per lead (float64 sums): MSE, MAE, balanced MSE with the HKO-7 weights
  (``models.losses.hko7_weights``: 1 below 2 mm/h, 2 for [2, 5), 5 for [5, 10), 10 for [10, 30),
  30 for >= 30 mm/h), reported as the mean of ``w · (f − o)²`` over counted pixels (a per-pixel
  mean, so it does not depend on the image size), and the Pearson correlation from the sums of
  x, y, x², y², xy and n.
* A score whose denominator is zero (no events, no pixels, constant field) is NaN.

Metric names
------------
:func:`skill_metrics` gives the scores pooled over lead times under the names of the one rule,
:func:`convlstm_dist.vocabulary.metric_key` (:data:`convlstm_dist.vocabulary.SUMMARY_SCORES`):
``val_csi_2mmh``, ``val_persistence_mse``, …
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from convlstm_dist.verify._arrays import as_bthw
from convlstm_dist.vocabulary import SKILL_THRESHOLDS_MMH, metric_key, summary_layout


_COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")
_SUMS = ("n", "sum_se", "sum_ae", "sum_wse", "sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy")
ROW_KEYS = ("lead_index", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae", "bmse", "corr", "n") + _COUNTS
_MAX_CHUNK = 1 << 24  # elements per counting pass (leads are counted in chunks below this size)


def skill_metrics(rows: Sequence[dict], scope: str, method: str | None = None) -> dict[str, float]:
    """Scores of one method pooled over its lead times, from its :meth:`SkillAccumulator.compute`
    rows: contingency counts summed over leads (so CSI at 2 mm/h is that of all leads together),
    MSE/MAE/B-MSE weighted by each lead's pixels. Named by :func:`~convlstm_dist.vocabulary.metric_key`; which scores:
    :data:`~convlstm_dist.vocabulary.SUMMARY_SCORES` (the model, ``method=None``, or a reference method)."""
    thresholds = list(dict.fromkeys(float(r["threshold_mmh"]) for r in rows))
    by_lead = {int(r["lead_index"]): r for r in rows}  # lead-only scores repeat per threshold
    n = np.array([float(r["n"]) for r in by_lead.values()])
    counts = {k: np.array([[sum(float(r[c]) for r in rows if float(r["threshold_mmh"]) == t)
                            for t in thresholds]]) for k, c in zip("abcd", ("hits", "false_alarms", "misses",
                                                                          "correct_negatives"))}
    cat = _categorical(counts["a"], counts["b"], counts["c"], counts["d"])
    out = {}
    for score, thr in summary_layout(thresholds, method):
        if thr is None:
            v = np.array([float(r[score]) for r in by_lead.values()])
            ok = n > 0
            value = float(_ratio((v[ok] * n[ok]).sum(), n[ok].sum()))
        else:
            value = float(cat[score][0, thresholds.index(thr)])
        out[metric_key(score, thr, method, scope)] = value
    return out


def _ratio(num, den) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _categorical(a, b, c, d) -> dict[str, np.ndarray]:
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (a, b, c, d))
    return {
        "csi": _ratio(a, a + b + c),
        "pod": _ratio(a, a + c),
        "far": _ratio(b, a + b),
        "hss": _ratio(2.0 * (a * d - b * c), (a + c) * (c + d) + (a + b) * (b + d)),
    }


def contingency_scores(hits, false_alarms, misses, correct_negatives) -> dict[str, float]:
    """CSI, POD, FAR, HSS of one contingency table (NaN where undefined)."""
    cat = _categorical(hits, false_alarms, misses, correct_negatives)
    return {k: float(v) for k, v in cat.items()}


def _is_torch(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")  # torch.Tensor, without importing torch


def _torch_bthw(x, name: str):
    if x.ndim == 5 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, T, H, W) or (B, T, 1, H, W), got {tuple(x.shape)}")
    return x.detach()


def _host(v) -> np.ndarray:
    return v.detach().cpu().numpy() if _is_torch(v) else v


def _batch_sums(f, o, valid, thresholds) -> dict:
    """Counts and sums of one chunk ``(B, Tc, H, W)`` per lead (torch tensors of shape ``(Tc[, K])``)."""
    import torch

    from convlstm_dist.models.losses import hko7_weights

    dims = (0, 2, 3)
    n = valid.sum(dims)
    cols = {k: [] for k in _COUNTS}
    for thr in thresholds:
        fe, oe = (f >= thr) & valid, (o >= thr) & valid
        hits, n_fe, n_oe = (fe & oe).sum(dims), fe.sum(dims), oe.sum(dims)
        cols["hits"].append(hits)
        cols["false_alarms"].append(n_fe - hits)
        cols["misses"].append(n_oe - hits)
        cols["correct_negatives"].append(n - n_fe - n_oe + hits)
    out = {k: torch.stack(v, dim=1) for k, v in cols.items()}
    zero = torch.zeros((), dtype=f.dtype, device=f.device)
    fv, ov = torch.where(valid, f, zero), torch.where(valid, o, zero)
    err = fv - ov
    se = err * err

    def total(x):
        return x.sum(dims, dtype=torch.float64)

    out.update(n=n, sum_se=total(se), sum_ae=total(err.abs()), sum_wse=total(hko7_weights(ov) * se),
               sum_x=total(fv), sum_y=total(ov), sum_xx=total(fv * fv), sum_yy=total(ov * ov), sum_xy=total(fv * ov))
    return out


class SkillAccumulator:
    """Partial sums of categorical and continuous scores, per lead time (and threshold)."""

    def __init__(self, thresholds_mmh: Sequence[float] = SKILL_THRESHOLDS_MMH, n_leads: int = 1, device=None):
        thr = np.asarray(thresholds_mmh, dtype=np.float64).reshape(-1)
        if thr.size == 0 or not np.all(np.isfinite(thr)):
            raise ValueError(f"thresholds_mmh must be finite numbers, got {thresholds_mmh!r}")
        if int(n_leads) < 1:
            raise ValueError(f"n_leads must be >= 1, got {n_leads}")
        self.thresholds_mmh = thr
        self.n_leads = int(n_leads)
        self.device = None  # None: numpy sums on the host; else the torch device of the sums
        shape = (self.n_leads, thr.size)
        for key in _COUNTS:
            setattr(self, key, np.zeros(shape, dtype=np.int64))
        self.n = np.zeros(self.n_leads, dtype=np.int64)
        for key in _SUMS[1:]:
            setattr(self, key, np.zeros(self.n_leads, dtype=np.float64))
        if device is not None:
            self.to(device)

    def to(self, device) -> "SkillAccumulator":
        """Keep the sums as torch tensors on ``device`` (``None``: numpy on the host); returns self."""
        if device is None:
            for key in _COUNTS + _SUMS:
                setattr(self, key, np.array(_host(getattr(self, key)), copy=True))
            self.device = None
            return self
        import torch

        device = torch.device(device)
        for key in _COUNTS + _SUMS:
            setattr(self, key, torch.as_tensor(getattr(self, key)).to(device))
        self.device = device
        return self

    # -- accumulate -------------------------------------------------------------------------
    def accumulate(self, fcst, obs, mask=None) -> "SkillAccumulator":
        """Add a batch: ``fcst`` and ``obs`` in mm/h, shape ``(B, T_lead, H, W)`` (or with a channel
        of 1); ``mask`` (same shape, True = valid) removes more pixels. Returns self."""
        import torch

        if _is_torch(fcst) or _is_torch(obs):
            f, o = _torch_bthw(torch.as_tensor(fcst), "fcst"), _torch_bthw(torch.as_tensor(obs), "obs")
            o = o.to(f.device)
        else:
            f, o = torch.from_numpy(as_bthw(fcst, "fcst")), torch.from_numpy(as_bthw(obs, "obs"))
        if f.shape != o.shape:
            raise ValueError(f"fcst and obs shapes differ: {tuple(f.shape)} vs {tuple(o.shape)}")
        if f.shape[1] != self.n_leads:
            raise ValueError(f"got {f.shape[1]} lead times, the accumulator has n_leads={self.n_leads}")
        valid = torch.isfinite(f) & torch.isfinite(o)
        if mask is not None:
            m = _torch_bthw(torch.as_tensor(mask), "mask").to(device=f.device)
            valid = valid & (m if m.dtype == torch.bool else m > 0.5)
        if _is_torch(fcst) and self.device != f.device:
            self.to(f.device)
        per_lead = max(1, f[:, 0].numel())
        step = max(1, min(self.n_leads, _MAX_CHUNK // per_lead))  # big grids: a few leads at a time
        thresholds = self.thresholds_mmh.tolist()
        for t0 in range(0, self.n_leads, step):
            sl = slice(t0, t0 + step)
            for key, value in _batch_sums(f[:, sl], o[:, sl], valid[:, sl], thresholds).items():
                target = getattr(self, key)
                target[sl] += value.to(target.device) if _is_torch(target) else value.cpu().numpy()
        return self

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
            mine, theirs = getattr(self, key), getattr(other, key)
            if _is_torch(mine):
                import torch

                mine += torch.as_tensor(theirs).to(mine.device)
            else:
                mine[...] += _host(theirs)
        return self

    def to_state(self) -> dict[str, np.ndarray]:
        """All sums as a plain dict of numpy arrays (copies), safe to send through Ray."""
        state = {key: np.array(_host(getattr(self, key)), copy=True) for key in _COUNTS + _SUMS}
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

    @property
    def flat_size(self) -> int:
        """Length of :meth:`flat`."""
        return self.n_leads * (self.thresholds_mmh.size * len(_COUNTS) + len(_SUMS))

    def flat(self, device=None):
        """Every count and sum in one float64 torch tensor (on ``device``, default the sums' own), to
        be summed over ranks with ``all_reduce``; counts stay exact up to 2**53. See :meth:`load_flat`."""
        import torch

        device = device if device is not None else (self.device or "cpu")
        return torch.cat([torch.as_tensor(getattr(self, key)).to(device=device, dtype=torch.float64).reshape(-1)
                          for key in _COUNTS + _SUMS])

    def load_flat(self, flat) -> "SkillAccumulator":
        """Replace every count and sum with those of a :meth:`flat` tensor (e.g. after ``all_reduce``);
        the sums come to the host as numpy (one copy). Returns self."""
        values = np.asarray(_host(flat), dtype=np.float64).reshape(-1)
        if values.size != self.flat_size:
            raise ValueError(f"flat state has {values.size} values, expected {self.flat_size}")
        self.device = None
        offset = 0
        for key in _COUNTS + _SUMS:
            shape = (self.n_leads, self.thresholds_mmh.size) if key in _COUNTS else (self.n_leads,)
            size = int(np.prod(shape))
            part = values[offset:offset + size].reshape(shape)
            offset += size
            setattr(self, key, np.rint(part).astype(np.int64) if key in _COUNTS or key == "n" else part.copy())
        return self

    # -- compute ----------------------------------------------------------------------------
    def categorical(self) -> dict[str, np.ndarray]:
        """CSI, POD, FAR, HSS as arrays of shape ``(n_leads, n_thresholds)`` (NaN if undefined)."""
        return _categorical(_host(self.hits), _host(self.false_alarms), _host(self.misses),
                            _host(self.correct_negatives))

    def continuous(self) -> dict[str, np.ndarray]:
        """MSE, MAE, B-MSE, Pearson correlation as arrays of shape ``(n_leads,)``."""
        n = _host(self.n).astype(np.float64)
        sx, sy, sxx, syy, sxy = (_host(getattr(self, k)) for k in ("sum_x", "sum_y", "sum_xx", "sum_yy", "sum_xy"))
        cov = sxy - _ratio(sx * sy, n)
        var_x = sxx - _ratio(sx**2, n)
        var_y = syy - _ratio(sy**2, n)
        den = np.sqrt(np.clip(var_x, 0.0, None) * np.clip(var_y, 0.0, None))
        return {
            "mse": _ratio(_host(self.sum_se), n),
            "mae": _ratio(_host(self.sum_ae), n),
            "bmse": _ratio(_host(self.sum_wse), n),
            "corr": np.clip(_ratio(cov, den), -1.0, 1.0),
        }

    def compute(self) -> list[dict]:
        """One row per (lead, threshold) with keys :data:`ROW_KEYS`; lead-only scores repeat.
        The contingency counts are in the rows too, so that rows pool exactly (:func:`skill_metrics`)."""
        cat, cont = self.categorical(), self.continuous()
        n = _host(self.n)
        counts = {key: _host(getattr(self, key)) for key in _COUNTS}
        rows = []
        for t in range(self.n_leads):
            for k, thr in enumerate(self.thresholds_mmh):
                row = {"lead_index": t, "threshold_mmh": float(thr)}
                row.update({key: float(cat[key][t, k]) for key in ("csi", "pod", "far", "hss")})
                row.update({key: float(cont[key][t]) for key in ("mse", "mae", "bmse", "corr")})
                row["n"] = int(n[t])
                row.update({key: int(counts[key][t, k]) for key in _COUNTS})
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
        where = "" if self.device is None else f", device={self.device}"
        return (f"SkillAccumulator(thresholds_mmh={self.thresholds_mmh.tolist()}, "
                f"n_leads={self.n_leads}, pixels={int(_host(self.n).sum())}{where})")
