"""Cutting samples without Ray: draws, dihedral augmentation, load + cut == read."""

import numpy as np
import pytest

from convlstm_dist.data.archive import open_archive
from convlstm_dist.data.samples import cut_windows, dihedral, load_block, read_windows
from synthetic import make_archive


@pytest.fixture(scope="module")
def arc(tmp_path_factory):
    url = tmp_path_factory.mktemp("s") / "a.zarr"
    make_archive(url, n=30, h=40, w=40)
    return open_archive(str(url))


def test_dihedral_is_the_eight_symmetries_of_the_square():
    a = np.arange(9).reshape(3, 3)
    outs = {dihedral(a, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    np.testing.assert_array_equal(dihedral(a, 1), np.rot90(a))
    np.testing.assert_array_equal(dihedral(a, 4), a[:, ::-1])


def test_load_and_cut_equals_read_and_draws_pick_the_crop(arc):
    starts = np.array([2, 5, 9])
    ref = read_windows(arc, starts, 3, 2, (16, 16), seed=4, epoch=1, crops_per_window=2)
    vals, valid = load_block(arc, 2, 14)
    cut = cut_windows(vals, valid, 2, starts, 3, 2, (16, 16), seed=4, epoch=1, crops_per_window=2)
    for k in ref:
        np.testing.assert_array_equal(cut[k], ref[k])
    # draws=[1, 0, 1] gives exactly those draws of each window (rows 1, 2 and 5 of the reference)
    one = cut_windows(vals, valid, 2, starts, 3, 2, (16, 16), seed=4, epoch=1, draws=[1, 0, 1])
    np.testing.assert_array_equal(one["x"], ref["x"][[1, 2, 5]])
    np.testing.assert_array_equal(one["cy"], ref["cy"][[1, 2, 5]])


def test_augment_applies_one_symmetry_to_inputs_targets_and_mask_alike(arc):
    starts = np.arange(0, 10)
    plain = read_windows(arc, starts, 3, 2, (16, 16), seed=1)
    aug = read_windows(arc, starts, 3, 2, (16, 16), seed=1, augment=True)
    np.testing.assert_array_equal(aug["cy"], plain["cy"])  # same crops, then transformed
    used = set()
    for i in range(len(starts)):
        ks = [k for k in range(8) if np.array_equal(dihedral(plain["x"][i], k), aug["x"][i])]
        assert ks, f"sample {i} is not a symmetry of the plain crop"
        k = ks[0]
        np.testing.assert_array_equal(dihedral(plain["y"][i], k), aug["y"][i])
        np.testing.assert_array_equal(dihedral(plain["mask"][i], k), aug["mask"][i])
        used.add(k)
    assert len(used) > 1


def test_augment_on_rectangles_only_flips(arc):
    plain = read_windows(arc, np.arange(0, 10), 3, 2, (16, 24), seed=3)
    out = read_windows(arc, np.arange(0, 10), 3, 2, (16, 24), seed=3, augment=True)
    assert out["x"].shape == (10, 3, 1, 16, 24)
    for i in range(10):  # identity, rot180 (= both flips), left-right or up-down flip
        assert any(np.array_equal(dihedral(plain["x"][i], k), out["x"][i]) for k in (0, 2, 4, 6))


def test_compact_rows_are_smaller_and_convert_back_on_the_device(arc):
    import torch

    from convlstm_dist.data.samples import to_compute

    starts = np.array([2, 5, 9])
    full = read_windows(arc, starts, 5, 15, (16, 16), seed=1)
    small = read_windows(arc, starts, 5, 15, (16, 16), seed=1, compact=True)
    assert small["x"].dtype == np.float16 and small["mask"].dtype == np.uint8
    per = {k: sum(v[k].nbytes for k in ("x", "y", "mask")) / len(starts) for k, v in
           (("full", full), ("compact", small))}
    assert per["full"] / per["compact"] > 2.5             # 2.6x fewer bytes per sample (20 frames, mask)
    x, y, m = to_compute(*(torch.from_numpy(small[k]) for k in ("x", "y", "mask")))
    assert x.dtype == y.dtype == torch.float32 and m.dtype == torch.bool
    np.testing.assert_allclose(x.numpy(), full["x"], rtol=1e-3, atol=1e-4)   # fp16: ~3 significant digits
    np.testing.assert_array_equal(m.numpy(), full["mask"] > 0.5)


def test_compact_rows_identical_when_the_block_is_converted_once(tmp_path):
    """Many crops per window: ``read_windows`` converts the block to float16 once before cutting;
    the rows are bit-identical to converting each crop."""
    from synthetic import make_archive

    from convlstm_dist.data.archive import open_archive
    from convlstm_dist.data.samples import cut_windows, load_block, read_windows

    make_archive(tmp_path / "c.zarr", n=30, h=32, w=32)
    arc = open_archive(str(tmp_path / "c.zarr"))
    starts = np.array([0, 3, 7])
    fast = read_windows(arc, starts, 3, 4, (16, 16), seed=5, crops_per_window=8, compact=True)
    vals, valid = load_block(arc, 0, 14)
    slow = cut_windows(vals, valid, 0, starts, 3, 4, (16, 16), 5, 0, 8, compact=True)
    for k in slow:
        assert fast[k].dtype == slow[k].dtype and np.array_equal(fast[k], slow[k], equal_nan=True), k


@pytest.mark.parametrize("draw_offset, max_rows", [(0, None), (0, 5), (8, 3)])
def test_a_task_over_several_chunks_streams_the_rows_of_read_windows_bit_for_bit(tmp_path, draw_offset, max_rows):
    """``iter_windows`` (a read task over several time chunks, chunk by chunk, with gaps) yields exactly
    the compact rows ``read_windows`` cuts window by window, in time order, in blocks of <= max_rows."""
    from convlstm_dist.data.samples import iter_windows

    make_archive(tmp_path / "t.zarr", n=60, h=32, w=32, chunk_t=8)
    arc = open_archive(str(tmp_path / "t.zarr"))
    starts = np.array([0, 1, 5, 8, 9, 15, 16, 17, 30, 31, 44])  # gaps: 17 -> 30 and 31 -> 44 start new runs
    reads = []
    orig = arc.read
    arc.read = lambda lo, hi, *a: reads.append((lo, hi)) or orig(lo, hi, *a)
    parts = list(iter_windows(arc, starts, 3, 4, (16, 16), seed=3, epoch=2, crops_per_window=4, compact=True,
                              draw_offset=draw_offset, max_rows=max_rows))
    arc.read = orig
    got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    want = {k: np.concatenate([read_windows(arc, np.array([s]), 3, 4, (16, 16), seed=3, epoch=2, crops_per_window=4,
                                            compact=True, draw_offset=draw_offset)[k] for s in starts])
            for k in parts[0]}
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert max(len(p["t0"]) for p in parts) <= (max_rows or 1 << 30) or max_rows < 4
    # every frame read once, only the frames the windows touch
    frames = [f for lo, hi in reads for f in range(lo, hi)]
    assert len(frames) == len(set(frames))
    assert set(frames) == {f for s in starts for f in range(s, s + 7)}
