"""Validation: merged metrics and per-lead skill of a model over batches, on every backend.

Every rank scores a disjoint part of the windows (``t0 % world == rank``); the sums are
all-reduced, so every rank sees the same merged metrics (and the same early-stopping decision).
"""

from __future__ import annotations

import numpy as np
import torch

from convlstm_dist.data.quantity import get_quantity
from convlstm_dist.data.samples import to_compute
from convlstm_dist.models import get_loss
from convlstm_dist.train.engine import allreduce
from convlstm_dist.train.metrics import THRESHOLDS_MMH
from convlstm_dist.train.optim import training_loss


class ValAccumulator:
    """Sums for merged validation metrics (model space and mm/h) plus skill contingency counts."""

    def __init__(self, out_len: int, quantity: str, loss_name: str):
        self.q, self.loss_name, self.out_len = get_quantity(quantity), loss_name, out_len
        self.loss = training_loss(loss_name, quantity)
        self.s = {k: 0.0 for k in ("loss", "loss_n", "se", "ae", "bse", "n", "pse", "pae", "bce_sum", "seqs")}
        nt = len(THRESHOLDS_MMH)
        # contingency per lead and threshold: hits, misses, false alarms, correct negatives (model, persistence)
        self.ct = np.zeros((2, out_len, nt, 4), dtype=np.float64)
        self.lead_se = np.zeros((2, out_len), dtype=np.float64)
        self.lead_n = np.zeros(out_len, dtype=np.float64)
        self.by_source: dict[str, "ValAccumulator"] = {}  # per archive of a multi-archive plan (evaluate_val)

    def add(self, raw: torch.Tensor, y_n: torch.Tensor, x_n: torch.Tensor, mask: torch.Tensor) -> None:
        """``raw``: the model output as trained (logits for bce losses), in model space."""
        from convlstm_dist.models.losses import hko7_weights

        valid = mask > 0.5
        vf = valid.float()
        n = float(vf.sum())
        loss = self.loss(raw, y_n, valid)
        self.s["loss"] += float(loss) * max(n, 1.0)
        self.s["loss_n"] += max(n, 1.0)
        logits = self.q.output_is_logits(self.loss_name)
        pred_n = torch.sigmoid(raw) if logits else raw
        if self.q.reports_cross_entropy:
            lg = raw if logits else torch.logit(raw.clamp(1e-6, 1 - 1e-6))
            self.s["bce_sum"] += float(get_loss("bce_sum")(lg, y_n, valid)) * raw.shape[0]
            self.s["seqs"] += raw.shape[0]
        p, o = self.q.from_model(pred_n.float()), self.q.from_model(y_n.float())
        pers = self.q.from_model(x_n[:, -1:].float()).expand_as(o)
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


def evaluate_val(model, batches, cfg, quantity, device, rank, world, amp_dtype,
                 sources: list[str] | None = None) -> ValAccumulator:
    """Metrics over ``batches`` (dicts of tensors on ``device``), merged across ranks; a rank scores
    the windows with ``t0 % world == rank``. With ``sources`` (the names of a multi-archive plan's
    archives, indexed by the rows' ``src``), ``acc.by_source`` holds one more accumulator per archive
    (:func:`source_metrics`)."""
    acc = ValAccumulator(cfg.data.out_len, quantity, cfg.train.loss)
    per = [ValAccumulator(cfg.data.out_len, quantity, cfg.train.loss) for _ in sources or []]
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


SOURCE_KEYS = ("loss", "mse", "mae", "persistence_mse", "csi_0.5mmh", "csi_2mmh", "csi_5mmh", "csi_10mmh",
               "persistence_csi_0.5mmh", "persistence_csi_2mmh", "persistence_csi_5mmh", "persistence_csi_10mmh")


def source_metrics(acc: ValAccumulator) -> dict[str, float]:
    """Per-archive validation metrics of a multi-archive plan, ``val.<archive>.<metric>``; the pooled
    ones stay ``val_<metric>``. Archives without validation windows are left out."""
    out = {}
    for name, a in acc.by_source.items():
        if a.s["n"] <= 0:
            continue
        m = a.metrics()
        out.update({f"val.{name}.{k}": float(m[f"val_{k}"]) for k in SOURCE_KEYS if f"val_{k}" in m})
    return out
