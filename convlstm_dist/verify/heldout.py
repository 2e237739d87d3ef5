"""Held-out-event skill protocol: train on some radar events, score on the others.

An *event* is one archive (one entry of a recipe's ``data.archives``). :func:`plan_folds` splits
the events into folds: leave-one-out over all events by default, or one fold whose scored events
are an explicit ``holdout`` list. For every fold:

1. :func:`fold_config` builds the training recipe: the base recipe with ``data.archives`` replaced
   by the fold's training events (each keeps its base entry: weight, per-archive split) and its own
   ``run.name`` (so folds never resume each other's checkpoints);
2. it is trained with :func:`convlstm_dist.train.local.train_local` under a time budget;
3. every scored event is scored on *all* of its gap-free windows (``select_windows`` over the whole
   time range) by the model, persistence and optical flow on the same windows
   (:func:`convlstm_dist.nowcast.evaluation.run_evaluation`, the scorer of ``convlstm-dist evaluate``).

The guarantee — a scored event is never an event its model trained on (train *or* validation
windows) — is checked three times: when the folds are planned (:func:`check_fold`), on the fold's
recipe, and on the trained model's own recipe before scoring (:func:`check_model_events`); a
violation raises :class:`HeldoutLeakError`.

Outputs (``<workdir>/skill-report/<recipe>/``): ``skill_by_event.csv`` (one row per fold, event,
method, lead, threshold), ``skill_pooled.csv``, ``skill_report.md`` and ``csi_pooled.png``; all are
logged to one MLflow run (experiment ``<recipe>-skill-report``) whose tags list, per fold, the
events trained on and the events scored. Pooled scores are the mean of the per-event scores
the scores of the pooled contingency tables (and of the pooled FSS sums); the per-event scores
are the table beside them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from convlstm_dist.data.storage import archive_key
from convlstm_dist.data.storage import archive_name as event_name  # noqa: F401 - the protocol's event names
from convlstm_dist.errors import UserError

REPORT_THRESHOLDS_MMH = (0.5, 2.0, 5.0, 10.0)
SCORES = ("csi", "pod", "far", "hss")
COUNT_KEYS = ("hits", "false_alarms", "misses", "correct_negatives")
FSS_COLUMNS = ("fss_1km", "fss_4km", "fss_16km", "fss_64km")  # verify.fss.fss_key of FSS_SCALES_KM
EVENT_COLUMNS = ("fold", "event", "method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae",
                 *FSS_COLUMNS, *COUNT_KEYS, "n", "windows")
POOLED_COLUMNS = ("method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae", *FSS_COLUMNS,
                  *COUNT_KEYS, "n", "events")


class HeldoutLeakError(UserError):
    """A scored event is also a training event of the same fold."""


@dataclass(frozen=True)
class Event:
    name: str
    url: str
    entry: dict = field(default_factory=dict, compare=False, hash=False)  # the base recipe's data.archives entry


@dataclass
class Fold:
    index: int
    train: list[Event]
    scored: list[Event]

    @property
    def label(self) -> str:
        return f"fold {self.index}: trained on {roles(self.train)}; scored on {names(self.scored)}"


def roles(events: Sequence[Event]) -> str:
    """Training events, each with its role when it is not plain training (``whole: val`` = model selection)."""
    def one(e: Event) -> str:
        whole = (e.entry.get("split") or {}).get("whole")
        return e.name + (f" (whole {whole} split)" if whole in ("val", "test") else "")
    return ", ".join(one(e) for e in events) or "-"


def names(events: Sequence[Event]) -> str:
    return ", ".join(e.name for e in events) or "-"


def events_from_config(cfg, urls: Sequence[str] | None = None) -> list[Event]:
    """The events of the protocol: ``urls`` if given (their base entry when the recipe lists them),
    else every archive of the recipe's ``data.archives`` (or its single ``data.archive``)."""
    entries = {}
    if cfg.data.archives:
        entries = {e.url: e.model_dump(exclude_none=True) for e in cfg.data.archives}
    if not urls:
        urls = list(entries) or ([cfg.data.archive] if cfg.data.archive else [])
    if not urls:
        raise UserError("no events: the recipe has no data.archives (pass --events URL ...)")
    events = [Event(event_name(u), u, entries.get(u, {"url": u})) for u in urls]
    seen: dict[str, str] = {}
    for e in events:
        if e.name in seen:
            raise UserError(f"two events are both named {e.name!r} ({seen[e.name]}, {e.url}); rename an archive")
        seen[e.name] = e.url
    return events


