"""Optimizer, LR schedule and training loss of a recipe (``train.*``), for both backends."""

from __future__ import annotations

import torch

from convlstm_dist.data import get_quantity
from convlstm_dist.models import BALANCED_LOSSES, get_loss


def make_optimizer(t, params, capturable_on: torch.device | None = None):
    """The recipe's optimizer. ``capturable_on`` (a CUDA device): built for CUDA-graph capture, with
    the learning rate as a device tensor so that schedulers still act inside the graph (not SGD)."""
    if t.optimizer == "sgd":
        if capturable_on is not None:
            raise ValueError("sgd cannot be captured in a CUDA graph")
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    graph = {} if capturable_on is None else {"capturable": True}
    lr = t.lr if capturable_on is None else torch.tensor(t.lr, device=capturable_on)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=t.rmsprop_decay, weight_decay=t.weight_decay, **graph)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=t.weight_decay, **graph)


def make_scheduler(t, opt):
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, t.epochs // 3), gamma=0.3)
    return None


def loss_kwargs(name: str, quantity: str, weight_cap: float | None = None) -> dict:
    """The balanced losses weigh by rain rate: mm/h from the model range where the quantity is a rain
    rate; otherwise (intensity) the target's own values. ``weight_cap``: their weights' cap."""
    q = get_quantity(quantity)
    kw = {}
    if name in BALANCED_LOSSES and q.has_rain_rate:
        kw["to_mmh"] = q.from_model
    if weight_cap is not None:
        if name not in BALANCED_LOSSES:
            raise ValueError(f"train.loss_weight_cap applies to the balanced losses ({', '.join(BALANCED_LOSSES)}), "
                             f"not to train.loss={name}: drop it or pick one of those")
        kw["weight_cap"] = float(weight_cap)
    return kw


def training_loss(name: str, quantity: str, lead_decay: float | None = None, weight_cap: float | None = None):
    """``loss(pred, target, mask)`` of the recipe, with its quantity-dependent arguments bound.

    ``lead_decay`` (``train.lead_decay``, in (0, 1]): the loss of each lead ``k`` (0 = the first
    forecast frame) separately, weighted by ``lead_decay**k`` and normalised to weights summing to 1,
    so the first leads count more; None: one loss over every lead and pixel (the paper's).
    ``weight_cap`` (``train.loss_weight_cap``): the balanced losses' weights capped at this value."""
    fn, kw = get_loss(name), loss_kwargs(name, quantity, weight_cap)
    if lead_decay is None:
        return lambda pred, target, mask=None: fn(pred, target, mask, **kw)

    def lead_weighted(pred, target, mask=None):
        n = pred.shape[1]
        w = [lead_decay ** k for k in range(n)]
        total = sum(w)
        return sum(w[k] / total * fn(pred[:, k], target[:, k], None if mask is None else mask[:, k], **kw)
                   for k in range(n))

    return lead_weighted
