"""Fault: one chunk object of a radar archive has flipped bytes (bit rot, a bad copy), local and on S3.

When: after ingest, before anything reads the archive.
Must hold afterwards:
- ``archive-info --verify URL`` reads every chunk and lists exactly that chunk with its frames and
  time range, and exits 1 (0 on the intact archive);
- training (Ray Train, streamed batches, and ``train --local``) and ``evaluate`` stop with one line
  naming the chunk key and the time range, not a codec traceback;
- ``data.skip_damaged: true`` trains, leaving out exactly the windows that touch the damaged frames
  (their count is logged), and keeps every other window;
- nothing is rewritten: the damaged object keeps its bytes, every other chunk still decodes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from convlstm_dist.config import load_config
from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.ingest import ingest
from convlstm_dist.data.plan import DataPlan
from convlstm_dist.data.shipped import SAMPLE_READER, sample_files

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "pipelines" / "radar_smoke.yaml"
T_CHUNK = 2                         # the damaged object holds frames 32..47 (chunks of 16 frames)
FRAMES = (32, 47)
TIMES = ("2010-08-26T02:40:00", "2010-08-26T03:55:00")   # frames 32 and 47 of the 5-min sample from 00:00


def _cli(*args, timeout=600, env=None):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", *args], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})
    return p, time.perf_counter() - t0


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    for i in range(mid, mid + 64):
        b[i] ^= 0xFF
    return bytes(b)


def _damaged_key(url: Path) -> str:
    """The largest object of time chunk T_CHUNK (it holds radar echoes, so it is certainly written)."""
    objs = sorted((url / "rain_mmh" / "c" / str(T_CHUNK)).glob("*/*"), key=lambda p: p.stat().st_size)
    return str(objs[-1].relative_to(url))


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    intact = root / "intact.zarr"
    ingest(SAMPLE_READER, sample_files(), str(intact), parallel=False, progress=False)
    damaged = root / "damaged.zarr"
    shutil.copytree(intact, damaged)
    key = _damaged_key(damaged)
    obj = damaged / key
    obj.write_bytes(_flip(obj.read_bytes()))
    return intact, damaged, key, obj.read_bytes()


def _cfg_args(archive, *extra):
    sets = [f"data.archive={archive}", "tracking.enabled=false", "train.epochs=1", "data.loader=stream", *extra]
    return [a for s in sets for a in ("--set", s)]


def test_verify_lists_the_damaged_chunk_and_its_time_range(archives):
    intact, damaged, key, _ = archives
    p, seconds = _cli("archive-info", str(damaged), "--verify", "--workers", "4")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 damaged chunk(s)" in p.stdout
    assert f"{key} (frames {FRAMES[0]}..{FRAMES[1]}, {TIMES[0]} .. {TIMES[1]})" in p.stdout
    assert f"{TIMES[0]} .. {TIMES[1]}  (frames {FRAMES[0]}..{FRAMES[1]})" in p.stdout
    assert "verify" in p.stderr and "chunk" in p.stderr      # the progress bar
    print(f"\n[measure] archive-info --verify on the damaged archive: {seconds:.1f} s")
    ok, _ = _cli("archive-info", str(intact), "--verify", "--quiet")
    assert ok.returncode == 0 and "every chunk of 92 frames decodes" in ok.stdout


def test_verify_on_s3_names_the_damaged_object(archives, s3_server):
    intact, _, key, _ = archives
    url = s3_server.url("damaged") + ".zarr"
    ingest(SAMPLE_READER, sample_files(), url, s3_server.storage_options(), parallel=False, progress=False)
    s3 = s3_server._client()
    prefix = url.split(f"{s3_server.bucket}/", 1)[1]
    objs = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}/rain_mmh/c/{T_CHUNK}/")["Contents"]
    target = max(objs, key=lambda o: o["Size"])["Key"]
    body = s3.get_object(Bucket=s3_server.bucket, Key=target)["Body"].read()
    s3.put_object(Bucket=s3_server.bucket, Key=target, Body=_flip(body))
    p, _ = _cli("archive-info", url, "--verify", "--quiet", env=s3_server.env())
    assert p.returncode == 1, p.stdout + p.stderr
    assert target.split(f"{prefix}/", 1)[1] in p.stdout and f"{TIMES[0]} .. {TIMES[1]}" in p.stdout
    assert s3_server.storage_options()["secret"] not in p.stdout + p.stderr


def test_ray_training_stops_with_the_chunk_and_time_range(archives, ray_local, tmp_path):
    from convlstm_dist.errors import UserError
    from convlstm_dist.train.driver import run_training

    _, damaged, key, before = archives
    cfg = load_config(SMOKE, [f"data.archive={damaged}", "tracking.enabled=false", "train.epochs=1",
                              "data.loader=stream", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
                              "run.max_failures=0", f"run.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(UserError) as err:
        run_training(cfg, tmp_path, progress=False)
    msg = str(err.value)
    assert key in msg and f"{TIMES[0]} .. {TIMES[1]}" in msg and "archive-info --verify" in msg, msg
    assert "\n" not in msg and "Traceback" not in msg
    assert (damaged / key).read_bytes() == before                 # nothing rewritten


def test_local_training_and_evaluate_name_the_chunk_then_skip_damaged_trains(archives, tmp_path):
    intact, damaged, key, before = archives
    base = ["train", "--local", "--device", "cpu", "--config", str(SMOKE), "--quiet"]

    # without the opt-in: one line naming the chunk, exit 2
    p, _ = _cli(*base, "--workdir", str(tmp_path / "a"), *_cfg_args(damaged))
    assert p.returncode == 2, p.stdout + p.stderr
    assert key in p.stderr and f"{TIMES[0]} .. {TIMES[1]}" in p.stderr
    assert "Traceback" not in p.stderr and "blosc" not in p.stdout

    # the opt-in: the windows touching frames 32..47 are left out, and only those
    length = 8  # in_len 4 + out_len 4 (radar_smoke)
    full = DataPlan.from_config(load_config(SMOKE, [f"data.archive={intact}"]), tmp_path)
    expected = {s: [int(t) for t in st if t + length > FRAMES[0] and t <= FRAMES[1]]
                for s, st in full.starts.items()}
    n_drop = sum(len(v) for v in expected.values())
    assert n_drop > 0
    t0 = time.perf_counter()
    p, _ = _cli(*base, "--workdir", str(tmp_path / "b"), *_cfg_args(damaged, "data.skip_damaged=true"))
    seconds = time.perf_counter() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert f"dropped {n_drop} windows" in out and "1 damaged chunk(s)" in out, out
    skipped = DataPlan.from_config(load_config(SMOKE, [f"data.archive={damaged}", "data.skip_damaged=true"]),
                                   tmp_path)
    for s in full.starts:
        kept = set(int(t) for t in skipped.starts[s])
        assert kept == set(int(t) for t in full.starts[s]) - set(expected[s])   # every other window kept
    assert skipped.record["damaged"]["chunks"] == [key]
    print(f"\n[measure] train --local with data.skip_damaged (verify + 1 epoch): {seconds:.1f} s")

    # evaluate with the model just trained, on the damaged archive: one line naming the chunk
    model = tmp_path / "b" / "local" / "radar-smoke" / "best"
    assert model.exists()
    p, _ = _cli("evaluate", "--model", str(model), "--archive", str(damaged), "--split", "all",
                "--workers", "1", "--no-mlflow", "--baselines", "persistence", "--workdir", str(tmp_path / "c"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert key in p.stderr and f"{TIMES[0]} .. {TIMES[1]}" in p.stderr
    assert "Traceback" not in p.stderr
    assert (damaged / key).read_bytes() == before
    arc = open_archive(str(damaged))
    assert np.isfinite(arc.read(0, 32)).any() and np.isfinite(arc.read(48, 92)).any()  # the rest decodes
