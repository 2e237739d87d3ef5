"""MLflow is optional at run time: training with ``tracking.enabled: false`` imports no mlflow, and
tracking without mlflow installed fails before any cluster work with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from convlstm_dist.errors import UserError
from convlstm_dist.tracking import mlflow_tracker

REPO = Path(__file__).resolve().parents[2]


def test_check_reachable_refuses_tracking_without_mlflow(monkeypatch):
    monkeypatch.setattr("convlstm_dist.tracking.mlflow_available", lambda: False)
    with pytest.raises(UserError, match="mlflow is not installed.*tracking.enabled=false"):
        mlflow_tracker.check_reachable("sqlite:////tmp/x/mlflow.db")


def test_mlflow_import_failure_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ModuleNotFoundError
    with pytest.raises(UserError, match="mlflow is not installed"):
        mlflow_tracker._mlflow()


def test_training_modules_import_no_mlflow():
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "import convlstm_dist.cli, convlstm_dist.train.driver, convlstm_dist.train.ray_worker, convlstm_dist.train.fit, convlstm_dist.train.local\n"
            "import convlstm_dist.tracking.mlflow_tracker, convlstm_dist.nowcast.nowcaster\n"
            "from convlstm_dist.cli import build_parser; build_parser()\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
