"""Which checkpoint a run resumes from: the project's own manifest of verified checkpoints.

Ray Train V2 resumes a run by ``(storage_path, name)`` and hands the workers its latest reported
checkpoint (``ray.train.get_checkpoint()``); it neither checks that checkpoint nor offers a supported
way to pick another (``TorchTrainer(resume_from_checkpoint=...)`` raises a DeprecationWarning in Ray
2.60). So the training loop chooses the checkpoint itself:

* **Manifest.** After every checkpoint, rank 0 reads the uploaded ``checkpoint.pt`` back from the
  storage and, when its SHA-256 matches what it wrote, appends ``{dir, epoch, sha256, size, seq}``
  to ``<storage>/<run>/convlstm_checkpoints.json`` (:func:`record_verified`). The manifest is this
  project's file, written whole and moved into place; Ray's own files are never touched.
* **Resume (workers).** :func:`choose_checkpoint` tries Ray's latest checkpoint if the manifest does
  not know it yet, then the manifest's entries newest first, and takes the first whose file matches
  its recorded hash and loads (``weights_only``). A run without a manifest (older runs) resumes from
  Ray's latest as before.
* **Before ``fit()`` (driver).** :func:`check_before_resume` checks the manifest's newest entries
  until an intact one, marks the damaged ones in the manifest (so no worker tries them again) and
  says which checkpoint the run resumes from. A checkpoint folder that vanished is recreated holding
  only ``MISSING.txt``: Ray refuses to start while a folder it tracks is missing, and this keeps its
  record consistent without editing it. Damaged folders are left in place for inspection.

Ray deletes checkpoints beyond ``run.keep_checkpoints`` itself; :func:`prune_deleted` drops those
from the manifest (after every report and after ``fit()``), so that only folders Ray still tracks
are ever recreated.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from convlstm_dist.errors import UserError

MANIFEST = "convlstm_checkpoints.json"
MISSING = "MISSING.txt"
FORMAT = 1


def _fs(filesystem):
    import pyarrow.fs as pafs

    return filesystem if filesystem is not None else pafs.LocalFileSystem()


def _exists(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def run_dir(storage_path: str, run_name: str) -> str:
    return f"{storage_path.rstrip('/')}/{run_name}"


def checkpoint_dir_name(epoch: int) -> str:
    """A unique, sortable folder name for the checkpoint of ``epoch`` (a re-run epoch gets a new one)."""
    return f"checkpoint_e{int(epoch):04d}_{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime())}_{time.time_ns() % 10**9:09d}"


def file_sha256(path: str | Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def _remote_sha256(fs, path: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def read_manifest(storage_path: str, filesystem, run_name: str) -> dict | None:
    """The run's manifest, or None if it has none (a run from before the manifest, or a new run)."""
    fs = _fs(filesystem)
    path = f"{run_dir(storage_path, run_name)}/{MANIFEST}"
    if not _exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        try:
            data = json.loads(f.read())
        except ValueError:
            return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    data.setdefault("checkpoints", [])
    data.setdefault("damaged", {})
    return data


def _write_manifest(fs, storage_path: str, run_name: str, data: dict) -> None:
    """Write the manifest whole under a temporary name, then move it into place (atomic locally)."""
    rd = run_dir(storage_path, run_name)
    tmp = f"{rd}/.{MANIFEST}.{time.time_ns()}"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(data, indent=1).encode())
    fs.move(tmp, f"{rd}/{MANIFEST}")


