"""cluster/README.md section 6, run as written on the local two-node cluster: SeaweedFS on loopback as S3
for the archive and the checkpoints, an MLflow server, ``ray job submit`` of the smoke recipe.

The fault: the submitted job's driver is killed (SIGKILL) after the run's second checkpoint reached S3.
The same ``ray job submit`` command is run again. Must hold: the second job resumes from the S3
checkpoint (not a restart) in the same MLflow run, every epoch's metrics logged exactly once, and the
run's report lands beside its checkpoints in S3.

Deviations from the README text, all in the test's favour of isolation: ``LOCAL_RAY_DIR`` and the
ports are private to the test, the MLflow server is started by the test (instead of the ``ui`` line),
each block starts with ``source $LOCAL_RAY_DIR/env`` (a new shell per block), and the train command
gets ``--set`` values that keep the run tiny on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from fixtures_cluster import REPO, LocalCluster, readme_blocks
from fixtures_s3 import find_weed

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

EPOCHS = 40  # tiny epochs (0.2-0.5 s each here): the kill must land well before the end
TINY = [f"train.epochs={EPOCHS}", "data.crops_per_window=2", "run.keep_checkpoints=2"]


def _block(name: str) -> str:
    lines = [ln for ln in readme_blocks()[name].splitlines() if not ln.startswith("export LOCAL_RAY_DIR=")]
    return "\n".join(lines)


def _train_command() -> str:
    cmd = _block("train").rstrip()
    return cmd + "".join(f" --set '{s}'" for s in TINY)


def _jobs(lc: LocalCluster) -> list[dict]:
    token = Path(lc.state, "auth_token").read_text().strip()
    req = urllib.request.Request(f"http://127.0.0.1:{lc.dash_port}/api/jobs/",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def _s3(lc: LocalCluster):
    import boto3

    env = lc.client_env()
    from convlstm_dist.data.storage import credentials_from_file

    c = credentials_from_file(env["AWS_SHARED_CREDENTIALS_FILE"])
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=c["key"], aws_secret_access_key=c["secret"])
    return client, env["BUCKET"]


def _keys(client, bucket: str, prefix: str) -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = client.list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]


def _checkpoints(client, bucket: str) -> set[str]:
    return {m.group(0) for k in _keys(client, bucket, "runs/radar-smoke/")
            if (m := re.search(r"checkpoint_e\d+_[^/]+", k))}  # not checkpoint_manager_snapshot.json


def _val_loss_steps(uri: str) -> tuple[str | None, list[int]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("radar-smoke")
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id])
    if not runs:
        return None, []
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run_id = runs[0].info.run_id
    return run_id, sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))


def test_cluster_quickstart_resumes_from_s3_after_the_driver_is_killed(tmp_path):
    if find_weed() is None:
        pytest.skip("SeaweedFS `weed` binary not found")
    from convlstm_dist.tracking.server import MlflowServer

    lc = LocalCluster()
    try:
        with MlflowServer(tmp_path / "mlflow", log_path=tmp_path / "mlflow.log") as srv:
            lc.env["MLFLOW_TRACKING_URI"] = srv.uri
            lc.env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.2"
            t0 = time.monotonic()
            out = lc.sh(_block("setup"), timeout=600)
            print(out.stdout[-2000:], out.stderr[-2000:], f"setup {time.monotonic() - t0:.0f} s")
            assert out.returncode == 0, out.stderr[-3000:]
            src = 'source "$LOCAL_RAY_DIR/env"\n'
            t0 = time.monotonic()
            out = lc.sh(src + _block("ingest"), timeout=900)
            print(out.stdout[-1000:], f"ingest {time.monotonic() - t0:.0f} s")
            assert out.returncode == 0, out.stderr[-3000:]
            assert re.search(r"into s3://convlstm/archives/knmi-sample\.zarr: \d+ frames written", out.stdout), out.stdout

            s3, bucket = _s3(lc)
            train = src + _train_command()
            print("train command:\n" + train)
            log1 = tmp_path / "first-submit.log"
            t0 = time.monotonic()
            with log1.open("w") as fh:
                first = subprocess.Popen(["bash", "-ec", train], env=lc.env, cwd=REPO, stdout=fh,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            try:
                # watch S3 itself, not the streamed job log: `ray job submit` may print a job's lines
                # many epochs late (CI, 2026-12-05: "[epoch 2/" showed up when epoch 9 was in S3)
                deadline, ready = time.monotonic() + 1200, False
                while time.monotonic() < deadline and first.poll() is None:
                    if len(_checkpoints(s3, bucket)) >= 2:
                        ready = True
                        break
                    time.sleep(0.2)
                text = log1.read_text(errors="replace")
                assert ready, f"never saw 2 checkpoints in S3 while the first job ran:\n{text[-5000:]}"
                running = [j for j in _jobs(lc) if j["status"] == "RUNNING" and "convlstm-dist train" in j["entrypoint"]]
                assert len(running) == 1, running
                job = running[0]
                pid = int(job["driver_info"]["pid"])
                assert "convlstm-dist" in " ".join(psutil.Process(pid).cmdline()) or \
                    "convlstm_dist" in " ".join(psutil.Process(pid).cmdline())
                print(f"killing driver pid {pid} of job {job['submission_id']} after "
                      f"{time.monotonic() - t0:.0f} s; checkpoints in S3: {sorted(_checkpoints(s3, bucket))}")
                os.kill(pid, signal.SIGKILL)
                first.wait(timeout=300)
            finally:
                if first.poll() is None:
                    os.killpg(first.pid, signal.SIGKILL)
                    first.wait(10)
            assert first.returncode != 0, log1.read_text()[-3000:]
            time.sleep(2)
            status = {j["submission_id"]: j["status"] for j in _jobs(lc)}[job["submission_id"]]
            assert status in ("FAILED", "STOPPED"), status
            run_id, before = _val_loss_steps(srv.uri)
            assert run_id and before[:2] == [1, 2] and max(before) < EPOCHS, before
            ckpts_before = _checkpoints(s3, bucket)

            # the same command again
            t0 = time.monotonic()
            second = lc.sh(train, timeout=1500)
            text2 = second.stdout + second.stderr
            print(text2[-6000:], f"\nresumed job took {time.monotonic() - t0:.0f} s")
            assert second.returncode == 0, text2[-5000:]
            assert f"MLflow resumed run {run_id}" in text2, text2[-5000:]
            assert "[train] resumed from " in text2, text2[-5000:]  # from the S3 checkpoint, not a restart
            resumed_from = re.search(r"\[train\] resumed from (.+)", text2).group(1)
            print("resumed from:", resumed_from)
            run_id2, steps = _val_loss_steps(srv.uri)
            assert run_id2 == run_id
            assert steps == list(range(1, EPOCHS + 1)), steps  # every epoch exactly once
            assert _checkpoints(s3, bucket) - ckpts_before, "the resumed run wrote no new checkpoint to S3"
            reports = [k for k in _keys(s3, bucket, "runs/radar-smoke/reports/") if k.endswith("skill.csv")]
            assert reports, "the job's report was not copied beside its checkpoints"
            from mlflow.tracking import MlflowClient

            assert MlflowClient(srv.uri).get_run(run_id).info.status == "FINISHED"
    finally:
        out = lc.sh(src_stop(), timeout=300) if Path(lc.state, "env").exists() else None
        if out is not None:
            print(out.stdout[-2000:], out.stderr[-1000:])
        lc.__exit__(None, None, None)


def src_stop() -> str:
    return 'source "$LOCAL_RAY_DIR/env"\n' + _block("stop").replace("cluster/local_cluster.sh status\n", "")
