"""The metrics training reports each epoch, for an archive's quantity (no torch).

The names are :mod:`convlstm_dist.vocabulary`'s; this module adds what depends on the archive:
``val_cross_entropy`` exists only for quantities that report it (``intensity``, Moving MNIST).
``train/fit.py`` (the loop of both backends) reports, per epoch, :data:`~convlstm_dist.vocabulary.TRAIN_METRICS`
plus ``ValAccumulator.metrics()`` (merged validation skill); Tune trials report the same dict. A unit
test keeps :func:`val_metrics` equal to what ``ValAccumulator`` produces.
"""

from __future__ import annotations

from convlstm_dist import vocabulary
from convlstm_dist.data.quantity import get_quantity
from convlstm_dist.errors import UserError


def _cross_entropy(quantity: str | None) -> bool:
    return quantity is None or get_quantity(quantity).reports_cross_entropy


def val_metrics(quantity: str | None = None) -> tuple[str, ...]:
    """Validation metrics of ``ValAccumulator.metrics()``; ``quantity`` None = for any archive."""
    return vocabulary.val_metrics(_cross_entropy(quantity))


def reported_metrics(quantity: str | None = None) -> tuple[str, ...]:
    return vocabulary.reported_metrics(_cross_entropy(quantity))


def metric_problem(name: str, quantity: str | None = None) -> str | None:
    """None if training reports ``name`` for ``quantity``; else a message listing the valid names."""
    return vocabulary.metric_problem(name, _cross_entropy(quantity), quantity)


def check_metric(name: str, key: str, quantity: str | None = None) -> None:
    """Raise ``UserError`` naming ``key`` when training does not report ``name``."""
    problem = metric_problem(name, quantity)
    if problem:
        raise UserError(f"{key}: {problem}")
