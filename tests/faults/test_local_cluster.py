"""Scenario 7: the local cluster keeps to itself (cluster/local_cluster.sh, two nodes + SeaweedFS).

* Fault: a user stops the cluster (``local_cluster.sh stop``). Must hold: no process it started
  survives (the Ray Client server and the dashboard's subprocesses included), found independently of
  the script's own bookkeeping.
* Listeners: the job API / dashboard and the S3 server bind loopback only; every other listener
  belongs to a Ray process that cluster/README.md names as one Ray cannot keep on loopback.
* Secrets: a job that writes to S3 gets the key through a credentials file passed by path; the secret
  key appears nowhere in ``ray job list``, the job API (what the dashboard shows) or any log.
* A lost node is added back with ``local_cluster.sh add-node``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_cluster import REPO, LocalCluster  # noqa: E402
from fixtures_s3 import find_weed  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# Ray processes that listen beyond loopback in Ray 2.60 whatever --node-ip-address says; each is named
# in cluster/README.md ("What listens where").
RAY_WIDE_LISTENERS = {
    "gcs_server": "gcs_server",
    "raylet": "raylet",
    "ray::DashboardAgent": "ray::DashboardAgent",
    "ray::RuntimeEnvAgent": "ray::RuntimeEnvAgent",
    "ray.util.client.server": "ray.util.client.server",
    "autoscaler/_private/monitor.py": "monitor.py",
    "dashboard/dashboard.py": "dashboard.py",
}


def _loopback(ip: str) -> bool:
    if ip.startswith("::ffff:"):
        ip = ip[len("::ffff:"):]
    return ipaddress.ip_address(ip).is_loopback


@pytest.fixture(scope="module")
def cluster():
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found")
    lc = LocalCluster().start()
    try:
        lc.s3_start()
        yield lc
    finally:
        lc.__exit__(None, None, None)


def test_listeners_bind_loopback_where_the_docs_say_local(cluster):
    rows = cluster.listeners()
    print(f"{'address':<24} {'port':>6} {'pid':>7}  process")
    for ip, port, pid, name in rows:
        print(f"{ip:<24} {port:>6} {pid:>7}  {name[:90]}")
    assert rows, "no listening socket found for the cluster's processes"
    by_port: dict[int, set[str]] = {}
    for ip, port, _, _ in rows:
        by_port.setdefault(port, set()).add(ip)
    # the job API / dashboard: loopback only
    assert cluster.dash_port in by_port and all(_loopback(ip) for ip in by_port[cluster.dash_port]), by_port
    # the S3 server (every port of `weed mini`): loopback only
    weed = [r for r in rows if "weed" in r[3].split()[0]]
    assert weed, rows
    assert all(_loopback(ip) for ip, *_ in weed), weed
    endpoint_port = int(Path(cluster.state, "s3", "endpoint").read_text().rsplit(":", 1)[1])
    assert endpoint_port in {port for _, port, *_ in weed}
    # everything else beyond loopback: only the Ray processes the README names
    docs = (REPO / "cluster" / "README.md").read_text()
    wide = [r for r in rows if not _loopback(r[0])]
    for ip, port, pid, name in wide:
        known = [k for k in RAY_WIDE_LISTENERS if k in name]
        assert known, f"{name} listens on {ip}:{port} and is not a documented Ray listener"
        assert f"`{RAY_WIDE_LISTENERS[known[0]]}`" in docs or f"(`{RAY_WIDE_LISTENERS[known[0]]}`" in docs, known


def test_secret_key_reaches_the_job_by_path_only(cluster, tmp_path):
    """An ingest into s3:// submitted as a job: it writes with the key from the credentials file; the
    key is in no job listing and no log of the cluster."""
    secret = cluster.secret_key
    assert len(secret) >= 32
    cmd = ('source "$LOCAL_RAY_DIR/env"\n'
           'cluster/local_cluster.sh runtime-env > "$LOCAL_RAY_DIR/job.yaml"\n'
           'ray job submit --runtime-env "$LOCAL_RAY_DIR/job.yaml" --working-dir . --submission-id secret-check -- '
           'convlstm-dist ingest --reader knmi_hdf5 --archive s3://$BUCKET/archives/knmi-sample.zarr '
           'convlstm_dist/sample_data/knmi/*.h5')
    out = cluster.sh(cmd, timeout=600)
    print(out.stdout[-3000:], out.stderr[-2000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "92 frames written" in out.stdout + out.stderr  # the job really wrote to S3 with the file's key
    job_env = Path(cluster.state, "job.yaml").read_text()
    assert "AWS_SHARED_CREDENTIALS_FILE" in job_env and secret not in job_env

    listing = cluster.sh('source "$LOCAL_RAY_DIR/env" && ray job list && ray job logs secret-check', timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "secret-check" in listing.stdout and "AWS_SHARED_CREDENTIALS_FILE" in listing.stdout
    env = cluster.client_env()
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    api = {}
    for path in ("/api/jobs/", "/api/jobs/secret-check"):  # what the dashboard's job pages show
        req = urllib.request.Request(env["RAY_API_SERVER_ADDRESS"] + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            api[path] = r.read().decode(errors="replace")
    assert "secret-check" in api["/api/jobs/"]
    for where, text in [("ray job list / logs", listing.stdout + listing.stderr), *api.items(),
                        ("submit output", out.stdout + out.stderr)]:
        assert secret not in text, f"the secret key appears in {where}"
    # every log file of the cluster (Ray's session logs of both nodes, the job's driver log, S3's log)
    logs = [p for p in Path(cluster.state).rglob("*")
            if p.is_file() and not p.is_symlink() and (p.suffix in (".log", ".out", ".err", ".txt", ".json")
                                                       or "logs" in p.parts)]
    assert any("job-driver-secret-check" in p.name for p in logs), "the job's driver log was not found"
    leaks = []
    for p in logs:
        if p.name in ("credentials", "identities.json") and p.parent.name == "s3":
            continue  # the files that hold the key on purpose (mode 600)
        try:
            if secret.encode() in p.read_bytes():
                leaks.append(str(p))
        except OSError:
            pass
    print(f"searched {len(logs)} log files for the secret key")
    assert not leaks, f"the secret key appears in {leaks}"
    creds = Path(cluster.state, "s3", "credentials")
    assert creds.stat().st_mode & 0o077 == 0  # readable by its owner only


SMOKE = ('source "$LOCAL_RAY_DIR/env"\n'
         'ray job submit --runtime-env "$LOCAL_RAY_DIR/job.yaml" --working-dir . -- '
         'convlstm-dist train --config pipelines/radar_smoke.yaml --set train.epochs=1 --set run.name=smoke-{tag} '
         '--set data.archive=s3://$BUCKET/archives/knmi-sample.zarr --set run.storage_path=s3://$BUCKET/runs')


def test_a_lost_node_is_added_back(cluster):
    """Kill the second node (its raylet and everything under its temp dir): the smoke recipe (2 CPUs)
    is refused on the one node left, exit 2; after ``add-node`` it runs. (Uses the S3 archive and the
    job.yaml of the test above.)"""
    node_dir = str(Path(cluster.state, "node1")) + "/"
    victims = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if node_dir in " ".join(p.info["cmdline"] or []) or any(f.path.startswith(node_dir) for f in p.open_files()):
                victims.append(p)
        except psutil.Error:
            pass
    assert any("raylet" in " ".join(v.cmdline()) for v in victims if v.is_running()), victims
    for v in victims:
        try:
            v.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and cluster.alive_nodes() != 1:
        time.sleep(3)
    assert cluster.alive_nodes() == 1, "the killed node is still reported alive"

    refused = cluster.sh(SMOKE.format(tag="one-node"), timeout=600)
    text = refused.stdout + refused.stderr
    print(text[-2500:])
    assert refused.returncode != 0
    assert "exit code 2" in text and "scaling asks for" in text and "but the Ray cluster has 1 CPU" in text, text[-3000:]

    t0 = time.monotonic()
    added = cluster.script("add-node", timeout=300)
    print(added.stdout, added.stderr, f"add-node took {time.monotonic() - t0:.1f} s")
    assert added.returncode == 0, added.stderr
    assert re.search(r"node node2 joined: 2 live nodes", added.stdout), added.stdout
    assert cluster.alive_nodes() == 2

    ran = cluster.sh(SMOKE.format(tag="two-nodes"), timeout=900)
    text = ran.stdout + ran.stderr
    print(text[-2500:])
    assert ran.returncode == 0, text[-4000:]
    assert "[epoch 1/1]" in text and "training finished" in text


def test_stop_ends_every_process_it_started(cluster):
    """Last in this module: ``stop`` leaves no process of the cluster (Ray Client server included)."""
    before = cluster.pids()
    names = set()
    for pid in before:
        try:
            names.add(" ".join(psutil.Process(pid).cmdline())[:60])
        except psutil.Error:
            pass
    assert any("ray.util.client.server" in n for n in names), names  # the one that used to survive
    assert any("weed" in n for n in names), names
    out = cluster.stop()
    print(out.stdout, out.stderr, f"stop took {cluster.stop_s:.1f} s for {len(before)} processes")
    assert out.returncode == 0, out.stderr
    time.sleep(1.0)
    left = {}
    for pid in cluster.pids() | {p for p in before if psutil.pid_exists(p)}:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                left[pid] = " ".join(proc.cmdline())[:120]
        except psutil.Error:
            pass
    assert not left, f"processes of the cluster survived stop: {json.dumps(left, indent=1)}"
    st = cluster.script("status")
    assert st.returncode == 1 and "not running" in st.stdout
