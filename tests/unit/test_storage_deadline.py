"""S3 endpoints that never answer or refuse: a clear one-line error within seconds, no noise at exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from convlstm_dist.data import storage
from convlstm_dist.errors import UserError


class SilentServer:
    """Accepts TCP connections on loopback and never answers (a hung S3 endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except (socket.timeout, OSError):
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self.accepted:
            c.close()
        self.sock.close()


@pytest.fixture
def silent_endpoint():
    with SilentServer() as srv:
        yield f"http://127.0.0.1:{srv.port}", srv


@pytest.fixture
def refused_endpoint():
    """A bound port with no listener: connections are refused at once."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="AKIATEST", AWS_SECRET_ACCESS_KEY="secret-test-value", AWS_REGION="us-east-1",
               **extra)
    return env


def test_archive_info_on_a_silent_endpoint_fails_within_seconds(silent_endpoint):
    endpoint, srv = silent_endpoint
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "archive-info", "s3://bucket/x.zarr",
                        "--endpoint-url", endpoint], env=_env(), capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    assert took < 15, f"took {took:.1f} s"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert endpoint in lines[0] and "did not answer" in lines[0] and "s3://bucket/x.zarr" in lines[0]
    assert srv.accepted, "the client never connected: the test did not exercise the silent endpoint"


def test_exists_deadline_is_configurable(silent_endpoint, monkeypatch):
    endpoint, _ = silent_endpoint
    monkeypatch.setenv(storage.DEADLINE_ENV, "2")
    opts = {"key": "a", "secret": "b", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"did not answer within 2 s"):
        storage.exists("s3://bucket/y.zarr", opts)
    assert time.monotonic() - t0 < 6


def test_no_exception_ignored_noise_after_a_refused_endpoint(refused_endpoint):
    """zarr's metadata open against a refused endpoint leaves sibling requests in flight; destroyed at
    exit they printed 'Exception ignored in: <coroutine StorePath.get>' tracebacks after the clean message."""
    script = (
        "import sys\n"
        "import convlstm_dist.data.storage as st\n"
        "st.exists = lambda *a, **k: True  # straight to zarr's open, as evaluate and nowcast do\n"
        "from convlstm_dist.cli import main\n"
        f"sys.exit(main(['archive-info', 's3://bucket/x.zarr', '--endpoint-url', '{refused_endpoint}']))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "cannot reach the storage endpoint" in p.stderr
    assert "Exception ignored" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
