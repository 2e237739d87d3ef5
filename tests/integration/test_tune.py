"""A real sweep on CPU: 4 distributed trials under ASHA, killed midway and resumed, MLflow parent/child
runs on a local MLflow server, the best recipe exported and loadable.

Deterministic ASHA: a grid over two learning rates (3e-3 and 1e-7) × 2 samples, trials run one at a
time in grid order, grace_period 1, reduction_factor 2, max_t 3: the 1e-7 trials are worse than the
first (3e-3) trial at the first rung and are stopped after 1 epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NAME = "it-sweep"


def _sweep_file(tmp: Path) -> Path:
    spec = {
        "name": NAME,
        "base": str(REPO / "convlstm_dist" / "recipes" / "demo.yaml"),
        "set": {"train.epochs": 3, "model.height": 64, "model.width": 64, "data.crops_per_window": 1,
                "scaling.cpus_per_worker": 0.4, "train.schedule": "none", "run.keep_checkpoints": 1},
        "space": {"train.lr": {"grid": [3.0e-3, 1.0e-7]}, "model.filters": {"choice": [4]},
                  "model.depth": {"choice": [1]}},
        "search": {"metric": "val_loss", "mode": "min", "num_samples": 2,
                   "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 3},
                   "max_concurrent_trials": 1, "workers_per_trial": 1, "seed": 0},
    }
    p = tmp / "sweep.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def _terminated(exp_dir: Path) -> list[str]:
    done = []
    for f in exp_dir.glob("experiment_state-*.json"):
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        for t in d.get("trial_data", []):
            j = json.loads(t[0])
            if j.get("status") == "TERMINATED":
                done.append(j["trial_id"])
    return done


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI and everything it started (its session: driver, raylet, GCS, workers)."""
    sid = proc.pid
    out = subprocess.run(["ps", "-e", "-o", "pid=,sid="], capture_output=True, text=True).stdout
    pids = [int(p) for p, s in (line.split() for line in out.splitlines() if line.strip()) if int(s) == sid]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def test_sweep_asha_mlflow_resume(tmp_path):
    from convlstm_dist.tracking.server import MlflowServer

    sweep = _sweep_file(tmp_path)
    wd = tmp_path / "wd"
    durations = {}
    with MlflowServer(tmp_path / "mlflow") as srv:
        env = {**os.environ, "MLFLOW_TRACKING_URI": srv.uri, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
               "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "convlstm_dist.cli", "tune", "--config", str(sweep), "--workdir", str(wd)]
        log1 = (tmp_path / "run1.log").open("w")
        t0 = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
        exp_dir = wd / "sweeps" / NAME
        first_done: list[str] = []
        while time.time() - t0 < 180 and proc.poll() is None:
            first_done = _terminated(exp_dir)
            if first_done:
                break
            time.sleep(0.5)
        assert first_done, f"no trial finished in time; log:\n{(tmp_path / 'run1.log').read_text()[-3000:]}"
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        _kill_session(proc)
        durations["until_kill_s"] = time.time() - t0

        t1 = time.time()
        run2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        durations["resume_s"] = time.time() - t1
        print(f"durations: {durations}")
        assert run2.returncode == 0, run2.stdout[-4000:] + run2.stderr[-4000:]
        assert "resuming the sweep" in run2.stdout

        # 4 trials, at least one stopped early by ASHA, the finished one not rerun
        rows = list(__import__("csv").DictReader((exp_dir / "sweep_summary.csv").open()))
        assert len(rows) == 4, rows
        statuses = {r["trial_id"]: r["status"] for r in rows}
        assert "STOPPED_EARLY" in statuses.values(), rows
        assert all(statuses[t] != "ERROR" for t in statuses)

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=srv.uri)
        exp = client.get_experiment_by_name(NAME)
        runs = client.search_runs([exp.experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags.get("convlstm_dist.kind") == "sweep"]
        assert len(parents) == 1
        parent = parents[0]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        by_trial = {r.data.tags["convlstm_dist.trial_id"]: r for r in children}
        assert set(by_trial) == set(statuses), (set(by_trial), set(statuses))
        for tid in first_done:
            assert by_trial[tid].data.tags["convlstm_dist.trial_starts"] == "1", f"finished trial {tid} was rerun"
        for tid, r in by_trial.items():
            assert "val_loss" in r.data.metrics and r.data.params["sweep.train.lr"]
            assert len(client.get_metric_history(r.info.run_id, "val_loss")) >= 1
        stopped = [t for t, s in statuses.items() if s == "STOPPED_EARLY"]
        assert all(float(by_trial[t].data.params["train.lr"]) < 1e-5 for t in stopped)
        arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"best_recipe.yaml", "sweep_summary.csv", "metric_vs_axes.png"} <= arts, arts
        assert parent.data.tags.get("convlstm_dist.best_trial") or client.get_run(parent.info.run_id).data.tags[
            "convlstm_dist.best_trial"]
        assert client.search_model_versions(f"name='{NAME}-best'")

        from convlstm_dist.config import load_config

        best = load_config(exp_dir / "best_recipe.yaml")
        assert best.name == f"{NAME}-best" and best.train.lr == pytest.approx(3e-3)
        assert best.model.hidden == [4] and best.train.epochs == 3

        # the exported recipe is ready to run: train it for one epoch
        t2 = time.time()
        train = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "train", "--config",
                                str(exp_dir / "best_recipe.yaml"), "--set", "train.epochs=1", "--workdir", str(wd),
                                "--quiet"], env=env, capture_output=True, text=True, timeout=180)
        durations["train_best_s"] = time.time() - t2
        print(f"durations: {durations}")
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
