"""Fault: the newest checkpoint's bytes change after it was written (a flipped byte, same size; or a
truncated file), and the project must pick another checkpoint without editing Ray's internal files.

When: between two runs of the same command (the run resumes by its stable name).
Must hold afterwards:
- the manifest of verified checkpoints (``train/recovery.py``) exposes the change by its hash, even
  when ``torch.load`` would still accept the file; the resume takes the newest intact checkpoint and
  says which one it skipped; the damaged file is left in place;
- no source file writes (or names) Ray's ``checkpoint_manager_snapshot.json``;
- every ``ray._private`` use is in ``ray_internals.py``, listed in its docstring with the Ray version it
  was checked against, and still works on the installed Ray.
(The full Ray Train run through this fallback is ``tests/integration/test_checkpoint_recovery.py``.)
"""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import torch

from convlstm_dist import ray_internals
from convlstm_dist.checkpoint import FILENAME, save_checkpoint
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.train.recovery import (
    MANIFEST,
    check_before_resume,
    choose_checkpoint,
    record_verified,
)

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "convlstm_dist"


def _checkpoint(run: Path, name: str, epoch: int, cfg) -> Path:
    torch.manual_seed(epoch)
    model = build_model_from_config(cfg)
    d = run / name
    d.mkdir(parents=True)
    save_checkpoint(str(d), model, cfg.model_dump(mode="json"), "rain",
                    {"epoch": epoch, "step": 10 * epoch, "best": 1.0, "history": []})
    return d / FILENAME


def test_flipped_byte_in_newest_checkpoint_resumes_from_the_previous_one(tmp_path):
    cfg = load_config(ROOT / "pipelines" / "radar_smoke.yaml", [])
    storage, run = str(tmp_path / "runs"), "r"
    files = []
    for epoch in (1, 2):
        name = f"checkpoint_e000{epoch}"
        f = _checkpoint(tmp_path / "runs" / run, name, epoch, cfg)
        assert record_verified(storage, None, run, name, f, epoch, {"val_loss": 1.0 / epoch}) is None
        files.append(f)
    newest = files[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01                      # one bit, same size: torch may still load it
    newest.write_bytes(bytes(data))

    said: list[str] = []
    t0 = time.perf_counter()
    bad = check_before_resume(storage, None, run, say=said.append)
    payload, where = choose_checkpoint(storage, None, run, ray_latest=newest.parent.name, say=said.append)
    print(f"\n[measure] checking and choosing past a damaged newest checkpoint: {time.perf_counter() - t0:.2f} s")
    assert bad == ["checkpoint_e0002"]
    assert where.endswith("/checkpoint_e0001") and payload["train"]["epoch"] == 1
    assert any("checkpoint_e0002 cannot be resumed from" in s and "not the one verified" in s for s in said)
    assert any("resuming from the newest intact checkpoint checkpoint_e0001 (epoch 1)" in s for s in said)
    manifest = json.loads((tmp_path / "runs" / run / MANIFEST).read_text())
    assert "checkpoint_e0002" in manifest["damaged"]
    assert newest.read_bytes() == bytes(data)         # left in place, untouched
    assert not list((tmp_path / "runs" / run).glob("checkpoint_manager_snapshot*"))


def test_no_source_edits_ray_internal_files():
    offenders = [str(p.relative_to(ROOT)) for p in PKG.rglob("*.py")
                 if "checkpoint_manager_snapshot" in p.read_text()]
    assert offenders == [], f"sources that touch Ray's internal snapshot file: {offenders}"


def _private_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ray._private"):
            sub = node.module[len("ray._private"):].lstrip(".")
            out |= {f"{sub}.{a.name}" if sub else a.name for a in node.names}
    return out


def test_every_ray_private_use_is_listed_with_its_ray_version(ray_local):
    import ray

    doc = ray_internals.__doc__ or ""
    assert "Ray 2.60.0" in doc and ray.__version__ == "2.60.0", (
        f"ray_internals.py was checked against Ray 2.60.0, installed {ray.__version__}: re-check its list")
    used = _private_imports(PKG / "ray_internals.py")
    assert used == {"ray_constants", "worker.global_worker", "state.state"}, used
    listed = " ".join(doc.split())
    for name in ("ray_constants.GCS_PORT_ENVIRONMENT_", "worker.global_worker", "state.state.get_max_resources_from_"):
        assert name in listed, f"{name} is not listed in ray_internals.py's docstring"
    for p in PKG.rglob("*.py"):                        # nowhere else (test_layers checks imports; this, text)
        if p.name != "ray_internals.py":
            assert "ray._private" not in p.read_text(), p
    # each still works on this Ray
    assert ray_internals.gcs_port_env_var() == "RAY_GCS_SERVER_PORT"
    logs = ray_internals.session_log_dir()
    assert logs is not None and Path(logs).is_dir()
    limits = ray_internals.autoscaler_max_resources()
    assert limits is None or isinstance(limits, dict)
