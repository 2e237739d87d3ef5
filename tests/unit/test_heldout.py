"""Bookkeeping of the held-out-event protocol: a scored event is never a training event."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from convlstm_dist.config import load_config
from convlstm_dist.errors import UserError
from convlstm_dist.experiments.heldout import (
    Event,
    Fold,
    HeldoutLeakError,
    check_fold,
    check_model_events,
    event_name,
    events_from_config,
    fold_config,
    plan_folds,
)
from convlstm_dist.verify.pooled import markdown_table, pool_rows

RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "radar_multi.yaml"
NAMES = ["knmi-20100826", "fmi-20160928", "mch-20150515", "mch-20170131", "mch-20160711"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(RECIPE)


@pytest.fixture(scope="module")
def events(cfg):
    return events_from_config(cfg)


def test_events_default_to_recipe_archives(events):
    assert [e.name for e in events] == NAMES
    assert event_name("s3://b/x/knmi-20100826.zarr/") == "knmi-20100826"


def test_leave_one_out_never_scores_a_training_event(events):
    folds = plan_folds(events)
    assert len(folds) == len(events)
    assert sorted(e.name for f in folds for e in f.scored) == sorted(NAMES)  # every event scored once
    for f in folds:
        assert len(f.scored) == 1
        assert not {e.name for e in f.scored} & {e.name for e in f.train}
        assert {e.name for e in f.train} | {e.name for e in f.scored} == set(NAMES)


def test_explicit_holdout(events):
    (f,) = plan_folds(events, ["mch-20160711", "archives/fmi-20160928.zarr"])
    assert [e.name for e in f.scored] == ["mch-20160711", "fmi-20160928"]
    assert [e.name for e in f.train] == ["knmi-20100826", "mch-20150515", "mch-20170131"]
    with pytest.raises(UserError, match="not one of the events"):
        plan_folds(events, ["nope"])
    with pytest.raises(UserError, match="no training events"):
        plan_folds(events, NAMES)


def test_leak_is_an_error(events, tmp_path):
    leaky = Fold(1, events[:3], [events[2]])
    with pytest.raises(HeldoutLeakError, match="also trains on"):
        check_fold(leaky)
    # the same archive under another spelling of its path is still a leak
    other = Event("renamed", str(tmp_path / "archives" / "knmi-20100826.zarr"))
    with pytest.raises(HeldoutLeakError):
        check_fold(Fold(1, [Event("knmi", "archives/knmi-20100826.zarr")], [other]), tmp_path)


@pytest.mark.parametrize("holdout", [None, ["knmi-20100826"], ["mch-20160711", "mch-20150515"]])
def test_fold_recipes_contain_exactly_the_training_events(cfg, events, holdout):
    folds = plan_folds(events, holdout)
    run_names = set()
    for f in folds:
        fc = fold_config(cfg, f, budget_s=10)
        assert [a.url for a in fc.data.archives] == [e.url for e in f.train]
        assert not {a.url for a in fc.data.archives} & {e.url for e in f.scored}
        assert fc.train.time_budget_s == 10
        run_names.add(fc.run.name)
        # base entries keep their per-archive split (e.g. whole: val for the summer storm)
        for a in fc.data.archives:
            base = next(b for b in cfg.data.archives if b.url == a.url)
            assert a.split == base.split and a.weight == base.weight
        for ev in f.scored:  # the model-side check passes for the fold's own model ...
            check_model_events(fc, ev, "wd")
        with pytest.raises(HeldoutLeakError):  # ... and refuses an event the model trained on
            check_model_events(fc, f.train[0], "wd")
    assert len(run_names) == len(folds)  # folds never share (resume) a run


def test_a_changed_recipe_never_resumes_another_recipes_fold(cfg, events):
    fold = plan_folds(events, ["mch-20160711"])[0]
    name = fold_config(cfg, fold, budget_s=10).run.name
    assert fold_config(cfg, fold, budget_s=10).run.name == name  # the same command resumes its own fold
    other = load_config(RECIPE, ["model.hidden=[16,16]"])
    assert fold_config(other, fold, budget_s=10).run.name != name
    assert fold_config(cfg, fold, budget_s=20).run.name != name


def test_fold_without_validation_windows_is_refused(cfg, events):
    only_whole_train = [e for e in events if e.name in ("fmi-20160928", "mch-20150515")]
    f = Fold(1, only_whole_train, [events[0]])
    with pytest.raises(UserError, match="validation"):
        fold_config(cfg, f)


def test_pool_and_markdown():
    """Pooled scores are those of the pooled contingency table, not a mean of per-event scores."""
    events = ((10, 20, 20, 50), (80, 10, 10, 200))  # hits, false alarms, misses, correct negatives
    rows = []
    for a, b, c, d in events:
        rows.append({"method": "m", "lead_min": 5.0, "threshold_mmh": 0.5, "csi": a / (a + b + c),
                     "pod": a / (a + c), "far": b / (a + b), "hss": 0.0, "mse": 1.0, "mae": 1.0,
                     "n": a + b + c + d, "hits": a, "false_alarms": b, "misses": c, "correct_negatives": d})
    (p,) = pool_rows(rows)
    assert math.isclose(p["csi"], 90 / 150)  # (10 + 80) / (90 + 30 + 30); the n-weighted mean would be 0.62
    assert math.isclose(p["pod"], 90 / 120) and math.isclose(p["far"], 30 / 120)
    a, b, c, d = 90, 30, 30, 250
    assert math.isclose(p["hss"], 2 * (a * d - b * c) / ((a + c) * (c + d) + (a + b) * (b + d)))
    assert p["events"] == 2 and p["n"] == 400 and p["hits"] == 90
    md = markdown_table([p])
    assert ">= 0.5 mm/h" in md and "CSI m" in md and "0.600" in md
