"""The held-out-event protocol's run: train every fold, score its held-out events, write and log the report.

:func:`run_protocol` plans the folds (:mod:`.heldout`), trains each with
:func:`convlstm_dist.train.local.train_local` under a time budget, scores every held-out event on
all its gap-free windows with the model and the baselines on the same windows and pixels
(:func:`convlstm_dist.nowcast.evaluation.run_evaluation`, the scorer of ``convlstm-dist
evaluate``), and writes ``<workdir>/skill-report/<recipe>/``: ``skill_by_event.csv``,
``skill_pooled.csv`` (scores of the pooled contingency tables and FSS sums,
:func:`convlstm_dist.verify.pooled.pool_rows`), ``skill_report.md`` and ``csi_pooled.png``, all
logged to one MLflow run whose tags list, per fold, the events trained on and the events scored.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.plan import resolve_url
from convlstm_dist.data.storage import storage_options_for
from convlstm_dist.errors import UserError
from convlstm_dist.experiments.heldout import Event, Fold, check_fold, check_model_events, fold_config, names, \
    plan_folds, roles
from convlstm_dist.nowcast.evaluation import metrics_from_rows, run_evaluation, select_windows
from convlstm_dist.nowcast.nowcaster import Nowcaster
from convlstm_dist.ray_session import ray_session
from convlstm_dist.tracking import log_stamped_run, mlflow_available
from convlstm_dist.train.driver import resolve
from convlstm_dist.train.local import train_local
from convlstm_dist.verify.baselines import DEFAULT_BASELINES
from convlstm_dist.verify.pooled import EVENT_COLUMNS, POOLED_COLUMNS, fss_markdown_table, markdown_table, pool_rows
from convlstm_dist.verify.table import format_table, plot_skill, write_csv
from convlstm_dist.vocabulary import REPORT_THRESHOLDS_MMH


@dataclass
class ProtocolResult:
    folds: list[Fold]
    rows: list[dict]           # per fold x scored event
    pooled: list[dict]
    files: dict[str, Path]
    run_id: str | None = None
    fold_runs: list[dict] = field(default_factory=list)
    motion: str = "shared"         # where every method's motion came from (nowcast/evaluation.py)


def run_protocol(base_cfg, workdir: str | Path, events: Sequence[Event], holdout: Sequence[str] | None = None,
                 budget_s: float | None = 300.0, device: str = "cpu", baselines=None,
                 crop=None, max_windows: int | None = None, workers: int = 2, tracking: bool = True,
                 progress: bool = False, motion: str = "shared",
                 say: Callable[[str], None] = print) -> ProtocolResult:
    """Plan, train and score every fold (module docstring); write and log the tables."""
    baselines = list(DEFAULT_BASELINES if baselines is None else baselines)
    wd = Path(workdir).resolve()
    folds = plan_folds(events, holdout)
    for f in folds:
        check_fold(f, wd)
    cfgs = [fold_config(base_cfg, f, budget_s) for f in folds]  # every recipe is valid before any training
    if not tracking:
        for c in cfgs:
            c.tracking.enabled = False
    say(f"[skill-report] {len(folds)} fold(s) over events {names(events)}; {budget_s or 'no'} s training budget per fold")
    for f in folds:
        say(f"[skill-report]   {f.label}")
    t0 = time.time()
    # one local Ray for every fold's scoring (run_evaluation reuses a running one)
    with ray_session(num_cpus=workers, oom_retries=1):
        rows, fold_runs = _train_and_score(folds, cfgs, wd, budget_s, device, baselines, crop, max_windows,
                                           workers, progress, say, motion)
    report_rows = [r for r in rows if float(r["threshold_mmh"]) in REPORT_THRESHOLDS_MMH]
    pooled = pool_rows(report_rows)
    files = write_report(report_rows, pooled, folds, wd / "skill-report" / base_cfg.name, budget_s, motion)
    say(f"[skill-report] done in {time.time() - t0:.0f} s")
    res = ProtocolResult(folds, report_rows, pooled, files, None, fold_runs, motion)
    if tracking and base_cfg.tracking.enabled:
        res.run_id = log_mlflow(base_cfg, wd, res, budget_s)
    return res


def _train_and_score(folds, cfgs, wd, budget_s, device, baselines, crop, max_windows, workers, progress, say,
                     motion="shared"):
    rows: list[dict] = []
    fold_runs = []
    for f, cfg in zip(folds, cfgs):
        say(f"[skill-report] {f.label} -> training run '{cfg.run.name}'")
        out = train_local(cfg, wd, device=device, time_budget_s=budget_s, progress=progress)
        if out.checkpoint is None:
            raise UserError(f"fold {f.index}: training wrote no checkpoint (stopped: {out.stopped}); raise --time-budget")
        nc = Nowcaster.load(str(out.checkpoint), None, wd)
        fold_runs.append({"fold": f.index, "run": cfg.run.name, "checkpoint": str(out.checkpoint),
                          "model_uri": out.model_uri, "stopped": out.stopped,
                          "trained": [e.name for e in f.train], "scored": [e.name for e in f.scored]})
        for ev in f.scored:
            check_model_events(nc.config, ev, wd)
            url = resolve_url(ev.url, wd)
            archive = open_archive(url, storage_options_for(url, ev.entry.get("endpoint_url")))
            # every gap-free window of the event: the whole time range, not a split
            sel = select_windows(nc, archive, None, str(archive.times[0]), str(archive.times[-1]),
                                 None, max_windows)
            say(f"[skill-report] fold {f.index}: scoring {ev.name} (never trained on) on {len(sel.starts)} windows "
                f"of {sel.in_len}+{sel.n_out} frames; methods {[nc.config.model.kind, *baselines]}")
            got, _ = run_evaluation(nc, archive, sel, crop, list(baselines), workers, None, False, progress, motion)
            rows += [{**r, "fold": f.index, "event": ev.name, "windows": len(sel.starts)} for r in got]
    return rows, fold_runs


def write_report(rows, pooled, folds, out_dir: Path, budget_s, motion: str = "shared") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"by_event_csv": write_csv(rows, out_dir / "skill_by_event.csv", EVENT_COLUMNS),
             "pooled_csv": write_csv(pooled, out_dir / "skill_pooled.csv", POOLED_COLUMNS)}
    md = ["# Held-out-event skill report", "",
          f"Training budget per fold: {budget_s} s. Scores on ALL gap-free windows of each scored event; "
          "the model and every baseline on the same windows and pixels. Pooled = scores of the contingency "
          "tables (and FSS sums) added over the scored events; per-event tables follow. Motion: "
          + ("one field per window on the whole frame (pysteps Lucas-Kanade), shared by the model and the baselines."
             if motion == "shared" else "each method's own, estimated from the scored crop."), "", "| fold | trained on | scored |", "|---:|---|---|"]
    md += [f"| {f.index} | {roles(f.train)} | {names(f.scored)} |" for f in folds]
    md += ["", "## Pooled over scored events", "", markdown_table(pooled), "",
           "### Fractions Skill Score, pooled", "", fss_markdown_table(pooled)]
    for f in folds:
        for ev in f.scored:
            mine = [r for r in rows if r["fold"] == f.index and r["event"] == ev.name]
            md += ["", f"## Fold {f.index}: {ev.name} (trained on {names(f.train)})", "", markdown_table(mine)]
    files["markdown"] = out_dir / "skill_report.md"
    files["markdown"].write_text("\n".join(md) + "\n")
    files["png"] = plot_skill(pooled, out_dir / "csi_pooled.png")
    return files


def log_mlflow(base_cfg, wd: Path, res: ProtocolResult, budget_s) -> str | None:
    uri = resolve(base_cfg, wd).tracking_uri
    if uri is None or not mlflow_available():
        return None
    tags = {"convlstm_dist.kind": "skill-report",
            "heldout.trained_events": ";".join(f"fold{f.index}=" + ",".join(e.name for e in f.train) for f in res.folds),
            "heldout.scored_events": ";".join(f"fold{f.index}=" + ",".join(e.name for e in f.scored) for f in res.folds),
            **{f"heldout.fold{f.index}.{k}": v for f in res.folds
               for k, v in (("trained", names(f.train)), ("scored", names(f.scored)))}}
    metrics = [(f"pooled_{key}", value, step) for key, value, step in metrics_from_rows(res.pooled)]
    metrics += [(f"pooled_{r['method']}_{s}_{r['threshold_mmh']:g}mmh", r[s], int(round(r["lead_min"])))
                for r in res.pooled for s in ("pod", "far") if r[s] is not None and math.isfinite(r[s])]
    return log_stamped_run(uri, f"{base_cfg.tracking.experiment or base_cfg.name}-skill-report",
                           f"skill-report-{base_cfg.name}", tags=tags,
                           params={"recipe": base_cfg.name, "folds": len(res.folds), "budget_s_per_fold": budget_s,
                                   "motion": res.motion},
                           metrics=metrics, texts={"folds.json": json.dumps(res.fold_runs, indent=2, default=str)},
                           files=res.files.values())


def format_summary(res: ProtocolResult) -> str:
    """What ``skill-report`` prints at the end: the folds (trained / scored events), the pooled
    CSI/HSS/MSE table and where everything went."""
    lines = ["", "=== held-out-event skill report ==="]
    for f in res.folds:
        lines.append(f"fold {f.index}: TRAINED ON {roles(f.train)} | SCORED {names(f.scored)}")
    trained = sorted({e.name for f in res.folds for e in f.train})
    scored = sorted({e.name for f in res.folds for e in f.scored})
    lines.append(f"events trained on (in some fold): {', '.join(trained)}")
    lines.append(f"events scored (each only by a model that never trained on it): {', '.join(scored)}")
    lines += ["", "pooled over scored events (CSV/markdown also have POD/FAR per event):", format_table(res.pooled), ""]
    lines += [f"[skill-report] {k}: {v}" for k, v in res.files.items()]
    if res.run_id:
        lines.append(f"[skill-report] MLflow run {res.run_id}")
    return "\n".join(lines)
