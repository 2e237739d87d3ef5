"""`ray job submit` against a real two-node local cluster (cluster/local_cluster.sh, token auth on)
with a real MLflow server: the job succeeds and its run is in MLflow with metrics.

The job's MLflow URI reaches it through the runtime_env (env var), as on a real cluster. Training with
a local ``run.storage_path`` on this 2-node cluster is refused (exit 2) before any worker starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "cluster" / "local_cluster.sh"
BIN = Path(sys.executable).parent  # the venv: cluster, job driver and CLI all use this env

# Not uploaded with --working-dir (the job uses the cluster's Python env, not a copy of .venv).
EXCLUDES = [".venv", ".git", "workdir", "runs", "mlruns", "out", "tests/artifacts", "**/__pycache__",
            "*.egg-info", "*.zarr", "*.db", ".pytest_cache"]


def _free_port() -> int:
    from convlstm_dist.addresses import free_port

    return free_port()


def _api(env: dict, path: str, token: bool = True):
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    req = urllib.request.Request(env["RAY_API_SERVER_ADDRESS"] + path, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read() or b"null")


def _run(cmd, env, timeout):
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_cluster():
    # short path: Ray's unix sockets live under the temp dir (108-byte limit)
    state = tempfile.mkdtemp(prefix="lc-", dir="/tmp")
    env = dict(os.environ)
    env.update(LOCAL_RAY_DIR=state, LOCAL_RAY_PORT=str(_free_port()),
               LOCAL_RAY_DASHBOARD_PORT=str(_free_port()), PYTHON=sys.executable,
               PATH=f"{BIN}:{env.get('PATH', '')}", RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2")
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(k, None)
    t0 = time.monotonic()
    try:
        out = _run(["bash", str(SCRIPT), "start"], env, 180)
        print(out.stdout, out.stderr)
        assert out.returncode == 0, out.stderr
        print(f"cluster up in {time.monotonic() - t0:.1f} s")
        client_env = dict(env)
        for line in Path(state, "env").read_text().splitlines():
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                client_env[k] = v
        yield state, client_env
    finally:
        stop = _run(["bash", str(SCRIPT), "stop"], env, 120)
        print(stop.stdout, stop.stderr)
        status = _run(["bash", str(SCRIPT), "status"], env, 60)
        shutil.rmtree(state, ignore_errors=True)
        assert stop.returncode == 0 and status.returncode == 1, (stop.stderr, status.stdout)


def test_cluster_requires_token(local_cluster):
    """The job API answers 401 without the cluster's token and 200 with it."""
    _, env = local_cluster
    with pytest.raises(urllib.error.HTTPError) as err:
        _api(env, "/api/jobs/", token=False)
    assert err.value.code == 401
    assert _api(env, "/api/jobs/")[0] == 200


def test_local_commands_work_with_the_env_file_sourced(local_cluster):
    """The env file sets the job API for ``ray job`` (RAY_API_SERVER_ADDRESS), not an http:// RAY_ADDRESS:
    a local command starts its own Ray instead of crashing on it."""
    _, env = local_cluster
    assert "RAY_ADDRESS" not in env and env["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
    probe = ("from convlstm_dist.ray_session import start_or_join_ray; import ray; "
             "print('own', start_or_join_ray(num_cpus=1)); print('nodes', len(ray.nodes())); ray.shutdown()")
    for extra in ({}, {"RAY_ADDRESS": env["RAY_API_SERVER_ADDRESS"]}):  # also with the http address exported by hand
        out = _run([sys.executable, "-c", probe], {**env, **extra}, 300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "own True" in out.stdout and "nodes 1" in out.stdout, out.stdout


def test_local_storage_on_the_two_node_cluster_exits_2_before_any_worker(local_cluster, tmp_path_factory):
    """``train`` submitted to the 2-node cluster with a local ``run.storage_path``: the job fails with the
    one-line message (the key, an S3 example) and exit code 2, before any Train worker started, no
    checkpoint folder and no MLflow run created. (A successful job with S3 and MLflow:
    tests/integration/test_cluster_quickstart.py.)"""
    from mlflow.tracking import MlflowClient

    from convlstm_dist.tracking.server import MlflowServer

    from convlstm_dist.data.ingest import ingest
    from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

    _, env = local_cluster
    tmp = tmp_path_factory.mktemp("jobsubmit")
    storage = tmp / "runs"
    archive = tmp / "archive.zarr"  # a local archive: this test is about the storage path only
    ingest(SAMPLE_READER, sample_files(), str(archive), parallel=False, progress=False)
    with MlflowServer(tmp / "mlflow", log_path=tmp / "mlflow.log") as srv:
        runtime_env = {"excludes": EXCLUDES, "env_vars": {"MLFLOW_TRACKING_URI": srv.uri}}
        sub_id = f"convlstm-test-{os.getpid()}-{int(time.time())}"
        cmd = [str(BIN / "ray"), "job", "submit", "--address", env["RAY_API_SERVER_ADDRESS"], "--submission-id",
               sub_id, "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
               "--", "convlstm-dist", "train", "--config", "pipelines/radar_smoke.yaml", "--workdir", str(tmp / "wd"),
               "--set", f"data.archive={archive}", "--set", f"run.storage_path={storage}"]
        t0 = time.monotonic()
        out = _run(cmd, env, 540)
        print(f"job finished in {time.monotonic() - t0:.1f} s, rc={out.returncode}")
        print(out.stdout[-4000:], out.stderr[-2000:])
        _, info = _api(env, f"/api/jobs/{sub_id}")
        assert info["status"] == "FAILED", info
        assert "exit code 2" in (info.get("message") or "").lower() or "exited with code 2" in \
            (info.get("message") or ""), info.get("message")
        logs = _run([str(BIN / "ray"), "job", "logs", "--address", env["RAY_API_SERVER_ADDRESS"], sub_id], env, 120)
        text = logs.stdout
        assert f"run.storage_path {storage} is a local folder, but the Ray cluster has 2 nodes" in text, text[-3000:]
        assert "--set run.storage_path=s3://" in text
        assert f"warning: this job keeps its checkpoints (set run.storage_path=s3://...) under {tmp / 'wd'}" in text
        assert "Traceback" not in text and "[train]" not in text and "epoch" not in text.lower(), text[-3000:]
        assert not (storage / "radar-smoke").exists()
        client = MlflowClient(tracking_uri=srv.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs == [], [r.info.run_name for r in runs]
