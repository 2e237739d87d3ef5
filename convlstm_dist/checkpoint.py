"""The checkpoint format, shared by training and inference (no Ray, no MLflow).

A checkpoint is a directory holding ``checkpoint.pt``, a ``torch.save`` dict:

* ``format``: 1; ``config``: the resolved config (a plain dict; rebuilds the model);
* ``quantity``: what the model predicts (``rain_norm`` or ``intensity``, see ``data.transforms``);
* ``model``: the *unwrapped* model's ``state_dict`` (no ``module.`` prefix from DDP);
* ``train``: what training adds to continue — optimizer, scaler, scheduler, epoch, step, RNG
  states, data position, best metric, history, MLflow run id. Inference ignores it.

``nowcast`` / ``evaluate`` / ``Nowcaster.load`` only need :func:`load_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FORMAT = 1
FILENAME = "checkpoint.pt"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: dict, quantity: str,
                    train_state: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"format": FORMAT, "config": config, "quantity": quantity,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "train": train_state or {}}
    return _write(payload, directory)


def _write(payload: dict, directory: Path) -> Path:
    path = directory / FILENAME
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never a half-written checkpoint
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw payload; ``path`` is the directory or the ``checkpoint.pt`` file."""
    from convlstm_dist.errors import UserError

    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise UserError(f"no checkpoint at {path} (expected a directory with {FILENAME})")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a checkpoint
        raise UserError(f"{p} is not a readable convlstm-dist checkpoint: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{p} is not a convlstm-dist checkpoint (format {FORMAT})")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """``(model in eval mode, Config, payload)`` from a checkpoint directory or file."""
    from convlstm_dist.config import build_model_from_config, config_from_dict

    payload = read_checkpoint(path)
    cfg = config_from_dict(payload["config"], origin=f"checkpoint {path}")
    model = build_model_from_config(cfg)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), cfg, payload


SLIM_KEYS = ("epoch", "step", "best", "lead_table", "variable", "history")


def slim_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a checkpoint without what only resuming needs (optimizer, scaler, RNG, scheduler state):
    a model to evaluate or ship, a fraction of the size. Loads like any checkpoint."""
    payload = read_checkpoint(src)
    payload["train"] = {k: v for k, v in payload["train"].items() if k in SLIM_KEYS}
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return _write(payload, dst)
