"""The local two-node Ray cluster of ``cluster/local_cluster.sh`` (and its S3 server) for tests.

    with LocalCluster() as lc:          # start (private state dir, free ports), stop at exit
        lc.s3_start()                   # SeaweedFS on loopback, credentials file
        lc.sh("source $LOCAL_RAY_DIR/env && ray job list")
        lc.pids()                       # every process of the cluster, found independently of the script

``pids()`` does not trust the script's own bookkeeping: it takes every process whose command line
names the state dir or the head's GCS port, or that holds a file open under the state dir, plus
their descendants (so a test can prove that ``stop`` ended all of them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "local_cluster.sh"
BIN = Path(sys.executable).parent  # the venv: cluster, job drivers and CLI all use it


def readme_blocks(path: Path = REPO / "cluster" / "README.md") -> dict[str, str]:
    """The bash blocks of cluster/README.md marked ``<!-- quickstart:NAME -->``, by NAME."""
    import re

    text = path.read_text()
    return {m.group(1): m.group(2) for m in
            re.finditer(r"<!-- quickstart:(\w+) -->\s*```bash\n(.*?)```", text, re.S)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self):
        # short path: Ray's unix sockets live under the temp dir (108-byte limit)
        self.state = tempfile.mkdtemp(prefix="lc-", dir="/tmp")
        self.gcs_port = free_port()
        self.dash_port = free_port()
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "BUCKET"):
            env.pop(k, None)
        env.update(LOCAL_RAY_DIR=self.state, LOCAL_RAY_PORT=str(self.gcs_port),
                   LOCAL_RAY_DASHBOARD_PORT=str(self.dash_port), PYTHON=sys.executable,
                   PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(REPO))
        self.env = env
        self.start_s = self.stop_s = None

    # ------------------------------------------------------------------ running the script / shells
    def script(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    def sh(self, command: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        """``command`` in bash at the repo root with the cluster's settings (``source $LOCAL_RAY_DIR/env``
        is up to the command, as in the README)."""
        return subprocess.run(["bash", "-ec", command], env={**self.env, **(env or {})}, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def client_env(self) -> dict:
        """The environment after ``source $LOCAL_RAY_DIR/env`` (as a dict)."""
        out = self.sh('source "$LOCAL_RAY_DIR/env" && env -0', timeout=60)
        assert out.returncode == 0, out.stderr
        return dict(line.split("=", 1) for line in out.stdout.split("\0") if "=" in line)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "LocalCluster":
        t0 = time.monotonic()
        out = self.script("start")
        self.start_s = time.monotonic() - t0
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"local_cluster.sh start failed:\n{out.stdout}\n{out.stderr}")
        return self

    def s3_start(self) -> None:
        out = self.script("s3", "start")
        assert out.returncode == 0, out.stdout + out.stderr

    def stop(self) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        out = self.script("stop", timeout=180)
        self.stop_s = time.monotonic() - t0
        return out

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        left = self.pids()
        for pid in left:  # a failed stop must not leave this test's processes behind
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        self.cleanup()

    # ------------------------------------------------------------------ inspection
    @property
    def secret_key(self) -> str:
        import configparser

        c = configparser.ConfigParser(interpolation=None)
        c.read(Path(self.state, "s3", "credentials"))
        return c["default"]["aws_secret_access_key"]

    def pids(self) -> set[int]:
        """Every live process of this cluster (see the module docstring)."""
        marks = (self.state.rstrip("/") + "/", f":{self.gcs_port}")
        roots: set[int] = set()
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                if p.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                hit = any(m in cmd for m in marks)
                if not hit:
                    hit = any(f.path.startswith(marks[0]) for f in p.open_files())
            except psutil.Error:
                continue
            if hit and p.pid != os.getpid():
                roots.add(p.pid)
        out = set(roots)
        for pid in roots:
            try:
                out |= {c.pid for c in psutil.Process(pid).children(recursive=True)
                        if c.status() != psutil.STATUS_ZOMBIE}
            except psutil.Error:
                pass
        return out

    def alive_nodes(self) -> int:
        """Live nodes as the job API reports them."""
        import json
        import urllib.request

        token = Path(self.state, "auth_token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{self.dash_port}/nodes?view=summary",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            nodes = json.load(r)["data"]["summary"]
        return sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE")

    def listeners(self) -> list[tuple[str, int, int, str]]:
        """(address, port, pid, process) of every listening socket of the cluster's processes."""
        pids = self.pids()
        rows = []
        for c in psutil.net_connections("inet"):
            if c.status == psutil.CONN_LISTEN and c.pid in pids:
                try:
                    proc = psutil.Process(c.pid)
                    name = " ".join(proc.cmdline())[:160] or proc.name()
                except psutil.Error:
                    continue
                rows.append((c.laddr.ip, c.laddr.port, c.pid, name))
        return sorted(rows)
