"""The encoder–forecaster ConvLSTM of Shi et al. (2015), fig. 3.

Call contract: ``model(x, n_out, state=None) -> (y, state)``

* ``x`` (B, T_in, C, H, W) input frames, ``y`` (B, n_out, C, H, W) raw outputs (logits for a BCE
  loss, values for MSE/MAE); no loss is computed here.
* Frames are patched space-to-depth (C, H, W) -> (C·p², H/p, W/p) on the way in and back on the
  way out (``F.pixel_unshuffle`` / ``F.pixel_shuffle``); H and W must be divisible by ``patch``.
* ``state`` (input and output) is the encoder's list of per-layer (H, C), each
  (B, hidden[l], H/p, W/p). ``None`` means zeros. The returned state is the encoder state after
  consuming ``x``, so feeding the next frames with it continues the sequence.
* The encoder runs L layers over the input; forecaster layer l starts from encoder layer l's
  final (H, C); the forecaster's first layer has no input; each output frame is a 1×1 conv over
  the concatenation of all forecaster layers' H.

``impl="literal"`` runs time-major with the literal cell (8 gate convs per step);
``impl="fast"`` runs the same parameters layer-major (see :mod:`convlstm_dist.models.fast`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convlstm_dist.models.cell import ConvLSTMCell
from convlstm_dist.models.fast import run_layer

State = list[tuple[torch.Tensor, torch.Tensor]]
IMPLS = ("fast", "literal")


def check_layers(hidden: list[int], **kernels: list[int]) -> None:
    if not hidden:
        raise ValueError("hidden must list at least one layer width")
    for key, ks in kernels.items():
        if len(ks) != len(hidden):
            raise ValueError(f"{key} has {len(ks)} entries but hidden has {len(hidden)} layers: {ks} vs {hidden}")


def check_frames(x: torch.Tensor, in_channels: int, patch: int, n_out: int) -> None:
    if x.dim() != 5:
        raise ValueError(f"expected input of shape (B, T, C, H, W), got rank {x.dim()} {tuple(x.shape)}")
    if x.shape[2] != in_channels:
        raise ValueError(f"input has {x.shape[2]} channels, model expects in_channels={in_channels} "
                         f"(shape {tuple(x.shape)} is read as B, T, C, H, W)")
    if x.shape[-2] % patch or x.shape[-1] % patch:
        raise ValueError(f"frame size {tuple(x.shape[-2:])} is not divisible by patch={patch}")
    if n_out < 1:
        raise ValueError(f"n_out={n_out} must be >= 1")


def run_literal(encoder, forecaster, xs: torch.Tensor, state: State, n_out: int, readout) -> tuple[State, torch.Tensor]:
    """The paper's recurrence, one step of every layer at a time (fig. 3), for any cell type.

    ``xs`` (B, T, ...) are the per-step encoder inputs; ``state`` the encoder's initial per-layer
    (H, C); forecaster layer l starts from encoder layer l's final state and its first layer has no
    input; ``readout(forecaster states)`` makes each output frame. Returns (encoder state, (B, n_out, ...)).
    """
    state = list(state)
    for t in range(xs.shape[1]):
        inp = xs[:, t]
        for l, cell in enumerate(encoder):
            state[l] = cell(inp, state[l])
            inp = state[l][0]
    fstate, ys = list(state), []
    for _ in range(n_out):
        inp = None
        for l, cell in enumerate(forecaster):
            fstate[l] = cell(inp, fstate[l])
            inp = fstate[l][0]
        ys.append(readout(fstate))
    return state, torch.stack(ys, dim=1)


class EncoderForecaster(nn.Module):
    def __init__(self, in_channels: int, hidden: list[int], input_kernel: list[int],
                 state_kernel: list[int], patch: int = 1, height: int = 64, width: int = 64,
                 impl: str = "fast", channels_last: bool = False, compile: bool = False):
        super().__init__()
        hidden, input_kernel, state_kernel = list(hidden), list(input_kernel), list(state_kernel)
        check_layers(hidden, input_kernel=input_kernel, state_kernel=state_kernel)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
        if patch < 1 or height % patch or width % patch:
            raise ValueError(f"height={height}, width={width} must be divisible by patch={patch}")
        self.hparams = dict(kind="convlstm", in_channels=in_channels, hidden=hidden,
                            input_kernel=input_kernel, state_kernel=state_kernel, patch=patch,
                            height=height, width=width, impl=impl)
        self.in_channels, self.patch, self.impl = in_channels, patch, impl
        self.channels_last, self.compile = channels_last, compile
        cp = in_channels * patch * patch
        ins = [cp] + hidden[:-1]
        self.encoder = nn.ModuleList(
            ConvLSTMCell(ins[l], hidden[l], input_kernel[l], state_kernel[l], f"encoder layer {l + 1}")
            for l in range(len(hidden)))
        self.forecaster = nn.ModuleList(
            ConvLSTMCell(0 if l == 0 else hidden[l - 1], hidden[l], input_kernel[l], state_kernel[l],
                         f"forecaster layer {l + 1}")
            for l in range(len(hidden)))
        self.output = nn.Conv2d(sum(hidden), cp, kernel_size=1)
        if channels_last:  # fast path only; same values, NHWC strides for cuDNN/oneDNN
            self.to(memory_format=torch.channels_last)

    def _check_state(self, state: State | None, x: torch.Tensor) -> None:
        if state is None:
            return
        if len(state) != len(self.encoder):
            raise ValueError(f"state has {len(state)} layers, model has {len(self.encoder)}")
        hw = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        for cell, (h, c) in zip(self.encoder, state):
            want = (x.shape[0], cell.hidden) + hw
            if tuple(h.shape) != want or tuple(c.shape) != want:
                raise ValueError(f"{cell.name}: state must be two tensors {want}, "
                                 f"got {tuple(h.shape)}, {tuple(c.shape)}")

    def forward(self, x: torch.Tensor, n_out: int, state: State | None = None) -> tuple[torch.Tensor, State]:
        check_frames(x, self.in_channels, self.patch, n_out)
        self._check_state(state, x)
        if self.impl == "literal":
            return self._forward_literal(x, n_out, state)
        return self._forward_fast(x, n_out, state)

    # ---- literal: time-major, one step of every layer at a time (paper fig. 3) ----
    def _forward_literal(self, x: torch.Tensor, n_out: int, state: State | None) -> tuple[torch.Tensor, State]:
        B, T, C, H, W = x.shape
        p = self.patch
        xs = F.pixel_unshuffle(x.reshape(B * T, C, H, W), p).view(B, T, C * p * p, H // p, W // p)
        if state is None:
            state = [cell.zero_state(x, H // p, W // p) for cell in self.encoder]
        state, ys = run_literal(self.encoder, self.forecaster, xs, state, n_out,
                                lambda fstate: self.output(torch.cat([h for h, _ in fstate], dim=1)))
        y = F.pixel_shuffle(ys.flatten(0, 1), p)
        return y.reshape(B, n_out, C, H, W), state

    # ---- fast: layer-major, hoisted input convs, fused gates ----
    def _forward_fast(self, x: torch.Tensor, n_out: int, state: State | None) -> tuple[torch.Tensor, State]:
        B, T, C, H, W = x.shape
        p = self.patch
        seq = F.pixel_unshuffle(x.transpose(0, 1).reshape(T * B, C, H, W), p)  # time-major
        if self.channels_last:
            seq = seq.contiguous(memory_format=torch.channels_last)
        enc_state: State = []
        last = len(self.encoder) - 1
        for l, cell in enumerate(self.encoder):
            hs, hc = run_layer(cell, seq, T, B, None if state is None else state[l], self.compile)
            enc_state.append(hc)
            if l < last:
                seq = torch.cat(hs, dim=0)
        seq, outs = None, []
        for l, cell in enumerate(self.forecaster):
            hs, _ = run_layer(cell, seq, n_out, B, enc_state[l], self.compile)
            seq = torch.cat(hs, dim=0)
            outs.append(seq)
        y = F.pixel_shuffle(self.output(torch.cat(outs, dim=1)), p)  # (n_out*B, C, H, W)
        return y.reshape(n_out, B, C, H, W).transpose(0, 1).contiguous(), enc_state
