"""The names of the metrics training reports each epoch (no torch: the config validates against them).

``train/fit.py`` (the loop of both backends) reports, per epoch, the training
metrics below plus ``ValAccumulator.metrics()`` (merged validation skill). Tune trials report the
same dict. A checkpoint metric (``run.checkpoint_metric``) or a sweep metric (``search.metric``)
must be one of these names; otherwise Ray fails only after the last epoch ("Invalid metric
name"). A unit test keeps this list equal to what ``ValAccumulator`` produces.

Skill scores are named by the one rule of ``verify.scores.metric_key`` (``evaluate`` uses it too):
``val_<score>[_<thr>mmh]`` for the model, ``val_persistence_<score>[_<thr>mmh]`` for persistence,
pooled over lead times (``verify.scores.skill_metrics``).
"""

from __future__ import annotations

import difflib

from convlstm_dist.data.quantity import SKILL_THRESHOLDS_MMH, get_quantity
from convlstm_dist.errors import UserError
from convlstm_dist.verify.scores import metric_key, skill_metric_names

THRESHOLDS_MMH = SKILL_THRESHOLDS_MMH  # the one set of skill thresholds (data.quantity), as validation uses it
VAL_SCOPE = "val"

# reported by every epoch of train/fit.py (with the checkpoint)
TRAIN_METRICS = ("epoch", "epoch_float", "step", "train_loss", "samples_per_s", "data_wait_share", "epoch_time_s",
                 "elapsed_s", "lr", "early_stop")


def val_metrics(quantity: str | None = None) -> tuple[str, ...]:
    """Validation metrics of ``ValAccumulator.metrics()``; ``quantity`` None = for any archive.

    ``val_cross_entropy`` exists only for ``intensity`` models (Moving MNIST)."""
    names = [metric_key("loss", scope=VAL_SCOPE)]
    names += skill_metric_names(VAL_SCOPE, None, THRESHOLDS_MMH)
    names += skill_metric_names(VAL_SCOPE, "persistence", THRESHOLDS_MMH)
    if quantity is None or get_quantity(quantity).reports_cross_entropy:
        names.append(metric_key("cross_entropy", scope=VAL_SCOPE))
    return tuple(names)


def reported_metrics(quantity: str | None = None) -> tuple[str, ...]:
    return TRAIN_METRICS + val_metrics(quantity)


def metric_problem(name: str, quantity: str | None = None) -> str | None:
    """None if training reports ``name``; else a message listing the valid names (and the nearest one)."""
    valid = reported_metrics(quantity)
    if name in valid:
        return None
    if quantity is not None and name in reported_metrics(None):
        return (f"{name!r} is only reported for Moving MNIST (intensity) archives, not for {quantity} ones; "
                f"valid names: {', '.join(valid)}")
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"{name!r} is not a metric training reports{hint}; valid names: {', '.join(valid)}"


def metric_name(name: str) -> str:
    """``name`` if training reports it (for any archive), else ``ValueError`` (pydantic validators)."""
    problem = metric_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def check_metric(name: str, key: str, quantity: str | None = None) -> None:
    """Raise ``UserError`` naming ``key`` when training does not report ``name``."""
    problem = metric_problem(name, quantity)
    if problem:
        raise UserError(f"{key}: {problem}")
