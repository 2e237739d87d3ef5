"""A damaged newest checkpoint is reported and skipped; the run resumes from the newest intact one.

Trains 2 epochs (1 Ray Train worker, local storage, MLflow in SQLite), then damages the newest
checkpoint (truncated file, then a deleted folder) and reruns the same command for one more
epoch each time: the rerun must say which checkpoint it skipped, resume at the epoch after the
intact one (not from scratch), finish, and leave the damaged folder in place. The choice goes
through the project's manifest of verified checkpoints (``train/recovery.py``); Ray's own
``checkpoint_manager_snapshot.json`` is never edited.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from convlstm_dist.train.driver import run_training
from convlstm_dist.train.recovery import MANIFEST, MISSING
from test_train import _cfg

pytestmark = pytest.mark.integration


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / MANIFEST).read_text())


def _newest(run_dir: Path) -> tuple[Path, int]:
    m = _manifest(run_dir)
    latest = max((e for e in m["checkpoints"] if e["dir"] not in m["damaged"]), key=lambda e: e["seq"])
    return run_dir / latest["dir"], int(latest["epoch"])


def test_corrupt_or_deleted_newest_checkpoint_resumes_from_intact_one(ray_local, tmp_path, capsys):
    archive = str(tmp_path / "archive.zarr")
    ingest(SAMPLE_READER, sample_files(), archive, parallel=False, progress=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "runs"

    def train(epochs):
        cfg = _cfg("it-recover", archive, str(storage), uri, f"train.epochs={epochs}", "scaling.num_workers=1",
                   "scaling.cpus_per_worker=0.5", "run.keep_checkpoints=3")
        return run_training(cfg, tmp_path, progress=False)

    assert train(2).metrics["epoch"] == 2
    run_dir = storage / "it-recover"
    newest, epoch = _newest(run_dir)
    assert epoch == 2
    data = (newest / "checkpoint.pt").read_bytes()
    (newest / "checkpoint.pt").write_bytes(data[: len(data) // 2])   # truncated, as by a crash mid-copy
    capsys.readouterr()

    out = train(3)
    printed = capsys.readouterr().out
    assert f"checkpoint {run_dir}/{newest.name} cannot be resumed from" in printed
    assert "resuming from the newest intact checkpoint" in printed and "(epoch 1)" in printed
    assert out.metrics["epoch"] == 3 and out.stopped is None
    assert newest.exists()                                            # left in place for inspection
    assert newest.name in _manifest(run_dir)["damaged"]               # no worker tries it again
    last = max(_manifest(run_dir)["checkpoints"], key=lambda e: e["seq"])
    assert (last["epoch"], last["seq"]) == (3, 4), last               # 2 checkpoints + epochs 2, 3: not from scratch

    newest, epoch = _newest(run_dir)                                  # now: a deleted folder
    assert epoch == 3
    shutil.rmtree(newest)
    out = train(4)
    printed = capsys.readouterr().out
    assert "its folder is missing" in printed and "(epoch 2)" in printed
    assert out.metrics["epoch"] == 4
    assert (newest / MISSING).exists() and not (newest / "checkpoint.pt").exists()  # only for Ray's record
