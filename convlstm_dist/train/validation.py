"""Validation: merged metrics and per-lead skill of a model over batches, on every backend.

Every rank scores a disjoint part of the windows (``t0 % world == rank``) on its device; the sums
(one flat tensor) are all-reduced, so every rank sees the same merged metrics (and the same
early-stopping decision). Skill is counted by ``verify.scores.SkillAccumulator``, the accumulator
of ``evaluate``, and named by ``verify.scores.metric_key`` (``val_csi_2mmh``, ``val_persistence_mse``, …).
"""

from __future__ import annotations

import torch

from convlstm_dist.data.quantity import get_quantity
from convlstm_dist.data.samples import to_compute
from convlstm_dist.models import get_loss
from convlstm_dist.train.engine import allreduce
from convlstm_dist.train.optim import training_loss
from convlstm_dist.verify.scores import SkillAccumulator, skill_metrics
from convlstm_dist.vocabulary import REPORT_THRESHOLDS_MMH, SKILL_THRESHOLDS_MMH, VAL_SCOPE, metric_key

_TRAIN_SUMS = ("loss", "loss_n", "bce_sum", "seqs")  # what only training has (model space)
EVAL_BATCH = 64  # windows per batch when validation / test windows are cut from memory


class ValAccumulator:
    """Validation of a model over batches: what only training has (the loss in model space, the
    per-sequence cross-entropy of intensity models) plus, in mm/h, the per-lead skill of the model
    and of persistence, each a :class:`~convlstm_dist.verify.scores.SkillAccumulator` (the one
    accumulator ``evaluate`` uses too). Everything is counted on the device of the batches; one
    all-reduce of one flat tensor merges the ranks (:meth:`merge`)."""

    def __init__(self, out_len: int, quantity: str, loss_name: str, lead_decay: float | None = None,
                 weight_cap: float | None = None):
        self.q, self.loss_name, self.out_len = get_quantity(quantity), loss_name, out_len
        self.loss = training_loss(loss_name, quantity, lead_decay, weight_cap)
        self.sums: torch.Tensor | None = None  # float64 on the device: _TRAIN_SUMS
        self.model = SkillAccumulator(SKILL_THRESHOLDS_MMH, out_len)
        self.persistence = SkillAccumulator(SKILL_THRESHOLDS_MMH, out_len)
        self.by_source: dict[str, "ValAccumulator"] = {}  # per archive of a multi-archive plan (evaluate_val)

    @property
    def host_sums(self) -> dict[str, float]:
        """The training-only sums and the pixel count, as floats (host)."""
        sums = self.sums.tolist() if self.sums is not None else [0.0] * len(_TRAIN_SUMS)
        return {**dict(zip(_TRAIN_SUMS, sums)), "n": float(self.model.to_state()["n"].sum())}

    def add(self, raw: torch.Tensor, y_n: torch.Tensor, x_n: torch.Tensor, mask: torch.Tensor) -> None:
        """``raw``: the model output as trained (logits for bce losses), in model space."""
        valid = mask > 0.5
        n = valid.sum().double().clamp(min=1.0)
        loss = self.loss(raw, y_n, valid).detach().double()
        bce = torch.zeros((), dtype=torch.float64, device=raw.device)
        seqs = 0.0
        logits = self.q.output_is_logits(self.loss_name)
        pred_n = torch.sigmoid(raw) if logits else raw
        if self.q.reports_cross_entropy:
            lg = raw if logits else torch.logit(raw.clamp(1e-6, 1 - 1e-6))
            bce = get_loss("bce_sum")(lg, y_n, valid).detach().double() * raw.shape[0]
            seqs = float(raw.shape[0])
        step = torch.stack([loss * n, n, bce, torch.full_like(n, seqs)])
        self.sums = step if self.sums is None else self.sums + step
        pred, obs = self.q.from_model(pred_n.float()), self.q.from_model(y_n.float())
        pers = self.q.from_model(x_n[:, -1:].float()).expand_as(obs)
        self.model.accumulate(pred, obs, valid)
        self.persistence.accumulate(pers, obs, valid)

    def merge(self, device: torch.device) -> None:
        """Sum every rank's counts (one all-reduce; every rank calls it, with or without batches)."""
        sums = self.sums if self.sums is not None else torch.zeros(len(_TRAIN_SUMS), dtype=torch.float64)
        flat = torch.cat([sums.to(device), self.model.flat(device), self.persistence.flat(device)])
        flat = allreduce(flat).cpu()
        k, m = len(_TRAIN_SUMS), self.model.flat_size
        self.sums = flat[:k]
        self.model.load_flat(flat[k:k + m])
        self.persistence.load_flat(flat[k + m:])

    def metrics(self, scope: str = VAL_SCOPE) -> dict[str, float]:
        """``<scope>_loss`` (and ``<scope>_cross_entropy`` of intensity models), then the lead-pooled
        skill of the model and of persistence (``verify.scores.skill_metrics``)."""
        sums = self.host_sums
        out = {metric_key("loss", scope=scope): sums["loss"] / max(sums["loss_n"], 1.0)}
        out.update(skill_metrics(self.model.compute(), scope))
        out.update(skill_metrics(self.persistence.compute(), scope, "persistence"))
        if sums["seqs"]:
            out[metric_key("cross_entropy", scope=scope)] = sums["bce_sum"] / sums["seqs"]
        return out

    def lead_table(self) -> list[dict]:
        """Per-lead skill rows (``SkillAccumulator.compute`` rows with ``method`` ``model`` or
        ``persistence`` and ``lead`` 1, 2, …): the checkpoint's ``lead_table``, ``skill.csv``."""
        return [{"method": method, "lead": r["lead_index"] + 1, **r}
                for method, acc in (("model", self.model), ("persistence", self.persistence))
                for r in acc.compute()]


