"""Transforms between physical units and the model's input range, and spatial crops.

The model always sees one of two quantities, named in every checkpoint:

* ``rain_norm``: rain rate mapped by ``n = log1p(R) / log1p(R_MAX)`` with ``R`` in mm/h and
  ``R_MAX = 128 mm/h`` (so 0 mm/h → 0, 128 mm/h → 1). Archives in dBZ are first converted to
  mm/h with the archive's own Z–R relation, so a model trained on one radar source can be run
  on another.
* ``intensity``: Moving MNIST pixel intensity in [0, 1], unchanged.

No-data (NaN) becomes 0 in the model input and ``False`` in the validity mask of the loss.
What depends on the quantity is :mod:`convlstm_dist.data.quantity` (the ``Quantity`` registry).
"""

from __future__ import annotations

import math

import numpy as np

R_MAX_MMH = 128.0
_LOG_RMAX = math.log1p(R_MAX_MMH)


def rain_to_norm(r_mmh):
    """mm/h → model range; works on numpy arrays and torch tensors; NaN stays NaN."""
    lib = _lib(r_mmh)
    return lib.log1p(lib.clip(r_mmh, 0.0, None) if lib is np else r_mmh.clamp(min=0.0)) / _LOG_RMAX


def norm_to_rain(n):
    """Model range → mm/h (negative model outputs map to 0 mm/h)."""
    lib = _lib(n)
    n = lib.clip(n, 0.0, None) if lib is np else n.clamp(min=0.0)
    return lib.expm1(n * _LOG_RMAX)


def _lib(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import torch

    return torch


def to_model(values: np.ndarray, variable: str, to_rain_mmh=None) -> np.ndarray:
    """Physical values of an archive (``rain_mmh``, ``refl_dbz`` or ``intensity``) → model range.

    ``to_rain_mmh`` converts this archive's unit to mm/h (``Archive.to_rain_mmh``); needed for dBZ.
    Shorthand for ``quantity_of_variable(variable).to_model(...)`` (:mod:`convlstm_dist.data.quantity`).
    """
    from convlstm_dist.data.quantity import quantity_of_variable

    return quantity_of_variable(variable).to_model(values, variable, to_rain_mmh)


def from_model(values, quantity: str):
    """Model output → physical unit (mm/h for ``rain_norm``; intensity unchanged).

    Shorthand for ``get_quantity(quantity).from_model(values)`` (:mod:`convlstm_dist.data.quantity`)."""
    from convlstm_dist.data.quantity import get_quantity

    return get_quantity(quantity).from_model(values)


def valid_integral(valid: np.ndarray) -> np.ndarray:
    """Summed-area table of a 2-D validity map (padded: shape (H + 1, W + 1)), for :func:`choose_crop`."""
    dtype = np.int32 if valid.size < 2**31 else np.int64
    return np.pad(valid.astype(dtype).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def choose_crop(
    valid: np.ndarray, size: tuple[int, int], rng: np.random.Generator, tries: int = 8, min_valid: float = 0.5,
    integral: np.ndarray | None = None,
) -> tuple[int, int]:
    """Top-left corner of a random ``size`` crop, preferring crops with enough valid pixels.

    ``valid`` is a 2-D boolean map (valid in every frame of the window). Up to ``tries`` random
    corners are drawn from ``rng``; the first with a valid share ``>= min_valid`` wins, otherwise
    the best one seen. Deterministic for a given generator state. ``integral``: the map's
    :func:`valid_integral`, if the caller keeps it between calls.
    """
    h, w = size
    H, W = valid.shape
    if h > H or w > W:
        raise ValueError(f"crop {h}x{w} is larger than the archive grid {H}x{W}")
    if (h, w) == (H, W):
        return 0, 0
    if integral is None:
        integral = valid_integral(valid)
    best, best_share = (0, 0), -1.0
    for _ in range(tries):
        y = int(rng.integers(0, H - h + 1))
        x = int(rng.integers(0, W - w + 1))
        share = (integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]) / (h * w)
        if share >= min_valid:
            return y, x
        if share > best_share:
            best, best_share = (y, x), share
    return best
