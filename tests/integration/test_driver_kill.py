"""A training driver killed with SIGKILL and rerun with the same command continues the same run:
the same MLflow run, resumed from its checkpoint (not restarted), each epoch's metrics logged
exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SETS = ["model.hidden=[8, 8]", "model.height=64", "model.width=64", "model.patch=4", "data.in_len=4",
        "data.out_len=4", "data.batch_size=4", "data.split.block_hours=2", "data.split.val_every=2",
        "train.epochs=6", "data.crops_per_window=4", "scaling.num_workers=1", "scaling.cpus_per_worker=1", "name=driver-kill"]


def _command(wd: Path) -> list[str]:
    cmd = [sys.executable, "-m", "convlstm_dist.cli", "train", "--config", str(REPO / "pipelines" / "radar_smoke.yaml"),
           "--workdir", str(wd)]
    for s in SETS:
        cmd += ["--set", s]
    return cmd


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
    return env


def _val_loss_steps(uri: str) -> tuple[str | None, list[int]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("driver-kill")
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id])
    if not runs:
        return None, []
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run_id = runs[0].info.run_id
    return run_id, sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver first (the fault under test), then whatever it started (its local Ray)."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1.0)
    for k in kids:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's own session: any straggler
    except (ProcessLookupError, PermissionError):
        pass


def test_driver_sigkill_then_same_command_continues_the_run(tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    ingest(SAMPLE_READER, sample_files(), str(wd / "archive.zarr"), parallel=False, progress=False)
    uri = f"sqlite:///{wd / 'mlflow.db'}"
    log1 = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_command(wd), cwd=REPO, env=_env(), stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # watch the driver's own progress lines, not its MLflow database: a second process opening
        # the SQLite store while the driver creates its schema races the driver's migration
        deadline, seen = time.time() + 300, False
        while time.time() < deadline and proc.poll() is None:
            if "[epoch 2/6]" in (tmp_path / "first.log").read_text():  # printed after epoch 2 is logged
                seen = True
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the first driver ended before it was killed:\n" + (tmp_path / "first.log").read_text()
        assert seen, "epoch 2 never finished:\n" + (tmp_path / "first.log").read_text()
    finally:
        _kill_tree(proc)
        log1.close()
    run_id, before = _val_loss_steps(uri)
    assert before[:2] == [1, 2] and max(before) < 6, before

    second = subprocess.run(_command(wd), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
                            start_new_session=True)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "MLflow resumed run " + run_id in out, out
    assert "[train] resumed from " in out, out  # from a checkpoint, not a restart
    run_id2, steps = _val_loss_steps(uri)
    assert run_id2 == run_id
    assert steps == [1, 2, 3, 4, 5, 6], steps  # every epoch exactly once
    import mlflow

    counter = [m.value for m in sorted(mlflow.MlflowClient(uri).get_metric_history(run_id, "step"),
                                       key=lambda m: m.step)]
    assert counter == [counter[0] * k for k in range(1, 7)], counter  # the step count continued
