"""Forecast figures for people who read radar maps: the one figure module of the project.

:func:`forecast_figure` draws, in one PNG:

* row 1, the last input frames (labelled in minutes before the analysis time, ``0 min`` = analysis);
* then one column per lead (``+5 min``, ``+10 min``, … from the archive's time step), one row each for
  the observed field (when it is known), the model and the optical-flow extrapolation (when given).

Rain rates use pysteps' precipitation colour map and levels (``pysteps.visualization.precipfields.
get_colormap``, 0.08 … 160 mm/h on a logarithmic set of levels), so drizzle is as visible as a
thunderstorm; below 0.08 mm/h is dry (white); no data (NaN: outside radar coverage, or where a
method has no source) is grey and hatched, never drawn as dry. Other quantities (Moving MNIST
intensity) use a grey scale from 0 to 1. Where the archive has a CRS (``projection``) and x/y pixel
centres (metres), panels show the grid's extent in km; otherwise the maps carry no ticks.

:func:`forecast_gif` animates the model's leads in the same colours. Callers: the end of every
training run (``train/report.py``, the demo's ``forecast.png`` and its MLflow artifact), ``nowcast``
and ``evaluate`` (``nowcast/run.py``). The plot uses matplotlib's Agg canvas directly (no pyplot).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from convlstm_dist.errors import UserError
from convlstm_dist.verify.baselines import get_baseline

NODATA_COLOUR = "#b4b4b4"
NODATA_HATCH = "///"
# a map panel is about 200 px wide at the figure's dpi: a larger field is thinned to every k-th pixel
# (nearest neighbour, as the renderer would do) so that no panel draws more than this many pixels
# on its long side: a 1226x760 grid draws in seconds instead of a minute
MAX_PANEL_PIXELS = 600


@dataclass(frozen=True)
class Scale:
    """Colour map, norm and colour-bar ticks of one quantity."""
    cmap: object
    norm: object
    ticks: list[float]
    tick_labels: list[str]
    label: str
    rain: bool


def flow_row(inputs: np.ndarray, n_out: int, has_rain_rate: bool = True,
             velocity: np.ndarray | None = None) -> np.ndarray | None:
    """The optical-flow row of a forecast figure (``verify.baselines.optical_flow`` of the same
    inputs, along ``velocity`` (2, H, W) when given), or None: for a quantity that is no rain rate, or
    where pysteps/OpenCV are missing (a figure is drawn without that row rather than failing the
    command that draws it)."""
    if not has_rain_rate:
        return None

    try:
        return get_baseline("optical_flow")(inputs, n_out, velocity=velocity)
    except UserError:
        return None


# pysteps' intensity levels, for drawing without pysteps installed
FALLBACK_LEVELS_MMH = (0.08, 0.16, 0.25, 0.40, 0.63, 1, 1.6, 2.5, 4, 6.3, 10, 16, 25, 40, 63, 100, 160)
FALLBACK_LEVELS_DBZ = tuple(range(10, 70, 5))


def colour_scale(units: str = "mm/h") -> Scale:
    """pysteps' intensity colours for ``mm/h`` (and ``dBZ``); a 0–1 grey scale for anything else."""
    import matplotlib.colors as mcolors

    if units in ("mm/h", "dBZ"):
        import contextlib
        import io
        import warnings

        # pysteps prints its config path on import, and its colour map calls matplotlib's
        # soon-deprecated set_bad/set_under
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore", PendingDeprecationWarning)
                from pysteps.visualization.precipfields import get_colormap

                cmap, norm, clevs, clevs_str = get_colormap("intensity", units, "pysteps")
        except ImportError:  # a machine without pysteps (a lent GPU box): the same levels, matplotlib colours
            import matplotlib

            clevs = FALLBACK_LEVELS_MMH if units == "mm/h" else FALLBACK_LEVELS_DBZ
            clevs_str = [f"{v:g}" for v in clevs]
            cmap = matplotlib.colormaps["turbo"].resampled(len(clevs) - 1)
            norm = mcolors.BoundaryNorm(clevs, cmap.N)
        cmap = cmap.with_extremes(bad=NODATA_COLOUR, under="white")
        label = "rain rate (mm/h)" if units == "mm/h" else "reflectivity (dBZ)"
        return Scale(cmap, norm, list(clevs), list(clevs_str), label, True)
    import matplotlib

    cmap = matplotlib.colormaps["Greys"].with_extremes(bad=NODATA_COLOUR)
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    return Scale(cmap, mcolors.Normalize(0.0, 1.0), ticks, [f"{t:g}" for t in ticks], units, False)


