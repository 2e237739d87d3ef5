"""Registering a run's model is done once per run: the training driver's final report calls
``Tracker.log_model`` on every (re)run, and rerunning a finished demo resumes the same MLflow run,
so it must not add a second model version."""

import pytest

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.config import build_model_from_config, load_config

pytestmark = pytest.mark.integration


def _ckpt(d):
    cfg = load_config(None, ["name=tiny-reg", "model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3",
                             "model.patch=4", "model.height=16", "model.width=16", "data.in_len=3", "data.out_len=2"])
    return save_checkpoint(d, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm").parent


def test_rerun_of_a_finished_run_does_not_register_again(tmp_path):
    import mlflow

    from convlstm_dist.tracking.mlflow_tracker import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = _ckpt(tmp_path / "ckpt")
    tracker, resumed = Tracker.start_or_resume(uri, "tiny-reg", "tiny-reg")
    assert not resumed
    first = tracker.log_model(ckpt, "tiny-reg")
    tracker.end()

    # the same command again: the run is resumed and its final report logs the model again
    again, resumed = Tracker.start_or_resume(uri, "tiny-reg", "tiny-reg")
    assert resumed and again.run_id == tracker.run_id
    second = again.log_model(ckpt, "tiny-reg")
    again.end()
    client = mlflow.MlflowClient(tracking_uri=uri)
    versions = client.search_model_versions("name = 'tiny-reg'")
    assert [str(v.version) for v in versions] == ["1"], [(v.version, v.run_id) for v in versions]
    assert second == first == "models:/tiny-reg/1"

    # another run (another run name) of the same recipe is a new version
    other, _ = Tracker.start_or_resume(uri, "tiny-reg", "tiny-reg-2")
    assert other.log_model(ckpt, "tiny-reg") == "models:/tiny-reg/2"
    other.end()
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'tiny-reg'")) == ["1", "2"]


def test_resumed_run_that_trained_further_registers_its_new_weights(tmp_path):
    import torch

    from convlstm_dist.tracking.mlflow_tracker import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = _ckpt(tmp_path / "ckpt")
    tracker, _ = Tracker.start_or_resume(uri, "tiny-reg", "tiny-reg")
    assert tracker.log_model(ckpt, "tiny-reg") == "models:/tiny-reg/1"
    payload = torch.load(ckpt / "checkpoint.pt", weights_only=True)  # "trained further": other weights
    payload["model"] = {k: v + 1 for k, v in payload["model"].items()}
    torch.save(payload, ckpt / "checkpoint.pt")
    again, resumed = Tracker.start_or_resume(uri, "tiny-reg", "tiny-reg")
    assert resumed and again.log_model(ckpt, "tiny-reg") == "models:/tiny-reg/2"
    assert again.log_model(ckpt, "tiny-reg") == "models:/tiny-reg/2"   # and only once
