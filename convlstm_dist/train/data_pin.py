"""The data version pinned to a run.

Archives grow while runs train on them. When a run starts, the frames its plan sees (per archive:
URL, frame count, last frame time, metadata hash; :meth:`DataPlan.version`) are written next to
its checkpoints as ``data_version.json`` (``<storage>/<run>/`` for ``train``,
``<workdir>/local/<run>/`` for ``train --local``), put into every checkpoint (``train.data_version``)
and logged to MLflow (``data_version.json`` artifact, ``data.version_sha256`` parameter). A rerun
of the same run (a resume, or the final report after it) plans on exactly those frames, even after
later appends; ``evaluate`` of the run's checkpoint does too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from convlstm_dist.data import DataPlan, filesystem, storage_options_for

FILE = "data_version.json"


def _location(folder: str, endpoint_url: str | None):
    url = f"{str(folder).rstrip('/')}/{FILE}"
    return filesystem(url, storage_options_for(url, endpoint_url))


def read_pin(folder: str | Path, endpoint_url: str | None = None) -> list[dict] | None:
    """The pinned data version of the run whose folder is ``folder`` (local path or s3://), or None."""
    fs, path = _location(str(folder), endpoint_url)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as fh:
        return json.load(fh)


def write_pin(folder: str | Path, version: list[dict], endpoint_url: str | None = None) -> None:
    fs, path = _location(str(folder), endpoint_url)
    parent = path.rsplit("/", 1)[0]
    if not str(folder).startswith("s3://"):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w") as fh:
        json.dump(version, fh, indent=2)


def version_digest(version: list[dict]) -> str:
    return hashlib.sha256(json.dumps(version, sort_keys=True).encode()).hexdigest()[:16]


def pin_run(cfg, workdir, folder: str | Path, endpoint_url: str | None = None, plan=None):
    """``(plan, version)`` of the run whose folder is ``folder``: on a rerun, the plan on the frames
    pinned there; on a first start ``plan`` (planned now if None) and its version, pinned now."""
    pin = read_pin(folder, endpoint_url)
    if pin is not None:  # a rerun of this run: the frames it started with, even if the archive grew
        return DataPlan.from_config(cfg, workdir, pinned=pin), pin
    plan = plan if plan is not None else DataPlan.from_config(cfg, workdir)
    version = plan.version()
    write_pin(folder, version, endpoint_url)
    return plan, version


def log_pin(tracker, version: list[dict]) -> None:
    """The data version as an MLflow artifact and parameters (idempotent on a resumed run)."""
    tracker.log_text(json.dumps(version, indent=2), FILE)
    params = {"data.version_sha256": version_digest(version)}
    for i, v in enumerate(version):
        params[f"data.{i}.frames"] = v["frames"]
        params[f"data.{i}.last_time"] = v["last_time"]
    tracker.log_params(params)
