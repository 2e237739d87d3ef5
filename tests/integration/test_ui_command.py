"""`convlstm-dist ui` as a real subprocess: SIGTERM / SIGHUP to the command stop its MLflow server
(which runs in its own process group, so it used to outlive a killed `ui`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.integration
READY_S = 180.0  # MLflow start-up: ~6 s on a quiet machine, over 40 s on a loaded 2-core one
GONE_S = 30.0  # stop(): SIGTERM to the group, SIGKILL after 10 s


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(d))
    return pids


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_ui_signal_stops_the_mlflow_server(tmp_path, sig):
    from convlstm_dist.addresses import free_port

    port = free_port()
    log = open(tmp_path / "ui.out", "w+")
    ui = subprocess.Popen([sys.executable, "-m", "convlstm_dist.cli", "ui", "--workdir", str(tmp_path / "wd"),
                           "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server_groups: set[int] = set()
    try:
        t0 = time.monotonic()
        while not _health(port):
            assert ui.poll() is None, f"ui exited with {ui.returncode}: {(tmp_path / 'ui.out').read_text()}"
            assert time.monotonic() - t0 < READY_S, f"MLflow not up within {READY_S:.0f} s"
            server_groups.update(_children(ui.pid))
            time.sleep(0.5)
        server_groups.update(_children(ui.pid))
        print(f"mlflow up after {time.monotonic() - t0:.1f} s")
        assert server_groups and _group(min(server_groups)), "found no MLflow server process group"
        # the server leads its own group (start_new_session): the signal reaches only `ui`
        ui.send_signal(sig)
        t1 = time.monotonic()
        while (_health(port) or any(_group(g) for g in server_groups)) and time.monotonic() - t1 < GONE_S:
            time.sleep(0.2)
        print(f"server gone {time.monotonic() - t1:.1f} s after {sig.name}")
        assert not _health(port), f"MLflow still answers on port {port} {GONE_S:.0f} s after {sig.name} to ui"
        left = {g: _group(g) for g in server_groups if _group(g)}
        assert not left, f"MLflow server processes still running after {sig.name} to ui: {left}"
        assert ui.wait(GONE_S) == 128 + sig
        assert f"stopped the MLflow server ({sig.name})" in (tmp_path / "ui.out").read_text()
    finally:
        if ui.poll() is None:
            ui.kill()
            ui.wait()
        for g in server_groups:  # never leave a server behind, even when the test fails
            if _group(g):
                try:
                    os.killpg(g, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        log.close()
