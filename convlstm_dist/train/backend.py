"""What the one training loop (:func:`convlstm_dist.train.fit.fit`) takes: the :class:`Backend` that
supplies device, rank, batches and what happens with a checkpoint (Ray Train workers,
``train/ray_worker.py``; one process, ``train/local.py``), and the :class:`FitOptions` of a run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch


class Backend:
    """What differs between Ray Train workers and a single process. Subclasses set ``device``,
    ``run_name`` (and ``rank``/``world`` under DDP) and implement the batch and checkpoint methods."""

    rank: int = 0
    world: int = 1
    device: torch.device
    run_name: str
    steps_per_epoch: int | None = None  # for progress lines and ``epoch_float``, when known

    def say(self, msg: str) -> None:
        """One progress line for the user (rank 0's reach the terminal)."""
        print(msg, flush=True)

    def wrap(self, model: torch.nn.Module, ddp: bool = True) -> torch.nn.Module:
        """The module the step trains: DDP-wrapped under Ray Train, or (``ddp=False``, the graph
        engine's flat all-reduce) the model itself with rank 0's parameters on every rank."""
        return model

    def restore(self) -> tuple[dict, str] | None:
        """``(checkpoint payload, where)`` of the checkpoint to resume from, or None."""
        return None

    def begin_epoch(self, epoch: int) -> None:
        """Called before each epoch's batches are requested."""

    def train_batches(self, epoch: int, drop_last: bool) -> Iterable[dict]:
        """This rank's training batches of ``epoch`` (dicts of tensors on ``device``, compact rows)."""
        raise NotImplementedError

    def val_batches(self) -> Iterable[dict]:
        """Validation batches; every rank may see all of them (each scores ``t0 % world == rank``)."""
        raise NotImplementedError

    def checkpoint(self, write: Callable[[str], None], metrics: dict, improved: bool) -> None:
        """Keep the epoch's checkpoint (``write(folder)`` writes it) and report ``metrics``."""
        raise NotImplementedError

    def nan_stop(self, message: str, epoch: int, step: int) -> None:
        """The run stops on a non-finite loss (nothing is checkpointed from the bad weights)."""


@dataclass
class FitOptions:
    engine: str | None = None              # override ``train.engine`` (``train --local --cuda-graph``)
    fault_nan_at: list[int] | None = None  # fault injection: ``[epoch, batch]`` gets a NaN loss
    log_every_s: float = 30.0              # a progress line inside long epochs (rank 0)
    data_version: list | None = None       # the frames the run is pinned to (``train/data_pin.py``)
    sources: list[str] | None = None       # names of a multi-archive plan's archives: per-archive val skill
    init_weights: object | None = None     # ``train/warm_start.InitWeights`` of a new run (``train.init_from``)
