"""The trained model is a standard MLflow model: after a real (tiny) training run with tracking on,
``mlflow.pyfunc.load_model`` forecasts from the logged input example, the signature is set, the
project's own loader gives the same forecast, ``mlflow models serve --env-manager local`` answers
``/invocations`` on loopback, and every MLflow artifact lies under the workdir, not the CWD."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.config import load_config
from convlstm_dist.tracking.mlflow_tracker import global_tracking_uri
from synthetic import make_archive

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "radar_smoke.yaml"
NAME = "pyfunc-smoke"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of ``train --local`` on a 32x32 synthetic archive, started from a CWD that is not
    the workdir: (workdir, tracking URI, cwd)."""
    from convlstm_dist.train.local import train_local

    base = tmp_path_factory.mktemp("pyfunc")
    archive = base / "a.zarr"
    make_archive(archive, n=60, h=32, w=32)
    workdir, cwd = base / "wd", base / "elsewhere"
    cwd.mkdir()
    cfg = load_config(SMOKE, [f"name={NAME}", f"data.archive={archive}", "model.height=32", "model.width=32",
                              "data.split.block_hours=1.0", "train.epochs=1"])
    old = os.getcwd()
    os.chdir(cwd)
    try:
        out = train_local(cfg, workdir, device="cpu", progress=False)
    finally:
        os.chdir(old)
    assert out.model_uri == f"models:/{NAME}/1", out.model_uri
    return workdir, f"sqlite:///{workdir.resolve() / 'mlflow.db'}", cwd


def test_trained_model_loads_with_mlflow_pyfunc(trained):
    import mlflow
    from mlflow.models import Model

    from convlstm_dist.nowcast import Nowcaster

    workdir, uri, cwd = trained
    with global_tracking_uri(uri):  # models:/ resolves through the global registry URI
        info = mlflow.models.get_model_info(f"models:/{NAME}/1")
        assert info.signature is not None
        assert info.signature.inputs.inputs[0].shape == (4, -1, -1)
        assert [p.name for p in info.signature.params] == ["leads"]
        assert "python_function" in info.flavors
        assert info.run_id and info.model_id  # an MLflow 3 LoggedModel linked to its run
        assert info.model_id in [o.model_id for o in mlflow.MlflowClient().get_run(info.run_id).outputs.model_outputs]

        local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(workdir / "dl"))
        example = Model.load(local).load_input_example(local)
        assert example.shape == (4, 32, 32) and example.dtype == np.float32
        meta = Model.load(local).metadata["convlstm_dist"]
        assert Path(local, meta["checkpoint"]).is_file() and Path(local, meta["recipe"]).is_file()
        assert not list(Path(local).rglob("*.pkl")), "nothing pickled in the model"
        reqs = Path(local, "requirements.txt").read_text().split()
        assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("mlflow==3.17.2") for r in reqs), reqs
        assert Path(local, "code", "convlstm_dist", "nowcast", "nowcaster.py").is_file()

        model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
        fc = model.predict(example)
        assert fc.shape == (4, 32, 32) and fc.dtype == np.float32 and np.isfinite(fc).all()
        assert model.predict(example, params={"leads": 6}).shape == (6, 32, 32)

    # the project's own loader reads the same weights and forecasts the same
    nc = Nowcaster.load(f"models:/{NAME}/1", tracking_uri=uri)
    np.testing.assert_allclose(nc.predict(example), fc, rtol=1e-5, atol=1e-6)

    # artifacts under the workdir, nothing in the CWD the command was started from
    assert not (cwd / "mlruns").exists() and not list(cwd.iterdir()), list(cwd.iterdir())
    assert list((workdir / "mlartifacts").rglob("checkpoint.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["mlflow", "convlstm-dist"])
def test_mlflow_models_serve_answers_invocations(trained, tmp_path, how):
    """``mlflow models serve`` itself, and ``convlstm-dist serve`` (which wraps it: the workdir's
    store, a registered name's latest version, and this environment's ``uvicorn`` without an
    activated venv)."""
    workdir, uri, _ = trained
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    if how == "mlflow":  # `mlflow models serve` starts `uvicorn` from PATH
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    else:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir)
        cmd = [str(bin_dir / "convlstm-dist"), "serve", "--model", NAME, "--workdir", str(workdir), "--port", str(port)]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if urllib.request.urlopen(base + "/ping", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 300 s"
            time.sleep(1)
        import mlflow

        with global_tracking_uri(uri):  # models:/ resolves through the global registry URI
            local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "m"))
        body = Path(local, "serving_input_example.json").read_bytes()
        assert json.loads(body)["params"] == {"leads": 4}
        req = urllib.request.Request(base + "/invocations", data=body, headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
        fc = np.asarray(answer["predictions"], dtype=np.float32)
        assert fc.shape == (4, 32, 32) and np.isfinite(fc).all()

        # more leads through the params entry
        doc = json.loads(body)
        doc["params"] = {"leads": 2}
        req = urllib.request.Request(base + "/invocations", data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "application/json"})
        assert np.asarray(json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]).shape == (2, 32, 32)
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """End the server and the uvicorn it started (its own process group, started by this test)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
