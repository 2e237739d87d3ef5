"""The Lagrangian model can take a precomputed motion field (issue 23, item 2), and evaluation gives it
the same whole-frame field the optical-flow baselines use: estimated once per window on the full
frame, the scored crop's slice passed to every method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.models import build_model, lagrangian_source_valid
from convlstm_dist.models.motion import advect, estimate_motion, from_uv
from convlstm_dist.nowcast.evaluation import score_chunk
from convlstm_dist.nowcast.nowcaster import Nowcaster
from convlstm_dist.verify import SkillAccumulator, run_baseline
from convlstm_dist.verify.baselines import _pysteps_methods, motion_field

ARCH = dict(in_channels=1, hidden=[8, 8], input_kernel=[3, 3], state_kernel=[3, 3], patch=2, height=32, width=32)
IN_LEN, OUT_LEN = 4, 3


def _field(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.avg_pool2d(torch.rand(1, 1, h, w, generator=g), 7, 1, 3)[0, 0]
    return (f - f.mean()).clamp_min(0) * 10


def _moving(field: torch.Tensor, v_rows_cols, steps: int) -> torch.Tensor:
    H, W = field.shape
    vel = torch.tensor(v_rows_cols, dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, H, W)
    return torch.stack([advect(field[None, None], vel, t)[0, 0] for t in range(steps)])  # (steps, H, W)


# ----------------------------------------------------------------------------------- conventions
@pytest.mark.parametrize("uv", [(2.0, -1.0), (-1.5, 0.75), (0.3, 2.6)])
def test_pysteps_uv_and_advect_move_a_blob_the_same_way(uv):
    """pysteps' [u (columns), v (rows)] through ``from_uv`` and ``advect`` carry a blob exactly as
    pysteps' semi-Lagrangian extrapolation does (same sign, same unit: pixels per step)."""
    _, extrapolate = _pysteps_methods()
    f = np.zeros((40, 50))
    f[12:20, 18:25] = 5.0
    V = np.zeros((2, 40, 50))
    V[0], V[1] = uv
    ps = extrapolate(f, V, 3, outval=0.0)  # (3, H, W)
    ours = np.stack([advect(torch.tensor(f)[None, None], torch.as_tensor(from_uv(V))[None], k + 1)[0, 0].numpy()
                     for k in range(3)])
    np.testing.assert_allclose(ours, ps, atol=1e-5)
    # and the blob really went where the motion says: centre of mass + 3 * (v rows, u columns)
    ys, xs = np.mgrid[:40, :50]
    com = lambda a: np.array([(a * ys).sum() / a.sum(), (a * xs).sum() / a.sum()])  # noqa: E731
    np.testing.assert_allclose(com(ours[2]) - com(f), [3 * uv[1], 3 * uv[0]], atol=0.05)
    assert torch.equal(from_uv(torch.as_tensor(V)), torch.as_tensor(from_uv(V)))  # numpy and torch agree


def test_lk_on_a_translation_agrees_with_the_model_convention():
    """``motion_field`` (LK) of a field moving (+1 row, -2 columns) per step, via ``from_uv``, is what
    ``estimate_motion`` returns for the same frames."""
    frames = _moving(_field(96, 96, seed=3), (1.0, -2.0), IN_LEN).numpy()
    lk = from_uv(motion_field(frames))[:, 20:-20, 20:-20]
    pc = estimate_motion(torch.as_tensor(frames)[None])[0].numpy()
    np.testing.assert_allclose(np.median(lk, axis=(1, 2)), [1.0, -2.0], atol=0.15)
    np.testing.assert_allclose(pc[:, 0, 0], [1.0, -2.0], atol=0.15)


# ----------------------------------------------------------------------------------- the model
def test_motion_none_is_the_model_own_estimate_bit_for_bit():
    torch.manual_seed(0)
    model = build_model("convlstm", **ARCH, frame="lagrangian")
    torch.nn.init.normal_(model.output.weight, std=0.1)  # a "trained" model: not just advected persistence
    x = _moving(_field(32, 32), (1.0, 0.5), IN_LEN)[None, :, None]
    y0, _ = model(x, OUT_LEN)
    y1, _ = model(x, OUT_LEN, motion=None)
    y2, _ = model(x, OUT_LEN, motion=estimate_motion(x[:, :, 0]))
    assert torch.equal(y0, y1) and torch.equal(y0, y2)
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    assert torch.equal(lagrangian_source_valid(x, valid, OUT_LEN),
                       lagrangian_source_valid(x, valid, OUT_LEN, estimate_motion(x[:, :, 0])))


