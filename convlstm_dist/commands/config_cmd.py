"""``convlstm-dist config``: print the resolved configuration of a recipe."""

from __future__ import annotations

import argparse

from convlstm_dist.commands.common import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved configuration (defaults <- recipe <- --set)",
                       description="Print the resolved configuration as YAML: the in-code defaults, "
                                   "overridden by the recipe, overridden by --set. Validates it.")
    add_config_args(p, required=False)
    p.add_argument("--show", action="store_true", help="(default) print the YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from convlstm_dist.config import load_config, to_yaml

    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
