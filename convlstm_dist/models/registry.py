"""``build_model(kind, ...)``: the one way to construct a model (from a config or a checkpoint).

``model.hparams`` holds exactly the keyword arguments below (``kind`` included, performance
flags excluded), so ``build_model(**model.hparams)`` rebuilds the architecture.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from convlstm_dist.models.encoder_forecaster import IMPLS, EncoderForecaster
from convlstm_dist.models.fc_lstm import FCLSTM


def _convlstm(**kw) -> nn.Module:
    return EncoderForecaster(**kw)


def _fclstm(*, channels_last: bool = False, **kw) -> nn.Module:
    return FCLSTM(**kw)  # channels_last means nothing for flat vectors


MODELS: dict[str, Callable[..., nn.Module]] = {"convlstm": _convlstm, "fclstm": _fclstm}


def build_model(kind: str, *, in_channels: int, hidden: list[int], input_kernel: list[int],
                state_kernel: list[int], patch: int, height: int, width: int, impl: str = "fast",
                channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Build a model. ``channels_last`` and ``compile`` (fused gates via torch.compile, CUDA only)
    are performance options of the fast path; they change no parameter and no result."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(sorted(MODELS))}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    return MODELS[kind](in_channels=in_channels, hidden=list(hidden), input_kernel=list(input_kernel),
                        state_kernel=list(state_kernel), patch=patch, height=height, width=width,
                        impl=impl, channels_last=channels_last, compile=compile)