def record_verified(storage_path: str, filesystem, run_name: str, name: str, local_file: str | Path,
                    epoch: int, metrics: dict | None = None) -> str | None:
    """Rank 0, after ``ray.train.report`` uploaded checkpoint ``name``: read it back and add it to the
    manifest if its bytes match ``local_file``. Returns None when recorded, else why not."""
    from convlstm_dist.checkpoint import FILENAME

    fs = _fs(filesystem)
    want, size = file_sha256(local_file)
    remote = f"{run_dir(storage_path, run_name)}/{name}/{FILENAME}"
    try:
        got, got_size = _remote_sha256(fs, remote)
    except OSError as err:
        return f"cannot read it back: {err}"
    if (got, got_size) != (want, size):
        return f"its stored copy differs from what was written ({got_size} of {size} bytes, other hash)"
    data = read_manifest(storage_path, fs, run_name) or {"format": FORMAT, "checkpoints": [], "damaged": {}}
    seq = 1 + max((int(e.get("seq", 0)) for e in data["checkpoints"]), default=0)
    keep = {k: metrics[k] for k in ("val_loss", "train_loss", "step") if metrics and k in metrics}
    data["checkpoints"].append({"dir": name, "epoch": int(epoch), "sha256": want, "size": size, "seq": seq,
                                "metrics": keep})
    data["damaged"].pop(name, None)
    _prune(fs, storage_path, run_name, data)
    _write_manifest(fs, storage_path, run_name, data)
    return None


def _prune(fs, storage_path: str, run_name: str, data: dict) -> bool:
    """Drop entries whose folder is gone (Ray removed them: run.keep_checkpoints); True if any."""
    rd = run_dir(storage_path, run_name)
    before = len(data["checkpoints"])
    data["checkpoints"] = [e for e in data["checkpoints"]
                           if _exists(fs, f"{rd}/{e['dir']}") and not _exists(fs, f"{rd}/{e['dir']}/{MISSING}")]
    return len(data["checkpoints"]) != before


def prune_deleted(storage_path: str, filesystem, run_name: str) -> None:
    """After ``fit()``: forget the checkpoints Ray deleted (kept count), so a later resume never recreates them."""
    fs = _fs(filesystem)
    data = read_manifest(storage_path, fs, run_name)
    if data is not None and _prune(fs, storage_path, run_name, data):
        _write_manifest(fs, storage_path, run_name, data)


def _problem(fs, ckpt_dir: str, entry: dict | None, local_dir: str) -> tuple[str | None, dict | None]:
    """``(why it cannot be resumed from, None)`` or ``(None, payload)``; downloads into ``local_dir``."""
    from convlstm_dist.checkpoint import FILENAME, read_checkpoint

    if not _exists(fs, ckpt_dir) or _exists(fs, f"{ckpt_dir}/{MISSING}"):
        return "its folder is missing", None
    src = f"{ckpt_dir}/{FILENAME}"
    if not _exists(fs, src):
        return f"it has no {FILENAME}", None
    local = Path(local_dir) / FILENAME
    try:
        with fs.open_input_stream(src) as fin, open(local, "wb") as fout:
            while chunk := fin.read(1 << 22):
                fout.write(chunk)
    except OSError as err:
        return f"cannot read it: {err}", None
    if entry is not None and file_sha256(local)[0] != entry.get("sha256"):
        size = local.stat().st_size
        return (f"its {FILENAME} is not the one verified when it was written "
                f"({size} bytes, {entry.get('size')} expected)"), None
    try:
        payload = read_checkpoint(local)
    except UserError as err:
        return str(err).replace(str(local), FILENAME), None
    if not payload.get("train"):
        return "it holds no training state", None
    return None, payload


def _candidates(data: dict | None, ray_latest: str | None) -> list[tuple[str, dict | None]]:
    """``(dir name, manifest entry or None)``: Ray's latest if the manifest lacks it, then the manifest, newest first."""
    if data is None:
        return [(ray_latest, None)] if ray_latest else []
    entries = sorted(data["checkpoints"], key=lambda e: int(e.get("seq", 0)), reverse=True)
    known = {e["dir"] for e in entries}
    out = [(ray_latest, None)] if ray_latest and ray_latest not in known and ray_latest not in data["damaged"] else []
    return out + [(e["dir"], e) for e in entries if e["dir"] not in data["damaged"]]


def choose_checkpoint(storage_path: str, filesystem, run_name: str, ray_latest: str | None,
                      say=print) -> tuple[dict, str] | None:
    """Workers, at (re)start: ``(payload, path)`` of the newest intact checkpoint, or None (start fresh).
    ``ray_latest``: the folder name of ``ray.train.get_checkpoint()`` (None if Ray has none)."""
    fs = _fs(filesystem)
    data = read_manifest(storage_path, fs, run_name)
    rd = run_dir(storage_path, run_name)
    for name, entry in _candidates(data, ray_latest):
        with tempfile.TemporaryDirectory() as d:
            why, payload = _problem(fs, f"{rd}/{name}", entry, d)
        if why is None:
            return payload, f"{rd}/{name}"
        say(f"[convlstm-dist] checkpoint {rd}/{name} cannot be resumed from ({why}); skipped")
    return None


