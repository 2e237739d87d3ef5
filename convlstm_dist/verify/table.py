"""Skill tables for people: a text table for stdout, a CSV file and a skill-vs-lead plot.

The one skill writer: ``evaluate``, ``skill-report`` and the end of every training run
(``train/report.py``, ``skill.csv``/``skill.png``) write through it. Input rows are
:meth:`SkillAccumulator.compute` rows labelled with the method that made the forecast and the
lead time in minutes (:func:`label_rows` adds both)::

    rows = label_rows(acc_model.compute(), "convlstm", lead_step_min=6) \
         + label_rows(acc_persist.compute(), "persistence", lead_step_min=6)
    print(format_table(rows))
    write_csv(rows, "skill.csv")
    plot_skill(rows, "skill.png")

The plot uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

CSV_COLUMNS = ("method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae", "bmse", "corr")


def label_rows(rows: Iterable[dict], method: str, lead_step_min: float) -> list[dict]:
    """Copies of ``rows`` with ``method`` and ``lead_min = (lead_index + 1) * lead_step_min``."""
    return [{**row, "method": method, "lead_min": (row["lead_index"] + 1) * lead_step_min} for row in rows]


def _methods(rows: Sequence[dict], methods: Sequence[str] | None) -> list[str]:
    if methods is not None:
        return list(methods)
    return list(dict.fromkeys(row["method"] for row in rows))


def _check_keys(rows: Sequence[dict], keys: Iterable[str]) -> None:
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}; label rows with label_rows(rows, method, lead_step_min)")


def _index(rows: Sequence[dict]) -> dict[tuple, dict]:
    return {(row["method"], float(row["threshold_mmh"]), float(row["lead_min"])): row for row in rows}


def _fmt(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_table(rows: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """Text table: one block per threshold, one line per lead, CSI/HSS/MSE columns per method.

    ``methods`` picks and orders the methods shown (default: order of first appearance).
    """
    _check_keys(rows, ("method", "lead_min", "threshold_mmh", "csi", "hss", "mse"))
    methods = _methods(rows, methods)
    by_key = _index(rows)
    thresholds = sorted({float(r["threshold_mmh"]) for r in rows})
    leads = sorted({float(r["lead_min"]) for r in rows})
    width = max(9, *(len(m) + 5 for m in methods))
    header = "lead_min".rjust(8) + "".join(
        f"{score}:{m}".rjust(width) for score in ("csi", "hss", "mse") for m in methods)
    blocks = []
    for thr in thresholds:
        lines = [f"threshold >= {thr:g} mm/h", header]
        for lead in leads:
            cells = []
            for score in ("csi", "hss", "mse"):
                for m in methods:
                    row = by_key.get((m, thr, lead))
                    cells.append(_fmt(row[score] if row else float("nan")).rjust(width))
            lines.append(f"{lead:8g}" + "".join(cells))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """Write ``rows`` with ``columns`` (default :data:`CSV_COLUMNS`; other keys are left out)."""
    _check_keys(rows, columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_skill(rows: Sequence[dict], path: str | Path, methods: Sequence[str] | None = None) -> Path:
    """CSI against lead time, one panel per threshold, plus one MSE panel; a line per method.

    MSE does not depend on the threshold, so it has a single panel (the last one).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_keys(rows, ("method", "lead_min", "threshold_mmh", "csi", "mse"))
    methods = _methods(rows, methods)
    thresholds = sorted({float(r["threshold_mmh"]) for r in rows})
    fig = Figure(figsize=(3.2 * (len(thresholds) + 1), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(thresholds) + 1, squeeze=False)[0]
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        for ax, thr in zip(axes, thresholds):
            pts = sorted((float(r["lead_min"]), r["csi"]) for r in mine if float(r["threshold_mmh"]) == thr)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=m)
        mse = sorted({float(r["lead_min"]): r["mse"] for r in mine}.items())
        axes[-1].plot([p[0] for p in mse], [p[1] for p in mse], marker="o", ms=3, label=m)
    leads = sorted({float(r["lead_min"]) for r in rows})
    for ax, thr in zip(axes, thresholds):
        ax.set(title=f"CSI, >= {thr:g} mm/h", xlabel="lead time (min)", ylim=(0, 1))
        if not any(r["csi"] is not None and math.isfinite(r["csi"]) for r in rows if float(r["threshold_mmh"]) == thr):
            ax.text(0.5, 0.5, "no rain this strong\n(observed or forecast)", transform=ax.transAxes, ha="center",
                    va="center", fontsize="small", color="0.4")
    if leads:  # every panel on the lead times of the table (an empty one too)
        pad = max((leads[-1] - leads[0]) * 0.05, 0.5)
        for ax in axes:
            ax.set_xlim(leads[0] - pad, leads[-1] + pad)
    axes[-1].set(title="MSE, (mm/h)²", xlabel="lead time (min)")
    if methods:  # an empty table (a checkpoint without one) still gets its empty panel
        axes[0].legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
