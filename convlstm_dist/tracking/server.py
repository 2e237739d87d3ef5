"""A local MLflow tracking server on loopback: used by ``convlstm-dist ui`` and by integration tests.

The server stores runs in ``sqlite:///WORKDIR/mlflow.db`` and artifacts under ``WORKDIR/mlartifacts``
and proxies artifact traffic (clients need only the tracking URI). It binds 127.0.0.1 only, runs one
worker and has MLflow's job execution off: ~5 s to ``/health`` and ~0.5 GiB instead of ~14 s and
2.4 GiB with the defaults (see STACK.md). On a loaded machine start-up takes much longer (over 60 s
seen on a busy 2-core box), so ``start()`` polls ``/health`` for up to 240 s by default
(``CONVLSTM_DIST_MLFLOW_STARTUP_S`` overrides) and fails at once, with the server's log tail, if
the process dies first.

    with MlflowServer("workdir") as srv:
        mlflow.set_tracking_uri(srv.uri)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from convlstm_dist.addresses import LOOPBACK as HOST, free_port
from convlstm_dist.errors import UserError

STARTUP_TIMEOUT_ENV = "CONVLSTM_DIST_MLFLOW_STARTUP_S"
DEFAULT_STARTUP_TIMEOUT_S = 240.0
LOG_TAIL_BYTES = 3000


def default_startup_timeout_s() -> float:
    """Seconds to wait for ``/health``: ``$CONVLSTM_DIST_MLFLOW_STARTUP_S`` or 240."""
    raw = os.environ.get(STARTUP_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_STARTUP_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{STARTUP_TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


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

    def __init__(self, workdir_or_paths, port: int | None = None, *, startup_timeout_s: float | None = None,
                 log_path: str | os.PathLike | None = None, extra_env: dict[str, str] | None = None):
        if isinstance(workdir_or_paths, (tuple, list)):
            self.backend_store_uri, self.artifacts_destination = (str(x) for x in workdir_or_paths)
            self.workdir = None
        else:
            self.workdir = Path(workdir_or_paths).resolve()
            self.backend_store_uri = f"sqlite:///{self.workdir / 'mlflow.db'}"
            self.artifacts_destination = str(self.workdir / "mlartifacts")
        self.port = port
        self.startup_timeout_s = startup_timeout_s  # None: default_startup_timeout_s() at start()
        self.log_path = Path(log_path) if log_path else None
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._log_start = 0

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
        timeout_s = self.startup_timeout_s if self.startup_timeout_s is not None else default_startup_timeout_s()
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a+b")
        else:  # an unnamed file, kept only to quote its tail if start-up fails
            self._log = tempfile.TemporaryFile(prefix="mlflow-server-")
        self._log_start = os.fstat(self._log.fileno()).st_size
        out = self._log
        # own process group: the gunicorn/uvicorn children go away with it in stop()
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy(timeout_s)
        except BaseException:  # incl. KeyboardInterrupt while waiting: leave no server behind
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise UserError(f"mlflow server exited with code {self.proc.returncode} before answering "
                                f"{self.uri}/health{self._log_hint()}")
            if self.healthy(timeout_s=min(5.0, max(1.0, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.25)
        raise UserError(f"mlflow server did not answer {self.uri}/health within {time.monotonic() - t0:.0f} s "
                        f"(limit {timeout_s:.0f} s, set {STARTUP_TIMEOUT_ENV} to wait longer){self._log_hint()}")

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
        """The end of what the server printed since start() (while it is running or just failed)."""
        if self._log is None:
            return ""
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        start = max(self._log_start, size - max_bytes)
        return os.pread(fd, size - start, start).decode("utf-8", "replace")

    def _log_hint(self) -> str:
        where = f"; log: {self.log_path}" if self.log_path else ""
        tail = self.log_tail().strip()
        return f"{where}\n--- server output (tail) ---\n{tail}" if tail else f"{where}; the server printed nothing"

    def healthy(self, timeout_s: float = 2.0) -> bool:
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
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as the server itself sets it: the
    closed connections of a server just stopped (TIME_WAIT) do not make its port look taken, so a
    restart on the same port works at once; a listening socket still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True
