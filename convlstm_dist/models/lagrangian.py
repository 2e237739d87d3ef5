"""The encoder–forecaster in Lagrangian coordinates (``model.frame: lagrangian``).

Optical-flow nowcasting carries the last frame along the motion of the rain; it cannot forecast
growth or decay. The paper's ConvLSTM has to learn motion *and* growth from the data, and a short
training budget teaches it neither. This variant splits the work (the idea of Lagrangian
convolutional networks for radar nowcasting, e.g. Ritvanen et al. 2023, with a simpler motion
field):

1. the motion of the input frames is estimated on the device (:func:`.motion.estimate_motion`,
   phase correlation; no parameters, no gradient);
2. every input frame is shifted to line up with the last one (:func:`.motion.advect`);
3. the same :class:`EncoderForecaster` (same parameters, same cell) forecasts in this moving frame,
   as a residual on the last frame; its output convolution starts at zero, so the untrained model is
   the advected last frame (Lagrangian persistence), and training learns growth, decay and smoothing;
4. lead ``k``'s forecast is carried ``k`` steps along the motion.

``residual_gate`` (optional, in the model range; the config's ``model.residual_gate_mmh`` converted by
the quantity): for the first ``residual_gate_leads`` leads the residual acts only where the last input
frame is at least that value; elsewhere those leads are Lagrangian persistence. Leave-one-out on the
five shared events showed the trained residual adding false alarms at 5 min on the light-rain fringe
(FAR 0.14 vs 0.11 of optical flow); gating lead 1 at 0.5 mm/h removed them
(``benchmarks/results/radar-heldout-2026-12-05.md``). It changes no parameter (a fixed mask).

Same call contract as :class:`EncoderForecaster` (``model(x, n_out) -> (y, state)``), same
``state_dict`` keys; ``state`` continuation is not supported (the motion is re-estimated from ``x``).
``model(x, n_out, motion=v)`` uses a precomputed motion field instead of step 1 (at evaluation, the
scored crop's slice of the motion estimated on the whole radar frame, shared with the baselines:
:func:`convlstm_dist.nowcast.evaluation.score_chunk`).
Model space must be one where 0 is dry and values add (``rain_norm``), not logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convlstm_dist.models.encoder_forecaster import EncoderForecaster, State
from convlstm_dist.models.motion import advect, estimate_motion

FRAMES = ("eulerian", "lagrangian")


class LagrangianForecaster(EncoderForecaster):
    def __init__(self, *args, residual_gate: float | None = None, residual_gate_leads: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.hparams["frame"] = "lagrangian"
        check_residual_gate(residual_gate, residual_gate_leads)
        self.residual_gate = None if residual_gate is None else float(residual_gate)
        self.residual_gate_leads = int(residual_gate_leads)
        if residual_gate is not None:  # models without a gate keep their hparams
            self.hparams.update(residual_gate=self.residual_gate, residual_gate_leads=self.residual_gate_leads)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor, n_out: int, state: State | None = None,
                motion: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """``motion`` (B, 2, H, W), optional: a precomputed motion field on ``x``'s grid in pixels per
        step, :mod:`.motion`'s convention (``[:, 0]`` along rows, ``[:, 1]`` along columns; e.g. a
        crop's slice of a motion field estimated on the whole radar frame); ``None``: estimated from
        ``x`` itself (:func:`estimate_motion`)."""
        if state is not None:
            raise ValueError("the Lagrangian forecaster re-estimates motion from x: pass state=None")
        B, T, C, H, W = x.shape
        v = _motion(x, motion)
        aligned = torch.stack([advect(x[:, t], v, T - 1 - t) for t in range(T)], dim=1)
        z, enc_state = super().forward(aligned, n_out)
        z = self._gate(z, x[:, -1])
        z = z + x[:, -1:]  # residual on the last frame, in the moving frame
        y = torch.stack([advect(z[:, k], v, k + 1) for k in range(n_out)], dim=1)
        return y, enc_state

    def _gate(self, z: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """The residual ``z`` (B, n_out, C, H, W) with its first ``residual_gate_leads`` leads zeroed where
        the last frame ``last`` (B, C, H, W; first channel, model range) is below ``residual_gate``."""
        if self.residual_gate is None:
            return z
        k = min(self.residual_gate_leads, z.shape[1])
        wet = (last[:, :1] >= self.residual_gate).to(z.dtype)  # (B, 1, H, W)
        return torch.cat([z[:, :k] * wet[:, None], z[:, k:]], dim=1)


def check_residual_gate(residual_gate: float | None, residual_gate_leads: int) -> None:
    """``ValueError`` unless the gate is off (``None``) or a positive finite value over ``>= 1`` leads."""
    if residual_gate is not None and not (math.isfinite(residual_gate) and residual_gate > 0):
        raise ValueError(f"residual_gate must be a positive value in the model range or None, got {residual_gate}")
    if int(residual_gate_leads) < 1:
        raise ValueError(f"residual_gate_leads must be >= 1, got {residual_gate_leads}")


def _motion(x: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
    """The motion the forecaster uses for ``x`` (B, T, C, H, W): ``motion`` when given (checked), else
    estimated from the first channel of ``x``."""
    if motion is None:
        return estimate_motion(x[:, :, 0])  # (B, 2, H, W), from the first channel
    B, _, _, H, W = x.shape
    motion = torch.as_tensor(motion)
    if tuple(motion.shape) != (B, 2, H, W):
        raise ValueError(f"motion must have shape (B, 2, H, W) = {(B, 2, H, W)}, got {tuple(motion.shape)}")
    if not bool(torch.isfinite(motion).all()):
        raise ValueError("motion must be finite")
    return motion.to(device=x.device, dtype=torch.float32)


@torch.no_grad()
def lagrangian_source_valid(x: torch.Tensor, valid: torch.Tensor, n_out: int,
                            motion: torch.Tensor | None = None) -> torch.Tensor:
    """Where a Lagrangian forecast has an observed source: ``valid`` (B, H, W), the last input frame's
    coverage, carried ``k + 1`` steps along the motion the forecaster uses for ``x`` (B, T, C, H, W)
    (``motion`` when given, as :meth:`LagrangianForecaster.forward`, else its estimate from ``x``),
    for lead ``k`` -> (B, n_out, H, W) bool. A pixel whose trajectory starts outside the grid or on
    no-data (bilinear weight of covered pixels < 0.5, as the optical-flow baseline) has none."""
    v = _motion(x, motion)  # the same call on the same input as forward(): the same motion
    m = valid[:, None].float()
    return torch.cat([advect(m, v, k + 1) >= 0.5 for k in range(int(n_out))], dim=1)
