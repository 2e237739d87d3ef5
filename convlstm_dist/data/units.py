"""Physical units of archive variables and conversions between them.

A variable's name says its unit, so code that reads an archive knows what its numbers mean
without a lookup:

| variable    | units  | meaning                                          |
| ----------- | ------ | ------------------------------------------------ |
| `rain_mmh`  | `mm/h` | rain rate                                        |
| `refl_dbz`  | `dBZ`  | radar reflectivity                               |
| `intensity` | `1`    | synthetic brightness in 0..1 (Moving MNIST)      |

NaN means "no data" everywhere. Reflectivity converts to a rain rate through a Z–R relation
Z = a R^b (Z in mm^6/m^3, R in mm/h): R = (10^(dBZ/10) / a)^(1/b). The wet-fraction thresholds
of an archive are rain rates in mm/h (`WET_THRESHOLDS_MMH`); a `refl_dbz` archive compares in dBZ
after converting the thresholds with its Z–R relation. `intensity` has no rain rate: it uses
`WET_THRESHOLDS_INTENSITY`, same count and names, values in intensity units.
"""

from __future__ import annotations

import numpy as np

from convlstm_dist.errors import UserError

UNITS = {"rain_mmh": "mm/h", "refl_dbz": "dBZ", "intensity": "1"}
WET_THRESHOLDS_MMH = (0.1, 0.5, 2.0, 5.0, 10.0)
WET_THRESHOLDS_INTENSITY = (0.1, 0.3, 0.5, 0.7, 0.9)
# the wet-fraction thresholds stored with each archive variable (rain in mm/h; dBZ archives convert them)
WET_THRESHOLDS = {"rain_mmh": WET_THRESHOLDS_MMH, "refl_dbz": WET_THRESHOLDS_MMH, "intensity": WET_THRESHOLDS_INTENSITY}


def units_of(variable: str) -> str:
    """The units string of a variable name; unknown names raise listing the valid ones."""
    try:
        return UNITS[variable]
    except KeyError:
        raise UserError(f"unknown variable {variable!r}; valid: {sorted(UNITS)}") from None


def dbz_to_rain_mmh(dbz: np.ndarray, zr_a: float, zr_b: float) -> np.ndarray:
    """dBZ → mm/h with Z = a R^b. NaN stays NaN."""
    z = np.power(10.0, np.asarray(dbz, dtype=np.float64) / 10.0)
    return np.power(z / zr_a, 1.0 / zr_b).astype(np.float32)


def rain_mmh_to_dbz(rate: np.ndarray, zr_a: float, zr_b: float) -> np.ndarray:
    """mm/h → dBZ with Z = a R^b. Zero rain gives -inf dBZ; NaN stays NaN."""
    with np.errstate(divide="ignore"):
        r = np.asarray(rate, dtype=np.float64)
        return (10.0 * np.log10(zr_a * np.power(r, zr_b))).astype(np.float32)


def to_rain_mmh(arr: np.ndarray, variable: str, zr_a: float | None, zr_b: float | None) -> np.ndarray:
    """Convert an array of `variable` to mm/h; raise UserError if there is no Z–R relation."""
    if variable == "rain_mmh":
        return np.asarray(arr, dtype=np.float32)
    if variable == "refl_dbz":
        if zr_a is None or zr_b is None:
            raise UserError("this reflectivity archive has no Z-R relation (zr_a/zr_b are null); "
                            "cannot convert dBZ to mm/h")
        return dbz_to_rain_mmh(arr, zr_a, zr_b)
    raise UserError(f"variable {variable!r} ({units_of(variable)}) has no conversion to mm/h")


def wet_thresholds(variable: str) -> np.ndarray:
    """Threshold coordinate values stored in the archive (mm/h, or intensity for `intensity`)."""
    units_of(variable)
    return np.asarray(WET_THRESHOLDS[variable], dtype=np.float64)


def thresholds_in_unit(variable: str, zr_a: float | None, zr_b: float | None) -> np.ndarray:
    """The wet thresholds expressed in the variable's own unit (for comparing pixel values)."""
    thr = wet_thresholds(variable)
    if variable == "refl_dbz":
        if zr_a is None or zr_b is None:
            raise UserError("a refl_dbz archive needs zr_a and zr_b to compute wet fractions")
        return rain_mmh_to_dbz(thr, zr_a, zr_b).astype(np.float64)
    return thr


def frame_stats(frames: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame statistics of a (T, H, W) block in the variable's own unit.

    valid_fraction: share of non-NaN pixels. max_value: max over valid pixels (NaN if none).
    wet_fraction (T, n_thr): share of *valid* pixels >= each threshold (0 if no valid pixel).
    """
    frames = np.asarray(frames, dtype=np.float32)
    n = frames.shape[0]
    flat = frames.reshape(n, -1)
    valid = ~np.isnan(flat)
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore"):
        vmax = np.where(n_valid > 0, np.nanmax(np.where(valid, flat, -np.inf), axis=1), np.nan)
        wet = np.stack([(flat >= thr).sum(axis=1) for thr in thresholds], axis=1)
    wet_fraction = np.where(n_valid[:, None] > 0, wet / np.maximum(n_valid, 1)[:, None], 0.0)
    return {
        "valid_fraction": (n_valid / flat.shape[1]).astype(np.float32),
        "max_value": vmax.astype(np.float32),
        "wet_fraction": wet_fraction.astype(np.float32),
    }
