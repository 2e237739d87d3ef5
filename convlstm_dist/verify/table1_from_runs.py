"""The paper's Table 1 (:data:`PAPER_TABLE1`) next to our Moving MNIST runs of ``train --local``.

``convlstm-dist table1-report --workdir DIR [--out table1.md]`` (:func:`table1_report_from_runs`)
reads the single-process runs ``DIR/local/mm-*`` (``convlstm-dist train --local`` of the recipes in
``pipelines/moving_mnist/``) and writes a Markdown table plus ``table1.png`` (validation
cross-entropy against training time, one line per model). The other way to the same table, all
six models on one device in one time budget, is :mod:`.table1_on_device`.

Normalisation (as in the paper): binary cross-entropy summed over the 10 predicted 64×64
frames, averaged over test sequences. Targets are grey levels in [0, 1] (MNIST / 255), so even a
perfect forecast scores the entropy of the targets; :func:`entropy_floor` computes that floor on
the same test sequences and the table shows it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for r in rows:
        h = r["history"]
        if h:
            ax.plot([x["epoch_float"] for x in h], [x.get("val_cross_entropy", np.nan) for x in h], "-o", ms=3,
                    label=f"{r['model']} (paper {r['paper_ce']:.0f})")
    ax.set_xlabel("epoch (10,000 training sequences)")
    ax.set_ylabel("validation cross-entropy per sequence")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def test_targets(workdir: str | Path, in_len: int = 10, out_len: int = 10) -> np.ndarray | None:
    """The predicted frames of the Moving MNIST test split under ``workdir`` (if it was generated)."""
    from convlstm_dist.data import open_archive

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
                        "pipelines/moving_mnist/<recipe>.yaml --workdir DIR first)")
    y = test_targets(workdir)
    text = markdown(rows, entropy_floor(y) if y is not None else None)
    if out is None:
        return text, []
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text, [out, plot(rows, out.with_name("table1.png"))]
