"""Tracker.log_epoch keeps epochs while the tracking server is unreachable and sends them, in order
and once, when it answers again (the reachability probe is the only stand-in here; the real outage
is tests/faults/test_mlflow_outage.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")


def test_epochs_kept_during_an_outage_are_sent_once_in_order(tmp_path):
    from convlstm_dist.tracking.mlflow_tracker import Tracker

    tracker, _ = Tracker.start_or_resume(f"sqlite:///{tmp_path / 'mlflow.db'}", "outage", "run-a")
    up = {"now": True}
    tracker.reachable = lambda timeout_s=3.0: up["now"]
    assert tracker.log_epoch({"val_loss": 1.0, "epoch": 1}, 1) is None
    up["now"] = False
    note = tracker.log_epoch({"val_loss": 0.9, "epoch": 2}, 2)
    assert "unreachable" in note and "epoch(s) 2 kept" in note
    assert "epoch(s) 2, 3 kept" in tracker.log_epoch({"val_loss": 0.8, "epoch": 3}, 3)
    assert [s for s, _ in tracker.metric_history("val_loss")] == [1]
    up["now"] = True
    assert "answers again: sent 2 kept epoch(s)" in tracker.log_epoch({"val_loss": 0.7, "epoch": 4}, 4)
    assert tracker.metric_history("val_loss") == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
    assert tracker.pending == []
    # the driver's end-of-run pass from the checkpoint history adds nothing twice
    assert tracker.send_missing([{"epoch": e, "val_loss": v} for e, v in [(1, 1.0), (2, 0.9), (5, 0.6)]]) == [5]
    assert [s for s, _ in tracker.metric_history("val_loss")] == [1, 2, 3, 4, 5]
