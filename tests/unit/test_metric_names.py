"""One name per score: training validation, Tune trials and ``evaluate`` log the same metric
names for the same scores (``verify.scores.metric_key``), computed here on small synthetic
tensors without Ray."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from convlstm_dist.data.quantity import RAIN_NORM
from convlstm_dist.nowcast.evaluation import evaluation_rows, metrics_from_rows
from convlstm_dist.train import fit
from convlstm_dist.train.metrics import reported_metrics, val_metrics
from convlstm_dist.vocabulary import metric_name
from convlstm_dist.train.validation import ValAccumulator
from convlstm_dist.verify.scores import SkillAccumulator
from convlstm_dist.vocabulary import metric_key

B, T_IN, T_OUT, H, W = 3, 4, 3, 8, 8


@pytest.mark.parametrize(
    "args, name",
    [
        (("csi", 2.0, None, "val"), "val_csi_2mmh"),
        (("csi", 0.5, "persistence", "val"), "val_persistence_csi_0.5mmh"),
        (("mse", None, "persistence", "val"), "val_persistence_mse"),
        (("bmse", None, None, "test"), "test_bmse"),
        (("hss", 10.0, "convlstm", None), "convlstm_hss_10mmh"),  # evaluate's per-lead series
        (("mse", None, "persistence", None), "persistence_mse"),
        (("loss", None, None, "val"), "val_loss"),
    ],
)
def test_metric_key_rule(args, name):
    assert metric_key(*args) == name


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, T_IN, 1, H, W, generator=g) * 0.9  # model space of rain_norm: log1p(R) / log1p(128)
    y = torch.rand(B, T_OUT, 1, H, W, generator=g) * 0.9  # up to ~80 mm/h: events at every threshold
    pred = (y + 0.1 * torch.randn(B, T_OUT, 1, H, W, generator=g)).clamp(0, 1)
    mask = torch.ones(B, T_OUT, 1, H, W, dtype=torch.bool)
    return pred, y, x, mask


def train_metrics(batch) -> dict[str, float]:
    """What validation reports per epoch (train and every Tune trial)."""
    pred, y, x, mask = batch
    acc = ValAccumulator(T_OUT, "rain_norm", "mse")
    acc.add(pred, y, x, mask)
    acc.merge(torch.device("cpu"))
    return acc.metrics()


def evaluate_metrics(batch, scope="val") -> dict[str, float]:
    """What ``evaluate`` logs for the same forecasts scored on ``scope`` windows (step 0: pooled over leads)."""
    pred, y, x, _ = batch
    obs = RAIN_NORM.from_model(y[:, :, 0]).numpy()
    fcst = RAIN_NORM.from_model(pred[:, :, 0]).numpy()
    pers = np.repeat(RAIN_NORM.from_model(x[:, -1:, 0]).numpy(), T_OUT, axis=1)
    totals = {"convlstm": SkillAccumulator(n_leads=T_OUT).accumulate(fcst, obs),
              "persistence": SkillAccumulator(n_leads=T_OUT).accumulate(pers, obs)}
    rows = evaluation_rows(totals, "convlstm", 5.0, scope)
    return {k: v for k, v, step in metrics_from_rows(rows) if step == 0}


def tune_metrics(batch) -> dict[str, float]:
    """The dict every epoch reports through ``ray.train.report`` (Tune's trial metrics, MLflow of the trial)."""
    return fit.epoch_metrics(0, 4, 4, 4, [2.0, 4.0, 12.0], 0.1, 1.0, 1.2, 1.5, 1e-3, train_metrics(batch))


def test_train_evaluate_and_tune_name_the_same_scores_alike(batch):
    train = train_metrics(batch)
    evaluate = evaluate_metrics(batch)
    tune = tune_metrics(batch)
    skill = {k: v for k, v in train.items() if k != "val_loss"}  # the loss exists only in training
    assert all(math.isfinite(v) for v in skill.values())  # events at every threshold: no name is left out
    assert set(evaluate) == set(skill)
    assert set(skill) <= set(tune) <= set(reported_metrics("rain_norm"))
    for name in evaluate:
        assert metric_name(name) == name  # a valid run.checkpoint_metric / search.metric
        a, b, c = train[name], evaluate[name], tune[name]
        assert (math.isnan(a) and math.isnan(b) and math.isnan(c)) or (
            a == pytest.approx(b, rel=1e-5, abs=1e-9) and a == c), name
    assert {"val_csi_2mmh", "val_persistence_csi_2mmh", "val_pod_2mmh", "val_far_2mmh", "val_mse",
            "val_bmse", "val_persistence_mse"} <= set(evaluate)


def test_evaluate_names_the_test_split_like_the_training_test_report(batch):
    # train --local reports the test split as test_<name> (val_ -> test_)
    test_names = {k.replace("val_", "test_", 1) for k in val_metrics("rain_norm")} - {"test_loss"}
    assert set(evaluate_metrics(batch, "test")) == test_names


def test_evaluate_keeps_its_per_lead_series(batch):
    pred, y, x, _ = batch
    obs = RAIN_NORM.from_model(y[:, :, 0]).numpy()
    totals = {"convlstm": SkillAccumulator(n_leads=T_OUT).accumulate(obs, obs)}
    got = metrics_from_rows(evaluation_rows(totals, "convlstm", 5.0, "val"))
    per_lead = {(k, s) for k, _, s in got if s}
    assert {("convlstm_mse", 5), ("convlstm_csi_2mmh", 15), ("convlstm_hss_0.5mmh", 10)} <= per_lead
    # rows without a scope (e.g. pooled over events by skill-report) give only the per-lead series
    bare = [{k: v for k, v in r.items() if k not in ("scope", "model")}
            for r in evaluation_rows(totals, "convlstm", 5.0, "val")]
    assert all(s for _, _, s in metrics_from_rows(bare))


def test_metric_goal_ranks_skill_scores_highest_first():
    from convlstm_dist.vocabulary import metric_goal, selection_score

    for name in ("val_csi_0.5mmh", "val_pod_2mmh", "val_persistence_csi_10mmh", "samples_per_s"):
        assert metric_goal(name) == "max", name
    for name in ("val_loss", "val_far_2mmh", "val_mse", "val_bmse", "train_loss", "val_cross_entropy"):
        assert metric_goal(name) == "min", name
    assert selection_score({"val_csi_2mmh": 0.4}, "val_csi_2mmh") == -0.4
    assert selection_score({"val_loss": 0.4}, "val_loss") == 0.4
    # no rain above the threshold in the validation windows: never the best
    assert selection_score({"val_csi_2mmh": float("nan")}, "val_csi_2mmh") == float("inf")
    assert selection_score({}, "val_csi_2mmh") == float("inf")
