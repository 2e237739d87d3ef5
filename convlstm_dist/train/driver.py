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
import math
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from convlstm_dist.addresses import resolve_tracking_uri
from convlstm_dist.config import Config, build_model_from_config, flatten, to_yaml
from convlstm_dist.data import DataPlan, quantity_of_variable
from convlstm_dist.data.storage import ray_storage
from convlstm_dist.ray_session import ray_session, start_or_join_ray
from convlstm_dist.tracking import Tracker, check_reachable, ended_on_failure
from convlstm_dist.tracking.outbox import upload_command, write_outbox
from convlstm_dist.train.data_pin import log_pin, pin_run
from convlstm_dist.train.guards import (
    check_cluster_resources, check_storage_shared, check_storage_writable, is_shared_storage, user_error_from_failure,
)
from convlstm_dist.train.metrics import check_metric
from convlstm_dist.train.recovery import check_before_resume, intact_names, prune_deleted, storage_refusal
from convlstm_dist.train.report import final_report, publish_outputs
from convlstm_dist.vocabulary import metric_goal, selection_score


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


# set by Ray's job supervisor in the environment of every `ray job submit` driver (Ray 2.60,
# ray/_private/runtime_env/constants.py); RAY_JOB_ID is not
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_output_warning(cfg: Config, res: Resolved) -> str | None:
    """Inside ``ray job submit``: a line saying which outputs would stay on the node that runs the driver
    (with the default ``--workdir``, inside the job's temporary working dir), and how to send them
    elsewhere; None when nothing would."""
    import os

    if not os.environ.get(RAY_JOB_ENV):
        return None
    local = []
    if res.tracking_uri and res.tracking_uri.startswith("sqlite:"):
        local.append("MLflow runs (set MLFLOW_TRACKING_URI in the job's runtime env)")
    if not is_shared_storage(res.storage_path):
        local.append("checkpoints (set run.storage_path=s3://...)")
    if not local:
        return None
    inside = Path.cwd().resolve() in (res.workdir, *res.workdir.parents)  # the job's unpacked working dir
    return (f"[convlstm-dist] warning: this job keeps its {' and '.join(local)} under {res.workdir} on the node "
            f"that runs its driver" + (", inside the job's temporary working dir (removed with Ray's session)"
                                       if inside else ""))


def init_ray(cfg: Config, res: Resolved) -> bool:
    """Connect to (or start) Ray by the project's policy (:func:`convlstm_dist.ray_session.start_or_join_ray`),
    Ray's logs linked under the workdir; True if this call started a local Ray instance (this process owns it)."""
    return start_or_join_ray(cfg.scaling.ray_address, workdir=res.workdir)


