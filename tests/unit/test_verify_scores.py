"""SkillAccumulator: hand-counted contingency tables, pysteps agreement, merge, NaN, B-MSE."""

import math

import numpy as np
import pytest

from convlstm_dist.models.losses import hko7_weights as bmse_weights  # numpy in, float64 weights out
from convlstm_dist.verify.scores import ROW_KEYS, SkillAccumulator

NAN = float("nan")
# One sample, one lead, 2 x 4 pixels (mm/h). Counts below are written out by hand.
FCST = np.array([[0.0, 1.0, 3.0, 6.0], [0.0, 2.0, 0.0, 10.0]])[None, None]
OBS = np.array([[0.0, 3.0, 1.0, 6.0], [1.0, 2.0, 5.0, 0.0]])[None, None]


def one_row(acc, thr, lead=0):
    (row,) = [r for r in acc.compute() if r["threshold_mmh"] == thr and r["lead_index"] == lead]
    return row


@pytest.mark.parametrize(
    "thr, hits, misses, false_alarms, correct_negatives",
    [
        (0.5, 4, 2, 1, 1),
        (2.0, 2, 2, 2, 2),   # the 2.0 == 2.0 pixel is an event: thresholds use >=
        (5.0, 1, 1, 1, 5),
        (10.0, 0, 0, 1, 7),
        (30.0, 0, 0, 0, 8),
    ],
)
def test_contingency_counts_by_hand(thr, hits, misses, false_alarms, correct_negatives):
    acc = SkillAccumulator((0.5, 2, 5, 10, 30), n_leads=1).accumulate(FCST, OBS)
    k = list(acc.thresholds_mmh).index(thr)
    got = (acc.hits[0, k], acc.misses[0, k], acc.false_alarms[0, k], acc.correct_negatives[0, k])
    assert got == (hits, misses, false_alarms, correct_negatives)
    a, b, c, d = hits, false_alarms, misses, correct_negatives
    row = one_row(acc, thr)
    expect = {
        "csi": a / (a + b + c) if a + b + c else NAN,
        "pod": a / (a + c) if a + c else NAN,
        "far": b / (a + b) if a + b else NAN,
        "hss": (2 * (a * d - b * c) / den) if (den := (a + c) * (c + d) + (a + b) * (b + d)) else NAN,
    }
    for key, value in expect.items():
        assert row[key] == pytest.approx(value, nan_ok=True), key
    assert row["n"] == 8


def test_undefined_scores_are_nan_not_zero():
    row = one_row(SkillAccumulator((30.0,), n_leads=1).accumulate(FCST, OBS), 30.0)
    assert all(math.isnan(row[k]) for k in ("csi", "pod", "far", "hss"))
    row = one_row(SkillAccumulator((10.0,), n_leads=1).accumulate(FCST, OBS), 10.0)
    assert (row["csi"], row["far"], row["hss"]) == (0.0, 1.0, 0.0) and math.isnan(row["pod"])


def test_continuous_scores_by_hand():
    row = one_row(SkillAccumulator((1.0,), n_leads=1).accumulate(FCST, OBS), 1.0)
    # errors f - o: 0 -2 2 0 / -1 0 -5 10; HKO-7 weights from obs: 1 2 1 5 / 1 2 5 1
    assert row["mse"] == pytest.approx(134 / 8)
    assert row["mae"] == pytest.approx(20 / 8)
    assert row["bmse"] == pytest.approx((0 + 8 + 4 + 0 + 1 + 0 + 125 + 100) / 8)
    assert row["corr"] == pytest.approx(np.corrcoef(FCST.ravel(), OBS.ravel())[0, 1])


