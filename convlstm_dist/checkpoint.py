"""The checkpoint format, shared by training and inference (no Ray, no MLflow).

A checkpoint is a directory holding ``checkpoint.pt``, a ``torch.save`` dict:

* ``format``: 1; ``config``: the resolved config (a plain dict; rebuilds the model);
* ``quantity``: what the model predicts (``rain_norm`` or ``intensity``, see ``data.quantity``);
* ``model``: the *unwrapped* model's ``state_dict`` (no ``module.`` prefix from DDP);
* ``train``: what training adds to continue — optimizer, scaler, scheduler, epoch, step, RNG
  states, data position, best metric, history, MLflow run id. Inference ignores it.

``nowcast`` / ``evaluate`` / ``Nowcaster.load`` only need :func:`load_model`.

Everything in the payload is tensors or plain data (numpy RNG state is stored as lists), so it
loads with ``torch.load(weights_only=True)``: loading a checkpoint never runs code from it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from convlstm_dist.errors import UserError

FORMAT = 1
FILENAME = "checkpoint.pt"


def save_checkpoint(directory: str | Path, model: torch.nn.Module, config: dict, quantity: str,
                    train_state: dict[str, Any] | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    payload = {"format": FORMAT, "config": config, "quantity": quantity,
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "train": plain(train_state or {})}
    return _write(payload, directory)


def plain(obj: Any) -> Any:
    """``obj`` as tensors and plain Python data only (numpy scalars/arrays become numbers/lists),
    so the checkpoint loads with ``torch.load(weights_only=True)``."""
    import numpy as np

    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _write(payload: dict, directory: Path) -> Path:
    path = directory / FILENAME
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never a half-written checkpoint
    return path


TRUST_HINT = ("pass --trust-model (Nowcaster.load(..., trust=True)) only if you trust where this file "
              "came from: loading it runs whatever code its pickle names")


def read_checkpoint(path: str | Path, trust: bool = False) -> dict:
    """The raw payload; ``path`` is the directory or the ``checkpoint.pt`` file.

    Loaded with ``torch.load(weights_only=True)``: tensors and plain data (dicts, lists, numbers,
    strings) only, so a crafted file cannot run code. A file that needs full unpickling (one written
    by a version that stored numpy objects, or a malicious one) is refused unless ``trust=True``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / FILENAME
    if not p.is_file():
        raise UserError(f"no checkpoint at {path} (expected a directory with {FILENAME})")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:  # weights_only refused a global: code or foreign objects
        first = str(err).strip().splitlines()
        detail = next((ln for ln in first if "Unsupported global" in ln or "GLOBAL" in ln), first[0] if first else "")
        raise UserError(f"{p} holds Python objects beyond tensors and plain data, and was not loaded "
                        f"({detail.strip()[:200]}); {TRUST_HINT}") from None
    except Exception as err:  # truncated or not a checkpoint
        raise UserError(f"{p} is not a readable convlstm-dist checkpoint: {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{p} is not a convlstm-dist checkpoint (format {FORMAT})")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", trust: bool = False):
    """``(model in eval mode, Config, payload)`` from a checkpoint directory or file."""
    from convlstm_dist.config import build_model_from_config, config_from_dict

    payload = read_checkpoint(path, trust=trust)
    cfg = config_from_dict(payload["config"], origin=f"checkpoint {path}")
    model = build_model_from_config(cfg)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:  # shapes or names do not match the config stored beside them
        raise UserError(f"checkpoint {path}: its weights do not match its own config (a damaged or "
                        f"hand-edited file?): {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), cfg, payload


def weights_digest(state_dict: dict) -> str:
    """sha256 over a state dict's names, dtypes, shapes and values (identifies the weights)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


SLIM_KEYS = ("epoch", "step", "best", "lead_table", "variable", "history", "data_version")


def slim_checkpoint(src: str | Path | dict, dst: str | Path) -> Path:
    """Copy a checkpoint (a path, or a payload already read) without what only resuming needs
    (optimizer, scaler, RNG, scheduler state): a model to evaluate or ship, a fraction of the size.
    Loads like any checkpoint."""
    payload = dict(src) if isinstance(src, dict) else read_checkpoint(src)
    payload["train"] = {k: v for k, v in payload["train"].items() if k in SLIM_KEYS}
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    return _write(payload, dst)