def preflight(cfg: Config, workdir: str | Path, storage_path: str | None = None):
    """Everything that can fail without a cluster: config, archive, splits, checkpoint metric, tracking
    server, model, write access to the checkpoint storage (``storage_path``, default the run's)."""
    res = resolve(cfg, workdir)
    if res.tracking_uri:
        check_reachable(res.tracking_uri)
    plan = DataPlan.from_config(cfg, res.workdir)
    check_metric(cfg.run.checkpoint_metric, "run.checkpoint_metric", quantity_of_variable(plan.variable).name)
    model = build_model_from_config(cfg)  # architecture errors surface here, not in a worker
    if cfg.train.init_from:  # warm start: the weights load and fit before any worker starts
        from convlstm_dist.train.warm_start import apply_init_weights, load_init_weights

        apply_init_weights(model, load_init_weights(cfg.train.init_from, res.tracking_uri))
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
                  mode: str = "min", callbacks: list | None = None, data_version: list | None = None,
                  init=None):
    """The ``TorchTrainer`` of one run (used by ``train`` and by every Tune trial); ``data_version``:
    the frames the run is pinned to (``train/data_pin.py``), kept in its checkpoints; ``init``: the
    ``warm_start.InitWeights`` of ``train.init_from`` (loaded here when not given)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from convlstm_dist.train.fit import fault_nan_at
    from convlstm_dist.train.ray_worker import train_loop_per_worker

    check_cluster_resources(cfg)  # resources the cluster can never give: fail now, not wait forever
    check_storage_shared(storage_path)  # a local folder on a multi-node cluster: refused before a worker starts
    memory = data_loader(cfg, plan) == "memory"
    path, fs = ray_storage(storage_path, cfg.data.endpoint_url)
    check_before_resume(path, fs, run_name)  # a damaged newest checkpoint: resume from the newest intact one
    init_ref = None
    if cfg.train.init_from:  # the weights travel once through the object store, to workers on any node
        import ray

        from convlstm_dist.train.warm_start import load_init_weights

        init_ref = ray.put(init or load_init_weights(cfg.train.init_from, tracking_uri))
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "variable": plan.variable, "clock": clock_name,
                           "tracking_uri": tracking_uri, "run_id": run_id, "fault_nan_at": fault_nan_at(),
                           "data_version": data_version, "plan": plan if memory else None,
                           "sources": plan.source_names(), "init": init_ref, "storage": (path, fs)},
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
                                                   cfg.data.augment, cfg.data.read_retries,
                                                   cfg.data.read_block_mb),
        dataset_config=None if memory else ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: Config, workdir: str | Path = "workdir", progress: bool = True) -> TrainOutcome:
    res, plan = preflight(cfg, workdir)
    say = functools.partial(print, flush=True) if progress else (lambda *a, **k: None)  # progress reaches pipes now
    warning = job_output_warning(cfg, res)
    if warning:
        say(warning)
    with ray_session(cfg.scaling.ray_address, workdir=res.workdir):  # Ray's logs linked under the workdir
        check_storage_shared(res.storage_path)  # before the run's folder, a worker or an MLflow run exists
        return _pinned_and_tracked(cfg, res, plan, say, progress)


def _pinned_and_tracked(cfg: Config, res: Resolved, plan, say, progress: bool) -> TrainOutcome:
    """Pin the data version, open (or resume) the MLflow run, fit and report; the run ends FINISHED,
    FAILED or KILLED, never RUNNING."""
    plan, version = pin_run(cfg, res.workdir, f"{res.storage_path.rstrip('/')}/{res.run_name}",
                            cfg.data.endpoint_url, plan)
    say(f"[convlstm-dist] run '{res.run_name}': windows per split {plan.counts()}, "
        f"crop {plan.crop[0]}x{plan.crop[1]}, {cfg.scaling.num_workers} worker(s), "
        f"{data_loader(cfg, plan)} batches ({plan.memory_bytes() / 2**30:.2f} GiB of frames)")
    check_cluster_resources(cfg)  # before an MLflow run is opened for a run that could never start
    init = None
    if cfg.train.init_from:
        from convlstm_dist.train.warm_start import load_init_weights

        init = load_init_weights(cfg.train.init_from, res.tracking_uri)
    tracker = None
    if res.tracking_uri:
        tracker, resumed = Tracker.start_or_resume(res.tracking_uri, res.experiment, res.run_name,
                                                   tags={"convlstm_dist.recipe": cfg.name})
    with ended_on_failure(tracker):  # never leave the MLflow run RUNNING
        if tracker:
            tracker.log_params(flatten(cfg))
            tracker.log_text(to_yaml(cfg), "config.yaml")
            import json

            tracker.log_text(json.dumps(plan.record, indent=2, default=str), "split.json")
            log_pin(tracker, version)
            if init is not None:
                tracker.set_tags(init.tags)
            say(f"[convlstm-dist] MLflow {'resumed' if resumed else 'new'} run {tracker.run_id} at {res.tracking_uri}")
        out = _fit_and_report(cfg, plan, res, tracker, say, progress, version, init)
    if tracker:
        tracker.end("FAILED" if out.stopped else "FINISHED")
    return out


def _fit_and_report(cfg: Config, plan, res: Resolved, tracker, say, progress: bool,
                    data_version: list | None = None, init=None) -> TrainOutcome:
    import ray

    from convlstm_dist.data import epoch_clock

    ray.data.DataContext.get_current().enable_progress_bars = False
    clock_name = f"convlstm-epoch-clock-{res.run_name}"
    clock = epoch_clock(clock_name)
    trainer = build_trainer(cfg, plan, res.run_name, res.storage_path, clock_name, res.tracking_uri,
                            tracker.run_id if tracker else None, mode=metric_goal(cfg.run.checkpoint_metric),
                            data_version=data_version, init=init)
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

            user = storage_refusal(exc, *ray_storage(res.storage_path, cfg.data.endpoint_url), res.run_name)
        if user is not None:
            log = getattr(user, "log_path", None)
            if log is not None:
                publish_outputs(log, res.storage_path, res.run_name, "logs", cfg.data.endpoint_url, say)
            raise user from None  # ray_session stops Ray's forwarded worker logs before it is printed
        raise
    stopped = ray.get(clock.stop_reason.remote())
    ray.kill(clock)
    ckpt = _best_intact(cfg, res, result)
    metrics = dict(result.metrics or {})
    history, full = [], []
    if tracker:
        history, full = _reconcile_tracking(cfg, tracker, result.checkpoint, say)
    if stopped:
        say(f"[convlstm-dist] STOPPED: {stopped}")
    say(f"[convlstm-dist] training finished in {time.time() - t0:.0f} s")
    out = TrainOutcome(res.run_name, ckpt.path if ckpt else None, metrics, tracker.run_id if tracker else None,
                       res.tracking_uri, history, stopped=stopped)
    if ckpt is not None:
        report_dir = _final_report(cfg, plan, ckpt, tracker, out, res.workdir, progress, res.run_name, full)

        publish_outputs(report_dir, res.storage_path, res.run_name, "reports", cfg.data.endpoint_url, say)
    elif tracker is not None and tracker.offline:
        _keep_in_outbox(cfg, tracker, res.workdir, res.run_name, [], None, {}, 0, bool(stopped), say, full)
    return out


def _checkpoint_history(ckpt) -> list[dict]:
    """Every epoch's metrics, as the checkpoint's training state keeps them."""
    from convlstm_dist.checkpoint import read_checkpoint

    if ckpt is None:
        return []
    with ckpt.as_directory() as d:
        return list(read_checkpoint(d)["train"].get("history") or [])


def _reconcile_tracking(cfg: Config, tracker, latest, say) -> tuple[list[dict], list[dict]]:
    """After ``fit()``: make the MLflow run hold every epoch once. Epochs that rank 0 kept while the
    tracking server was away (or lost with a restarted worker) are sent from the latest checkpoint's
    history; a server that is still away is waited for ``tracking.outage_wait_s``, after which the
    run goes on offline (``tracker.offline``: the final report keeps everything in the outbox).
    Returns the ``val_loss`` history ``[{"epoch", "val_loss"}]`` and the checkpoint's full history."""
    history = _checkpoint_history(latest)
    if not tracker.wait_reachable(cfg.tracking.outage_wait_s, say):
        tracker.offline = True
        say(f"[mlflow] tracking server {tracker.uri} did not come back within {cfg.tracking.outage_wait_s:g} s: "
            "training results stay in the workdir (see below)")
        return [{"epoch": int(m["epoch"]), "val_loss": m["val_loss"]} for m in history if "val_loss" in m], history
    sent = tracker.send_missing(history)
    if sent:
        say(f"[mlflow] sent the metrics of epoch(s) {', '.join(map(str, sent))} that did not reach "
            f"{tracker.uri} during training")
    return [{"epoch": s, "val_loss": v} for s, v in tracker.metric_history("val_loss")], history


