"""What a finished sweep leaves for people: ``sweep_summary.csv`` / ``.md``, ``metric_vs_axes.png``
(best metric per trial against each axis) and the table printed at the end (:func:`print_summary`)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from convlstm_dist.tune.space import SweepSpec, is_log_axis


@dataclass
class SweepOutcome:
    """What :func:`convlstm_dist.tune.sweep.run_sweep` returns: the trials, the best one and where it went."""

    name: str
    experiment_path: str
    trials: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_recipe: str | None = None
    parent_run_id: str | None = None
    tracking_uri: str | None = None
    model_uri: str | None = None
    resumed: bool = False
    seconds: float = 0.0


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_summary(spec: SweepSpec, trials: list[dict], out_dir: Path) -> list[Path]:
    """``sweep_summary.csv`` and ``sweep_summary.md`` (one row per trial) and, when there are axes and
    trials, ``metric_vs_axes.png``, in ``out_dir``; returns the files written."""
    metric = f"best_{spec.search.metric}"
    cols = ["trial_id", "status", "epochs", *spec.space, metric, f"last_{spec.search.metric}"]
    csv_path = out_dir / "sweep_summary.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(trials)
    md = out_dir / "sweep_summary.md"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(t.get(c)) for c in cols) + " |" for t in trials]
    md.write_text("\n".join(lines) + "\n")
    files = [csv_path, md]
    if list(spec.space) and trials:
        files.append(_plot_axes(spec, trials, out_dir))
    return files


def _plot_axes(spec: SweepSpec, trials: list[dict], out_dir: Path) -> Path:
    """``metric_vs_axes.png``: one panel per axis, the best metric of each trial, coloured by status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = f"best_{spec.search.metric}"
    axes = list(spec.space)
    fig, axs = plt.subplots(1, len(axes), figsize=(3.2 * len(axes), 3.0), squeeze=False)
    for ax, key in zip(axs[0], axes):
        pts = [(t[key], t[metric], t["status"]) for t in trials if not math.isnan(t[metric])]
        for status, color in (("COMPLETED", "tab:blue"), ("STOPPED_EARLY", "tab:orange"), ("ERROR", "tab:red")):
            xs = [p[0] for p in pts if p[2] == status]
            ys = [p[1] for p in pts if p[2] == status]
            if xs:
                if isinstance(xs[0], str):
                    cats = sorted({str(p[0]) for p in pts})
                    xs = [cats.index(str(x)) for x in xs]
                    ax.set_xticks(range(len(cats)), cats)
                ax.scatter(xs, ys, c=color, label=status.lower().replace("_", " "), s=24)
        if is_log_axis(spec, key):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(spec.search.metric)
    if axs[0][0].get_legend_handles_labels()[0]:
        axs[0][0].legend(fontsize=7)
    fig.suptitle(f"sweep {spec.name}: best {spec.search.metric} per trial", fontsize=9)
    fig.tight_layout()
    png = out_dir / "metric_vs_axes.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def print_summary(out: SweepOutcome, spec: SweepSpec) -> None:
    metric = f"best_{spec.search.metric}"
    print(f"\n=== sweep {out.name}: {len(out.trials)} trials in {out.seconds:.0f} s"
          f"{' (resumed)' if out.resumed else ''} ===")
    cols = ["trial_id", "status", "epochs", *spec.space, metric]
    print("  ".join(f"{c:>14}" for c in cols))
    for t in out.trials:
        print("  ".join(f"{_fmt(t.get(c)):>14}" for c in cols))
    if out.best:
        print(f"best trial {out.best['trial_id']}: {metric} {out.best[metric]:.5g}")
        print(f"best recipe: {out.best_recipe}  (convlstm-dist train --config {out.best_recipe})")
    if out.model_uri:
        print(f"best model: {out.model_uri}")
    if out.tracking_uri:
        print(f"MLflow parent run {out.parent_run_id} at {out.tracking_uri}")
