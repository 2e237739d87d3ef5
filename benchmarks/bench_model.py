"""Time one training step (forward, BCE loss, backward, RMSprop step) of the literal and the fast
ConvLSTM at the paper's sizes, against the common public ConvLSTM pattern, and print the
speed-up over the first implementation measured in this run.

Implementations (``--impls``, first = baseline of the speed-up column):

* ``public``: the ConvLSTM cell most public code uses, written here in a few lines: concatenate
  ``[x, h]`` on channels, one convolution to the four gates, no peepholes, one time step and one
  layer after another; the same encoder-forecaster shape (layers, kernels, patch) as ours;
* ``literal``: this project's cell, written as the paper's equations;
* ``fast``: this project's fast path (layer-major input convolutions, stacked gates, optionally
  compiled gates and the whole step as a CUDA graph).

    PYTHONPATH=. python benchmarks/bench_model.py --device cpu --configs mm --steps 3
    PYTHONPATH=. python benchmarks/bench_model.py --device cuda --dtype bf16 --configs mm,radar,large
    PYTHONPATH=. python benchmarks/bench_model.py --device cuda --dtype bf16 --impls fast --compile --cuda-graph

Imports only torch and convlstm_dist.models. FLOPs follow convlstm_dist.models.flops (2 per
multiply-add, convs only, training = 3 × forward). Peak: --peak-tflops, else detected by GPU name
(H100/H200 dense bf16 989, fp32 non-tensor 67); n/a on CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from convlstm_dist.models import build_model, count_flops, get_loss
from convlstm_dist.train.graph_step import CudaGraphTrainStep

CONFIGS = {  # name: (batch, in_len, n_out, channels, H, W, patch, hidden, kernel)
    "mm": (16, 10, 10, 1, 64, 64, 4, [128, 64, 64], 5),
    "radar": (16, 5, 15, 1, 100, 100, 2, [64, 64], 3),
    "large": (32, 10, 10, 1, 256, 256, 4, [128, 64, 64], 5),
    "tiny": (2, 3, 2, 1, 16, 16, 2, [8, 8], 3),  # smoke test
}
PEAK_TFLOPS = {"bf16": {"H100": 989.0, "H200": 989.0}, "fp32": {"H100": 67.0, "H200": 67.0}}


class PublicCell(nn.Module):
    """The widespread ConvLSTM cell: one convolution over ``cat([x, h])`` gives all four gates."""

    def __init__(self, cin: int, hid: int, k: int):
        super().__init__()
        self.hid = hid
        self.conv = nn.Conv2d(cin + hid, 4 * hid, k, padding=k // 2)

    def forward(self, x, h, c):
        i, f, o, g = torch.split(self.conv(torch.cat([x, h], dim=1)), self.hid, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class PublicEncoderForecaster(nn.Module):
    """Those cells in an encoder-forecaster of our shape: space-to-depth patches, a stack of
    encoder cells over the input frames, forecaster cells (zero input) copying their states, a 1x1
    output convolution of all forecaster layers' hidden states; step by step, layer by layer."""

    def __init__(self, C: int, hidden: list[int], k: int, patch: int):
        super().__init__()
        self.patch, self.hidden, cin = patch, hidden, C * patch * patch
        ins = [cin] + hidden[:-1]
        self.enc = nn.ModuleList(PublicCell(i, h, k) for i, h in zip(ins, hidden))
        self.dec = nn.ModuleList(PublicCell(i, h, k) for i, h in zip(ins, hidden))
        self.out = nn.Conv2d(sum(hidden), cin, 1)

    def forward(self, x, n_out: int):
        B, T, C, H, W = x.shape
        p = self.patch
        xs = F.pixel_unshuffle(x.reshape(B * T, C, H, W), p).reshape(B, T, C * p * p, H // p, W // p)
        state = [(xs.new_zeros(B, h, H // p, W // p),) * 2 for h in self.hidden]
        for t in range(T):
            inp = xs[:, t]
            for layer, cell in enumerate(self.enc):
                state[layer] = cell(inp, *state[layer])
                inp = state[layer][0]
        zero, outs = xs.new_zeros(B, C * p * p, H // p, W // p), []
        for _ in range(n_out):
            inp, hs = zero, []
            for layer, cell in enumerate(self.dec):
                state[layer] = cell(inp, *state[layer])
                inp = state[layer][0]
                hs.append(inp)
            outs.append(F.pixel_shuffle(self.out(torch.cat(hs, dim=1)), p))
        return torch.stack(outs, dim=1), None


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for key, val in PEAK_TFLOPS[args.dtype].items():
        if key in name:
            return val
    return None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_one(cfg: str, impl: str, args: argparse.Namespace) -> dict:
    B, t_in, n_out, C, H, W, p, hidden, k = CONFIGS[cfg]
    torch.manual_seed(0)
    dev = torch.device(args.device)
    use_graph = args.cuda_graph and impl == "fast" and args.device == "cuda"
    flop_model = build_model("convlstm", in_channels=C, hidden=hidden, input_kernel=[k] * len(hidden),
                             state_kernel=[k] * len(hidden), patch=p, height=H, width=W, impl="literal")
    if impl == "public":  # useful FLOPs counted as for ours (its forecaster also convolves zero inputs)
        model = PublicEncoderForecaster(C, hidden, k, p).to(dev)
    else:
        model = build_model("convlstm", in_channels=C, hidden=hidden, input_kernel=[k] * len(hidden),
                            state_kernel=[k] * len(hidden), patch=p, height=H, width=W, impl=impl,
                            channels_last=args.channels_last and impl == "fast",
                            compile=args.compile and impl == "fast").to(dev)
    if args.channels_last and impl == "fast":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, capturable=use_graph)
    loss_fn = get_loss("bce")
    x = torch.rand(B, t_in, C, H, W, device=dev)
    y = (torch.rand(B, n_out, C, H, W, device=dev) > 0.5).float()
    amp = torch.bfloat16 if args.dtype == "bf16" else None

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=amp or torch.float32, enabled=amp is not None):
            pred, _ = model(x, n_out)
            loss = loss_fn(pred.float(), y)
        loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    if use_graph:
        graphed = CudaGraphTrainStep(model, loss_fn, opt, x, y, autocast_dtype=amp, warmup=args.warmup)
        run = lambda: graphed.step(x, y)  # noqa: E731
    else:
        run = step
        for _ in range(args.warmup):
            run()
    sync(args.device)
    setup_s = time.perf_counter() - t0
    if args.device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            loss = run()
        end.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(end) / args.steps
    else:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = run()
        ms = (time.perf_counter() - t0) * 1e3 / args.steps
    flops = count_flops(flop_model, t_in, n_out, H, W) * B
    return dict(cfg=cfg, impl=impl + ("+graph" if use_graph else "") + ("+compile" if args.compile and impl == "fast" else ""),
                ms=ms, sps=B * 1e3 / ms, tflops=flops / (ms * 1e-3) / 1e12, setup_s=setup_s,
                loss=float(loss.detach()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default="mm", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--impls", default="public,literal,fast",
                    help="comma list of public, literal, fast (the first is the speed-up baseline)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 5 on CUDA")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="fast path: torch.compile the fused gates (CUDA only)")
    ap.add_argument("--cuda-graph", action="store_true", help="fast path: capture the whole step as a CUDA graph")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                    help="fast path memory format (default: on for CUDA, off for CPU)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--allow-large-cpu", action="store_true", help="run the large config on CPU too")
    args = ap.parse_args(argv)
    if args.warmup is None:
        args.warmup = 5 if args.device == "cuda" else 1
    if args.channels_last is None:
        args.channels_last = args.device == "cuda"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but no CUDA device")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    peak = peak_tflops(args)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# device: {dev_name}, torch {torch.__version__}, dtype {args.dtype}, "
          f"channels_last={args.channels_last}, peak={'n/a' if peak is None else f'{peak:g} TFLOP/s'}")
    print(f"{'config':7s} {'impl':22s} {'ms/step':>9s} {'samples/s':>10s} {'TFLOP/s':>9s} {'of peak':>8s} "
          f"{'setup s':>8s} {'speed-up':>9s}")
    for cfg in args.configs.split(","):
        if cfg not in CONFIGS:
            raise SystemExit(f"unknown config {cfg!r}; valid: {', '.join(CONFIGS)}")
        if cfg == "large" and args.device == "cpu" and not args.allow_large_cpu:
            print(f"{cfg:7s} skipped on CPU (use --allow-large-cpu)")
            continue
        base = None
        for impl in args.impls.split(","):
            r = bench_one(cfg, impl, args)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            base = base or r["ms"]
            share = "n/a" if peak is None else f"{100 * r['tflops'] / peak:.1f}%"
            print(f"{cfg:7s} {r['impl']:22s} {r['ms']:9.2f} {r['sps']:10.1f} {r['tflops']:9.3f} {share:>8s} "
                  f"{r['setup_s']:8.1f} {base / r['ms']:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
