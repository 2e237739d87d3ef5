"""``TrainState``: everything a run needs to continue, saved and restored the same way by both
backends (Ray Train workers and the single process).

What it holds (all as tensors + plain data, so checkpoints load with ``weights_only=True``):
model weights (in the checkpoint's ``model``), optimizer, LR scheduler, fp16 grad scaler, the RNG
of torch / numpy / Python (and CUDA when present), the step and epoch counters (the data
position: the next epoch's order and crops are drawn from ``(seed, epoch)``), best metric and
patience, the per-epoch history and the MLflow run id.

Restoring puts every optimizer tensor on the model's device, including a learning rate held as
a device tensor (capturable optimizers of a CUDA-graph step): ``Optimizer.load_state_dict``
would otherwise leave a tensor ``lr`` on the CPU, and the captured graph would never see the
scheduler's updates.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def rng_state() -> dict:
    """Every library's RNG state as tensors and plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "python": random.getstate(),
           "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                     "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]) if isinstance(n, dict) else n)
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class TrainState:
    epoch: int = 0                 # epochs completed = the next epoch to run (data position)
    step: int = 0                  # optimizer steps so far
    best: float = math.inf         # best validation metric so far
    since_best: int = 0            # epochs without improvement (early stopping)
    history: list[dict] = field(default_factory=list)
    run_id: str | None = None      # MLflow run
    extra: dict[str, Any] = field(default_factory=dict)  # lead_table, variable, ... (reports)

    # -- save ----------------------------------------------------------------------------------
    def capture(self, opt, sched, scaler, rng: bool = True) -> dict:
        """The checkpoint's ``train`` entry."""
        return {
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "epoch": self.epoch, "step": self.step, "best": self.best, "since_best": self.since_best,
            "history": self.history, "run_id": self.run_id,
            "data_position": {"epoch": self.epoch, "batch": 0},
            **({"rng": rng_state()} if rng else {}), **self.extra,
        }

    # -- restore -------------------------------------------------------------------------------
    @classmethod
    def restore(cls, train: dict, opt, sched, scaler, device: torch.device, rng: bool = True) -> "TrainState":
        """Load ``train`` (a checkpoint's ``train`` entry) into the optimizer, scheduler and scaler."""
        if train.get("optimizer"):
            opt.load_state_dict(train["optimizer"])
            optimizer_to(opt, device)
        if train.get("scaler"):
            scaler.load_state_dict(train["scaler"])
        if sched is not None and train.get("scheduler"):
            sched.load_state_dict(train["scheduler"])
        if rng and train.get("rng"):
            set_rng_state(train["rng"])
        known = {"optimizer", "scaler", "scheduler", "epoch", "step", "best", "since_best", "history", "run_id",
                 "data_position", "rng"}
        return cls(epoch=int(train.get("epoch", 0)), step=int(train.get("step", 0)),
                   best=float(train.get("best", math.inf)), since_best=int(train.get("since_best", 0)),
                   history=list(train.get("history") or []), run_id=train.get("run_id"),
                   extra={k: v for k, v in train.items() if k not in known})


def optimizer_to(opt, device: torch.device) -> None:
    """Every optimizer tensor on ``device``: state (``step`` of capturable optimizers included)
    and tensor hyperparameters such as a device-tensor ``lr``."""
    for group in opt.param_groups:
        for k, v in list(group.items()):
            if torch.is_tensor(v) and v.device != device and group.get("capturable"):
                group[k] = v.to(device)
    for st in opt.state.values():
        for k, v in list(st.items()):
            if torch.is_tensor(v) and v.device != device:
                if k == "step" and not any(g.get("capturable") for g in opt.param_groups):
                    continue  # non-capturable optimizers keep `step` on the CPU
                st[k] = v.to(device)
