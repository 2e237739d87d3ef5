"""The single-process backend of the training loop: ``convlstm-dist train --local``.

For one GPU (or a CPU) where a Ray cluster is not wanted or not installed: a workstation, a
notebook, a lent GPU box. The loop is :func:`convlstm_dist.train.fit.fit`, the same as the Ray
Train workers' (same step engine, NaN guard, time budget, validation, early stopping, MLflow per
epoch, ``TrainState``), so ``evaluate``, ``nowcast`` and ``Nowcaster`` take its checkpoints. What
this backend supplies:

* batches without Ray Data: the frames of each split are read once into memory
  (:meth:`convlstm_dist.data.plan.DataPlan.memory_splits`) and cut into compact batches in a
  background thread, pinned and copied to the device 2 batches ahead; archives larger than
  ``data.memory_limit_gb`` are refused (stream them with ``train``);
* checkpoints in ``<workdir>/local/<run name>/``: ``latest/`` (rerunning resumes from it) and
  ``best/``, plus ``history.csv`` and ``curves.png`` after every epoch;
* at the end, for the best checkpoint: ``skill.csv``/``skill.png``, ``forecast.png``, test-split
  metrics and ``summary.json``; with tracking on (and mlflow importable) the MLflow run
  ``<run name>-local`` gets every epoch, these files and the registered model.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convlstm_dist.checkpoint import load_model, read_checkpoint
from convlstm_dist.config import Config, build_model_from_config, flatten
from convlstm_dist.errors import UserError
from convlstm_dist.tracking import ended_on_failure, mlflow_available
from convlstm_dist.tracking.mlflow_tracker import Tracker
from convlstm_dist.train.backend import Backend, FitOptions
from convlstm_dist.train.data_pin import log_pin, pin_run
from convlstm_dist.train.driver import Resolved, resolve
from convlstm_dist.train.engine import choose_engine
from convlstm_dist.train.feed import prefetch
from convlstm_dist.train.fit import fault_nan_at, fit
from convlstm_dist.train.report import final_report
from convlstm_dist.train.validation import EVAL_BATCH
from convlstm_dist.train.warm_start import apply_init_weights, load_init_weights

LOCAL_MEMORY_LIMIT_GB = 48.0  # train --local: frames held in memory unless data.memory_limit_gb is set


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
    model_uri: str | None = None


class LocalBackend(Backend):
    """One process: in-memory splits, checkpoints and history in ``out_dir``."""

    def __init__(self, cfg: Config, splits: dict, out_dir: Path, device: torch.device, run_name: str,
                 steps_per_epoch: int, progress: bool):
        self.cfg, self.splits, self.out_dir = cfg, splits, out_dir
        self.device, self.run_name, self.steps_per_epoch = device, run_name, steps_per_epoch
        self.progress = progress
        self.history: list[dict] = []

    def say(self, msg: str) -> None:
        if self.progress:
            print(msg, flush=True)

    def restore(self):
        latest = self.out_dir / "latest"
        if not (latest / "checkpoint.pt").exists():
            return None
        payload = read_checkpoint(latest)
        self.history = list(payload["train"].get("history") or [])
        return payload, str(latest)

    def train_batches(self, epoch: int, drop_last: bool):
        d = self.cfg.data
        return prefetch(self.splits["train"].batches(d.batch_size, d.seed, epoch, True, d.crops_per_window,
                                                     d.augment, drop_last=drop_last), self.device)

    def val_batches(self):
        return prefetch(self.splits["val"].batches(EVAL_BATCH, self.cfg.data.seed + 10_000, 0, False), self.device)

    def checkpoint(self, write, metrics: dict, improved: bool) -> None:
        write(self.out_dir / "latest")
        if improved:
            write(self.out_dir / "best")
        self.history.append(metrics)
        _write_history(self.history, self.out_dir)

    def nan_stop(self, message: str, epoch: int, step: int) -> None:
        self.say(f"[local] STOPPED: {message}")


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
    ep = [r.get("epoch_float", r["epoch"]) for r in rows]
    ax[0].plot(ep, [r.get("train_loss") for r in rows], "-o", label="train")
    ax[0].plot(ep, [r.get("val_loss") for r in rows], "-s", label="validation")
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
                max_memory_gb: float | None = None, progress: bool = True, log_every_s: float = 30.0) -> LocalOutcome:
    """Train ``cfg`` in this process (resuming ``<workdir>/local/<run>/latest``). ``time_budget_s``
    overrides ``train.time_budget_s``; ``cuda_graph`` True/False forces the graph/eager engine.
    The frames must fit ``max_memory_gb``, else ``data.memory_limit_gb`` where the recipe or an
    override sets it, else ``LOCAL_MEMORY_LIMIT_GB``."""
    say = functools.partial(print, flush=True) if progress else (lambda *a, **k: None)  # progress reaches pipes now
    if time_budget_s is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.train.time_budget_s = time_budget_s
    res = resolve(cfg, workdir)  # workdir, run name, MLflow URI and experiment as for `train`
    run_name = res.run_name
    out_dir = res.workdir / "local" / run_name
    plan, version = pin_run(cfg, res.workdir, out_dir)  # a rerun plans on the frames the run started with
    dev = _device(device)
    need = plan.memory_bytes()
    if max_memory_gb is None:
        set_here = "memory_limit_gb" in cfg.data.model_fields_set
        max_memory_gb = cfg.data.memory_limit_gb if set_here else LOCAL_MEMORY_LIMIT_GB
    if need > max_memory_gb * 2**30:
        raise UserError(f"--local keeps the archive's frames in memory: {need / 2**30:.1f} GiB needed, limit "
                        f"{max_memory_gb:g} GiB (--memory-limit-gb, data.memory_limit_gb); use `convlstm-dist train` "
                        "(Ray Data streaming)")
    if cuda_graph and dev.type != "cuda":
        raise UserError("--cuda-graph needs a CUDA device")
    engine = None if cuda_graph is None else ("graph" if cuda_graph else "eager")
    t_load = time.perf_counter()
    splits = plan.memory_splits(("train", "val"))  # the test split is read by the final report
    say(f"[local] run '{run_name}' on {dev}: windows per split {plan.counts()}, crop {plan.crop[0]}x{plan.crop[1]}, "
        f"frames loaded in {time.perf_counter() - t_load:.1f} s ({need / 2**30:.2f} GiB)")
    d, t = cfg.data, cfg.train
    graph = choose_engine(cfg, dev, 1, engine).mode == "graph"
    n_train = splits["train"].n_windows * d.crops_per_window
    if graph and n_train < d.batch_size:
        raise UserError(f"fewer training windows than one batch ({d.batch_size}); lower data.batch_size")
    steps_per_epoch = max(1, n_train // d.batch_size if graph else math.ceil(n_train / d.batch_size))
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    backend = LocalBackend(cfg, splits, out_dir, dev, run_name, steps_per_epoch, progress)
    init = None
    if cfg.train.init_from:  # warm start: loaded and checked before the MLflow run opens

        init = load_init_weights(cfg.train.init_from, res.tracking_uri)
        apply_init_weights(build_model_from_config(cfg), init)
    tracker = _open_tracker(cfg, res, run_name)
    with ended_on_failure(tracker):
        if tracker is not None:
            log_pin(tracker, version)
            if init is not None:
                tracker.set_tags(init.tags)
        r = fit(cfg, backend, plan.variable, tracker, FitOptions(engine=engine, fault_nan_at=fault_nan_at(),
                                                                 log_every_s=log_every_s, data_version=version,
                                                                 sources=plan.source_names(), init_weights=init))
    best = out_dir / "best"
    out = LocalOutcome(run_name, out_dir, best if (best / "checkpoint.pt").exists() else None, r.metrics,
                       history=backend.history, stopped=r.stopped, graph=r.graph, engine=r.engine)
    try:
        if out.checkpoint is not None:
            _final_report(cfg, res, plan, out, dev, r.choice.amp_dtype, say, tracker)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None:
        tracker.end("FAILED" if out.stopped else "FINISHED")
    return out


def _final_report(cfg, res: Resolved, plan, out: LocalOutcome, dev, amp_dtype, say, tracker=None) -> None:
    model, _, payload = load_model(out.checkpoint, dev)
    _, out.model_uri, out.test_metrics = final_report(cfg, plan, model, payload, out.out_dir, tracker, say,
                                                      device=dev, amp_dtype=amp_dtype)
    summary = {"run": out.run_name, "best_epoch": payload["train"].get("epoch"), "stopped": out.stopped,
               "cuda_graph": out.graph, "engine": out.engine, "last": out.metrics, "test": out.test_metrics,
               "windows": plan.counts(), "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
               "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
               "model_uri": out.model_uri}
    (out.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if tracker is not None:
        for f in (out.out_dir / "curves.png", out.out_dir / "history.csv", out.out_dir / "summary.json"):
            if f.exists():
                tracker.log_artifact(f)
    for f in (out.out_dir / "curves.png", out.out_dir / "summary.json"):
        say(f"[local] wrote {f}")


def _open_tracker(cfg, res: Resolved, run_name: str):
    """The MLflow run of this local run (resumed by run name), when tracking is enabled and mlflow
    is installed (a bare GPU box may have neither mlflow nor a server); None otherwise."""
    if res.tracking_uri is None:
        return None

    if not mlflow_available():
        print("[local] mlflow is not installed: run not tracked (history.csv and summary.json have it all)")
        return None

    tracker, resumed = Tracker.start_or_resume(res.tracking_uri, res.experiment, f"{run_name}-local",
                                               tags={"convlstm_dist.recipe": cfg.name, "convlstm_dist.mode": "local"})
    if not resumed:
        tracker.log_params(flatten(cfg))
    print(f"[local] MLflow {'resumed' if resumed else 'new'} run {tracker.run_id} at {res.tracking_uri}")
    return tracker
