"""The shared words of the package: skill thresholds and the names of every reported metric.

The bottom of the house (it imports only the standard library): ``config`` validates metric names
against it, ``train`` and ``tune`` report under these names, ``verify`` scores at these thresholds,
``experiments`` tabulates them.

Thresholds (mm/h):

* :data:`SKILL_THRESHOLDS_MMH` — validation during training (the ``val_*_<thr>mmh`` metrics) and
  ``evaluate`` of a rain model;
* :data:`REPORT_THRESHOLDS_MMH` — the held-out-event report's tables and the per-source validation
  tags of a multi-radar run;
* :data:`FSS_THRESHOLDS_MMH` over :data:`FSS_SCALES_KM` — the Fractions Skill Score.

Metric names: one rule, :func:`metric_key` = ``[<scope>_][<method>_]<score>[_<thr>mmh]``, names a
score wherever it is logged (MLflow runs of ``train``, ``tune`` and ``evaluate``; Ray/Tune reports;
``run.checkpoint_metric`` / ``search.metric``). ``scope`` names the windows scored (``val`` during
training and in every Tune trial, ``test`` for the test split, ``evaluate`` uses its split or
``eval``); ``method`` is empty for the model itself and the baseline's name otherwise
(``persistence``). Each epoch of training reports :data:`TRAIN_METRICS` plus :func:`val_metrics`;
a checkpoint or sweep metric must be one of them (:func:`metric_problem`), or Ray fails only after
the last epoch ("Invalid metric name").
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Iterable

SKILL_THRESHOLDS_MMH = (0.5, 2.0, 5.0, 10.0, 30.0)
REPORT_THRESHOLDS_MMH = SKILL_THRESHOLDS_MMH[:4]
FSS_THRESHOLDS_MMH = SKILL_THRESHOLDS_MMH[:3]
FSS_SCALES_KM = (1, 4, 16, 64)

VAL_SCOPE = "val"

# where the motion of the extrapolation baselines and of a Lagrangian model comes from when a model is
# scored (``evaluate --motion``, ``skill-report --motion``; nowcast/evaluation.py, "Motion"): one
# field per window on the whole frame shared by every method, or each method's own from the scored crop
MOTION_MODES = ("shared", "own")

# the parameter of a served model (MLflow pyfunc ``predict(..., params={LEADS_PARAM: N})``): forecast steps
LEADS_PARAM = "leads"

# reported by every epoch of train/fit.py (with the checkpoint)
TRAIN_METRICS = ("epoch", "epoch_float", "step", "train_loss", "samples_per_s", "data_wait_share", "epoch_time_s",
                 "elapsed_s", "lr", "early_stop")

# Scores pooled over lead times that ``verify.scores.skill_metrics`` reports: (per-lead scores,
# per-threshold scores) for the model itself (method None) and for a reference method (a baseline).
SUMMARY_SCORES = {
    "model": (("mse", "mae", "bmse"), ("pod", "far", "csi")),
    "reference": (("mse", "mae"), ("csi",)),
}


def metric_key(score: str, threshold: float | None = None, method: str | None = None,
               scope: str | None = None) -> str:
    """The name of a score in every metric log: ``[<scope>_][<method>_]<score>[_<thr>mmh]``.

    ``metric_key("csi", 2.0, scope="val") == "val_csi_2mmh"``;
    ``metric_key("mse", method="persistence", scope="val") == "val_persistence_mse"``;
    ``metric_key("csi", 0.5, method="persistence") == "persistence_csi_0.5mmh"`` (evaluate's per-lead series).
    """
    name = "_".join(p for p in (scope, method, score) if p)
    return name if threshold is None else f"{name}_{float(threshold):g}mmh"


def summary_layout(thresholds: Iterable[float], method: str | None) -> list[tuple[str, float | None]]:
    """(score, threshold or None) of the lead-pooled scores of the model (``method`` None) or a baseline."""
    per_lead, per_thr = SUMMARY_SCORES["model" if method is None else "reference"]
    return [(s, None) for s in per_lead] + [(s, float(t)) for t in thresholds for s in per_thr]


def skill_metric_names(scope: str, method: str | None = None,
                       thresholds: Iterable[float] = SKILL_THRESHOLDS_MMH) -> tuple[str, ...]:
    """The names ``verify.scores.skill_metrics`` gives (config validation checks metric names against these)."""
    return tuple(metric_key(s, t, method, scope) for s, t in summary_layout(thresholds, method))


def val_metrics(cross_entropy: bool = True) -> tuple[str, ...]:
    """Validation metrics of ``train.validation.ValAccumulator.metrics()``; ``val_cross_entropy``
    only where the quantity reports it (``cross_entropy``: Moving MNIST intensity)."""
    names = [metric_key("loss", scope=VAL_SCOPE)]
    names += skill_metric_names(VAL_SCOPE, None, SKILL_THRESHOLDS_MMH)
    names += skill_metric_names(VAL_SCOPE, "persistence", SKILL_THRESHOLDS_MMH)
    if cross_entropy:
        names.append(metric_key("cross_entropy", scope=VAL_SCOPE))
    return tuple(names)


def reported_metrics(cross_entropy: bool = True) -> tuple[str, ...]:
    return TRAIN_METRICS + val_metrics(cross_entropy)


# scores where a larger value is better (every other reported metric: lower is better)
HIGHER_IS_BETTER = ("csi", "pod", "hss", "fss", "samples_per_s")


def metric_goal(name: str) -> str:
    """``"max"`` if a larger value of metric ``name`` is better (CSI, POD, HSS, FSS, throughput),
    else ``"min"`` (losses, errors, FAR): how checkpoints, early stopping and sweeps rank it."""
    return "max" if any(re.search(rf"(^|_){g}(_|$)", name) for g in HIGHER_IS_BETTER) else "min"


def selection_score(metrics: dict, name: str) -> float:
    """``run.checkpoint_metric`` of an epoch as "lower is better" (a CSI counts negated); an epoch whose
    metric is missing or not finite (no rain above the threshold in the validation windows) never
    improves on the best."""
    value = metrics.get(name)
    if value is None or not math.isfinite(float(value)):
        return math.inf
    return -float(value) if metric_goal(name) == "max" else float(value)


def metric_problem(name: str, cross_entropy: bool = True, quantity: str | None = None) -> str | None:
    """None if training reports ``name``; else a message listing the valid names (and the nearest
    one). ``cross_entropy``: the archive's quantity reports ``val_cross_entropy``; ``quantity``: its
    name, for the message."""
    valid = reported_metrics(cross_entropy)
    if name in valid:
        return None
    if not cross_entropy and name in reported_metrics(True):
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
