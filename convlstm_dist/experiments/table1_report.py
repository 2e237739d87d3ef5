"""The paper's Table 1 (:data:`PAPER_TABLE1`) beside ours: the one Table 1 report module.

Two ways lead to the table, and both are reported here: the runs of ``train --local`` made one by
one (:func:`table1_report_from_runs`, below), and all six models on one device in one time budget
(:mod:`.table1_device`, whose :class:`ModelRun` rows :func:`write_report` writes). They share the
perfect-forecast floor (:func:`entropy_floor`), the learning-curve plot (:func:`plot_curves`) and
the ranking against the paper (:func:`verdict`).

``convlstm-dist table1-report --workdir DIR [--out table1.md]`` (:func:`table1_report_from_runs`)
reads the single-process runs ``DIR/local/mm-*`` (``convlstm-dist train --local`` of the recipes in
``convlstm_dist/recipes/moving_mnist/``) and writes a Markdown table plus ``table1.png`` (validation
cross-entropy against training time, one line per model). The other way to the same table, all
six models on one device in one time budget, is :mod:`.table1_device`.

Normalisation (as in the paper): binary cross-entropy summed over the 10 predicted 64×64
frames, averaged over test sequences. Targets are grey levels in [0, 1] (MNIST / 255), so even a
perfect forecast scores the entropy of the targets; :func:`entropy_floor` computes that floor on
the same test sequences and the table shows it.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convlstm_dist.data import open_archive
from convlstm_dist.errors import UserError

# recipe name -> (the paper's model name, parameters, Table 1 cross-entropy)
PAPER_TABLE1 = {
    "mm-fc-lstm-2048-2048": ("FC-LSTM-2048-2048", 142_667_776, 4832.49),
    "mm-convlstm-5x5-256": ("ConvLSTM(5x5)-5x5-256", 13_524_496, 3887.94),
    "mm-convlstm-5x5-128-128": ("ConvLSTM(5x5)-5x5-128-5x5-128", 10_042_896, 3733.56),
    "mm-convlstm-5x5-128-64-64": ("ConvLSTM(5x5)-5x5-128-5x5-64-5x5-64", 7_585_296, 3670.85),
    "mm-convlstm-9x9-1x1-128-128": ("ConvLSTM(9x9)-1x1-128-1x1-128", 11_550_224, 4782.84),
    "mm-convlstm-9x9-1x1-128-64-64": ("ConvLSTM(9x9)-1x1-128-1x1-64-1x1-64", 8_830_480, 4231.50),
}
TARGET_RECIPE = "mm-convlstm-5x5-128-64-64"  # the target: test CE <= the paper's 3670.85


def entropy_floor(y: np.ndarray) -> float:
    """Mean over sequences of the summed binary entropy of targets ``y`` (n, T, ...) in [0, 1]:
    the cross-entropy of a perfect forecast."""
    p = np.clip(y.astype(np.float64), 1e-12, 1 - 1e-12)
    h = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    h[(y <= 0) | (y >= 1)] = 0.0
    return float(h.reshape(len(y), -1).sum(1).mean())


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(fh)]


def collect(workdir: str | Path) -> list[dict]:
    """One row per recipe of Table 1 that has a run under ``workdir/local``."""
    rows = []
    for name, (label, params, paper) in PAPER_TABLE1.items():
        run = Path(workdir) / "local" / name
        summ = run / "summary.json"
        if not summ.exists():
            continue
        s = json.loads(summ.read_text())
        hist = _read_history(run / "history.csv")
        best = min(hist, key=lambda r: r.get("val_loss", np.inf)) if hist else {}
        rows.append({
            "recipe": name, "model": label, "params": params, "paper_ce": paper,
            "test_ce": s.get("test", {}).get("test_cross_entropy", float("nan")),
            "val_ce_best": best.get("val_cross_entropy", float("nan")),
            "epochs": hist[-1]["epoch_float"] if hist else 0.0, "steps": int(hist[-1]["step"]) if hist else 0,
            "train_s": hist[-1]["elapsed_s"] if hist else 0.0,
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in hist])) if hist else 0.0,
            "cuda_graph": s.get("cuda_graph"), "device": s.get("device"), "history": hist,
        })
    return rows


def markdown(rows: list[dict], floor: float | None = None) -> str:
    lines = ["| model (Table 1) | parameters | paper CE | our test CE | epochs trained | steps | train time | samples/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['paper_ce']:.2f} | {r['test_ce']:.2f} | "
                     f"{r['epochs']:.2f} | {r['steps']} | {r['train_s']:.0f} s | {r['samples_per_s']:.0f} |")
    if floor is not None:
        lines.append(f"\nA perfect forecast of these test sequences scores {floor:.2f} (entropy of the grey-level targets).")
    return "\n".join(lines)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Validation cross-entropy per epoch of the ``train --local`` runs (one line per model)."""
    curves = [{"label": f"{r['model']} (paper {r['paper_ce']:.0f})", "paper_ce": None,
               "points": [{"epochs": x["epoch_float"], "val_ce": x.get("val_cross_entropy", np.nan)}
                          for x in r["history"]]} for r in rows]
    return plot_curves(curves, Path(path), [("epochs", "epoch (10,000 training sequences)")], size=(7, 4), dpi=110)


