"""The training engine contract, on the CPU: one step engine and one TrainState for both backends.

* a run of 2 epochs plus a resume for 2 more equals a 4-epoch run (same losses, same weights);
* the NaN guard is a device-side flag, fires at the right step, and the fault injection (a
  poisoned batch) works the same in every mode;
* engine modes resolve as documented, and a failed CUDA-graph capture keeps the same optimizer
  state (simulated on the CPU: the capture raises).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlstm_dist.checkpoint import read_checkpoint
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.train.engine import StepEngine, resolve_mode
from convlstm_dist.train.local import train_local
from convlstm_dist.train.optim import make_optimizer, make_scheduler, training_loss
from convlstm_dist.train.state import TrainState
from test_train_local import archive, cfg_for  # noqa: F401 - the module's archive fixture


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["none", "cosine"])
def test_two_plus_two_epochs_equal_four(archive, tmp_path, monkeypatch, schedule):  # noqa: F811
    """A 4-epoch run killed after epoch 2 and rerun equals an uninterrupted 4-epoch run; with a
    constant learning rate, a 2-epoch recipe extended to 4 does too."""
    import convlstm_dist.train.fit as local  # the loop both backends run

    sets = ["train.epochs=4", f"train.schedule={schedule}", "train.optimizer=adam"]
    four = train_local(cfg_for(archive, *sets), tmp_path / "a", device="cpu", progress=False)
    real_line = local.epoch_line

    def kill_after_two(m, *a, **k):
        if m["epoch"] == 2:
            raise Killed  # after epoch 2's checkpoint, like a SIGKILL before epoch 3
        return real_line(m, *a, **k)

    monkeypatch.setattr(local, "epoch_line", kill_after_two)
    with pytest.raises(Killed):
        train_local(cfg_for(archive, *sets), tmp_path / "b", device="cpu", progress=False)
    monkeypatch.setattr(local, "epoch_line", real_line)
    resumed = train_local(cfg_for(archive, *sets), tmp_path / "b", device="cpu", progress=False)
    runs = [four]
    if schedule == "none":
        train_local(cfg_for(archive, "train.epochs=2", "train.optimizer=adam"), tmp_path / "c", device="cpu",
                    progress=False)
        runs.append(train_local(cfg_for(archive, *sets), tmp_path / "c", device="cpu", progress=False))
    runs.append(resumed)
    rows = [[(h["epoch"], h["step"], h["train_loss"], h["val_loss"], h["lr"]) for h in r.history] for r in runs]
    for other in rows[1:]:
        assert [r[:2] for r in other] == [r[:2] for r in rows[0]] == [(1, 3), (2, 6), (3, 9), (4, 12)]
        np.testing.assert_allclose([r[2:] for r in other], [r[2:] for r in rows[0]], rtol=1e-5, atol=1e-7)
    wa = read_checkpoint(tmp_path / "a" / "local" / "radar-smoke" / "latest")
    wb = read_checkpoint(tmp_path / "b" / "local" / "radar-smoke" / "latest")
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=1e-5, atol=1e-6)
    assert wb["train"]["engine"] == "eager" and wb["train"]["rng"]["numpy"]["keys"]


@pytest.mark.parametrize("fault_at, expect", [((1, 2), 5), (None, None)])
def test_nan_guard_flags_on_device_and_reports_the_step(fault_at, expect):
    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             "model.height=16", "model.width=16", "data.in_len=2", "data.out_len=2"])
    model = build_model_from_config(cfg)
    opt = make_optimizer(cfg.train, model.parameters())
    engine = StepEngine(model, model, opt, torch.amp.GradScaler("cuda", enabled=False),
                        training_loss("mse", "rain_norm"), 2, None, 1.0, "eager", torch.device("cpu"))
    x, y = torch.rand(2, 2, 1, 16, 16), torch.rand(2, 2, 1, 16, 16)
    m = torch.ones_like(y, dtype=torch.bool)
    step = 0
    for epoch in range(2):
        engine.reset_guard(step)
        for b in range(3):
            xb = x * float("nan") if fault_at == (epoch, b) else x
            loss = engine.step(xb, y, m)
            assert loss.device.type == "cpu" and loss.dim() == 0     # a device tensor, no host read
            step += 1
        if epoch == 0:
            assert engine.check() is None
    assert engine.check() == expect   # epoch 1, batch 2 = global step 5


def test_modes_resolve_as_documented():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    kw = dict(impl="fast", optimizer="adam", precision="bf16", world=1)
    assert resolve_mode("auto", cpu, **kw) == ("eager", None)
    assert resolve_mode("auto", cuda, **kw) == ("graph", None)
    # several DDP workers: auto stays compiled until measured; graph on request (two graphs around one
    # flat all-reduce, tests/unit/test_flat_grads.py)
    assert resolve_mode("auto", cuda, **{**kw, "world": 2}) == ("compiled", None)
    assert resolve_mode("graph", cuda, **{**kw, "world": 2}) == ("graph", None)
    assert resolve_mode("graph", cuda, **{**kw, "world": 2, "precision": "fp16"})[0] == "compiled"
    mode, why = resolve_mode("graph", cuda, **{**kw, "optimizer": "sgd"})
    assert mode == "compiled" and "SGD" in why
    mode, why = resolve_mode("graph", cpu, **kw)
    assert mode == "eager" and "CUDA" in why
    assert resolve_mode("compiled", cpu, **kw)[0] == "eager"


def test_failed_capture_keeps_the_same_optimizer_state(monkeypatch):
    import convlstm_dist.train.graph_step as fast

    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             "model.height=16", "model.width=16", "data.in_len=2", "data.out_len=2"])
    model = build_model_from_config(cfg)
    opt = make_optimizer(cfg.train, model.parameters())
    said = []
    engine = StepEngine(model, model, opt, torch.amp.GradScaler("cuda", enabled=False),
                        training_loss("mse", "rain_norm"), 2, None, 1.0, "graph", torch.device("cpu"), say=said.append)
    x, y = torch.rand(2, 2, 1, 16, 16), torch.rand(2, 2, 1, 16, 16)
    m = torch.ones_like(y, dtype=torch.bool)
    engine.mode = "eager"
    engine.step(x, y, m)                       # some optimizer state exists before the capture attempt
    engine.mode = "graph"
    before_opt = {k: v.clone() for k, v in opt.state[next(iter(opt.state))].items()}
    before_w = {k: v.clone() for k, v in model.state_dict().items()}

    class Boom:
        def __init__(self, model, *a, **k):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)                # a capture that fails half-way, after touching weights
            raise RuntimeError("capture not supported")

    monkeypatch.setattr(fast, "CudaGraphTrainStep", Boom)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    assert engine.capture(x, y, m) is False
    assert engine.mode == "eager" and engine.opt is opt and len(said) == 1 and "same optimizer state" in said[0]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before_w[k])
    for k, v in opt.state[next(iter(opt.state))].items():
        torch.testing.assert_close(v, before_opt[k])


def test_trainstate_round_trip_and_lr_tensor_on_the_device():
    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             "model.height=16", "model.width=16", "train.schedule=cosine"])
    model = build_model_from_config(cfg)
    opt = make_optimizer(cfg.train, model.parameters())
    sched = make_scheduler(cfg.train, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    opt.step()
    sched.step()
    st = TrainState(epoch=3, step=42, best=0.5, since_best=1, history=[{"epoch": 3}], run_id="r1",
                    extra={"variable": "rain_mmh"})
    saved = st.capture(opt, sched, scaler)
    opt2 = make_optimizer(cfg.train, model.parameters())
    sched2 = make_scheduler(cfg.train, opt2)
    back = TrainState.restore(saved, opt2, sched2, scaler, torch.device("cpu"))
    assert (back.epoch, back.step, back.best, back.since_best, back.run_id) == (3, 42, 0.5, 1, "r1")
    assert back.extra["variable"] == "rain_mmh" and sched2.last_epoch == sched.last_epoch
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