def evaluate_val(model, batches, cfg, quantity, device, rank, world, amp_dtype,
                 sources: list[str] | None = None) -> ValAccumulator:
    """Metrics over ``batches`` (dicts of tensors on ``device``), merged across ranks; a rank scores
    the windows with ``t0 % world == rank``. With ``sources`` (the names of a multi-archive plan's
    archives, indexed by the rows' ``src``), ``acc.by_source`` holds one more accumulator per archive
    (:func:`source_metrics`)."""
    t = cfg.train
    acc = ValAccumulator(cfg.data.out_len, quantity, t.loss, t.lead_decay, t.loss_weight_cap)
    per = [ValAccumulator(cfg.data.out_len, quantity, t.loss, t.lead_decay, t.loss_weight_cap) for _ in sources or []]
    model.eval()
    with torch.no_grad():
        for batch in batches:
            keep = (batch["t0"] % world) == rank
            if not bool(keep.any()):
                continue
            x, y, m = to_compute(batch["x"][keep], batch["y"][keep], batch["mask"][keep])
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pred, _ = model(x, cfg.data.out_len)
            pred = pred.float()
            acc.add(pred, y, x, m)
            if per and "src" in batch:
                src = batch["src"][keep]
                for i in torch.unique(src).tolist():
                    sel = src == i
                    per[int(i)].add(pred[sel], y[sel], x[sel], m[sel])
    acc.merge(device)
    for p in per:  # the same number of merges on every rank
        p.merge(device)
    acc.by_source = dict(zip(sources or [], per))
    model.train()
    return acc


SOURCE_KEYS = ("loss", "mse", "mae", metric_key("mse", method="persistence"),
               *(metric_key("csi", t) for t in REPORT_THRESHOLDS_MMH),
               *(metric_key("csi", t, "persistence") for t in REPORT_THRESHOLDS_MMH))


def source_metrics(acc: ValAccumulator) -> dict[str, float]:
    """Per-archive validation metrics of a multi-archive plan, ``val.<archive>.<metric>``; the pooled
    ones stay ``val_<metric>``. Archives without validation windows are left out."""
    out = {}
    for name, a in acc.by_source.items():
        if a.host_sums["n"] <= 0:
            continue
        m = a.metrics()
        out.update({f"{VAL_SCOPE}.{name}.{k}": float(m[metric_key(k, scope=VAL_SCOPE)]) for k in SOURCE_KEYS
                    if metric_key(k, scope=VAL_SCOPE) in m})
    return out
