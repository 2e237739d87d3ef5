"""Single-process training without Ray: ``convlstm-dist train --local``.

For one GPU (or a CPU) where a Ray cluster is not wanted or not installed: a workstation, a
notebook, a lent GPU box. The recipe, model, losses, validation metrics (``ValAccumulator``) and
checkpoint format are those of ``train``, so ``evaluate``, ``nowcast`` and ``Nowcaster`` take its
checkpoints. What differs:

* one process, no Ray Data: the frames of each split are read once into memory
  (:func:`convlstm_dist.data.samples.load_block`) and batches are cut from them in a background
  thread; archives larger than ``max_memory_gb`` are refused (stream them with ``train``);
* on CUDA with the fast model, the whole training step (forward, loss, backward, clipping,
  optimizer) is one CUDA graph (``CudaGraphTrainStep``); the last, smaller batch of an epoch is
  dropped then. If capture fails, training goes on with eager steps and says so;
* ``time_budget_s`` ends training at a step boundary; the partial epoch is validated and
  checkpointed like a full one;
* output folder ``<workdir>/local/<run name>/``: ``latest/`` and ``best/`` checkpoints (rerunning
  resumes from ``latest``), ``history.csv``, ``curves.png``, ``skill.csv``/``skill.png`` and
  ``forecast.png`` of the best checkpoint, ``summary.json`` (with test-split metrics if the plan
  has a test split). MLflow logging happens when ``tracking.enabled`` and mlflow is importable.
"""

from __future__ import annotations

import csv
import json
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convlstm_dist.checkpoint import read_checkpoint, save_checkpoint
from convlstm_dist.config import Config, build_model_from_config
from convlstm_dist.data.transforms import model_quantity
from convlstm_dist.errors import UserError
from convlstm_dist.train.driver import Resolved, resolve
from convlstm_dist.train.engine import StepEngine, choose_engine
from convlstm_dist.train.loop import (TimedBatches, epoch_line, evaluate_val, fault_nan_at, load_resumed_weights,
                                      make_optimizer, make_scheduler, poison, training_loss)
from convlstm_dist.train.state import TrainState

EVAL_BATCH = 64


@dataclass
class LocalOutcome:
    run_name: str
    out_dir: Path
    checkpoint: Path | None
    metrics: dict
    test_metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None
    graph: bool = False
    engine: str = "eager"


def to_device(batch: dict, device: torch.device) -> dict:
    """A batch of tensors on ``device`` (through pinned memory, asynchronously, to CUDA)."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=pin) for k, v in batch.items()}


def prefetch(it, device: torch.device, depth: int = 2):
    """Iterate ``it`` (numpy batch dicts) in a thread, yielding tensors on ``device``."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work():
        try:
            for b in it:
                q.put({k: torch.from_numpy(v) for k, v in b.items()})
        except BaseException as err:  # surfaced in the consumer
            q.put(err)
        q.put(done)

    threading.Thread(target=work, daemon=True).start()
    while True:
        b = q.get()
        if b is done:
            return
        if isinstance(b, BaseException):
            raise b
        yield to_device(b, device)


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    return torch.device(requested)


