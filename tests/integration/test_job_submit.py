"""`ray job submit` against a real two-node local cluster (cluster/local_cluster.sh, token auth on)
with a real MLflow server: the job succeeds and its run is in MLflow with metrics.

The job's MLflow URI reaches it through the runtime_env (env var), as on a real cluster.
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

# The job's command. To test the real training command, swap this line for:
# The real main job, shortened: ingest the shipped sample, train 1 epoch on 2 workers, log to MLflow.
ENTRYPOINT = "convlstm-dist demo --workdir {workdir} --set train.epochs=1"
ENTRYPOINT = os.environ.get("CONVLSTM_JOB_ENTRYPOINT", ENTRYPOINT)  # try another command without editing

# Not uploaded with --working-dir (the job uses the cluster's Python env, not a copy of .venv).
EXCLUDES = [".venv", ".git", "workdir", "runs", "mlruns", "out", "tests/artifacts", "**/__pycache__",
            "*.egg-info", "*.zarr", "*.db", ".pytest_cache"]


def _free_port() -> int:
    from convlstm_dist.tracking.server import free_port

    return free_port()


def _api(env: dict, path: str, token: bool = True):
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    req = urllib.request.Request(env["RAY_ADDRESS"] + path, headers=headers)
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


def test_job_submit_logs_to_mlflow(local_cluster, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from convlstm_dist.tracking.server import MlflowServer

    _, env = local_cluster
    tmp = tmp_path_factory.mktemp("jobsubmit")
    with MlflowServer(tmp / "mlflow", log_path=tmp / "mlflow.log") as srv:
        runtime_env = {
            "excludes": EXCLUDES,
            "env_vars": {"MLFLOW_TRACKING_URI": srv.uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                         "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"},
        }
        sub_id = f"convlstm-test-{os.getpid()}-{int(time.time())}"
        cmd = [str(BIN / "ray"), "job", "submit", "--address", env["RAY_ADDRESS"], "--submission-id", sub_id,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
               "--", *ENTRYPOINT.format(workdir=tmp / "workdir").split()]
        t0 = time.monotonic()
        out = _run(cmd, env, 540)
        print(f"job finished in {time.monotonic() - t0:.1f} s, rc={out.returncode}")
        print(out.stdout[-6000:], out.stderr[-3000:])
        _, info = _api(env, f"/api/jobs/{sub_id}")
        assert info["status"] == "SUCCEEDED", (info, out.stdout[-3000:], out.stderr[-2000:])
        assert out.returncode == 0

        client = MlflowClient(tracking_uri=srv.uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps)
        finished = [r for r in runs if r.info.status == "FINISHED" and r.data.metrics]
        assert finished, f"no finished MLflow run with metrics in {srv.uri}: {runs}"
        print("runs:", [(r.info.run_name, sorted(r.data.metrics)) for r in finished])
