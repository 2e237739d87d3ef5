"""Reference nowcasts the ConvLSTM must beat: persistence, optical-flow extrapolation and pysteps'
deterministic S-PROG and ANVIL, the three last ones on one motion field (:func:`motion_field`).

Every baseline has one signature::

    baseline(frames_mmh: np.ndarray (T_in, H, W), n_out: int) -> np.ndarray (n_out, H, W)

in rain rate mm/h, float64; the extrapolation baselines (``MOTION_BASELINES``) also take
``velocity=`` (2, H, W), a precomputed motion field in pysteps' convention, instead of estimating
it from ``frames_mmh`` (at evaluation: the scored crop's slice of the field estimated once per window
on the whole frame, :func:`motion_field`, shared with a Lagrangian model). Look one up with
:func:`get_baseline` (an unknown name raises :class:`~convlstm_dist.errors.UserError` listing the
valid ones); run one over a batch ``(B, T_in, H, W)`` with :func:`run_baseline`.

No data (NaN):

* ``persistence`` repeats the last frame as it is, so its NaN stay NaN.
* ``optical_flow``, ``sprog`` and ``anvil`` treat NaN as 0 mm/h when estimating motion and when
  forecasting, then set an output pixel to NaN where its source point (traced back along the
  motion) fell on a NaN pixel of the last frame or outside the domain.
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

# What evaluate and skill-report run unless told otherwise, and the input frames each one needs.
DEFAULT_BASELINES = ("persistence", "optical_flow", "sprog", "anvil")
MOTION_BASELINES = ("optical_flow", "sprog", "anvil")  # the ones that take velocity=
MIN_INPUT_FRAMES = {"persistence": 1, "optical_flow": 2, "sprog": 3, "anvil": 4}


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


def usable_baselines(names, in_len: int) -> tuple[list[str], list[str]]:
    """``(names that can run on in_len input frames, one message per name left out)``."""
    kept, notes = [], []
    for name in names:
        need = MIN_INPUT_FRAMES.get(name, 1)
        if in_len >= need:
            kept.append(name)
        else:
            notes.append(f"{name} needs {need} input frames, the model has {in_len}: left out")
    return kept, notes


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
def optical_flow(frames_mmh: np.ndarray, n_out: int, velocity: np.ndarray | None = None) -> np.ndarray:
    """Lucas–Kanade motion + semi-Lagrangian backward extrapolation of the last frame (pysteps).

    Motion: :func:`motion_field` (``pysteps.motion.get_method("LK")``, OpenCV's pyramidal
    Lucas–Kanade on Shi–Tomasi corners, interpolated to a dense field) on the last
    ``N_MOTION_FRAMES`` frames with NaN set to 0 mm/h. Fields with no trackable features give zero
    motion, so the forecast becomes persistence. Extrapolation: ``pysteps.extrapolation.get_method(
    "semilagrangian")`` (bilinear, one motion step per output frame). The NaN mask of the
    last frame is advected with the same motion; a pixel whose source point is NaN (mask
    < 0.5 after interpolation) or outside the domain is NaN in the output.
    """
    frames = _check(frames_mmh, n_out)
    if frames.shape[0] < 2:
        raise ValueError("optical_flow needs at least 2 input frames to estimate motion")
    _, extrapolate = _pysteps_methods()
    velocity = _velocity(frames, velocity)
    filled = np.where(np.isfinite(frames), frames, 0.0)
    rain = extrapolate(filled[-1], velocity, int(n_out), outval=np.nan)
    return _mask_sources(np.clip(rain, 0.0, None), frames, velocity, n_out)  # clip guards round-off


# S-PROG works on rain rates in dB (pysteps' usual set-up): rates below RAIN_MIN_MMH are "no rain"
RAIN_MIN_MMH = 0.1
_DB_ZERO = -15.0


@register("sprog")
def sprog(frames_mmh: np.ndarray, n_out: int, velocity: np.ndarray | None = None) -> np.ndarray:
    """S-PROG (Seed 2003), pysteps' deterministic cascade nowcast (``pysteps.nowcasts.sprog``).

    The same motion as ``optical_flow`` (:func:`motion_field` on the same frames); the rain rate is
    transformed to dB (``10 log10 R``, rates below 0.1 mm/h set to -15 dB), the last three frames
    feed an AR(2) model per cascade level (6 levels, FFT), the forecast is transformed back to mm/h.
    Where the AR fit is undefined (rain in fewer than ``MIN_AR_PIXELS`` pixels of all three frames,
    where pysteps itself fails) the forecast is the extrapolation (:func:`_cascade_or_extrapolation`).
    No data as in ``optical_flow``: NaN where the source point of a pixel has no data."""
    frames = _check(frames_mmh, n_out)
    if frames.shape[0] < 3:
        raise ValueError("sprog needs at least 3 input frames (AR order 2)")
    nowcast = _pysteps_nowcast("sprog")
    velocity = _velocity(frames, velocity)
    db = _to_db(frames[-3:])
    if np.all(db <= _DB_ZERO):  # no rain anywhere: pysteps' cascade is undefined
        out = np.zeros((int(n_out), *frames.shape[1:]))
    else:
        out = _cascade_or_extrapolation(
            lambda: _from_db(np.asarray(nowcast(db, velocity, int(n_out), precip_thr=10.0 * np.log10(RAIN_MIN_MMH),
                                                n_cascade_levels=6, ar_order=2, probmatching_method="cdf",
                                                domain="spatial"), dtype=np.float64)),
            frames, velocity, n_out, rainy_in_all=np.all(db > _DB_ZERO, axis=0).sum())
    return _mask_sources(out, frames, velocity, n_out)


# fewer pixels than this with rain in every frame an AR model is fitted on: the fit is undefined
MIN_AR_PIXELS = 16


def _cascade_or_extrapolation(run, frames: np.ndarray, velocity: np.ndarray, n_out: int, rainy_in_all: int):
    """pysteps' cascade nowcast ``run()``, or, where its AR fit is undefined, the extrapolation of the
    last frame (``optical_flow``'s forecast, what the cascade nowcast is when every level keeps its
    correlation). Undefined: rain in fewer than ``MIN_AR_PIXELS`` pixels of every fitted frame (a
    few scattered cells in a crop), where pysteps divides by a zero variance (non-finite
    autocorrelation, singular Yule-Walker system) or fails to index; or a non-finite forecast."""
    if rainy_in_all >= MIN_AR_PIXELS:
        try:
            with _quiet():
                out = run()
            if np.isfinite(out).all():
                return out
        except (ValueError, IndexError, np.linalg.LinAlgError):
            pass
    _, extrapolate = _pysteps_methods()
    filled = np.where(np.isfinite(frames), frames, 0.0)
    return np.clip(extrapolate(filled[-1], velocity, int(n_out), outval=0.0), 0.0, None)


@register("anvil")
def anvil(frames_mmh: np.ndarray, n_out: int, velocity: np.ndarray | None = None) -> np.ndarray:
    """ANVIL (Pulkkinen et al. 2020), pysteps' autoregressive nowcast with growth and decay
    (``pysteps.nowcasts.anvil``) applied to the rain rate itself (no VIL), AR(2) on the last four
    frames, with the same motion as ``optical_flow``; the extrapolation where the AR fit is undefined,
    as in :func:`sprog`. No data as in ``optical_flow``."""
    frames = _check(frames_mmh, n_out)
    if frames.shape[0] < 4:
        raise ValueError("anvil needs at least 4 input frames (AR order 2)")
    nowcast = _pysteps_nowcast("anvil")
    velocity = _velocity(frames, velocity)
    filled = np.where(np.isfinite(frames[-4:]), frames[-4:], 0.0)
    if not np.any(filled > 0):
        out = np.zeros((int(n_out), *frames.shape[1:]))
    else:
        out = _cascade_or_extrapolation(
            lambda: np.clip(np.nan_to_num(np.asarray(
                nowcast(filled, velocity, int(n_out), ar_order=2, n_cascade_levels=6,
                        ar_window_radius=min(50, max(4, min(frames.shape[1:]) // 4))), dtype=np.float64), nan=0.0),
                0.0, None),
            frames, velocity, n_out, rainy_in_all=np.all(filled > 0, axis=0).sum())
    return _mask_sources(out, frames, velocity, n_out)


_MOTION_CACHE: dict = {}


def _velocity(frames: np.ndarray, velocity: np.ndarray | None) -> np.ndarray:
    """``velocity`` when given (checked: (2, H, W) on the frames' grid, NaN as 0), else :func:`motion_field`."""
    if velocity is None:
        return motion_field(frames)
    velocity = np.asarray(velocity, dtype=np.float64)
    if velocity.shape != (2, *frames.shape[1:]):
        raise ValueError(f"velocity must have shape (2, H, W) = {(2, *frames.shape[1:])}, got {velocity.shape}")
    return np.where(np.isfinite(velocity), velocity, 0.0)


def motion_field(frames: np.ndarray) -> np.ndarray:
    """The one motion field of the extrapolation baselines: pysteps' Lucas–Kanade on the last
    ``N_MOTION_FRAMES`` frames with NaN as 0 mm/h, shape ``(2, H, W)`` in pixels per time step,
    finite. The last field is kept, so the baselines of one window estimate it once."""
    recent = np.where(np.isfinite(frames[-N_MOTION_FRAMES:]), frames[-N_MOTION_FRAMES:], 0.0)
    key = (recent.shape, hash(recent.tobytes()))
    if key in _MOTION_CACHE:
        return _MOTION_CACHE[key]
    motion, _ = _pysteps_methods()
    with warnings.catch_warnings():  # pysteps' outlier test warns (np.cov) on few tracked features
        warnings.simplefilter("ignore", RuntimeWarning)
        velocity = np.asarray(motion(recent, verbose=False), dtype=np.float64)
    velocity = np.where(np.isfinite(velocity), velocity, 0.0)
    _MOTION_CACHE.clear()
    _MOTION_CACHE[key] = velocity
    return velocity


def _mask_sources(out: np.ndarray, frames: np.ndarray, velocity: np.ndarray, n_out: int) -> np.ndarray:
    """NaN where a pixel's source point (traced back along ``velocity``) has no data in the last
    frame or lies outside the grid."""
    _, extrapolate = _pysteps_methods()
    finite = np.isfinite(frames[-1]).astype(np.float64)
    warped_finite = extrapolate(finite, velocity, int(n_out), outval=0.0)
    return np.where(warped_finite >= 0.5, out, np.nan)


def _to_db(rate: np.ndarray) -> np.ndarray:
    r = np.where(np.isfinite(rate), rate, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(r >= RAIN_MIN_MMH, 10.0 * np.log10(np.maximum(r, RAIN_MIN_MMH)), _DB_ZERO)


def _from_db(db: np.ndarray) -> np.ndarray:
    db = np.nan_to_num(db, nan=_DB_ZERO)
    rate = 10.0 ** (db / 10.0)
    return np.where(rate >= RAIN_MIN_MMH, rate, 0.0)


@contextlib.contextmanager
def _quiet():
    """pysteps' nowcasts print their settings; a score run over many windows must not."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


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


def _pysteps_nowcast(name: str):
    with contextlib.redirect_stdout(io.StringIO()):
        from pysteps import nowcasts
    return nowcasts.get_method(name)


def run_baseline(name: str, batch_mmh, n_out: int, velocity: np.ndarray | None = None) -> np.ndarray:
    """Run baseline ``name`` on every sample of ``(B, T_in, H, W)`` → ``(B, n_out, H, W)``; ``velocity``
    (B, 2, H, W), pysteps' convention, is each sample's motion for the ``MOTION_BASELINES`` (ignored by
    the others, which use no motion)."""
    fn = get_baseline(name)
    batch = as_bthw(batch_mmh, "batch_mmh")
    if velocity is None or name not in MOTION_BASELINES:
        return np.stack([fn(sample, n_out) for sample in batch], axis=0)
    if len(velocity) != len(batch):
        raise ValueError(f"velocity has {len(velocity)} samples, the batch {len(batch)}")
    return np.stack([fn(sample, n_out, velocity=v) for sample, v in zip(batch, velocity)], axis=0)
