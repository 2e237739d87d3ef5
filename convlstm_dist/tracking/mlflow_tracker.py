"""MLflow tracking — the only module that imports mlflow.

One experiment per recipe, one MLflow run per training run. A run is found again by the tag
``convlstm_dist.run_key`` (the stable run name), so the same command after a crash continues
the same MLflow run instead of opening a new one. Parameters are the flattened resolved config;
storage options and anything that looks like a secret are never logged.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from convlstm_dist.errors import UserError
from convlstm_dist import tracking  # tracking.mlflow_available, looked up at call time
from convlstm_dist.vocabulary import LEADS_PARAM

# The package travels in every logged model's code/ folder; MLflow runs the python_function model
# from code, nowcast/pyfunc_model.py, which it gets by path (it is not imported here: that file
# stands above tracking/, on the Nowcaster)
PACKAGE_DIR = Path(__file__).resolve().parents[1]
PYFUNC_MODEL_FILE = PACKAGE_DIR / "nowcast" / "pyfunc_model.py"

RUN_KEY_TAG = "convlstm_dist.run_key"
MODEL_ARTIFACT = "model"
WEIGHTS_TAG = "convlstm_dist.weights_sha256"
_SECRET = re.compile(r"(secret|password|token|key$|credential)", re.I)


MISSING_MLFLOW = ("tracking is enabled but mlflow is not installed: install it (pip install 'mlflow==3.17.2') "
                  "or turn tracking off (--set tracking.enabled=false)")


def _mlflow():
    try:
        import mlflow
    except ModuleNotFoundError as err:
        if err.name != "mlflow":
            raise

        raise UserError(MISSING_MLFLOW) from None
    import logging

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." and the like
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


# The packages the pyfunc model needs where it is served (``--env-manager virtualenv|uv`` installs
# them; ``local`` uses the current environment). convlstm-dist itself is not on PyPI: it travels in
# the model's ``code/`` folder instead. torch is pinned by release without a local tag (``+cpu``):
# choose CPU or CUDA wheels with pip's index (``PIP_EXTRA_INDEX_URL``) where the model is served.
MODEL_PACKAGES = ("mlflow", "torch", "numpy", "pydantic", "pyyaml", "cloudpickle")


def model_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in MODEL_PACKAGES:
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a ``sqlite:///`` database
    (``<db folder>/mlartifacts/<experiment>``), so a local store never writes to ``./mlruns`` of the
    current directory (MLflow's default); ``None`` (the server's choice) for a tracking server."""
    if not uri.startswith("sqlite:///"):
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("_") or "experiment"
    return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / slug).as_uri()


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's global tracking URI set to ``uri`` for the block (``Model.log`` and ``models:/``
    loading read the global one), then put back as it was: unset stays unset. MLflow's
    ``set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; restoring a default URI by setting it
    would leave that variable behind, and every later command of the process would track there."""
    mlflow = _mlflow()
    was_set = "MLFLOW_TRACKING_URI" in os.environ
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous if was_set else None)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (before any cluster work) when tracking cannot work: mlflow is not installed or
    a tracking server does not answer."""
    if not tracking.mlflow_available():
        raise UserError(MISSING_MLFLOW)
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).read()
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({getattr(err, 'reason', err)}); start it "
                        "(`convlstm-dist ui` serves a local one) or set tracking.uri / MLFLOW_TRACKING_URI") from None