def grid_extent(x: np.ndarray | None, y: np.ndarray | None, projection: str | None) -> tuple | None:
    """``(left, right, bottom, top)`` in km of a grid whose pixel centres are ``x``/``y`` (metres,
    row 0 at ``y[0]``), or None without a CRS or coordinates."""
    if not projection or x is None or y is None or len(x) < 2 or len(y) < 2:
        return None
    x, y = np.asarray(x, dtype="float64") / 1000.0, np.asarray(y, dtype="float64") / 1000.0
    dx, dy = (x[-1] - x[0]) / (len(x) - 1), (y[-1] - y[0]) / (len(y) - 1)
    # imshow's extent: the outer pixel edges; origin "upper" puts row 0 at ``top``
    return (x[0] - dx / 2, x[-1] + dx / 2, y[-1] + dy / 2, y[0] - dy / 2)


def _minutes(m: float) -> str:
    return f"{m:+g} min" if m else "0 min"


def pick_leads(n_out: int, max_leads: int) -> np.ndarray:
    """Up to ``max_leads`` lead indices spread over ``0 .. n_out - 1``, always the first and the last."""
    return np.unique(np.linspace(0, n_out - 1, min(max_leads, n_out)).round().astype(int))


def _draw(ax, img: np.ndarray, scale: Scale, extent: tuple | None):
    """One map: the field in ``scale``'s colours, no data (NaN) grey and hatched over it."""
    k = -(-max(img.shape) // MAX_PANEL_PIXELS)
    img = img[::k, ::k] if k > 1 else img
    im = ax.imshow(img, cmap=scale.cmap, norm=scale.norm, interpolation="nearest", extent=extent, origin="upper")
    nodata = np.isnan(img)
    if nodata.all():
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize="small")
    elif nodata.any():
        ax.contourf(nodata.astype("float32"), levels=[0.5, 1.5], colors="none", hatches=[NODATA_HATCH],
                    extent=extent, origin="upper")
    return im


