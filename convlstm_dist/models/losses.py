"""Masked losses. Every loss is ``loss(pred, target, mask=None, **kw) -> scalar tensor``.

* ``pred`` and ``target`` are (B, T, C, H, W) (any equal shapes work).
* A pixel is valid where ``target`` is finite and ``mask`` (bool, broadcastable) is True.
  Invalid pixels are removed with ``torch.where`` before any arithmetic, so a NaN target never
  reaches the value or the gradient (``nan * 0`` would be NaN).
* Normalisation: "mean" losses average over valid pixels (0 when none is valid);
  ``bce_sum`` sums over valid pixels of every output frame and divides by B — the paper's
  Moving MNIST "cross-entropy per sequence" (sum over the 10 output frames of 64×64 pixels).

Names (``get_loss``): bce, bce_sum (pred are logits, target in [0, 1]), mse, mae, bmse, bmae.
``bmse`` / ``bmae`` are the HKO-7 balanced losses (Shi et al. 2017): each pixel's error is
weighted by the rain rate of the target in mm/h — 1 below 2, 2 in [2, 5), 5 in [5, 10),
10 in [10, 30), 30 at or above 30 mm/h — then averaged over valid pixels. The rain rate is
``rain_mmh=`` if given, else ``to_mmh(target)`` if a transform is given, else ``target`` itself.
``weight_cap=`` (``train.loss_weight_cap``) caps those weights (5: 1, 2, 5, 5, 5), a middle way
between the balanced and the plain losses.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# The one HKO-7 weight table, read by the one weight function :func:`hko7_weights` (torch and numpy).
HKO7_THRESHOLDS_MMH = (2.0, 5.0, 10.0, 30.0)
HKO7_WEIGHTS = (1.0, 2.0, 5.0, 10.0, 30.0)


def valid_mask(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """True where the target is finite (and ``mask`` says valid)."""
    valid = torch.isfinite(target)
    return valid if mask is None else valid & mask.to(torch.bool)


def _masked_mean(err: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, err, torch.zeros_like(err)).sum() / valid.sum().clamp(min=1)


def _clean(target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, target, torch.zeros_like(target))


def bce(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over valid pixels (for training)."""
    valid = valid_mask(target, mask)
    err = F.binary_cross_entropy_with_logits(pred, _clean(target, valid), reduction="none")
    return _masked_mean(err, valid)


def bce_per_sequence(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits summed over the valid pixels of each sequence -> (B,) float32.
    The logits (bf16 / fp16 after an autocast forward) are cast to float32 before the loss."""
    valid = valid_mask(target, mask)
    err = F.binary_cross_entropy_with_logits(pred.float(), _clean(target, valid).float(), reduction="none")
    return torch.where(valid, err, torch.zeros_like(err)).flatten(1).sum(dim=1)


def bce_sum(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`bce_per_sequence` summed and divided by the batch size B: the paper's per-sequence
    cross-entropy (Table 1 reports this for 10 frames of 64×64)."""
    return bce_per_sequence(pred, target, mask).sum() / max(pred.shape[0], 1)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    valid = valid_mask(target, mask)
    return _masked_mean((pred - _clean(target, valid)) ** 2, valid)


def mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    valid = valid_mask(target, mask)
    return _masked_mean((pred - _clean(target, valid)).abs(), valid)


def hko7_weights(rain_mmh, cap: float | None = None):
    """The one HKO-7 weight function: 1, 2, 5, 10, 30 for rain below 2, [2,5), [5,10), [10,30), >= 30 mm/h;
    ``cap``: no weight above it (None: the table as is).

    ``rain_mmh`` is a torch tensor (weights of its dtype, on its device: the balanced losses and
    validation during training) or a numpy array (float64 weights: ``evaluate``'s scores). NaN rain gets weight 1 (those pixels are masked anyway)."""
    weights = HKO7_WEIGHTS if cap is None else tuple(min(wt, float(cap)) for wt in HKO7_WEIGHTS)
    if isinstance(rain_mmh, torch.Tensor):
        w = torch.full_like(rain_mmh, weights[0])
        for thr, wt in zip(HKO7_THRESHOLDS_MMH, weights[1:]):
            w = torch.where(rain_mmh >= thr, torch.full_like(w, wt), w)
        return w
    rain = np.asarray(rain_mmh)
    w = np.full(rain.shape, weights[0])
    with np.errstate(invalid="ignore"):
        for thr, wt in zip(HKO7_THRESHOLDS_MMH, weights[1:]):
            w[rain >= thr] = wt
    return w


def _balanced(err_fn: Callable, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
              rain_mmh: torch.Tensor | None, to_mmh: Callable | None, weight_cap: float | None) -> torch.Tensor:
    valid = valid_mask(target, mask)
    clean = _clean(target, valid)
    if rain_mmh is None:
        rain_mmh = to_mmh(clean) if to_mmh is not None else clean
    with torch.no_grad():
        w = hko7_weights(torch.where(valid, rain_mmh, torch.zeros_like(rain_mmh)).to(pred.dtype), weight_cap)
    return _masked_mean(w * err_fn(pred - clean), valid)


def bmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
         rain_mmh: torch.Tensor | None = None, to_mmh: Callable | None = None,
         weight_cap: float | None = None) -> torch.Tensor:
    """HKO-7 balanced MSE (weights from the target's rain rate in mm/h, capped at ``weight_cap``; module doc)."""
    return _balanced(lambda d: d ** 2, pred, target, mask, rain_mmh, to_mmh, weight_cap)


def bmae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, *,
         rain_mmh: torch.Tensor | None = None, to_mmh: Callable | None = None,
         weight_cap: float | None = None) -> torch.Tensor:
    """HKO-7 balanced MAE (weights from the target's rain rate in mm/h, capped at ``weight_cap``; module doc)."""
    return _balanced(torch.abs, pred, target, mask, rain_mmh, to_mmh, weight_cap)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "bce": bce, "bce_sum": bce_sum, "mse": mse, "mae": mae, "bmse": bmse, "bmae": bmae,
}


# bce_sum is the paper's per-sequence cross-entropy, a score (validation, Table 1), not a training loss
TRAINING_LOSSES = ("mse", "mae", "bmse", "bmae", "bce")
BALANCED_LOSSES = ("bmse", "bmae")  # weighted by rain rate; train.loss_weight_cap caps their weights


def available_losses(training: bool = False) -> list[str]:
    """The losses :func:`get_loss` knows; ``training``: those a recipe may train with (``train.loss``)."""
    return sorted(TRAINING_LOSSES if training else LOSSES)


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))}") from None
