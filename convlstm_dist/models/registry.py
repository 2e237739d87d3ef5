"""``build_model(kind, ...)``: the one way to construct a model (from a config or a checkpoint).

``model.hparams`` holds exactly the keyword arguments below (``kind`` included, performance
flags excluded), so ``build_model(**model.hparams)`` rebuilds the architecture.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from convlstm_dist.models.encoder_forecaster import IMPLS, EncoderForecaster
from convlstm_dist.models.fc_lstm import FCLSTM
from convlstm_dist.models.lagrangian import FRAMES, LagrangianForecaster


def _convlstm(*, frame: str = "eulerian", **kw) -> nn.Module:
    return (LagrangianForecaster if frame == "lagrangian" else EncoderForecaster)(**kw)


def _fclstm(*, channels_last: bool = False, frame: str = "eulerian", **kw) -> nn.Module:
    if frame != "eulerian":
        raise ValueError(f"model.frame={frame!r} needs kind=convlstm; FC-LSTM forecasts in the grid's own frame")
    return FCLSTM(**kw)  # channels_last means nothing for flat vectors


MODELS: dict[str, Callable[..., nn.Module]] = {"convlstm": _convlstm, "fclstm": _fclstm}


def available_models() -> list[str]:
    """The model kinds :func:`build_model` builds (``model.kind``)."""
    return sorted(MODELS)


def build_model(kind: str, *, in_channels: int, hidden: list[int], input_kernel: list[int],
                state_kernel: list[int], patch: int, height: int, width: int, impl: str = "fast",
                channels_last: bool = False, compile: bool = False, frame: str = "eulerian",
                residual_gate: float | None = None, residual_gate_leads: int = 1) -> nn.Module:
    """Build a model. ``channels_last`` and ``compile`` (fused gates via torch.compile, CUDA only)
    are performance options of the fast path; they change no parameter and no result. ``frame``:
    ``eulerian`` (the paper's model on the grid) or ``lagrangian`` (:mod:`.lagrangian`: the same
    network forecasting in the frame that moves with the rain); ``residual_gate`` /
    ``residual_gate_leads``: its residual gate (:class:`.lagrangian.LagrangianForecaster`)."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(sorted(MODELS))}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; valid: {', '.join(FRAMES)}")
    extra = {"frame": frame} if frame != "eulerian" else {}
    if residual_gate is not None:
        if frame != "lagrangian":
            raise ValueError(f"residual_gate gates the residual of frame=lagrangian; the {frame} model has none")
        extra.update(residual_gate=residual_gate, residual_gate_leads=residual_gate_leads)
    return MODELS[kind](in_channels=in_channels, hidden=list(hidden), input_kernel=list(input_kernel),
                        state_kernel=list(state_kernel), patch=patch, height=height, width=width,
                        impl=impl, channels_last=channels_last, compile=compile, **extra)