def _keep_in_outbox(cfg: Config, tracker, workdir: Path, run_name: str, files, model_dir, test: dict,
                    test_step: int, stopped: bool, say, history: list[dict] | None = None) -> None:
    path = write_outbox(workdir, run_name, tracker, history or [], files, model_dir,
                        cfg.tracking.register_model or cfg.name, "FAILED" if stopped else "FINISHED", test, test_step)
    say(f"[mlflow] kept for MLflow run {tracker.run_id}: {len(history or [])} epoch(s) of metrics, "
        f"{len(files)} report file(s){' and the model' if model_dir else ''} in {path}; when {tracker.uri} is "
        f"back, upload them with: {upload_command(path)}")


def _best_intact(cfg: Config, res: Resolved, result):
    """The best checkpoint Ray kept that the run's manifest lists as verified and not damaged (Ray may
    still track a damaged one it restored past); without a manifest, Ray's best or latest."""
    path, fs = ray_storage(res.storage_path, cfg.data.endpoint_url)
    prune_deleted(path, fs, res.run_name)
    ok = intact_names(path, fs, res.run_name)
    kept = [(c, m) for c, m in (result.best_checkpoints or [])
            if ok is None or c.path.rstrip("/").rsplit("/", 1)[-1] in ok]
    scored = [(c, m) for c, m in kept if math.isfinite(selection_score(m or {}, cfg.run.checkpoint_metric))]
    if scored:
        return min(scored, key=lambda cm: selection_score(cm[1], cfg.run.checkpoint_metric))[0]
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


def _final_report(cfg, plan, ckpt, tracker, out: TrainOutcome, workdir: Path, progress: bool,
                  run_name: str = "", full_history: list[dict] | None = None) -> Path:
    """Skill table (CSV + plot) of the best checkpoint, a forecast figure, the model in MLflow (or,
    with the tracking server gone, all of it in the workdir's outbox: ``tracking/outbox.py``); the
    folder of the report files."""
    from convlstm_dist.checkpoint import load_model, slim_checkpoint

    with ckpt.as_directory() as d:
        model, _, payload = load_model(d)
    out.metrics.setdefault("best_epoch", payload["train"].get("epoch"))
    report_dir = Path(tempfile.mkdtemp(prefix="report-", dir=workdir))
    offline = tracker is not None and tracker.offline
    say = print if progress else None
    files, out.model_uri, test = final_report(cfg, plan, model, payload, report_dir, None if offline else tracker, say)
    out.metrics.update(test)
    if offline:
        model_dir = slim_checkpoint(payload, report_dir / "best-model").parent
        # every epoch: the latest checkpoint's history (the best one may be older)
        _keep_in_outbox(cfg, tracker, workdir, run_name or out.run_name, files, model_dir, test,
                        int(payload["train"].get("epoch") or 0), bool(out.stopped),
                        say or (lambda *a, **k: None), full_history)
    return report_dir
