"""Masked losses: NaN targets never reach value or gradient; registry; HKO-7 weights."""

from __future__ import annotations

import pytest
import torch

from convlstm_dist.models import LOSSES, get_loss
from convlstm_dist.models.losses import hko7_weights


def data():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 1, 4, 4, generator=g)
    target = torch.rand(2, 3, 1, 4, 4, generator=g) * 40  # mm/h for the balanced losses
    nan = torch.rand(target.shape, generator=g) < 0.3
    return pred, target, nan


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_nan_targets_are_masked(name):
    pred, target, nan = data()
    if name.startswith("bce"):
        target = target / 40
    fn = get_loss(name)
    p = pred.clone().requires_grad_()
    loss = fn(p, torch.where(nan, torch.nan, target))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    assert (p.grad[nan] == 0).all() and (p.grad[~nan] != 0).any()
    # equals the same loss on the valid pixels only (as a flat list)
    valid = ~nan
    flat = fn(pred[valid].view(1, -1), target[valid].view(1, -1))
    if name == "bce_sum":  # per-sequence sum divides by B
        flat = flat / pred.shape[0]
    torch.testing.assert_close(loss.detach(), flat)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_explicit_mask_equals_nan(name):
    pred, target, nan = data()
    if name.startswith("bce"):
        target = target / 40
    fn = get_loss(name)
    torch.testing.assert_close(fn(pred, target, ~nan), fn(pred, torch.where(nan, torch.nan, target)))


def test_all_masked_is_zero():
    pred, target, _ = data()
    loss = get_loss("mse")(pred, torch.full_like(target, torch.nan))
    assert loss.item() == 0.0


def test_bce_sum_is_per_sequence():
    pred = torch.zeros(4, 10, 1, 64, 64)
    target = torch.ones_like(pred)
    per_pixel = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(get_loss("bce")(pred, target), per_pixel)
    torch.testing.assert_close(get_loss("bce_sum")(pred, target), per_pixel * 10 * 64 * 64)


@pytest.mark.parametrize("rain,w", [(0.0, 1), (1.99, 1), (2.0, 2), (4.9, 2), (5.0, 5), (10.0, 10), (29.9, 10), (30.0, 30), (100.0, 30)])
def test_hko7_weights(rain, w):
    assert hko7_weights(torch.tensor([rain])).item() == w


def test_balanced_uses_rain_rate_source():
    pred = torch.zeros(1, 1, 1, 1, 2)
    target = torch.tensor([[[[[1.0, 1.0]]]]])
    rain = torch.tensor([[[[[0.0, 40.0]]]]])
    assert get_loss("bmse")(pred, target).item() == 1.0
    assert get_loss("bmse")(pred, target, rain_mmh=rain).item() == pytest.approx((1 + 30) / 2)
    assert get_loss("bmae")(pred, target, to_mmh=lambda t: t * 40).item() == pytest.approx(30.0)


def test_unknown_loss_lists_valid():
    with pytest.raises(ValueError, match="valid: bce, bce_sum, bmae, bmse, mae, mse"):
        get_loss("huber")
