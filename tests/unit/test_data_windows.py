"""Window index rules: gaps, wet filter, split blocks with a gap between splits."""

import numpy as np
import pytest

from convlstm_dist.data.windows import SplitRule, build_index, frame_splits, gap_free_starts, group_by_chunk

STEP = 300
T0 = np.datetime64("2010-08-26T00:00:00", "s")


def times(n, step=STEP, start=T0):
    return start + np.arange(n) * np.timedelta64(step, "s")


def test_knmi_sample_gives_73_windows_of_20():
    assert len(gap_free_starts(times(92), STEP, 20)) == 73


@pytest.mark.parametrize(
    "n, gaps_after, length, expected",
    [
        (10, [], 10, 1),
        (10, [], 11, 0),
        (30, [14], 10, 6 + 6),        # two runs of 15 frames
        (30, [0], 5, 25),             # first frame isolated
        (30, [9, 19], 10, 3),         # three runs of 10
    ],
)
def test_no_window_spans_a_gap(n, gaps_after, length, expected):
    t = times(n).copy()
    for g in gaps_after:
        t[g + 1:] += np.timedelta64(STEP, "s")  # one missing frame after index g
    starts = gap_free_starts(t, STEP, length)
    assert len(starts) == expected
    sec = t.astype(np.int64)
    for s in starts:
        assert np.all(np.diff(sec[s:s + length]) == STEP)


def test_non_increasing_times_rejected():
    t = times(5)[[0, 1, 1, 2, 3]]
    with pytest.raises(ValueError, match="strictly increasing"):
        gap_free_starts(t, STEP, 2)


def test_wet_filter_uses_window_mean():
    n = 40
    wet = np.zeros(n)
    wet[20:] = 0.5
    idx = build_index(times(n), STEP, 5, 5, SplitRule(block_hours=1000, val_every=2, gap_steps=0),
                      wet_fraction=wet, min_wet_fraction=0.25)
    # window mean >= 0.25 ⇔ at least 5 of its 10 frames are wet ⇔ t0 >= 15
    assert idx.starts["train"].min() == 15
    assert idx.n_candidates == 31 and idx.n_dry_dropped == 15


@pytest.mark.parametrize("gap", [0, 1, 3])
def test_splits_disjoint_and_separated_by_gap(gap):
    t = times(92)  # 7h40 of 5-min frames
    rule = SplitRule(block_hours=1, val_every=3, test_every=4, gap_steps=gap)
    idx = build_index(t, STEP, 3, 3, rule)
    label = frame_splits(t, rule)
    frames = {s: set() for s in idx.starts}
    for s, st in idx.starts.items():
        for t0 in st:
            frames[s].update(range(t0, t0 + 6))
            assert len(set(label[t0:t0 + 6])) == 1
    names = list(frames)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not frames[a] & frames[b]
            if frames[a] and frames[b]:
                dist = min(abs(x - y) for x in frames[a] for y in frames[b])
                # the g frames after A and the g frames before B carry different labels
                assert dist >= 2 * gap + 1
    assert sum(idx.counts().values()) > 0 and all(v > 0 for v in idx.counts().values())


def test_block_assignment_is_absolute_so_append_keeps_old_windows():
    rule = SplitRule(block_hours=1, val_every=4, gap_steps=1)
    a = build_index(times(60), STEP, 2, 2, rule)
    b = build_index(times(92), STEP, 2, 2, rule)
    for s in a.starts:
        old = set(a.starts[s])
        assert old <= set(b.starts[s]) | {x for x in old if x + 4 + 1 > 59}


def test_summary_records_rule_and_counts():
    idx = build_index(times(92), STEP, 5, 15, SplitRule(block_hours=2, val_every=4))
    s = idx.summary()
    assert s["rule"]["block_hours"] == 2 and s["length"] == 20
    assert s["counts"] == idx.counts()


@pytest.mark.parametrize("bad", [dict(block_hours=0), dict(val_every=1), dict(gap_steps=-1)])
def test_bad_rules_rejected(bad):
    with pytest.raises(ValueError):
        SplitRule(**bad)


def test_group_by_chunk():
    groups = group_by_chunk(np.array([0, 3, 15, 16, 17, 40]), 16)
    assert [g.tolist() for g in groups] == [[0, 3, 15], [16, 17], [40]]


def test_chunks_per_task_from_bytes():
    from convlstm_dist.data.windows import chunks_per_task

    mib = 1 << 20
    # 512x512 float32 frames (1 MiB), chunks of 16, 20-frame windows: (128 - 19) // 16 = 6 chunks
    assert chunks_per_task(mib, 16, 20, 128 * mib) == 6
    # 4 chunks (the prototype) at 83 MiB; a tiny budget still covers one whole window (2 chunks of 16)
    assert chunks_per_task(mib, 16, 20, 83 * mib) == 4
    assert chunks_per_task(mib, 16, 20, 1 * mib) == 2
    assert chunks_per_task(mib, 16, 5, 1 * mib) == 1
    with pytest.raises(ValueError):
        chunks_per_task(0, 16, 20, mib)


def test_tasks_cover_consecutive_chunks_and_read_each_chunk_at_most_twice():
    from convlstm_dist.data.windows import chunks_read, group_by_chunks, read_runs

    tc, length = 16, 20
    rule = SplitRule(block_hours=6, val_every=3, gap_steps=1)  # 72-frame blocks, every third one val
    idx = build_index(times(2000), STEP, 5, 15, rule)
    starts = idx.starts["train"]
    tasks = group_by_chunks(starts, tc, 4)
    assert np.array_equal(np.concatenate(tasks), starts)  # every window once, in order
    for t in tasks:
        chunks = sorted({int(s) // tc for s in t})
        assert chunks == list(range(chunks[0], chunks[0] + len(chunks))) and len(chunks) <= 4
    # a task reads only the chunks its windows touch, and no chunk is read by more than two tasks
    reads: dict[int, int] = {}
    for t in tasks:
        touched = {c for s in t for c in range(int(s) // tc, (int(s) + length - 1) // tc + 1)}
        assert chunks_read(t, length, tc) == touched
        for c in touched:
            reads[c] = reads.get(c, 0) + 1
    assert max(reads.values()) == 2
    # the val blocks between train blocks are not read: runs stop at gaps
    assert read_runs(np.array([0, 1, 2, 100, 101]), 20) == [(0, 22), (100, 121)]
    assert read_runs(np.array([0, 20]), 20) == [(0, 40)]  # touching windows share a read
    assert [g.tolist() for g in group_by_chunks(np.array([0, 16, 33, 80, 97]), 16, 2)] == [[0, 16], [33], [80, 97]]
