"""A damaged newest checkpoint is reported and skipped; the run resumes from the newest intact one.

Trains 2 epochs (1 Ray Train worker, local storage, MLflow in SQLite), then damages the newest
checkpoint (truncated file, then a deleted folder) and reruns the same command for one more
epoch each time: the rerun must say which checkpoint it skipped, resume at the epoch after the
intact one (not from scratch), finish, and leave the damaged folder in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from convlstm_dist.train.driver import run_training
from convlstm_dist.train.recovery import SNAPSHOT
from test_train import _cfg

pytestmark = pytest.mark.integration


def _snapshot(run_dir: Path) -> dict:
    return json.loads((run_dir / SNAPSHOT).read_text())


def _newest(run_dir: Path) -> tuple[Path, int]:
    snap = _snapshot(run_dir)
    latest = snap["latest_checkpoint_result"]
    return run_dir / latest["checkpoint_dir_name"], int(latest["metrics"]["epoch"])


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
    assert newest.name not in json.dumps(_snapshot(run_dir))

    newest, epoch = _newest(run_dir)                                  # now: a deleted folder
    assert epoch == 3
    shutil.rmtree(newest)
    out = train(4)
    printed = capsys.readouterr().out
    assert "its folder is missing" in printed and "(epoch 2)" in printed
    assert out.metrics["epoch"] == 4
