"""Scenario 4: an ingest killed while it holds the S3 write lock (issue 26).

Fault: ``convlstm-dist ingest`` into an ``s3://`` archive (SeaweedFS on loopback) is stopped in the
middle of an append -- its new frames' data written, the statistics, time axis and commit not yet --
and killed there with SIGKILL from outside. Its lock object stays behind.
Must hold afterwards: the next ingest waits for the stale lease, takes it over with a message
naming the old holder (pid and host), and leaves the archive consistent: every frame once, in
time order, the data of the frames as decoded, no lock object left.

Second fault: the holder is alive but its heartbeat stops (SIGSTOP: a stopped or swapped-out
writer). Must hold: its lease is never taken; the waiter gives up at its --lock-timeout with a
message naming the holder, and the holder, once continued, commits its frames.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.data.archive import committed_length, open_archive
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from reference_decoders import knmi_decode

REPO = Path(__file__).resolve().parents[2]
KNMI = sample_files()
FIRST, SECOND = KNMI[:4], KNMI[4:10]


def _cli(url: str, files, env: dict, lock_timeout: float = 300) -> list[str]:
    return [sys.executable, "-m", "convlstm_dist.cli", "ingest", "--reader", SAMPLE_READER, "--archive", url,
            "--no-parallel", "--quiet", "--lock-timeout", str(lock_timeout), *map(str, files)]


def _env(s3, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVLSTM_FAULT")}
    env.update(s3.env())
    env["PYTHONPATH"] = str(REPO)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _start_holder(s3, url: str, tmp_path: Path, **extra) -> tuple[subprocess.Popen, int, Path]:
    """An ingest of SECOND that stops mid-append (after the data, before the statistics) with the lock held."""
    err = tmp_path / "holder.err"
    proc = subprocess.Popen(_cli(url, SECOND, {}), env=_env(s3, CONVLSTM_FAULT_APPEND_HOLD="stats", **extra),
                            stdout=subprocess.DEVNULL, stderr=err.open("w"), cwd=tmp_path,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if "holds the write lock" in err.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None and "holds the write lock" in err.read_text(), err.read_text()[-3000:]
    return proc, proc.pid, err


def _lock_holder(s3, url: str) -> dict:
    from convlstm_dist.data.storage import filesystem

    fs, path = filesystem(url.rstrip("/") + ".lock", s3.storage_options())
    fs.invalidate_cache()
    return json.loads(fs.cat_file(path))


def _times(files) -> np.ndarray:
    out = []
    for f in files:
        stamp = Path(f).name.split("_")[-1].split(".")[0]
        out.append(np.datetime64(f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}", "s"))
    return np.array(out)


def _assert_consistent(s3, url: str, files) -> None:
    """Every frame once, in time order, with the decoded data; the commit covers exactly them."""
    opts = s3.storage_options()
    arc = open_archive(url, opts)
    np.testing.assert_array_equal(arc.times, _times(files))
    assert np.all(np.diff(arc.times.astype("int64")) > 0)
    assert committed_length(url, opts) == len(files) == len(arc.stats["valid_fraction"])
    for i in (0, len(files) // 2, len(files) - 1):
        np.testing.assert_allclose(arc.read(i, i + 1)[0], knmi_decode(files[i]), equal_nan=True)


def test_ingest_killed_holding_s3_lock_is_taken_over_and_archive_stays_consistent(s3_server, tmp_path):
    url = s3_server.url("killed-holder") + ".zarr"
    first = subprocess.run(_cli(url, FIRST, {}), env=_env(s3_server), capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    holder, pid, _ = _start_holder(s3_server, url, tmp_path, CONVLSTM_LOCK_HEARTBEAT_S=1)
    assert _lock_holder(s3_server, url)["pid"] == pid
    # the fault: kill -9 mid-write (its data are written past the committed length, nothing committed)
    os.kill(pid, signal.SIGKILL)
    holder.wait(30)
    t_kill = time.monotonic()
    assert committed_length(url, s3_server.storage_options()) == len(FIRST)

    # the same command again: waits for the stale lease (5 s here, 60 s by default), then takes over
    rerun = subprocess.run(_cli(url, SECOND, {}), env=_env(s3_server, CONVLSTM_LOCK_STALE_S=5),
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    recovery_s = time.monotonic() - t_kill
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out
    assert f"waiting for process {pid} on " in out, out
    assert f"held by process {pid} on " in out and "no longer running on this machine" in out, out
    assert "taking over" in out, out
    assert "6 frames written" in out and "archive now has 10 frames" in out, out
    _assert_consistent(s3_server, url, FIRST + SECOND)
    from convlstm_dist.data.storage import filesystem

    fs, lock = filesystem(url + ".lock", s3_server.storage_options())
    fs.invalidate_cache()
    assert not fs.exists(lock), "the lock object outlived the ingest that took it over"
    # a third run changes nothing: the takeover did not duplicate frames
    again = subprocess.run(_cli(url, SECOND, {}), env=_env(s3_server), capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "0 frames written" in again.stdout, again.stdout + again.stderr
    _assert_consistent(s3_server, url, FIRST + SECOND)
    print(f"scenario 4: killed holder taken over, archive consistent {recovery_s:.1f} s after the kill "
          f"(stale lease 5 s)")


@pytest.mark.xfail(strict=False, reason="once in CI (1 of 2 clean-clone runs, 2026-12-04) the continued holder "
                   "did not finish within 300 s after SIGCONT + SIGUSR1; the waiter's assertions had passed. "
                   "Not reproduced in 4 runs alone; under investigation")
def test_live_holder_with_late_heartbeat_is_never_taken_over(s3_server, tmp_path):
    url = s3_server.url("live-holder") + ".zarr"
    first = subprocess.run(_cli(url, FIRST, {}), env=_env(s3_server), capture_output=True, text=True,
                           cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    holder, pid, err = _start_holder(s3_server, url, tmp_path, CONVLSTM_LOCK_HEARTBEAT_S=1)
    try:
        token = _lock_holder(s3_server, url)["token"]
        os.kill(pid, signal.SIGSTOP)  # alive, but its heartbeat stops: the lock object looks stale
        waiter = subprocess.run(_cli(url, KNMI[10:12], {}, lock_timeout=20),
                                env=_env(s3_server, CONVLSTM_LOCK_STALE_S=3), capture_output=True, text=True,
                                cwd=tmp_path, timeout=600)
        out = waiter.stdout + waiter.stderr
        assert waiter.returncode == 2, out
        assert f"holder process {pid} on " in out and "still running on this machine" in out, out
        assert f"is being written by process {pid} on " in out, out
        assert "treating that writer as dead" not in out, out
        assert _lock_holder(s3_server, url)["token"] == token  # the lease is still the holder's
        assert committed_length(url, s3_server.storage_options()) == len(FIRST)
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(1.0)  # continued before it is told to go on
    os.kill(pid, signal.SIGUSR1)  # let the holder finish its append
    assert holder.wait(300) == 0, err.read_text()[-3000:]
    _assert_consistent(s3_server, url, FIRST + SECOND)
