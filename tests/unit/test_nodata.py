"""No data stays no data: a forecast pixel is NaN exactly where the model has no observed source,
in the Eulerian frame (the last frame's coverage, as persistence) and in the Lagrangian frame (the
coverage carried along the motion, as the optical-flow baseline); scoring leaves those pixels out."""

import numpy as np
import pytest

from convlstm_dist.checkpoint import save_checkpoint
from convlstm_dist.config import build_model_from_config, load_config
from convlstm_dist.nowcast.nowcaster import Nowcaster
from convlstm_dist.verify import run_baseline
from convlstm_dist.verify.postprocess import probability_match

IN_LEN, OUT_LEN, H, W, BORDER = 4, 3, 64, 64, 10


def checkpoint(tmp_path, frame):
    cfg = load_config(None, ["model.hidden=[4]", "model.input_kernel=3", "model.state_kernel=3", "model.patch=4",
                             f"model.height={H}", f"model.width={W}", f"data.in_len={IN_LEN}",
                             f"data.out_len={OUT_LEN}", f"model.frame={frame}"])
    return save_checkpoint(tmp_path / frame, build_model_from_config(cfg), cfg.model_dump(mode="json"), "rain_norm")


def moving_rain(dx: int = 2) -> np.ndarray:
    """A smooth random rain area moving ``dx`` pixels per step to the right (+x), with a radar that
    sees nothing in the left ``BORDER`` columns (a static no-data region, as outside coverage). The
    rain starts to the right of the border, so the motion estimate sees only moving rain."""
    rng = np.random.default_rng(7)
    big = rng.gamma(0.6, 3.0, (H, W + dx * IN_LEN)).astype(np.float32)
    k = np.ones(5, np.float32) / 5  # smooth: texture the motion estimate can lock on
    big = np.apply_along_axis(lambda r: np.convolve(r, k, "same"), 1, big)
    big = np.apply_along_axis(lambda c: np.convolve(c, k, "same"), 0, big)
    big[:, :BORDER + 6 + dx * IN_LEN] = 0.0  # dry where the rain has not arrived
    big[:6], big[-6:] = 0.0, 0.0
    off = dx * IN_LEN
    frames = np.stack([big[:, off - dx * t:off - dx * t + W] for t in range(IN_LEN)])
    frames[:, :, :BORDER] = np.nan
    return frames


def test_eulerian_forecast_is_nan_exactly_where_the_last_frame_is(tmp_path):
    nc = Nowcaster.load(checkpoint(tmp_path, "eulerian"))
    frames = moving_rain()
    frames[-1, 30:40, 30:40] = np.nan  # a hole in the analysis only: no observed source there either
    out = nc.predict(frames, OUT_LEN)
    expect = np.repeat(np.isnan(frames[-1])[None], OUT_LEN, 0)
    np.testing.assert_array_equal(np.isnan(out), expect)
    persistence = run_baseline("persistence", frames[None], OUT_LEN)[0]
    np.testing.assert_array_equal(np.isnan(persistence), expect)  # the same mask as the baseline


def test_lagrangian_forecast_is_nan_where_the_advected_source_has_no_data(tmp_path):
    """Rain moves 2 px/step to +x; the left BORDER columns are no data. Lead k's source of column c is
    column c - 2(k+1): NaN exactly for c < BORDER + 2(k+1), a band that grows with the lead."""
    nc = Nowcaster.load(checkpoint(tmp_path, "lagrangian"))
    frames = moving_rain(dx=2)
    out = nc.predict(frames, OUT_LEN)
    cols = np.arange(W)
    for k in range(OUT_LEN):
        expect = np.broadcast_to(cols < BORDER + 2 * (k + 1), (H, W))
        np.testing.assert_array_equal(np.isnan(out[k]), expect, err_msg=f"lead {k + 1}")
    # the optical-flow baseline draws the same line (it traces the same motion back)
    flow = run_baseline("optical_flow", frames[None], OUT_LEN)[0]
    inner = slice(8, H - 8)  # LK's motion field is interpolated; compare away from the top/bottom edge
    for k in range(OUT_LEN):
        assert np.array_equal(np.isnan(flow[k, inner]), np.isnan(out[k, inner])), f"lead {k + 1}"


def test_probability_matching_keeps_no_data():
    rng = np.random.default_rng(0)
    fc = rng.gamma(0.5, 2.0, (1, 2, 16, 16)).astype(np.float32)
    fc[0, 1, :, :5] = np.nan  # lead 2 has fewer sources than the reference has pixels
    ref = rng.gamma(0.5, 2.0, (1, 16, 16)).astype(np.float32)
    out = probability_match(fc, ref)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(fc))
    assert np.allclose(np.sort(out[0, 0].ravel()), np.sort(ref[0].ravel()))
    # the ranks of the forecast are kept where it has data
    ok = np.isfinite(fc[0, 1])
    assert np.array_equal(np.argsort(out[0, 1][ok], kind="stable"), np.argsort(fc[0, 1][ok], kind="stable"))


@pytest.mark.parametrize("frame", ["eulerian", "lagrangian"])
def test_scoring_leaves_out_pixels_without_a_source(tmp_path, frame):
    """evaluate's one verification sample: a pixel the model has no source for counts for no method."""
    from convlstm_dist.nowcast.evaluation import score_chunk
    from convlstm_dist.verify import SkillAccumulator
    from synthetic import make_archive

    url = tmp_path / "a.zarr"
    frames = make_archive(url, n=IN_LEN + OUT_LEN, h=H, w=W, step_s=300)
    from convlstm_dist.data import open_archive

    nc = Nowcaster.load(checkpoint(tmp_path, frame))
    thr = (0.5, 2.0)
    states = score_chunk(nc, open_archive(str(url)), np.array([0]), IN_LEN, OUT_LEN, None, 0,
                         [nc.config.model.kind, "persistence"], thr)
    motion = None
    if frame == "lagrangian":  # evaluate's model moves along the whole frame's optical-flow field (motion="shared")
        from convlstm_dist.models.motion import from_uv
        from convlstm_dist.verify.baselines import motion_field

        motion = from_uv(motion_field(frames[:IN_LEN]))
    fc = nc.predict(frames[:IN_LEN], OUT_LEN, motion=motion)
    obs = frames[IN_LEN:]
    n_model = SkillAccumulator.from_state(states["convlstm"]).compute()
    n_pers = SkillAccumulator.from_state(states["persistence"]).compute()
    # both methods were scored on the pixels where the observation, persistence and the model all have data
    common = np.isfinite(obs) & np.isfinite(fc) & np.isfinite(frames[IN_LEN - 1])[None]
    last = frames[IN_LEN - 1]
    for rows, f in ((n_model, fc), (n_pers, np.repeat(last[None], OUT_LEN, 0))):
        mse = [float(((f[k] - obs[k])[common[k]] ** 2).mean()) for k in range(OUT_LEN)]
        got = dict(sorted({(r["lead_index"], r["mse"]) for r in rows}))
        np.testing.assert_allclose([got[k] for k in range(OUT_LEN)], mse, rtol=1e-5)
    if frame == "lagrangian":  # the model's advected no-data band really is left out of persistence's sample
        assert (np.isfinite(last)[None] & ~np.isfinite(fc)).any()
