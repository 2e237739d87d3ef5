"""Moving MNIST: deterministic from the seed, written in the archive format with gaps."""

import numpy as np
import xarray as xr

from convlstm_dist.data import moving_mnist as mm
from convlstm_dist.data.archive import find_gaps


def test_deterministic_and_bounded():
    a, b = mm.generate(4, seed=3), mm.generate(4, seed=3)
    assert a.shape == (4, 20, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, mm.generate(4, seed=4))
    np.testing.assert_array_equal(a[2:], mm.generate(2, seed=3, first=2))
    assert 0.0 <= a.min() and a.max() <= 1.0 and (a.reshape(80, -1).max(axis=1) > 0.5).all()
    assert not np.array_equal(a[0, 0], a[0, 5])  # digits move


def test_archive_has_one_step_gap_between_sequences(tmp_path):
    url = str(tmp_path / "mm.zarr")
    arc = mm.write_archive(url, 3, seed=1, batch=2)
    assert arc.shape == (60, 64, 64) and arc.variable == "intensity" and arc.units == "1"
    np.testing.assert_array_equal(arc.read(0, 60), mm.generate(3, seed=1).reshape(60, 64, 64))
    gaps = find_gaps(arc.times, 300)
    assert [g[2] for g in gaps] == [1, 1] and gaps[0][0] == arc.times[19]
    assert arc.attrs["zr_a"] is None and "MNIST" in arc.attrs["attribution"]
    np.testing.assert_array_equal(arc.stats["thresholds"], [0.1, 0.3, 0.5, 0.7, 0.9])
    ds = xr.open_zarr(url)
    assert list(ds.data_vars) == ["intensity"] and ds.threshold.attrs["units"] == "1"
