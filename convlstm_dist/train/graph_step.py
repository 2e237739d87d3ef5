"""The whole training step (forward, loss, backward, clipping, optimizer) as one CUDA graph.

Replaying one graph removes the kernel-launch overhead of the unrolled recurrence, which is what
limits a GPU on ConvLSTM's many small kernels. Used by the step engine's ``graph`` mode
(``train/engine.py``); it holds an optimizer and a loss, so it belongs to training, not to the
pure-torch ``models`` package.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn


class FlatGrads:
    """Every parameter's ``.grad`` as a view into one flat fp32 buffer: one all-reduce per step.

    What DDP's buckets do in its backward hooks, done by hand so that it works between CUDA-graph
    replays: ``zero()`` before the backward (which then accumulates into the views in place),
    ``allreduce_mean()`` after it. Parameters keep their ``.grad`` views for good; never
    ``zero_grad(set_to_none=True)`` them.
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = [p for p in params if p.requires_grad]
        n = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(n, dtype=torch.float32, device=self.params[0].device)
        off = 0
        for p in self.params:
            if p.dtype != torch.float32:
                raise ValueError(f"FlatGrads needs fp32 parameters, got {p.dtype}")
            p.grad = self.flat[off:off + p.numel()].view(p.shape)
            off += p.numel()

    def zero(self) -> None:
        self.flat.zero_()

    def allreduce_mean(self, world: int) -> None:
        """Sum the buffer over the process group, divided by ``world``: the DDP gradient."""
        if world > 1:
            dist.all_reduce(self.flat)
            self.flat.div_(world)


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Every rank starts from rank ``src``'s parameters and buffers (what DDP does when it wraps)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src)


class CudaGraphTrainStep:
    """One training step (forward, loss, backward, ``optimizer.step()``) captured as a CUDA graph.

    Under DDP (``world`` > 1, the model *not* DDP-wrapped: its reducer is not capturable) the step
    is two graphs with one all-reduce between them: graph 1 zeroes the flat gradient buffer
    (:class:`FlatGrads`) and runs forward, loss and backward; the buffer is all-reduced (one
    collective on the current stream); graph 2 clips and steps the optimizer. Every rank must
    start from the same parameters (:func:`broadcast_parameters`).

    Shapes are frozen at construction: ``x`` (B, T_in, C, H, W), ``y`` (B, n_out, C, H, W).
    ``optimizer`` must be built with ``capturable=True``; gradients are reset inside the graph
    (``.grad`` is overwritten, not accumulated). The warmup steps run on ``x, y`` and are then undone
    (parameters and optimizer state restored in place), so the first ``step`` is the first update. ``step(x, y)`` copies the batch into the static
    buffers, replays, and returns the (device) loss tensor — read it with ``.item()`` sparingly.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 x: torch.Tensor, y: torch.Tensor, autocast_dtype: torch.dtype | None = None,
                 warmup: int = 3, mask: torch.Tensor | None = None, grad_clip: float | None = None,
                 world: int = 1, flat: FlatGrads | None = None):
        if not x.is_cuda:
            raise ValueError("CudaGraphTrainStep needs CUDA tensors; use a plain step on CPU")
        if not all(g.get("capturable", False) for g in optimizer.param_groups):
            raise ValueError("CudaGraphTrainStep needs an optimizer built with capturable=True")
        self.model, self.loss_fn, self.opt = model, loss_fn, optimizer
        self.autocast_dtype = autocast_dtype
        self.n_out = y.shape[1]
        self.static_x, self.static_y = x.clone(), y.clone()
        self.static_m = None if mask is None else mask.clone()
        self.grad_clip, self.world = grad_clip, world
        self.flat = (flat or FlatGrads(list(model.parameters()))) if world > 1 else None
        params = [p.detach().clone() for p in model.parameters()]
        opt_state = {id(t): t.clone() for st in optimizer.state.values() for t in st.values()
                     if torch.is_tensor(t)}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):  # also triggers cuDNN autotuning and torch.compile
                if self.flat is None:
                    self.opt.zero_grad(set_to_none=True)
                    self._body()
                else:
                    self._forward_backward()
                    self.flat.allreduce_mean(world)
                    self._update()
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():  # undo the warmup updates in place (the graph captures addresses)
            for p, saved in zip(model.parameters(), params):
                p.copy_(saved)
            for st in optimizer.state.values():
                for t in st.values():
                    if torch.is_tensor(t):
                        t.copy_(opt_state[id(t)]) if id(t) in opt_state else t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        if self.flat is None:
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.static_loss = self._body()
        else:
            self.update_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_loss = self._forward_backward()
            with torch.cuda.graph(self.update_graph, pool=self.graph.pool()):
                self._update()

    def _body(self) -> torch.Tensor:
        loss = self._forward_backward()
        self._update()
        return loss

    def _forward_backward(self) -> torch.Tensor:
        if self.flat is not None:
            self.flat.zero()
        with torch.autocast("cuda", dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=False):
            pred, _ = self.model(self.static_x, self.n_out)
            loss = (self.loss_fn(pred.float(), self.static_y) if self.static_m is None
                    else self.loss_fn(pred.float(), self.static_y, self.static_m))
        loss.backward()
        return loss.detach()

    def _update(self) -> None:
        if self.grad_clip:  # no host sync inside: the clip coefficient stays a device tensor
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.static_x.copy_(x, non_blocking=True)
        self.static_y.copy_(y, non_blocking=True)
        if self.static_m is not None:
            self.static_m.copy_(mask, non_blocking=True)
        self.graph.replay()
        if self.flat is not None:
            self.flat.allreduce_mean(self.world)
            self.update_graph.replay()
        return self.static_loss
