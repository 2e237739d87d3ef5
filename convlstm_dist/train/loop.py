"""The per-worker training loop (runs inside Ray Train workers).

Contract with the driver (``train_loop_config``): ``cfg`` (resolved config dict), ``variable``
(archive variable), ``clock`` (name of the epoch-clock actor), ``tracking_uri`` and ``run_id``
(MLflow; rank 0 logs), ``experiment``.

* Every rank calls ``ray.train.report`` once per epoch; rank 0 attaches the checkpoint.
* Checkpoints are taken at epoch ends and hold everything needed to continue (see
  ``convlstm_dist.checkpoint``); the data position is the next epoch.
* Validation runs on every rank over disjoint windows (``t0 % world == rank``); sums are
  all-reduced so every rank sees the same merged metrics (and stops early together).
* A NaN/inf training loss stops every rank together; the last good checkpoint stays the best one.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.config import build_model_from_config, config_from_dict
from convlstm_dist.data.samples import to_compute
from convlstm_dist.data.transforms import from_model, model_quantity
from convlstm_dist.models import get_loss
from convlstm_dist.train.engine import StepEngine, allreduce, choose_engine
from convlstm_dist.train.metrics import THRESHOLDS_MMH  # noqa: F401 - also imported from here
from convlstm_dist.train.state import TrainState


def make_optimizer(t, params, capturable_on: torch.device | None = None):
    """The recipe's optimizer. ``capturable_on`` (a CUDA device): built for CUDA-graph capture, with
    the learning rate as a device tensor so that schedulers still act inside the graph (not SGD)."""
    if t.optimizer == "sgd":
        if capturable_on is not None:
            raise ValueError("sgd cannot be captured in a CUDA graph")
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    graph = {} if capturable_on is None else {"capturable": True}
    lr = t.lr if capturable_on is None else torch.tensor(t.lr, device=capturable_on)
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=t.rmsprop_decay, weight_decay=t.weight_decay, **graph)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=t.weight_decay, **graph)


def make_scheduler(t, opt):
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs)
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, t.epochs // 3), gamma=0.3)
    return None


def loss_kwargs(name: str, quantity: str) -> dict:
    if name in ("bmse", "bmae") and quantity == "rain_norm":
        return {"to_mmh": lambda t: from_model(t, quantity)}
    return {}


class TimedBatches:
    """Iterate training batches as ``(x, y, mask)``, summing the time spent waiting for them (``.wait``, s)."""

    def __init__(self, batches):
        self.it, self.wait = iter(batches), 0.0

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            batch = next(self.it, None)
            self.wait += time.perf_counter() - t0
            if batch is None:
                return
            yield to_compute(batch["x"], batch["y"], batch["mask"])


def training_loss(name: str, quantity: str):
    """``loss(pred, target, mask)`` of the recipe, with its quantity-dependent arguments bound."""
    fn, kw = get_loss(name), loss_kwargs(name, quantity)
    return lambda pred, target, mask=None: fn(pred, target, mask, **kw)


def fault_nan_at() -> list[int] | None:
    """``CONVLSTM_DIST_FAULT_NAN_AT=EPOCH:BATCH`` makes the loss NaN at that batch of that epoch
    (0-based; fault injection for tests of the NaN guard)."""
    v = os.environ.get("CONVLSTM_DIST_FAULT_NAN_AT")
    return [int(p) for p in v.split(":")] if v else None


def load_resumed_weights(model: torch.nn.Module, weights: dict, run: str, where: str) -> None:
    """Load a run's own checkpoint to resume it; a recipe whose model changed since (same run name,
    other ``model.*``) is one clear ``UserError`` instead of a ``load_state_dict`` traceback."""
    from convlstm_dist.errors import UserError

    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise UserError(f"run {run!r} cannot resume: its checkpoint ({where}) holds a model of another architecture "
                        f"than the recipe's ({detail[:160]}); train under a new run.name, or delete that run's "
                        "checkpoints to start over") from None


class ValAccumulator:
    """Sums for merged validation metrics (model space and mm/h) plus skill contingency counts."""

    def __init__(self, out_len: int, quantity: str, loss_name: str):
        self.q, self.loss_name, self.out_len = quantity, loss_name, out_len
        self.loss = training_loss(loss_name, quantity)
        self.s = {k: 0.0 for k in ("loss", "loss_n", "se", "ae", "bse", "n", "pse", "pae", "bce_sum", "seqs")}
        nt = len(THRESHOLDS_MMH)
        # contingency per lead and threshold: hits, misses, false alarms, correct negatives (model, persistence)
        self.ct = np.zeros((2, out_len, nt, 4), dtype=np.float64)
        self.lead_se = np.zeros((2, out_len), dtype=np.float64)
        self.lead_n = np.zeros(out_len, dtype=np.float64)

    def add(self, raw: torch.Tensor, y_n: torch.Tensor, x_n: torch.Tensor, mask: torch.Tensor) -> None:
        """``raw``: the model output as trained (logits for bce losses), in model space."""
        from convlstm_dist.models.losses import hko7_weights

        valid = mask > 0.5
        vf = valid.float()
        n = float(vf.sum())
        loss = self.loss(raw, y_n, valid)
        self.s["loss"] += float(loss) * max(n, 1.0)
        self.s["loss_n"] += max(n, 1.0)
        logits = self.loss_name in ("bce", "bce_sum")
        pred_n = torch.sigmoid(raw) if logits else raw
        if self.q == "intensity":
            lg = raw if logits else torch.logit(raw.clamp(1e-6, 1 - 1e-6))
            self.s["bce_sum"] += float(get_loss("bce_sum")(lg, y_n, valid)) * raw.shape[0]
            self.s["seqs"] += raw.shape[0]
        p, o = from_model(pred_n.float(), self.q), from_model(y_n.float(), self.q)
        pers = from_model(x_n[:, -1:].float(), self.q).expand_as(o)
        zero = torch.zeros((), dtype=p.dtype, device=p.device)
        err = torch.where(valid, p - o, zero)
        perr = torch.where(valid, pers - o, zero)
        w = hko7_weights(torch.where(valid, o, zero))
        self.s["se"] += float((err ** 2).sum())
        self.s["ae"] += float(err.abs().sum())
        self.s["bse"] += float((w * err ** 2 * vf).sum())
        self.s["pse"] += float((perr ** 2).sum())
        self.s["pae"] += float(perr.abs().sum())
        self.s["n"] += n
        dims = (0, 2, 3, 4)
        self.lead_se[0] += (err ** 2).sum(dim=dims).double().cpu().numpy()
        self.lead_se[1] += (perr ** 2).sum(dim=dims).double().cpu().numpy()
        self.lead_n += vf.sum(dim=dims).double().cpu().numpy()
        for m, f in enumerate((p, pers)):
            for j, thr in enumerate(THRESHOLDS_MMH):
                fy, oy = (f >= thr) & valid, (o >= thr) & valid
                fn, on = (f < thr) & valid, (o < thr) & valid
                for k, c in enumerate(((fy & oy), (fn & oy), (fy & on), (fn & on))):
                    self.ct[m, :, j, k] += c.sum(dim=dims).double().cpu().numpy()

    def merge(self, device: torch.device) -> None:
        keys = list(self.s)
        flat = np.concatenate([[self.s[k] for k in keys], self.ct.ravel(), self.lead_se.ravel(), self.lead_n])
        t = allreduce(torch.tensor(flat, dtype=torch.float64, device=device)).cpu().numpy()
        self.s = dict(zip(keys, t[:len(keys)].tolist()))
        o = len(keys)
        self.ct = t[o:o + self.ct.size].reshape(self.ct.shape)
        o += self.ct.size
        self.lead_se = t[o:o + self.lead_se.size].reshape(self.lead_se.shape)
        self.lead_n = t[o + self.lead_se.size:]

    def metrics(self) -> dict[str, float]:
        s, n = self.s, max(self.s["n"], 1.0)
        out = {
            "val_loss": s["loss"] / max(s["loss_n"], 1.0),
            "val_mse": s["se"] / n, "val_mae": s["ae"] / n, "val_bmse": s["bse"] / n,
            "val_persistence_mse": s["pse"] / n, "val_persistence_mae": s["pae"] / n,
        }
        if s["seqs"]:
            out["val_cross_entropy"] = s["bce_sum"] / s["seqs"]
        for j, thr in enumerate(THRESHOLDS_MMH):
            for m, tag in enumerate(("", "persistence_")):
                h, mi, fa, cn = (self.ct[m, :, j, k].sum() for k in range(4))
                csi = h / (h + mi + fa) if h + mi + fa > 0 else float("nan")
                if m == 0:
                    out[f"val_pod_{thr:g}mmh"] = h / (h + mi) if h + mi > 0 else float("nan")
                    out[f"val_far_{thr:g}mmh"] = fa / (h + fa) if h + fa > 0 else float("nan")
                out[f"val_{tag}csi_{thr:g}mmh"] = csi
        return out

    def lead_table(self) -> list[dict]:
        rows = []
        for m, method in enumerate(("model", "persistence")):
            for lead in range(self.out_len):
                for j, thr in enumerate(THRESHOLDS_MMH):
                    h, mi, fa, cn = self.ct[m, lead, j]
                    tot = h + mi + fa + cn
                    exp = ((h + mi) * (h + fa) + (cn + mi) * (cn + fa)) / tot if tot else float("nan")
                    rows.append({
                        "method": method, "lead": lead + 1, "threshold_mmh": thr,
                        "csi": h / (h + mi + fa) if h + mi + fa else float("nan"),
                        "pod": h / (h + mi) if h + mi else float("nan"),
                        "far": fa / (h + fa) if h + fa else float("nan"),
                        "hss": (h + cn - exp) / (tot - exp) if tot and tot != exp else float("nan"),
                        "mse": self.lead_se[m, lead] / max(self.lead_n[lead], 1.0),
                    })
        return rows


def evaluate_val(model, batches, cfg, quantity, device, rank, world, amp_dtype) -> ValAccumulator:
    """Metrics over ``batches`` (dicts of tensors on ``device``), merged across ranks; a rank scores
    the windows with ``t0 % world == rank``."""
    acc = ValAccumulator(cfg.data.out_len, quantity, cfg.train.loss)
    model.eval()
    with torch.no_grad():
        for batch in batches:
            keep = (batch["t0"] % world) == rank
            if not bool(keep.any()):
                continue
            x, y, m = to_compute(batch["x"][keep], batch["y"][keep], batch["mask"][keep])
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred, _ = model(x, cfg.data.out_len)
            acc.add(pred.float(), y, x, m)
    acc.merge(device)
    model.train()
    return acc


def poison(x: torch.Tensor) -> torch.Tensor:
    """Fault injection (``CONVLSTM_DIST_FAULT_NAN_AT``): a batch whose loss is NaN in every engine
    mode, CUDA graph included (the graph copies the batch in, so the NaN travels through it)."""
    return x * float("nan")


def epoch_line(m: dict, epochs: int, eta_s: float | None = None) -> str:
    """The one progress line of an epoch (both backends print it)."""
    extra = (f"cross-entropy {m['val_cross_entropy']:.1f}" if "val_cross_entropy" in m else
             f"val_mse {m['val_mse']:.4f} (persistence {m['val_persistence_mse']:.4f})")
    eta = f"  ETA {eta_s:.0f} s" if eta_s is not None else ""
    return (f"[epoch {m['epoch']}/{epochs}] step {m['step']}  train_loss {m['train_loss']:.5f}  "
            f"val_loss {m['val_loss']:.5f}  {extra}  {m['samples_per_s']:.1f} samples/s  "
            f"data wait {100 * m['data_wait_share']:.0f}%  {m['epoch_time_s']:.1f} s{eta}")


def logged_epochs(tracker) -> set[int]:
    """The epochs whose metrics this MLflow run already has."""
    return {int(s) for s, _ in tracker.metric_history("val_loss")}


def log_missed_epoch(tracker, state: TrainState) -> set[int]:
    """On resume: if the checkpoint's epoch E never reached MLflow (a crash between the two), log
    it now from the checkpoint, so that every epoch is in MLflow exactly once. Returns the epochs
    MLflow has."""
    logged = logged_epochs(tracker)
    last = state.extra.get("last_metrics")
    if last and state.epoch not in logged:
        tracker.log_metrics(last, step=state.epoch)
        logged.add(state.epoch)
    return logged


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config["cfg"], "driver")
    ray.data.DataContext.get_current().enable_progress_bars = False
    import logging

    for name in ("ray.train", "ray.data"):  # per-report INFO lines drown the epoch summaries
        logging.getLogger(name).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    quantity = model_quantity(config["variable"])
    torch.manual_seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    torch.set_num_threads(max(1, int(os.environ.get("CONVLSTM_THREADS", "1"))))
    clock = ray.get_actor(config["clock"]) if config.get("clock") else None
    say = (lambda msg: ray.get(clock.note_line.remote(msg))) if (clock is not None and rank == 0) else (
        lambda msg: None)

    choice = choose_engine(cfg, device, world)
    mode, amp_dtype = choice.mode, choice.amp_dtype
    model = build_model_from_config(cfg, compile=mode in ("compiled", "graph"), channels_last=choice.channels_last)
    ckpt = ray.train.get_checkpoint()
    payload = None
    if ckpt is not None:
        from convlstm_dist.checkpoint import read_checkpoint

        with ckpt.as_directory() as d:
            payload = read_checkpoint(d)
        load_resumed_weights(model, payload["model"], ctx.get_experiment_name(), ckpt.path)
    model.to(device)
    ddp = ray.train.torch.prepare_model(model)
    opt = make_optimizer(cfg.train, model.parameters(), device if mode == "graph" else None)
    sched = make_scheduler(cfg.train, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=choice.precision == "fp16")
    state = TrainState(run_id=config.get("run_id"))
    if payload is not None:
        state = TrainState.restore(payload["train"], opt, sched, scaler, device, rng=rank == 0)
        state.run_id = config.get("run_id") or state.run_id
    step_loss = training_loss(cfg.train.loss, quantity)
    engine = StepEngine(model, ddp, opt, scaler, step_loss, cfg.data.out_len, amp_dtype, cfg.train.grad_clip,
                        mode, device, say=say)
    say(choice.line(device))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    tracker = None
    if rank == 0 and config.get("run_id"):
        from convlstm_dist.tracking.mlflow_tracker import Tracker

        tracker = Tracker(config["tracking_uri"], config["run_id"])
    logged: set[int] = set()
    if tracker:
        logged = log_missed_epoch(tracker, state) if payload is not None else logged_epochs(tracker)
    fault = config.get("fault_nan_at")
    t_run, epochs_done = time.perf_counter(), 0

    for epoch in range(state.epoch, cfg.train.epochs):
        if clock is not None:
            ray.get(clock.set.remote(epoch))
        t_epoch = time.perf_counter()
        sum_loss = torch.zeros((), device=device)
        n_batches, n_samples, nan_step = 0, 0, None
        engine.reset_guard(state.step)
        batches = TimedBatches(train_shard.iter_torch_batches(
            batch_size=cfg.data.batch_size, device=device, drop_last=False, prefetch_batches=2,
            pin_memory=device.type == "cuda"))
        for x, y, m in batches:
            if fault == [epoch, n_batches]:
                x = poison(x)
            sum_loss += engine.step(x, y, m)
            n_batches += 1
            n_samples += x.shape[0]
            state.step += 1
            if engine.check_due() and (nan_step := engine.check()) is not None:  # same batch count on every rank
                break
            if cfg.train.max_steps_per_epoch and n_batches >= cfg.train.max_steps_per_epoch:
                break
        if nan_step is None:
            nan_step = engine.check()
        if nan_step is not None:
            msg = f"non-finite training loss at epoch {epoch} step {nan_step}; stopped, last good checkpoint kept"
            if rank == 0:
                if tracker:
                    tracker.set_tags({"convlstm_dist.stopped": msg})
                if clock is not None:
                    ray.get(clock.note_stop.remote(msg))
            ray.train.report({"epoch": epoch, "nan_stop": 1.0, "nan_epoch": epoch, "nan_step": nan_step})
            return
        if sched is not None:
            sched.step()
        train_time = time.perf_counter() - t_epoch
        tot = allreduce(torch.cat([sum_loss.double().reshape(1),
                                   torch.tensor([n_batches, n_samples], dtype=torch.float64, device=device)]))
        acc = evaluate_val(model, val_shard.iter_torch_batches(batch_size=cfg.data.batch_size, device=device),
                           cfg, quantity, device, rank, world, amp_dtype)
        metrics = {
            "epoch": epoch + 1, "step": state.step,
            "train_loss": float(tot[0] / max(float(tot[1]), 1.0)),
            "samples_per_s": float(tot[2]) / max(train_time, 1e-9),
            "data_wait_share": batches.wait / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - t_epoch,
            "lr": float(opt.param_groups[0]["lr"]),
            **{k: float(v) for k, v in acc.metrics().items()},
        }
        improved = metrics["val_loss"] < state.best
        state.best, state.since_best = (metrics["val_loss"], 0) if improved else (state.best, state.since_best + 1)
        stop = bool(cfg.train.early_stopping_patience and state.since_best >= cfg.train.early_stopping_patience)
        metrics["early_stop"] = float(stop)
        state.epoch = epoch + 1
        state.history.append({k: metrics[k] for k in ("epoch", "step", "train_loss", "val_loss")})
        state.extra.update(lead_table=acc.lead_table(), variable=config["variable"], engine=engine.mode,
                           last_metrics=metrics)
        if rank == 0:
            # Logged before the report: a trial that Tune stops at this report never returns from
            # it. An epoch a restarted worker group redoes (its checkpoint was not persisted) is
            # not logged a second time: `logged` holds what MLflow already has.
            if tracker and epoch + 1 not in logged:
                tracker.log_metrics(metrics, step=epoch + 1)
                logged.add(epoch + 1)
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(d, model, config["cfg"], quantity, state.capture(opt, sched, scaler))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        epochs_done += 1
        per_epoch = (time.perf_counter() - t_run) / epochs_done
        say(epoch_line(metrics, cfg.train.epochs, per_epoch * (cfg.train.epochs - epoch - 1)))
        if stop:
            say(f"[convlstm-dist] early stop: no validation improvement for {state.since_best} epochs")
            break
