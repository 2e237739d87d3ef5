"""Loading a model never runs code from its file unless the user says --trust-model.

A crafted ``checkpoint.pt`` holds an object whose ``__reduce__`` creates a marker file (a
stand-in for any shell command). ``Nowcaster.load`` and the ``nowcast`` / ``evaluate`` commands
must refuse it with a clear message naming ``--trust-model``, and the marker must not appear.
MLflow models are logged as plain state dicts and load the same safe way; a legacy pickled
MLflow model is refused without the flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convlstm_dist.checkpoint import read_checkpoint
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast.nowcaster import Nowcaster
from test_nowcaster import tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A real, loadable checkpoint with one extra object that creates `marker` when unpickled."""
    ckpt = tiny_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "PWNED"
    payload["train"]["note"] = Evil(marker)
    torch.save(payload, ckpt)
    return ckpt, marker


def test_crafted_checkpoint_refused_without_trust(tmp_path):
    ckpt, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(UserError, match="--trust-model") as err:
        Nowcaster.load(ckpt.parent)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(UserError, match="--trust-model"):
        read_checkpoint(ckpt)
    assert not marker.exists()
    # The flag is what stood between the file and its code: with it, the code runs.
    Nowcaster.load(ckpt.parent, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("command", ["nowcast", "evaluate"])
def test_cli_refuses_crafted_checkpoint(tmp_path, command):
    ckpt, marker = crafted_checkpoint(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", command, "--model", str(ckpt.parent),
                           "--archive", str(tmp_path / "none.zarr"), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--trust-model" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_trained_checkpoint_is_plain_data(tmp_path):
    """Everything a checkpoint holds (train state with numpy values included) loads weights_only."""
    import numpy as np

    from convlstm_dist.checkpoint import save_checkpoint
    from convlstm_dist.train.state import rng_state, set_rng_state

    ckpt = tiny_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    state = {"rng": rng_state(), "best": np.float32(0.5), "history": [{"val_loss": np.float64(1.0)}],
             "table": np.arange(3)}
    model = Nowcaster.load(ckpt).model
    path = save_checkpoint(tmp_path / "c2", model, payload["config"], "rain_norm", state)
    loaded = read_checkpoint(path)["train"]
    assert loaded["best"] == 0.5 and loaded["history"][0]["val_loss"] == 1.0 and loaded["table"] == [0, 1, 2]
    expected = np.random.random(4)
    set_rng_state(loaded["rng"])
    np.testing.assert_array_equal(np.random.random(4), expected)   # the numpy RNG state round-trips


def test_config_weights_mismatch_is_one_clear_line(tmp_path):
    ckpt = tiny_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["model"]["hidden"] = [8]
    torch.save(payload, ckpt)
    with pytest.raises(UserError, match="do not match its own config") as err:
        Nowcaster.load(ckpt)
    assert "\n" not in str(err.value)


def test_mlflow_model_is_state_dict_and_loads_safely(tmp_path):
    import mlflow

    from convlstm_dist.tracking.mlflow_tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ckpt = tiny_checkpoint(tmp_path)
    tracker, _ = Tracker.start_or_resume(uri, "safety", "run-a")
    model_uri = tracker.log_model(ckpt.parent, "tiny")
    assert model_uri == "models:/tiny/1"
    assert tracker.log_model(ckpt.parent, "tiny") == "models:/tiny/1"   # a rerun does not register again
    mlflow.set_tracking_uri(uri)
    root = Path(mlflow.artifacts.download_artifacts("models:/tiny/1", dst_path=str(tmp_path / "dl")))
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "code" not in p.parts}
    assert {"MLmodel", "artifacts/checkpoint.pt", "artifacts/recipe.yaml", "pyfunc_model.py",
            "requirements.txt"} <= files, files
    assert not [f for f in files if f.endswith((".pkl", ".pth", ".cloudpickle"))], files   # nothing pickled
    torch.load(root / "artifacts" / "checkpoint.pt", weights_only=True)  # plain data, no pickled module
    nc = Nowcaster.load("models:/tiny/1", tracking_uri=uri)
    assert nc.info["run_id"] == tracker.run_id and nc.in_len == 3 and nc.quantity == "rain_norm"
    assert Nowcaster.load("tiny", tracking_uri=uri).info["model_uri"] == "models:/tiny/1"

    # A model logged the old way (a pickled torch module) is refused without --trust-model.
    legacy, _ = Tracker.start_or_resume(uri, "safety", "run-legacy")
    with mlflow.start_run(run_id=legacy.run_id):
        mlflow.pytorch.log_model(nc.model, name="model", serialization_format="pickle",
                                 registered_model_name="legacy")
        mlflow.log_dict(nc.config.model_dump(mode="json"), "config.yaml")
    with pytest.raises(UserError, match="--trust-model"):
        Nowcaster.load("models:/legacy/1", tracking_uri=uri)
    assert Nowcaster.load("models:/legacy/1", tracking_uri=uri, trust=True).in_len == 3