def plot_curves(curves: list[dict], path: Path, axes_x: list[tuple[str, str]], floor: float | None = None,
                size=(10, 4), dpi: int = 80, title: str | None = None) -> Path:
    """The one Table 1 plot: validation cross-entropy (log scale) of each curve (``label``, ``points``
    with the x keys of ``axes_x`` and ``val_ce``; ``paper_ce`` dotted when given) on one panel per
    (x key, x label) of ``axes_x``; ``floor``: the perfect forecast, dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(axes_x), squeeze=False)[0]
    for c, color in zip(curves, [f"C{i}" for i in range(10)]):
        if not c["points"]:
            continue
        for ax, (key, _) in zip(axes, axes_x):
            ax.plot([p[key] for p in c["points"]], [p["val_ce"] for p in c["points"]], "-o", ms=3, color=color,
                    label=c["label"])
            if c.get("paper_ce") is not None:
                ax.axhline(c["paper_ce"], color=color, ls=":", lw=0.8)
    for ax, (_, xl) in zip(axes, axes_x):
        if floor is not None:
            ax.axhline(floor, color="k", ls="--", lw=0.8)
        ax.set_xlabel(xl)
        ax.set_ylabel("validation cross-entropy per sequence")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6 if len(axes) > 1 else 7)
    if title:
        axes[-1].set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def test_targets(workdir: str | Path, in_len: int = 10, out_len: int = 10) -> np.ndarray | None:
    """The predicted frames of the Moving MNIST test split under ``workdir`` (if it was generated)."""
    arcs = sorted((Path(workdir) / "moving_mnist").glob(f"test-*x{in_len + out_len}-seed*.zarr"))
    if not arcs:
        return None
    arc = open_archive(str(arcs[-1]))
    frames = arc.read(0, arc.shape[0])
    seqs = frames.reshape(-1, in_len + out_len, *frames.shape[1:])
    return seqs[:, in_len:]


def table1_report_from_runs(workdir: str | Path, out: str | Path | None = None) -> tuple[str, list[Path]]:
    """The Markdown table of the runs under ``workdir`` (with the perfect-forecast floor when the
    test split is there); with ``out``, also written there and ``table1.png`` beside it.
    Returns the table and the files written."""
    rows = collect(workdir)
    if not rows:
        raise UserError(f"no Moving MNIST runs under {workdir}/local (run convlstm-dist train --local --config "
                        "convlstm_dist/recipes/moving_mnist/<recipe>.yaml --workdir DIR first)")
    y = test_targets(workdir)
    text = markdown(rows, entropy_floor(y) if y is not None else None)
    if out is None:
        return text, []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text, [out, plot(rows, out.with_name("table1.png"))]


# ---- the on-device run's report (table1_device) ----
@dataclass
class ModelRun:
    recipe: str
    model: str
    params: int
    paper_ce: float
    engine: str = ""
    precision: str = ""
    batch_size: int = 0
    slot_s: float = 0.0
    steps: int = 0
    sequences: int = 0
    train_s: float = 0.0          # stepping only (graph capture included), no validation
    eval_s: float = 0.0           # validation + test
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    val_ce_best: float = math.nan
    best_step: int = 0
    test_ce: float = math.nan
    test_ce_fp32_forward: float | None = None
    stopped: str | None = None
    peak_gpu_memory_gib: float | None = None
    curve: list[dict] = field(default_factory=list)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "curve"}


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (math.isnan(values[i]), values[i]))
    r = [0] * len(values)
    for k, i in enumerate(order):
        r[i] = k + 1
    return r


def kendall_tau(a: list[float], b: list[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
    return s / (n * (n - 1) / 2) if n > 1 else math.nan


def verdict(runs: list[ModelRun]) -> dict:
    ours, paper = [r.test_ce for r in runs], [r.paper_ce for r in runs]
    target = next((r for r in runs if r.recipe == TARGET_RECIPE), None)
    full = len(runs) == len(PAPER_TABLE1)
    return {
        "paper_rank": _ranks(paper), "our_rank": _ranks(ours),
        "ranking_reproduced": full and _ranks(paper) == _ranks(ours),
        "kendall_tau": kendall_tau(ours, paper),
        "target_recipe": TARGET_RECIPE,
        "target_met": bool(target is not None and target.test_ce <= target.paper_ce),
    }


def device_markdown(runs: list[ModelRun], meta: dict) -> str:
    v = verdict(runs)
    fp32 = any(r.test_ce_fp32_forward is not None for r in runs)
    head = ("| model (Table 1) | parameters | paper CE | our test CE | ours − paper | best val CE | rank paper / ours "
            "| steps | epochs (10k seqs) | train time | samples/s | engine |")
    lines = [f"# Moving MNIST, Table 1 of Shi et al. (2015), on one device{' (DRY RUN)' if meta['dry_run'] else ''}",
             "",
             (f"- Device: {meta['device_name']}; torch {meta['torch']}; budget {meta['budget_s']:.0f} s, "
              f"used {meta['wall_s']:.0f} s; {meta['when']}."),
             f"- Command: `{meta['command']}`",
             (f"- Data: generated on the device per batch; digit pools train {meta['pools']['train']}, "
              f"validation {meta['pools']['val']}, test {meta['pools']['test']} (indices into the 10,000 MNIST "
              f"test digits, no overlap); {meta['n_val']} validation and {meta['n_test']} test sequences "
              f"(fixed seeds), 2 digits, 20 frames of 64×64 (10 → 10)."),
             ("- Cross-entropy: binary cross-entropy summed over the 10 predicted 64×64 frames, averaged over "
              "sequences; logits cast to float32 before the loss (forward under the training autocast); test "
              "CE with the weights of the best validation CE."),
             (f"- A perfect forecast of these test sequences scores **{meta['test_entropy']:.2f}** (entropy of "
              "the grey-level targets)."),
             ""]
    if meta["dry_run"]:
        lines += ["**Dry run**: the models are trained at 1/32 of their width for a fixed few steps (the budget "
                  "only sizes the shares); the numbers below only show that the path works. Full-size parameter counts (meta device) against the "
                  "paper's: " + ", ".join(f"{r['recipe']} {r['full_params']:,} "
                                          f"({'ok' if r['full_params'] == r['paper_params'] else 'MISMATCH'})"
                                          for r in meta["param_check"]) + ".", ""]
    lines += [head + (" test CE, fp32 forward |" if fp32 else ""),
              "| --- | ---: | ---: | ---: | ---: | ---: | :---: | ---: | ---: | ---: | ---: | --- |"
              + (" ---: |" if fp32 else "")]
    for r, rp, ro in zip(runs, v["paper_rank"], v["our_rank"]):
        lines.append(f"| {r.model} | {r.params:,} | {r.paper_ce:.2f} | {r.test_ce:.2f} | {r.test_ce - r.paper_ce:+.2f} | "
                     f"{r.val_ce_best:.2f} | {rp} / {ro} | {r.steps} | {r.sequences / 10_000:.2f} | {r.train_s:.0f} s | "
                     f"{r.samples_per_s:.0f} | {r.engine} {r.precision}"
                     + (f"{' (' + r.stopped + ')' if r.stopped else ''} |")
                     + (f" {r.test_ce_fp32_forward:.2f} |" if fp32 else ""))
    target = next((r for r in runs if r.recipe == TARGET_RECIPE), None)
    lines += ["",
              (f"- **Ranking** (1 = lowest CE): paper {v['paper_rank']}, ours {v['our_rank']}: "
               f"{'reproduced' if v['ranking_reproduced'] else 'not reproduced'} (Kendall τ {v['kendall_tau']:.2f}"
               f"{'' if len(runs) == len(PAPER_TABLE1) else f', only {len(runs)} of 6 models'})."),
              "- **Target** (3-layer 5×5 model, test CE ≤ the paper's 3670.85): "
              + ("not run" if target is None else
                 f"{target.test_ce:.2f} → {'met' if v['target_met'] else 'not met'}") + ".",
              f"- Learning curves: `{meta['prefix']}.png`; every validation point: `{meta['prefix']}-curves.csv`.",
              ""]
    return "\n".join(lines)


def device_plot(runs: list[ModelRun], path: Path, floor: float | None = None) -> Path:
    """Learning curves of an on-device run against training time and epochs; dotted: the paper's CE."""
    curves = [{"label": f"{r.model} (test {r.test_ce:.0f})", "paper_ce": r.paper_ce, "points": r.curve} for r in runs]
    return plot_curves(curves, path, [("train_s", "training time (s)"), ("epochs", "epochs (10,000 sequences)")],
                       floor, title="dotted: paper's Table 1; dashed: perfect forecast")


def write_report(runs: list[ModelRun], meta: dict, out: Path, prefix: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "prefix": prefix}
    files = [out / f"{prefix}.md", out / f"{prefix}.csv", out / f"{prefix}-curves.csv", out / f"{prefix}.png",
             out / f"{prefix}.json"]
    files[0].write_text(device_markdown(runs, meta))
    rows = [r.row() for r in runs]
    with files[1].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    points = [p for r in runs for p in r.curve]
    with files[2].open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(points[0]) if points else ["recipe"])
        w.writeheader()
        w.writerows(points)
    device_plot(runs, files[3], meta.get("test_entropy"))
    files[4].write_text(json.dumps({"meta": meta, "verdict": verdict(runs), "runs": [r.__dict__ for r in runs]},
                                   indent=1, default=float))
    return files
