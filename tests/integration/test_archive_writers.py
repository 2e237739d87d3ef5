"""Concurrent writers and crashes at every write step of an append, in real subprocesses.

* Two ingests of disjoint frame sets started at the same instant (a start file both wait on) must
  end with every frame present once, in time order, or with one of them refused with a clear
  message and the other's frames intact: never both "written" and frames lost.
* An ingest SIGKILLed just before each step of an append (CONVLSTM_FAULT_APPEND) must leave the
  archive readable at its old length, and the documented rerun of the same command must end with
  every frame once, in order, with no 1970 timestamps.
Local archives (flock) and S3 (conditional-put lock object on SeaweedFS) both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.data.archive import WRITE_STEPS, committed_length, open_archive
from convlstm_dist.data.shipped import sample_files
from reference_decoders import knmi_decode

KNMI = sample_files()
REPO = Path(__file__).resolve().parents[2]

# A child process: wait for the start file, ingest, print one JSON line (or the UserError).
CHILD = r"""
import json, os, sys, time
from pathlib import Path
from convlstm_dist.data.ingest import ingest
from convlstm_dist.errors import UserError
go, url, opts, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:]
while go != "-" and not os.path.exists(go):
    time.sleep(0.005)
try:
    r = ingest("knmi_hdf5", files, url, storage_options=opts or None, parallel=False, progress=False,
               lock_timeout_s=120)
    print(json.dumps({"written": r.written, "total": r.frames_total}))
except UserError as e:
    print(json.dumps({"error": str(e)}))
"""


def _spawn(url, files, go="-", opts=None, env=None):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(go), str(url), json.dumps(opts or {}),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, **(env or {})})


def _result(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}): {err[-2000:]}"
    return json.loads(lines[-1])


def _expected_times(files):
    return np.array([np.datetime64(knmi_time(f), "s") for f in files])


def knmi_time(path) -> str:
    # RAD_NL25_RAP_5min_201008260000.h5 -> 2010-08-26T00:00
    stamp = Path(path).name.split("_")[-1].split(".")[0]
    return f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[8:10]}:{stamp[10:12]}"


def _check_race(url, opts, a_files, b_files, tmp_path, tag, prior=()):
    prior = list(prior)
    go = tmp_path / f"go-{tag}"
    pa, pb = _spawn(url, a_files, go, opts), _spawn(url, b_files, go, opts)
    time.sleep(1.0)  # both children imported and spinning on the start file
    go.write_text("go")
    ra, rb = _result(pa), _result(pb)
    arc = open_archive(url, opts)
    times = arc.times
    assert np.all(np.diff(times.astype("int64")) > 0), f"time axis not strictly increasing: {times}"
    if "error" not in ra and "error" not in rb:   # both wrote: everything present once, in order
        np.testing.assert_array_equal(times, _expected_times(prior + sorted(a_files + b_files)))
        assert {ra["written"], rb["written"]} == {len(a_files), len(b_files)}
        assert max(ra["total"], rb["total"]) == len(prior) + len(a_files) + len(b_files)
        outcome = "both"
    else:                                          # exactly one refused, clearly; the other intact
        assert ("error" in ra) != ("error" in rb), (ra, rb)
        err = ra.get("error") or rb.get("error")
        assert "append-only" in err, err
        winner = list(b_files if "error" in ra else a_files)
        np.testing.assert_array_equal(times, _expected_times(prior + winner))
        outcome = "one refused"
    last = len(times) - 1
    src = sorted(a_files + b_files, key=knmi_time)
    kept = [f for f in src if np.datetime64(knmi_time(f), "s") in set(times.tolist())]
    np.testing.assert_allclose(arc.read(last, last + 1)[0], knmi_decode(kept[-1]), equal_nan=True)
    return outcome, prior + (sorted(a_files + b_files) if outcome == "both" else winner)


def test_concurrent_ingests_local_never_lose_frames(tmp_path):
    outcomes = []
    for i in range(10):
        url = tmp_path / f"race{i}.zarr"
        outcomes.append(_check_race(url, None, KNMI[0:6], KNMI[6:12], tmp_path, i)[0])
        assert not Path(str(url) + ".lock").exists()   # the lock file is removed on release
    print("outcomes:", outcomes)


def test_concurrent_appends_to_existing_archive_serialise(tmp_path):
    """Both append to an existing archive; the earlier frame set may be refused, never lost."""
    url = tmp_path / "a.zarr"
    assert _result(_spawn(url, KNMI[:4]))["written"] == 4
    present = list(KNMI[:4])
    for i in range(3):
        base = 4 + 8 * i
        _, present = _check_race(url, None, KNMI[base:base + 4], KNMI[base + 4:base + 8], tmp_path, f"e{i}",
                                 prior=present)


def _crash_then_rerun(url, opts, step, tmp_path, env=None):
    """Ingest 4 frames, SIGKILL the next ingest before `step`, check, rerun it, check."""
    first, second = KNMI[:4], KNMI[4:10]
    assert _result(_spawn(url, first, opts=opts))["written"] == 4
    killed = _spawn(url, second, opts=opts, env={"CONVLSTM_FAULT_APPEND": step, **(env or {})})
    killed.communicate(timeout=240)
    assert killed.returncode == -9, f"the fault at {step} did not fire ({killed.returncode})"
    arc = open_archive(url, opts)
    np.testing.assert_array_equal(arc.times, _expected_times(first))      # old length, old times
    assert committed_length(str(url), opts) == 4 and len(arc.stats["valid_fraction"]) == 4
    rerun = _result(_spawn(url, second, opts=opts, env=env))               # the documented rerun
    assert rerun == {"written": 6, "total": 10}, rerun
    arc = open_archive(url, opts)
    np.testing.assert_array_equal(arc.times, _expected_times(first + second))
    assert arc.times.min() > np.datetime64("2000-01-01")
    for t in (4, 9):
        np.testing.assert_allclose(arc.read(t, t + 1)[0], knmi_decode((first + second)[t]), equal_nan=True)
    again = _result(_spawn(url, second, opts=opts, env=env))               # and a third run changes nothing
    assert again == {"written": 0, "total": 10}


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_crash_at_each_write_step_then_rerun(tmp_path, step):
    import xarray as xr

    url = tmp_path / "a.zarr"
    _crash_then_rerun(url, None, step, tmp_path)
    assert xr.open_zarr(str(url)).sizes["time"] == 10


def test_s3_race_and_crash(s3_server, tmp_path):
    opts = s3_server.storage_options()
    for i in range(3):
        _check_race(s3_server.url(f"race{i}") + ".zarr", opts, KNMI[0:6], KNMI[6:12], tmp_path, f"s{i}")
    # A killed writer leaves its lock object; the rerun takes over once it is stale (3 s here).
    url = s3_server.url("crash") + ".zarr"
    t0 = time.monotonic()
    _crash_then_rerun(url, opts, "time", tmp_path, env={"CONVLSTM_LOCK_STALE_S": "3"})
    assert time.monotonic() - t0 < 120
