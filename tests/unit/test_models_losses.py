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


def test_lead_weighted_loss_counts_early_leads_more():
    """``train.lead_decay``: lead k weighs decay**k (weights sum to 1); decay 1 with every pixel valid
    is the plain loss; a missing mask and an all-valid one agree."""
    import torch

    from convlstm_dist.train.optim import training_loss

    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 1, 4, 4), torch.rand(2, 3, 1, 4, 4)
    plain = training_loss("mse", "rain_norm")(pred, target)
    torch.testing.assert_close(training_loss("mse", "rain_norm", 1.0)(pred, target), plain)
    # an error at the first lead only: its whole error times 1 / (1 + 0.5 + 0.25)
    y = torch.zeros(2, 3, 1, 4, 4)
    p = y.clone()
    p[:, 0] = 1.0
    weighted = training_loss("mse", "rain_norm", 0.5)
    torch.testing.assert_close(weighted(p, y), torch.tensor(1 / 1.75))
    # the same error at the last lead counts 0.25 as much
    q = y.clone()
    q[:, 2] = 1.0
    torch.testing.assert_close(weighted(q, y), torch.tensor(0.25 / 1.75))
    torch.testing.assert_close(weighted(q, y, torch.ones_like(y, dtype=torch.bool)), weighted(q, y))
    # the balanced loss takes its rain-rate weights per lead too
    assert torch.isfinite(training_loss("bmse", "rain_norm", 0.8)(pred, target, torch.ones_like(y, dtype=torch.bool)))


def test_lead_decay_must_be_in_zero_one():
    import pytest

    from convlstm_dist.config import load_config

    assert load_config(None, ["train.lead_decay=0.8"]).train.lead_decay == 0.8
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(Exception, match="lead_decay"):
            load_config(None, [f"train.lead_decay={bad}"])


@pytest.mark.parametrize("rain,w", [(1.0, 1), (3.0, 2), (7.0, 5), (20.0, 5), (50.0, 5)])
def test_capped_hko7_weights(rain, w):
    """``train.loss_weight_cap=5``: 1, 2, 5, 5, 5 (torch and numpy alike)."""
    import numpy as np

    assert hko7_weights(torch.tensor([rain]), cap=5).item() == w
    assert hko7_weights(np.array([rain]), cap=5)[0] == w


def test_loss_weight_cap_reaches_the_training_loss():
    """The cap binds into the balanced training loss; the heavy pixel (40 mm/h) weighs 5, not 30."""
    from convlstm_dist.train.optim import training_loss

    pred = torch.zeros(1, 1, 1, 1, 2)
    target = torch.tensor([[[[[0.0, 40.0]]]]])  # intensity: the target is its own rain rate
    assert training_loss("bmae", "intensity")(pred, target).item() == pytest.approx(30 * 40 / 2)
    assert training_loss("bmae", "intensity", None, 5.0)(pred, target).item() == pytest.approx(5 * 40 / 2)
    assert training_loss("bmae", "intensity", 0.8, 5.0)(pred, target).item() == pytest.approx(5 * 40 / 2)


def test_loss_weight_cap_is_checked_with_the_recipe():
    from convlstm_dist.config import load_config

    cfg = load_config(None, ["train.loss=bmse", "train.loss_weight_cap=5"])
    assert cfg.train.loss_weight_cap == 5
    with pytest.raises(Exception, match="loss_weight_cap caps the weights of the balanced losses"):
        load_config(None, ["train.loss=mse", "train.loss_weight_cap=5"])
    with pytest.raises(Exception, match="loss_weight_cap"):
        load_config(None, ["train.loss=bmse", "train.loss_weight_cap=0.5"])