def test_a_given_motion_is_used():
    model = build_model("convlstm", **ARCH, frame="lagrangian")  # untrained: advected persistence
    x = _moving(_field(32, 32), (1.0, 0.5), IN_LEN)[None, :, None]
    v = torch.zeros(1, 2, 32, 32)
    v[:, 0], v[:, 1] = -2.0, 3.0  # not the frames' motion
    y, _ = model(x, OUT_LEN, motion=v)
    for k in range(OUT_LEN):
        assert torch.allclose(y[:, k], advect(x[:, -1], v, k + 1), atol=1e-6)
    assert not torch.allclose(y, model(x, OUT_LEN)[0])
    src = lagrangian_source_valid(x, torch.ones(1, 32, 32, dtype=torch.bool), OUT_LEN, v)
    # lead 1 at p comes from p - v = (row + 2, column - 3): no source in the last 2 rows and first 3 columns
    assert not src[0, 0, -2:].any() and not src[0, 0, :, :3].any() and src[0, 0, :-2, 3:].all()
    with pytest.raises(ValueError, match="shape"):
        model(x, OUT_LEN, motion=v[:, :, :16])
    with pytest.raises(ValueError, match="finite"):
        model(x, OUT_LEN, motion=v * float("nan"))


def _nowcaster(tmp_path, frame="lagrangian"):
    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             "model.height=16", "model.width=16", f"data.in_len={IN_LEN}", f"data.out_len={OUT_LEN}",
                             f"model.frame={frame}"])
    return Nowcaster.load(save_checkpoint(tmp_path / frame, build_model_from_config(cfg), cfg.model_dump(mode="json"),
                                          "rain_norm"))


def test_nowcaster_passes_motion_through_padding_and_refuses_it_for_eulerian(tmp_path):
    nc = _nowcaster(tmp_path)
    frames = _moving(_field(50, 62), (1.0, -1.0), IN_LEN).numpy()  # the patch (4) divides neither side
    v = np.zeros((2, 50, 62), np.float32)
    v[1] = 2.0  # two columns per step east, not the frames' motion
    out = nc.predict(frames, OUT_LEN, motion=v)
    assert np.isnan(out[0, :, :2]).all() and np.isfinite(out[0, :, 2:]).all()  # the inflow border of v
    np.testing.assert_allclose(out[0, :, 2:], frames[-1][:, :-2], rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.nan_to_num(out), np.nan_to_num(nc.predict(frames, OUT_LEN)))
    with pytest.raises(ValueError, match="Lagrangian"):
        _nowcaster(tmp_path, "eulerian").predict(frames, OUT_LEN, motion=v)
    with pytest.raises(ValueError, match="shape"):
        nc.predict(frames, OUT_LEN, motion=v[:, :10])


# ----------------------------------------------------------------------------------- evaluation
class _Archive:
    variable = "rain_mmh"

    def __init__(self, frames):
        self.frames = frames

    def read(self, lo, hi):
        return self.frames[lo:hi]

    def to_rain_mmh(self, raw):
        return raw


def _showers(h, w, n, seed):
    rng = np.random.default_rng(seed)
    big = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[-6:7, -6:7]
    for _ in range(n):
        y, x = rng.integers(8, h - 8), rng.integers(8, w - 8)
        big[y - 6:y + 7, x - 6:x + 7] += rng.uniform(3, 10) * np.exp(-(yy ** 2 + xx ** 2) / 5.0)
    big[big < 0.3] = 0.0
    return big


def _entering(t_len, crop, v=(0.5, 2.0), size=160, sig=6.0):
    """One textured rain area moving ``v`` (rows, columns) per step whose eastern part has crossed the
    western border of ``crop`` (y, x, h, w), 20 pixels in at the last input frame (step ``IN_LEN - 1``):
    inside the crop, the rain is cut by the crop's border."""
    cy, cx, h, w = crop
    yy, xx = np.mgrid[:size, :size + 40]
    ce = cx + 20 - v[1] * (IN_LEN - 1) - 2 * sig  # centre at step 0
    big = 8 * np.exp(-((yy - (cy + h / 2)) ** 2 / (2 * (2 * sig) ** 2) + (xx - ce) ** 2 / (2 * sig ** 2)))
    big = big + 0.5 * _showers(size, size + 40, 60, 3) * ((xx < ce + sig) & (xx > ce - 4 * sig))
    big = np.where(big < 0.3, 0.0, big).astype(np.float32)
    return np.ascontiguousarray(_moving(torch.from_numpy(big), v, t_len).numpy()[:, :, :size])


def _mae(states, method, lead=0):
    return [r for r in SkillAccumulator.from_state(states[method]).compute() if r["lead_index"] == lead][0]["mae"]