def _find(events: Sequence[Event], ref: str) -> Event:
    for e in events:
        if ref in (e.name, e.url) or event_name(ref) == e.name:
            return e
    raise UserError(f"--holdout {ref!r} is not one of the events: {names(events)}")


def plan_folds(events: Sequence[Event], holdout: Sequence[str] | None = None) -> list[Fold]:
    """Leave-one-out over ``events`` (``holdout`` empty), else one fold scoring the ``holdout``
    events (names or URLs) and training on the rest. Every fold is checked with :func:`check_fold`."""
    events = list(events)
    if len(events) < 2:
        raise UserError(f"the held-out protocol needs at least 2 events, got {len(events)} ({names(events)})")
    if holdout:
        scored = list(dict.fromkeys(_find(events, h) for h in holdout))
        folds = [Fold(1, [e for e in events if e not in scored], scored)]
    else:
        folds = [Fold(i + 1, [x for x in events if x != e], [e]) for i, e in enumerate(events)]
    for f in folds:
        check_fold(f)
    return folds


def check_fold(fold: Fold, workdir: str | Path | None = None) -> None:
    """Raise :class:`HeldoutLeakError` if a scored event is one of the fold's training events
    (same name or the same archive)."""
    if not fold.train:
        raise UserError(f"fold {fold.index} has no training events (scored: {names(fold.scored)})")
    if not fold.scored:
        raise UserError(f"fold {fold.index} scores no event")
    train = {archive_key(e.url, workdir) for e in fold.train} | {e.name for e in fold.train}
    leak = [e for e in fold.scored if e.name in train or archive_key(e.url, workdir) in train]
    if leak:
        raise HeldoutLeakError(f"fold {fold.index} would score {names(leak)}, which it also trains on "
                               f"(training events: {names(fold.train)}); a held-out event must never be trained on")


def check_model_events(model_cfg, scored: Event, workdir: str | Path) -> None:
    """Raise :class:`HeldoutLeakError` when the model's own recipe trained on ``scored``."""
    d = model_cfg.data
    urls = [e.url for e in d.archives] if d.archives else [d.archive or str(Path(workdir) / "archive.zarr")]
    key = archive_key(scored.url, workdir)
    if any(archive_key(u, workdir) == key or event_name(u) == scored.name for u in urls):
        raise HeldoutLeakError(f"refusing to score {scored.name}: the model's recipe trains on it "
                               f"(data.archives {urls})")


def _has_val(entries: Sequence[dict], default_split) -> bool:
    for e in entries:
        whole = (e.get("split") or {}).get("whole") if e.get("split") is not None else default_split.whole
        if whole in (None, "val"):
            return True
    return False


def fold_config(base_cfg, fold: Fold, budget_s: float | None = None):
    """The fold's training recipe: ``data.archives`` = exactly the fold's training events."""
    from convlstm_dist.config import config_from_dict

    tree = base_cfg.model_dump(mode="json", exclude_none=True)
    entries = [dict(e.entry, url=e.url) for e in fold.train]
    if not _has_val(entries, base_cfg.data.split):
        raise UserError(f"fold {fold.index}: none of its training events ({names(fold.train)}) has validation "
                        "windows (all are split: {whole: train|test}); keep an event with a block split or "
                        "split: {whole: val} among the training events")
    tree["data"]["archives"] = entries
    tree["data"].pop("archive", None)
    if budget_s is not None:
        tree["train"]["time_budget_s"] = float(budget_s)
    # the run name (checkpoints, resume) follows the whole fold recipe: a changed recipe or --set never
    # resumes another recipe's fold; the same command run again resumes its own
    digest = hashlib.sha1(json.dumps([sorted(e.url for e in fold.train), tree], sort_keys=True,
                                     default=str).encode()).hexdigest()[:6]
    base_name = base_cfg.run.name or base_cfg.name
    scored = "_".join(e.name for e in fold.scored)[:48]
    tree.setdefault("run", {})["name"] = f"{base_name[:40]}-heldout-{scored}-{digest}"
    tr = tree.setdefault("tracking", {})
    tr["experiment"] = f"{base_cfg.tracking.experiment or base_cfg.name}-skill-folds"
    tr["register_model"] = f"{base_name}-heldout-fold"
    cfg = config_from_dict(tree, f"fold {fold.index} of {base_cfg.name}")
    got = {archive_key(e.url, None) for e in cfg.data.archives}
    want = {archive_key(e.url, None) for e in fold.train}
    if got != want or any(archive_key(e.url, None) in got for e in fold.scored):
        raise HeldoutLeakError(f"fold {fold.index}: its recipe's archives {sorted(got)} are not exactly its "
                               f"training events {sorted(want)}")
    return cfg


