"""Models in MLflow: resolve a reference (``runs:/…``, ``models:/name/version|@alias|latest`` or a
registered name) and load the run's ``model/checkpoint.pt`` (state dict + config, no pickled code).
Used by ``convlstm_dist.nowcast.nowcaster.Nowcaster``; keeps mlflow imports inside ``tracking/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convlstm_dist.errors import UserError
from convlstm_dist.tracking.mlflow_tracker import MODEL_ARTIFACT


def load_mlflow_model(ref: str, uri: str, device: str, tried: list[str], trust: bool = False):
    """``(model, checkpoint payload, model URI, run id, name)``; a failure raises ``UserError``
    listing ``tried``.

    The model is the run's ``model/checkpoint.pt`` (state dict + config, loaded with
    ``weights_only=True``). A model logged by older versions as a pickled torch module is loaded
    only with ``trust=True`` (``--trust-model``): unpickling it would run code named in the file.
    """
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        model_uri, run_id, name = _resolve_mlflow(client, ref)
    except UserError as err:
        tried.append(str(err))
        raise UserError(f"cannot load model {ref!r}: " + "; ".join(tried)) from None
    except Exception as err:  # noqa: BLE001 - MLflow raises many kinds; the user needs the message
        tried.append(f"MLflow at {uri}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
        raise UserError(f"cannot load model {ref!r}: " + "; ".join(tried)) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from convlstm_dist.checkpoint import FILENAME, TRUST_HINT, load_model

    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, f"{MODEL_ARTIFACT}/{FILENAME}", d)
        except Exception:  # noqa: BLE001 - no plain-data model in this run: a legacy pickled one?
            path = None
        if path is not None:
            model, _, payload = load_model(path, device, trust=trust)
            return model, payload, model_uri, run_id, name
    if not trust:
        raise UserError(f"cannot load model {ref!r} from MLflow ({model_uri}, run {run_id}): it has no "
                        f"{MODEL_ARTIFACT}/{FILENAME} (plain state dict); if it is a pickled torch module "
                        f"logged by an older convlstm-dist, {TRUST_HINT}")
    try:
        import yaml

        mlflow.set_tracking_uri(uri)
        model = mlflow.pytorch.load_model(model_uri, map_location=device)
        with tempfile.TemporaryDirectory() as d:
            tree = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", d)).read_text())
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot load model {ref!r} from MLflow ({model_uri}, run {run_id}, {uri}): "
                        f"{type(err).__name__}: {err}") from None
    return model, {"config": tree, "quantity": None, "model": None, "train": {}}, model_uri, run_id, name


def _resolve_mlflow(client, ref: str) -> tuple[str, str, str]:
    """``(model URI to load, run id holding config.yaml, model name)`` for an MLflow reference."""
    if ref.startswith("runs:/"):
        rest = ref[len("runs:/"):]
        run_id = rest.split("/", 1)[0]
        run = client.get_run(run_id)
        return ref, run_id, run.data.tags.get("mlflow.runName", run_id)
    if ref.startswith("models:/"):
        rest = ref[len("models:/"):]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            mv = _latest_version(client, name) if version in ("", "latest") else client.get_model_version(name, version)
    else:
        name = ref
        mv = _latest_version(client, name)
    if not mv.run_id:
        raise UserError(f"MLflow model {name} version {mv.version} has no run (cannot find its config.yaml)")
    return f"models:/{name}/{mv.version}", mv.run_id, name


def _latest_version(client, name: str):
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise UserError(f"no registered MLflow model named {name!r}")
    return max(versions, key=lambda v: int(v.version))


