"""Hyperparameter sweeps: Ray Tune (ASHA) over distributed Ray Train trials, MLflow parent/child runs.

:func:`run_sweep` (:mod:`.sweep`) runs a sweep YAML; :func:`load_sweep` / :class:`SweepSpec`
(:mod:`.space`) read and check one. Importing this package loads none of its modules.
"""

from convlstm_dist.lazy import lazy_exports

_PUBLIC = {
    "space": ["SweepSpec", "load_sweep"],
    "report": ["SweepOutcome"],
    "sweep": ["run_sweep"],
}
__all__ = [name for names in _PUBLIC.values() for name in names]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
