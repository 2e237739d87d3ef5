"""Table 1 of Shi et al. (2015) on one device: the six Moving MNIST models one after another, each
alone on the device at full speed, within one time budget, data generated on the device.

    convlstm-dist table1 --out DIR --time-budget 540 [--device cuda]
    convlstm-dist table1 --out DIR --time-budget 120 --device cpu --dry-run

:func:`run_table1_on_device` runs it from :class:`Table1Options` (the command's options). The other
way to the same table, from ``train --local`` runs made one by one, is :func:`.table1_report.table1_report_from_runs`.

* Models and training: the recipes ``convlstm_dist/recipes/moving_mnist/*.yaml`` (RMSProp, lr 1e-3, decay 0.9,
  batch 16, 4×4 patches, 10 → 10 frames, ``bce`` loss), built by ``build_model_from_config`` and
  trained by the project's :class:`~convlstm_dist.train.engine.StepEngine` in the mode
  ``choose_engine`` picks (on one CUDA device: the whole step as one CUDA graph, bf16 autocast).
* Data: :mod:`convlstm_dist.data.mnist_device`: fresh training sequences per batch, rendered on
  the device from the digits 0–6,999 of the shipped 10,000; fixed validation (digits 7,000–7,999)
  and test (8,000–9,999) sequences. No digit is shared between the splits.
* Cross-entropy (the paper's): binary cross-entropy summed over the 10 predicted 64×64 frames,
  averaged over sequences, by :func:`sequence_cross_entropy`: the forward runs under the training
  autocast, the logits are cast to float32 before the loss, per-sequence sums are accumulated in
  float64. ``--fp32-test`` also scores the test set with a full float32 forward.
* Time: ``--time-budget`` covers the whole run (set-up, every model's training, validation and test,
  reports). Each model gets an equal share (or ``--weight NAME=W`` times one) of what is left
  when it starts, so time one model leaves unused goes to the next. Inside its share a model trains until only the (measured)
  time of its final validation and test is left; validation runs ``--val-points`` times.
  The test cross-entropy is that of the weights with the best validation cross-entropy.
* Output (``--out``, file names start with ``--prefix``): ``.md`` (our numbers beside the
  paper's, the ranking, the 3-layer target), ``.csv`` (one row per model), ``-curves.csv``
  (every validation point), ``.png`` (learning curves), ``.json`` (all of it). They are rewritten
  after every model, so a run cut short still leaves the models it finished.

``--dry-run``: every model of the table is first built at full size on the ``meta`` device (its
parameter count is checked against the paper's), then trained at 1/32 of its width for
``--max-steps`` (2) steps of batch 2, with 4 validation and 4 test sequences: the whole path in
seconds on a CPU.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convlstm_dist.data import DeviceMovingMNIST, EvalSet, POOLS, default_images_path, split_io
from convlstm_dist.errors import UserError
from convlstm_dist.experiments.table1_report import (
    ModelRun, PAPER_TABLE1, device_markdown, entropy_floor, verdict, write_report,
)
from convlstm_dist.models.losses import bce_per_sequence
from convlstm_dist.train.engine import StepEngine, choose_engine
from convlstm_dist.train.optim import make_optimizer, training_loss

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes" / "moving_mnist"


@torch.no_grad()
def evaluate_cross_entropy(model: torch.nn.Module, data: EvalSet, in_len: int, out_len: int, amp_dtype,
                           batch_size: int = 100) -> float:
    """Mean per-sequence cross-entropy of ``model`` over ``data``: forward under autocast
    (``amp_dtype`` None = float32), loss in float32, sum over sequences in float64."""
    was_training = model.training
    model.eval()
    device = data.data.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    for seq in data.batches(batch_size):
        x, y = split_io(seq, in_len)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits, _ = model(x, out_len)
        total += bce_per_sequence(logits, y).to(torch.float64).sum()
        n += seq.shape[0]
    model.train(was_training)
    return float(total) / max(n, 1)


@torch.no_grad()
def target_entropy(data: EvalSet, in_len: int, batch_size: int = 100) -> float:
    """The cross-entropy of a perfect forecast of ``data``: :func:`.table1_report.entropy_floor` of
    the grey-level targets, over all sequences."""
    total, n = 0.0, 0
    for seq in data.batches(batch_size):
        y = split_io(seq, in_len)[1].cpu().numpy()
        total += entropy_floor(y) * len(y)
        n += len(y)
    return total / max(n, 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one(cfg, data: DeviceMovingMNIST, val: EvalSet, test: EvalSet, slot_s: float, *, seed: int,
              engine: str | None = None, compile: bool = False, max_steps: int | None = None,
              val_points: int = 6, eval_batch: int = 100, fp32_test: bool = False, sync_every: int = 25,
              say=print) -> ModelRun:
    """Train ``cfg``'s model for about ``slot_s`` seconds of wall time (all of it: build, training,
    validation, test) with the project's step engine on ``data``'s device; return its numbers."""
    from convlstm_dist.config import build_model_from_config

    t_start = time.perf_counter()
    dev = data.device
    label, _, paper = PAPER_TABLE1[cfg.name]
    d = cfg.data
    choice = choose_engine(cfg, dev, 1, engine)
    mode = choice.mode
    if mode == "compiled" and not compile:
        mode = "eager"  # "compiled" without torch.compile is the eager step
    torch.manual_seed(seed)
    model = build_model_from_config(cfg, compile=compile and mode in ("compiled", "graph"),
                                    channels_last=choice.channels_last).to(dev)
    run = ModelRun(cfg.name, label, sum(p.numel() for p in model.parameters()), paper, engine=mode,
                   precision=choice.precision, batch_size=d.batch_size, slot_s=slot_s)
    opt = make_optimizer(cfg.train, model.parameters(), dev if mode == "graph" else None)
    scaler = torch.amp.GradScaler("cuda", enabled=choice.precision == "fp16")
    step_engine = StepEngine(model, model, opt, scaler, training_loss(cfg.train.loss, "intensity"), d.out_len,
                             choice.amp_dtype, cfg.train.grad_clip, mode, dev, say=say)
    say(choice.line(dev) + (f" -> {mode}" if mode != choice.mode else ""))
    gen = data.generator(seed)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    best_state, eval_s, train_s = None, 0.0, 0.0
    loss_sum = torch.zeros((), device=dev)
    loss_n = 0

    def validate(step: int) -> float:
        nonlocal best_state, eval_s, loss_sum, loss_n
        t0 = time.perf_counter()
        ce = evaluate_cross_entropy(model, val, d.in_len, d.out_len, choice.amp_dtype, eval_batch)
        dt = time.perf_counter() - t0
        eval_s += dt
        train_loss = float(loss_sum) / loss_n if loss_n else math.nan
        loss_sum.zero_()
        loss_n = 0
        run.curve.append({"recipe": cfg.name, "step": step, "sequences": step * d.batch_size,
                          "epochs": step * d.batch_size / 10_000, "train_s": round(train_s, 3),
                          "wall_s": round(time.perf_counter() - t_start, 3), "train_loss": train_loss,
                          "val_ce": ce})
        if ce < run.val_ce_best or best_state is None:
            run.val_ce_best, run.best_step = ce, step
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        say(f"[table1] {label}: step {step}  seqs {step * d.batch_size}  train {train_s:.1f} s  "
            f"train_loss {train_loss:.5f}  val CE {ce:.2f} ({dt:.1f} s)")
        return dt

    val_dt = validate(0)
    # the end needs one more validation and the test set (a float32 forward costs about 3x more);
    # the validations in between come out of the training time
    end_cost = val_dt * (1 + len(test) / max(len(val), 1) * (4 if fp32_test else 1)) * 1.15 + 1.0
    stop_at = slot_s - end_cost                       # wall seconds since t_start
    train_avail = stop_at - (time.perf_counter() - t_start) - max(val_points - 2, 0) * val_dt * 1.1
    every = max(train_avail, 0.0) / max(val_points - 1, 1)
    next_val = every
    step = 0
    t_loop = time.perf_counter()
    while True:
        if max_steps is not None and step >= max_steps:
            break
        if max_steps is None and time.perf_counter() - t_start >= stop_at:
            break
        seq, _ = data.train_batch(d.batch_size, gen)
        x, y = split_io(seq, d.in_len)
        loss_sum += step_engine.step(x, y, None)
        loss_n += 1
        step += 1
        if step % sync_every == 0 or step == 1 or (max_steps is not None and step >= max_steps):
            bad = step_engine.check()  # the NaN guard; one sync, so the clock below is honest
            train_s = time.perf_counter() - t_loop
            if bad is not None:
                run.stopped = f"non-finite training loss at step {bad}"
                say(f"[table1] {label}: STOPPED, {run.stopped}")
                break
            if (max_steps is None and train_s >= next_val
                    and time.perf_counter() - t_start < stop_at - every / 2 - val_dt):
                v0 = time.perf_counter()
                validate(step)
                t_loop += time.perf_counter() - v0  # validation time is not training time
                next_val += every
    _sync(dev)
    train_s = time.perf_counter() - t_loop
    run.steps, run.sequences, run.train_s = step, step * d.batch_size, train_s
    run.samples_per_s = run.sequences / max(train_s, 1e-9)
    if run.stopped is None and (not run.curve or run.curve[-1]["step"] != step):
        validate(step)
    model.load_state_dict(best_state)
    t0 = time.perf_counter()
    run.test_ce = evaluate_cross_entropy(model, test, d.in_len, d.out_len, choice.amp_dtype, eval_batch)
    if fp32_test:
        run.test_ce_fp32_forward = evaluate_cross_entropy(model, test, d.in_len, d.out_len, None, eval_batch)
    eval_s += time.perf_counter() - t0
    run.eval_s = eval_s
    if dev.type == "cuda":
        run.peak_gpu_memory_gib = torch.cuda.max_memory_allocated(dev) / 2**30
    run.wall_s = time.perf_counter() - t_start
    say(f"[table1] {label}: {step} steps ({run.sequences / 10_000:.2f} epochs of 10,000) in {train_s:.1f} s, "
        f"{run.samples_per_s:.0f} samples/s; best val CE {run.val_ce_best:.2f} at step {run.best_step}; "
        f"test CE {run.test_ce:.2f}" + (f" (fp32 forward {run.test_ce_fp32_forward:.2f})" if fp32_test else "")
        + f" (paper {paper:.2f}); {run.wall_s:.1f} s of a {slot_s:.1f} s share")
    return run


# ---- configs -------------------------------------------------------------------------------------
def table1_configs(overrides: list[str] | None = None, dry_run: bool = False,
                   recipes_dir: Path = RECIPES_DIR, only: list[str] | None = None) -> list:
    """The six recipes of Table 1 in the paper's order (``only``: those whose name contains one of
    the strings). Dry run: widths / 32 (at least 4)."""
    from convlstm_dist.config import load_config

    by_name = {}
    for path in sorted(recipes_dir.glob("*.yaml")):
        cfg = load_config(path, overrides)
        if dry_run:
            cfg = load_config(path, [*(overrides or []),
                                     f"model.hidden=[{', '.join(str(max(4, h // 32)) for h in cfg.model.hidden)}]"])
        by_name[cfg.name] = cfg
    missing = [n for n in PAPER_TABLE1 if n not in by_name]
    if missing:
        raise SystemExit(f"recipes missing under {recipes_dir}: {', '.join(missing)}")
    names = [n for n in PAPER_TABLE1 if not only or any(s in n for s in only)]
    return [by_name[n] for n in names]


def share_weight(name: str, specs: list[str]) -> float:
    """The budget weight of recipe ``name`` from ``--weight NAME=W`` specs (the last match wins; 1 if none)."""
    w = 1.0
    for spec in specs:
        key, sep, val = spec.partition("=")
        if not sep or not key:
            raise ValueError(f"expected NAME=W, got {spec!r}")
        try:
            weight = float(val)
        except ValueError:
            raise ValueError(f"weight of {key!r} is not a number: {val!r}") from None
        if not weight > 0 or math.isinf(weight):
            raise ValueError(f"weight of {key!r} must be positive, got {val}")
        if key in name:
            w = weight
    return w


def full_size_params(cfg) -> int:
    """Parameters of the recipe's model at full size (built on the meta device: no memory)."""
    from convlstm_dist.config import build_model_from_config

    with torch.device("meta"):
        return sum(p.numel() for p in build_model_from_config(cfg).parameters())


