"""A real MLflow server on loopback (MlflowServer): log a run with a metric and a proxied artifact,
read them back over HTTP, stop the server and check the process is gone."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def test_server_logs_metric_and_proxied_artifact(tmp_path):
    from mlflow.tracking import MlflowClient

    from convlstm_dist.tracking.server import MlflowServer

    t0 = time.monotonic()
    srv = MlflowServer(tmp_path / "wd", log_path=tmp_path / "server.log")
    with srv:
        pid = srv.pid
        assert srv.uri.startswith("http://127.0.0.1:")
        print(f"mlflow server up in {time.monotonic() - t0:.1f} s at {srv.uri}")
        client = MlflowClient(tracking_uri=srv.uri)
        exp_id = client.create_experiment("server-test")
        exp = client.get_experiment(exp_id)
        # proxied artifacts: the client sees an mlflow-artifacts: URI, not a local path
        assert exp.artifact_location.startswith("mlflow-artifacts:"), exp.artifact_location
        run = client.create_run(exp_id, run_name="r1")
        rid = run.info.run_id
        for step, v in enumerate([0.9, 0.5, 0.25]):
            client.log_metric(rid, "val_loss", v, step=step)
        note = tmp_path / "note.txt"
        note.write_text("hello from the client\n")
        client.log_artifact(rid, str(note), artifact_path="notes")
        client.set_terminated(rid)

        got = client.get_run(rid)
        assert got.data.metrics["val_loss"] == 0.25
        assert [m.value for m in client.get_metric_history(rid, "val_loss")] == [0.9, 0.5, 0.25]
        assert [f.path for f in client.list_artifacts(rid, "notes")] == ["notes/note.txt"]
        back = client.download_artifacts(rid, "notes/note.txt", str(tmp_path / "dl"))
        assert open(back).read() == "hello from the client\n"
        # the bytes live in the server's artifact store, written by the server
        stored = list((tmp_path / "wd" / "mlartifacts").rglob("note.txt"))
        assert len(stored) == 1
    assert srv.proc is None
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "mlflow server process still running after stop()"
    assert not srv.healthy(), "something still answers on the server's port"
