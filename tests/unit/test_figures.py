"""Forecast figures (``verify.figures``): the panels a radar reader expects, pysteps' colours, no data
drawn as no data, lead times in minutes, the grid's extent in km. Checked on the figure's axes and
colour mapping, not on pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from convlstm_dist.verify import build_forecast_figure, colour_scale, forecast_figure, forecast_gif

STEP_S = 300  # 5-min archive


def _fields(T=5, n_out=4, H=40, W=32, seed=0):
    rng = np.random.default_rng(seed)
    rain = rng.gamma(0.5, 2.0, size=(T + n_out, H, W)).astype("float32")
    rain[:, :, :4] = np.nan  # a strip outside radar coverage
    rain[:, 30:, 10:20] = 0.0  # dry
    return rain[:T], rain[T:]


def _titles(fig):
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_panels_inputs_then_observed_model_flow_per_lead_in_minutes():
    inputs, obs = _fields()
    fig = build_forecast_figure(inputs=inputs, model=obs * 0.9, observed=obs, flow=obs * 1.1, timestep_s=STEP_S)
    titles = _titles(fig)
    assert titles[:3] == ["input -10 min", "input -5 min", "input 0 min"]
    for row in ("observed", "model", "optical flow"):
        assert [t for t in titles if t.startswith(row + " ")] == [f"{row} +{m} min" for m in (5, 10, 15, 20)]
    maps = [ax for ax in fig.axes if ax.get_images()]
    assert len(maps) == 3 + 3 * 4
    # one colour bar, labelled with the quantity and its units
    assert any(ax.get_ylabel() == "rain rate (mm/h)" for ax in fig.axes)


def test_leads_are_thinned_to_max_leads_keeping_first_and_last_and_optional_rows_drop_out():
    inputs, _ = _fields(n_out=1)
    model = np.zeros((12, *inputs.shape[1:]), "float32")
    fig = build_forecast_figure(inputs=inputs, model=model, timestep_s=600, model_label="demo", max_leads=4)
    titles = _titles(fig)
    assert [t for t in titles if t.startswith("demo")] == ["demo +10 min", "demo +50 min", "demo +80 min",
                                                           "demo +120 min"]
    assert not any(t.startswith(("observed", "optical flow")) for t in titles)  # none given: no row


def test_leads_past_the_archive_are_marked_not_observed():
    inputs, obs = _fields(n_out=4)
    fig = build_forecast_figure(inputs=inputs, model=obs, observed=obs[:2], timestep_s=STEP_S)
    titles = _titles(fig)
    assert "observed +10 min" in titles and "observed +15 min\n(not observed)" in titles
    assert len([ax for ax in fig.axes if ax.get_images()]) == 3 + 2 + 4


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # pysteps' own set_bad/set_under calls
def test_pysteps_colours_dry_is_white_and_no_data_is_grey_and_hatched():
    from pysteps.visualization.precipfields import get_colormap

    _, _, clevs, _ = get_colormap("intensity", "mm/h", "pysteps")
    scale = colour_scale("mm/h")
    assert list(scale.norm.boundaries) == list(clevs) and scale.rain
    nodata, dry, drizzle, storm = scale.cmap(scale.norm(np.ma.masked_invalid([np.nan, 0.0, 0.1, 50.0])))
    assert tuple(dry) == (1.0, 1.0, 1.0, 1.0)
    assert nodata[:3] == pytest.approx((180 / 255,) * 3, abs=1e-3) and nodata[3] == 1.0
    assert len({tuple(c) for c in (nodata, dry, drizzle, storm)}) == 4  # light rain is not dry, not no-data
    inputs, obs = _fields()
    fig = build_forecast_figure(inputs=inputs, model=np.nan_to_num(obs), observed=obs, timestep_s=STEP_S)

    def hatched(title):
        ax = next(ax for ax in fig.axes if ax.get_title() == title)
        return [c for c in ax.collections if any(getattr(c, "hatches", None) or [])]

    assert hatched("observed +5 min"), "no-data pixels are not hatched"
    assert not hatched("model +5 min")  # a field without NaN has no hatching
    assert any("no data" == t.get_text() for t in fig.legends[0].get_texts())


def test_extent_in_km_with_a_crs_and_no_axes_without_one():
    inputs, obs = _fields(H=40, W=32)
    x = 1000.0 * (np.arange(32) + 0.5) + 250_000.0  # pixel centres, 1 km
    y = 1000.0 * (40 - np.arange(40) - 0.5) - 4_100_000.0  # row 0 north
    fig = build_forecast_figure(inputs=inputs, model=obs, timestep_s=STEP_S, x=x, y=y,
                                projection="+proj=stere +lat_0=90 +lon_0=0 +units=m")
    ax = next(ax for ax in fig.axes if ax.get_title() == "model +5 min")
    assert ax.get_xlim() == pytest.approx((250.0, 282.0))
    assert ax.get_ylim() == pytest.approx((-4100.0, -4060.0))
    assert any(a.get_xlabel() == "x (km)" for a in fig.axes) and any(a.get_ylabel() == "y (km)" for a in fig.axes)
    bare = build_forecast_figure(inputs=inputs, model=obs, timestep_s=STEP_S, x=x, y=y, projection="")
    ax = next(ax for ax in bare.axes if ax.get_title() == "model +5 min")
    assert len(ax.get_xticks()) == 0 and ax.get_xlabel() == ""


def test_intensity_uses_a_grey_scale_and_files_are_written(tmp_path):
    inputs, obs = _fields()
    inputs, obs = np.clip(inputs / 10, 0, 1), np.clip(obs / 10, 0, 1)
    assert not colour_scale("intensity").rain
    png = forecast_figure(tmp_path / "sub" / "f.png", inputs=inputs, model=obs, observed=obs, timestep_s=STEP_S,
                          units="intensity")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400
    gif = forecast_gif(tmp_path / "f.gif", obs, STEP_S)
    with Image.open(gif) as im:
        assert im.n_frames == len(obs)
    with pytest.raises(ValueError, match="one grid"):
        build_forecast_figure(inputs=inputs, model=obs[:, :10], timestep_s=STEP_S)



def test_a_large_grid_is_thinned_for_drawing_and_keeps_its_extent():
    from convlstm_dist.verify.figures import MAX_PANEL_PIXELS

    inputs, obs = _fields(T=2, n_out=1, H=1250, W=40)
    x = 1000.0 * np.arange(40)
    y = 1000.0 * (1249 - np.arange(1250))
    fig = build_forecast_figure(inputs=inputs, model=obs, timestep_s=STEP_S, x=x, y=y, projection="+proj=stere")
    ax = next(ax for ax in fig.axes if ax.get_title() == "model +5 min")
    drawn = ax.get_images()[0].get_array()
    assert max(drawn.shape) <= MAX_PANEL_PIXELS and drawn.shape == (417, 14)  # every 3rd pixel
    assert ax.get_ylim() == pytest.approx((-0.5, 1249.5))


def test_figures_without_pysteps_keep_the_levels_and_drop_the_flow_row(monkeypatch, tmp_path):
    """A machine without pysteps (the lent GPU box): the same precipitation levels in matplotlib
    colours, and the figure without its optical-flow row instead of a failed report."""
    import sys

    from convlstm_dist.verify import flow_row
    from convlstm_dist.verify.figures import FALLBACK_LEVELS_MMH

    for name in [m for m in sys.modules if m == "pysteps" or m.startswith("pysteps.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pysteps", None)  # import pysteps -> ImportError
    scale = colour_scale("mm/h")
    assert scale.ticks == list(FALLBACK_LEVELS_MMH) and scale.rain
    frames = np.random.default_rng(0).gamma(0.5, 2.0, size=(3, 16, 16)).astype("float32")
    assert flow_row(frames, 2) is None
    path = forecast_figure(tmp_path / "f.png", inputs=frames, model=frames[:2], observed=None, flow=None,
                           timestep_s=300, units="mm/h")
    assert path.stat().st_size > 1000
