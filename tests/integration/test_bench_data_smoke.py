"""benchmarks/bench_data.py end to end on a small benchmark archive (512 frames), local only."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_bench_data_prints_its_tables_and_result_lines(tmp_path):
    if not (REPO.parent / "shared" / "data" / "radar" / "knmi").is_dir():
        pytest.skip("the real radar events (../shared/data/radar) are not here")
    out = tmp_path / "result"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_data.py"), "--frames", "512",
                           "--samples", "200", "--no-s3", "--no-before", "--no-memory-check",
                           "--cache", str(tmp_path / "cache"), "--out", str(out)],
                          capture_output=True, text=True, timeout=800, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ray_over_plain_per_cpu=\d+\.\d\d", lines[-1]), lines[-5:]
    for key in ("first_batch_warm_s", "first_batch_cold_s", "cpu_s_per_sample_local_plain_loop_read",
                "cpu_s_per_sample_local_ray_data_1_cpu_consumer", "cpu_s_per_sample_local_ray_data_2_cpu_read"):
        assert re.search(rf"(^| ){key}=\d+\.\d+", proc.stdout, re.M), key
    assert "local   Ray Data, 2 CPU" in proc.stdout and "peak RSS by process kind" in proc.stdout
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["path"]: r for r in result["rows"]}
    assert set(rows) == {"plain loop", "Ray Data, 1 CPU", "Ray Data, 2 CPU"}
    ray1 = rows["Ray Data, 1 CPU"]
    # 512x512 frames, 20-frame windows, 96 MiB of decoded frames per task: 4 time chunks per read task,
    # blocks of at most 32 MiB, an object store sized from them; every configuration delivered its samples
    assert ray1["chunks_per_task"] == 4 and ray1["out_block_mb"] <= 32
    assert ray1["object_store_limit_mb"] < 2048
    assert all(r["samples"] >= 200 and round(r["bytes_per_sample"]) in (901_136, 901_138) for r in rows.values())
    assert ray1["read_cpu_s_per_sample"] > 0 and rows["plain loop"]["read_cpu_s_per_sample"] > 0
