"""The training loop: one loop, two backends.

:func:`fit` runs epochs, the step engine (``train/engine.py``), the NaN guard, the time budget,
validation, early stopping, MLflow per epoch and checkpoint + report, the same way for

* Ray Train workers (``train/ray_worker.py``: DDP, Ray Data shards, ``ray.train.report``), used
  by ``convlstm-dist train`` and by every Tune trial; and
* one process (``train/local.py``: frames in memory, checkpoints in a folder), used by
  ``convlstm-dist train --local``.

A backend supplies only what differs (:class:`Backend`): its device, rank and world size, the
DDP wrapping, batches, the checkpoint to resume from, and what happens with a checkpoint and the
epoch's metrics. Everything a run needs to continue is one :class:`TrainState`; where a run starts
from (its own checkpoint, a warm start, the epochs MLflow has) is :mod:`.resume`.

* **Resume.** A run restarted from its checkpoint continues at the next epoch with the same
  model, optimizer (tensors on the device, the lr tensor included), scheduler, grad scaler,
  RNG state, step counter, best metric, history and MLflow run.
* **MLflow.** Rank 0 logs each epoch's metrics at step ``epoch`` *before* the checkpoint/report
  (a Tune trial stopped at a report never returns from it). Epochs the MLflow run already has are
  not logged again, and an epoch that was checkpointed but never reached MLflow (a crash between
  the two) is logged from the checkpoint on resume: every epoch's metrics exactly once. While
  the tracking server is unreachable, epochs are kept and sent once it answers
  (``Tracker.log_epoch``); training does not wait for it.
* **NaN guard.** Checked on the device at every step (``StepEngine``), looked at every
  ``CHECK_EVERY`` steps and at the end of an epoch: the run stops with its last good checkpoint.
* **Time budget** (``train.time_budget_s``): training ends at a step boundary once it is spent
  (agreed by all ranks at the guard's check points); the partial epoch is validated and
  checkpointed like a full one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.data.quantity import quantity_of_variable
from convlstm_dist.data.samples import to_compute
from convlstm_dist.train.backend import Backend, FitOptions
from convlstm_dist.train.engine import EngineChoice, StepEngine, allreduce, choose_engine
from convlstm_dist.train.optim import make_optimizer, make_scheduler, training_loss
from convlstm_dist.train.resume import build_model, epochs_in_mlflow, train_state
from convlstm_dist.train.state import TrainState
from convlstm_dist.train.validation import evaluate_val, source_metrics
from convlstm_dist.vocabulary import selection_score


@dataclass
class FitResult:
    model: torch.nn.Module
    state: TrainState
    metrics: dict                          # the last epoch's
    stopped: str | None                    # why training stopped abnormally (NaN), else None
    choice: EngineChoice
    engine: str                            # mode that ran (after a capture fallback: eager)
    graph: bool                            # a CUDA graph ran the steps


class TimedBatches:
    """Iterate training batches as ``(x, y, mask)``, summing the time spent waiting for them (``.wait``, s)."""

    def __init__(self, batches):
        self.it, self.wait = iter(batches), 0.0

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            batch = next(self.it, None)
            self.wait += time.perf_counter() - t0
            if batch is None:
                return
            yield to_compute(batch["x"], batch["y"], batch["mask"])


def fault_nan_at() -> list[int] | None:
    """``CONVLSTM_DIST_FAULT_NAN_AT=EPOCH:BATCH`` makes the loss NaN at that batch of that epoch
    (0-based; fault injection for tests of the NaN guard)."""
    v = os.environ.get("CONVLSTM_DIST_FAULT_NAN_AT")
    return [int(p) for p in v.split(":")] if v else None


def poison(x: torch.Tensor) -> torch.Tensor:
    """Fault injection: a batch whose loss is NaN in every engine mode, CUDA graph included (the
    graph copies the batch in, so the NaN travels through it)."""
    return x * float("nan")


def epoch_line(m: dict, epochs: int, eta_s: float | None = None) -> str:
    """The one progress line of an epoch (both backends print it)."""
    extra = (f"cross-entropy {m['val_cross_entropy']:.1f}" if "val_cross_entropy" in m else
             f"val_mse {m['val_mse']:.4f} (persistence {m['val_persistence_mse']:.4f})")
    eta = f"  ETA {eta_s:.0f} s" if eta_s is not None else ""
    return (f"[epoch {m['epoch']}/{epochs}] step {m['step']}  train_loss {m['train_loss']:.5f}  "
            f"val_loss {m['val_loss']:.5f}  {extra}  {m['samples_per_s']:.1f} samples/s  "
            f"data wait {100 * m['data_wait_share']:.0f}%  {m['epoch_time_s']:.1f} s{eta}")


def epoch_metrics(epoch: int, n_batches: int, steps_per_epoch: int | None, step: int, totals, wait_s: float,
                  train_time: float, epoch_time: float, elapsed: float, lr: float, val: dict) -> dict:
    """The metrics of one epoch, as reported to Ray/Tune and MLflow (names: ``train/metrics.py``)."""
    metrics = {
        "epoch": epoch + 1,
        "epoch_float": epoch + (min(1.0, n_batches / steps_per_epoch) if steps_per_epoch else 1.0),
        "step": step,
        "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
        "samples_per_s": float(totals[2]) / max(train_time, 1e-9),
        "data_wait_share": wait_s / max(train_time, 1e-9),
        "epoch_time_s": epoch_time,
        "elapsed_s": elapsed,
        "lr": lr,
        **{k: float(v) for k, v in val.items()},
    }
    metrics["early_stop"] = 0.0
    return metrics


def fit(cfg, backend: Backend, variable: str, tracker=None, opts: FitOptions | None = None) -> FitResult:
    """Train ``cfg``'s model on ``backend`` (resuming from its checkpoint if it has one); ``tracker``
    (rank 0 only): the run's MLflow ``Tracker`` or None."""
    run = _start(cfg, backend, variable, tracker, opts or FitOptions())
    t, state, say = cfg.train, run.state, backend.say
    epochs_run, metrics = 0, dict(state.extra.get("last_metrics") or {})
    for epoch in range(state.epoch, t.epochs):
        backend.begin_epoch(epoch)
        ep = _train_epoch(run, epoch)
        if ep.nan_step is not None:
            return run.result(metrics, _stop_on_nan(run, epoch, ep.nan_step))
        totals = allreduce(torch.cat([ep.sum_loss.double().reshape(1),
                                      torch.tensor([ep.n_batches, ep.n_samples], dtype=torch.float64,
                                                   device=backend.device)]))
        if float(totals[1]) == 0:
            say(f"[train] epoch {epoch + 1} had no training batches; stopped")
            break
        if run.sched is not None:
            run.sched.step()
        train_time = time.perf_counter() - ep.t_start
        metrics, improved, stop = _score_epoch(run, epoch, ep, totals, train_time)
        _report_epoch(run, epoch, metrics, improved)
        epochs_run += 1
        eta = (time.perf_counter() - run.t_run) / epochs_run * (t.epochs - epoch - 1)
        say(epoch_line(metrics, t.epochs, eta))
        if stop:
            say(f"[train] early stop: no validation improvement for {state.since_best} epochs")
            break
        if ep.out_of_time:
            say(f"[train] time budget of {t.time_budget_s:g} s reached after {state.step} steps (epoch {epoch + 1}, "
                f"{ep.n_batches} steps into it)")
            break
    return run.result(metrics)


