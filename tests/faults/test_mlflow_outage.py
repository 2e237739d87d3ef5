"""Scenario 2: the MLflow tracking server goes away mid-run (issue 26).

Fault: ``convlstm-dist train`` logs to an MLflow server on loopback (``MlflowServer``, SQLite store
and artifacts in a folder). Right after epoch 2 is reported the server is stopped (its whole process
group); it is restarted ~60 s later on the same port and the same store.
Must hold afterwards: training did not stop (epochs finished while the server was down), the run
ends with exit 0, the *same* MLflow run has every epoch's metrics exactly once (the ones of the
missed epochs included), and the model is registered from that run.

Second fault: the server never comes back (``tracking.outage_wait_s=5``). Must hold: the run still
finishes (exit 0), keeps every epoch's metrics, its report and its model in
``<workdir>/mlflow-outbox/<run>.json`` and prints the command that uploads them; once a server is
back on that store, that command (``convlstm-dist mlflow-upload``) puts every epoch once into the
same run, registers the model and closes the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from convlstm_dist.tracking.server import MlflowServer

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 5
OUTAGE_S = 60.0


def _command(wd: Path, uri: str, name: str, *extra: str) -> list[str]:
    # 16 crops per window: epochs of a few seconds, so that the fault lands between epochs 2 and 5
    sets = [f"tracking.uri={uri}", "data.crops_per_window=16", f"train.epochs={EPOCHS}", f"name={name}", *extra]
    cmd = [sys.executable, "-m", "convlstm_dist.cli", "train", "--config", str(REPO / "pipelines" / "radar_smoke.yaml"),
           "--workdir", str(wd)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    env.update(PYTHONPATH=str(REPO), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", PYTHONUNBUFFERED="1")
    return env


def _wait_for(log: Path, proc: subprocess.Popen, text: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared (exit {proc.poll()}):\n{log.read_text(errors='replace')[-5000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def workdir(tmp_path) -> Path:
    wd = tmp_path / "wd"
    wd.mkdir()
    ingest(SAMPLE_READER, sample_files(), str(wd / "archive.zarr"), parallel=False, progress=False)
    return wd


def _start_training(tmp_path: Path, wd: Path, uri: str, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_command(wd, uri, name, *extra), env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)
    return proc, log


def _check_run(uri: str, experiment: str) -> str:
    """The experiment has one run, FINISHED, with every epoch's metrics once and a registered model."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # the same run, not a second one
    run = runs[0]
    for key in ("val_loss", "train_loss", "step"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(1, EPOCHS + 1)), (key, steps)  # every epoch exactly once
    counter = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "step"), key=lambda m: m.step)]
    assert counter == [counter[0] * k for k in range(1, EPOCHS + 1)], counter
    versions = client.search_model_versions(f"name = '{experiment}'")
    assert [v.run_id for v in versions] == [run.info.run_id], versions  # registered, from this run
    # the model: an MLflow LoggedModel of this run, the registered version made from it
    source = versions[0].source  # models:/m-<id>: the run's LoggedModel (what pyfunc and `models serve` load)
    assert source.startswith("models:/m-"), source
    assert client.get_logged_model(source[len("models:/"):]).source_run_id == run.info.run_id
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in arts and any(a.endswith("skill.csv") for a in arts), arts
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    return run.info.run_id


def test_mlflow_outage_mid_run_missed_epochs_reach_the_same_run(workdir, tmp_path):
    store = tmp_path / "mlflow"
    server = MlflowServer(store).start()
    port, uri = server.port, server.uri
    proc, log = _start_training(tmp_path, workdir, uri, "mlflow-outage")
    restarted = None
    try:
        _wait_for(log, proc, f"[epoch 2/{EPOCHS}]")
        server.stop()  # the fault: gone after epoch 2
        t_down = time.monotonic()
        _wait_for(log, proc, "[mlflow] tracking server", timeout_s=600)  # an epoch was kept, not waited for
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        during = log.read_text(errors="replace")
        restarted = MlflowServer(store, port=port).start()  # same port, same store
        t_up = time.monotonic()
        assert proc.wait(1200) == 0, log.read_text(errors="replace")[-6000:]
    except BaseException:
        if restarted is not None:
            restarted.stop()
        raise
    finally:
        _kill_group(proc)
        server.stop()
    text = log.read_text(errors="replace")
    try:
        # training went on while the server was away: epoch 3 finished before it came back
        assert f"[epoch 3/{EPOCHS}]" in during, during[-4000:]
        # the first epoch kept is one after the fault (epoch 3, or a later one when epoch 3 ended before
        # the server had stopped: epochs take under a second on a quiet machine)
        kept = re.search(rf"\[mlflow\] tracking server {re.escape(uri)} unreachable: metrics of epoch\(s\) (\d+)", during)
        assert kept and 3 <= int(kept.group(1)) <= EPOCHS, during[-4000:]
        assert "MLflow new run" in text and "MLflow resumed run" not in text
        assert "[train] resumed from" not in text  # no restart was needed
        run_id = _check_run(uri, "mlflow-outage")
        assert f"MLflow new run {run_id}" in text
    finally:
        restarted.stop()
    print(f"scenario 2: server down {t_up - t_down:.0f} s (incl. restart); run finished with every epoch once "
          f"and its model registered")


def test_mlflow_server_never_returns_run_finishes_and_outbox_uploads(workdir, tmp_path):
    store = tmp_path / "mlflow"
    server = MlflowServer(store).start()
    port, uri = server.port, server.uri
    proc, log = _start_training(tmp_path, workdir, uri, "mlflow-gone", "tracking.outage_wait_s=5")
    try:
        _wait_for(log, proc, f"[epoch 2/{EPOCHS}]")
        server.stop()  # and it does not come back during the run
        assert proc.wait(1200) == 0, log.read_text(errors="replace")[-6000:]
    finally:
        _kill_group(proc)
        server.stop()
    text = log.read_text(errors="replace")
    m = re.search(r"upload them with: convlstm-dist mlflow-upload (\S+)", text)
    assert m, text[-6000:]
    outbox = Path(m.group(1))
    assert outbox.parent == workdir / "mlflow-outbox" and outbox.is_file()
    rec = json.loads(outbox.read_text())
    assert [h["epoch"] for h in rec["history"]] == list(range(1, EPOCHS + 1))
    assert rec["model_dir"] and Path(rec["model_dir"], "checkpoint.pt").is_file()
    assert "did not come back" in text

    back = MlflowServer(store, port=port).start()
    try:
        up = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "mlflow-upload", str(outbox)], env=_env(),
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "[mlflow] uploaded to run " + rec["run_id"] in up.stdout, up.stdout
        assert not outbox.exists() and outbox.with_name("mlflow-gone.uploaded.json").is_file()
        assert _check_run(uri, "mlflow-gone") == rec["run_id"]
        again = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "mlflow-upload", str(outbox)],
                               env=_env(), capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert again.returncode == 2 and "cannot read the MLflow outbox" in again.stderr, again.stderr
    finally:
        back.stop()
