"""Scenario 1: the S3 store goes away while Ray Data read tasks stream the archive (issue 26).

Fault: ``convlstm-dist train`` streams an ``s3://`` archive (``data.loader=stream``) from a private
SeaweedFS on loopback; as soon as epoch 1 is reported, SeaweedFS is stopped for ~20 s -- the
next epoch's read tasks meet a refused endpoint -- then restarted on the same folder, ports and
keys (its data persist).
Must hold afterwards: the run rides it out (reads retry with backoff, ``data.read_retries``): it
ends with exit 0, the same MLflow run has every epoch's metrics exactly once, the step count
continued without a restart, and the log says which reads waited and that the store answered again.

Second fault: the store never comes back within the budget (``data.read_retries=1``,
``run.max_failures=0``). Must hold: the run stops with exit 2 and one line that names the endpoint
and the key that could not be read, never the secret key.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files
from fixtures_s3 import SeaweedServer, find_weed

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
OUTAGE_S = 20.0


def _command(wd: Path, url: str, endpoint: str, name: str, *extra: str) -> list[str]:
    sets = ["data.loader=stream", f"data.archive={url}", f"data.endpoint_url={endpoint}", "data.crops_per_window=4",
            f"train.epochs={EPOCHS}", f"name={name}", *extra]
    cmd = [sys.executable, "-m", "convlstm_dist.cli", "train", "--config", str(REPO / "pipelines" / "radar_smoke.yaml"),
           "--workdir", str(wd)]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _env(server: SeaweedServer) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env.update(server.env())
    env.update(PYTHONPATH=str(REPO), RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2", PYTHONUNBUFFERED="1")
    return env


def _wait_for(log: Path, proc: subprocess.Popen, text: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if text in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared (exit {proc.poll()}):\n{log.read_text(errors='replace')[-5000:]}")


def _mlflow_history(wd: Path, experiment: str, key: str) -> tuple[list, list]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    hist = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
    return [m.step for m in hist], [m.value for m in hist]


@pytest.fixture
def private_s3(tmp_path):
    """A SeaweedFS of this test alone (it is stopped and restarted), with the sample archive in it."""
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found")
    server = SeaweedServer(workdir=tmp_path / "seaweed")
    server.start()
    try:
        url = server.url("outage") + ".zarr"
        ingest(SAMPLE_READER, sample_files(), url, storage_options=server.storage_options(), parallel=False,
               progress=False)
        yield server, url
    finally:
        server.stop()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def test_s3_outage_mid_epoch_is_ridden_out_every_epoch_once(private_s3, tmp_path):
    server, url = private_s3
    wd = tmp_path / "wd"
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_command(wd, url, server.endpoint_url, "s3-outage", "data.read_retries=8"),
                                env=_env(server), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    try:
        _wait_for(log, proc, f"[epoch 1/{EPOCHS}]")
        # the fault: the store goes away while epoch 2's read tasks stream the archive
        server.stop(keep_data=True)
        t_down = time.monotonic()
        time.sleep(OUTAGE_S)
        server.start()  # same folder, ports and keys: the data are still there
        t_up = time.monotonic()
        assert proc.wait(1200) == 0, log.read_text(errors="replace")[-6000:]
    finally:
        _kill_group(proc)
    text = log.read_text(errors="replace")
    done = re.search(r"training finished in (\d+) s", text)
    assert done, text[-4000:]
    # the reads that met the outage waited and said so; then the store answered again
    assert "[data] storage unreachable while reading frames" in text, text[-6000:]
    assert server.rw.secret_key not in text
    assert "[data] storage answered again" in text, text[-6000:]
    assert "[train] resumed from" not in text  # ridden out, no restart from a checkpoint
    steps, _ = _mlflow_history(wd, "s3-outage", "val_loss")
    assert steps == list(range(1, EPOCHS + 1)), steps  # every epoch exactly once
    _, counter = _mlflow_history(wd, "s3-outage", "step")
    assert counter == [counter[0] * k for k in range(1, EPOCHS + 1)], counter  # the step count continued
    print(f"scenario 1: outage {t_up - t_down:.0f} s (store stopped {OUTAGE_S:.0f} s + restart); "
          f"retry lines {text.count('[data] storage unreachable')}; training took {done.group(1)} s")


def test_s3_outage_past_the_budget_names_endpoint_and_key(private_s3, tmp_path):
    server, url = private_s3
    wd = tmp_path / "wd"
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_command(wd, url, server.endpoint_url, "s3-gone", "data.read_retries=1",
                                         "run.max_failures=0"),
                                env=_env(server), stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)
    try:
        _wait_for(log, proc, f"[epoch 1/{EPOCHS}]")
        server.stop(keep_data=True)  # and it does not come back
        code = proc.wait(1200)
    finally:
        _kill_group(proc)
    text = log.read_text(errors="replace")
    assert code == 2, text[-6000:]
    last = [ln for ln in text.splitlines() if "error:" in ln][-1]
    assert f"cannot reach the storage endpoint {server.endpoint_url} while reading frames" in last, last
    assert re.search(r"\(key convlstm-test/outage-[0-9a-f]+\.zarr/\S+\)", last), last
    assert "data.read_retries" in last, last
    assert server.rw.secret_key not in text and server.rw.secret_key not in "".join(
        p.read_text(errors="replace") for p in (wd / "logs").glob("*.log"))
