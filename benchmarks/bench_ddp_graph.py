"""DDP with the CUDA-graph step against DDP's own eager step, 2 processes on one device.

    python benchmarks/bench_ddp_graph.py --device cuda      # the GPU check (benchmarks/gpu_check.sh)
    python benchmarks/bench_ddp_graph.py --device cpu       # dry run: the flat all-reduce in eager steps

Each of the 2 ranks trains two copies of the radar model from the same start on the same batches
(its own per rank): (a) wrapped in ``DistributedDataParallel``, the step engine's eager/compiled
step; (b) not wrapped, the engine's ``graph`` mode under DDP (``train/graph_step.py``: graph 1
forward + backward into a flat gradient buffer, one all-reduce, graph 2 clip + optimizer). It
prints the step time of both, the largest parameter difference between them after the timed
steps, and last ``graph_over_ddp=X.XX`` (eager DDP step time / graph DDP step time; > 1 = faster).
On the CPU there is no graph: (b) runs the engine's eager steps with the same flat all-reduce.
The process group is gloo (two ranks cannot share one GPU under NCCL); on a multi-GPU node the
engine uses Ray Train's NCCL group.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from convlstm_dist.models import build_model  # noqa: E402
from convlstm_dist.train.engine import StepEngine  # noqa: E402
from convlstm_dist.train.graph_step import broadcast_parameters  # noqa: E402
from convlstm_dist.train.optim import training_loss  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _worker(rank: int, world: int, port: int, a) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    arch = dict(in_channels=1, hidden=[64, 64], input_kernel=[3, 3], state_kernel=[3, 3], patch=2,
                height=a.size, width=a.size)
    m_ddp = build_model("convlstm", **arch).to(dev)
    m_graph = build_model("convlstm", **arch, compile=cuda).to(dev)
    broadcast_parameters(m_ddp)
    with torch.no_grad():
        for p, q in zip(m_graph.parameters(), m_ddp.parameters()):
            p.copy_(q)
    ddp = torch.nn.parallel.DistributedDataParallel(m_ddp, device_ids=[dev.index or 0] if cuda else None)
    amp = torch.bfloat16 if cuda and a.dtype == "bf16" else None
    loss = training_loss("bmse", "rain_norm")
    capturable = {"capturable": True} if cuda else {}
    e_ddp = StepEngine(m_ddp, ddp, torch.optim.Adam(m_ddp.parameters(), 1e-3), torch.amp.GradScaler("cuda", enabled=False),
                       loss, 10, amp, 1.0, "eager", dev, say=lambda _: None, world=world)
    e_graph = StepEngine(m_graph, m_graph, torch.optim.Adam(m_graph.parameters(), 1e-3, **capturable),
                         torch.amp.GradScaler("cuda", enabled=False), loss, 10, amp, 1.0,
                         "graph" if cuda else "eager", dev, say=print if rank == 0 else (lambda _: None), world=world)
    g = torch.Generator(device="cpu").manual_seed(1 + rank)
    batches = [(torch.rand(a.batch, 5, 1, a.size, a.size, generator=g).to(dev),
                torch.rand(a.batch, 10, 1, a.size, a.size, generator=g).to(dev)) for _ in range(4)]
    mask = torch.ones_like(batches[0][1])
    times = {}
    for name, eng in (("ddp", e_ddp), ("graph", e_graph)):
        for i in range(a.warmup):
            eng.step(*batches[i % 4], mask)
        _sync(dev)
        dist.barrier()
        t0 = time.perf_counter()
        for i in range(a.steps):
            eng.step(*batches[i % 4], mask)
        _sync(dev)
        times[name] = (time.perf_counter() - t0) / a.steps
    diff = max((p - q).abs().max().item() for p, q in zip(m_graph.parameters(), m_ddp.parameters()))
    if rank == 0:
        print(f"device={dev} world={world} batch/rank={a.batch} {a.size}x{a.size} precision={a.dtype if cuda else 'fp32'} "
              f"graph engine mode={e_graph.mode} captured={e_graph.graph is not None}")
        print(f"ddp_step_ms={times['ddp'] * 1e3:.2f} graph_ddp_step_ms={times['graph'] * 1e3:.2f} "
              f"max_param_diff_after_{a.warmup + a.steps}_steps={diff:.2e}")
        print(f"graph_over_ddp={times['ddp'] / times['graph']:.2f}", flush=True)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=128, help="crop side (pixels)")
    ap.add_argument("--batch", type=int, default=4, help="samples per rank")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, a), nprocs=2, join=True)


if __name__ == "__main__":
    main()
