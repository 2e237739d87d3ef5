"""convlstm_dist.ray_session: the Ray address policy (no real Ray: ``ray.init`` is replaced), the tracking-URI
precedence, Ray's S3 storage, and that no other module calls ``ray.init`` itself."""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path

import pytest

from convlstm_dist import addresses
from convlstm_dist import ray_session as runtime
from convlstm_dist.data import storage

REPO = Path(__file__).resolve().parents[2]
RUNTIME_MODULE = "convlstm_dist/ray_session.py"


@pytest.fixture
def fake_ray(monkeypatch):
    """``ray.init`` records its arguments (and the GCS-port variable at call time); Ray is never started."""
    import ray

    calls: list[dict] = []
    state = {"up": False}

    def init(**kw):
        from convlstm_dist.ray_internals import gcs_port_env_var

        calls.append({**kw, "_gcs_port_env": os.environ.get(gcs_port_env_var())})
        state["up"] = True

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: state["up"])
    for k in ("RAY_JOB_ID", "RAY_ADDRESS", *runtime.FORWARDED_ENV_VARS):
        monkeypatch.delenv(k, raising=False)
    return calls


def test_local_start_is_local_quiet_and_owned(fake_ray, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert runtime.start_or_join_ray(num_cpus=3, oom_retries=1) is True
    (kw,) = fake_ray
    assert kw["address"] == "local"  # never a bare ray.init(): it may attach to a stale cluster
    assert kw["include_dashboard"] is False and kw["log_to_driver"] is False
    assert kw["logging_level"] == logging.ERROR
    assert kw["num_cpus"] == 3 and kw["_system_config"] == {"task_oom_retries": 1}
    assert kw["runtime_env"] == {"env_vars": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                                              "AWS_REGION": "eu-west-1"}}
    assert runtime.start_or_join_ray() is False  # already connected: nothing more
    assert len(fake_ray) == 1


def test_local_start_without_forwarded_env_has_no_runtime_env(fake_ray):
    runtime.start_or_join_ray()
    (kw,) = fake_ray
    assert kw["runtime_env"] is None and "num_cpus" not in kw and "_system_config" not in kw


def test_explicit_address_joins_it(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    assert runtime.start_or_join_ray("10.0.0.5:6379", num_cpus=4, oom_retries=1) is False
    (kw,) = fake_ray
    assert kw["address"] == "10.0.0.5:6379"
    assert kw["runtime_env"] == {"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}}
    # what Ray refuses when it joins an existing cluster is not passed
    assert not {"num_cpus", "_system_config", "include_dashboard"} & set(kw)


@pytest.mark.parametrize("var,value", [("RAY_JOB_ID", "02000000"), ("RAY_ADDRESS", "127.0.0.1:6379")])
def test_inside_a_job_joins_auto(fake_ray, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://x")
    assert runtime.start_or_join_ray("10.0.0.5:6379", num_cpus=2, oom_retries=1) is False
    (kw,) = fake_ray
    # the job's runtime env applies: no runtime_env of our own, nothing a join refuses
    assert kw == {"address": "auto", "log_to_driver": False, "logging_level": logging.ERROR, "_gcs_port_env": None}


def test_pinned_gcs_port_is_handed_to_workers(fake_ray):
    from convlstm_dist.ray_internals import gcs_port_env_var

    runtime.start_or_join_ray(dashboard=True, log_to_driver=True, logging_level=logging.INFO, pin_gcs_port=True)
    (kw,) = fake_ray
    port = kw["_gcs_port_env"]
    assert port and port.isdigit()  # set while ray.init ran ...
    assert gcs_port_env_var() not in os.environ  # ... and removed afterwards
    assert kw["runtime_env"]["env_vars"]["RAY_ADDRESS"].endswith(f":{port}")
    assert kw["include_dashboard"] is True and kw["log_to_driver"] is True and kw["logging_level"] == logging.INFO


def test_workdir_gets_ray_logs_link(fake_ray, monkeypatch, tmp_path):
    import convlstm_dist.ray_internals as rr

    session = tmp_path / "session" / "logs"
    session.mkdir(parents=True)
    monkeypatch.setattr(rr, "session_log_dir", lambda: str(session))
    runtime.start_or_join_ray(workdir=tmp_path / "wd")
    link = tmp_path / "wd" / "logs" / "ray"
    assert link.is_symlink() and link.resolve() == session.resolve()


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert addresses.resolve_tracking_uri("http://explicit:5000", tmp_path) == "http://explicit:5000"
    assert addresses.resolve_tracking_uri(None, tmp_path) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert addresses.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    assert addresses.resolve_tracking_uri(None, "wd") == f"sqlite:///{tmp_path.resolve() / 'wd' / 'mlflow.db'}"


def test_callers_share_the_tracking_uri(monkeypatch, tmp_path):
    from convlstm_dist.nowcast import nowcaster as inference
    from convlstm_dist.config import load_config
    from convlstm_dist.train.driver import resolve

    assert inference.resolve_tracking_uri is addresses.resolve_tracking_uri
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(str(REPO / "convlstm_dist" / "recipes" / "demo.yaml"), [])
    assert resolve(cfg, tmp_path).tracking_uri == addresses.resolve_tracking_uri(None, tmp_path)


def test_ray_storage_local_and_s3(monkeypatch, tmp_path):
    path, fs = storage.ray_storage(str(tmp_path / "runs"))
    assert fs is None and Path(path).is_dir()
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    path, fs = storage.ray_storage("s3://bucket/prefix/runs")
    assert path == "bucket/prefix/runs"
    assert type(fs).__name__ == "S3FileSystem" and fs.region == "eu-central-1"


def _ray_init_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray":
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: ray.init(...)")
        elif isinstance(node, ast.ImportFrom) and node.module == "ray" and any(a.name == "init" for a in node.names):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: from ray import init")
    return found


def test_only_the_runtime_module_calls_ray_init():
    bad = [hit for f in sorted((REPO / "convlstm_dist").rglob("*.py"))
           if f.relative_to(REPO).as_posix() != RUNTIME_MODULE for hit in _ray_init_calls(f)]
    assert not bad, "start or join Ray with convlstm_dist.ray_session.start_or_join_ray:\n" + "\n".join(bad)
    assert _ray_init_calls(REPO / RUNTIME_MODULE), "the walker no longer sees runtime's own ray.init"


def test_job_api_address_in_env_starts_local_ray(fake_ray, monkeypatch):
    """``RAY_ADDRESS=http://...`` (the job API, exported for ``ray job submit``) is not a cluster to join:
    a local command starts its own Ray and its workers do not inherit the http address."""
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert runtime.in_ray_job() is False
    assert runtime.start_or_join_ray() is True
    (kw,) = fake_ray
    assert kw["address"] == "local"
    assert "RAY_ADDRESS" not in os.environ


def test_cluster_address_in_env_joins(fake_ray, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert runtime.in_ray_job() is True
    assert runtime.start_or_join_ray() is False
    (kw,) = fake_ray
    assert kw["address"] == "auto"