def check_before_resume(storage_path: str, filesystem, run_name: str, say=print) -> list[str]:
    """Driver, before ``fit()``: check the manifest's checkpoints newest first down to the first intact
    one; mark the damaged ones in the manifest, recreate vanished folders (``MISSING.txt`` only) so Ray
    starts, and say where the run resumes. Returns the damaged folder names."""
    fs = _fs(filesystem)
    data = read_manifest(storage_path, fs, run_name)
    if data is None:
        return []
    rd = run_dir(storage_path, run_name)
    bad: dict[str, str] = {}
    chosen = None
    for name, entry in _candidates(data, None):
        with tempfile.TemporaryDirectory() as d:
            why, payload = _problem(fs, f"{rd}/{name}", entry, d)
        if why is None:
            chosen = (name, entry)
            break
        bad[name] = why
    if not bad:
        return []
    for name, why in bad.items():
        if why == "its folder is missing" and not _exists(fs, f"{rd}/{name}/{MISSING}"):
            fs.create_dir(f"{rd}/{name}", recursive=True)
            with fs.open_output_stream(f"{rd}/{name}/{MISSING}") as f:
                f.write(b"This checkpoint folder vanished; convlstm-dist recreated it empty so that Ray Train's "
                        b"record of the run stays consistent. The run does not resume from it.\n")
        data["damaged"][name] = why
        say(f"[convlstm-dist] checkpoint {rd}/{name} cannot be resumed from ({why}); skipped, "
            "left in place for inspection")
    _write_manifest(fs, storage_path, run_name, data)
    if chosen:
        say(f"[convlstm-dist] resuming from the newest intact checkpoint {chosen[0]} (epoch {chosen[1]['epoch']})")
    else:
        say("[convlstm-dist] no intact checkpoint left: the run starts again from epoch 0")
    return list(bad)


def newest_verified(storage_path: str, filesystem, run_name: str) -> dict | None:
    """The manifest entry of the newest verified, not damaged checkpoint, or None."""
    data = read_manifest(storage_path, filesystem, run_name)
    if data is None:
        return None
    ok = [e for e in data["checkpoints"] if e["dir"] not in data["damaged"]]
    return max(ok, key=lambda e: int(e.get("seq", 0))) if ok else None


def intact_names(storage_path: str, filesystem, run_name: str) -> set[str] | None:
    """Folder names of the verified, not damaged checkpoints; None when the run has no manifest."""
    data = read_manifest(storage_path, filesystem, run_name)
    if data is None:
        return None
    return {e["dir"] for e in data["checkpoints"]} - set(data["damaged"])


REFUSALS = ("Operation not permitted", "Permission denied", "Read-only file system", "AccessDenied",
            "Access Denied", "No space left on device", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def storage_refusal(exc: BaseException, storage_path: str, filesystem, run_name: str):
    """Driver, after ``fit()`` failed: a ``UserError`` (one line) when the failure is the checkpoint storage
    refusing a write (Ray Train's controller writes there too), naming the newest intact checkpoint; else None."""
    texts, seen = [], exc
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(" ".join(texts).split())
    rd = run_dir(storage_path, run_name)
    if rd not in text or not any(r in text for r in REFUSALS):
        return None
    reason = next(r for r in REFUSALS if r in text)
    where = ("s3://" if filesystem is not None else "") + rd
    try:
        prev = newest_verified(storage_path, filesystem, run_name)
    except Exception:  # noqa: BLE001 - the storage may refuse reads too
        prev = None
    kept = (f"the previous checkpoint {prev['dir']} (epoch {prev['epoch']}) is intact" if prev
            else "no checkpoint of this run is verified")
    return UserError(f"the checkpoint storage refused a write under {where} ({reason}); {kept}. Make the storage "
                     "writable again (permissions, credentials, free space), then run the same command to resume")