def safe_params(flat: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in flat.items():
        if _SECRET.search(k.split(".")[-1]):
            continue
        s = str(v)
        out[k] = s if len(s) <= 500 else s[:497] + "..."
    return out


class Tracker:
    """A handle on one MLflow run, usable from the driver and from rank 0 (by ``run_id``).

    **Outages of a tracking server.** MLflow's client retries a failed request with backoff for
    ~4 minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``), which would hold training still for as long,
    and then raise. Per-epoch metrics therefore go through :meth:`log_epoch`: when the server does
    not answer ``/health`` (a quick probe) they are kept in memory and sent, in epoch order, with
    the first epoch after it is back. At the end of a run the driver waits for the server
    (:meth:`wait_reachable`), sends the epochs it lacks from the checkpoint's history
    (:meth:`send_missing`), or, if it never returns, keeps everything in an outbox file in the
    workdir (``tracking/outbox.py``) for ``convlstm-dist mlflow-upload``.
    """

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = None
        self.pending: list[tuple[int, dict]] = []  # epochs kept while the server was unreachable
        self.offline = False  # set by the driver when the server did not come back: skip end()

    def reachable(self, timeout_s: float = 3.0) -> bool:
        """Whether the tracking server answers ``/health`` now (a local store: always)."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_reachable(self, timeout_s: float, say=None, poll_s: float = 2.0) -> bool:
        """Wait up to ``timeout_s`` for the server to answer; says once that it waits."""
        import time

        deadline = time.monotonic() + max(0.0, timeout_s)
        if self.reachable():
            return True
        if say is not None:
            say(f"[mlflow] tracking server {self.uri} does not answer: waiting up to {timeout_s:.0f} s for it "
                "(tracking.outage_wait_s)")
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            if self.reachable():
                return True
        return False

    def log_epoch(self, metrics: dict[str, float], step: int) -> str | None:
        """One epoch's metrics, never blocking training on an unreachable server: sent now (with any
        epochs kept before, in order), or kept for later. Returns a line for the log when epochs were
        kept or sent late, else None."""
        self.pending.append((int(step), dict(metrics)))
        if not self.reachable():
            return (f"[mlflow] tracking server {self.uri} unreachable: metrics of epoch(s) "
                    f"{', '.join(str(s) for s, _ in self.pending)} kept; they are sent when it answers again")
        late = len(self.pending) - 1
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - an outage must not stop training
            return (f"[mlflow] sending epoch(s) {', '.join(str(s) for s, _ in self.pending)} to {self.uri} failed "
                    f"({type(exc).__name__}); kept, sent with the next epoch")
        return f"[mlflow] tracking server {self.uri} answers again: sent {late} kept epoch(s)" if late else None

    def flush(self) -> int:
        """Send the kept epochs (oldest first; an epoch the run already has is not sent twice)."""
        if not self.pending:
            return 0
        have = {int(s) for s, _ in self.metric_history("val_loss")} if len(self.pending) > 1 else set()
        n = 0
        while self.pending:
            step, metrics = self.pending[0]
            if step not in have:
                self.log_metrics(metrics, step)
                n += 1
            self.pending.pop(0)
        return n

    def send_missing(self, history: list[dict]) -> list[int]:
        """Log every epoch of ``history`` (a checkpoint's per-epoch metrics, each with ``epoch``) that
        this run does not have yet; returns those epochs."""
        have = {int(s) for s, _ in self.metric_history("val_loss")}
        sent = []
        for m in history:
            step = int(m.get("epoch") or 0)
            if step and step not in have:
                self.log_metrics(m, step)
                have.add(step)
                sent.append(step)
        self.pending.clear()
        return sent

    @property
    def client(self):
        if self._client is None:
            self._client = _mlflow().MlflowClient(tracking_uri=self.uri)
        return self._client

    @classmethod
    def start_or_resume(cls, uri: str, experiment: str, run_key: str, tags: dict | None = None) -> tuple["Tracker", bool]:
        """The MLflow run tagged ``run_key`` in ``experiment`` (created if absent). Returns (tracker, resumed)."""
        mlflow = _mlflow()
        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            experiment, artifact_location=artifact_location(uri, experiment),
            tags={"mlflow.experimentKind": "custom_model_development"})  # "Training runs" in the UI
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
                                   max_results=1, order_by=["attributes.start_time DESC"])
        if found:
            run = found[0]
            client.update_run(run.info.run_id, status="RUNNING")
            t = cls(uri, run.info.run_id)
            t._client = client
            return t, True
        run = client.create_run(exp_id, run_name=run_key, tags={RUN_KEY_TAG: run_key, **(tags or {})})
        t = cls(uri, run.info.run_id)
        t._client = client
        return t, False

    def log_params(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = safe_params(flat)
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step) for k, v in metrics.items()
              if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(text)
            self.log_artifact(p)

    def log_model(self, checkpoint_dir: str | Path, registered_name: str | None = None,
                  example=None) -> str:
        """Log a checkpoint as this run's model (an MLflow 3 LoggedModel linked to the run) and
        register it; returns ``models:/NAME/VERSION`` (or ``models:/MODEL_ID`` without a name).

        The model is a ``python_function`` model from code
        (:mod:`convlstm_dist.nowcast.pyfunc_model`), so ``mlflow.pyfunc.load_model`` and ``mlflow
        models serve`` work, with a signature, an input example (``example``: the last ``in_len``
        frames in mm/h, ``(frames, H, W)``; zeros when not given) and pinned requirements. Its
        ``artifacts/checkpoint.pt`` is the slim checkpoint (state dict + resolved config, loadable
        with ``weights_only=True``) that ``Nowcaster.load`` reads (the MLmodel's ``metadata``
        says so); ``artifacts/recipe.yaml`` is the config. Nothing is pickled.
        A run that already registered these same weights under ``registered_name`` is not
        registered again (a rerun of a finished run); a resumed run that trained further registers
        its new weights as a new version.
        """
        from convlstm_dist.checkpoint import read_checkpoint, weights_digest

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

        payload = read_checkpoint(checkpoint_dir)
        digest = weights_digest(payload["model"])
        if registered_name:
            same = [v for v in self._versions(registered_name)
                    if v.run_id == self.run_id and (v.tags or {}).get(WEIGHTS_TAG) == digest]
            if same:  # this run already registered these very weights (a rerun of a finished run)
                return f"models:/{registered_name}/{max(int(v.version) for v in same)}"
        mlflow = _mlflow()
        # Model.log logs to the global tracking URI, and a local registry finds the LoggedModel
        # there too: set it to this run's for the call only
        with global_tracking_uri(self.uri):
            with tempfile.TemporaryDirectory() as d:
                info = self._log_pyfunc(payload, Path(d), example, digest)
            if not registered_name:
                return info.model_uri
            try:
                self.client.create_registered_model(registered_name)
            except mlflow.exceptions.MlflowException as err:
                if "RESOURCE_ALREADY_EXISTS" not in str(err) and "already exists" not in str(err):
                    raise
            mv = self.client.create_model_version(registered_name, info.model_uri, run_id=self.run_id,
                                                  tags={WEIGHTS_TAG: digest}, model_id=info.model_id)
        return f"models:/{registered_name}/{mv.version}"

    def _log_pyfunc(self, payload: dict, tmp: Path, example, digest: str):
        import numpy as np
        import yaml

        from convlstm_dist.checkpoint import slim_checkpoint

        mlflow = _mlflow()
        import mlflow.models
        import mlflow.types

        Model, ModelSignature = mlflow.models.Model, mlflow.models.ModelSignature
        ParamSchema, ParamSpec = mlflow.types.ParamSchema, mlflow.types.ParamSpec
        Schema, TensorSpec = mlflow.types.Schema, mlflow.types.TensorSpec

        cfg = payload["config"]
        in_len, out_len = int(cfg["data"]["in_len"]), int(cfg["data"]["out_len"])
        ckpt = slim_checkpoint(payload, tmp / "weights")
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if example is None:
            m = cfg.get("model", {})
            h, w = (int(m["height"]), int(m["width"])) if m.get("kind") == "fclstm" else (2 * int(m.get("patch", 1)),) * 2
            example = np.zeros((in_len, h, w), np.float32)
        example = np.ascontiguousarray(example, dtype=np.float32)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (in_len, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
            params=ParamSchema([ParamSpec(LEADS_PARAM, "long", out_len)]))
        code = tmp / "code" / "convlstm_dist"
        shutil.copytree(PACKAGE_DIR, code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "sample_data"))
        run = self.client.get_run(self.run_id)
        # created here, not by Model.log: that would file it under the current experiment of the
        # process (Default), not the run's
        logged = self.client.create_logged_model(run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=self.run_id,
                                                 params=dict(run.data.params), tags={WEIGHTS_TAG: digest})
        import sys

        path = list(sys.path)  # validating the input example loads the model, which prepends its code/
        try:
            return Model.log(
                artifact_path=None, name=MODEL_ARTIFACT, flavor=mlflow.pyfunc, run_id=self.run_id,
                model_id=logged.model_id, python_model=str(PYFUNC_MODEL_FILE),
                artifacts={"checkpoint": str(ckpt), "recipe": str(recipe)},
                code_paths=[str(code)], signature=signature,
                input_example=(example, {LEADS_PARAM: out_len}),
                pip_requirements=model_requirements(),
                metadata={"convlstm_dist": {"checkpoint": "artifacts/checkpoint.pt", "recipe": "artifacts/recipe.yaml",
                                            "format": 1, "loader": "convlstm_dist.Nowcaster.load"}})
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, mlflow.entities.LoggedModelStatus.FAILED)
            raise
        finally:
            sys.path[:] = path

    def _versions(self, name: str) -> list:
        mlflow = _mlflow()
        try:
            return list(self.client.search_model_versions(f"name = '{name}'"))
        except mlflow.exceptions.MlflowException:
            return []

    def end(self, status: str = "FINISHED") -> None:
        if self.offline:  # the outbox records the status (tracking/outbox.py)
            return
        self.client.set_terminated(self.run_id, status=status)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]
