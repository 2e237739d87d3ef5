"""The ConvLSTM cell of Shi et al. (2015), eq. (3), written literally.

    i = σ(Wxi * X + Whi * H + Wci ∘ C_prev + bi)
    f = σ(Wxf * X + Whf * H + Wcf ∘ C_prev + bf)
    C = f ∘ C_prev + i ∘ tanh(Wxc * X + Whc * H + bc)
    o = σ(Wxo * X + Who * H + Wco ∘ C + bo)
    H = o ∘ tanh(C)

``*`` is a 'same'-padded 2-D convolution, ``∘`` the Hadamard product.

Parameter layout (shared with the fast path in :mod:`convlstm_dist.models.fast`, so both
load the same ``state_dict``); gate order along the stacked dimension is i, f, c, o:

    weight_x  (4h, cin, kx, kx)   input-to-state kernels (absent when cin == 0)
    weight_h  (4h, h, kh, kh)     state-to-state kernels
    bias      (4h,)               one bias per gate
    w_ci, w_cf, w_co  (h, 1, 1)   per-channel peephole weights

Tensors are (N, C, H, W) per time step; the cell never sees the time axis.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_kernel(kernel: int, what: str, layer: str) -> int:
    """Validate a kernel size; return its 'same' padding."""
    if not isinstance(kernel, int) or kernel < 1:
        raise ValueError(f"{layer}: {what}={kernel!r} must be a positive odd integer")
    if kernel % 2 == 0:
        raise ValueError(f"{layer}: {what}={kernel} is even; ConvLSTM needs odd kernels for 'same' padding")
    return kernel // 2


def init_lstm_parameters(cell: nn.Module, fan_in: int) -> None:
    """Uniform ±1/sqrt(fan_in) weights, zero biases except the forget gate's (1), zero peepholes.

    Works for any cell with ``weight_x`` (or None), ``weight_h``, ``bias`` (4h, gate order i, f, c, o),
    ``w_ci``, ``w_cf``, ``w_co`` and ``hidden``.
    """
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        if cell.weight_x is not None:
            cell.weight_x.uniform_(-bound, bound)
        cell.weight_h.uniform_(-bound, bound)
        cell.bias.zero_()
        cell.bias[cell.hidden:2 * cell.hidden].fill_(1.0)
        for w in (cell.w_ci, cell.w_cf, cell.w_co):
            w.zero_()


def peephole_step(gate, c_prev: torch.Tensor, w_ci, w_cf, w_co) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's equations (3) for one time step, given ``gate(g)`` = W_xg*X_t + W_hg*H_{t-1} + b_g
    for g = 0..3 (i, f, c, o) and the peephole weights (``∘`` = Hadamard product)::

        i_t = σ(W_xi*X_t + W_hi*H_{t-1} + W_ci∘C_{t-1} + b_i)
        f_t = σ(W_xf*X_t + W_hf*H_{t-1} + W_cf∘C_{t-1} + b_f)
        C_t = f_t∘C_{t-1} + i_t∘tanh(W_xc*X_t + W_hc*H_{t-1} + b_c)
        o_t = σ(W_xo*X_t + W_ho*H_{t-1} + W_co∘C_t + b_o)
        H_t = o_t∘tanh(C_t)

    ``*`` is a convolution in the ConvLSTM cell and a matrix product in the FC-LSTM cell."""
    i = torch.sigmoid(gate(0) + w_ci * c_prev)
    f = torch.sigmoid(gate(1) + w_cf * c_prev)
    c = f * c_prev + i * torch.tanh(gate(2))
    o = torch.sigmoid(gate(3) + w_co * c)
    return o * torch.tanh(c), c


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer. ``in_channels=0`` means no input (the forecaster's first layer)."""

    def __init__(self, in_channels: int, hidden: int, input_kernel: int, state_kernel: int,
                 name: str = "layer"):
        super().__init__()
        if in_channels < 0 or hidden < 1:
            raise ValueError(f"{name}: in_channels={in_channels}, hidden={hidden} must be >= 0 and >= 1")
        self.name = name
        self.in_channels = in_channels
        self.hidden = hidden
        self.input_kernel = input_kernel
        self.state_kernel = state_kernel
        self.pad_x = check_kernel(input_kernel, "input_kernel", name) if in_channels else 0
        self.pad_h = check_kernel(state_kernel, "state_kernel", name)
        h = hidden
        if in_channels:
            self.weight_x = nn.Parameter(torch.empty(4 * h, in_channels, input_kernel, input_kernel))
        else:
            self.register_parameter("weight_x", None)
        self.weight_h = nn.Parameter(torch.empty(4 * h, h, state_kernel, state_kernel))
        self.bias = nn.Parameter(torch.empty(4 * h))
        self.w_ci = nn.Parameter(torch.empty(h, 1, 1))
        self.w_cf = nn.Parameter(torch.empty(h, 1, 1))
        self.w_co = nn.Parameter(torch.empty(h, 1, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform ±1/sqrt(fan_in) kernels, zero biases except forget gate = 1, zero peepholes."""
        init_lstm_parameters(self, fan_in=self.in_channels * self.input_kernel ** 2
                             + self.hidden * self.state_kernel ** 2)

    def extra_repr(self) -> str:
        return (f"{self.name}: in={self.in_channels}, hidden={self.hidden}, "
                f"input_kernel={self.input_kernel}, state_kernel={self.state_kernel}")

    def zero_state(self, like: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, C) zeros on ``like``'s device and dtype."""
        z = like.new_zeros(like.shape[0], self.hidden, height, width)
        return z, z

    def check_input(self, x: torch.Tensor | None) -> None:
        if self.in_channels == 0:
            if x is not None:
                raise ValueError(f"{self.name}: this layer has no input, got a tensor {tuple(x.shape)}")
            return
        if x is None or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = None if x is None else tuple(x.shape)
            raise ValueError(f"{self.name}: expected input (N, {self.in_channels}, H, W), got {got}")

    def _gate(self, g: int, x: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """Wx_g * X + Wh_g * H + b_g for gate index ``g``, from weight slices."""
        s = slice(g * self.hidden, (g + 1) * self.hidden)
        out = F.conv2d(h, self.weight_h[s], self.bias[s], padding=self.pad_h)
        if x is not None:
            out = out + F.conv2d(x, self.weight_x[s], None, padding=self.pad_x)
        return out

    def forward(self, x: torch.Tensor | None, state: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step: x (N, cin, H, W) or None, state (H, C) each (N, h, H, W) -> (H, C)."""
        self.check_input(x)
        h_prev, c_prev = state
        return peephole_step(lambda g: self._gate(g, x, h_prev), c_prev, self.w_ci, self.w_cf, self.w_co)

    # Stacked transforms used by the fast path (convlstm_dist.models.fast.run_layer).
    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """All four input-to-state convolutions at once, bias included: (N, cin, H, W) -> (N, 4h, H, W)."""
        self.check_input(x)
        return F.conv2d(x, self.weight_x, self.bias, padding=self.pad_x)

    def project_state(self, h: torch.Tensor, bias: bool) -> torch.Tensor:
        """All four state-to-state convolutions at once: (N, h, H, W) -> (N, 4h, H, W)."""
        return F.conv2d(h, self.weight_h, self.bias if bias else None, padding=self.pad_h)
