"""The sweep driver: sweep YAML → Ray Tune (ASHA) over distributed Ray Train trials → MLflow.

Each trial is a full distributed training run: the trial function (:mod:`.trial`) builds a
``TorchTrainer`` with its own workers and ``ray.train.RunConfig(name=<sweep>-<trial id>,
callbacks=[TuneReportCallback()])`` so every epoch report reaches Tune and ASHA can stop weak
trials. Results live under ``<storage_path>/<sweep name>`` (default ``<workdir>/sweeps``, may be
``s3://``); running the same command again after the driver died restores the Tuner there:
finished trials are kept, unfinished and errored ones continue (each trial's Train run resumes
from its own latest checkpoint).

MLflow: one parent run per sweep (found again by its run key on resume), one child run per trial
(tag ``mlflow.parentRunId``; the trial's parameters, per-epoch metrics from rank 0). At the end the
best trial's recipe is exported as ``<workdir>/sweeps/<name>/best_recipe.yaml``, its best checkpoint's
model is registered, and a summary table and per-axis plots (:mod:`.report`) go to the parent run.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

from convlstm_dist.config import Config, config_from_dict, flatten, to_yaml
from convlstm_dist.data import SAMPLE_READER, quantity_of_variable, sample_files
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.storage import ray_storage
from convlstm_dist.errors import UserError
from convlstm_dist.ray_session import in_ray_job, start_or_join_ray
from convlstm_dist.tracking import Tracker
from convlstm_dist.train import check_cluster_resources, check_metric, init_ray, preflight
from convlstm_dist.tune.report import SweepOutcome, print_summary, write_summary
from convlstm_dist.tune.space import SweepSpec, check_space, load_sweep, sample_label, to_tune, trial_tree
from convlstm_dist.tune.trial import SWEEP_TAG, _trial_fn


def run_sweep(sweep_path, workdir: str | Path = "workdir", smoke_test: bool = False, progress: bool = True,
              storage_path: str | None = None) -> SweepOutcome:
    t_start = time.time()
    say = functools.partial(print, flush=True) if progress else (lambda *a, **k: None)  # progress reaches pipes now
    spec, base, base_cfg, workers, max_t, n_checked = _load(sweep_path, smoke_test)

    wd = Path(workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    _ensure_archive(base_cfg, wd, progress)
    sweeps_root = storage_path or spec.storage_path or str(wd / "sweeps")
    res, plan = preflight(base_cfg, wd, storage_path=sweeps_root)  # trials checkpoint under sweeps_root
    check_metric(spec.search.metric, "search.metric", quantity_of_variable(plan.variable).name)
    exp_path = f"{sweeps_root.rstrip('/')}/{spec.name}"
    local_dir = wd / "sweeps" / spec.name  # best recipe, summary, plots (always local)
    local_dir.mkdir(parents=True, exist_ok=True)
    say(f"[tune] sweep '{spec.name}': {len(spec.space)} axes, {spec.search.num_samples} samples, "
        f"{n_checked} combinations checked; metric {spec.search.metric} ({spec.search.mode}), "
        f"ASHA max_t={max_t} grace={spec.search.scheduler.grace_period} "
        f"rf={spec.search.scheduler.reduction_factor:g}; results in {exp_path}")

    experiment = base_cfg.tracking.experiment or spec.name
    parent = _start_parent_run(res.tracking_uri, experiment, spec, base_cfg, smoke_test, say) \
        if res.tracking_uri else None
    _start_ray(base_cfg, res, progress)
    try:
        check_cluster_resources(base_cfg)  # every trial would wait forever for what the cluster lacks
    except UserError:
        if parent:
            parent.end("FAILED")
        raise

    ctx = {
        "sweep": spec.name, "base": base, "axes": list(spec.space), "workdir": str(wd),
        "tracking_uri": res.tracking_uri, "experiment": experiment,
        "parent_run_id": parent.run_id if parent else None,
        "train_storage": f"{exp_path}/train", "metric": spec.search.metric, "mode": spec.search.mode,
    }
    tuner, resumed, fs = _tuner(spec, base_cfg, ctx, sweeps_root, exp_path, max_t, workers, progress, say)
    trials, best = _trials(tuner.fit(), spec, max_t)
    out = SweepOutcome(spec.name, exp_path, trials, best, parent_run_id=parent.run_id if parent else None,
                       tracking_uri=res.tracking_uri, resumed=resumed)

    if res.tracking_uri:
        _close_children(res.tracking_uri, experiment, spec.name, trials)
    _finish(out, spec, base, base_cfg, parent, fs, local_dir)
    out.seconds = time.time() - t_start
    if progress:
        print_summary(out, spec)
    return out


def _load(sweep_path, smoke_test: bool) -> tuple[SweepSpec, dict, Config, int, int, int]:
    """The sweep and its base recipe (tree and config) with the trials' worker count and ASHA's
    ``max_t`` (the base's epochs) applied: ``(spec, base, base_cfg, workers, max_t, combinations checked)``."""
    spec, base = load_sweep(sweep_path, smoke_test)
    n_checked = check_space(spec, base)
    base_cfg = config_from_dict(base, "sweep base")
    workers = spec.search.workers_per_trial or base_cfg.scaling.num_workers
    base.setdefault("scaling", {})["num_workers"] = workers
    base_cfg = config_from_dict(base, "sweep base")
    max_t = spec.search.scheduler.max_t or base_cfg.train.epochs
    if spec.search.scheduler.max_t and spec.search.scheduler.max_t != base_cfg.train.epochs:
        base.setdefault("train", {})["epochs"] = spec.search.scheduler.max_t
        base_cfg = config_from_dict(base, "sweep base")
    if "train.epochs" in spec.space:
        raise UserError("space.train.epochs: the number of epochs is ASHA's max_t (search.scheduler.max_t); "
                        "do not sweep it")
    return spec, base, base_cfg, workers, max_t, n_checked


def _ensure_archive(cfg, wd: Path, progress: bool) -> None:
    """The radar/demo recipes read ``<workdir>/archive.zarr``: ingest the shipped KNMI sample if it is missing."""
    if cfg.data.source != "archive" or cfg.data.archive is not None or cfg.data.archives \
            or (wd / "archive.zarr").exists():
        return
    if progress:
        print(f"[tune] {wd / 'archive.zarr'} missing: ingesting the shipped KNMI radar sample")
    ingest(SAMPLE_READER, sample_files(), str(wd / "archive.zarr"), parallel=False, progress=progress)


def _start_parent_run(uri: str, experiment: str, spec: SweepSpec, base_cfg, smoke_test: bool, say) -> Tracker:
    """The sweep's MLflow parent run, found again by its name when the sweep is resumed."""
    parent, resumed_parent = Tracker.start_or_resume(uri, experiment, f"sweep-{spec.name}",
                                                     tags={SWEEP_TAG: spec.name, "convlstm_dist.kind": "sweep"})
    parent.log_params({f"search.{k}": v for k, v in flatten(spec.search.model_dump(mode="json")).items()}
                      | {f"space.{k}": json.dumps(v) for k, v in spec.space.items()}
                      | {"base.name": base_cfg.name, "smoke_test": smoke_test})
    if not resumed_parent:
        parent.log_text(json.dumps(spec.model_dump(mode="json"), indent=2), "sweep.json")
    say(f"[tune] MLflow {'resumed' if resumed_parent else 'new'} parent run {parent.run_id} at {uri}")
    return parent


def _start_ray(base_cfg, res, progress: bool) -> None:
    if base_cfg.scaling.ray_address or in_ray_job():
        init_ray(base_cfg, res)  # join the given cluster, as training does
    else:
        # a local Ray with the dashboard: Train's placement-group cleaner uses the state API to free the
        # workers of trials that ASHA stops (killed mid-run); without it their CPUs stay reserved.
        # Workers must find *this* cluster's state API even when other Ray instances run on the machine:
        # the GCS port is fixed and RAY_ADDRESS handed to every worker (pin_gcs_port)
        start_or_join_ray(dashboard=True, log_to_driver=progress, logging_level=logging.INFO, pin_gcs_port=True)


def _max_concurrent(spec: SweepSpec, cfg, workers: int) -> int:
    import ray

    if spec.search.max_concurrent_trials:
        return spec.search.max_concurrent_trials
    res = ray.cluster_resources()
    if cfg.scaling.use_gpu:
        per = workers * cfg.scaling.gpus_per_worker
        return max(1, int(res.get("GPU", 0) // per))
    # CPU: each trial's workers plus ~0.5 CPU for its data reads; one CPU stays free for the drivers
    per = workers * cfg.scaling.cpus_per_worker + 0.5
    return max(1, int((res.get("CPU", 1) - 1) // per))


def _tuner(spec: SweepSpec, base_cfg, ctx: dict, sweeps_root: str, exp_path: str, max_t: int, workers: int,
           progress: bool, say):
    """``(tuner, resumed, storage filesystem)``: the sweep's Tuner, restored where a previous run of
    the same sweep left one (finished trials kept, errored ones resumed), else a new one."""
    import ray
    from ray import tune

    ray.data.DataContext.get_current().enable_progress_bars = False
    trainable = tune.with_resources(tune.with_parameters(_trial_fn, ctx=ctx), {"cpu": 0.01})
    tune_path, fs = ray_storage(sweeps_root, base_cfg.data.endpoint_url)
    restore_path = f"{tune_path.rstrip('/')}/{spec.name}"
    resumed = tune.Tuner.can_restore(restore_path, storage_filesystem=fs)
    if resumed:
        say(f"[tune] resuming the sweep at {exp_path} (finished trials are kept)")
        return tune.Tuner.restore(restore_path, trainable, resume_errored=True, storage_filesystem=fs), resumed, fs
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    scheduler = _scheduler(spec, max_t)
    concurrent = _max_concurrent(spec, base_cfg, workers)
    search_alg = _search_alg(spec, concurrent)
    say(f"[tune] up to {concurrent} concurrent trial(s), {workers} worker(s) each")
    tuner = tune.Tuner(
        trainable, param_space=to_tune(spec.space),
        tune_config=tune.TuneConfig(metric=spec.search.metric, mode=spec.search.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=spec.search.num_samples),
        run_config=tune.RunConfig(name=spec.name, storage_path=tune_path, storage_filesystem=fs,
                                  verbose=1 if progress else 0,
                                  # per-trial result.json/progress.csv even with TUNE_DISABLE_AUTO_CALLBACK_LOGGERS
                                  callbacks=[CSVLoggerCallback(), JsonLoggerCallback()]),
    )
    return tuner, resumed, fs


def _scheduler(spec: SweepSpec, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sch = spec.search.scheduler
    return (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=sch.grace_period,
                          reduction_factor=sch.reduction_factor)
            if sch.type == "asha" else FIFOScheduler())


def _search_alg(spec: SweepSpec, concurrent: int):
    if spec.search.search_alg == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=spec.search.seed), max_concurrent=concurrent)
    # a generator instance ignores TuneConfig.max_concurrent_trials: give it the limit itself
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=concurrent)


def _best_row(df, metric: str, mode: str):
    if df is None or metric not in getattr(df, "columns", []):
        return None
    col = df[metric].astype(float)
    col = col[col.notna()]
    if col.empty:
        return None
    idx = col.idxmin() if mode == "min" else col.idxmax()
    return df.loc[idx]


def _trials(grid, spec: SweepSpec, max_t: int) -> tuple[list[dict], dict | None]:
    """One row per trial of the finished Tune grid (sorted by trial id), and the best one among
    those with a checkpoint (None if no trial reported the metric)."""
    trials = []
    best = None
    for r in grid:
        t = _trial_row(r, spec, max_t)
        trials.append(t)
        v = t[f"best_{spec.search.metric}"]
        if not math.isnan(v) and t["checkpoint"] and (
                best is None or (v < best[f"best_{spec.search.metric}"] if spec.search.mode == "min"
                                 else v > best[f"best_{spec.search.metric}"])):
            best = t
    trials.sort(key=lambda t: t["trial_id"])
    return trials, best


def _trial_row(r, spec: SweepSpec, max_t: int) -> dict:
    """A trial's row: id, status, epochs, its sample, best and last metric, best checkpoint."""
    m = r.metrics or {}
    trial_id = m.get("trial_id") or Path(r.path).name
    cfg_sample = {k: (r.config or {}).get(k) for k in spec.space}
    row = _best_row(r.metrics_dataframe, spec.search.metric, spec.search.mode)
    epochs = int(m.get("training_iteration", 0) or 0)
    status = "ERROR" if r.error else ("STOPPED_EARLY" if epochs < max_t else "COMPLETED")
    return {"trial_id": trial_id, "status": status, "epochs": epochs, **cfg_sample,
            f"best_{spec.search.metric}": float(row[spec.search.metric]) if row is not None else float("nan"),
            f"last_{spec.search.metric}": float(m.get(spec.search.metric, float("nan"))),
            "checkpoint": (row.get("checkpoint_path") if row is not None else None)}


def _close_children(uri: str, experiment: str, sweep: str, trials: list[dict]) -> None:
    """Trials stopped by ASHA are killed mid-run: mark their child runs finished (and why)."""
    for t in trials:
        tr, _ = Tracker.start_or_resume(uri, experiment, f"{sweep}-{t['trial_id']}")
        tr.set_tags({"convlstm_dist.trial_status": t["status"]})
        tr.end("FAILED" if t["status"] == "ERROR" else ("KILLED" if t["status"] == "STOPPED_EARLY" else "FINISHED"))


def _finish(out: SweepOutcome, spec: SweepSpec, base: dict, base_cfg, parent, fs, local_dir: Path) -> None:
    """The best trial's recipe and registered model, the summary files, and the parent run's metrics,
    tags and end."""
    best, trials = out.best, out.trials
    if best is not None:
        recipe = _write_best_recipe(spec, base, best, local_dir)
        out.best_recipe = str(recipe)
        if parent:
            parent.log_artifact(recipe)
            out.model_uri = _register_best(parent, best, fs, base_cfg.tracking.register_model or f"{spec.name}-best")
    summary_files = write_summary(spec, trials, local_dir)
    if parent:
        for f in summary_files:
            parent.log_artifact(f)
        if best is not None:
            parent.log_metrics({f"best_{spec.search.metric}": best[f"best_{spec.search.metric}"],
                                "trials": len(trials),
                                "trials_stopped_early": sum(t["status"] == "STOPPED_EARLY" for t in trials)}, step=0)
            parent.set_tags({"convlstm_dist.best_trial": best["trial_id"]})
        parent.end("FINISHED")


def _write_best_recipe(spec: SweepSpec, base: dict, best: dict, local_dir: Path) -> Path:
    """``best_recipe.yaml``: the base recipe with the best trial's sample, a new name, no run name."""
    sample = {k: best[k] for k in spec.space}
    tree = trial_tree(base, sample)
    tree["name"] = f"{spec.name}-best"
    tree.setdefault("run", {})["name"] = None
    best_cfg = config_from_dict(tree, "best trial")
    recipe = local_dir / "best_recipe.yaml"
    recipe.write_text(f"# best trial {best['trial_id']} of sweep '{spec.name}': {sample_label(sample)}\n"
                      f"# {spec.search.metric} = {best[f'best_{spec.search.metric}']:.6g} ({spec.search.mode}); "
                      f"train it with: convlstm-dist train --config {recipe}\n" + to_yaml(best_cfg))
    return recipe


def _register_best(parent, best: dict, fs, registered_name: str) -> str | None:
    # ray.tune.Checkpoint: a pass-through subclass of ray.train.Checkpoint (only train/ imports ray.train)
    from ray.tune import Checkpoint

    path = best["checkpoint"]
    ckpt = Checkpoint(path, filesystem=fs) if fs is not None else Checkpoint(path)
    with ckpt.as_directory() as d:
        return parent.log_model(d, registered_name)
