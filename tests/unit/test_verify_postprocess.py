"""Probability matching: the forecast's pattern, the reference's value distribution."""

import numpy as np
import pytest

from convlstm_dist.verify.postprocess import probability_match


def test_values_come_from_the_reference_in_the_forecasts_rank_order():
    rng = np.random.default_rng(0)
    ref = rng.gamma(0.5, 3.0, (2, 8, 8)).astype(np.float32)
    fc = rng.random((2, 3, 8, 8)).astype(np.float32) * 0.1  # damped, different distribution
    out = probability_match(fc, ref)
    for b in range(2):
        for t in range(3):
            np.testing.assert_array_equal(np.sort(out[b, t].ravel()), np.sort(ref[b].ravel()))
            # same ordering of pixels as the forecast
            np.testing.assert_array_equal(np.argsort(out[b, t].ravel(), kind="stable"),
                                          np.argsort(fc[b, t].ravel(), kind="stable"))


def test_by_hand_and_no_data_pixels_untouched():
    fc = np.array([[[[0.1, 0.3], [0.2, 9.0]]]], dtype=np.float32)
    ref = np.array([[[5.0, 1.0], [2.0, np.nan]]], dtype=np.float32)
    out = probability_match(fc, ref)
    # valid pixels 0.1 < 0.2 < 0.3 get 1, 2, 5; the no-data pixel keeps the forecast value
    np.testing.assert_array_equal(out, np.array([[[[1.0, 5.0], [2.0, 9.0]]]], dtype=np.float32))
    assert fc[0, 0, 0, 0] == np.float32(0.1)  # input not modified


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        probability_match(np.zeros((1, 2, 4, 4)), np.zeros((1, 4, 5)))
