"""Windows through Ray Data: chunk-aligned reads, deterministic crops, epoch reshuffle."""

import numpy as np
import pytest

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.datasource import read_windows, window_dataset
from convlstm_dist.data.transforms import norm_to_rain
from convlstm_dist.data.windows import build_index, SplitRule
from synthetic import make_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    url = tmp_path_factory.mktemp("arch") / "a.zarr"
    frames = make_archive(url, n=40)
    return open_archive(str(url)), frames


def test_read_windows_values_and_mask(archive):
    arc, frames = archive
    out = read_windows(arc, np.array([0, 5]), 3, 2, crop=None)
    assert out["x"].shape == (2, 3, 1, 48, 48) and out["y"].shape == (2, 2, 1, 48, 48)
    # NaN border -> 0 in the data and 0 in the mask
    assert out["mask"][:, :, 0, :4].sum() == 0 and out["mask"][:, :, 0, 4:].min() == 1
    np.testing.assert_allclose(norm_to_rain(out["y"][1, 0, 0, 4:]), frames[8, 4:], rtol=1e-4, atol=1e-4)
    assert np.isfinite(out["x"]).all()


def test_crops_deterministic_by_seed_and_epoch(archive):
    arc, _ = archive
    st = np.arange(0, 20)
    a = read_windows(arc, st, 3, 2, (16, 16), seed=1, epoch=0)
    b = read_windows(arc, st, 3, 2, (16, 16), seed=1, epoch=0)
    c = read_windows(arc, st, 3, 2, (16, 16), seed=2, epoch=0)
    d = read_windows(arc, st, 3, 2, (16, 16), seed=1, epoch=1)
    assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["cy"], b["cy"])
    assert not np.array_equal(a["cy"], c["cy"]) or not np.array_equal(a["cx"], c["cx"])
    assert not np.array_equal(a["cy"], d["cy"]) or not np.array_equal(a["cx"], d["cx"])
    # crops avoid the NaN border when they can (valid share >= 0.5)
    assert (a["mask"].mean(axis=(1, 2, 3, 4)) >= 0.5).all()


def test_ray_dataset_emits_every_window_once(archive, ray_local):
    arc, _ = archive
    idx = build_index(arc.times, arc.timestep_s, 3, 2, SplitRule(block_hours=1000, val_every=2, gap_steps=0))
    starts = idx.starts["train"]
    assert len(starts) == 36
    ds = window_dataset(arc, starts, 3, 2, crop=(16, 16), seed=0, shuffle=True)
    rows = ds.take_all()
    assert sorted(int(r["t0"]) for r in rows) == starts.tolist()
    assert rows[0]["x"].shape == (3, 1, 16, 16)
    batch = next(iter(ds.iter_torch_batches(batch_size=4)))
    assert tuple(batch["y"].shape) == (4, 2, 1, 16, 16)


def test_empty_split_is_a_clear_error(archive):
    arc, _ = archive
    with pytest.raises(ValueError, match="split is empty"):
        window_dataset(arc, np.array([], dtype=np.int64), 3, 2)
