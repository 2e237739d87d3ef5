"""A run is pinned to the frames it started with: frames appended to its archive between the
start and a resume are not seen by the resumed run, its final report or ``evaluate --split``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist import data
from convlstm_dist.checkpoint import read_checkpoint
from convlstm_dist.config import load_config
from convlstm_dist.data import units as U
from convlstm_dist.data.archive import append_frames, open_archive
from convlstm_dist.train.local import train_local
from synthetic import T0, make_archive, rain_frames

SMOKE = Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"
assert data  # the package imports


def _cfg(url, *extra):
    return load_config(SMOKE, [f"data.archive={url}", "model.height=32", "model.width=32",
                               "data.split.block_hours=1.0", "tracking.enabled=false", *extra])


def test_resume_after_an_append_sees_the_original_frames(tmp_path):
    url = tmp_path / "grows.zarr"
    frames = rain_frames(96, 32, 32, seed=3)
    make_archive(url, n=60, h=32, w=32, frames=frames[:60])
    first = train_local(_cfg(url, "train.epochs=1"), tmp_path / "wd", device="cpu", progress=False)
    run = tmp_path / "wd" / "local" / "radar-smoke"
    pin = json.loads((run / "data_version.json").read_text())
    assert [p["frames"] for p in pin] == [60]
    windows_before = json.loads((run / "summary.json").read_text())["windows"]

    # 36 more frames arrive while the run is paused
    times = (T0 + np.arange(60, 96) * np.timedelta64(300, "s")).astype("datetime64[s]").astype(np.int64)
    append_frames(str(url), None, frames[60:], times, U.frame_stats(frames[60:], U.wet_thresholds("rain_mmh")))
    assert len(open_archive(str(url)).times) == 96

    resumed = train_local(_cfg(url, "train.epochs=2"), tmp_path / "wd", device="cpu", progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2]          # resumed, not restarted
    assert resumed.history[0]["val_loss"] == first.history[0]["val_loss"]   # epoch 1 kept from the checkpoint
    assert json.loads((run / "summary.json").read_text())["windows"] == windows_before
    assert read_checkpoint(run / "latest")["train"]["data_version"] == pin
    # a new run on the grown archive does see the new frames
    other = train_local(_cfg(url, "train.epochs=1", "run.name=fresh"), tmp_path / "wd", device="cpu", progress=False)
    assert json.loads((other.out_dir / "data_version.json").read_text())[0]["frames"] == 96
    grown = json.loads((other.out_dir / "summary.json").read_text())["windows"]
    assert sum(grown.values()) > sum(windows_before.values())


@pytest.mark.integration
def test_evaluate_split_uses_the_pinned_frames(tmp_path, capsys):
    from convlstm_dist.cli import main

    url = tmp_path / "grows.zarr"
    frames = rain_frames(96, 32, 32, seed=4)
    make_archive(url, n=60, h=32, w=32, frames=frames[:60])
    train_local(_cfg(url, "train.epochs=1"), tmp_path / "wd", device="cpu", progress=False)
    times = (T0 + np.arange(60, 96) * np.timedelta64(300, "s")).astype("datetime64[s]").astype(np.int64)
    append_frames(str(url), None, frames[60:], times, U.frame_stats(frames[60:], U.wet_thresholds("rain_mmh")))
    ckpt = tmp_path / "wd" / "local" / "radar-smoke" / "best"
    rc = main(["evaluate", "--model", str(ckpt), "--archive", str(url), "--split", "val", "--baselines", "none",
               "--no-mlflow", "--workers", "1", "--out", str(tmp_path / "ev.csv")])
    assert rc == 0
    assert "pinned data (60 of 96 frames" in capsys.readouterr().out
