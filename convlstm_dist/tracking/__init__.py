"""MLflow tracking (the only package that imports mlflow).

:class:`Tracker` (:mod:`.mlflow_tracker`) is a run (start or resume, params, metrics, artifacts,
the model); :func:`load_mlflow_model` (:mod:`.models`) resolves ``runs:/`` and ``models:/``
references; :class:`MlflowServer` (:mod:`.server`) is a local tracking server on loopback.
Importing this package does not import mlflow; :func:`mlflow_available` says whether it can be.
"""

from convlstm_dist.lazy import lazy_exports


def mlflow_available() -> bool:
    """Whether mlflow can be imported here (training without tracking needs none)."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


_PUBLIC = {
    "mlflow_tracker": ["Tracker", "check_reachable"],
    "runs": ["ended_on_failure", "log_stamped_run"],
    "models": ["load_mlflow_model"],
    "outbox": ["upload_command", "upload_outbox", "write_outbox"],
    "server": ["MlflowServer"],
}
__all__ = ["mlflow_available", *(name for names in _PUBLIC.values() for name in names)]
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
