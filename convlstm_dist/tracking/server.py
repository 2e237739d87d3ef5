"""A local MLflow tracking server on loopback: used by ``convlstm-dist ui`` and by integration tests.

The server stores runs in ``sqlite:///WORKDIR/mlflow.db`` and artifacts under ``WORKDIR/mlartifacts``
and proxies artifact traffic (clients need only the tracking URI). It binds 127.0.0.1 only, runs one
worker and has MLflow's job execution off: ~5 s to ``/health`` and ~0.5 GiB instead of ~14 s and
2.4 GiB with the defaults (see STACK.md).

    with MlflowServer("workdir") as srv:
        mlflow.set_tracking_uri(srv.uri)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _mlflow_executable() -> list[str]:
    exe = Path(sys.executable).with_name("mlflow")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "mlflow"]


class MlflowServer:
    """Start/stop an ``mlflow server`` subprocess bound to 127.0.0.1.

    ``workdir_or_paths`` is a folder (``mlflow.db`` and ``mlartifacts/`` inside it) or a pair
    ``(backend_store_uri, artifacts_destination)`` for anything else (e.g. Postgres + s3://).
    """

    def __init__(self, workdir_or_paths, port: int | None = None, *, startup_timeout_s: float = 60.0,
                 log_path: str | os.PathLike | None = None, extra_env: dict[str, str] | None = None):
        if isinstance(workdir_or_paths, (tuple, list)):
            self.backend_store_uri, self.artifacts_destination = (str(x) for x in workdir_or_paths)
            self.workdir = None
        else:
            self.workdir = Path(workdir_or_paths).resolve()
            self.backend_store_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
            self.artifacts_destination = str(self.workdir / "mlartifacts")
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else None
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise RuntimeError("MlflowServer has no port yet: call start() first")
        return f"http://{HOST}:{self.port}"

    def command(self) -> list[str]:
        return _mlflow_executable() + [
            "server", "--host", HOST, "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
        ]

    def start(self) -> "MlflowServer":
        from convlstm_dist.errors import UserError

        if self.proc is not None:
            return self
        if self.workdir is not None:
            (self.workdir / "mlartifacts").mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        elif not _port_free(self.port):
            raise UserError(f"port {self.port} on {HOST} is already in use; pick another with --port")
        env = dict(os.environ)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        else:
            out = subprocess.DEVNULL
        # own process group: the gunicorn/uvicorn children go away with it in stop()
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:  # incl. KeyboardInterrupt while waiting: leave no server behind
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        from convlstm_dist.errors import UserError

        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                hint = f" (log: {self.log_path})" if self.log_path else ""
                raise UserError(f"mlflow server exited with code {rc} before answering{hint}")
            if self.healthy():
                return
            time.sleep(0.25)
        raise UserError(f"mlflow server did not answer {self.uri}/health within {self.startup_timeout_s:.0f} s")

    def healthy(self, timeout_s: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=timeout_s) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
            try:  # workers of the group that outlived the leader
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            # leader gone; make sure no worker of its group survives
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._cleanup()

    def wait(self) -> int:
        """Block until the server exits (used by ``convlstm-dist ui``)."""
        if self.proc is None:
            return 0
        return self.proc.wait()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
