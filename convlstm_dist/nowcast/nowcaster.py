"""Inference without Ray: load a trained model and forecast from physical frames.

    from convlstm_dist.nowcast.nowcaster import Nowcaster
    nc = Nowcaster.load("workdir/runs/demo-knmi/checkpoint_000001")   # or "models:/demo-knmi/1", "demo-knmi"
    fcst_mmh = nc.predict(frames_mmh, n_out=12)                      # (T_in, H, W) -> (12, H, W)

What ``MODEL`` may be (tried in this order):

* a checkpoint directory or ``checkpoint.pt`` file (:mod:`convlstm_dist.checkpoint`);
* an MLflow model URI: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``,
  ``runs:/RUN_ID/model``;
* a registered MLflow model name (its latest version).

MLflow models are the LoggedModel's ``artifacts/checkpoint.pt`` (the run's ``model/checkpoint.pt``
artifact for models logged before the pyfunc flavour): a slim checkpoint (state dict, resolved config
and quantity). The same model also loads with ``mlflow.pyfunc.load_model`` (see
:mod:`convlstm_dist.nowcast.pyfunc_model`). Nothing is unpickled beyond tensors and plain data unless the
caller passes ``trust=True`` (``--trust-model``). The tracking URI is the argument, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``.

Units: ``predict`` takes frames in the archive's physical unit (``rain_mmh`` default, ``refl_dbz``
with a Z–R relation, or ``intensity``) with NaN = no data (fed to the model as 0) and returns
mm/h (``intensity`` for Moving MNIST models). No data stays no data: a forecast pixel is NaN where
the model has no observed source for it, i.e. where the last input frame is NaN (Eulerian models,
like persistence), or, for ``model.frame: lagrangian``, where that pixel's trajectory along the
model's motion estimate starts outside the grid or on a NaN pixel of the last frame (like the
optical-flow baseline). Frames of any size
work: a grid the model's patch does not divide is padded with no-data and the forecast cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from convlstm_dist.addresses import missing_sqlite, resolve_tracking_uri
from convlstm_dist.data import get_quantity, quantity_of_source, quantity_of_variable
from convlstm_dist.errors import UserError
from convlstm_dist.tracking import load_mlflow_model

MLFLOW_SCHEMES = ("models:/", "runs:/")
PIXELS_PER_FORWARD = 1 << 20  # windows x pixels per model forward at inference (memory bound)


def pad_to_patch(x: np.ndarray, patch: int) -> np.ndarray:
    """Pad the last two axes of ``x`` (model range) at the bottom and right up to multiples of ``patch``.

    The padding is 0, which in model range is both zero rain and no data (NaN input is fed as 0,
    ``data.quantity``), so the model sees a dry, empty strip of at most ``patch - 1`` pixels
    beyond the grid's edge; callers crop the forecast back to ``[..., :H, :W]``. Only the last
    row/column of patches mixes real and padded pixels; the top and left edges are untouched.
    A grid the patch divides is returned as is (the forecast is unchanged).
    """
    H, W = x.shape[-2:]
    ph, pw = -H % patch, -W % patch
    if not (ph or pw):
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], constant_values=0.0)


@dataclass
class Nowcaster:
    """A trained model plus what is needed to feed it: config, quantity and where it came from."""

    model: object
    config: object
    quantity: str
    source: str
    device: str = "cpu"
    info: dict = field(default_factory=dict)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, ref: str, tracking_uri: str | None = None, workdir: str | Path = "workdir",
             device: str = "cpu", trust: bool = False) -> "Nowcaster":
        """Load ``ref`` (see module docstring); a ref that resolves to nothing is a UserError.

        Models load as state dicts + config (``weights_only``); ``trust=True`` also allows files
        that need full unpickling (legacy pickled MLflow models): only for files you trust."""
        ref = str(ref)
        tried = []
        p = Path(ref)
        if p.exists():
            from convlstm_dist.checkpoint import load_model

            model, cfg, payload = load_model(p, device, trust=trust)
            return cls(model, cfg, payload["quantity"], f"checkpoint {p}", device,
                       {"kind": "checkpoint", "data_version": (payload.get("train") or {}).get("data_version")})
        tried.append(f"no checkpoint file or directory {ref}")
        looks_like_path = "/" in ref and not ref.startswith(MLFLOW_SCHEMES)
        if looks_like_path or ref.endswith(".pt"):
            raise UserError(f"cannot load model {ref!r}: {tried[0]}")
        uri = resolve_tracking_uri(tracking_uri, workdir)
        return cls._from_mlflow(ref, uri, device, tried, trust=trust)

    @classmethod
    def _from_mlflow(cls, ref: str, uri: str, device: str, tried: list[str], trust: bool = False) -> "Nowcaster":
        from convlstm_dist.config import config_from_dict

        if missing_sqlite(uri):
            tried.append(f"no MLflow database at {uri} (set --tracking-uri or MLFLOW_TRACKING_URI)")
            raise UserError(f"cannot load model {ref!r}: " + "; ".join(tried))

        model, payload, model_uri, run_id, name = load_mlflow_model(ref, uri, device, tried, trust=trust)
        cfg = config_from_dict(payload["config"], origin=f"the model of MLflow run {run_id}")
        model = getattr(model, "module", model).to(device).eval()

        quantity = payload.get("quantity") or quantity_of_source(cfg.data.source).name
        return cls(model, cfg, quantity, f"MLflow {model_uri} ({uri})", device,
                   {"kind": "mlflow", "model_uri": model_uri, "run_id": run_id, "name": name,
                    "tracking_uri": uri, "data_version": (payload.get("train") or {}).get("data_version")})

    # -- properties -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.get("name") or self.config.name

    @property
    def in_len(self) -> int:
        return int(self.config.data.in_len)

    @property
    def out_len(self) -> int:
        return int(self.config.data.out_len)

    @property
    def patch(self) -> int:
        return int(self.config.model.patch)

    def check_grid(self, H: int, W: int) -> None:
        """UserError unless the model can run on an ``H x W`` grid (any size for a ConvLSTM: a grid
        the patch does not divide is padded, see :func:`pad_to_patch`)."""
        m = self.config.model
        if m.kind == "fclstm" and (H, W) != (m.height, m.width):
            raise UserError(f"this FC-LSTM model only runs on {m.height}x{m.width} frames, got {H}x{W}")

    def model_grid(self, H: int, W: int) -> tuple[int, int]:
        """The grid the model actually runs on for ``H x W`` frames (padded up to the patch)."""
        p = self.patch
        return -(-H // p) * p, -(-W // p) * p

    @property
    def quantity_spec(self):
        """The model's :class:`~convlstm_dist.data.quantity.Quantity` (``quantity`` is its name)."""
        return get_quantity(self.quantity)

    def check_variable(self, variable: str) -> None:
        if quantity_of_variable(variable) is not self.quantity_spec:
            raise UserError(f"model predicts {self.quantity} but the data is {variable}: "
                            "a Moving MNIST model only runs on intensity data and a rain model only on rain/dBZ")

    # -- forecasting ------------------------------------------------------------------------
    def predict_model_range(self, x: np.ndarray, n_out: int, valid: np.ndarray | None = None,
                            motion: np.ndarray | None = None):
        """``x`` (B, T_in, 1, H, W) in model range, no NaN → (B, n_out, 1, H, W) in model range.

        Any ``H x W``: the model runs on :func:`pad_to_patch`'s grid and the forecast is cropped back.
        With ``valid`` (B, H, W), the last input frame's coverage, also returns where each lead has an
        observed source (B, n_out, H, W) bool: :meth:`source_valid`. ``motion`` (B, 2, H, W): a
        precomputed motion field for a Lagrangian model (:meth:`predict_batch`)."""
        import torch

        B, T, C, H, W = x.shape
        self.check_grid(H, W)
        motion = self._check_motion(motion, B, H, W)
        x = pad_to_patch(x, self.patch)
        if valid is not None:  # the padding is no data
            valid = np.pad(valid, [(0, 0), (0, x.shape[-2] - H), (0, x.shape[-1] - W)], constant_values=False)
        if motion is not None:  # the padding moves as the grid's edge next to it
            motion = np.pad(motion, [(0, 0), (0, 0), (0, x.shape[-2] - H), (0, x.shape[-1] - W)], mode="edge")
        # The fast path holds every step's gates of a layer at once (several GB per full radar
        # grid): forward at most ~PIXELS_PER_FORWARD pixels of windows at a time.
        per = max(1, PIXELS_PER_FORWARD // (x.shape[-2] * x.shape[-1]))
        out, masks = [], []
        with torch.inference_mode():
            for i in range(0, B, per):
                xt = torch.as_tensor(x[i:i + per], dtype=torch.float32, device=self.device)
                vt = None if motion is None else torch.as_tensor(motion[i:i + per], dtype=torch.float32,
                                                                  device=self.device)
                y, _ = self.model(xt, int(n_out)) if vt is None else self.model(xt, int(n_out), motion=vt)
                out.append(y.float().cpu().numpy()[..., :H, :W])  # crop the padding back off
                if valid is not None:
                    masks.append(self._source_valid(xt, valid[i:i + per], int(n_out), vt)[..., :H, :W])
        y = np.concatenate(out)
        return y if valid is None else (y, np.concatenate(masks))

    @property
    def frame(self) -> str:
        return str(getattr(self.config.model, "frame", "eulerian"))

    def _source_valid(self, xt, valid: np.ndarray, n_out: int, motion=None) -> np.ndarray:
        """Where lead ``k`` has an observed source: the last frame's coverage (Eulerian), or that
        coverage carried along the motion the model uses (Lagrangian frame: ``motion`` when given,
        else the model's own estimate)."""
        if self.frame == "lagrangian":
            import torch

            from convlstm_dist.models import lagrangian_source_valid

            return lagrangian_source_valid(xt, torch.as_tensor(valid, device=xt.device), n_out,
                                           motion).cpu().numpy()
        return np.repeat(valid[:, None], n_out, axis=1)

    def _check_motion(self, motion, B: int, H: int, W: int) -> np.ndarray | None:
        if motion is None:
            return None
        if self.frame != "lagrangian":
            raise ValueError(f"a motion field is only used by a Lagrangian model (model.frame: lagrangian), "
                             f"this one is {self.frame}")
        motion = np.asarray(motion, dtype=np.float32)
        if motion.shape != (B, 2, H, W):
            raise ValueError(f"motion must have shape (B, 2, H, W) = {(B, 2, H, W)}, got {motion.shape}")
        return motion

    def predict_batch(self, frames: np.ndarray, n_out: int | None = None, variable: str = "rain_mmh",
                      to_rain_mmh: Callable | None = None, motion: np.ndarray | None = None) -> np.ndarray:
        """(B, T_in, H, W) physical → (B, n_out, H, W) in mm/h (intensity for Moving MNIST); NaN where
        the model has no observed source (see the module docstring).

        ``motion`` (B, 2, H, W), only for a Lagrangian model: the motion to forecast along instead of
        the model's own estimate from ``frames``, in pixels per step, ``[along rows, along columns]``
        (:mod:`convlstm_dist.models.motion`; a pysteps field converts with ``motion.from_uv``) — e.g.
        the slice of a motion field estimated on the whole radar frame that ``frames`` are a crop of."""
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"frames must have shape (B, T_in, H, W), got {frames.shape}")
        n_out = int(n_out or self.out_len)
        if n_out < 1:
            raise UserError(f"n_out must be >= 1, got {n_out}")
        self.check_variable(variable)
        self.check_grid(*frames.shape[-2:])
        valid = np.isfinite(frames)
        try:
            x = self.quantity_spec.to_model(np.where(valid, frames, 0.0).astype(np.float32), variable, to_rain_mmh)
        except ValueError as err:
            raise UserError(str(err)) from None
        x = np.where(valid, x, 0.0).astype(np.float32)
        y, source = self.predict_model_range(x[:, :, None], n_out, valid[:, -1], motion)
        y = np.asarray(self.quantity_spec.from_model(y[:, :, 0]), dtype=np.float32)
        return np.where(source, y, np.float32(np.nan))

    def predict(self, frames: np.ndarray, n_out: int | None = None, variable: str = "rain_mmh",
                to_rain_mmh: Callable | None = None, motion: np.ndarray | None = None) -> np.ndarray:
        """(T_in, H, W) physical (NaN = no data) → (n_out, H, W) mm/h; ``n_out`` defaults to the trained
        out_len; ``motion`` (2, H, W) as in :meth:`predict_batch`."""
        frames = np.asarray(frames)
        if frames.ndim != 3:
            raise ValueError(f"frames must have shape (T_in, H, W), got {frames.shape}")
        return self.predict_batch(frames[None], n_out, variable, to_rain_mmh,
                                  None if motion is None else np.asarray(motion)[None])[0]
