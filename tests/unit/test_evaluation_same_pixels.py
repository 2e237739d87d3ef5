"""evaluate scores every method on one verification sample: the same windows *and* the same pixels.

Optical flow has no forecast where its trajectory starts outside the grid (NaN, a border that grows
with the lead time). Before, each method was scored where *it* had a forecast, so optical flow was
judged without its inflow border while the model and persistence were judged with it.
"""

from __future__ import annotations

import numpy as np

from convlstm_dist.nowcast.evaluation import score_chunk
from convlstm_dist.verify import SkillAccumulator


class _Archive:
    variable = "rain_mmh"

    def __init__(self, frames):
        self.frames = frames

    def read(self, lo, hi):
        return self.frames[lo:hi]

    def to_rain_mmh(self, raw):
        return raw


class _Model:
    """Persistence with a 'model' label (never NaN)."""

    def predict_batch(self, x, n_out, variable):
        return np.repeat(np.nan_to_num(x[:, -1:]), n_out, axis=1)


def _moving_rain(t_len=10, size=48, speed=2):
    rng = np.random.default_rng(0)
    field = np.zeros((size, size + t_len * speed + 10), np.float32)
    for _ in range(40):
        y, x = rng.integers(4, size - 4), rng.integers(4, field.shape[1] - 4)
        field[y - 3:y + 3, x - 3:x + 3] += rng.uniform(1, 8)
    # rain moving west to east: rain enters the grid across its western border
    return np.stack([field[:, (t_len - t) * speed:(t_len - t) * speed + size] for t in range(t_len)])


def test_all_methods_share_one_verification_sample():
    frames = _moving_rain()
    states = score_chunk(_Model(), _Archive(frames), np.array([0, 2]), in_len=4, n_out=4, crop=None, seed=0,
                         methods=["model", "persistence", "optical_flow"], thresholds=[0.5, 2.0])
    n = {m: SkillAccumulator.from_state(s).n for m, s in states.items()}
    assert np.array_equal(n["model"], n["persistence"]) and np.array_equal(n["model"], n["optical_flow"])
    full = 2 * 48 * 48
    assert n["model"][-1] < full  # optical flow's inflow border is left out for every method
    assert n["model"][0] >= n["model"][-1]
