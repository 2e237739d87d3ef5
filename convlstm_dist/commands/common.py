"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
import sys

from convlstm_dist.errors import UserError
from convlstm_dist.vocabulary import MOTION_MODES


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="RECIPE",
                   help="YAML recipe (see pipelines/); overrides the defaults in convlstm_dist/config.py")
    add_set_arg(p)


def add_set_arg(p: argparse.ArgumentParser,
                help: str = "override one value, e.g. --set train.lr=3e-4 --set model.hidden=[32,32] (repeatable)"
                ) -> None:
    """``--set KEY=VALUE`` (repeatable) -> ``args.overrides``: the one declaration of every command."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


BASELINES_DEFAULT = "persistence,optical_flow,sprog,anvil"


def add_scoring_args(p: argparse.ArgumentParser, *, crop: bool = True, windows: str = "windows",
                     workers: str = "Ray tasks run in parallel (local Ray CPUs; default 2)") -> None:
    """What ``evaluate`` and ``skill-report`` score with: ``--baselines``, ``--crop`` (unless the
    command declares it itself), ``--motion``, ``--max-windows``, ``--workers``. ``windows``: what
    ``--max-windows`` subsets (e.g. "windows per event")."""
    p.add_argument("--baselines", default=BASELINES_DEFAULT, metavar="NAMES",
                   help=f"comma-separated baselines, or 'none' for the model alone (default: {BASELINES_DEFAULT}: "
                        "extrapolation, S-PROG and ANVIL on one motion field; a method needing more input frames "
                        "than the model has is left out)")
    if crop:
        p.add_argument("--crop", default=None, metavar="HxW",
                       help="score an HxW crop per window (chosen as in training) instead of the full grid")
    p.add_argument("--motion", choices=MOTION_MODES, default=MOTION_MODES[0],
                   help="shared (default): one motion field per window, estimated on the whole frame (pysteps "
                        "Lucas-Kanade), moves the baselines and a Lagrangian model alike; own: each method "
                        "estimates its motion from the scored crop only (the scoring before 2026-12)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help=f"evenly spaced subset of N {windows} (default: all)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help=workers)


def parse_baselines(text: str) -> list[str]:
    """``--baselines``: ``none`` (alone) means no baseline, else the comma-separated names; ``none``
    among names is refused (one meaning)."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    if [n.lower() for n in names] == ["none"]:
        return []
    if any(n.lower() == "none" for n in names):
        raise UserError(f"--baselines {text!r}: 'none' stands alone (no baseline); drop it or the other names")
    return names


def add_workdir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="workdir", metavar="DIR",
                   help="embedded defaults live here: archive.zarr, runs/ (checkpoints), mlflow.db (default: ./workdir)")


# -- deprecated flag names ----------------------------------------------------------------------
# One idea, one flag name. The old names still work for one release, with a warning on stderr.

def deprecated(old: str, new: str) -> None:
    print(f"convlstm-dist: warning: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


class StoreWithAlias(argparse.Action):
    """Store a value given under the option's name or a deprecated alias (``aliases``: the old
    option strings among ``option_strings``), warning when the alias is used."""

    def __init__(self, option_strings, dest, aliases=(), **kwargs):
        self.aliases = tuple(aliases)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.aliases:
            deprecated(option_string, self.option_strings[0])
        setattr(namespace, self.dest, values)


class DeprecatedConst(argparse.Action):
    """A deprecated switch that means ``--NEW VALUE`` (``new`` names it): stores ``const``, warns."""

    def __init__(self, option_strings, dest, const=None, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, nargs=0, const=const, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(option_string, self.new)
        if self.const is not None:
            setattr(namespace, self.dest, self.const)


def add_time_budget_arg(p: argparse.ArgumentParser, help: str, dest: str = "time_budget", **kwargs) -> None:
    """``--time-budget SECONDS`` (``--budget-s``: deprecated alias)."""
    p.add_argument("--time-budget", "--budget-s", dest=dest, type=float, metavar="SECONDS", action=StoreWithAlias,
                   aliases=("--budget-s",), help=help + " (--budget-s: deprecated alias)", **kwargs)

