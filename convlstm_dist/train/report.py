"""Artifacts of a training run: the per-lead-time skill table (CSV + plot) and a forecast figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from convlstm_dist.data import filesystem, is_remote, scrub, storage_options_for
from convlstm_dist.data.quantity import get_quantity, quantity_of_variable
from convlstm_dist.data.samples import read_windows
from convlstm_dist.verify import flow_row, forecast_figure as draw
from convlstm_dist.verify.table import CSV_COLUMNS, plot_skill, write_csv


def skill_outputs(table: list[dict], out_len: int, timestep_s: int, out_dir: Path) -> list[Path]:
    """``skill.csv`` and ``skill.png`` of a checkpoint's ``lead_table`` (``ValAccumulator.lead_table``
    rows: ``method`` model/persistence, ``lead`` 1, 2, …), written by the one skill writer of
    ``evaluate`` too (``verify.table``): its columns (``verify.table.CSV_COLUMNS``) that the rows have,
    ``lead_min`` = ``lead`` × the time step."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{**r, "lead_min": r["lead"] * timestep_s / 60} for r in table]
    columns = [c for c in CSV_COLUMNS if all(c in r for r in rows)]  # a checkpoint from before has fewer
    return [write_csv(rows, out_dir / "skill.csv", columns), plot_skill(rows, out_dir / "skill.png")]


def forecast_figure(model, plan, quantity: str, loss: str, out_dir: Path, case: int | None = None) -> Path:
    """``forecast.png`` (:func:`convlstm_dist.verify.figures.forecast_figure`) of a fixed validation
    window (the wettest of the first 16): its last inputs, then observed, model and (rain) optical
    flow per lead, in minutes, on the crop's km extent; ``loss``: the training loss (a model trained
    on logits is shown as ``sigmoid`` of its output). Unobserved target pixels are no data."""
    import torch

    archive = plan.archives["val"]
    starts = plan.starts["val"][:16]
    win = read_windows(archive, starts, plan.in_len, plan.out_len, plan.crop, seed=10_000)
    i = int(np.argmax(win["y"].mean(axis=(1, 2, 3, 4)))) if case is None else case
    x = torch.from_numpy(win["x"][i:i + 1])
    with torch.no_grad():
        pred, _ = model(x, plan.out_len)
    q = get_quantity(quantity)
    if q.output_is_logits(loss):
        pred = torch.sigmoid(pred)
    inputs = np.asarray(q.from_model(win["x"][i, :, 0]), dtype="float32")
    obs = np.asarray(q.from_model(win["y"][i, :, 0]), dtype="float32")
    fc = np.asarray(q.from_model(pred[0, :, 0].numpy()), dtype="float32")
    obs = np.where(win["mask"][i, :, 0] > 0.5, obs, np.nan)
    flow = flow_row(inputs, plan.out_len, q.has_rain_rate)
    h, w = inputs.shape[1:]
    cy, cx = int(win["cy"][i]), int(win["cx"][i])
    coords = getattr(archive, "coords_m", None)  # None: no coordinates (or not an archive: Moving MNIST)
    xs, ys = (None, None) if coords is None else (coords[0][cx:cx + w], coords[1][cy:cy + h])
    attrs = getattr(archive, "attrs", {}) or {}
    times = getattr(archive, "times", None)
    when = "" if times is None else f" from {times[int(win['t0'][i]) + plan.in_len - 1]} UTC"
    step = int(plan.record.get("timestep_s") or getattr(archive, "timestep_s", None) or 300)
    return draw(out_dir / "forecast.png", inputs=inputs, model=fc, observed=obs, flow=flow, timestep_s=step,
                units=q.display_unit, x=xs, y=ys, projection=attrs.get("projection"),
                title=f"validation window{when}, {h}x{w} crop (best checkpoint)", model_label="model")


EXAMPLE_MAX_SIDE = 128  # the input example is stored as JSON: a corner of a large grid is enough


def input_example(plan, quantity: str, fixed_grid: bool = False) -> np.ndarray | None:
    """The MLflow model's input example: the ``in_len`` input frames of the first validation
    window (else training, else test window; None without any) in physical units (mm/h; intensity for Moving MNIST), ``(frames, H, W)`` float32, at
    most ``EXAMPLE_MAX_SIDE`` pixels a side unless the model runs on one grid only (``fixed_grid``)."""
    split = next((s for s in ("val", "train", "test") if len(plan.starts.get(s, ()))), None)
    if split is None:
        return None  # Tracker.log_model then logs zeros of the model's shape
    win = read_windows(plan.archives[split], plan.starts[split][:1], plan.in_len, plan.out_len, plan.crop,
                       seed=10_000)
    x = get_quantity(quantity).from_model(win["x"][0, :, 0])
    if not fixed_grid:  # a ConvLSTM runs on any grid
        x = x[..., :EXAMPLE_MAX_SIDE, :EXAMPLE_MAX_SIDE]
    return np.ascontiguousarray(np.nan_to_num(x), dtype=np.float32)