@pytest.mark.parametrize(
    "obs, weight",
    [(0.0, 1), (1.99, 1), (2.0, 2), (4.99, 2), (5.0, 5), (9.9, 5), (10.0, 10), (29.9, 10),
     (30.0, 30), (120.0, 30), (NAN, 1)],
)
def test_bmse_weights_hko7(obs, weight):
    assert bmse_weights(np.array([obs]))[0] == weight


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # pysteps divides 0/0
@pytest.mark.parametrize("thr", [0.7, 1.5, 4.0, 8.0])
def test_agrees_with_pysteps_between_data_values(thr):
    detcat = pytest.importorskip("pysteps.verification.detcatscores")
    ours = one_row(SkillAccumulator((thr,), n_leads=1).accumulate(FCST, OBS), thr)
    ref = detcat.det_cat_fct(FCST.ravel(), OBS.ravel(), thr, scores=["CSI", "POD", "FAR", "HSS"])
    for key in ("csi", "pod", "far", "hss"):
        assert ours[key] == pytest.approx(float(ref[key.upper()]), nan_ok=True), key


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_agrees_with_pysteps_on_random_fields():
    detcat = pytest.importorskip("pysteps.verification.detcatscores")
    rng = np.random.default_rng(0)
    f, o = rng.gamma(0.5, 4.0, (2, 2, 3, 16, 16))  # continuous: no value equals a threshold
    acc = SkillAccumulator(n_leads=3).accumulate(f, o)
    for row in acc.compute():
        t = row["lead_index"]
        ref = detcat.det_cat_fct(f[:, t].ravel(), o[:, t].ravel(), row["threshold_mmh"],
                                 scores=["CSI", "POD", "FAR", "HSS"])
        for key in ("csi", "pod", "far", "hss"):
            assert row[key] == pytest.approx(float(ref[key.upper()]), nan_ok=True)


def test_nan_pixels_are_not_counted():
    f = np.concatenate([FCST, np.array([NAN, 7.0]).reshape(1, 1, 2, 1)], axis=-1)
    o = np.concatenate([OBS, np.array([9.0, NAN]).reshape(1, 1, 2, 1)], axis=-1)
    with_nan = SkillAccumulator(n_leads=1).accumulate(f, o).compute()
    clean = SkillAccumulator(n_leads=1).accumulate(FCST, OBS).compute()
    assert [r["n"] for r in with_nan] == [8] * 5
    for a, b in zip(with_nan, clean):
        assert a == pytest.approx(b, nan_ok=True)


def random_pair(seed, shape=(6, 4, 12, 10)):
    rng = np.random.default_rng(seed)
    f, o = rng.gamma(0.6, 5.0, (2, *shape))
    o[rng.random(shape) < 0.1] = NAN
    return f, o


def assert_same_state(s1, s2):
    assert s1.keys() == s2.keys()
    for key in s1:
        np.testing.assert_allclose(s1[key], s2[key], rtol=1e-12, err_msg=key)
        assert s1[key].dtype == s2[key].dtype, key


def test_merge_of_halves_equals_whole():
    f, o = random_pair(1)
    whole = SkillAccumulator(n_leads=4).accumulate(f, o)
    a = SkillAccumulator(n_leads=4).accumulate(f[:2], o[:2])
    b = SkillAccumulator(n_leads=4).accumulate(f[2:], o[2:])
    before = b.to_state()
    assert a.merge(b) is a  # in place, returns self
    assert_same_state(a.to_state(), whole.to_state())
    assert_same_state(b.to_state(), before)  # the other one is untouched


def test_state_round_trip_through_plain_dicts():
    f, o = random_pair(2)
    parts = [SkillAccumulator(n_leads=4).accumulate(f[i::3], o[i::3]).to_state() for i in range(3)]
    assert all(isinstance(v, np.ndarray) for v in parts[0].values())
    total = SkillAccumulator.from_state(parts[0])
    for s in parts[1:]:
        total.merge(SkillAccumulator.from_state(s))
    whole = SkillAccumulator(n_leads=4).accumulate(f, o)
    for a, b in zip(total.compute(), whole.compute()):
        assert a == pytest.approx(b, nan_ok=True)


@pytest.mark.parametrize("other", [dict(thresholds_mmh=(1.0, 2.0), n_leads=4), dict(n_leads=3)])
def test_merge_refuses_other_layout(other):
    with pytest.raises(ValueError, match="cannot merge"):
        SkillAccumulator(n_leads=4).merge(SkillAccumulator(**other))


def test_torch_btchw_input_matches_numpy():
    torch = pytest.importorskip("torch")
    f, o = random_pair(3)
    from_np = SkillAccumulator(n_leads=4).accumulate(f, o).to_state()
    from_torch = SkillAccumulator(n_leads=4).accumulate(
        torch.from_numpy(f).float().unsqueeze(2), torch.from_numpy(o).float().unsqueeze(2)).to_state()
    for key in ("hits", "misses", "false_alarms", "correct_negatives", "n"):
        np.testing.assert_array_equal(from_np[key], from_torch[key])


@pytest.mark.parametrize(
    "f_shape, o_shape, match",
    [((1, 4, 8, 8), (1, 4, 8, 9), "differ"), ((1, 3, 8, 8), (1, 3, 8, 8), "n_leads"),
     ((4, 8, 8), (4, 8, 8), "shape")],
)
def test_bad_shapes_are_refused(f_shape, o_shape, match):
    with pytest.raises(ValueError, match=match):
        SkillAccumulator(n_leads=4).accumulate(np.zeros(f_shape), np.zeros(o_shape))