@dataclass
class _Run:
    """What :func:`fit` sets up once and every epoch uses."""

    cfg: object
    backend: Backend
    variable: str
    quantity: str
    tracker: object
    opts: FitOptions
    choice: EngineChoice
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    state: TrainState
    engine: StepEngine
    logged: set[int]                       # the epochs MLflow has
    cfg_dict: dict
    t_run: float                           # perf_counter at the start of training

    def result(self, metrics: dict, stopped: str | None = None) -> FitResult:
        return FitResult(self.model, self.state, metrics, stopped, self.choice, self.engine.mode,
                         self.engine.graph is not None)

    def budget_spent(self, now: float, at_check: bool) -> bool:
        """Host clock in one process; under DDP rank decisions are merged at the guard's check points."""
        budget, world = self.cfg.train.time_budget_s, self.backend.world
        if budget is None:
            return False
        over = now - self.t_run > budget
        if world == 1 or not at_check:
            return over if world == 1 else False
        flag = torch.tensor([float(over)], device=self.backend.device)
        return bool(allreduce(flag, torch.distributed.ReduceOp.MAX).item())


@dataclass
class _TrainedEpoch:
    """The training part of one epoch on this rank."""

    t_start: float                         # perf_counter when the epoch began
    sum_loss: torch.Tensor                 # on the device
    n_batches: int
    n_samples: int
    wait_s: float                          # waiting for batches
    nan_step: int | None                   # the step of a non-finite loss
    out_of_time: bool                      # the time budget ended the epoch


def _start(cfg, backend: Backend, variable: str, tracker, opts: FitOptions) -> _Run:
    """Seeds, engine, model (resumed or warm-started), optimizer, scheduler, scaler, state and step
    engine; which epochs MLflow already has."""
    t = cfg.train
    dev, rank, world, say = backend.device, backend.rank, backend.world, backend.say
    quantity = quantity_of_variable(variable).name
    torch.manual_seed(t.seed + rank)
    np.random.seed(t.seed + rank)

    choice = choose_engine(cfg, dev, world, opts.engine)
    model, restored = build_model(cfg, backend, choice, opts)
    train_model = backend.wrap(model, ddp=not (choice.mode == "graph" and world > 1))
    opt = make_optimizer(t, model.parameters(), dev if choice.mode == "graph" else None)
    sched = make_scheduler(t, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=choice.precision == "fp16")
    state = train_state(backend, restored, opt, sched, scaler, tracker, opts)
    loss = training_loss(t.loss, quantity, t.lead_decay, t.loss_weight_cap)
    engine = StepEngine(model, train_model, opt, scaler, loss, cfg.data.out_len, choice.amp_dtype, t.grad_clip,
                        choice.mode, dev, say=say, world=world)
    say(choice.line(dev))
    logged = epochs_in_mlflow(tracker, state, restored is not None, say)
    return _Run(cfg, backend, variable, quantity, tracker, opts, choice, model, opt, sched, scaler, state, engine,
                logged, cfg.model_dump(mode="json"), time.perf_counter())