def score_test_split(cfg, plan, model, device=None, amp_dtype=None, say=None) -> dict[str, float]:
    """``test_*`` metrics (the validation metrics' names with scope ``test``) of ``model`` on the
    plan's test split, read into memory once; {} when the split has no windows, or (said) when its
    frames exceed ``data.memory_limit_gb``."""
    import torch

    from convlstm_dist.train.feed import prefetch
    from convlstm_dist.train.validation import EVAL_BATCH, evaluate_val

    if not plan.counts().get("test"):
        return {}
    need = plan.memory_bytes(("test",)) / 2**30
    if need > cfg.data.memory_limit_gb:
        if say is not None:
            say(f"[convlstm-dist] test split not scored here: its frames take {need:.1f} GiB > data.memory_limit_gb="
                f"{cfg.data.memory_limit_gb:g}; score it with convlstm-dist evaluate --split test")
        return {}
    device = device or torch.device("cpu")
    split = plan.memory_splits(("test",))["test"]
    acc = evaluate_val(model.to(device), prefetch(split.batches(EVAL_BATCH, cfg.data.seed + 20_000, 0, False), device),
                       cfg, quantity_of_variable(plan.variable).name, device, 0, 1, amp_dtype)
    return acc.metrics("test")


def final_report(cfg, plan, model, payload: dict, out_dir: Path, tracker=None, say=None, device=None,
                 amp_dtype=None) -> tuple[list[Path], str | None, dict[str, float]]:
    """The end of every training run (both backends), for its best checkpoint (``model`` and its
    ``payload``): ``skill.csv``/``skill.png`` and ``forecast.png`` in ``out_dir``, the test split
    scored (:func:`score_test_split`, on ``device``); with a tracker, those files as artifacts, the
    test metrics, and the model logged and registered (``tracking.register_model`` or the recipe
    name). Returns (files, model URI or None, test metrics)."""
    from convlstm_dist.checkpoint import slim_checkpoint

    out_dir = Path(out_dir)
    files = skill_outputs(payload["train"].get("lead_table", []), cfg.data.out_len,
                          plan.record.get("timestep_s", 300), out_dir)
    files.append(forecast_figure(model.cpu(), plan, payload["quantity"], cfg.train.loss, out_dir))
    test = score_test_split(cfg, plan, model, device, amp_dtype, say)
    model_uri = None
    if tracker is not None:
        for f in files:
            tracker.log_artifact(f)
        if test:
            tracker.log_metrics(test, step=int(payload["train"].get("epoch") or 0))
        best_dir = slim_checkpoint(payload, out_dir / "best-model").parent
        model_uri = tracker.log_model(best_dir, cfg.tracking.register_model or cfg.name,
                                      example=input_example(plan, payload["quantity"], cfg.model.kind == "fclstm"))
    if say is not None:
        for f in files:
            say(f"[convlstm-dist] wrote {f}")
        if test:
            key = "test_cross_entropy" if "test_cross_entropy" in test else "test_mse"
            say(f"[convlstm-dist] test split ({plan.counts().get('test')} windows, best checkpoint): "
                f"{key} {test[key]:.4f}")
    return files, model_uri, test


def publish_outputs(local: Path, storage_path: str, run_name: str, kind: str, endpoint_url: str | None = None,
                    say=None) -> str | None:
    """Copy a run's output folder or file (``kind``: ``reports`` / ``logs``) to
    ``<storage_path>/<run_name>/<kind>/`` when the run's storage is remote (``s3://``): on a cluster the
    driver's ``--workdir`` is a folder of the head node (inside ``ray job submit``, its temporary
    session folder), so the copy beside the checkpoints is the one that lasts. Returns the URL, or
    None for local storage. A failed copy is said, never raised: the run's results are already in
    MLflow and its checkpoints."""
    if not is_remote(storage_path):
        return None
    local = Path(local)
    url = f"{storage_path.rstrip('/')}/{run_name}/{kind}/{local.name}"
    opts = storage_options_for(url, endpoint_url)
    try:
        fs, path = filesystem(url, opts)
        fs.put(str(local), path, recursive=local.is_dir())
    except Exception as err:  # noqa: BLE001 - a copy of outputs must not fail a finished run
        if say is not None:
            say(f"[convlstm-dist] could not copy {local} to {url}: {scrub(f'{type(err).__name__}: {err}', opts)[:200]}")
        return None
    if say is not None:
        say(f"[convlstm-dist] {kind} copied to {url}")
    return url
