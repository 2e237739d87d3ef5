"""DDP without DDP's wrapper: the graph engine's flat gradient all-reduce gives DDP's updates.

Under several workers the CUDA-graph engine cannot use DDP's reducer (not capturable); it keeps
every gradient as a view into one flat buffer and all-reduces that buffer between its two graphs
(``train/graph_step.py``). The graphs themselves need a GPU (``benchmarks/gpu_check.sh``); this test
runs the same flat all-reduce in the engine's eager steps (what a failed capture falls back to) in
two CPU processes (gloo) and checks it against ``DistributedDataParallel`` step by step.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from convlstm_dist.models import build_model, get_loss
from convlstm_dist.train.engine import StepEngine
from convlstm_dist.train.graph_step import FlatGrads, broadcast_parameters

STEPS = 3


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # a different start on every rank: broadcast / DDP must align them
    return build_model("convlstm", in_channels=1, hidden=[4, 4], input_kernel=[3, 3], state_kernel=[3, 3],
                       patch=2, height=16, width=16)


def _engine(model, train_model, world):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    return StepEngine(model, train_model, opt, torch.amp.GradScaler("cuda", enabled=False), get_loss("mse"),
                      out_len=2, amp_dtype=None, grad_clip=1.0, mode="eager", device=torch.device("cpu"),
                      say=lambda _: None, world=world)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        batches = [(torch.rand(2, 3, 1, 16, 16, generator=g), torch.rand(2, 2, 1, 16, 16, generator=g))
                   for _ in range(STEPS)]
        ref = _model(rank)
        ddp = torch.nn.parallel.DistributedDataParallel(ref)
        flat_model = _model(10 + rank)
        broadcast_parameters(flat_model)
        e_ddp, e_flat = _engine(ref, ddp, world), _engine(flat_model, flat_model, world)
        assert e_ddp.flat is None and e_flat.flat is not None
        with torch.no_grad():  # the same start for both (DDP broadcast rank 0's at wrap time)
            for a, b in zip(flat_model.parameters(), ref.parameters()):
                a.copy_(b)
        for x, y in batches:
            m = torch.ones_like(y)
            la, lb = e_ddp.step(x, y, m), e_flat.step(x, y, m)
            assert torch.allclose(la, lb, atol=1e-6)
        torch.save({"ddp": [p.detach() for p in ref.parameters()],
                    "flat": [p.detach() for p in flat_model.parameters()],
                    "grad_is_view": all(p.grad.data_ptr() >= e_flat.flat.flat.data_ptr() for p in flat_model.parameters())},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_flat_allreduce_steps_equal_ddp_steps(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):
        assert r["grad_is_view"]
        for a, b in zip(r["flat"], r["ddp"]):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    for a, b in zip(r0["flat"], r1["flat"]):  # the ranks stay in step
        assert torch.equal(a, b)
    start = _model(10)
    assert any(not torch.allclose(a, b) for a, b in zip(r0["flat"], start.parameters()))  # it trained


def test_flat_grads_are_views_of_one_buffer():
    model = _model(0)
    fg = FlatGrads(list(model.parameters()))
    assert fg.flat.numel() == sum(p.numel() for p in model.parameters())
    fg.flat.fill_(2.0)
    assert all(torch.all(p.grad == 2.0) for p in model.parameters())
    fg.zero()
    loss = model(torch.rand(1, 3, 1, 16, 16), 2)[0].square().mean()
    loss.backward()  # accumulates into the views, in place
    assert fg.flat.abs().sum() > 0
    fg.allreduce_mean(1)  # one process: nothing to reduce
