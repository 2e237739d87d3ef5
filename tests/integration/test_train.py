"""Distributed training end to end: 2 gloo workers, archive and checkpoints on a real S3 server
(SeaweedFS), a real MLflow server; a worker killed mid-run; a fresh driver resuming the run."""

from __future__ import annotations

import re
import threading
import time

import psutil
import numpy as np
import pytest

from convlstm_dist.config import load_config
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from convlstm_dist.errors import UserError
from convlstm_dist.tracking.server import MlflowServer
from convlstm_dist.train.driver import run_training

pytestmark = pytest.mark.integration

TINY = [
    "model.hidden=[8, 8]", "model.height=64", "model.width=64", "model.patch=4",
    "data.in_len=4", "data.out_len=4", "data.batch_size=4", "data.crops_per_window=2",
    "data.split.block_hours=2", "data.split.val_every=2",
    "train.lr=0.005", "train.optimizer=adam",
    "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "run.max_failures=1",
]


@pytest.fixture(scope="module")
def s3_env(s3_server, monkeypatch_module):
    for k, v in s3_server.env().items():
        monkeypatch_module.setenv(k, v)
    url = s3_server.url("knmi") + ".zarr"
    ingest(SAMPLE_READER, sample_files(), url, s3_server.storage_options(), parallel=False, progress=False)
    return s3_server, url


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as srv:
        yield srv


def _cfg(name, archive, storage, uri, *extra):
    return load_config(None, [f"name={name}", f"data.archive={archive}", f"run.storage_path={storage}",
                              f"tracking.uri={uri}", *TINY, *extra])


def _history(uri, run_id, key="val_loss"):
    import mlflow

    return sorted((m.step, m.value) for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key))


def test_train_on_s3_then_resume_with_fresh_driver(s3_env, mlflow_server, ray_local, tmp_path):
    server, archive = s3_env
    storage = f"s3://{server.bucket}/runs"
    # blocks of 2 h: train, val, train, test (the last block: the driver's final report scores it)
    cfg = _cfg("it-resume", archive, storage, mlflow_server.uri, "train.epochs=3", "data.loader=stream",
               "data.split.test_every=4")
    out = run_training(cfg, tmp_path, progress=False)
    hist = _history(mlflow_server.uri, out.run_id)
    assert [s for s, _ in hist] == [1, 2, 3]
    assert hist[-1][1] < hist[0][1], f"validation loss did not fall: {hist}"
    assert out.checkpoint and out.checkpoint.startswith(f"{server.bucket}/runs/it-resume/")
    objs = server._client().list_objects_v2(Bucket=server.bucket, Prefix="runs/it-resume/")
    assert any(o["Key"].endswith("checkpoint.pt") for o in objs.get("Contents", []))

    # a fresh driver with the same command (2 more epochs): same Ray run, same MLflow run
    cfg2 = _cfg("it-resume", archive, storage, mlflow_server.uri, "train.epochs=5", "data.loader=stream",
                "data.split.test_every=4")
    out2 = run_training(cfg2, tmp_path, progress=False)
    assert out2.run_id == out.run_id
    assert [s for s, _ in _history(mlflow_server.uri, out.run_id)] == [1, 2, 3, 4, 5]
    assert out2.metrics["epoch"] == 5
    # the test split, scored once at the end with the best checkpoint, the same names as training's val_*
    assert np.isfinite(out2.metrics["test_mse"]) and "test_persistence_mse" in out2.metrics
    assert [v for _, v in _history(mlflow_server.uri, out.run_id, "test_mse")][-1] == pytest.approx(out2.metrics["test_mse"])


def _train_workers():
    procs = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RayTrainWorker" in text:
            procs.append(p)
    return procs


def test_worker_killed_mid_run_completes_from_checkpoint(s3_env, mlflow_server, ray_local, tmp_path):
    server, archive = s3_env
    cfg = _cfg("it-kill", archive, str(tmp_path / "runs"), mlflow_server.uri, "train.epochs=4")
    result: dict = {}

    def target():
        try:
            result["out"] = run_training(cfg, tmp_path, progress=False)
        except BaseException as err:  # noqa: BLE001 - reported below
            result["err"] = err

    th = threading.Thread(target=target)
    th.start()
    deadline = time.time() + 240
    killed = None
    while time.time() < deadline and th.is_alive():
        done = list((tmp_path / "runs" / "it-kill").glob("checkpoint_*"))
        workers = _train_workers()
        if done and len(workers) >= 2:
            killed = workers[-1]
            killed.kill()
            break
        time.sleep(0.5)
    th.join(timeout=400)
    assert "err" not in result, result.get("err")
    assert killed is not None, "never saw a checkpoint and two live train workers"
    out = result["out"]
    assert out.metrics["epoch"] == 4
    # resumed, not restarted: every epoch logged exactly once, and the step counter continued
    steps = [s for s, _ in _history(mlflow_server.uri, out.run_id)]
    assert steps == [1, 2, 3, 4], steps
    counter = [v for _, v in _history(mlflow_server.uri, out.run_id, "step")]
    assert len(counter) == 4 and counter == sorted(counter) and len(set(counter)) == 4, counter
    per_epoch = counter[0]
    assert counter == [per_epoch * k for k in (1, 2, 3, 4)], counter


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.input_kernel=[4, 4]", "odd"),
        ("data.in_len=0", "data.in_len"),
        ("model.hidden=[-8, 8]", "positive"),
        ("model.hiddn=[8]", "unknown key"),
    ],
)
def test_bad_config_fails_before_cluster_work(override, needle):
    with pytest.raises(UserError, match=needle):
        load_config(None, [override])


def test_missing_archive_and_unreachable_tracking_fail_fast(tmp_path):
    from convlstm_dist.train.driver import preflight

    cfg = load_config(None, [f"data.archive={tmp_path / 'nope.zarr'}", "tracking.enabled=false"])
    with pytest.raises(UserError, match="does not exist"):
        preflight(cfg, tmp_path)
    cfg = load_config(None, ["tracking.uri=http://127.0.0.1:9"])
    t0 = time.time()
    with pytest.raises(UserError, match="unreachable"):
        preflight(cfg, tmp_path)
    assert time.time() - t0 < 10


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(ray_local, tmp_path,
                                                                                     monkeypatch):
    ingest(SAMPLE_READER, sample_files(), str(tmp_path / "archive.zarr"), parallel=False, progress=False)
    monkeypatch.setenv("CONVLSTM_DIST_FAULT_NAN_AT", "1:2")  # the third batch of the second epoch
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg("it-nan", str(tmp_path / "archive.zarr"), str(tmp_path / "runs"), uri, "train.epochs=3",
               "data.crops_per_window=4")
    out = run_training(cfg, tmp_path, progress=False)
    assert out.stopped and re.search(r"epoch 1 step \d+", out.stopped), out.stopped
    assert out.checkpoint is not None and out.metrics["epoch"] == 1  # the epoch-1 checkpoint survives
    import mlflow

    run = mlflow.MlflowClient(uri).get_run(out.run_id)
    assert run.info.status == "FAILED" and "epoch 1 step" in run.data.tags["convlstm_dist.stopped"]