# ---- the whole run -------------------------------------------------------------------------------
@dataclass
class Table1Options:
    """What ``convlstm-dist table1`` takes (same names as its options; ``None``: the default noted)."""

    out: str
    budget_s: float
    device: str = "cuda"
    dry_run: bool = False
    prefix: str | None = None            # table1, dry run table1-dryrun
    models: list[str] | None = None      # only recipes whose name contains one of these
    overrides: list[str] = field(default_factory=list)  # KEY=VALUE for every model
    val_n: int | None = None             # 1000, dry 4
    test_n: int | None = None            # the recipes' data.mnist_test, dry 4
    val_points: int = 6
    eval_batch: int | None = None        # 100, dry 4
    max_steps: int | None = None         # the time share, dry 2
    engine: str | None = None            # the recipes' train.engine
    compile: bool = False
    weight: list[str] = field(default_factory=list)  # NAME=W budget shares
    fp32_test: bool = False
    seed: int = 0
    images: str | None = None            # default_images_path()


@dataclass
class Table1Result:
    runs: list[ModelRun]
    meta: dict                            # what the report's head says; ``prefix`` included
    files: list[Path]                     # the report files, rewritten after every model
    wall_s: float
    verdict: dict                         # ranking and target (:func:`verdict`)
    markdown: str                         # the report's ``.md`` text


