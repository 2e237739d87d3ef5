"""The FC-LSTM baseline of Shi et al. (2015): the encoder–forecaster with fully connected LSTM
layers (Graves 2013 peephole LSTM, per-unit peepholes) over flattened frames.

Same call contract as :class:`~convlstm_dist.models.encoder_forecaster.EncoderForecaster`:
``model(x, n_out, state=None) -> (y, state)``, x (B, T, C, H, W), y (B, n_out, C, H, W); state is
the encoder's list of per-layer (H, C), each (B, hidden[l]). Each output frame is a linear map of
the LAST forecaster layer's H. ``patch`` only permutes the flattened vector, so it has no effect
on the math; it is accepted (and checked) for a config shared with the ConvLSTM.

Parameter layout per cell (gate order i, f, c, o): ``weight_x (4h, in)`` (absent without input),
``weight_h (4h, h)``, ``bias (4h,)``, ``w_ci, w_cf, w_co (h,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convlstm_dist.models.cell import init_lstm_parameters, peephole_step
from convlstm_dist.models.encoder_forecaster import IMPLS, State, check_frames, run_literal
from convlstm_dist.models.fast import run_layer


class FCLSTMCell(nn.Module):
    def __init__(self, in_features: int, hidden: int, name: str = "layer"):
        super().__init__()
        self.name, self.in_features, self.hidden = name, in_features, hidden
        h = hidden
        self.weight_x = nn.Parameter(torch.empty(4 * h, in_features)) if in_features else None
        self.weight_h = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.w_ci = nn.Parameter(torch.empty(h))
        self.w_cf = nn.Parameter(torch.empty(h))
        self.w_co = nn.Parameter(torch.empty(h))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_lstm_parameters(self, fan_in=self.in_features + self.hidden)

    def extra_repr(self) -> str:
        return f"{self.name}: in={self.in_features}, hidden={self.hidden}"

    def _gate(self, g: int, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        s = slice(g * self.hidden, (g + 1) * self.hidden)
        out = F.linear(h, self.weight_h[s], self.bias[s])
        return out if x is None else out + F.linear(x, self.weight_x[s])

    def forward(self, x: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Literal step: x (N, in) or None, state (H, C) each (N, h)."""
        h_prev, c_prev = state
        return peephole_step(lambda g: self._gate(g, x, h_prev), c_prev, self.w_ci, self.w_cf, self.w_co)

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_x, self.bias)

    def project_state(self, h: torch.Tensor, bias: bool) -> torch.Tensor:
        return F.linear(h, self.weight_h, self.bias if bias else None)


class FCLSTM(nn.Module):
    def __init__(self, in_channels: int, hidden: list[int], patch: int = 1, height: int = 64,
                 width: int = 64, impl: str = "fast", input_kernel: list[int] | None = None,
                 state_kernel: list[int] | None = None, compile: bool = False):
        """``input_kernel`` / ``state_kernel`` are unused (kept so one config builds either kind)."""
        super().__init__()
        hidden = list(hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden must list positive layer widths, got {hidden}")
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
        if patch < 1 or height % patch or width % patch:
            raise ValueError(f"height={height}, width={width} must be divisible by patch={patch}")
        self.hparams = dict(kind="fclstm", in_channels=in_channels, hidden=hidden,
                            input_kernel=list(input_kernel or []), state_kernel=list(state_kernel or []),
                            patch=patch, height=height, width=width, impl=impl)
        self.in_channels, self.patch, self.impl, self.compile = in_channels, patch, impl, compile
        self.frame = (in_channels, height, width)
        n = in_channels * height * width
        ins = [n] + hidden[:-1]
        self.encoder = nn.ModuleList(FCLSTMCell(ins[l], hidden[l], f"encoder layer {l + 1}")
                                     for l in range(len(hidden)))
        self.forecaster = nn.ModuleList(FCLSTMCell(0 if l == 0 else hidden[l - 1], hidden[l],
                                                   f"forecaster layer {l + 1}") for l in range(len(hidden)))
        self.output = nn.Linear(hidden[-1], n)

    def forward(self, x: torch.Tensor, n_out: int, state: State | None = None) -> tuple[torch.Tensor, State]:
        check_frames(x, self.in_channels, self.patch, n_out)
        if tuple(x.shape[2:]) != self.frame:
            raise ValueError(f"FC-LSTM was built for frames {self.frame}, got {tuple(x.shape[2:])}")
        B, T = x.shape[:2]
        if state is not None and (len(state) != len(self.encoder) or any(
                tuple(h.shape) != (B, cell.hidden) or tuple(c.shape) != (B, cell.hidden)
                for cell, (h, c) in zip(self.encoder, state))):
            raise ValueError(f"state must be {len(self.encoder)} pairs (H, C) of shape (B, hidden[l])")
        if self.impl == "literal":
            xs = x.reshape(B, T, -1)
            state = list(state) if state is not None else [
                (x.new_zeros(B, c.hidden), x.new_zeros(B, c.hidden)) for c in self.encoder]
            state, ys = run_literal(self.encoder, self.forecaster, xs, state, n_out,
                                    lambda fstate: self.output(fstate[-1][0]))
            return ys.view(B, n_out, *self.frame), state
        seq, enc_state = x.transpose(0, 1).reshape(T * B, -1), []
        for l, cell in enumerate(self.encoder):
            hs, hc = run_layer(cell, seq, T, B, None if state is None else state[l], self.compile)
            enc_state.append(hc)
            seq = torch.cat(hs, dim=0)
        seq = None
        for l, cell in enumerate(self.forecaster):
            hs, _ = run_layer(cell, seq, n_out, B, enc_state[l], self.compile)
            seq = torch.cat(hs, dim=0)
        y = self.output(seq).view(n_out, B, *self.frame)
        return y.transpose(0, 1).contiguous(), enc_state
