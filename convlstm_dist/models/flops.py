"""Analytic FLOP counts.

Convention: a multiply-add is 2 FLOPs; only convolutions and matmuls are counted (gate
pointwise ops, patching and biases are < 1 % and ignored); every step of the recurrence is
counted densely (the fast path's skipped state conv at t=0 is not subtracted). One training
sample = forward × 3 (forward + backward ≈ 2 × forward).
"""

from __future__ import annotations

from torch import nn

from convlstm_dist.models.encoder_forecaster import EncoderForecaster
from convlstm_dist.models.fc_lstm import FCLSTM


def _convlstm_forward(model: EncoderForecaster, in_len: int, n_out: int, height: int, width: int) -> int:
    hw = (height // model.patch) * (width // model.patch)
    total = 0
    for cells, steps in ((model.encoder, in_len), (model.forecaster, n_out)):
        for cell in cells:
            macs = 4 * cell.hidden * (cell.in_channels * cell.input_kernel ** 2 + cell.hidden * cell.state_kernel ** 2)
            total += 2 * macs * hw * steps
    total += 2 * model.output.in_channels * model.output.out_channels * hw * n_out
    return total


def _fclstm_forward(model: FCLSTM, in_len: int, n_out: int, height: int, width: int) -> int:
    total = 0
    for cells, steps in ((model.encoder, in_len), (model.forecaster, n_out)):
        for cell in cells:
            total += 2 * 4 * cell.hidden * (cell.in_features + cell.hidden) * steps
    total += 2 * model.output.in_features * model.output.out_features * n_out
    return total


_FORWARD = {EncoderForecaster: _convlstm_forward, FCLSTM: _fclstm_forward}


def forward_flops(model: nn.Module, in_len: int, n_out: int, height: int, width: int) -> int:
    """FLOPs of one forward pass of one sample."""
    for cls, fn in _FORWARD.items():
        if isinstance(model, cls):
            return fn(model, in_len, n_out, height, width)
    raise TypeError(f"no FLOP count for {type(model).__name__}; known: {', '.join(c.__name__ for c in _FORWARD)}")


def count_flops(model: nn.Module, in_len: int, n_out: int, height: int, width: int) -> int:
    """FLOPs of one training sample (forward + backward = 3 × forward)."""
    return 3 * forward_flops(model, in_len, n_out, height, width)


def human(flops: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g} FLOP"