def _prepare(o: Table1Options, command: str, t0: float):
    """Device, recipes, data and the report's meta data of a run, checked before any training."""
    dry = o.dry_run
    dev = torch.device(o.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
        torch.backends.cudnn.benchmark = True
    overrides = list(o.overrides) + (["data.batch_size=2"] if dry else [])
    cfgs = table1_configs(overrides, dry, only=o.models)
    if not cfgs:
        raise UserError(f"no recipe matches --models {o.models}")
    try:
        weights = [share_weight(c.name, o.weight) for c in cfgs]
    except ValueError as err:
        raise UserError(f"--weight: {err}") from None
    n_val = o.val_n or (4 if dry else 1000)
    n_test = o.test_n or (4 if dry else cfgs[0].data.mnist_test)
    eval_batch = o.eval_batch or (4 if dry else 100)
    images = Path(o.images) if o.images else default_images_path()
    data = DeviceMovingMNIST(dev, images, seq_len=cfgs[0].data.in_len + cfgs[0].data.out_len,
                             size=cfgs[0].model.height)
    val, test = data.eval_set("val", n_val), data.eval_set("test", n_test)
    floor = target_entropy(test, cfgs[0].data.in_len, eval_batch)
    param_check = []
    if dry:
        full = table1_configs(o.overrides, False, only=o.models)
        param_check = [{"recipe": c.name, "full_params": full_size_params(c), "paper_params": PAPER_TABLE1[c.name][1]}
                       for c in full]
    meta = {
        "dry_run": dry, "device": str(dev), "torch": torch.__version__, "python": platform.python_version(),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.machine()}, "
                                                                                  f"{torch.get_num_threads()} threads)",
        "budget_s": o.budget_s, "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command,
        "pools": {k: f"{lo}-{hi - 1}" for k, (lo, hi) in POOLS.items()}, "n_val": n_val, "n_test": n_test,
        "images": os.path.relpath(images, RECIPES_DIR.parents[2]), "test_entropy": floor, "overrides": overrides,
        "seed": o.seed, "param_check": param_check, "weights": o.weight, "setup_s": time.perf_counter() - t0,
        "prefix": o.prefix or ("table1-dryrun" if dry else "table1"),
    }
    return dev, cfgs, weights, data, val, test, eval_batch, meta


