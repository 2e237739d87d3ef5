"""Motion estimation, advection and the Lagrangian encoder–forecaster (model.frame: lagrangian)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlstm_dist.config import load_config
from convlstm_dist.errors import UserError
from convlstm_dist.models import build_model
from convlstm_dist.models.lagrangian import LagrangianForecaster
from convlstm_dist.models.motion import advect, estimate_motion

ARCH = dict(in_channels=1, hidden=[8, 8], input_kernel=[3, 3], state_kernel=[3, 3], patch=2, height=64, width=64)


def blobs(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth non-negative rain-like field (H, W) with dry areas."""
    g = torch.Generator().manual_seed(seed)
    f = F.avg_pool2d(torch.rand(1, 1, h, w, generator=g), 9, 1, 4)[0, 0]
    return (f - f.mean()).clamp_min(0) * 10


def moving(field: torch.Tensor, v: tuple[float, float], steps: int, margin: int) -> torch.Tensor:
    """(1, steps, H-2m, W-2m): ``field`` translated by ``v`` pixels per step, cut away from the borders."""
    H, W = field.shape
    vel = torch.tensor(v).view(1, 2, 1, 1).expand(1, 2, H, W)
    fr = [advect(field[None, None], vel, t)[0, 0, margin:H - margin, margin:W - margin] for t in range(steps)]
    return torch.stack(fr)[None]


@pytest.mark.parametrize("v", [(2.0, -3.0), (1.5, 0.5), (0.0, 0.0)])
def test_motion_of_a_translation(v):
    x = moving(blobs(140, 140), v, steps=5, margin=20)  # 100 x 100: one tile, one vector
    est = estimate_motion(x)
    assert est.shape == (1, 2, 100, 100)
    assert torch.allclose(est[0, :, 0, 0], torch.tensor(v), atol=0.1), est[0, :, 0, 0]  # sub-pixel
    assert torch.allclose(est, est[:, :, :1, :1].expand_as(est))


def test_motion_field_differs_between_regions():
    left = moving(blobs(260, 160, seed=1), (0.0, 2.0), 5, 30)
    right = moving(blobs(260, 160, seed=2), (0.0, -2.0), 5, 30)
    x = torch.cat([left, right], dim=-1)  # (1, 5, 200, 200): left half moves east, right half west
    est = estimate_motion(x, tile=64)
    assert est[0, 1, 100, 20] > 1.2 and est[0, 1, 100, 180] < -1.2, est[0, 1, 100, ::20]


def test_dry_frames_have_no_motion():
    assert torch.count_nonzero(estimate_motion(torch.zeros(2, 4, 50, 60))) == 0


def test_advect_integer_shift_is_a_shift():
    f = torch.rand(1, 1, 20, 30)
    v = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(1, 2, 20, 30)
    out = advect(f, v, 2)  # out(p) = f(p - 2v): rows +2, columns -4
    assert torch.allclose(out[0, 0, 2:, :26], f[0, 0, :18, 4:], atol=1e-5)
    assert out[0, 0, :2].abs().max() < 1e-5  # trajectories that start outside the grid are dry


def test_untrained_model_is_advected_persistence_and_learns():
    torch.manual_seed(0)
    model = build_model("convlstm", **ARCH, frame="lagrangian")
    assert isinstance(model, LagrangianForecaster)
    x = moving(blobs(104, 104), (1.0, 2.0), steps=5, margin=20)[:, :, None]  # (1, 5, 1, 64, 64)
    y, _ = model(x, n_out=3)
    v = estimate_motion(x[:, :, 0])
    for k in range(3):
        assert torch.allclose(y[:, k], advect(x[:, -1], v, k + 1), atol=1e-6)
    # one optimizer step moves it away from persistence (the zero output conv gets a gradient)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ((y - 0.5) ** 2).mean().backward()
    opt.step()
    y2, _ = model(x, n_out=3)
    assert not torch.allclose(y2, y)
    with pytest.raises(ValueError, match="state=None"):
        model(x, 2, state=[])


def test_same_parameters_as_the_eulerian_model_and_rebuilds_from_hparams():
    lag = build_model("convlstm", **ARCH, frame="lagrangian")
    eul = build_model("convlstm", **ARCH)
    assert lag.state_dict().keys() == eul.state_dict().keys()
    assert lag.hparams["frame"] == "lagrangian" and "frame" not in eul.hparams
    again = build_model(**lag.hparams)
    again.load_state_dict(lag.state_dict())
    assert isinstance(again, LagrangianForecaster)
    with pytest.raises(ValueError, match="kind=convlstm"):
        build_model("fclstm", **ARCH, frame="lagrangian")


def test_config_accepts_rain_and_refuses_what_cannot_add():
    cfg = load_config(None, ["model.frame=lagrangian"])
    assert cfg.model.frame == "lagrangian"
    for bad, why in ((["model.kind=fclstm"], "kind=convlstm"),
                     (["data.source=moving_mnist"], "eulerian"),
                     (["train.loss=bce"], "eulerian")):
        with pytest.raises(UserError, match=why):
            load_config(None, ["model.frame=lagrangian", *bad])


