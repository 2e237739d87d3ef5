"""The training driver: config → preflight → Ray Train ``TorchTrainer`` → MLflow.

Embedded defaults (``--workdir DIR``): archive ``DIR/archive.zarr``, checkpoints ``DIR/runs``,
MLflow ``sqlite:///DIR/mlflow.db``. A remote Ray address, ``s3://`` storage and a tracking
server URI are configuration (``scaling.ray_address``, ``run.storage_path``, ``tracking.uri``
or ``MLFLOW_TRACKING_URI``).

A run is identified by its stable name (``run.name`` or the recipe name): running the same
command again resumes it from its latest checkpoint, in Ray Train and in MLflow.
"""

from __future__ import annotations

import functools
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from convlstm_dist.config import Config, build_model_from_config, flatten, to_yaml
from convlstm_dist.runtime import ray_storage, resolve_tracking_uri, start_or_join_ray


@dataclass
class Resolved:
    workdir: Path
    run_name: str
    storage_path: str
    tracking_uri: str | None
    experiment: str


@dataclass
class TrainOutcome:
    run_name: str
    checkpoint: str | None
    metrics: dict
    run_id: str | None
    tracking_uri: str | None
    history: list[dict] = field(default_factory=list)
    model_uri: str | None = None
    stopped: str | None = None


def resolve(cfg: Config, workdir: str | Path) -> Resolved:
    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    uri = None
    if cfg.tracking.enabled:
        uri = resolve_tracking_uri(cfg.tracking.uri, wd)
    return Resolved(wd, cfg.run.name or cfg.name, cfg.run.storage_path or str(wd / "runs"), uri,
                    cfg.tracking.experiment or cfg.name)


def init_ray(cfg: Config, res: Resolved) -> bool:
    """Connect to (or start) Ray by the project's policy (:func:`convlstm_dist.runtime.start_or_join_ray`),
    Ray's logs linked under the workdir; True if this call started a local Ray instance (this process owns it)."""
    return start_or_join_ray(cfg.scaling.ray_address, workdir=res.workdir)


def preflight(cfg: Config, workdir: str | Path, storage_path: str | None = None):
    """Everything that can fail without a cluster: config, archive, splits, checkpoint metric, tracking
    server, model, write access to the checkpoint storage (``storage_path``, default the run's)."""
    from convlstm_dist.data import DataPlan, quantity_of_variable
    from convlstm_dist.tracking import check_reachable
    from convlstm_dist.train.guards import check_storage_writable
    from convlstm_dist.train.metrics import check_metric

    res = resolve(cfg, workdir)
    if res.tracking_uri:
        check_reachable(res.tracking_uri)
    plan = DataPlan.from_config(cfg, res.workdir)
    check_metric(cfg.run.checkpoint_metric, "run.checkpoint_metric", quantity_of_variable(plan.variable).name)
    build_model_from_config(cfg)  # architecture errors surface here, not in a worker
    check_storage_writable(storage_path or res.storage_path, cfg.data.endpoint_url,
                           "run.storage_path" if storage_path is None else "the sweep's storage path")
    return res, plan


def data_loader(cfg: Config, plan) -> str:
    """``stream`` or ``memory``: how the workers get batches (``data.loader``; auto = memory when the
    plan's frames fit ``data.memory_limit_gb`` per worker)."""
    if cfg.data.loader != "auto":
        return cfg.data.loader
    return "memory" if plan.memory_bytes() <= cfg.data.memory_limit_gb * 2**30 else "stream"


