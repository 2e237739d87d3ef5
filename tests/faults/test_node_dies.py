"""Scenario 3: a worker node dies mid-run.

Fault: on a local three-node Ray cluster (the head and two 1-CPU worker nodes; 2 Ray Train workers of
1 CPU each, so the workers sit on two different nodes), the first non-head node that hosts a training
worker is removed, raylet and workers killed, as soon as the run's second checkpoint is in S3.
What must hold: Ray Train restarts the worker group on the nodes left, from the last checkpoint, within
``run.max_failures``; the run finishes; MLflow has every epoch exactly once and the step counter
continues (k, 2k, 3k, ...); and the final model equals, weight for weight, that of the same recipe and
seed trained without the fault (a resume that replays from the checkpoint must change nothing).

Each run is its own process with its own Ray cluster (``node_dies_job.py``), never the session's Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

HERE = Path(__file__).resolve().parent
EPOCHS = 8


def _run(server, archive, storage, uri, name, mode, tmp_path):
    out = tmp_path / f"{name}.json"
    env = {**os.environ, **server.env(), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(HERE / "node_dies_job.py"), archive, storage, uri, name,
                           str(EPOCHS), mode, str(out)], env=env, capture_output=True, text=True, timeout=2000)
    assert out.exists(), f"the job wrote no result (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"{result['error']}\n{proc.stdout[-4000:]}"
    return result, proc.stdout


def _history(uri, run_id, key):
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key))


def _weights(server, checkpoint):
    import io

    import torch

    client = server._client()
    bucket, _, key = checkpoint.partition("/")
    body = client.get_object(Bucket=bucket, Key=f"{key.rstrip('/')}/checkpoint.pt")["Body"].read()
    return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)["model"]


def test_a_worker_node_dies_and_training_resumes_from_the_last_checkpoint(s3_server, tmp_path):
    archive = s3_server.url("knmi") + ".zarr"
    ingest(SAMPLE_READER, sample_files(), archive, s3_server.storage_options(), parallel=False, progress=False)
    storage = f"s3://{s3_server.bucket}/node-dies-runs"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    faulted, log = _run(s3_server, archive, storage, uri, "node-dies", "kill", tmp_path)
    assert faulted["killed_node"], f"no node was removed (the run ended first?):\n{log[-3000:]}"
    assert faulted["epochs_at_kill"] < EPOCHS, faulted
    assert faulted["alive_nodes_at_end"] == 2  # the cluster really lost a node
    assert faulted["metrics"]["epoch"] == EPOCHS
    # every epoch exactly once, the step counter continuing across the restart
    assert [s for s, _ in _history(uri, faulted["run_id"], "val_loss")] == list(range(1, EPOCHS + 1))
    steps = [v for _, v in _history(uri, faulted["run_id"], "step")]
    assert steps == [steps[0] * k for k in range(1, EPOCHS + 1)], steps
    # restarted from the checkpoint, not from scratch (which would also log each epoch once, and end equal)
    assert "[train] resumed from" in log, log[-3000:]

    # the same recipe and seed without the fault: the same final model, weight for weight
    clean, _ = _run(s3_server, archive, storage, uri, "node-dies-clean", "nokill", tmp_path)
    assert clean["killed_node"] is None and clean["metrics"]["epoch"] == EPOCHS
    a, b = _weights(s3_server, faulted["checkpoint"]), _weights(s3_server, clean["checkpoint"])
    assert a.keys() == b.keys()
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert diff <= 1e-6, f"the resumed run's model differs from the clean run's by {diff}"
