"""MLflow tracking (the only package that imports mlflow)."""


def mlflow_available() -> bool:
    """Whether mlflow can be imported here (training without tracking needs none)."""
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


__all__ = ["mlflow_available"]
