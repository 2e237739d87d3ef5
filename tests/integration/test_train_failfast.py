"""Training failures that used to hang or end in hundreds of lines (issue 16), on a real local Ray:
GPUs asked for on a CPU-only cluster, a UserError raised inside a Ray Train worker, a read-only
key for s3:// checkpoint storage (real S3 server: SeaweedFS)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from convlstm_dist.config import load_config
from convlstm_dist.errors import UserError
from convlstm_dist.train import driver
from synthetic import make_archive

pytestmark = pytest.mark.integration
SMOKE = Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"


@pytest.fixture
def archive(tmp_path):
    url = tmp_path / "a.zarr"
    make_archive(url, n=60, h=32, w=32)
    return url


def _cfg(archive, tmp_path, *extra):
    return load_config(SMOKE, [f"data.archive={archive}", "model.height=32", "model.width=32",
                               "data.split.block_hours=1.0", "scaling.num_workers=1", "run.max_failures=0",
                               "train.epochs=1", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra])


def _runs(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_gpus_asked_on_a_cpu_cluster_fail_at_once(ray_local, archive, tmp_path):
    cfg = _cfg(archive, tmp_path, "scaling.use_gpu=true")
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        driver.run_training(cfg, tmp_path, progress=False)
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert "1 GPU (1 worker(s) x 1 GPU)" in msg and "0 GPU" in msg and "use_gpu=false" in msg, msg
    assert not _runs(tmp_path), "no MLflow run should be opened for a run that can never start"


def test_user_error_in_a_worker_is_one_line_with_a_log(ray_local, archive, tmp_path, monkeypatch):
    build = driver.build_trainer

    def build_then_delete_archive(*a, **k):  # the archive vanishes after the driver's checks
        trainer = build(*a, **k)
        shutil.rmtree(archive)
        return trainer

    monkeypatch.setattr(driver, "build_trainer", build_then_delete_archive)
    with pytest.raises(UserError) as err:
        driver.run_training(_cfg(archive, tmp_path, "run.name=vanished"), tmp_path, progress=False)
    msg = str(err.value)
    assert msg.startswith(f"no archive at {archive}"), msg
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg
    log = Path(msg.rsplit("full traceback in ", 1)[1])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()
    assert [r.info.status for r in _runs(tmp_path)] == ["FAILED"]


def test_read_only_key_for_s3_checkpoints_fails_before_training(s3_server, archive, tmp_path, monkeypatch):
    for k, v in s3_server.env(readonly=True).items():
        monkeypatch.setenv(k, v)
    storage = f"s3://{s3_server.bucket}/runs-ro"
    cfg = _cfg(archive, tmp_path, f"run.storage_path={storage}")
    t0 = time.monotonic()
    with pytest.raises(UserError, match=rf"cannot write checkpoints under run.storage_path {storage} at "
                                        rf"{s3_server.endpoint_url}: access denied"):
        driver.preflight(cfg, tmp_path)
    assert time.monotonic() - t0 < 10
    for k, v in s3_server.env().items():  # the read-write key passes and leaves nothing behind
        monkeypatch.setenv(k, v)
    driver.preflight(cfg, tmp_path)
    left = s3_server._client().list_objects_v2(Bucket=s3_server.bucket, Prefix="runs-ro/").get("Contents", [])
    assert not [o["Key"] for o in left if "write-probe" in o["Key"]]  # (pyarrow may leave a 'runs-ro/' marker)


def test_sweep_asking_for_gpus_fails_before_any_trial(ray_local, archive, tmp_path):
    import yaml

    from convlstm_dist.tune.sweep import run_sweep

    base = yaml.safe_load(SMOKE.read_text())
    base["data"].update(archive=str(archive), split={"block_hours": 1.0, "val_every": 2, "gap_steps": 1})
    base["model"].update(height=32, width=32)
    base["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    sweep = {"name": "gpu-sweep", "base": base, "set": {"scaling.use_gpu": True},
             "space": {"train.lr": {"grid": [1e-3, 3e-3]}}, "search": {"num_samples": 1}}
    with pytest.raises(UserError, match=r"GPU \(2 worker\(s\) x 1 GPU\).*0 GPU"):
        run_sweep(sweep, tmp_path, progress=False)
    assert [r.info.status for r in _runs(tmp_path)] == ["FAILED"]  # the parent run, no trial ran
    sweep["search"] = {"metric": "val_cross_entropy"}  # only Moving MNIST reports it
    with pytest.raises(UserError, match="search.metric: 'val_cross_entropy' is only reported for Moving MNIST"):
        run_sweep({**sweep, "set": {}}, tmp_path, progress=False)