# ---------------------------------------------------------------------------------- tables
def pool_rows(rows: Sequence[dict]) -> list[dict]:
    """Per (method, lead, threshold): the scores of the events' pooled contingency tables (hits,
    false alarms, misses and correct negatives added over events, then CSI/POD/FAR/HSS), MSE/MAE of
    the pooled pixels (per-event values weighted by ``n``), and FSS from the pooled fraction sums."""
    from convlstm_dist.verify.fss import FSS_SCALES_KM, pool_fss
    from convlstm_dist.verify.scores import contingency_scores

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["lead_min"]), float(r["threshold_mmh"])), []).append(r)
    out = []
    for (m, lead, thr), rs in groups.items():
        row = {"method": m, "lead_min": lead, "threshold_mmh": thr, "events": len(rs),
               "n": int(sum(int(r.get("n") or 0) for r in rs))}
        counts = {k: sum(int(r.get(k) or 0) for r in rs) for k in COUNT_KEYS}
        row.update(counts)
        row.update(contingency_scores(counts["hits"], counts["false_alarms"], counts["misses"],
                                      counts["correct_negatives"]))
        for k in ("mse", "mae"):
            vals = [(float(r[k]), max(int(r.get("n") or 0), 1)) for r in rs
                    if r.get(k) is not None and math.isfinite(float(r[k]))]
            w = sum(x[1] for x in vals)
            row[k] = sum(v * n for v, n in vals) / w if vals else float("nan")
        row.update(pool_fss(rs, FSS_SCALES_KM))
        out.append(row)
    return out


