"""Models in MLflow: resolve a reference (``runs:/…``, ``models:/name/version|@alias|latest`` or a
registered name) and load the model's ``artifacts/checkpoint.pt`` (``model/checkpoint.pt`` of the run
for models logged before the pyfunc flavour): state dict + config, no pickled code.
Used by ``convlstm_dist.nowcast.nowcaster.Nowcaster``; keeps mlflow imports inside ``tracking/``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convlstm_dist.errors import UserError
from convlstm_dist.tracking.mlflow_tracker import MODEL_ARTIFACT, global_tracking_uri


def load_mlflow_model(ref: str, uri: str, device: str, tried: list[str], trust: bool = False):
    """``(model, checkpoint payload, model URI, run id, name)``; a failure raises ``UserError``
    listing ``tried``.

    The model is its ``checkpoint.pt`` (state dict + config, loaded with
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
        path = _plain_checkpoint(client, uri, model_uri, run_id, Path(d))
        if path is not None:
            model, _, payload = load_model(path, device, trust=trust)
            return model, payload, model_uri, run_id, name
    if not trust:
        raise UserError(f"cannot load model {ref!r} from MLflow ({model_uri}, run {run_id}): it has no "
                        f"{FILENAME} (plain state dict) in artifacts/ of its model nor as the run's "
                        f"{MODEL_ARTIFACT}/{FILENAME}; if it is a pickled torch module "
                        f"logged by an older convlstm-dist, {TRUST_HINT}")
    try:
        import yaml

        with global_tracking_uri(uri):
            model = mlflow.pytorch.load_model(model_uri, map_location=device)
        with tempfile.TemporaryDirectory() as d:
            tree = yaml.safe_load(Path(client.download_artifacts(run_id, "config.yaml", d)).read_text())
    except Exception as err:  # noqa: BLE001
        raise UserError(f"cannot load model {ref!r} from MLflow ({model_uri}, run {run_id}, {uri}): "
                        f"{type(err).__name__}: {err}") from None
    return model, {"config": tree, "quantity": None, "model": None, "train": {}}, model_uri, run_id, name


def _plain_checkpoint(client, uri: str, model_uri: str, run_id: str, d: Path) -> Path | None:
    """The model's plain-data ``checkpoint.pt``, downloaded into ``d``, or None.

    Models logged since the pyfunc flavour are LoggedModels with it in ``artifacts/``; older ones
    kept it as the run's ``model/checkpoint.pt`` artifact."""
    import mlflow

    from convlstm_dist.checkpoint import FILENAME

    try:
        location = _logged_model_location(client, model_uri, run_id)
        if location is not None:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/artifacts/{FILENAME}",
                                                            dst_path=str(d), tracking_uri=uri))
    except Exception:  # noqa: BLE001 - an older layout (no LoggedModel), or its artifacts are gone
        pass
    try:
        return Path(client.download_artifacts(run_id, f"{MODEL_ARTIFACT}/{FILENAME}", str(d)))
    except Exception:  # noqa: BLE001 - no plain-data model in this run: a legacy pickled one?
        return None


def _logged_model_location(client, model_uri: str, run_id: str) -> str | None:
    """The artifact location of the LoggedModel behind ``models:/NAME/VERSION`` or
    ``runs:/RUN/PATH`` (None for a model version without one)."""
    if model_uri.startswith("models:/"):
        name, _, version = model_uri[len("models:/"):].rpartition("/")
        mv = client.get_model_version(name, version)
        model_id = mv.model_id  # a local (sqlite) registry leaves it empty; the source names it
        if not model_id and (mv.source or "").startswith("models:/m-"):
            model_id = mv.source[len("models:/"):]
        return client.get_logged_model(model_id).artifact_location if model_id else None
    path = model_uri[len("runs:/"):].split("/", 1)[1] if model_uri.count("/") > 1 else ""
    outputs = client.get_run(run_id).outputs
    for out in (outputs.model_outputs if outputs else []) or []:
        logged = client.get_logged_model(out.model_id)
        if logged.name == path.strip("/"):
            return logged.artifact_location
    return None


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