def build_trainer(cfg: Config, plan, run_name: str, storage_path: str, clock_name: str,
                  tracking_uri: str | None, run_id: str | None, metric: str | None = None,
                  mode: str = "min", callbacks: list | None = None, data_version: list | None = None):
    """The ``TorchTrainer`` of one run (used by ``train`` and by every Tune trial); ``data_version``:
    the frames the run is pinned to (``train/data_pin.py``), kept in its checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from convlstm_dist.train.fit import fault_nan_at
    from convlstm_dist.train.guards import check_cluster_resources
    from convlstm_dist.train.ray_worker import train_loop_per_worker
    from convlstm_dist.train.recovery import check_before_resume

    check_cluster_resources(cfg)  # resources the cluster can never give: fail now, not wait forever
    memory = data_loader(cfg, plan) == "memory"
    path, fs = ray_storage(storage_path, cfg.data.endpoint_url)
    check_before_resume(path, fs, run_name)  # a damaged newest checkpoint: resume from the newest intact one
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "variable": plan.variable, "clock": clock_name,
                           "tracking_uri": tracking_uri, "run_id": run_id, "fault_nan_at": fault_nan_at(),
                           "data_version": data_version, "plan": plan if memory else None,
                           "sources": plan.source_names(), "storage": (path, fs)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints,
                                                         checkpoint_score_attribute=metric or cfg.run.checkpoint_metric,
                                                         checkpoint_score_order=mode),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            callbacks=callbacks or [],
        ),
        datasets=None if memory else plan.datasets(cfg.data.seed, clock_name, cfg.data.crops_per_window,
                                                   cfg.data.augment),
        dataset_config=None if memory else ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: Config, workdir: str | Path = "workdir", progress: bool = True) -> TrainOutcome:
    from convlstm_dist.train.data_pin import log_pin, pin_run
    from convlstm_dist.train.guards import check_cluster_resources

    res, plan = preflight(cfg, workdir)
    say = functools.partial(print, flush=True) if progress else (lambda *a, **k: None)  # progress reaches pipes now
    plan, version = pin_run(cfg, res.workdir, f"{res.storage_path.rstrip('/')}/{res.run_name}",
                            cfg.data.endpoint_url, plan)
    say(f"[convlstm-dist] run '{res.run_name}': windows per split {plan.counts()}, "
        f"crop {plan.crop[0]}x{plan.crop[1]}, {cfg.scaling.num_workers} worker(s), "
        f"{data_loader(cfg, plan)} batches ({plan.memory_bytes() / 2**30:.2f} GiB of frames)")
    own_ray = init_ray(cfg, res)
    check_cluster_resources(cfg)  # before an MLflow run is opened for a run that could never start
    tracker = None
    if res.tracking_uri:
        from convlstm_dist.tracking import Tracker

        tracker, resumed = Tracker.start_or_resume(res.tracking_uri, res.experiment, res.run_name,
                                                   tags={"convlstm_dist.recipe": cfg.name})
    try:
        if tracker:
            tracker.log_params(flatten(cfg))
            tracker.log_text(to_yaml(cfg), "config.yaml")
            import json

            tracker.log_text(json.dumps(plan.record, indent=2, default=str), "split.json")
            log_pin(tracker, version)
            say(f"[convlstm-dist] MLflow {'resumed' if resumed else 'new'} run {tracker.run_id} at {res.tracking_uri}")
        out = _fit_and_report(cfg, plan, res, tracker, say, progress, own_ray, version)
    except BaseException as exc:  # never leave the MLflow run RUNNING
        if tracker:
            try:
                tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise
    if tracker:
        tracker.end("FAILED" if out.stopped else "FINISHED")
    return out


def _fit_and_report(cfg: Config, plan, res: Resolved, tracker, say, progress: bool,
                    own_ray: bool = False, data_version: list | None = None) -> TrainOutcome:
    import ray

    from convlstm_dist.data import epoch_clock
    from convlstm_dist.train.guards import user_error_from_failure

    ray.data.DataContext.get_current().enable_progress_bars = False
    clock_name = f"convlstm-epoch-clock-{res.run_name}"
    clock = epoch_clock(clock_name)
    trainer = build_trainer(cfg, plan, res.run_name, res.storage_path, clock_name, res.tracking_uri,
                            tracker.run_id if tracker else None, data_version=data_version)
    t0 = time.time()
    try:
        with _progress_lines(clock, say):
            result = trainer.fit()
    except Exception as exc:
        ray.kill(clock)
        # a UserError raised in a worker (e.g. the archive vanished) arrives wrapped in Ray Train's
        # WorkerGroupError: show its one line, keep the ~700-line traceback in <workdir>/logs/
        user = user_error_from_failure(exc, res.workdir / "logs", res.run_name)
        if user is None:  # Ray Train's controller failed to write its own files to the storage
            from convlstm_dist.train.recovery import storage_refusal

            user = storage_refusal(exc, *ray_storage(res.storage_path, cfg.data.endpoint_url), res.run_name)
        if user is not None:
            if own_ray:  # stop Ray's forwarded worker logs now, so that the message is the last line
                ray.shutdown()
            raise user from None
        raise
    stopped = ray.get(clock.stop_reason.remote())
    ray.kill(clock)
    ckpt = _best_intact(cfg, res, result)
    metrics = dict(result.metrics or {})
    history = []
    if tracker:
        history = [{"epoch": s, "val_loss": v} for s, v in tracker.metric_history("val_loss")]
    if stopped:
        say(f"[convlstm-dist] STOPPED: {stopped}")
    say(f"[convlstm-dist] training finished in {time.time() - t0:.0f} s")
    out = TrainOutcome(res.run_name, ckpt.path if ckpt else None, metrics, tracker.run_id if tracker else None,
                       res.tracking_uri, history, stopped=stopped)
    if ckpt is not None:
        _final_report(cfg, plan, ckpt, tracker, out, res.workdir, progress)
    return out


def _best_intact(cfg: Config, res: Resolved, result):
    """The best checkpoint Ray kept that the run's manifest lists as verified and not damaged (Ray may
    still track a damaged one it restored past); without a manifest, Ray's best or latest."""
    from convlstm_dist.train.recovery import intact_names, prune_deleted

    path, fs = ray_storage(res.storage_path, cfg.data.endpoint_url)
    prune_deleted(path, fs, res.run_name)
    ok = intact_names(path, fs, res.run_name)
    kept = [(c, m) for c, m in (result.best_checkpoints or [])
            if ok is None or c.path.rstrip("/").rsplit("/", 1)[-1] in ok]
    scored = [(c, m) for c, m in kept if cfg.run.checkpoint_metric in (m or {})]
    if scored:
        return min(scored, key=lambda cm: cm[1][cfg.run.checkpoint_metric])[0]
    if result.checkpoint is not None and (ok is None or result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1] in ok):
        return result.checkpoint
    return kept[-1][0] if kept else None


