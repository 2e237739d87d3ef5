"""Warm start: a new run starts from the weights of a trained model (``train.init_from``).

``train.init_from`` names a checkpoint (a ``checkpoint.pt`` file or a directory holding one) or an
MLflow model (``models:/NAME/VERSION``, ``models:/NAME@alias``, ``runs:/RUN_ID/...``). Only the
weights are taken, as a state dict loaded without unpickling code (``checkpoint.read_checkpoint``
/ ``tracking.models.load_mlflow_model``); the optimizer, schedule and epoch count start afresh, so
fine-tuning a trained model on a new radar is one recipe key. A run that already has a checkpoint
of its own resumes from it instead (its weights are newer). Weights whose names or shapes do not
fit the recipe's model are refused with one line naming the first layer that differs.

The run records where it started: MLflow tags ``convlstm_dist.init_from`` (the reference as given),
and for an MLflow model ``convlstm_dist.parent_model_uri`` / ``convlstm_dist.parent_run_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from convlstm_dist.checkpoint import read_checkpoint
from convlstm_dist.errors import UserError
from convlstm_dist.tracking.models import load_mlflow_model

MLFLOW_SCHEMES = ("models:/", "runs:/")


@dataclass
class InitWeights:
    state: dict                      # the state dict (CPU tensors)
    source: str                      # what it was loaded from, for messages
    tags: dict = field(default_factory=dict)  # MLflow tags of the new run


def load_init_weights(ref: str, tracking_uri: str | None) -> InitWeights:
    """The weights ``ref`` names (module docstring); a reference that loads nothing is a UserError."""
    ref = str(ref)
    tags = {"convlstm_dist.init_from": ref}
    if ref.startswith(MLFLOW_SCHEMES):
        if not tracking_uri:
            raise UserError(f"train.init_from={ref}: an MLflow model needs tracking (tracking.enabled / tracking.uri)")

        model, _, model_uri, run_id, _ = load_mlflow_model(ref, tracking_uri, "cpu", [])
        tags.update({"convlstm_dist.parent_model_uri": model_uri, "convlstm_dist.parent_run_id": run_id})
        return InitWeights({k: v.detach().cpu() for k, v in model.state_dict().items()}, model_uri, tags)
    path = Path(ref).expanduser()
    if not path.exists():
        raise UserError(f"train.init_from={ref}: no checkpoint file or directory there, and not an MLflow "
                        f"model reference (models:/NAME/VERSION, runs:/RUN_ID/model)")

    payload = read_checkpoint(path)
    return InitWeights(dict(payload["model"]), f"checkpoint {path.resolve()}", tags)


def apply_init_weights(model: torch.nn.Module, init: InitWeights) -> None:
    """Load ``init`` into ``model``; names or shapes that differ are one UserError."""
    own = model.state_dict()
    missing = [k for k in own if k not in init.state]
    extra = [k for k in init.state if k not in own]
    shapes = [k for k in own if k in init.state and tuple(own[k].shape) != tuple(init.state[k].shape)]
    if missing or extra or shapes:
        if shapes:
            k = shapes[0]
            what = f"{k} is {tuple(init.state[k].shape)} there and {tuple(own[k].shape)} in this recipe"
        elif missing:
            what = f"{len(missing)} tensor(s) of this recipe's model are not there (first: {missing[0]})"
        else:
            what = f"it has {len(extra)} tensor(s) this recipe's model lacks (first: {extra[0]})"
        raise UserError(f"train.init_from: the weights of {init.source} do not fit this recipe's model: {what}; "
                        f"use the same model.* settings as that model, or start without train.init_from")
    model.load_state_dict(init.state)
