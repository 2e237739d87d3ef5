"""``convlstm-dist describe``: print a recipe's architecture, parameter count and FLOPs."""

from __future__ import annotations

import argparse

from convlstm_dist.commands.common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="print the model a recipe builds: layers, parameters, FLOPs",
                       description="Build the recipe's model on the meta device (no memory, no data) and "
                                   "print its layers, 'parameters: N' and 'flops_per_sample: F' "
                                   "(one training sample = 3 x forward, 2 FLOPs per multiply-add).")
    add_config_args(p, required=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from convlstm_dist.config import build_model_from_config, load_config
    from convlstm_dist.models.flops import count_flops, human

    cfg = load_config(args.config, args.overrides)
    with torch.device("meta"):
        model = build_model_from_config(cfg)
    m, d = cfg.model, cfg.data
    n_params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, d.in_len, d.out_len, m.height, m.width)
    print(f"recipe: {cfg.name}")
    print(f"input: (B, {d.in_len}, {m.in_channels}, {m.height}, {m.width}) -> output: "
          f"(B, {d.out_len}, {m.in_channels}, {m.height}, {m.width}), patch {m.patch}")
    print(f"frame: {m.frame}" + (" (inputs aligned by their estimated motion, residual forecast advected back "
                                 "per lead; see models/lagrangian.py)" if m.frame == "lagrangian" else ""))
    print(model)
    for name, p in model.named_parameters():
        print(f"  {name:28s} {str(tuple(p.shape)):24s} {p.numel():>12,d}")
    print(f"parameters: {n_params}")
    print(f"parameters_human: {n_params:,d}")
    print(f"flops_per_sample: {flops}")
    print(f"flops_per_sample_human: {human(flops)} (forward+backward = 3 x forward)")
    from convlstm_dist.train import describe_engine

    print(describe_engine(cfg))
    return 0