@contextmanager
def _progress_lines(clock, say, every_s: float = 0.5):
    """Print the lines rank 0 notes on the epoch clock (one per epoch), while ``fit()`` runs.

    Worker and Ray-internal output is not forwarded to this terminal (``log_to_driver=False``):
    it stays in Ray's session logs, whose folder ``init_ray`` links as ``<workdir>/logs/ray``.
    """
    import threading

    import ray

    stop, seen = threading.Event(), [0]

    def pump():
        try:
            lines = ray.get(clock.lines_since.remote(seen[0]), timeout=30)
        except Exception:  # noqa: BLE001 - progress output must never break training
            return
        seen[0] += len(lines)
        for line in lines:
            say(line)

    def loop():
        while not stop.wait(every_s):
            pump()

    thread = threading.Thread(target=loop, name="progress-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        pump()


def _final_report(cfg, plan, ckpt, tracker, out: TrainOutcome, workdir: Path, progress: bool) -> None:
    """Skill table (CSV + plot) of the best checkpoint, a forecast figure, the model in MLflow."""
    from convlstm_dist.checkpoint import load_model
    from convlstm_dist.train.report import final_report

    with ckpt.as_directory() as d:
        model, _, payload = load_model(d)
    out.metrics.setdefault("best_epoch", payload["train"].get("epoch"))
    report_dir = Path(tempfile.mkdtemp(prefix="report-", dir=workdir))
    _, out.model_uri, test = final_report(cfg, plan, model, payload, report_dir, tracker, print if progress else None)
    out.metrics.update(test)
