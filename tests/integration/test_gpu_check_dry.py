"""The GPU check cannot rot while no GPU is lent: its CPU dry run (``DRY=1 bash benchmarks/gpu_check.sh``)
runs every stage with tiny settings, with the packages the GPU machine lacks hidden, and every stage
must end with rc=0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# ~70 s on the quiet 2-core machine; the budget is generous so that a loaded machine does not time a stage out
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_gpu_check_dry_run_passes_every_stage(tmp_path):
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
           "BUDGET": "1500", "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1700)
    summary = (tmp_path / "out" / "summary.txt").read_text()
    stages = re.findall(r"^(\S+)\s+rc=(\S+)", summary, flags=re.M)
    assert stages, f"no stage in the summary:\n{summary}\n{proc.stdout[-3000:]}"
    failed = [(name, rc) for name, rc in stages if rc != "0"]
    assert not failed, f"stages that failed in the dry run: {failed}\n{summary}"
    assert "DRY run, CPU" in summary
