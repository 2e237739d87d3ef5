"""The whole training step (forward, loss, backward, clipping, optimizer) as one CUDA graph.

Replaying one graph removes the kernel-launch overhead of the unrolled recurrence, which is what
limits a GPU on ConvLSTM's many small kernels. Used by the step engine's ``graph`` mode
(``train/engine.py``); it holds an optimizer and a loss, so it belongs to training, not to the
pure-torch ``models`` package.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class CudaGraphTrainStep:
    """One training step (forward, loss, backward, ``optimizer.step()``) captured as a CUDA graph.

    Shapes are frozen at construction: ``x`` (B, T_in, C, H, W), ``y`` (B, n_out, C, H, W).
    ``optimizer`` must be built with ``capturable=True``; gradients are reset inside the graph
    (``.grad`` is overwritten, not accumulated). The warmup steps run on ``x, y`` and are then undone
    (parameters and optimizer state restored in place), so the first ``step`` is the first update. ``step(x, y)`` copies the batch into the static
    buffers, replays, and returns the (device) loss tensor — read it with ``.item()`` sparingly.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                 warmup: int = 3, mask: torch.Tensor | None = None, grad_clip: float | None = None):
        if not x.is_cuda:
            raise ValueError("CudaGraphTrainStep needs CUDA tensors; use a plain step on CPU")
        if not all(g.get("capturable", False) for g in optimizer.param_groups):
            raise ValueError("CudaGraphTrainStep needs an optimizer built with capturable=True")
        self.model, self.loss_fn, self.opt = model, loss_fn, optimizer
        self.autocast_dtype = autocast_dtype
        self.n_out = y.shape[1]
        self.static_x, self.static_y = x.clone(), y.clone()
        self.static_m = None if mask is None else mask.clone()
        self.grad_clip = grad_clip
        params = [p.detach().clone() for p in model.parameters()]
        opt_state = {id(t): t.clone() for st in optimizer.state.values() for t in st.values()
                     if torch.is_tensor(t)}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):  # also triggers cuDNN autotuning and torch.compile
                self.opt.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warmup updates in place (the graph captures addresses)
            for p, saved in zip(model.parameters(), params):
                p.copy_(saved)
            for st in optimizer.state.values():
                for t in st.values():
                    if torch.is_tensor(t):
                        t.copy_(opt_state[id(t)]) if id(t) in opt_state else t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.static_loss = self._body()

    def _body(self) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            pred, _ = self.model(self.static_x, self.n_out)
            loss = (self.loss_fn(pred.float(), self.static_y) if self.static_m is None
                    else self.loss_fn(pred.float(), self.static_y, self.static_m))
        loss.backward()
        if self.grad_clip:  # no host sync inside: the clip coefficient stays a device tensor
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.detach()

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.static_x.copy_(x, non_blocking=True)
        self.static_y.copy_(y, non_blocking=True)
        if self.static_m is not None:
            self.static_m.copy_(mask, non_blocking=True)
        self.graph.replay()
        return self.static_loss
