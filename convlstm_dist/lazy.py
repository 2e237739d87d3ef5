"""Lazy public names for a package ``__init__``: listed in ``__all__``, imported on first use.

A package whose modules pull in ray, torch, zarr or mlflow names its public API in its
``__init__`` without importing any of it, so that ``convlstm-dist --help`` stays instant::

    _PUBLIC = {"archive": ["open_archive", "summary"], "plan": ["DataPlan"]}   # submodule -> names
    __all__ = [name for names in _PUBLIC.values() for name in names]
    __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)

``from convlstm_dist.data import open_archive`` then imports ``convlstm_dist.data.archive``. A
public name must not equal a submodule's name (importing the submodule would shadow it).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, public: dict[str, list[str]]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package`` whose names ``public`` maps by submodule."""
    where = {name: module for module, names in public.items() for name in names}
    clash = sorted(set(where) & set(public))
    if clash:
        raise ValueError(f"{package}: public names equal to submodule names: {clash}")

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # the next lookup does not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
