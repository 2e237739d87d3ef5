"""Where a run of the training loop (:func:`convlstm_dist.train.fit.fit`) starts from: its own last
checkpoint when it resumes (weights, then optimizer, scheduler, scaler, RNG and counters in its
:class:`TrainState`), else a warm start's weights (``train.init_from``), else fresh ones; and which
epochs its MLflow run already has, so that every epoch is logged there exactly once.
"""

from __future__ import annotations

import torch

from convlstm_dist.config import build_model_from_config
from convlstm_dist.errors import UserError
from convlstm_dist.train.backend import Backend, FitOptions
from convlstm_dist.train.engine import EngineChoice
from convlstm_dist.train.state import TrainState
from convlstm_dist.train.warm_start import apply_init_weights


def load_resumed_weights(model: torch.nn.Module, weights: dict, run: str, where: str) -> None:
    """Load a run's own checkpoint to resume it; a recipe whose model changed since (same run name,
    other ``model.*``) is one clear ``UserError`` instead of a ``load_state_dict`` traceback."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise UserError(f"run {run!r} cannot resume: its checkpoint ({where}) holds a model of another architecture "
                        f"than the recipe's ({detail[:160]}); train under a new run.name, or delete that run's "
                        "checkpoints to start over") from None


def logged_epochs(tracker) -> set[int]:
    """The epochs whose metrics this MLflow run already has."""
    return {int(s) for s, _ in tracker.metric_history("val_loss")}


def log_missed_epoch(tracker, state: TrainState) -> set[int]:
    """On resume: if the checkpoint's epoch E never reached MLflow (a crash between the two), log
    it now from the checkpoint, so that every epoch is in MLflow exactly once. Returns the epochs
    MLflow has."""
    logged = logged_epochs(tracker)
    last = state.extra.get("last_metrics")
    if last and state.epoch not in logged:
        tracker.log_metrics(last, step=state.epoch)
        logged.add(state.epoch)
    return logged


def build_model(cfg, backend: Backend, choice: EngineChoice, opts: FitOptions):
    """``(model on the device, restored checkpoint or None)``: the run's own weights when it resumes,
    else the warm start's (``train.init_from``), else fresh ones."""
    model = build_model_from_config(cfg, compile=choice.mode in ("compiled", "graph"),
                                    channels_last=choice.channels_last)
    restored = backend.restore()
    if restored is not None:
        load_resumed_weights(model, restored[0]["model"], backend.run_name, restored[1])
    elif opts.init_weights is not None:  # warm start (train.init_from): a new run only, never over a resume
        apply_init_weights(model, opts.init_weights)
        backend.say(f"[train] started from the weights of {opts.init_weights.source}")
    model.to(backend.device)
    return model, restored


def train_state(backend: Backend, restored, opt, sched, scaler, tracker, opts: FitOptions) -> TrainState:
    """A new state, or the checkpoint's (optimizer, scheduler, scaler and RNG restored with it)."""
    state = TrainState()
    if restored is not None:
        state = TrainState.restore(restored[0]["train"], opt, sched, scaler, backend.device, rng=backend.rank == 0)
        backend.say(f"[train] resumed from {restored[1]} (epoch {state.epoch}, step {state.step})")
    if tracker is not None:
        state.run_id = tracker.run_id
    if opts.data_version is not None:
        state.extra["data_version"] = opts.data_version
    return state


def epochs_in_mlflow(tracker, state: TrainState, resumed: bool, say) -> set[int]:
    """The epochs the MLflow run has (on resume, after logging the checkpoint's epoch if it lacks it)."""
    if tracker is not None and tracker.reachable():
        return log_missed_epoch(tracker, state) if resumed else logged_epochs(tracker)
    if tracker is not None:  # the driver sends what the run lacks at the end (Tracker.send_missing)
        say(f"[mlflow] tracking server {tracker.uri} unreachable at the start of this worker: epochs are kept "
            "until it answers")
    return set()
