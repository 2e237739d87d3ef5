"""The quantities a model can predict, and everything that depends on which one it is.

A model sees and predicts one *quantity*, named in every checkpoint (``payload["quantity"]``):

| quantity    | model range                               | physical variable | units | archives             |
| ----------- | ----------------------------------------- | ----------------- | ----- | -------------------- |
| `rain_norm` | ``log1p(R) / log1p(128 mm/h)``, see below | `rain_mmh`        | mm/h  | rain_mmh, refl_dbz   |
| `intensity` | Moving MNIST brightness in [0, 1], as is  | `intensity`       | 1     | intensity            |

Code elsewhere asks a :class:`Quantity` what to do (convert to and from the model range, whether
the model output is logits, which units and thresholds apply, which metrics are reported) instead
of comparing quantity or variable names; ``tests/unit/test_quantity.py`` keeps it that way. The
archive variables themselves (their units and Z–R conversions) are :mod:`convlstm_dist.data.units`.

The ``rain_norm`` mapping: rain rate ``R`` in mm/h → ``n = log1p(R) / log1p(R_MAX)`` with
``R_MAX = 128 mm/h`` (so 0 mm/h → 0, 128 mm/h → 1) (:func:`rain_to_norm`, :func:`norm_to_rain`).
Archives in dBZ are first converted to mm/h with the archive's own Z–R relation, so a model
trained on one radar source can be run on another. No-data (NaN) becomes 0 in the model input and
``False`` in the validity mask of the loss.

Torch-free at import (``train/metrics.py`` validates configs with it); the conversions work on
numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from convlstm_dist.data.units import WET_THRESHOLDS_INTENSITY
from convlstm_dist.vocabulary import SKILL_THRESHOLDS_MMH

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


# Losses computed on logits: a model trained with one of these outputs logits, and its forecast
# in the model range is ``sigmoid(output)``.
LOGIT_LOSSES = ("bce", "bce_sum")


def _rain_to_model(values, variable: str, to_rain_mmh: Callable | None):
    if variable == "rain_mmh":  # archive variable (data.units), not a quantity name
        r = values
    elif to_rain_mmh is not None:
        r = to_rain_mmh(values)
    else:
        raise ValueError(f"cannot convert variable {variable!r} to rain rate: no Z–R relation given")
    return rain_to_norm(np.asarray(r, dtype=np.float32)).astype(np.float32)


def _intensity_to_model(values, variable: str, to_rain_mmh: Callable | None):
    return values.astype(np.float32, copy=False)


def _identity(x):
    return x


@dataclass(frozen=True)
class Quantity:
    """One model quantity (see the module table)."""

    name: str
    units: str  # units of :meth:`from_model`'s output (and of the archive's wet thresholds)
    display_unit: str  # colour-bar label of forecast figures
    physical_variable: str  # the variable :meth:`from_model`'s output is (forecast files, scoring)
    archive_variables: tuple[str, ...]  # archive variables a model of this quantity trains and runs on
    data_sources: tuple[str, ...]  # ``data.source`` values whose models predict this quantity
    has_rain_rate: bool  # physical values are rain rates: archives convert with ``to_rain_mmh``
    reports_cross_entropy: bool  # validation also reports ``val_cross_entropy`` (Moving MNIST)
    skill_thresholds: tuple[float, ...]  # thresholds of ``evaluate``, in :attr:`units`
    _to_model: Callable = _identity
    _from_model: Callable = _identity

    def to_model(self, values: np.ndarray, variable: str, to_rain_mmh: Callable | None = None) -> np.ndarray:
        """Physical values of an archive of ``variable`` → model range (float32).

        ``to_rain_mmh`` converts this archive's unit to mm/h (``Archive.to_rain_mmh``); needed for dBZ."""
        return self._to_model(values, variable, to_rain_mmh)

    def from_model(self, x):
        """Model range → :attr:`units` (numpy or torch; negative rain maps to 0 mm/h)."""
        return self._from_model(x)

    @staticmethod
    def output_is_logits(loss_name: str) -> bool:
        """Whether a model trained with ``loss_name`` outputs logits (``sigmoid`` gives the model range)."""
        return loss_name in LOGIT_LOSSES

    def __str__(self) -> str:
        return self.name


RAIN_NORM = Quantity(
    name="rain_norm", units="mm/h", display_unit="mm/h", physical_variable="rain_mmh",
    archive_variables=("rain_mmh", "refl_dbz"), data_sources=("archive",), has_rain_rate=True,
    reports_cross_entropy=False, skill_thresholds=SKILL_THRESHOLDS_MMH,
    _to_model=_rain_to_model, _from_model=norm_to_rain)
INTENSITY = Quantity(
    name="intensity", units="1", display_unit="intensity", physical_variable="intensity",
    archive_variables=("intensity",), data_sources=("moving_mnist",), has_rain_rate=False,
    reports_cross_entropy=True, skill_thresholds=tuple(WET_THRESHOLDS_INTENSITY),
    _to_model=_intensity_to_model, _from_model=_identity)

QUANTITIES: dict[str, Quantity] = {q.name: q for q in (RAIN_NORM, INTENSITY)}
# What any other archive variable or data source maps to: rain, converted with the archive's
# ``to_rain_mmh`` (a variable it cannot convert fails there, with the archive's own message).
DEFAULT = RAIN_NORM


def get_quantity(name: str | Quantity) -> Quantity:
    """The quantity named ``name`` (a :class:`Quantity` is returned as is)."""
    if isinstance(name, Quantity):
        return name
    try:
        return QUANTITIES[name]
    except KeyError:
        raise ValueError(f"unknown model quantity {name!r}; valid: {', '.join(sorted(QUANTITIES))}") from None


def quantity_of_variable(variable: str) -> Quantity:
    """The quantity a model trained on (or run on) an archive of ``variable`` predicts."""
    for q in QUANTITIES.values():
        if variable in q.archive_variables:
            return q
    return DEFAULT


def available_sources() -> list[str]:
    """The values of ``data.source``: the data sources some quantity reads."""
    return sorted({s for q in QUANTITIES.values() for s in q.data_sources})


def quantity_of_source(source: str) -> Quantity:
    """The quantity a model trained on ``data.source`` predicts (for models saved without one)."""
    for q in QUANTITIES.values():
        if source in q.data_sources:
            return q
    return DEFAULT
