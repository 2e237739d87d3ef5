"""Subcommands of ``convlstm-dist``. Each module has ``register(subparsers)``.

A module adds its parsers with ``set_defaults(func=...)``; ``func(args) -> int``. A command only
parses its arguments, calls the library and prints what it returns (progress, results, exit code):
what opens archives, computes or writes results lives in the library packages. Heavy imports
(ray, torch, zarr, mlflow) stay inside the functions so that ``--help`` is instant.
"""

__all__ = ["COMMAND_MODULES"]

COMMAND_MODULES = [
    "convlstm_dist.commands.archive",
    "convlstm_dist.commands.config_cmd",
    "convlstm_dist.commands.data_check",
    "convlstm_dist.commands.describe",
    "convlstm_dist.commands.evaluate",
    "convlstm_dist.commands.mlflow_upload",
    "convlstm_dist.commands.skill_report",
    "convlstm_dist.commands.table1",
    "convlstm_dist.commands.serve",
    "convlstm_dist.commands.train",
    "convlstm_dist.commands.tune",
    "convlstm_dist.commands.ui",
]
