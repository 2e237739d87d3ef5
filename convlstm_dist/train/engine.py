"""The training step, shared by both backends (Ray Train workers and the single process).

Modes (``train.engine`` in the recipe):

* ``eager``: forward under autocast, masked loss, backward (scaled for fp16), optional clipping,
  optimizer step; under DDP the gradient all-reduce happens in DDP's backward hooks.
* ``compiled``: the same, with the gate arithmetic fused by ``torch.compile`` (CUDA only; the
  model is built with ``compile=True``, see ``models/fast.py``).
* ``graph``: the whole step (forward, loss, backward, clipping, optimizer) replayed as one CUDA
  graph (:class:`CudaGraphTrainStep`). Needs CUDA, the fast model, a capturable optimizer (not
  SGD) and no fp16 scaler. Under DDP (several workers) the model is not DDP-wrapped (its reducer
  is not capturable): every rank starts from rank 0's parameters, and the step is two graphs with
  one all-reduce of a flat gradient buffer between them (``graph_step.FlatGrads``).
* ``auto`` (default): ``graph`` on one CUDA device when it applies, ``compiled`` on CUDA otherwise
  (several DDP workers included, until the graph step under DDP has been measured on GPUs:
  ``benchmarks/bench_ddp_graph.py``; ask for ``graph`` to use it), ``eager`` on CPU.

``train.channels_last`` stores convolution activations and weights NHWC (CUDA tensor cores).

The NaN guard costs no host sync per step: each step remembers the first step whose loss was
not finite, on the device; :meth:`StepEngine.check` (every
``CHECK_EVERY`` steps and at the end of an epoch, the same on every rank) all-reduces it once.
Updates after a bad step only touch the in-memory model: nothing is checkpointed from it.

If graph capture fails, the run continues in eager mode with the **same** model and optimizer
state (both are restored to their state before the capture attempt) and says so once; under DDP
its eager steps all-reduce the same flat gradient buffer, so ranks stay in step.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from convlstm_dist.train.graph_step import CudaGraphTrainStep, FlatGrads

CHECK_EVERY = 50


def resolve_mode(requested: str, device: torch.device, *, impl: str, optimizer: str, precision: str,
                 world: int) -> tuple[str, str | None]:
    """``(mode that runs, why it differs from the request or None)``."""
    cuda = device.type == "cuda"
    graph_ok = cuda and impl == "fast" and optimizer != "sgd" and precision != "fp16"
    if requested == "auto":  # graph under DDP is reachable (train.engine: graph) but not yet measured on GPUs
        return ("graph" if graph_ok and world == 1 else "compiled" if cuda else "eager"), None
    if requested == "graph" and not graph_ok:
        why = ("a CUDA device" if not cuda else "model.impl=fast" if impl != "fast" else
               "a capturable optimizer (not SGD)" if optimizer == "sgd" else "bf16/fp32 (fp16 needs a GradScaler)")
        return ("compiled" if cuda else "eager"), f"graph mode needs {why}"
    if requested == "compiled" and not cuda:
        return "eager", "torch.compile of the gates applies to CUDA only"
    return requested, None


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on CUDA, fp32 on the CPU."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return requested


@dataclass(frozen=True)
class EngineChoice:
    """What a trainer runs: the step mode (and why it differs from the request), the precision."""

    requested: str
    mode: str
    why: str | None
    precision: str
    channels_last: bool

    @property
    def amp_dtype(self):
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def line(self, device) -> str:
        return (f"[engine] {self.mode} steps on {device} ({self.precision}, channels_last={self.channels_last})"
                + (f"; {self.requested} not used: {self.why}" if self.why else ""))


def choose_engine(cfg, device: torch.device, world: int, requested: str | None = None) -> EngineChoice:
    """The recipe's engine on ``device`` with ``world`` DDP processes (both trainers, benchmarks)."""
    t = cfg.train
    precision = resolve_precision(t.precision, device)
    requested = requested or t.engine
    mode, why = resolve_mode(requested, device, impl=cfg.model.impl, optimizer=t.optimizer, precision=precision,
                             world=world)
    return EngineChoice(requested, mode, why, precision, t.channels_last)


def describe_engine(cfg) -> str:
    """Which step engine the recipe runs: on a CUDA device and on this machine's CPU, with its workers."""
    t, world = cfg.train, cfg.scaling.num_workers
    gpu = choose_engine(cfg, torch.device("cuda"), world if cfg.scaling.use_gpu else 1)
    cpu = choose_engine(cfg, torch.device("cpu"), world)
    note = lambda c: c.mode + (f" ({c.why})" if c.why else "")  # noqa: E731
    return (f"engine: {t.engine} -> on CUDA: {note(gpu)}; on CPU: {note(cpu)}; "
            f"channels_last={t.channels_last}; train --local: world 1")


