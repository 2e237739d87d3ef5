"""Single-process training (``train --local``) on real archives: checkpoints, resume, time budget,
NaN guard, memory guard, Moving MNIST cross-entropy and the Table-1 report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.checkpoint import load_model, read_checkpoint
from convlstm_dist.cli import main
from convlstm_dist.config import load_config
from convlstm_dist.errors import UserError
from convlstm_dist.train.local import train_local
from convlstm_dist.experiments import table1_report as paper
from synthetic import make_archive

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "radar_smoke.yaml"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    url = tmp_path_factory.mktemp("loc") / "a.zarr"
    make_archive(url, n=60, h=32, w=32)
    return url


def cfg_for(archive, *extra):
    return load_config(SMOKE, [f"data.archive={archive}", "model.height=32", "model.width=32",
                               "data.split.block_hours=1.0", "tracking.enabled=false", *extra])


def test_trains_checkpoints_and_resumes(archive, tmp_path):
    out = train_local(cfg_for(archive, "train.epochs=2"), tmp_path, device="cpu", progress=False)
    assert [h["epoch"] for h in out.history] == [1, 2]
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
    assert out.graph is False and out.stopped is None
    run = tmp_path / "local" / "radar-smoke"
    for f in ("history.csv", "curves.png", "skill.csv", "skill.png", "forecast.png", "summary.json"):
        assert (run / f).stat().st_size > 0, f
    model, cfg, payload = load_model(out.checkpoint)
    assert payload["train"]["epoch"] == min(out.history, key=lambda h: h["val_loss"])["epoch"]
    assert cfg.model.height == 32
    # the same command with more epochs continues from latest/ instead of starting over
    again = train_local(cfg_for(archive, "train.epochs=3"), tmp_path, device="cpu", progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert read_checkpoint(run / "latest")["train"]["step"] == again.history[-1]["step"]
    assert again.history[2]["step"] > out.history[-1]["step"]
    # a slim copy (no optimizer state) loads the same model and keeps the skill table
    from convlstm_dist.checkpoint import slim_checkpoint

    slim = slim_checkpoint(run / "latest", tmp_path / "slim")
    assert slim.stat().st_size < (run / "latest" / "checkpoint.pt").stat().st_size
    slim_model, _, slim_payload = load_model(slim.parent)
    assert "optimizer" not in slim_payload["train"] and slim_payload["train"]["lead_table"]
    latest_model, _, _ = load_model(run / "latest")
    for (k, a), (_, b) in zip(slim_model.state_dict().items(), latest_model.state_dict().items()):
        assert (a == b).all(), k


def test_best_checkpoint_on_validation_csi_is_the_highest(archive, tmp_path):
    """``run.checkpoint_metric=val_csi_0.5mmh``: best/ is the epoch of the HIGHEST validation CSI (a
    skill score), not the lowest, and early stopping counts epochs without a higher CSI (trained with a
    lead-weighted loss, train.lead_decay)."""
    out = train_local(cfg_for(archive, "train.epochs=3", "run.checkpoint_metric=val_csi_0.5mmh", "train.lr=0.05",
                              "train.lead_decay=0.8"),
                      tmp_path, device="cpu", progress=False)
    csi = [h["val_csi_0.5mmh"] for h in out.history]
    assert len(csi) == 3 and all(math.isfinite(c) for c in csi)
    best_epoch = out.history[int(np.argmax(csi))]["epoch"]
    assert read_checkpoint(out.checkpoint)["train"]["epoch"] == best_epoch
    state = read_checkpoint(out.out_dir / "latest")["train"]
    assert state["best"] == -max(csi)  # kept as "lower is better"
    assert state["since_best"] == 3 - best_epoch


def test_time_budget_stops_inside_an_epoch_and_still_checkpoints(archive, tmp_path):
    out = train_local(cfg_for(archive, "train.epochs=5", "data.crops_per_window=4"), tmp_path, device="cpu",
                      time_budget_s=0.0, progress=False)
    assert len(out.history) == 1 and out.history[0]["step"] == 1
    assert 0 < out.history[0]["epoch_float"] < 1
    assert (out.out_dir / "latest" / "checkpoint.pt").exists()


def test_nan_loss_stops_and_cli_exits_3(archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONVLSTM_DIST_FAULT_NAN_AT", "1:0")
    rc = main(["train", "--local", "--device", "cpu", "--config", str(SMOKE), "--workdir", str(tmp_path), "--quiet",
               "--set", f"data.archive={archive}", "--set", "model.height=32", "--set", "model.width=32",
               "--set", "data.split.block_hours=1.0", "--set", "tracking.enabled=false", "--set", "train.epochs=3"])
    assert rc == 3
    assert "non-finite training loss at epoch 1" in capsys.readouterr().err
    best = read_checkpoint(tmp_path / "local" / "radar-smoke" / "best")
    assert best["train"]["epoch"] == 1  # the last good epoch
    assert all(math.isfinite(float(v.float().abs().sum())) for v in best["model"].values())


def test_refusals_are_clear(archive, tmp_path):
    with pytest.raises(UserError, match="--memory-limit-gb"):
        train_local(cfg_for(archive), tmp_path, device="cpu", max_memory_gb=1e-6, progress=False)
    with pytest.raises(UserError, match="CUDA"):
        train_local(cfg_for(archive), tmp_path, device="cpu", cuda_graph=True, progress=False)


def test_moving_mnist_cross_entropy_and_table1_report(tmp_path, capsys):
    recipe = ROOT / "convlstm_dist" / "recipes" / "moving_mnist" / "convlstm-5x5-128-64-64.yaml"
    cfg = load_config(recipe, ["model.hidden=[4,4,4]", "data.mnist_train=16", "data.mnist_val=8",
                               "data.mnist_test=8", "train.epochs=1", "tracking.enabled=false"])
    out = train_local(cfg, tmp_path, device="cpu", progress=False)
    ce = out.test_metrics["test_cross_entropy"]
    y = paper.test_targets(tmp_path)
    assert y.shape == (8, 10, 64, 64)
    floor = paper.entropy_floor(y)
    assert 0 < floor < ce  # no forecast beats the targets' own entropy
    summary = json.loads((out.out_dir / "summary.json").read_text())
    assert summary["test"]["test_cross_entropy"] == pytest.approx(ce)
    rows = paper.collect(tmp_path)
    assert [r["recipe"] for r in rows] == ["mm-convlstm-5x5-128-64-64"]
    assert rows[0]["test_ce"] == pytest.approx(ce) and rows[0]["paper_ce"] == 3670.85
    assert main(["table1-report", "--workdir", str(tmp_path), "--out", str(tmp_path / "t1.md")]) == 0
    text = (tmp_path / "t1.md").read_text()
    assert "3670.85" in text and f"{ce:.2f}" in text and (tmp_path / "table1.png").stat().st_size > 0


def test_entropy_floor_by_hand():
    y = np.full((2, 1, 2, 2), 0.5)
    assert paper.entropy_floor(y) == pytest.approx(4 * math.log(2))
    assert paper.entropy_floor(np.zeros((3, 2, 4, 4))) == 0.0