def test_crop_model_with_whole_frame_motion_beats_its_crop_only_estimate(tmp_path):
    """Rain entering a 64 x 64 scored crop across its border: inside the crop the rain is cut by the
    border, a static edge that biases the crop-only estimate (``estimate_motion`` on the crop: about
    1.3 instead of 2 pixels per step); the whole frame's Lucas-Kanade field (``motion="shared"``, the
    default) sees the whole rain area, so the Lagrangian model's lead-1 error is several times lower,
    and the model (untrained: advected persistence) moves the rain as optical flow does (one field)."""
    from convlstm_dist.data.crops import choose_crop

    nc = _nowcaster(tmp_path)
    h = w = 64
    cy, cx = choose_crop(np.ones((160, 160), bool), (h, w), np.random.default_rng([0, 0, 0, 0]))  # score_chunk's
    frames = _entering(IN_LEN + OUT_LEN, (cy, cx, h, w))
    v_crop = estimate_motion(torch.as_tensor(frames[:IN_LEN, cy:cy + h, cx:cx + w])[None])[0, :, 0, 0]
    assert abs(v_crop[1] - 2.0) > 0.3, v_crop  # the crop alone: biased by the border
    v_full = from_uv(motion_field(frames[:IN_LEN]))[:, cy + h // 2, cx + 4]
    np.testing.assert_allclose(v_full, [0.5, 2.0], atol=0.1)
    common = dict(in_len=IN_LEN, n_out=OUT_LEN, crop=(h, w), seed=0,
                  methods=["convlstm", "persistence", "optical_flow"], thresholds=[0.5, 2.0])
    own = score_chunk(nc, _Archive(frames), np.array([0]), motion="own", **common)
    shared = score_chunk(nc, _Archive(frames), np.array([0]), **common)
    mae_own, mae_shared = _mae(own, "convlstm"), _mae(shared, "convlstm")
    assert mae_shared < 0.3 * mae_own, (mae_shared, mae_own)
    assert mae_own < _mae(own, "persistence")  # crop-only motion still beats no motion
    # one field: the model's forecast is optical flow's, up to the two advections' interpolation
    assert abs(mae_shared - _mae(shared, "optical_flow")) < 0.1 * mae_own, (mae_shared, _mae(shared, "optical_flow"))


def test_shared_motion_is_the_baselines_whole_frame_field(tmp_path):
    """In ``shared`` mode the baselines get exactly the crop's slice of ``motion_field`` on the whole
    frame's input frames, and with no crop nothing changes for them."""
    frames = np.maximum(_entering(IN_LEN + OUT_LEN, (20, 30, 48, 48)), _entering(IN_LEN + OUT_LEN, (90, 80, 48, 48)))
    x_full = frames[None, :IN_LEN]
    v = motion_field(frames[:IN_LEN])
    crop = (slice(20, 68), slice(30, 78))
    expect = run_baseline("optical_flow", x_full[..., crop[0], crop[1]], OUT_LEN, v[None, :, crop[0], crop[1]])
    got = run_baseline("optical_flow", x_full, OUT_LEN, v[None])[..., crop[0], crop[1]]
    # away from the crop's border (where the crop's inflow starts), extrapolating the crop with the
    # whole frame's field is extrapolating the whole frame
    inner = (Ellipsis, slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(expect[inner], got[inner], atol=1e-6)
    np.testing.assert_array_equal(run_baseline("optical_flow", x_full, OUT_LEN),
                                  run_baseline("optical_flow", x_full, OUT_LEN, v[None]))


def test_nowcast_of_a_crop_moves_along_the_whole_frame_motion(tmp_path):
    """``nowcast --crop``: a Lagrangian model forecasts the centred crop along the crop's slice of the
    whole frame's motion field (as ``evaluate`` scores it); on the whole grid, along its own estimate."""
    import xarray as xr

    from convlstm_dist.nowcast.run import nowcast_from_archive
    from synthetic import make_archive

    frames = _entering(IN_LEN + 2, (48, 48, 64, 64))
    url = tmp_path / "a.zarr"
    make_archive(url, n=len(frames), h=160, w=160, frames=frames)
    nc = _nowcaster(tmp_path)
    ckpt = tmp_path / "lagrangian"
    got = nowcast_from_archive(str(ckpt), str(url), tmp_path / "crop.zarr", n_out=2, crop=(64, 64), workdir=tmp_path)
    fc = xr.open_zarr(got.dataset)["rain_mmh"].values[0]
    inputs = frames[-IN_LEN:]
    crop = (slice(48, 112), slice(48, 112))
    want = nc.predict(inputs[:, crop[0], crop[1]], 2, motion=from_uv(motion_field(inputs))[:, crop[0], crop[1]])
    np.testing.assert_allclose(fc, want, rtol=1e-5, atol=1e-5)
    own = nc.predict(inputs[:, crop[0], crop[1]], 2)
    assert not np.allclose(np.nan_to_num(fc), np.nan_to_num(own))
    full = nowcast_from_archive(str(ckpt), str(url), tmp_path / "full.zarr", n_out=2, workdir=tmp_path)
    np.testing.assert_allclose(xr.open_zarr(full.dataset)["rain_mmh"].values[0], nc.predict(inputs, 2),
                               rtol=1e-5, atol=1e-5)
