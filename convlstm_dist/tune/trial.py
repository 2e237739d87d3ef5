"""One sweep trial: a full distributed Ray Train run inside a Tune trial actor (:func:`_trial_fn`).

The trial builds its recipe from the sweep's base and its sample, pins its frames next to its
checkpoints, opens (or finds again, after a restore) its MLflow child run under the sweep's parent
run, and runs a ``TorchTrainer`` whose ``TuneReportCallback`` hands every epoch report to Tune, so
that ASHA can stop it. The function keeps its name ``_trial_fn``: Tune names a sweep's trials after
it, and a sweep restored with ``Tuner.restore`` gets it again.
"""

from __future__ import annotations

from convlstm_dist.config import config_from_dict, flatten, to_yaml
from convlstm_dist.tracking import Tracker
from convlstm_dist.train import build_trainer, log_pin, pin_run
from convlstm_dist.tune.space import sample_label, trial_tree

SWEEP_TAG = "convlstm_dist.sweep"
TRIAL_TAG = "convlstm_dist.trial_id"
STARTS_TAG = "convlstm_dist.trial_starts"


def _trial_fn(config: dict, ctx: dict) -> None:
    """One Tune trial = one distributed Ray Train run (runs inside the trial actor)."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from convlstm_dist.data import epoch_clock  # data/datasource.py imports ray

    trial_id = ray.tune.get_context().get_trial_id()
    ray.data.DataContext.get_current().enable_progress_bars = False
    sample = {k: config[k] for k in ctx["axes"] if k in config}
    run_name = f"{ctx['sweep']}-{trial_id}"
    tree = trial_tree(ctx["base"], sample)
    tree.setdefault("run", {})["name"] = run_name
    cfg = config_from_dict(tree, f"trial {run_name}")
    # the trial's frames are pinned next to its checkpoints: a restored trial plans on the same ones
    plan, version = pin_run(cfg, ctx["workdir"], f"{ctx['train_storage'].rstrip('/')}/{run_name}",
                            cfg.data.endpoint_url)
    tracker = _start_child_run(ctx, cfg, run_name, trial_id, sample, version) if ctx["tracking_uri"] else None

    clock_name = f"convlstm-epoch-clock-{run_name}"
    clock = epoch_clock(clock_name)
    trainer = build_trainer(cfg, plan, run_name, ctx["train_storage"], clock_name, ctx["tracking_uri"],
                            tracker.run_id if tracker else None, metric=ctx["metric"], mode=ctx["mode"],
                            callbacks=[TuneReportCallback()], data_version=version)
    try:
        trainer.fit()
    except Exception:
        if tracker:
            tracker.end("FAILED")
        raise
    finally:
        ray.kill(clock)
    if tracker:
        tracker.end("FINISHED")


def _start_child_run(ctx: dict, cfg, run_name: str, trial_id: str, sample: dict, version) -> Tracker:
    """The trial's MLflow child run (found again by its name when the trial starts again), with its
    tags, parameters, recipe and data pin."""
    tracker, resumed = Tracker.start_or_resume(
        ctx["tracking_uri"], ctx["experiment"], run_name,
        tags={"mlflow.parentRunId": ctx["parent_run_id"], SWEEP_TAG: ctx["sweep"], TRIAL_TAG: trial_id,
              "convlstm_dist.recipe": cfg.name})
    starts = int(tracker.client.get_run(tracker.run_id).data.tags.get(STARTS_TAG, "0")) + 1
    tracker.set_tags({STARTS_TAG: starts, "convlstm_dist.trial_sample": sample_label(sample)})
    tracker.log_params({**flatten(cfg), **{f"sweep.{k}": v for k, v in sample.items()}})
    if not resumed:
        tracker.log_text(to_yaml(cfg), "config.yaml")
    log_pin(tracker, version)
    return tracker
