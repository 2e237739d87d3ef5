"""Fast path: the same math and the same parameters as the literal cells, computed in fewer,
bigger kernels.

* Layer-major order: a layer consumes its whole input sequence before the next layer starts
  (valid because layer l at time t needs only layer l-1 at time t and itself at t-1). So every
  input-to-state convolution (including the encoder's first layer) runs once over all T steps as
  one batched conv; only the state-to-state conv stays inside the time loop.
* Stacked gates: one conv / matmul for the four gates, then one pointwise function for the
  gate arithmetic (``lstm_pointwise``), optionally ``torch.compile``-d into a single fused
  kernel on CUDA (ignored on CPU).
* A zero initial state skips the state conv at t=0 (W * 0 = 0 exactly).
* The whole training step as one CUDA graph (optimizer and loss included) lives with the
  trainer: ``convlstm_dist.train.graph_step.CudaGraphTrainStep``.

Where it pays: the fast path removes kernel launches, weight-slice copies and small GEMMs, which
is what limits a GPU. It does not remove FLOPs (only the t=0 state conv, ~3 %), so on a CPU that
is already compute-bound at batch 16 it runs at about the literal's speed (measured on the 2-core
dev box, fp32, paper Moving MNIST config: literal 8.2-8.7 s/step, fast 8.8-9.3 s/step).

Sequences inside this module are time-major and flattened: (T*B, C, H, W) for conv cells,
(T*B, F) for FC cells, so that the slice of step t is contiguous.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def lstm_pointwise(g: torch.Tensor, c: torch.Tensor, w_ci: torch.Tensor, w_cf: torch.Tensor,
                   w_co: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate arithmetic of one step: g (N, 4h, ...) stacked pre-activations i,f,c,o (bias included)."""
    gi, gf, gc, go = g.chunk(4, 1)
    i = torch.sigmoid(gi + w_ci * c)
    f = torch.sigmoid(gf + w_cf * c)
    c = f * c + i * torch.tanh(gc)
    o = torch.sigmoid(go + w_co * c)
    return o * torch.tanh(c), c


def lstm_pointwise_sum(xg: torch.Tensor, hg: torch.Tensor, c: torch.Tensor, w_ci: torch.Tensor,
                       w_cf: torch.Tensor, w_co: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lstm_pointwise(xg + hg, ...)``: the add is fused too when compiled."""
    return lstm_pointwise(xg + hg, c, w_ci, w_cf, w_co)


def lstm_pointwise_first(g: torch.Tensor, w_co: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step from a zero state (H = C = 0): the forget gate and input peephole drop out."""
    gi, _, gc, go = g.chunk(4, 1)
    c = torch.sigmoid(gi) * torch.tanh(gc)
    o = torch.sigmoid(go + w_co * c)
    return o * torch.tanh(c), c


_EAGER = {"full": lstm_pointwise, "sum": lstm_pointwise_sum, "first": lstm_pointwise_first}
_COMPILED: dict[str, Callable] = {}


def pointwise(kind: str, like: torch.Tensor, compile: bool) -> Callable:
    """The gate function ``kind``; compiled (once per process, dynamic shapes) only if asked and on CUDA."""
    if not (compile and like.is_cuda):
        return _EAGER[kind]
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(_EAGER[kind], dynamic=True, fullgraph=True)
    return _COMPILED[kind]


def run_layer(cell: nn.Module, xseq: torch.Tensor | None, steps: int, batch: int,
              state: tuple[torch.Tensor, torch.Tensor] | None, compile: bool = False
              ) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Run one layer over ``steps`` time steps.

    ``cell`` provides ``project_input(seq)`` (stacked input-to-state transform with bias) and
    ``project_state(h, bias: bool)``; ``xseq`` is (steps*batch, cin, ...) time-major or None
    (no input, then ``state`` is required); ``state`` None means zeros.
    Returns the list of H per step and the final (H, C).
    """
    if xseq is None and state is None:
        raise ValueError(f"{cell.name}: a layer without input needs an initial state")
    xg = cell.project_input(xseq) if xseq is not None else None
    ref = xg if xg is not None else state[0]
    f_full, f_sum, f_first = (pointwise(k, ref, compile) for k in ("full", "sum", "first"))
    h, c = (None, None) if state is None else state
    hs = []
    for t in range(steps):
        xt = None if xg is None else xg[t * batch:(t + 1) * batch]
        if h is None:
            h, c = f_first(xt, cell.w_co)
        elif xt is None:
            h, c = f_full(cell.project_state(h, bias=True), c, cell.w_ci, cell.w_cf, cell.w_co)
        else:
            h, c = f_sum(xt, cell.project_state(h, bias=False), c, cell.w_ci, cell.w_cf, cell.w_co)
        hs.append(h)
    return hs, (h, c)
