"""GPU checks of single-process training: the CUDA-graph step with mask, clipping and a tensor
learning rate matches eager steps; ``train_local`` on CUDA trains through the graph."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from convlstm_dist.train.graph_step import CudaGraphTrainStep
from convlstm_dist.models import build_model, get_loss
from convlstm_dist.train.optim import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/synthetic.py (run with --noconftest)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
KW = dict(in_channels=1, hidden=[16, 8], input_kernel=[5, 3], state_kernel=[3, 3], patch=2, height=16, width=16)


def test_graph_step_with_mask_clip_and_scheduled_lr_matches_eager():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    eager = build_model("convlstm", **KW).cuda()
    graphed = build_model("convlstm", **KW).cuda()
    graphed.load_state_dict(eager.state_dict())
    x = torch.rand(4, 3, 1, 16, 16, device="cuda")
    y = torch.rand(4, 4, 1, 16, 16, device="cuda")
    m = torch.rand(4, 4, 1, 16, 16, device="cuda") > 0.3
    t = SimpleNamespace(optimizer="adam", lr=1e-2, weight_decay=0.0, rmsprop_decay=0.9)
    opt_e = make_optimizer(t, eager.parameters())
    opt_g = make_optimizer(t, graphed.parameters(), torch.device("cuda"))
    sched_e = torch.optim.lr_scheduler.StepLR(opt_e, 1, gamma=0.5)
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, 1, gamma=0.5)
    loss_fn = get_loss("mse")
    step = CudaGraphTrainStep(graphed, loss_fn, opt_g, x, y, mask=m, grad_clip=0.05)
    for _ in range(3):
        opt_e.zero_grad()
        loss_e = loss_fn(eager(x, 4)[0], y, m)
        loss_e.backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 0.05)
        opt_e.step()
        sched_e.step()
        loss_g = step.step(x, y, m)
        sched_g.step()  # the graph reads the lr tensor the scheduler fills
        torch.testing.assert_close(loss_g, loss_e.detach(), rtol=1e-4, atol=1e-6)
    for (n, pe), (_, pg) in zip(eager.named_parameters(), graphed.named_parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-3, atol=1e-5, msg=n)


def test_train_local_on_cuda_trains_through_the_graph(tmp_path):
    from synthetic import make_archive

    from convlstm_dist.checkpoint import load_model
    from convlstm_dist.config import load_config
    from convlstm_dist.train.local import train_local

    make_archive(tmp_path / "a.zarr", n=60, h=32, w=32)
    recipe = Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"
    cfg = load_config(recipe, [f"data.archive={tmp_path / 'a.zarr'}", "model.height=32", "model.width=32",
                               "data.split.block_hours=1.0", "train.epochs=3", "tracking.enabled=false"])
    out = train_local(cfg, tmp_path, device="cuda", progress=False)
    assert out.graph is True
    assert len(out.history) == 3 and all(math.isfinite(h["train_loss"]) for h in out.history)
    assert out.history[-1]["train_loss"] < out.history[0]["train_loss"]
    model, _, _ = load_model(out.checkpoint, "cuda")
    assert next(model.parameters()).is_cuda


def test_graph_resume_keeps_the_lr_tensor_on_the_gpu_and_the_schedule_acting(tmp_path):
    """Kill after epoch 2 of 4 (cosine schedule, graph mode), rerun: the restored capturable
    optimizer's lr is a CUDA tensor and the schedule keeps lowering it; the losses match an
    uninterrupted run; the NaN guard fires through the graph (poisoned batch)."""
    from synthetic import make_archive

    import convlstm_dist.train.local as local
    from convlstm_dist.config import load_config

    make_archive(tmp_path / "a.zarr", n=60, h=32, w=32)
    recipe = Path(__file__).resolve().parents[2] / "pipelines" / "radar_smoke.yaml"

    def cfg(*extra):
        return load_config(recipe, [f"data.archive={tmp_path / 'a.zarr'}", "model.height=32", "model.width=32",
                                    "data.split.block_hours=1.0", "train.epochs=4", "train.schedule=cosine",
                                    "train.engine=graph", "tracking.enabled=false", *extra])

    four = local.train_local(cfg(), tmp_path / "a", device="cuda", progress=False)
    real = local.epoch_line

    class Killed(Exception):
        pass

    def kill(m, *a, **k):
        if m["epoch"] == 2:
            raise Killed
        return real(m, *a, **k)

    local.epoch_line = kill
    try:
        with pytest.raises(Killed):
            local.train_local(cfg(), tmp_path / "b", device="cuda", progress=False)
    finally:
        local.epoch_line = real
    resumed = local.train_local(cfg(), tmp_path / "b", device="cuda", progress=False)
    assert resumed.engine == "graph" and resumed.graph is True
    lrs = [h["lr"] for h in resumed.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < lrs[1]
    for a, b in zip(four.history, resumed.history):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
    import os

    os.environ["CONVLSTM_DIST_FAULT_NAN_AT"] = "1:1"
    try:
        out = local.train_local(cfg(), tmp_path / "c", device="cuda", progress=False)
    finally:
        del os.environ["CONVLSTM_DIST_FAULT_NAN_AT"]
    assert out.engine == "graph" and out.stopped and "epoch 1 step" in out.stopped
