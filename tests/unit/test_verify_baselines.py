"""Baselines: registry, persistence, optical flow on a Gaussian blob with known motion."""

import numpy as np
import pytest

from convlstm_dist.errors import UserError
from convlstm_dist.verify.baselines import available_baselines, get_baseline, run_baseline
from convlstm_dist.verify.scores import SkillAccumulator

N_IN, N_OUT, SIZE = 5, 4, 64


def blob_frames(u, v, n=N_IN + N_OUT, x0=24.0, y0=24.0, peak=20.0, sigma=6.0):
    """A Gaussian rain cell (mm/h) moving ``u`` px/step right and ``v`` px/step down."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([peak * np.exp(-((xx - x0 - u * t) ** 2 + (yy - y0 - v * t) ** 2) / (2 * sigma**2))
                     for t in range(n)])


def skill(fcst, obs, thr=5.0):
    acc = SkillAccumulator((thr,), n_leads=fcst.shape[0]).accumulate(fcst[None], obs[None])
    return acc.categorical()["csi"][:, 0], acc.continuous()["mse"]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UserError, match="optical_flow.*persistence|persistence.*optical_flow"):
        get_baseline("nope")
    assert {"persistence", "optical_flow"} <= set(available_baselines())


def test_persistence_repeats_last_frame_with_its_nan():
    frames = blob_frames(2, 1)[:N_IN]
    frames[-1, 0, 0] = np.nan
    out = get_baseline("persistence")(frames, N_OUT)
    assert out.shape == (N_OUT, SIZE, SIZE)
    np.testing.assert_array_equal(out, np.repeat(frames[-1:], N_OUT, axis=0))


@pytest.mark.parametrize("u, v", [(2, 1), (-1, 2), (1.5, -1)])
def test_optical_flow_reproduces_a_moving_blob(u, v):
    pytest.importorskip("pysteps")
    frames = blob_frames(u, v)
    past, future = frames[:N_IN], frames[N_IN:]
    flow = get_baseline("optical_flow")(past, N_OUT)
    persist = get_baseline("persistence")(past, N_OUT)
    csi_flow, mse_flow = skill(flow, future)
    csi_persist, mse_persist = skill(persist, future)
    assert np.all(csi_flow > 0.95)
    assert np.all(mse_flow < 0.01 * mse_persist)
    assert csi_persist[-1] < 0.6  # persistence falls behind the moving cell


def test_optical_flow_without_rain_or_motion_is_persistence():
    pytest.importorskip("pysteps")
    zeros = np.zeros((3, 32, 32))
    np.testing.assert_array_equal(get_baseline("optical_flow")(zeros, 2)[:, 2:-2, 2:-2], 0.0)
    still = blob_frames(0, 0)[:N_IN]
    out = get_baseline("optical_flow")(still, 2)
    np.testing.assert_allclose(out, np.repeat(still[-1:], 2, axis=0), atol=1e-3)


def test_optical_flow_keeps_nan_where_the_source_was_nan():
    pytest.importorskip("pysteps")
    frames = blob_frames(2, 1)[:N_IN]
    frames[:, 40:44, 10:14] = np.nan  # a no-data box, away from the cell
    out = get_baseline("optical_flow")(frames, 2)
    # lead 1: the box moved by (2, 1) px; lead 2: by (4, 2) px
    assert np.isnan(out[0, 41:45, 12:16]).all() and np.isnan(out[1, 42:46, 14:18]).all()
    assert np.isnan(out[0, :, 0]).all() and np.isnan(out[1, 0, 10:50]).all()  # came from outside
    assert np.isfinite(out[1, 10:38, 10:38]).all() and not np.isnan(out[1, 41:44, 10:13]).any()


@pytest.mark.parametrize("name", ["persistence", "optical_flow"])
def test_run_baseline_batches(name):
    if name == "optical_flow":
        pytest.importorskip("pysteps")
    batch = np.stack([blob_frames(2, 1)[:N_IN], blob_frames(-1, 0)[:N_IN]])
    out = run_baseline(name, batch, N_OUT)
    assert out.shape == (2, N_OUT, SIZE, SIZE)
    np.testing.assert_array_equal(out[1], get_baseline(name)(batch[1], N_OUT))


@pytest.mark.parametrize(
    "name, frames, n_out, match",
    [("persistence", np.zeros((4, 4)), 1, "T_in, H, W"), ("persistence", np.zeros((2, 4, 4)), 0, "n_out"),
     ("optical_flow", np.zeros((1, 4, 4)), 1, "at least 2")],
)
def test_bad_inputs_are_refused(name, frames, n_out, match):
    with pytest.raises(ValueError, match=match):
        get_baseline(name)(frames, n_out)
