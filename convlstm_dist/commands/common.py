"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, metavar="RECIPE",
                   help="YAML recipe (see pipelines/); overrides the defaults in convlstm_dist/config.py")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value, e.g. --set train.lr=3e-4 --set model.hidden=[32,32] (repeatable)")


def add_workdir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="workdir", metavar="DIR",
                   help="embedded defaults live here: archive.zarr, runs/ (checkpoints), mlflow.db (default: ./workdir)")