def allreduce(t: torch.Tensor, op=None) -> torch.Tensor:
    """Sum (or ``op``) ``t`` across DDP processes in place; a no-op in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def forward_loss(model, x, y, m, out_len: int, loss_fn, amp_dtype) -> torch.Tensor:
    """Forward pass under autocast (``amp_dtype`` None = full precision) and the fp32 loss."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pred, _ = model(x, out_len)
    return loss_fn(pred.float(), y, m)


def apply_gradients(loss, params, opt, scaler, grad_clip: float | None, flat=None, world: int = 1) -> None:
    """Backward (scaled for fp16), optional gradient clipping, optimizer step. ``flat``
    (``graph_step.FlatGrads``, several processes without a DDP wrapper): the gradients are views of
    one buffer, zeroed before the backward and all-reduced after it."""
    if flat is None:
        opt.zero_grad(set_to_none=True)
    else:
        flat.zero()
    scaler.scale(loss).backward()
    if flat is not None:
        flat.allreduce_mean(world)
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()


class StepEngine:
    """``step(x, y, mask) -> loss`` (a device tensor) in the chosen mode, plus the NaN guard."""

    def __init__(self, model: torch.nn.Module, train_model: torch.nn.Module, opt, scaler, loss_fn: Callable,
                 out_len: int, amp_dtype, grad_clip: float | None, mode: str, device: torch.device,
                 say: Callable = print, world: int = 1):
        self.model, self.train_model = model, train_model  # train_model: DDP-wrapped or the model
        # several processes but no DDP wrapper (graph mode): gradients go through one flat all-reduce
        self.world, self.flat = world, None
        if world > 1 and train_model is model:
            self.flat = FlatGrads(list(model.parameters()))
        self.opt, self.scaler, self.loss_fn = opt, scaler, loss_fn
        self.out_len, self.amp_dtype, self.grad_clip = out_len, amp_dtype, grad_clip
        self.mode, self.device, self.say = mode, device, say
        self.graph = None
        self.steps = 0                                     # steps since the guard was reset
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self._step_t = torch.zeros((), dtype=torch.int64, device=device)

    # -- graph capture -------------------------------------------------------------------------
    def capture(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> bool:
        """Capture the step on a first batch; on failure restore model + optimizer and go eager."""
        if self.mode != "graph":
            return False

        saved_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        saved_opt = copy.deepcopy(self.opt.state_dict())
        try:
            t0 = time.perf_counter()
            self.graph = CudaGraphTrainStep(self.model, self.loss_fn, self.opt, x, y, self.amp_dtype, mask=m,
                                            grad_clip=self.grad_clip, world=self.world, flat=self.flat)
            self.say(f"[engine] training step captured as a CUDA graph in {time.perf_counter() - t0:.1f} s")
            return True
        except Exception as err:  # noqa: BLE001 - fall back, once and loudly, with the same state
            torch.cuda.synchronize()
            with torch.no_grad():
                self.model.load_state_dict(saved_model)
            self.opt.load_state_dict(saved_opt)
            self.graph, self.mode = None, "eager"
            self.say(f"[engine] CUDA graph capture failed ({type(err).__name__}: {str(err)[:200]}); "
                     "continuing with eager steps and the same optimizer state")
            return False

    # -- one step ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """One update; in graph mode the first call captures the graph on this batch."""
        if self.mode == "graph" and self.graph is None:
            self.capture(x, y, m)
        if self.graph is not None and x.shape == self.graph.static_x.shape:
            loss = self.graph.step(x, y, m)
        else:  # eager / compiled, or graph mode's eager fallback (under DDP: the flat all-reduce)
            loss = forward_loss(self.train_model, x, y, m, self.out_len, self.loss_fn, self.amp_dtype)
            apply_gradients(loss, self.model.parameters(), self.opt, self.scaler, self.grad_clip, self.flat,
                            self.world)
        finite = torch.isfinite(loss.detach())
        self.first_bad.copy_(torch.where((self.first_bad < 0) & ~finite, self._step_t, self.first_bad))
        self._step_t += 1
        self.steps += 1
        return loss.detach()

    def check_due(self) -> bool:
        """Whether this is a step to :meth:`check` at (every ``CHECK_EVERY`` steps of an epoch)."""
        return self.steps % CHECK_EVERY == 0

    def reset_guard(self, step: int) -> None:
        """Start counting at global step ``step`` (at each epoch start)."""
        self.first_bad.fill_(-1)
        self._step_t.fill_(step)
        self.steps = 0

    def check(self) -> int | None:
        """The first non-finite step on any rank, or None (one all-reduce; call at the same point on every rank)."""
        first = torch.where(self.first_bad >= 0, self.first_bad, torch.full_like(self.first_bad, 2**62))
        first = allreduce(first.reshape(1).clone(), dist.ReduceOp.MIN if dist.is_available() else None)
        return int(first.item()) if int(first.item()) < 2**62 else None
