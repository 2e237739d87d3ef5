"""Guards of a training run (issue 16): reported metric names, resource preflight, write probe,
and the one-line message of a UserError raised inside a Ray Train worker."""

from __future__ import annotations

import contextlib

import ast
import inspect
import os
from pathlib import Path

import pytest
import torch

from convlstm_dist.errors import UserError
from convlstm_dist.train import fit, guards, validation
from convlstm_dist.train.metrics import check_metric, metric_problem, val_metrics
from convlstm_dist.vocabulary import TRAIN_METRICS

# --------------------------------------------------------------------------- metric names


@pytest.mark.parametrize("quantity, loss", [("rain_norm", "mse"), ("intensity", "bce")])
def test_declared_val_metrics_are_what_the_accumulator_reports(quantity, loss):
    acc = validation.ValAccumulator(out_len=2, quantity=quantity, loss_name=loss)
    y = torch.rand(2, 2, 1, 4, 4)
    acc.add(torch.rand(2, 2, 1, 4, 4), y, torch.rand(2, 3, 1, 4, 4), torch.ones_like(y))
    assert set(acc.metrics()) == set(val_metrics(quantity))


def test_declared_train_metrics_are_what_the_loop_reports():
    """The keys of the per-epoch ``metrics`` dict of the training loop (literal + assignments)."""
    tree = ast.parse(inspect.getsource(fit.epoch_metrics))
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "metrics" for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) \
                and getattr(node.targets[0].value, "id", None) == "metrics":
            keys.add(node.targets[0].slice.value)
    assert keys == set(TRAIN_METRICS)


def test_metric_checks_name_the_key_and_the_valid_names():
    assert metric_problem("val_loss") is None and metric_problem("val_csi_0.5mmh", "rain_norm") is None
    with pytest.raises(UserError, match=r"search.metric: 'val_csi2mmh' .*did you mean 'val_csi_2mmh'.*valid names"):
        check_metric("val_csi2mmh", "search.metric")
    with pytest.raises(UserError, match="only reported for Moving MNIST"):
        check_metric("val_cross_entropy", "run.checkpoint_metric", "rain_norm")


# --------------------------------------------------------------------------- resources


def test_gpus_asked_on_a_cluster_without_gpus():
    msg = guards.resource_problem({"CPU": 0.5, "GPU": 1.0}, 2, {"CPU": 2.0}, {"CPU": 2.0})
    assert msg == ("scaling asks for 2 GPU (2 worker(s) x 1 GPU), but the Ray cluster has 2 CPU and 0 GPU: "
                   "set scaling.use_gpu=false or use a cluster with GPUs")
    assert "\n" not in msg


def test_cpu_limits_include_the_data_reads_and_the_largest_node():
    assert guards.resource_problem({"CPU": 0.5}, 2, {"CPU": 2.0}, {"CPU": 2.0}) is None
    # 2 workers x 1 CPU on 2 CPUs: nothing left for Ray Data's read tasks -> waits forever
    msg = guards.resource_problem({"CPU": 1.0}, 2, {"CPU": 2.0}, {"CPU": 2.0})
    assert msg and "Ray Data" in msg and "has 2 CPU" in msg
    # enough GPUs in total, but no single node has 2
    msg = guards.resource_problem({"CPU": 1.0, "GPU": 2.0}, 2, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 4.0, "GPU": 1.0})
    assert msg and "no node" in msg and "2 GPU" in msg
    assert guards.resource_problem({"CPU": 1.0, "GPU": 1.0}, 4, {"CPU": 8.0, "GPU": 4.0}, {"CPU": 4.0, "GPU": 2.0}) \
        is None


# --------------------------------------------------------------------------- storage write probe


def test_local_storage_probe_writes_and_removes(tmp_path):
    guards.check_storage_writable(str(tmp_path / "runs"))
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_local_storage_probe_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"cannot write checkpoints under run.storage_path .*ro"):
            guards.check_storage_writable(str(ro / "runs"))
    finally:
        ro.chmod(0o755)


def test_local_storage_probe_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(UserError, match="cannot write checkpoints under run.storage_path"):
        guards.check_storage_writable(str(tmp_path / "runs"))


# --------------------------------------------------------------------------- worker errors


def _worker_failure(err: BaseException, shape: str = "ray_data"):
    """What Ray Train 2.60 raises from fit() when rank 1's train loop failed with ``err``.

    ``ray_data`` (as observed with a deleted archive): the worker's exception is the
    ``RayTaskError(UserError)`` of the ``SplitCoordinator.get()`` actor call, whose cause is the
    read task's UserError, its message extended by Ray Data's retry context.
    ``user_code``: the train loop raised directly (``UserExceptionWithTraceback``)."""
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    if shape == "ray_data":
        err.args = (f"{err.args[0]}\nFailed to apply UDF transform after 1/1 attempts (total backoff 0.0s).\n"
                    "To change retry attempts, backoff, ... if you believe this to be transient.",)
        failed = RayTaskError("SplitCoordinator.get", "Traceback (most recent call last):\n" + "x" * 2000,
                              err).as_instanceof_cause()  # isinstance(UserError) too; str() = the remote trace
    else:
        failed = UserExceptionWithTraceback(err, "Traceback (most recent call last):\n  File loop.py ...\n"
                                            + "x" * 2000 + f"\n{type(err).__name__}: {err}")
    ok = UserExceptionWithTraceback(RuntimeError("collective aborted"), "Traceback: rank 0 aborted")
    return WorkerGroupError("rank 0: aborted\nrank 1: " + str(failed), {0: ok, 1: failed})