def _train_epoch(run: _Run, epoch: int) -> _TrainedEpoch:
    """The training steps of one epoch, until its batches end, a non-finite loss, the time budget
    or ``train.max_steps_per_epoch``; a progress line every ``log_every_s``."""
    backend, engine, state, opts = run.backend, run.engine, run.state, run.opts
    t_epoch = last_log = time.perf_counter()
    sum_loss = torch.zeros((), device=backend.device)
    n_batches = n_samples = 0
    nan_step, out_of_time = None, False
    engine.reset_guard(state.step)
    batches = TimedBatches(backend.train_batches(epoch, drop_last=engine.mode == "graph"))
    for x, y, m in batches:
        if opts.fault_nan_at == [epoch, n_batches]:
            x = poison(x)
        sum_loss += engine.step(x, y, m)
        n_batches += 1
        n_samples += x.shape[0]
        state.step += 1
        due = engine.check_due()  # the same batch count on every rank
        if due and (nan_step := engine.check()) is not None:
            break
        now = time.perf_counter()
        if run.budget_spent(now, due):
            out_of_time = True
            break
        if now - last_log > opts.log_every_s:
            last_log = now
            of = f"/{backend.steps_per_epoch}" if backend.steps_per_epoch else ""
            backend.say(f"[train]   epoch {epoch + 1} step {n_batches}{of}  loss {float(sum_loss) / n_batches:.5f}  "
                        f"{n_samples * backend.world / (now - t_epoch):.1f} samples/s")
        if run.cfg.train.max_steps_per_epoch and n_batches >= run.cfg.train.max_steps_per_epoch:
            break
    if nan_step is None:
        nan_step = engine.check()
    return _TrainedEpoch(t_epoch, sum_loss, n_batches, n_samples, batches.wait, nan_step, out_of_time)


def _stop_on_nan(run: _Run, epoch: int, nan_step: int) -> str:
    """Why the run stops (tagged on the MLflow run; the backend keeps the last good checkpoint)."""
    stopped = f"non-finite training loss at epoch {epoch} step {nan_step}; stopped, last good checkpoint kept"
    if run.tracker is not None:
        run.tracker.set_tags({"convlstm_dist.stopped": stopped})
    run.backend.nan_stop(stopped, epoch, nan_step)
    return stopped


def _score_epoch(run: _Run, epoch: int, ep: _TrainedEpoch, totals, train_time: float) -> tuple[dict, bool, bool]:
    """Validate, and record the epoch in the state: ``(metrics, improved, early stop)``."""
    cfg, backend, state = run.cfg, run.backend, run.state
    t = cfg.train
    acc = evaluate_val(run.model, backend.val_batches(), cfg, run.quantity, backend.device, backend.rank,
                       backend.world, run.choice.amp_dtype, run.opts.sources)
    metrics = epoch_metrics(epoch, ep.n_batches, backend.steps_per_epoch, state.step, totals.tolist(),
                            ep.wait_s, train_time, time.perf_counter() - ep.t_start,
                            time.perf_counter() - run.t_run, float(run.opt.param_groups[0]["lr"]), acc.metrics())
    score = selection_score(metrics, cfg.run.checkpoint_metric)
    improved = score < state.best
    state.best, state.since_best = (score, 0) if improved else (state.best, state.since_best + 1)
    stop = bool(t.early_stopping_patience and state.since_best >= t.early_stopping_patience)
    metrics["early_stop"] = float(stop)
    metrics.update(source_metrics(acc))  # val.<archive>.<metric> of a multi-archive plan
    state.epoch = epoch + 1
    state.history.append(metrics)
    state.extra.update(lead_table=acc.lead_table(), variable=run.variable, engine=run.engine.mode,
                       last_metrics=metrics)
    return metrics, improved, stop


def _report_epoch(run: _Run, epoch: int, metrics: dict, improved: bool) -> None:
    """The epoch's metrics to MLflow (once), then its checkpoint and report."""
    if run.tracker is not None and epoch + 1 not in run.logged:  # before the report: see the module docstring
        note = run.tracker.log_epoch(metrics, step=epoch + 1)  # kept, not blocking, while the server is away
        if note:
            run.backend.say(note)
        run.logged.add(epoch + 1)
    model, state, opt, sched, scaler = run.model, run.state, run.opt, run.sched, run.scaler
    run.backend.checkpoint(lambda d: save_checkpoint(d, model, run.cfg_dict, run.quantity,
                                                     state.capture(opt, sched, scaler)), metrics, improved)