def _write_history(rows: list[dict], out_dir: Path) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("epoch", "step", "train_loss", "val_loss"), k))
    with (out_dir / "history.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [r["epoch_float"] for r in rows]
    ax[0].plot(ep, [r["train_loss"] for r in rows], "-o", label="train")
    ax[0].plot(ep, [r["val_loss"] for r in rows], "-s", label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss")
    ax[0].legend()
    key = "val_cross_entropy" if "val_cross_entropy" in rows[0] else "val_mse"
    ax[1].plot(ep, [r[key] for r in rows], "-o", label="model")
    if key == "val_mse":
        ax[1].plot(ep, [r["val_persistence_mse"] for r in rows], "--", label="persistence")
        ax[1].legend()
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel(key)
    fig.tight_layout()
    fig.savefig(out_dir / "curves.png", dpi=110)
    plt.close(fig)


def train_local(cfg: Config, workdir: str | Path = "workdir", device: str = "auto",
                time_budget_s: float | None = None, cuda_graph: bool | None = None,
                max_memory_gb: float = 48.0, progress: bool = True, log_every_s: float = 30.0) -> LocalOutcome:
    from convlstm_dist.data.plan import DataPlan

    say = print if progress else (lambda *a, **k: None)
    res = resolve(cfg, workdir)  # workdir, run name, MLflow URI and experiment as for `train`
    plan = DataPlan.from_config(cfg, res.workdir)
    run_name = res.run_name
    out_dir = res.workdir / "local" / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    need = plan.memory_bytes()
    if need > max_memory_gb * 2**30:
        raise UserError(f"--local keeps the archive's frames in memory: {need / 2**30:.1f} GiB needed, limit "
                        f"{max_memory_gb:g} GiB (--max-memory-gb); use `convlstm-dist train` (Ray Data streaming)")
    t_load = time.perf_counter()
    splits = plan.memory_splits()
    say(f"[local] run '{run_name}' on {dev}: windows per split {plan.counts()}, crop {plan.crop[0]}x{plan.crop[1]}, "
        f"frames loaded in {time.perf_counter() - t_load:.1f} s ({need / 2**30:.2f} GiB)")

    quantity = model_quantity(plan.variable)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    if cuda_graph and dev.type != "cuda":
        raise UserError("--cuda-graph needs a CUDA device")
    choice = choose_engine(cfg, dev, 1, None if cuda_graph is None else ("graph" if cuda_graph else "eager"))
    mode, amp_dtype = choice.mode, choice.amp_dtype
    model = build_model_from_config(cfg, compile=mode in ("compiled", "graph"),
                                    channels_last=choice.channels_last).to(dev)
    opt = make_optimizer(cfg.train, model.parameters(), dev if mode == "graph" else None)
    sched = make_scheduler(cfg.train, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=choice.precision == "fp16")
    state = TrainState()
    latest = out_dir / "latest"
    if (latest / "checkpoint.pt").exists():
        payload = read_checkpoint(latest)
        load_resumed_weights(model, payload["model"], run_name, str(latest))
        state = TrainState.restore(payload["train"], opt, sched, scaler, dev)
        say(f"[local] resumed from {latest} (epoch {state.epoch}, step {state.step})")
    step_loss = training_loss(cfg.train.loss, quantity)
    engine = StepEngine(model, model, opt, scaler, step_loss, cfg.data.out_len, amp_dtype, cfg.train.grad_clip,
                        mode, dev, say=say)
    say(choice.line(dev))
    tracker = _open_tracker(cfg, res, run_name)
    if tracker is not None:
        state.run_id = tracker.run_id
    fault_at = fault_nan_at()
    d, t = cfg.data, cfg.train

    def train_batches(epoch):
        return prefetch(splits["train"].batches(d.batch_size, d.seed, epoch, True, d.crops_per_window, d.augment,
                                                drop_last=mode == "graph"), dev)

    def eval_batches(split):
        return prefetch(splits[split].batches(EVAL_BATCH, d.seed + 10_000, 0, False), dev)

    n_train = splits["train"].n_windows * d.crops_per_window
    if mode == "graph" and n_train < d.batch_size:
        raise UserError(f"fewer training windows than one batch ({d.batch_size}); lower data.batch_size")
    steps_per_epoch = max(1, n_train // d.batch_size if mode == "graph" else math.ceil(n_train / d.batch_size))
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    t_start = time.perf_counter()
    stopped, metrics, best_ckpt = None, {}, (out_dir / "best") if (out_dir / "best" / "checkpoint.pt").exists() else None
    history = state.history
    epochs_run = 0
    try:
        for epoch in range(state.epoch, t.epochs):
            t_epoch = time.perf_counter()
            sum_loss = torch.zeros((), device=dev)
            n_batches = n_samples = 0
            last_log, nan_step, out_of_time = time.perf_counter(), None, False
            engine.reset_guard(state.step)
            batches = TimedBatches(train_batches(epoch))
            for x, y, m in batches:
                if fault_at == [epoch, n_batches]:  # fault injection for tests of the NaN guard
                    x = poison(x)
                sum_loss += engine.step(x, y, m)
                n_batches += 1
                n_samples += x.shape[0]
                state.step += 1
                if engine.check_due() and (nan_step := engine.check()) is not None:
                    break
                now = time.perf_counter()
                if now - last_log > log_every_s:
                    last_log = now
                    say(f"[local]   epoch {epoch + 1} step {n_batches}/{steps_per_epoch}  "
                        f"loss {float(sum_loss) / n_batches:.5f}  {n_samples / (now - t_epoch):.1f} samples/s")
                if time_budget_s is not None and now - t_start > time_budget_s:
                    out_of_time = True
                    break
                if t.max_steps_per_epoch and n_batches >= t.max_steps_per_epoch:
                    break
            if nan_step is None:
                nan_step = engine.check()
            if nan_step is not None:
                stopped = f"non-finite training loss at epoch {epoch} step {nan_step}; stopped, last good checkpoint kept"
                say(f"[local] STOPPED: {stopped}")
                if tracker is not None:
                    tracker.set_tags({"convlstm_dist.stopped": stopped})
                break
            if n_batches == 0:
                break
            if sched is not None:
                sched.step()
            train_time = time.perf_counter() - t_epoch
            acc = evaluate_val(model, eval_batches("val"), cfg, quantity, dev, 0, 1, amp_dtype)
            metrics = {
                "epoch": epoch + 1, "epoch_float": epoch + n_batches / steps_per_epoch, "step": state.step,
                "train_loss": float(sum_loss) / n_batches, "samples_per_s": n_samples / max(train_time, 1e-9),
                "data_wait_share": batches.wait / max(train_time, 1e-9),
                "epoch_time_s": time.perf_counter() - t_epoch,
                "elapsed_s": time.perf_counter() - t_start, "lr": float(opt.param_groups[0]["lr"]),
                **{k: float(v) for k, v in acc.metrics().items()},
            }
            history.append(metrics)
            improved = metrics["val_loss"] < state.best
            state.best, state.since_best = (metrics["val_loss"], 0) if improved else (state.best, state.since_best + 1)
            state.epoch = epoch + 1
            state.extra.update(lead_table=acc.lead_table(), variable=plan.variable, engine=engine.mode)
            train_state = state.capture(opt, sched, scaler)
            save_checkpoint(latest, model, cfg.model_dump(mode="json"), quantity, train_state)
            if improved:
                best_ckpt = out_dir / "best"
                save_checkpoint(best_ckpt, model, cfg.model_dump(mode="json"), quantity, train_state)
            _write_history(history, out_dir)
            if tracker is not None:  # every epoch: a crash leaves everything so far in MLflow
                tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=epoch + 1)
            epochs_run += 1
            eta = (time.perf_counter() - t_start) / epochs_run * (t.epochs - epoch - 1)
            say(epoch_line(metrics, t.epochs, eta))
            if t.early_stopping_patience and state.since_best >= t.early_stopping_patience:
                say(f"[local] early stop: no validation improvement for {state.since_best} epochs")
                break
            if out_of_time:
                say(f"[local] time budget of {time_budget_s:g} s reached after {state.step} steps (epoch {epoch + 1}, "
                    f"{n_batches}/{steps_per_epoch} steps into it)")
                break
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise

    out = LocalOutcome(run_name, out_dir, best_ckpt, metrics, history=history, stopped=stopped,
                       graph=engine.graph is not None, engine=engine.mode)
    if best_ckpt is not None:
        _final_report(cfg, res, plan, splits, best_ckpt, out, quantity, dev, amp_dtype, say, tracker)
    elif tracker is not None:
        tracker.end("FAILED" if stopped else "FINISHED")
    return out


def _final_report(cfg, res: Resolved, plan, splits, best_ckpt: Path, out: LocalOutcome, quantity, dev, amp_dtype,
                  say, tracker=None) -> None:
    from convlstm_dist.checkpoint import load_model
    from convlstm_dist.train.report import forecast_figure, skill_outputs

    model, _, payload = load_model(best_ckpt, dev)
    files = skill_outputs(payload["train"].get("lead_table", []), cfg.data.out_len,
                          plan.record.get("timestep_s", 300), out.out_dir)
    files.append(forecast_figure(model.cpu(), plan, quantity, out.out_dir))
    model.to(dev)
    if "test" in splits:
        acc = evaluate_val(model, prefetch(splits["test"].batches(EVAL_BATCH, cfg.data.seed + 20_000, 0, False), dev),
                           cfg, quantity, dev, 0, 1, amp_dtype)
        out.test_metrics = {k.replace("val_", "test_", 1): v for k, v in acc.metrics().items()}
    summary = {"run": out.run_name, "best_epoch": payload["train"].get("epoch"), "stopped": out.stopped,
               "cuda_graph": out.graph, "engine": out.engine, "last": out.metrics, "test": out.test_metrics,
               "windows": plan.counts(), "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
               "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
    (out.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    _finish_tracking(tracker, out, files)
    for f in [*files, out.out_dir / "curves.png", out.out_dir / "summary.json"]:
        say(f"[local] wrote {f}")
    if out.test_metrics:
        key = "test_cross_entropy" if "test_cross_entropy" in out.test_metrics else "test_mse"
        say(f"[local] test split ({plan.counts().get('test')} windows, best checkpoint): {key} {out.test_metrics[key]:.4f}")


def _open_tracker(cfg, res: Resolved, run_name: str):
    """The MLflow run of this local run (resumed by run name), when tracking is enabled and mlflow
    is installed (a bare GPU box may have neither mlflow nor a server); None otherwise."""
    if res.tracking_uri is None:
        return None
    from convlstm_dist.tracking import mlflow_available

    if not mlflow_available():
        print("[local] mlflow is not installed: run not tracked (history.csv and summary.json have it all)")
        return None
    from convlstm_dist.config import flatten
    from convlstm_dist.tracking.mlflow_tracker import Tracker

    tracker, resumed = Tracker.start_or_resume(res.tracking_uri, res.experiment, f"{run_name}-local",
                                               tags={"convlstm_dist.recipe": cfg.name, "convlstm_dist.mode": "local"})
    if not resumed:
        tracker.log_params(flatten(cfg))
    print(f"[local] MLflow {'resumed' if resumed else 'new'} run {tracker.run_id} at {res.tracking_uri}")
    return tracker


def _finish_tracking(tracker, out: LocalOutcome, files: list[Path]) -> None:
    if tracker is None:
        return
    if out.test_metrics:
        tracker.log_metrics(out.test_metrics, step=int(out.history[-1]["epoch"]) if out.history else 0)
    for f in [*files, out.out_dir / "curves.png", out.out_dir / "history.csv"]:
        if f.exists():
            tracker.log_artifact(f)
    tracker.end("FAILED" if out.stopped else "FINISHED")
