"""Job outputs (reports, error logs) are copied beside the run's checkpoints when those are remote:
on a cluster the driver's workdir is a folder of the head node."""

from __future__ import annotations

from convlstm_dist.train.report import publish_outputs


def test_reports_and_logs_go_to_the_run_folder_of_remote_storage(tmp_path):
    import fsspec

    rep = tmp_path / "report-abc"
    rep.mkdir()
    (rep / "skill.csv").write_text("lead,mse\n1,0.1\n")
    (rep / "forecast.png").write_bytes(b"\x89PNG")
    log = tmp_path / "smoke-err.log"
    log.write_text("traceback")
    said: list[str] = []
    url = publish_outputs(rep, "memory://bucket/runs", "smoke", "reports", say=said.append)
    assert url == "memory://bucket/runs/smoke/reports/report-abc"
    fs = fsspec.filesystem("memory")
    assert fs.cat("/bucket/runs/smoke/reports/report-abc/skill.csv") == b"lead,mse\n1,0.1\n"
    assert fs.cat("/bucket/runs/smoke/reports/report-abc/forecast.png") == b"\x89PNG"
    assert publish_outputs(log, "memory://bucket/runs", "smoke", "logs") == "memory://bucket/runs/smoke/logs/smoke-err.log"
    assert fs.cat("/bucket/runs/smoke/logs/smoke-err.log") == b"traceback"
    assert said == [f"[convlstm-dist] reports copied to {url}"]


def test_local_storage_keeps_outputs_where_they_are(tmp_path):
    assert publish_outputs(tmp_path, str(tmp_path / "runs"), "smoke", "reports") is None
    assert not (tmp_path / "runs").exists()


def test_a_job_is_told_which_outputs_stay_on_the_head(monkeypatch, tmp_path):
    from convlstm_dist.config import Config
    from convlstm_dist.train.driver import RAY_JOB_ENV, Resolved, job_output_warning

    cfg = Config()
    local = Resolved(tmp_path, "r", str(tmp_path / "runs"), f"sqlite:///{tmp_path}/mlflow.db", "r")
    remote = Resolved(tmp_path, "r", "s3://b/runs", "http://127.0.0.1:5000", "r")
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    assert job_output_warning(cfg, local) is None  # not a job: the workdir is the user's
    monkeypatch.setenv(RAY_JOB_ENV, '{"runtime_env": {}}')
    msg = job_output_warning(cfg, local)
    assert "MLflow runs (set MLFLOW_TRACKING_URI" in msg and "run.storage_path=s3://" in msg and str(tmp_path) in msg
    assert job_output_warning(cfg, remote) is None
    monkeypatch.chdir(tmp_path.parent)  # the default --workdir inside the job's working dir
    assert "temporary working dir" in job_output_warning(cfg, local)