@pytest.mark.parametrize("shape", ["ray_data", "user_code"])
def test_user_error_is_found_inside_ray_train_wrappers(tmp_path, shape):
    exc = _worker_failure(UserError("no archive at /data/a.zarr"), shape)
    found = guards.find_user_error(exc)
    assert found is not None
    err, rank = found
    assert type(err) is UserError and rank == 1

    user = guards.user_error_from_failure(exc, tmp_path / "logs", "run-a")
    msg = str(user)
    assert msg.startswith("no archive at /data/a.zarr (raised in Ray Train worker rank 1); full traceback in ")
    assert "\n" not in msg and len(msg) < 300
    log = Path(msg.rsplit("full traceback in ", 1)[1])
    assert log.parent == tmp_path / "logs" and log.name.startswith("run-a-")
    text = log.read_text()
    assert "WorkerGroupError" in text and "worker rank 1" in text and "x" * 2000 in text


def test_other_failures_are_left_alone(tmp_path):
    exc = _worker_failure(ValueError("a bug"))
    assert guards.find_user_error(exc) is None
    assert guards.user_error_from_failure(exc, tmp_path, "r") is None
    chained = RuntimeError("outer")
    chained.__cause__ = UserError("inner message")
    assert str(guards.find_user_error(chained)[0]) == "inner message"


# --------------------------------------------------------------------------- resuming with another model


def test_resume_with_another_architecture_is_one_clear_line(tmp_path):
    from convlstm_dist.config import load_config
    from convlstm_dist.train.local import train_local
    from synthetic import make_archive

    make_archive(tmp_path / "a.zarr", n=60, h=32, w=32)
    smoke = Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"
    base = [f"data.archive={tmp_path / 'a.zarr'}", "model.height=32", "model.width=32", "data.split.block_hours=1.0",
            "tracking.enabled=false", "train.epochs=1", "train.max_steps_per_epoch=1"]
    train_local(load_config(smoke, base), tmp_path, device="cpu", progress=False)
    with pytest.raises(UserError) as err:  # same run name, wider layers: the checkpoint cannot load
        train_local(load_config(smoke, [*base, "model.hidden=[16, 16]", "train.epochs=2"]), tmp_path, device="cpu",
                    progress=False)
    msg = str(err.value)
    assert "run 'radar-smoke' cannot resume" in msg and "another architecture" in msg and "size mismatch" in msg
    assert "new run.name" in msg and "\n" not in msg


# --------------------------------------------------------------------------- shared storage on a cluster


def test_local_storage_on_a_multi_node_cluster_is_refused_with_an_s3_example():
    msg = guards.storage_problem("/tmp/runs", nodes=2)
    assert msg is not None
    assert "run.storage_path /tmp/runs" in msg and "2 nodes" in msg
    assert "--set run.storage_path=s3://" in msg
    assert guards.storage_problem("/tmp/runs", nodes=1, autoscaling=True) is not None  # can grow: refused too
    assert guards.storage_problem("/tmp/runs", nodes=1) is None  # one node: its disk is everyone's
    assert guards.storage_problem("s3://b/runs", nodes=5, autoscaling=True) is None
    assert guards.storage_problem("file:///tmp/runs", nodes=2) is not None  # still one node's disk


def _fake_cluster(monkeypatch, alive: int, autoscaler=None):
    import ray

    import convlstm_dist.ray_internals as rr

    nodes = [{"Alive": True, "Resources": {"CPU": 1.0}} for _ in range(alive)] + [{"Alive": False}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(rr, "autoscaler_max_resources", lambda: autoscaler)


def test_check_storage_shared_counts_live_nodes(monkeypatch):
    _fake_cluster(monkeypatch, alive=2)
    with pytest.raises(UserError, match=r"run.storage_path /x is a local folder, but the Ray cluster has 2 nodes"):
        guards.check_storage_shared("/x")
    guards.check_storage_shared("s3://bucket/runs")  # shared: fine
    _fake_cluster(monkeypatch, alive=1)
    guards.check_storage_shared("/x")  # a single node: fine
    _fake_cluster(monkeypatch, alive=1, autoscaler={"CPU": 64.0})
    with pytest.raises(UserError, match="autoscaler"):
        guards.check_storage_shared("/x")


def test_train_refuses_local_storage_on_a_cluster_before_anything_starts(monkeypatch, tmp_path):
    """``run_training`` on a 2-node cluster with a local ``run.storage_path``: UserError (exit 2 in the CLI)
    right after joining Ray, before the run's folder is pinned, an MLflow run is opened or a trainer built."""
    from convlstm_dist.config import load_config
    from convlstm_dist.train import driver

    cfg = load_config(str(Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"))
    res = driver.Resolved(tmp_path, "smoke", str(tmp_path / "runs"), None, "smoke")
    monkeypatch.setattr(driver, "preflight", lambda c, w: (res, object()))
    monkeypatch.setattr(driver, "ray_session", lambda *a, **k: contextlib.nullcontext(False))  # "joined" the cluster
    _fake_cluster(monkeypatch, alive=2)

    def must_not_run(*a, **k):
        raise AssertionError("reached past the storage guard")

    monkeypatch.setattr(driver, "pin_run", must_not_run)
    monkeypatch.setattr(driver, "build_trainer", must_not_run)
    with pytest.raises(UserError) as err:
        driver.run_training(cfg, tmp_path, progress=False)
    assert "run.storage_path" in str(err.value) and "s3://" in str(err.value)
    assert not (tmp_path / "runs" / "smoke").exists()
