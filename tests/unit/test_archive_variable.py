"""An archive whose 'variable' attribute names a missing array: one clear line (issue 16, point 8)."""

import subprocess
import sys

import pytest
import zarr

from convlstm_dist.data.archive import consolidate, open_archive
from convlstm_dist.errors import UserError
from synthetic import make_archive


def test_variable_attribute_naming_a_missing_array_is_one_line(tmp_path):
    url = tmp_path / "a.zarr"
    make_archive(url, n=20, h=16, w=16)
    g = zarr.open_group(str(url), mode="r+", use_consolidated=False)
    g.attrs["variable"] = "rain_mmhx"
    consolidate(str(url))
    with pytest.raises(UserError, match=r"names 'rain_mmhx' but the archive has no such array.*arrays: .*rain_mmh"):
        open_archive(str(url))
    p = subprocess.run([sys.executable, "-m", "convlstm_dist.cli", "archive-info", str(url)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