def run_table1_on_device(o: Table1Options, command: str = "convlstm-dist table1", say=print) -> Table1Result:
    """The six models of Table 1 one after another on ``o.device`` within ``o.budget_s`` seconds (all
    of it: set-up, training, evaluation, reports); the report files under ``o.out`` are rewritten
    after every model. ``command`` is recorded in the report; ``say`` gets the progress lines."""
    t0 = time.perf_counter()
    dev, cfgs, weights, data, val, test, eval_batch, meta = _prepare(o, command, t0)
    say(f"[table1] {len(cfgs)} models on {meta['device_name']}, budget {o.budget_s:.0f} s; data on the device "
        f"(pools {meta['pools']}); {meta['n_val']} val / {meta['n_test']} test sequences; perfect-forecast CE "
        f"{meta['test_entropy']:.2f}; set-up {meta['setup_s']:.1f} s")
    for p in meta["param_check"]:
        say(f"[table1] full-size {p['recipe']}: {p['full_params']:,} parameters (paper {p['paper_params']:,})"
            f"{'' if p['full_params'] == p['paper_params'] else '  MISMATCH'}")
    max_steps = o.max_steps or (2 if o.dry_run else None)
    runs: list[ModelRun] = []
    files: list[Path] = []
    report_reserve = 5.0  # writing the report after the last model
    for i, cfg in enumerate(cfgs):
        left = o.budget_s - (time.perf_counter() - t0) - report_reserve
        slot = left * weights[i] / sum(weights[i:])
        say(f"[table1] ({i + 1}/{len(cfgs)}) {cfg.name}: share {slot:.1f} s")
        runs.append(train_one(cfg, data, val, test, slot, seed=o.seed + i, engine=o.engine, compile=o.compile,
                              max_steps=max_steps, val_points=o.val_points, eval_batch=eval_batch,
                              fp32_test=o.fp32_test, say=say))
        gc.collect()  # the model, its optimizer and CUDA graph are gone: give their memory back
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        meta["wall_s"] = time.perf_counter() - t0
        files = write_report(runs, meta, Path(o.out), meta["prefix"])
    return Table1Result(runs, meta, files, time.perf_counter() - t0, verdict(runs), device_markdown(runs, meta))
