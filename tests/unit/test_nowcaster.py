"""Nowcaster: load a checkpoint (dir or file), predict shapes and units, NaN input, clear errors."""

import numpy as np
import pytest

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.data.units import rain_mmh_to_dbz
from convlstm_dist.errors import UserError
from convlstm_dist.nowcast.nowcaster import Nowcaster


def tiny_checkpoint(tmp_path, quantity="rain_norm", **model):
    sets = ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
            "model.height=16", "model.width=16", "data.in_len=3", "data.out_len=2"]
    sets += [f"model.{k}={v}" for k, v in model.items()]
    cfg = load_config(None, sets)
    model = build_model_from_config(cfg)
    return save_checkpoint(tmp_path / "ckpt", model, cfg.model_dump(mode="json"), quantity)


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path)


@pytest.mark.parametrize("which", ["dir", "file"])
def test_load_checkpoint_dir_or_file(ckpt, which):
    nc = Nowcaster.load(ckpt.parent if which == "dir" else ckpt)
    assert nc.quantity == "rain_norm" and nc.in_len == 3 and nc.out_len == 2 and nc.patch == 4


@pytest.mark.parametrize("n_out, hw", [(None, (16, 16)), (5, (24, 32))])
def test_predict_shapes_and_units(ckpt, n_out, hw):
    nc = Nowcaster.load(ckpt.parent)
    frames = np.random.default_rng(0).gamma(0.5, 2.0, size=(3, *hw)).astype(np.float32)
    out = nc.predict(frames, n_out)
    assert out.shape == ((n_out or 2), *hw) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all()  # mm/h, never negative


def test_dbz_input_matches_rain_input(ckpt):
    nc = Nowcaster.load(ckpt)
    rain = np.random.default_rng(1).gamma(0.5, 2.0, size=(3, 16, 16)).astype(np.float32) + 0.1
    dbz = rain_mmh_to_dbz(rain, 200.0, 1.6)
    from convlstm_dist.data.units import dbz_to_rain_mmh

    a = nc.predict(rain, 2)
    b = nc.predict(dbz, 2, variable="refl_dbz", to_rain_mmh=lambda d: dbz_to_rain_mmh(d, 200.0, 1.6))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="Z"):
        nc.predict(dbz, 2, variable="refl_dbz")


def test_nan_input_is_zero_for_the_model(ckpt):
    nc = Nowcaster.load(ckpt)
    frames = np.random.default_rng(2).gamma(0.5, 2.0, size=(3, 16, 16)).astype(np.float32)
    with_nan = frames.copy()
    with_nan[:, :4] = np.nan
    zeroed = frames.copy()
    zeroed[:, :4] = 0.0
    out = nc.predict(with_nan, 2)
    assert np.isnan(out[:, :4]).all() and np.isfinite(out[:, 4:]).all()  # no data stays no data
    np.testing.assert_array_equal(out[:, 4:], nc.predict(zeroed, 2)[:, 4:])


def test_bad_path_names_what_was_tried(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        Nowcaster.load(tmp_path / "nope" / "checkpoint.pt")
    with pytest.raises(UserError, match="no-such-model"):
        Nowcaster.load("no-such-model", tracking_uri=f"sqlite:///{tmp_path}/absent.db")


def test_grid_not_divisible_by_patch_is_padded_and_cropped_back(ckpt, monkeypatch):
    """30x22 with patch 4: the model runs on 32x24 with a no-data (= 0) strip at the bottom/right, and
    the forecast is exactly 30x22, finite where the input was valid; it is the forecast of the 32x24
    grid with that dry strip, cropped (so padding costs only the strip's boundary effect)."""
    nc = Nowcaster.load(ckpt)
    frames = np.random.default_rng(3).gamma(0.5, 2.0, size=(3, 30, 22)).astype(np.float32)
    frames[:, :3] = np.nan  # a no-data border, as radar composites have
    seen = []
    forward = nc.model.forward
    monkeypatch.setattr(nc.model, "forward", lambda x, n: seen.append(tuple(x.shape[-2:])) or forward(x, n))
    out = nc.predict(frames, 2)
    assert seen == [(32, 24)]
    assert out.shape == (2, 30, 22) and out.dtype == np.float32
    assert np.isfinite(out[:, 3:]).all() and np.isnan(out[:, :3]).all() and (out[:, 3:] >= 0).all()
    dry = np.zeros((3, 32, 24), np.float32)
    dry[:, :30, :22] = frames
    np.testing.assert_array_equal(out, nc.predict(dry, 2)[:, :30, :22])
    # one path for predict, predict_batch (evaluate) and nowcast: a batch gives the same forecast
    batch = np.stack([frames, np.nan_to_num(frames[::-1].copy())])
    np.testing.assert_allclose(nc.predict_batch(batch, 2)[0], out, rtol=1e-5, atol=1e-5)


def test_divisible_grid_is_not_padded(ckpt, monkeypatch):
    """A grid the patch divides runs exactly as before: the model sees it unpadded and unchanged."""
    import torch

    nc = Nowcaster.load(ckpt)
    frames = np.random.default_rng(4).gamma(0.5, 2.0, size=(3, 24, 16)).astype(np.float32)
    seen = []
    forward = nc.model.forward
    monkeypatch.setattr(nc.model, "forward", lambda x, n: seen.append(x.clone()) or forward(x, n))
    out = nc.predict(frames, 2)
    assert [tuple(x.shape) for x in seen] == [(1, 3, 1, 24, 16)]
    from convlstm_dist.data.quantity import get_quantity, rain_to_norm

    x = torch.as_tensor(rain_to_norm(frames)[None, :, None])
    with torch.inference_mode():
        direct = get_quantity("rain_norm").from_model(forward(x, 2)[0].numpy()[0, :, 0])
    np.testing.assert_array_equal(out, direct)


def test_fclstm_still_needs_its_grid(tmp_path):
    nc = Nowcaster.load(tiny_checkpoint(tmp_path, kind="fclstm"))
    with pytest.raises(UserError, match="only runs on 16x16"):
        nc.predict(np.zeros((3, 18, 16), np.float32), 2)


def test_intensity_model_refuses_rain(tmp_path):
    nc = Nowcaster.load(tiny_checkpoint(tmp_path, quantity="intensity"))
    with pytest.raises(UserError, match="intensity"):
        nc.predict(np.zeros((3, 16, 16), np.float32), 2)
    assert nc.predict(np.zeros((3, 16, 16), np.float32), 2, variable="intensity").shape == (2, 16, 16)


def test_large_batches_are_forwarded_in_memory_bounded_pieces(ckpt, monkeypatch):
    import convlstm_dist.nowcast.nowcaster as inf

    nc = Nowcaster.load(ckpt)
    frames = np.random.default_rng(0).gamma(0.5, 2.0, (5, 3, 32, 32)).astype(np.float32)
    whole = nc.predict_batch(frames, 2)
    calls = []
    forward = nc.model.forward
    monkeypatch.setattr(nc.model, "forward", lambda x, n: calls.append(x.shape[0]) or forward(x, n))
    monkeypatch.setattr(inf, "PIXELS_PER_FORWARD", 2 * 32 * 32)
    pieces = nc.predict_batch(frames, 2)
    assert calls == [2, 2, 1]
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-6)
