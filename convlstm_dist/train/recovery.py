"""Resume past a damaged checkpoint: check a run's checkpoints before Ray Train restores it.

Ray Train V2 restores a run from ``<storage>/<run>/checkpoint_manager_snapshot.json``, which lists
the kept checkpoints and the latest one. If the newest ``checkpoint.pt`` is truncated (a crash or
a full disk while a copy ran), every worker fails to read it and the run cannot continue; if a
listed checkpoint folder was deleted, Ray refuses to start at all
(``CheckpointManagerInitializationError``). :func:`repair_checkpoints` runs on the driver before
``fit()``: it reads every listed checkpoint (``weights_only``), drops the missing and unreadable
ones from the snapshot, points "latest" at the newest intact one (by report order) and says so.
Damaged folders are left where they are, untouched, for inspection; Ray no longer tracks them.

This edits Ray's snapshot file, whose schema is internal to Ray (``ray_version`` is pinned in
pyproject.toml; a snapshot of another version is left alone and Ray's own error then applies).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

SNAPSHOT = "checkpoint_manager_snapshot.json"


def _fs(filesystem):
    import pyarrow.fs as pafs

    return filesystem if filesystem is not None else pafs.LocalFileSystem()


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _problem(fs, ckpt_dir: str) -> str | None:
    """Why the checkpoint in ``ckpt_dir`` cannot be resumed from, or None if it can."""
    from convlstm_dist.checkpoint import FILENAME, read_checkpoint
    from convlstm_dist.errors import UserError

    if not _exists(fs, ckpt_dir):
        return "its folder is missing"
    src = f"{ckpt_dir}/{FILENAME}"
    if not _exists(fs, src):
        return f"it has no {FILENAME}"
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / FILENAME
        try:
            with fs.open_input_stream(src) as fin, open(local, "wb") as fout:
                while chunk := fin.read(1 << 22):
                    fout.write(chunk)
            payload = read_checkpoint(local)
        except UserError as err:
            return str(err).replace(str(local), FILENAME)
        except OSError as err:
            return f"cannot read it: {err}"
    if not payload.get("train"):
        return "it holds no training state"
    return None


def repair_checkpoints(storage_path: str, filesystem, run_name: str, say=print) -> list[str]:
    """Drop missing/unreadable checkpoints from the run's Ray snapshot; returns the dropped names."""
    import ray

    fs = _fs(filesystem)
    run_dir = f"{storage_path.rstrip('/')}/{run_name}"
    snap_path = f"{run_dir}/{SNAPSHOT}"
    if not _exists(fs, snap_path):
        return []
    with fs.open_input_stream(snap_path) as f:
        try:
            snap = json.loads(f.read())
        except ValueError:
            return []  # Ray's own error names the file
    if snap.get("ray_version") != ray.__version__:
        return []
    results = snap.get("checkpoint_results") or []
    indices = snap.get("checkpoint_report_indices") or []
    bad: dict[str, str] = {}
    for r in results:
        name = r["checkpoint_dir_name"]
        why = _problem(fs, f"{run_dir}/{name}")
        if why:
            bad[name] = why
    if not bad:
        return []
    keep = [(r, i) for r, i in zip(results, indices) if r["checkpoint_dir_name"] not in bad]
    latest = snap.get("latest_checkpoint_result")
    if latest and latest["checkpoint_dir_name"] in bad:
        latest = max(keep, key=lambda ri: ri[1])[0] if keep else None
    pending = [(r, v) for r, v in zip(snap.get("pending_training_results") or [],
                                       snap.get("pending_validation_specs") or [])
               if r["checkpoint_dir_name"] not in bad]
    snap.update(checkpoint_results=[r for r, _ in keep], checkpoint_report_indices=[i for _, i in keep],
                latest_checkpoint_result=latest, pending_training_results=[r for r, _ in pending],
                pending_validation_specs=[v for _, v in pending])
    for key in ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
                "failed_validation_checkpoint_dir_names"):
        snap[key] = [n for n in snap.get(key) or [] if n not in bad]
    with fs.open_output_stream(snap_path) as f:
        f.write(json.dumps(snap).encode())
    for name, why in bad.items():
        say(f"[convlstm-dist] checkpoint {run_dir}/{name} cannot be resumed from ({why}); skipped, "
            "left in place for inspection")
    if latest:
        epoch = latest.get("metrics", {}).get("epoch")
        say(f"[convlstm-dist] resuming from the newest intact checkpoint {latest['checkpoint_dir_name']}"
            + (f" (epoch {epoch})" if epoch is not None else ""))
    else:
        say("[convlstm-dist] no intact checkpoint left: the run starts again from epoch 0")
    return list(bad)