def forecast_figure(path: str | Path, *, dpi: int = 90, **fields) -> Path:
    """Write :func:`build_forecast_figure` (``fields``: its keyword arguments) as a PNG at ``path``."""
    fig = build_forecast_figure(**fields)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def build_forecast_figure(*, inputs: np.ndarray, model: np.ndarray, timestep_s: float,
                          observed: np.ndarray | None = None, flow: np.ndarray | None = None,
                          units: str = "mm/h", x: np.ndarray | None = None, y: np.ndarray | None = None,
                          projection: str | None = None, title: str = "", model_label: str = "model",
                          max_leads: int = 6, max_inputs: int = 3):
    """The matplotlib ``Figure`` of a forecast: last inputs, then observed / model / optical flow per lead.

    ``inputs`` (T_in, H, W), ``model`` (n_out, H, W), ``observed`` (up to n_out frames after the
    analysis time, or None) and ``flow`` (n_out, H, W or None), all in ``units``; NaN = no data.
    ``x``/``y``: pixel centres in metres, used (as km) with a ``projection``. Panel titles:
    ``input -10 min``, ``observed +5 min``, ``<model_label> +5 min``, ``optical flow +5 min``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    inputs, model = np.asarray(inputs, dtype="float32"), np.asarray(model, dtype="float32")
    if inputs.ndim != 3 or model.ndim != 3 or inputs.shape[1:] != model.shape[1:]:
        raise ValueError(f"inputs (T, H, W) and model (n_out, H, W) on one grid, got {inputs.shape} and {model.shape}")
    step_min = float(timestep_s) / 60.0
    n_out, (H, W) = model.shape[0], model.shape[1:]
    leads = pick_leads(n_out, max_leads)
    k_in = min(max_inputs, len(inputs))
    rows: list[tuple[str, list]] = [("input", [(inputs[-k_in + j], _minutes(-(k_in - 1 - j) * step_min))
                                               for j in range(k_in)])]
    if observed is not None and len(observed):
        obs = np.asarray(observed, dtype="float32")
        rows.append(("observed", [(obs[i] if i < len(obs) else None, _minutes((i + 1) * step_min)) for i in leads]))
    rows.append((model_label, [(model[i], _minutes((i + 1) * step_min)) for i in leads]))
    if flow is not None:
        rows.append(("optical flow", [(np.asarray(flow[i], dtype="float32"), _minutes((i + 1) * step_min))
                                      for i in leads]))
    scale = colour_scale(units)
    extent = grid_extent(x, y, projection)
    n_cols = max(len(r[1]) for r in rows)
    panel_w = 2.3
    panel_h = float(np.clip(panel_w * H / W, 1.2, 4.0)) + 0.35
    fig = Figure(figsize=(panel_w * n_cols + 1.4, panel_h * len(rows) + (0.9 if title else 0.6)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False, sharex=True, sharey=True)
    im = None
    for r, (name, panels) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(panels) or panels[c][0] is None:
                ax.set_axis_off()
                if c < len(panels):  # a lead past the archive's last frame
                    ax.set_title(f"{name} {panels[c][1]}\n(not observed)", fontsize="small", color="0.4")
                continue
            img, when = panels[c]
            im = _draw(ax, img, scale, extent)
            ax.set_title(f"{name} {when}", fontsize="small")
            if extent is None:
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.tick_params(labelsize="x-small")
                if r == len(rows) - 1 or (r == 0 and len(rows) == 1):
                    ax.set_xlabel("x (km)", fontsize="x-small")
                if c == 0:
                    ax.set_ylabel("y (km)", fontsize="x-small")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, aspect=30,
                          extend="max" if scale.rain else "neither")
        cb.set_ticks(scale.ticks, labels=scale.tick_labels)
        cb.ax.tick_params(labelsize="x-small")
        cb.set_label(scale.label, fontsize="small")
    handles = [Patch(facecolor=NODATA_COLOUR, hatch=NODATA_HATCH, edgecolor="0.3", label="no data")]
    if scale.rain:
        handles.append(Patch(facecolor="white", edgecolor="0.3", label=f"dry (< {scale.tick_labels[0]} {units})"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="x-small", frameon=False)
    if title:
        fig.suptitle(title, fontsize="small")
    return fig


def forecast_gif(path: str | Path, model: np.ndarray, timestep_s: float, units: str = "mm/h",
                 x: np.ndarray | None = None, y: np.ndarray | None = None, projection: str | None = None,
                 title: str = "") -> Path:
    """Animated GIF of the model's leads, in the colours of :func:`forecast_figure` (Pillow frames)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    model = np.asarray(model, dtype="float32")
    scale = colour_scale(units)
    extent = grid_extent(x, y, projection)
    H, W = model.shape[1:]
    frames = []
    for i, img in enumerate(model):
        fig = Figure(figsize=(4.6, float(np.clip(3.6 * H / W, 2.0, 6.0)) + 0.6), layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.subplots()
        im = _draw(ax, img, scale, extent)
        if extent is None:
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.tick_params(labelsize="x-small")
            ax.set_xlabel("x (km)", fontsize="x-small")
            ax.set_ylabel("y (km)", fontsize="x-small")
        cb = fig.colorbar(im, ax=ax, shrink=0.8)
        cb.set_ticks(scale.ticks, labels=scale.tick_labels)
        cb.ax.tick_params(labelsize="x-small")
        cb.set_label(scale.label, fontsize="x-small")
        ax.set_title(f"{title + ' ' if title else ''}{_minutes((i + 1) * float(timestep_s) / 60.0)}", fontsize="small")
        canvas.draw()
        frames.append(Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3]))
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=500, loop=0)
    return path

