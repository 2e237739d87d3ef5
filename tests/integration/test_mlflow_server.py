"""A real MLflow server on loopback (MlflowServer): log a run with a metric and a proxied artifact,
read them back over HTTP, stop the server and check the process is gone. Start-up readiness: a
server that dies fails at once with its output, a silent one fails at the (overridable) deadline,
and a slow one is waited for."""

from __future__ import annotations

import os
import sys
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


def _stand_in(script: str, **kw):
    """MlflowServer's start-up logic around a stand-in command (no mlflow import: fast, exact timing)."""
    from convlstm_dist.tracking.server import MlflowServer

    class StandIn(MlflowServer):
        def command(self):
            return [sys.executable, "-c", script.replace("PORT", str(self.port))]

    return StandIn(("sqlite:///unused.db", "unused"), **kw)


def test_dead_server_fails_at_once_with_its_output(tmp_path, monkeypatch):
    from convlstm_dist.errors import UserError

    monkeypatch.setenv("CONVLSTM_DIST_MLFLOW_STARTUP_S", "200")
    srv = _stand_in("import sys; print('boom: no such backend store'); sys.exit(3)")
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        srv.start()
    assert time.monotonic() - t0 < 30, "waited for the deadline although the server had died"
    assert "exited with code 3" in str(err.value) and "boom: no such backend store" in str(err.value)
    assert srv.proc is None


def test_silent_server_fails_at_the_overridable_deadline(tmp_path, monkeypatch):
    from convlstm_dist.errors import UserError

    monkeypatch.setenv("CONVLSTM_DIST_MLFLOW_STARTUP_S", "3")
    srv = _stand_in("import time; print('still importing', flush=True); time.sleep(600)",
                           log_path=tmp_path / "server.log")
    t0 = time.monotonic()
    with pytest.raises(UserError) as err:
        srv.start()
    took = time.monotonic() - t0
    msg = str(err.value)
    assert 3 <= took < 30, took
    assert "did not answer" in msg and "CONVLSTM_DIST_MLFLOW_STARTUP_S" in msg and "still importing" in msg
    assert str(tmp_path / "server.log") in msg and srv.proc is None  # the stand-in was stopped


def test_slow_server_is_waited_for(monkeypatch):
    """Health answers only after 4 s (a loaded machine): start() waits; the default deadline is 240 s."""
    from convlstm_dist.tracking import server as server_mod

    monkeypatch.delenv("CONVLSTM_DIST_MLFLOW_STARTUP_S", raising=False)
    assert server_mod.default_startup_timeout_s() == 240
    slow = ("import http.server, time; time.sleep(4)\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers(); self.wfile.write(b'OK')\n"
            "http.server.HTTPServer(('127.0.0.1', PORT), H).serve_forever()")
    srv = _stand_in(slow, startup_timeout_s=60)
    t0 = time.monotonic()
    with srv:
        assert time.monotonic() - t0 >= 4 and srv.healthy()
    assert srv.proc is None and not srv.healthy()


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
