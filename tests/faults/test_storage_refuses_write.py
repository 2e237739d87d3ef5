"""Fault: the checkpoint storage (``run.storage_path``, a local folder) stops accepting writes mid-run:
the run's folder is made immutable (``chattr +i``, which stops root too, unlike ``chmod``), as a
read-only remount or a revoked write permission would.

When: right after the run's first checkpoint is verified (listed in its manifest), while it trains on.
Must hold afterwards:
- the run stops with one line that says the storage refused the write of epoch E, names the
  previous checkpoint as intact and says how to resume;
- the previous checkpoint is intact: its bytes still have the hash recorded when it was written;
- once the folder is writable again, the same command resumes from that checkpoint: the epochs
  continue, every epoch is in the manifest exactly once, and the run finishes.

(SeaweedFS was tried first: a restart with the run's key made read-only refused writes in one try and
accepted them in two others, so the S3 variant is not a reliable test yet; see the issue note.)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from convlstm_dist.config import load_config
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from convlstm_dist.errors import UserError
from convlstm_dist.train.driver import run_training
from convlstm_dist.train.recovery import MANIFEST

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "radar_smoke.yaml"
RUN = "fault-storage"


def _chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.fixture
def immutable(tmp_path):
    """``set(path)`` makes a folder immutable; every folder set is made writable again at the end."""
    done: list[Path] = []
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _chattr("+i", probe):
        pytest.skip("chattr +i is not supported here (needs root and ext2/3/4, xfs or btrfs)")
    _chattr("-i", probe)

    def set_(path: Path, on: bool = True) -> None:
        assert _chattr("+i" if on else "-i", path)
        if on:
            done.append(path)
        elif path in done:
            done.remove(path)

    yield set_
    for p in done:
        _chattr("-i", p)


def _manifest(run: Path) -> dict | None:
    try:
        return json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def test_refused_checkpoint_write_keeps_the_previous_one_and_resumes(immutable, ray_local, tmp_path):
    storage = tmp_path / "runs"
    run = storage / RUN
    archive = tmp_path / "archive.zarr"
    ingest(SAMPLE_READER, sample_files(), str(archive), parallel=False, progress=False)

    def cfg(epochs):
        return load_config(SMOKE, [f"name={RUN}", f"data.archive={archive}", f"run.storage_path={storage}",
                                   "tracking.enabled=false", f"train.epochs={epochs}", "data.loader=memory",
                                   "scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "run.max_failures=0",
                                   "run.keep_checkpoints=50", "data.crops_per_window=4"])

    outcome: dict = {}

    def first_run():
        try:
            outcome["out"] = run_training(cfg(30), tmp_path, progress=False)
        except BaseException as exc:  # noqa: BLE001 - examined below
            outcome["err"] = exc

    th = threading.Thread(target=first_run, daemon=True)
    th.start()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and th.is_alive():
        m = _manifest(run)
        if m and m["checkpoints"]:
            break
        time.sleep(0.5)
    assert th.is_alive(), f"the run ended before its first checkpoint: {outcome}"
    t_fault = time.monotonic()
    immutable(run)                                              # no new entry in the run's folder, even for root
    th.join(900)
    assert not th.is_alive(), "the run did not stop after its storage refused writes"
    t_stopped = time.monotonic()
    err = outcome.get("err")
    assert isinstance(err, UserError), f"expected a one-line error, got {outcome}"
    msg = str(err)
    m = _manifest(run)
    prev = max(m["checkpoints"], key=lambda e: e["seq"])
    # the worker's upload or Ray Train's own snapshot write, whichever is refused first
    assert "checkpoint storage refused" in msg and "Operation not permitted" in msg, msg
    assert f"previous checkpoint {prev['dir']} (epoch {prev['epoch']}) is intact" in msg, msg
    assert "run the same command to resume" in msg
    assert "\n" not in msg

    # the previous checkpoint's bytes are those verified when it was written
    assert hashlib.sha256((run / prev["dir"] / "checkpoint.pt").read_bytes()).hexdigest() == prev["sha256"]

    # storage back: the same command (two more epochs) resumes from that checkpoint
    immutable(run, False)
    t0 = time.monotonic()
    out = run_training(cfg(prev["epoch"] + 2), tmp_path, progress=False)
    resume_s = time.monotonic() - t0
    assert out.stopped is None and out.metrics["epoch"] == prev["epoch"] + 2
    epochs = [e["epoch"] for e in sorted(_manifest(run)["checkpoints"], key=lambda e: e["seq"])]
    assert epochs == list(range(1, prev["epoch"] + 3)), epochs  # each epoch once: resumed, not restarted
    print(f"\n[measure] write refused -> clear error: {t_stopped - t_fault:.1f} s ; "
          f"resume run after storage is back (Ray Train start + 2 epochs): {resume_s:.1f} s")
