"""Subcommands of ``convlstm-dist``. Each module has ``register(subparsers)``.

A module adds its parsers with ``set_defaults(func=...)``; ``func(args) -> int``. Heavy imports
(ray, torch, zarr, mlflow) stay inside the functions so that ``--help`` is instant.
"""

COMMAND_MODULES = [
    "convlstm_dist.commands.archive",
    "convlstm_dist.commands.config_cmd",
    "convlstm_dist.commands.data_check",
    "convlstm_dist.commands.describe",
    "convlstm_dist.commands.evaluate",
    "convlstm_dist.commands.skill_report",
    "convlstm_dist.commands.train",
    "convlstm_dist.commands.tune",
    "convlstm_dist.commands.ui",
]
