"""Post-processing of forecasts.

:func:`probability_match` — non-parametric probability matching (as in pysteps' STEPS): keep
the forecast's spatial pattern (the rank order of its pixels) but give every lead time the
value distribution of the last observed frame. It undoes the smoothing / intensity damping of
models trained with regression losses, assuming the intensity distribution persists over the
forecast horizon — the same assumption persistence and optical flow make. Scored as its own
method (``<model>_pm``) next to the raw model, never in its place.
"""

from __future__ import annotations

import numpy as np


def probability_match(forecast: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``forecast`` (B, T, H, W) and ``reference`` (B, H, W) → matched forecast (B, T, H, W).

    Pixels where the reference is NaN (no data) are left as forecast; among the others, the k-th
    smallest forecast value of a frame becomes the (rescaled) k-th smallest reference value.
    Forecast pixels that are NaN (no observed source) stay NaN; when a lead has fewer valid
    pixels than the reference, the reference distribution is sampled at evenly spaced ranks.
    """
    forecast = np.asarray(forecast, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if forecast.ndim != 4 or reference.shape != (forecast.shape[0], *forecast.shape[2:]):
        raise ValueError(f"forecast (B, T, H, W) and reference (B, H, W) expected, got {forecast.shape} and "
                         f"{reference.shape}")
    out = forecast.copy()
    for b in range(forecast.shape[0]):
        valid = np.isfinite(reference[b])
        target = np.sort(reference[b][valid])
        n = target.size
        if n == 0:
            continue
        for t in range(forecast.shape[1]):
            ok = valid & np.isfinite(forecast[b, t])
            m = int(ok.sum())
            if m == 0:
                continue
            tgt = target if m == n else target[np.round(np.linspace(0, n - 1, m)).astype(np.int64)]
            f = forecast[b, t][ok]
            ranks = np.empty(m, dtype=np.int64)
            ranks[np.argsort(f, kind="stable")] = np.arange(m)
            out[b, t][ok] = tgt[ranks]
    return out
