"""`evaluate` reports progress: chunks of at most one batch of windows, and one stderr line per
finished chunk when stderr is not a terminal (a tqdm bar when it is)."""

import io

import numpy as np

from convlstm_dist.nowcast.evaluation import BATCH, Progress, _chunks


def test_chunks_are_at_most_one_batch_and_cover_every_window_once():
    starts = np.arange(31) * 3
    for workers in (1, 2, 8, 64):
        chunks = _chunks(starts, workers)
        assert np.array_equal(np.concatenate(chunks), starts)  # contiguous, in order, nothing twice
        assert max(len(c) for c in chunks) <= BATCH
        assert len(chunks) >= min(len(starts), 2 * workers)  # still at least two tasks per worker
    assert len(_chunks(starts, 2)) == 8  # 31 windows: progress moves 8 times, not 4


def test_progress_without_a_terminal_prints_one_line_per_chunk():
    out = io.StringIO()
    p = Progress(total=10, tasks=3, stream=out)
    for n in (4, 4, 2):
        p.update(n)
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[evaluate] 4/10 windows scored (1/3 tasks) in ") and "s left" in lines[0]
    assert lines[-1].startswith("[evaluate] 10/10 windows scored (3/3 tasks) in ") and "left" not in lines[-1]


def test_progress_on_a_terminal_is_a_bar_and_can_be_off():
    out = io.StringIO()
    p = Progress(total=10, tasks=3, stream=out, tty=True)
    p.update(4)
    assert "4/10" in out.getvalue() and "window" in out.getvalue()
    p.close()
    quiet = io.StringIO()
    p = Progress(total=10, tasks=3, stream=quiet, enabled=False)
    p.update(10)
    p.close()
    assert quiet.getvalue() == ""
