"""What a run could not send because its tracking server never came back: kept in the workdir.

When a training run ends and its MLflow server still does not answer after
``tracking.outage_wait_s``, the driver writes ``<workdir>/mlflow-outbox/<run>.json``: the MLflow
run id and URI, every epoch's metrics (from the checkpoint's history), the test metrics, the
report files, the best model (a slim checkpoint folder beside the report) and the final status.
``convlstm-dist mlflow-upload FILE`` sends all of it to the same MLflow run once the server is
back (epochs the run already has are not sent twice; the model is registered unless the run
already registered these weights) and renames the file to ``*.uploaded.json``.
No credentials are written: the file holds paths, numbers and the tracking URI.
"""

from __future__ import annotations

import json
from pathlib import Path

from convlstm_dist.errors import UserError
from convlstm_dist.tracking.mlflow_tracker import Tracker

OUTBOX_DIR = "mlflow-outbox"
FORMAT = 1


def write_outbox(workdir: str | Path, run_name: str, tracker, history: list[dict], files: list[Path],
                 model_dir: Path | None, registered_name: str | None, status: str,
                 test_metrics: dict | None = None, test_step: int = 0) -> Path:
    """Write the outbox file of ``run_name`` (replacing an older one of the same run); returns it."""
    out = Path(workdir) / OUTBOX_DIR / f"{run_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT, "tracking_uri": tracker.uri, "run_id": tracker.run_id, "run_name": run_name,
        "status": status, "registered_name": registered_name,
        "history": [{k: v for k, v in m.items() if isinstance(v, (int, float))} for m in history],
        "test_metrics": dict(test_metrics or {}), "test_step": int(test_step),
        "files": [str(Path(f).resolve()) for f in files],
        "model_dir": str(Path(model_dir).resolve()) if model_dir else None,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(out)
    return out


def upload_command(path: Path) -> str:
    return f"convlstm-dist mlflow-upload {path}"


def upload_outbox(path: str | Path, tracking_uri: str | None = None, say=print) -> dict:
    """Send an outbox file to its MLflow run (at ``tracking_uri`` if given, else the recorded one).
    Returns a summary ``{"run_id", "epochs", "files", "model_uri"}``; the file becomes
    ``*.uploaded.json``. Raises UserError when the file is not an outbox or the server is away."""
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the MLflow outbox {p}: {exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or not rec.get("run_id"):
        raise UserError(f"{p} is not an MLflow outbox file of convlstm-dist (format {FORMAT})")
    uri = tracking_uri or rec["tracking_uri"]
    tracker = Tracker(uri, rec["run_id"])
    if not tracker.reachable(timeout_s=10):
        raise UserError(f"the MLflow tracking server {uri} does not answer: start it (or pass --tracking-uri), "
                        f"then run this command again; {p} is kept")
    missing = [f for f in rec["files"] + ([rec["model_dir"]] if rec.get("model_dir") else []) if not Path(f).exists()]
    if missing:
        raise UserError(f"{p} refers to files that are gone: {', '.join(missing[:3])}")
    sent = tracker.send_missing(rec["history"])
    test = rec.get("test_metrics") or {}
    if test and not tracker.metric_history(next(iter(test))):
        tracker.log_metrics(test, step=int(rec.get("test_step") or 0))
    for f in rec["files"]:
        tracker.log_artifact(f)
    model_uri = tracker.log_model(rec["model_dir"], rec.get("registered_name")) if rec.get("model_dir") else None
    tracker.end(rec.get("status") or "FINISHED")
    done = p.with_name(p.name.removesuffix(".json") + ".uploaded.json")
    p.replace(done)
    say(f"[mlflow] uploaded to run {rec['run_id']} at {uri}: {len(sent)} epoch(s) of metrics, "
        f"{len(rec['files'])} file(s), model {model_uri}; outbox moved to {done}")
    return {"run_id": rec["run_id"], "epochs": sent, "files": len(rec["files"]), "model_uri": model_uri}
