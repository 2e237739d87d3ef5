"""Reference nowcasts the ConvLSTM must beat: persistence and optical-flow extrapolation.

Every baseline has one signature::

    baseline(frames_mmh: np.ndarray (T_in, H, W), n_out: int) -> np.ndarray (n_out, H, W)

in rain rate mm/h, float64. Look one up with :func:`get_baseline` (an unknown name raises
:class:`~convlstm_dist.errors.UserError` listing the valid ones); run one over a batch
``(B, T_in, H, W)`` with :func:`run_baseline`.

No data (NaN):

* ``persistence`` repeats the last frame as it is, so its NaN stay NaN.
* ``optical_flow`` treats NaN as 0 mm/h when estimating motion and when advecting rain, then
  sets an output pixel to NaN where its source point (traced back along the motion) fell
  on a NaN pixel of the last frame or outside the domain.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable

import numpy as np

from convlstm_dist.errors import UserError
from convlstm_dist.verify._arrays import as_bthw, to_numpy

Baseline = Callable[[np.ndarray, int], np.ndarray]
_REGISTRY: dict[str, Baseline] = {}

# Frames used for the motion estimate: the last few, as in pysteps' examples (motion changes).
N_MOTION_FRAMES = 3


def register(name: str) -> Callable[[Baseline], Baseline]:
    def add(fn: Baseline) -> Baseline:
        _REGISTRY[name] = fn
        return fn
    return add


def available_baselines() -> list[str]:
    return sorted(_REGISTRY)


def get_baseline(name: str) -> Baseline:
    """The baseline called ``name``; an unknown name raises a UserError listing valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown baseline {name!r}; valid baselines: {', '.join(available_baselines())}") from None


def _check(frames_mmh, n_out: int) -> np.ndarray:
    frames = to_numpy(frames_mmh)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"frames_mmh must have shape (T_in, H, W), got {frames.shape}")
    if int(n_out) < 1:
        raise ValueError(f"n_out must be >= 1, got {n_out}")
    return frames


@register("persistence")
def persistence(frames_mmh: np.ndarray, n_out: int) -> np.ndarray:
    """Repeat the last observed frame ``n_out`` times (NaN stays NaN)."""
    frames = _check(frames_mmh, n_out)
    return np.repeat(frames[-1:], int(n_out), axis=0).copy()


@register("optical_flow")
def optical_flow(frames_mmh: np.ndarray, n_out: int) -> np.ndarray:
    """Lucas–Kanade motion + semi-Lagrangian backward extrapolation of the last frame (pysteps).

    Motion: ``pysteps.motion.get_method("LK")`` (OpenCV's pyramidal Lucas–Kanade on
    Shi–Tomasi corners, interpolated to a dense field) on the last ``N_MOTION_FRAMES``
    frames with NaN set to 0 mm/h. Fields with no trackable features give zero motion, so
    the forecast becomes persistence. Extrapolation: ``pysteps.extrapolation.get_method(
    "semilagrangian")`` (bilinear, one motion step per output frame). The NaN mask of the
    last frame is advected with the same motion; a pixel whose source point is NaN (mask
    < 0.5 after interpolation) or outside the domain is NaN in the output.
    """
    frames = _check(frames_mmh, n_out)
    if frames.shape[0] < 2:
        raise ValueError("optical_flow needs at least 2 input frames to estimate motion")
    motion, extrapolate = _pysteps_methods()
    filled = np.where(np.isfinite(frames), frames, 0.0)
    with warnings.catch_warnings():  # pysteps' outlier test warns (np.cov) on few tracked features
        warnings.simplefilter("ignore", RuntimeWarning)
        velocity = np.asarray(motion(filled[-N_MOTION_FRAMES:], verbose=False), dtype=np.float64)
    velocity = np.where(np.isfinite(velocity), velocity, 0.0)
    rain = extrapolate(filled[-1], velocity, int(n_out), outval=np.nan)
    finite = np.isfinite(frames[-1]).astype(np.float64)
    warped_finite = extrapolate(finite, velocity, int(n_out), outval=0.0)
    rain = np.where(warped_finite >= 0.5, rain, np.nan)
    return np.clip(rain, 0.0, None)  # bilinear weights are >= 0; clip guards round-off


def _pysteps_methods():
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints its config path on import
            from pysteps import extrapolation, motion
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError(
            "the optical_flow baseline needs pysteps and OpenCV: "
            "pip install pysteps opencv-python-headless"
        ) from exc
    return motion.get_method("LK"), extrapolation.get_method("semilagrangian")


def run_baseline(name: str, batch_mmh, n_out: int) -> np.ndarray:
    """Run baseline ``name`` on every sample of ``(B, T_in, H, W)`` → ``(B, n_out, H, W)``."""
    fn = get_baseline(name)
    batch = as_bthw(batch_mmh, "batch_mmh")
    return np.stack([fn(sample, n_out) for sample in batch], axis=0)