def test_nowcaster_loads_a_lagrangian_checkpoint_and_forecasts_any_grid(tmp_path):
    from convlstm_dist.checkpoint import save_checkpoint
    from convlstm_dist.config import build_model_from_config
    from convlstm_dist.nowcast import Nowcaster

    cfg = load_config(None, ["model.frame=lagrangian", "model.hidden=[4]", "model.input_kernel=3",
                             "model.state_kernel=3", "model.patch=4", "model.height=16", "model.width=16",
                             "data.in_len=5", "data.out_len=3"])
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")
    nc = Nowcaster.load(ckpt)
    field = blobs(150, 190).numpy() * 5  # mm/h
    frames = moving(torch.from_numpy(field), (1.0, -1.0), steps=5, margin=20)[0].numpy()  # (5, 110, 150)
    out = nc.predict(frames, 3)
    assert out.shape == (3, 110, 150)
    # no data stays no data: lead k's trajectory (motion +1 row, -1 column per step) starts outside the
    # grid in the top k rows and the right k columns; everywhere else the forecast has a source
    assert np.isfinite(out[:, 3:, :-3]).all()
    for k in range(3):
        assert np.isnan(out[k, :k + 1]).all() and np.isnan(out[k, :, -(k + 1):]).all()
    # untrained: the last frame carried along the motion, so lead 1 is closer to the truth than persistence
    truth = moving(torch.from_numpy(field), (1.0, -1.0), steps=6, margin=20)[0, -1].numpy()
    inner = (slice(10, -10), slice(10, -10))
    assert np.abs(out[0][inner] - truth[inner]).mean() < 0.5 * np.abs(frames[-1][inner] - truth[inner]).mean()


def test_residual_gate_keeps_lead_1_persistence_where_the_last_frame_is_dry():
    from convlstm_dist.data.quantity import rain_to_norm

    torch.manual_seed(0)
    gate = float(rain_to_norm(0.5))  # 0.5 mm/h in the model range
    gated = build_model("convlstm", **ARCH, frame="lagrangian", residual_gate=gate, residual_gate_leads=1)
    free = build_model("convlstm", **ARCH, frame="lagrangian")
    assert gated.hparams["residual_gate"] == pytest.approx(gate) and "residual_gate" not in free.hparams
    assert gated.state_dict().keys() == free.state_dict().keys()  # a fixed mask: no parameter
    torch.nn.init.normal_(gated.output.weight, std=0.2)  # a trained-looking residual everywhere
    torch.nn.init.constant_(gated.output.bias, 0.05)
    free.load_state_dict(gated.state_dict())
    rain = blobs(104, 104)
    rain = rain / rain.max() * 0.3  # 0 .. 0.3 in model range (0 .. 3.3 mm/h)
    x = moving(rain, (1.0, 2.0), steps=5, margin=20)[:, :, None]
    v = estimate_motion(x[:, :, 0])
    y, _ = gated(x, n_out=3, motion=v)
    yf, _ = free(x, n_out=3, motion=v)
    last = x[:, -1]
    wet = last >= gate
    assert 0.1 < wet.float().mean() < 0.9  # both kinds of pixel present
    # lead 1, in the moving frame: the residual acts only where the last frame has >= 0.5 mm/h
    persistence = advect(last, v, 1)
    expected = advect(torch.where(wet, _unadvected(free, x, v)[:, 0], last), v, 1)
    assert torch.allclose(y[:, 0], expected, atol=1e-5)
    assert not torch.allclose(y[:, 0], persistence, atol=1e-3) and not torch.allclose(y[:, 0], yf[:, 0], atol=1e-3)
    # later leads are not gated: the same as without the gate
    assert torch.allclose(y[:, 1:], yf[:, 1:], atol=1e-6)
    # rebuilt from hparams, the gate comes back
    again = build_model(**gated.hparams)
    again.load_state_dict(gated.state_dict())
    assert torch.allclose(again(x, n_out=3, motion=v)[0], y)


def _unadvected(model, x, v):
    """The model's forecast in the moving frame (residual + last frame), before it is carried along ``v``."""
    T = x.shape[1]
    aligned = torch.stack([advect(x[:, t], v, T - 1 - t) for t in range(T)], dim=1)
    z, _ = super(LagrangianForecaster, model).forward(aligned, 3)
    return z + x[:, -1:]


def test_residual_gate_config_is_checked():
    cfg = load_config(None, ["model.frame=lagrangian", "model.residual_gate_mmh=0.5", "model.residual_gate_leads=2"])
    assert (cfg.model.residual_gate_mmh, cfg.model.residual_gate_leads) == (0.5, 2)
    from convlstm_dist.config import build_model_from_config
    from convlstm_dist.data.quantity import rain_to_norm

    m = build_model_from_config(cfg)  # the config's mm/h in the model range
    assert m.residual_gate == pytest.approx(float(rain_to_norm(0.5))) and m.residual_gate_leads == 2
    with pytest.raises(UserError, match="model.frame=lagrangian"):
        load_config(None, ["model.residual_gate_mmh=0.5"])  # the eulerian model has no residual
    for bad in ("model.residual_gate_mmh=0", "model.residual_gate_mmh=-1", "model.residual_gate_leads=0"):
        with pytest.raises(UserError, match="residual_gate"):
            load_config(None, ["model.frame=lagrangian", bad])
    with pytest.raises(ValueError, match="eulerian model has none"):
        build_model("convlstm", **ARCH, residual_gate=0.08)
    with pytest.raises(ValueError, match="residual_gate must be"):
        build_model("convlstm", **ARCH, frame="lagrangian", residual_gate=float("nan"))