def _f(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def markdown_table(rows: Sequence[dict], thresholds=REPORT_THRESHOLDS_MMH) -> str:
    """One markdown table per threshold: lead x (method, CSI/POD/FAR/HSS)."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    idx = {(r["method"], float(r["lead_min"]), float(r["threshold_mmh"])): r for r in rows}
    leads = sorted({float(r["lead_min"]) for r in rows})
    blocks = []
    for thr in thresholds:
        if not any(float(r["threshold_mmh"]) == thr for r in rows):
            continue
        head = "| lead (min) | " + " | ".join(f"{s.upper()} {m}" for m in methods for s in SCORES) + " |"
        sep = "|---:|" + "---:|" * (len(methods) * len(SCORES))
        lines = [f"**>= {thr:g} mm/h**", "", head, sep]
        for lead in leads:
            cells = [_f((idx.get((m, lead, thr)) or {}).get(s)) for m in methods for s in SCORES]
            lines.append(f"| {lead:g} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def fss_markdown_table(rows: Sequence[dict]) -> str:
    """One markdown table per FSS threshold: lead x (method, FSS per scale)."""
    from convlstm_dist.verify.fss import FSS_THRESHOLDS_MMH

    methods = list(dict.fromkeys(r["method"] for r in rows))
    idx = {(r["method"], float(r["lead_min"]), float(r["threshold_mmh"])): r for r in rows}
    leads = sorted({float(r["lead_min"]) for r in rows})
    blocks = []
    for thr in FSS_THRESHOLDS_MMH:
        if not any(float(r["threshold_mmh"]) == thr and math.isfinite(float(r.get("fss_1km", math.nan)))
                   for r in rows):
            continue
        head = "| lead (min) | " + " | ".join(f"{c[4:]} {m}" for m in methods for c in FSS_COLUMNS) + " |"
        lines = [f"**FSS, >= {thr:g} mm/h**", "", head, "|---:|" + "---:|" * (len(methods) * len(FSS_COLUMNS))]
        for lead in leads:
            cells = [_f((idx.get((m, lead, thr)) or {}).get(c)) for m in methods for c in FSS_COLUMNS]
            lines.append(f"| {lead:g} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------- driver
@dataclass
class ProtocolResult:
    folds: list[Fold]
    rows: list[dict]           # per fold x scored event
    pooled: list[dict]
    files: dict[str, Path]
    run_id: str | None = None
    fold_runs: list[dict] = field(default_factory=list)


def run_protocol(base_cfg, workdir: str | Path, events: Sequence[Event], holdout: Sequence[str] | None = None,
                 budget_s: float | None = 300.0, device: str = "cpu", baselines=None,
                 crop=None, max_windows: int | None = None, workers: int = 2, tracking: bool = True,
                 progress: bool = False, say: Callable[[str], None] = print) -> ProtocolResult:
    """Plan, train and score every fold (module docstring); write and log the tables."""
    from convlstm_dist.verify.baselines import DEFAULT_BASELINES

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
    import ray

    from convlstm_dist.runtime import start_or_join_ray

    started = not ray.is_initialized()
    # one local Ray for every fold's scoring (run_evaluation reuses a running one)
    start_or_join_ray(num_cpus=workers, oom_retries=1)
    try:
        rows, fold_runs = _train_and_score(folds, cfgs, wd, budget_s, device, baselines, crop, max_windows,
                                           workers, progress, say)
    finally:
        if started:
            ray.shutdown()
    report_rows = [r for r in rows if float(r["threshold_mmh"]) in REPORT_THRESHOLDS_MMH]
    pooled = pool_rows(report_rows)
    files = write_report(report_rows, pooled, folds, wd / "skill-report" / base_cfg.name, budget_s)
    say(f"[skill-report] done in {time.time() - t0:.0f} s")
    res = ProtocolResult(folds, report_rows, pooled, files, None, fold_runs)
    if tracking and base_cfg.tracking.enabled:
        res.run_id = log_mlflow(base_cfg, wd, res, budget_s)
    return res


def _train_and_score(folds, cfgs, wd, budget_s, device, baselines, crop, max_windows, workers, progress, say):
    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.plan import resolve_url
    from convlstm_dist.data.storage import storage_options_for
    from convlstm_dist.nowcast.evaluation import run_evaluation, select_windows
    from convlstm_dist.nowcast.nowcaster import Nowcaster
    from convlstm_dist.train.local import train_local

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
            got, _ = run_evaluation(nc, archive, sel, crop, list(baselines), workers, None, False, progress)
            rows += [{**r, "fold": f.index, "event": ev.name, "windows": len(sel.starts)} for r in got]
    return rows, fold_runs


def write_report(rows, pooled, folds, out_dir: Path, budget_s) -> dict[str, Path]:
    from convlstm_dist.verify.table import plot_skill, write_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"by_event_csv": write_csv(rows, out_dir / "skill_by_event.csv", EVENT_COLUMNS),
             "pooled_csv": write_csv(pooled, out_dir / "skill_pooled.csv", POOLED_COLUMNS)}
    md = ["# Held-out-event skill report", "",
          f"Training budget per fold: {budget_s} s. Scores on ALL gap-free windows of each scored event; "
          "the model and every baseline on the same windows and pixels. Pooled = scores of the contingency "
          "tables (and FSS sums) added over the scored events; per-event tables follow.", "", "| fold | trained on | scored |", "|---:|---|---|"]
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
    import json

    from convlstm_dist.nowcast.evaluation import metrics_from_rows
    from convlstm_dist.train.driver import resolve
    from convlstm_dist.tracking import mlflow_available

    uri = resolve(base_cfg, wd).tracking_uri
    if uri is None or not mlflow_available():
        return None
    from convlstm_dist.tracking.mlflow_tracker import Tracker

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    tags = {"convlstm_dist.kind": "skill-report",
            "heldout.trained_events": ";".join(f"fold{f.index}=" + ",".join(e.name for e in f.train) for f in res.folds),
            "heldout.scored_events": ";".join(f"fold{f.index}=" + ",".join(e.name for e in f.scored) for f in res.folds)}
    tracker, _ = Tracker.start_or_resume(uri, f"{base_cfg.tracking.experiment or base_cfg.name}-skill-report",
                                         f"skill-report-{base_cfg.name}-{stamp}-{time.time_ns() % 10**6}", tags)
    tracker.set_tags({f"heldout.fold{f.index}.{k}": v for f in res.folds
                      for k, v in (("trained", names(f.train)), ("scored", names(f.scored)))})
    tracker.log_params({"recipe": base_cfg.name, "folds": len(res.folds), "budget_s_per_fold": budget_s})
    by_step: dict[int, dict] = {}
    for key, value, step in metrics_from_rows(res.pooled):
        by_step.setdefault(step, {})[f"pooled_{key}"] = value
    for r in res.pooled:
        step = int(round(r["lead_min"]))
        for s in ("pod", "far"):
            if r[s] is not None and math.isfinite(r[s]):
                by_step.setdefault(step, {})[f"pooled_{r['method']}_{s}_{r['threshold_mmh']:g}mmh"] = r[s]
    for step, metrics in sorted(by_step.items()):
        tracker.log_metrics(metrics, step)
    for p in res.files.values():
        tracker.log_artifact(p)
    tracker.log_text(json.dumps(res.fold_runs, indent=2, default=str), "folds.json")
    tracker.end()
    return tracker.run_id


def format_summary(res: ProtocolResult) -> str:
    """What ``skill-report`` prints at the end: the folds (trained / scored events), the pooled
    CSI/HSS/MSE table and where everything went."""
    from convlstm_dist.verify.table import format_table

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
