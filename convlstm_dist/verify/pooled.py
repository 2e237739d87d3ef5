"""Skill pooled over events: the scores of pooled contingency tables and FSS sums, as rows and markdown.

:func:`pool_rows` adds the per-event rows of one (method, lead, threshold) — hits, false alarms,
misses and correct negatives, FSS fraction sums — and scores the sums, so a pooled CSI is that of all
events' pixels together, not a mean of per-event CSIs. :func:`markdown_table` and
:func:`fss_markdown_table` lay rows out per threshold (lead x method). The held-out-event protocol
(:mod:`convlstm_dist.experiments.skill_report`) writes its report with these.
"""

from __future__ import annotations

import math
from typing import Sequence

from convlstm_dist.verify.fss import fss_key, pool_fss
from convlstm_dist.verify.scores import contingency_scores
from convlstm_dist.vocabulary import FSS_SCALES_KM, FSS_THRESHOLDS_MMH, REPORT_THRESHOLDS_MMH

SCORES = ("csi", "pod", "far", "hss")
COUNT_KEYS = ("hits", "false_alarms", "misses", "correct_negatives")
FSS_COLUMNS = tuple(fss_key(s) for s in FSS_SCALES_KM)
EVENT_COLUMNS = ("fold", "event", "method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae",
                 *FSS_COLUMNS, *COUNT_KEYS, "n", "windows")
POOLED_COLUMNS = ("method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae", *FSS_COLUMNS,
                  *COUNT_KEYS, "n", "events")


def pool_rows(rows: Sequence[dict]) -> list[dict]:
    """Per (method, lead, threshold): the scores of the events' pooled contingency tables (hits,
    false alarms, misses and correct negatives added over events, then CSI/POD/FAR/HSS), MSE/MAE of
    the pooled pixels (per-event values weighted by ``n``), and FSS from the pooled fraction sums."""
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


