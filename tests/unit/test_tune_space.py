"""Sweep YAML → Ray Tune space, per-layer lists from scalar samples, refusal rules (fast, no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from convlstm_dist.config import config_from_dict, load_config
from convlstm_dist.errors import UserError
from convlstm_dist.tune.space import check_space, load_sweep, memory_estimate_bytes, to_tune, trial_tree

REPO = Path(__file__).resolve().parents[2]
RADAR = REPO / "pipelines" / "sweeps" / "radar.yaml"
BASE = {"name": "b", "model": {"hidden": [16, 16], "input_kernel": [3, 3], "state_kernel": [3, 3], "patch": 4,
                               "height": 64, "width": 64}}


def _sweep(space, **search):
    return {"name": "s", "base": BASE, "space": space, "search": search}


def test_derived_axes_build_per_layer_lists():
    tree = trial_tree(BASE, {"model.depth": 3, "model.kernel": 5, "model.filters": 32, "train.lr": 1e-3})
    cfg = config_from_dict(tree)
    assert cfg.model.hidden == [32, 32, 32]
    assert cfg.model.input_kernel == [5, 5, 5] and cfg.model.state_kernel == [5, 5, 5]
    assert cfg.train.lr == 1e-3
    # depth alone keeps the base widths/kernels (first layer's repeated)
    cfg = config_from_dict(trial_tree(BASE, {"model.depth": 1}))
    assert cfg.model.hidden == [16] and cfg.model.input_kernel == [3]
    assert BASE["model"]["hidden"] == [16, 16]  # base untouched


def test_to_tune_distributions():
    from ray.tune.search.sample import Categorical, Float, Integer

    space = to_tune({"a": {"choice": [1, 2]}, "b": {"loguniform": [1e-4, 1e-2]}, "c": {"uniform": [0, 1]},
                     "d": {"randint": [0, 5]}, "e": {"grid": [1, 2, 3]}})
    assert isinstance(space["a"], Categorical) and space["a"].categories == [1, 2]
    assert isinstance(space["b"], Float) and isinstance(space["c"], Float)
    assert isinstance(space["d"], Integer)
    assert space["e"] == {"grid_search": [1, 2, 3]}


def test_radar_sweep_loads_and_passes_checks():
    spec, base = load_sweep(RADAR)
    assert spec.space["model.depth"] == {"choice": [1, 2, 3]}
    assert base["train"]["epochs"] == 12 and spec.search.num_samples == 16
    # every model-shaping combination is checked: depth 3 x kernel 3 x filters 3 x batch 2 (lr: one end)
    assert check_space(spec, base) == 3 * 3 * 3 * 2
    # --smoke-test merges the file's smoke_test: section over set/space/search
    smoke, sbase = load_sweep(RADAR, smoke_test=True)
    assert smoke.name == "radar-sweep-smoke"
    assert sbase["train"]["epochs"] == 2  # smoke_test.set overrides the sweep's set (12)
    assert (sbase["model"]["height"], sbase["model"]["width"], sbase["data"]["crops_per_window"]) == (64, 64, 1)
    assert smoke.space["model.filters"] == {"choice": [4, 8]} and smoke.space["data.batch_size"] == {"choice": [4]}
    assert smoke.space["train.lr"] == spec.space["train.lr"]  # axes the smoke test leaves alone stay
    assert (smoke.search.num_samples, smoke.search.max_concurrent_trials, smoke.search.workers_per_trial) == (4, 1, 1)
    sched = smoke.search.scheduler
    assert (sched.type, sched.grace_period, sched.reduction_factor) == ("asha", 1, 2)  # merged key by key
    assert smoke.search.metric == "val_loss" and smoke.search.trial_memory_gb == 16  # kept from the sweep
    assert check_space(smoke, sbase) == 2 * 2 * 2 * 1


def test_even_kernel_refused():
    spec, base = load_sweep(_sweep({"model.kernel": {"choice": [3, 4]}}))
    with pytest.raises(UserError, match="not odd"):
        check_space(spec, base)
    spec, base = load_sweep(_sweep({"model.kernel": {"randint": [3, 8]}}))
    with pytest.raises(UserError, match="even kernels"):
        check_space(spec, base)


def test_memory_budget_refused():
    spec, base = load_sweep(_sweep({"model.filters": {"choice": [8, 512]}, "model.depth": {"choice": [1, 3]},
                                    "data.batch_size": {"choice": [4, 64]}}, trial_memory_gb=1))
    with pytest.raises(UserError) as err:
        check_space(spec, base)
    msg = str(err.value)
    assert "model.filters=512" in msg and "trial_memory_gb" in msg and "model.filters=8, model.depth=1, data.batch_size=4:" not in msg


def test_memory_estimate_grows():
    small = config_from_dict(trial_tree(BASE, {"model.filters": 8, "model.depth": 1}))
    big = config_from_dict(trial_tree(BASE, {"model.filters": 128, "model.depth": 3}))
    assert memory_estimate_bytes(big) > 10 * memory_estimate_bytes(small) > 0


def test_bad_spec_messages(tmp_path):
    with pytest.raises(UserError, match="loguniform needs low > 0"):
        load_sweep(_sweep({"train.lr": {"loguniform": [0, 1]}}))
    with pytest.raises(UserError, match="expected one of"):
        load_sweep(_sweep({"train.lr": {"normal": [0, 1]}}))
    with pytest.raises(UserError, match="unknown key"):
        load_sweep({**_sweep({}), "serch": {}})
    with pytest.raises(UserError, match="not found"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="base recipe"):
        load_sweep({"name": "s", "base": "missing.yaml"})
    spec, base = load_sweep(_sweep({"train.optimizer": {"choice": ["adam", "lion"]}}))
    with pytest.raises(UserError, match="cannot work"):
        check_space(spec, base)


def test_base_path_relative_to_sweep_file(tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": "r.yaml", "set": {"train.epochs": 3},
                                                     "space": {"model.depth": {"choice": [1, 2]}}}))
    spec, base = load_sweep(tmp_path / "s.yaml")
    assert base["train"]["epochs"] == 3 and check_space(spec, base) == 2
    load_config(None)  # sanity: defaults still load
