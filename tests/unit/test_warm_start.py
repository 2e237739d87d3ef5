"""Warm start (``train.init_from``): a new run starts from a trained model's weights (a checkpoint or
an MLflow model), is recorded in MLflow, and refuses weights that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convlstm_dist.checkpoint import load_model
from convlstm_dist.config import load_config
from convlstm_dist.errors import UserError
from convlstm_dist.train.backend import Backend
from convlstm_dist.train.fit import fit
from convlstm_dist.train.local import train_local
from convlstm_dist.train.warm_start import load_init_weights
from synthetic import make_archive

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "radar_smoke.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model trained for one step by ``train --local``, tracked and registered in MLflow."""
    wd = tmp_path_factory.mktemp("warm")
    archive = wd / "a.zarr"
    make_archive(archive, n=60, h=32, w=32)
    cfg = cfg_for(archive, "run.name=parent", "tracking.register_model=warm-parent",
                  f"tracking.uri=sqlite:///{wd}/mlflow.db")
    out = train_local(cfg, wd, device="cpu", progress=False)
    return wd, archive, out


def cfg_for(archive, *extra):
    return load_config(SMOKE, [f"data.archive={archive}", "model.height=32", "model.width=32",
                               "data.split.block_hours=1.0", "train.epochs=1", "train.max_steps_per_epoch=1",
                               *extra])


class _NoSteps(Backend):
    """A backend with no training batches: ``fit`` runs its loop and takes 0 optimizer steps."""

    device = torch.device("cpu")
    run_name = "zero-steps"

    def __init__(self):
        self.lines = []

    def say(self, msg):
        self.lines.append(msg)

    def train_batches(self, epoch, drop_last):
        return iter(())


def test_warm_start_changes_nothing_at_zero_steps(trained):
    _, archive, parent = trained
    cfg = cfg_for(archive, f"train.init_from={parent.checkpoint}", "tracking.enabled=false")
    backend = _NoSteps()
    init = load_init_weights(cfg.train.init_from, None)
    from convlstm_dist.train.backend import FitOptions

    res = fit(cfg, backend, "rain_rate", None, FitOptions(init_weights=init))
    source, _, _ = load_model(parent.checkpoint)
    got, want = res.model.state_dict(), source.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k].cpu(), want[k].cpu()), k
    assert res.state.step == 0
    assert any("started from the weights of checkpoint" in line for line in backend.lines)
    # and without init_from the same 0-step fit leaves a freshly initialised (different) model
    fresh = fit(cfg_for(archive, "tracking.enabled=false"), _NoSteps(), "rain_rate", None).model.state_dict()
    assert any(not torch.equal(fresh[k], want[k]) for k in want)


def test_warm_start_from_a_registered_model_is_recorded_as_its_parent(trained, capsys):
    wd, archive, _ = trained
    import mlflow

    uri = f"sqlite:///{wd}/mlflow.db"
    cfg = cfg_for(archive, "run.name=child", "train.init_from=models:/warm-parent/1", f"tracking.uri={uri}",
                  "tracking.register_model=warm-child")
    child = train_local(cfg, wd, device="cpu", progress=True)
    assert "started from the weights of models:/warm-parent/1" in capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    parent_run = client.get_model_version("warm-parent", "1").run_id
    run = client.get_run(client.get_model_version("warm-child", "1").run_id)
    assert run.data.tags["convlstm_dist.init_from"] == "models:/warm-parent/1"
    assert run.data.tags["convlstm_dist.parent_model_uri"] == "models:/warm-parent/1"
    assert run.data.tags["convlstm_dist.parent_run_id"] == parent_run
    assert run.data.params["train.init_from"] == "models:/warm-parent/1"
    assert child.history[0]["step"] == 1  # a new run: its own step count, not the parent's


def test_weights_that_do_not_fit_are_refused_before_training(trained, tmp_path):
    _, archive, parent = trained
    cfg = cfg_for(archive, f"train.init_from={parent.checkpoint}", "model.hidden=[16,8]", "tracking.enabled=false")
    with pytest.raises(UserError, match=r"train.init_from: the weights of checkpoint .* do not fit"):
        train_local(cfg, tmp_path, device="cpu", progress=False)
    assert not (tmp_path / "local").exists() or not any((tmp_path / "local").rglob("checkpoint.pt"))
    with pytest.raises(UserError, match="no checkpoint file or directory"):
        load_init_weights(str(tmp_path / "nothing-here"), None)
