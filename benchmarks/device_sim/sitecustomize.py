"""Dry-run stand-in for the lent GPU machine's image (used by ``DRY=1 benchmarks/gpu_check.sh``).

With this folder on PYTHONPATH, every Python process (Ray's workers too: they inherit the
environment) refuses to import the modules named in ``DEVICE_SIM_BLOCK`` (comma separated;
``a.b`` blocks that submodule and below, for namespace packages such as ``google``), raising
``ModuleNotFoundError`` as if they were not installed (and ``importlib.util.find_spec`` answers
None for them). ``DEVICE_SIM_LOG=PREFIX`` appends each
refused import to ``PREFIX.<pid>``. benchmarks/device_sim/blocklist.py computes the list: every
package of this environment that neither the GPU image nor the device bundle provides.
"""

import os
import sys

_BLOCK = tuple(m for m in os.environ.get("DEVICE_SIM_BLOCK", "").split(",") if m)
_LOG = os.environ.get("DEVICE_SIM_LOG")


def _hidden(name):
    return any(name == b or name.startswith(b + ".") for b in _BLOCK)


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if _hidden(name):
            if _LOG:
                try:
                    with open(f"{_LOG}.{os.getpid()}", "a") as f:
                        f.write(f"{name}\n")
                except OSError:
                    pass
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the device dry run)", name=name)
        return None


def _patch_find_spec():
    """``importlib.util.find_spec(hidden)`` answers None, as for a package that is not installed."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, package=None):
        full = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        return None if _hidden(full) else real(name, package)

    importlib.util.find_spec = find_spec


if _BLOCK:
    sys.meta_path.insert(0, _Blocker())
    _patch_find_spec()