def test_rows_and_summary():
    f, o = random_pair(4)
    acc = SkillAccumulator((0.5, 5.0), n_leads=4).accumulate(f, o)
    rows = acc.compute()
    assert len(rows) == 8 and all(tuple(r) == ROW_KEYS for r in rows)
    summary = acc.summary()
    assert [s["threshold_mmh"] for s in summary] == [0.5, 5.0]
    csi = acc.categorical()["csi"]
    assert summary[1]["csi"] == pytest.approx(csi[:, 1].mean())
    empty = SkillAccumulator((1000.0,), n_leads=2).accumulate(f[:, :2], o[:, :2]).summary()
    assert math.isnan(empty[0]["csi"]) and math.isnan(empty[0]["hss"])


# --------------------------------------------------------------------------- torch on the device, flat state


def test_torch_input_keeps_the_sums_on_its_device_and_matches_numpy():
    torch = pytest.importorskip("torch")
    f, o = random_pair(5)
    ref = SkillAccumulator(n_leads=4).accumulate(f, o)
    acc = SkillAccumulator(n_leads=4)
    for i in range(0, 6, 2):  # several batches, no host copy in between
        acc.accumulate(torch.from_numpy(f[i:i + 2]).float(), torch.from_numpy(o[i:i + 2]).float())
    assert acc.device == torch.device("cpu") and isinstance(acc.hits, torch.Tensor)
    got, want = acc.to_state(), ref.to_state()
    for key in ("hits", "misses", "false_alarms", "correct_negatives", "n"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    for key in ("sum_se", "sum_ae", "sum_wse", "sum_xy"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_mask_removes_pixels_like_nan():
    torch = pytest.importorskip("torch")
    f, o = random_pair(6)
    o_nan = o.copy()
    o_nan[:, :, :2] = NAN
    mask = np.ones(o.shape, dtype=bool)
    mask[:, :, :2] = False
    by_nan = SkillAccumulator(n_leads=4).accumulate(f, o_nan).to_state()
    by_mask = SkillAccumulator(n_leads=4).accumulate(torch.from_numpy(f), torch.from_numpy(o),
                                                     torch.from_numpy(mask)).to_state()
    assert_same_state(by_nan, by_mask)


def test_flat_state_sums_like_merge_and_loads_back():
    f, o = random_pair(7)
    a = SkillAccumulator(n_leads=4).accumulate(f[:3], o[:3])
    b = SkillAccumulator(n_leads=4).accumulate(f[3:], o[3:])
    flat = a.flat() + b.flat()  # what all_reduce does over two ranks
    assert flat.shape == (a.flat_size,)
    total = SkillAccumulator(n_leads=4).load_flat(flat)
    assert_same_state(total.to_state(), a.merge(b).to_state())
    with pytest.raises(ValueError, match="expected"):
        SkillAccumulator(n_leads=3).load_flat(flat)


def test_big_grids_are_counted_a_few_leads_at_a_time(monkeypatch):
    import convlstm_dist.verify.scores as scores

    f, o = random_pair(8)
    whole = SkillAccumulator(n_leads=4).accumulate(f, o).to_state()
    monkeypatch.setattr(scores, "_MAX_CHUNK", 6 * 12 * 10)  # one lead per pass
    assert_same_state(SkillAccumulator(n_leads=4).accumulate(f, o).to_state(), whole)


def test_skill_metrics_pool_counts_over_leads():
    from convlstm_dist.verify.scores import skill_metrics
    from convlstm_dist.vocabulary import skill_metric_names

    f, o = random_pair(9)
    acc = SkillAccumulator((0.5, 5.0), n_leads=4).accumulate(f, o)
    got = skill_metrics(acc.compute(), "val")
    assert tuple(got) == skill_metric_names("val", None, (0.5, 5.0))
    a, b, c = acc.hits[:, 1].sum(), acc.false_alarms[:, 1].sum(), acc.misses[:, 1].sum()
    assert got["val_csi_5mmh"] == pytest.approx(a / (a + b + c))
    assert got["val_mse"] == pytest.approx(acc.sum_se.sum() / acc.n.sum())
    ref = skill_metrics(acc.compute(), "test", "persistence")
    assert set(ref) == {"test_persistence_mse", "test_persistence_mae", "test_persistence_csi_0.5mmh",
                        "test_persistence_csi_5mmh"}
