"""Windows through Ray Data: chunk-aligned reads, deterministic crops, epoch reshuffle."""

import numpy as np
import pytest

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.datasource import read_windows, window_dataset
from convlstm_dist.data.quantity import norm_to_rain
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


def test_byte_sized_tasks_stream_the_rows_of_chunk_tasks_and_carry_no_table(archive, ray_local):
    """Tasks over several chunks (read_block_mb) give bit-identical compact rows to one-chunk tasks;
    every read task carries only a reference to the window table, not the table."""
    import ray.cloudpickle as cp

    from convlstm_dist.data.datasource import WindowDatasource

    arc, _ = archive
    starts = np.arange(0, 36)

    def rows(block_mb):
        ds = window_dataset(arc, starts, 3, 2, crop=(16, 16), seed=4, shuffle=True, crops_per_window=3,
                            compact=True, read_block_mb=block_mb)
        out = {k: np.concatenate([b[k] for b in ds.iter_batches(batch_size=None, batch_format="numpy")])
               for k in ("x", "y", "mask", "t0", "cy", "cx", "src")}
        order = np.lexsort((out["cx"], out["cy"], out["t0"]))
        return {k: v[order] for k, v in out.items()}

    one, big = rows(None), rows(0.1)  # 48x48 frames: 0.1 MiB covers 11 chunks of 8 frames, i.e. all of them
    assert len(one["t0"]) == 36 * 3
    for k in one:
        assert one[k].dtype == big[k].dtype and np.array_equal(one[k], big[k]), k
    src = WindowDatasource(arc, starts, 3, 2, (16, 16), crops_per_window=3, compact=True, read_block_bytes=1 << 20)
    assert len(src.groups) == 1 and src.chunks_per_task == [(1048576 // (48 * 48 * 4) - 4) // 8]
    small = WindowDatasource(arc, starts[:4], 3, 2, (16, 16), crops_per_window=3, compact=True)
    size = [len(cp.dumps(t.read_fn)) for t in (src.get_read_tasks(1)[0], small.get_read_tasks(1)[0])]
    # the same size for 36 windows as for 4 (a carried table would add 8 bytes a window and more): the task
    # is a reference to its module-level body, the table's reference and its settings (352 bytes, 2026-12-05)
    assert abs(size[0] - size[1]) < 64 and size[0] < 1024, size


def test_config_default_read_block_is_the_datasource_default():
    from convlstm_dist.config import DataConfig
    from convlstm_dist.data.datasource import READ_BLOCK_MB

    assert DataConfig().read_block_mb == READ_BLOCK_MB
    with pytest.raises(ValueError, match="read_block_mb"):
        DataConfig(read_block_mb=0)
