"""The ``Quantity`` registry (issue 15): conversions, logits decision, one HKO-7 table, one set of
skill thresholds, and no string branches on quantity names outside the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm_dist.vocabulary import SKILL_THRESHOLDS_MMH
from convlstm_dist.data.quantity import (INTENSITY, QUANTITIES, RAIN_NORM, get_quantity,
                                         quantity_of_source, quantity_of_variable)
from convlstm_dist.data.units import dbz_to_rain_mmh, rain_mmh_to_dbz

PKG_DIR = Path(__file__).resolve().parents[2] / "convlstm_dist"


def test_registry_names_and_lookups():
    assert set(QUANTITIES) == {"rain_norm", "intensity"}
    assert get_quantity("rain_norm") is RAIN_NORM and get_quantity(INTENSITY) is INTENSITY
    with pytest.raises(ValueError, match="unknown model quantity 'rain'.*intensity, rain_norm"):
        get_quantity("rain")
    assert quantity_of_variable("rain_mmh") is RAIN_NORM and quantity_of_variable("refl_dbz") is RAIN_NORM
    assert quantity_of_variable("intensity") is INTENSITY
    assert quantity_of_source("moving_mnist") is INTENSITY and quantity_of_source("archive") is RAIN_NORM
    for q in QUANTITIES.values():
        assert all(quantity_of_variable(v) is q for v in q.archive_variables)
        assert quantity_of_variable(q.physical_variable) is q


def test_rain_round_trip_numpy_and_torch():
    r = np.array([0.0, 0.1, 1.0, 5.0, 30.0, 128.0], dtype=np.float32)
    n = RAIN_NORM.to_model(r, "rain_mmh")
    assert n.dtype == np.float32 and n[0] == 0.0 and n[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(RAIN_NORM.from_model(n), r, rtol=1e-5, atol=1e-6)
    back = RAIN_NORM.from_model(torch.from_numpy(n))
    assert isinstance(back, torch.Tensor)
    np.testing.assert_allclose(back.numpy(), r, rtol=1e-5, atol=1e-6)
    assert float(RAIN_NORM.from_model(np.float32(-0.3))) == 0.0  # negative model output -> 0 mm/h


def test_reflectivity_goes_through_the_archives_zr_relation():
    r = np.array([0.5, 2.0, 10.0], dtype=np.float32)
    dbz = rain_mmh_to_dbz(r, 200.0, 1.6)
    n = RAIN_NORM.to_model(dbz, "refl_dbz", lambda v: dbz_to_rain_mmh(v, 200.0, 1.6))
    np.testing.assert_allclose(RAIN_NORM.from_model(n), r, rtol=1e-4)
    with pytest.raises(ValueError, match="no Z–R relation"):
        RAIN_NORM.to_model(dbz, "refl_dbz")


def test_intensity_is_unchanged():
    v = np.linspace(0.0, 1.0, 7)
    x = INTENSITY.to_model(v, "intensity")
    assert x.dtype == np.float32
    np.testing.assert_array_equal(INTENSITY.from_model(x), x)
    t = torch.rand(3)
    assert INTENSITY.from_model(t) is t


@pytest.mark.parametrize("loss, logits", [("bce", True), ("bce_sum", True), ("mse", False), ("mae", False),
                                          ("bmse", False), ("bmae", False)])
def test_logits_follow_the_loss(loss, logits):
    for q in QUANTITIES.values():
        assert q.output_is_logits(loss) is logits


def test_every_logit_loss_exists():
    from convlstm_dist.data.quantity import LOGIT_LOSSES
    from convlstm_dist.models.losses import LOSSES

    assert set(LOGIT_LOSSES) <= set(LOSSES)


def test_reported_metrics_follow_the_registry():
    from convlstm_dist.train.metrics import val_metrics

    assert "val_cross_entropy" in val_metrics("intensity") and "val_cross_entropy" not in val_metrics("rain_norm")
    assert INTENSITY.reports_cross_entropy and not RAIN_NORM.reports_cross_entropy


def test_one_set_of_skill_thresholds():
    from convlstm_dist.train.validation import SKILL_THRESHOLDS_MMH as THRESHOLDS_MMH
    from convlstm_dist.verify.scores import SKILL_THRESHOLDS_MMH as DEFAULT_THRESHOLDS_MMH

    assert THRESHOLDS_MMH is SKILL_THRESHOLDS_MMH and DEFAULT_THRESHOLDS_MMH is SKILL_THRESHOLDS_MMH
    assert RAIN_NORM.skill_thresholds == SKILL_THRESHOLDS_MMH


def test_one_hko7_table_numpy_equals_torch():
    from convlstm_dist.models.losses import hko7_weights

    bmse_weights = hko7_weights  # evaluate's scores call it on numpy arrays
    r = np.array([np.nan, -1.0, 0.0, 1.99, 2.0, 4.9, 5.0, 9.9, 10.0, 29.9, 30.0, 200.0], dtype=np.float32)
    np.testing.assert_array_equal(bmse_weights(r), hko7_weights(torch.from_numpy(r)).numpy())


# -------------------------------------------------------------------------- no string branches

# The registry is the one place where quantity names are compared. (``data/units.py`` names the
# *archive variables* ``rain_mmh``, ``refl_dbz``, ``intensity`` in lookup tables of units and wet
# thresholds, never in a comparison.)
ALLOWED = {"data/quantity.py"}
NAMES = {"intensity", "rain_norm"}


def _string_branches(source: str) -> list[int]:
    """Lines comparing something with ``"intensity"`` / ``"rain_norm"`` (``==``, ``!=``, ``in``, ``not in``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        for part in [node.left, *node.comparators]:
            consts = [part] if isinstance(part, ast.Constant) else (
                list(part.elts) if isinstance(part, (ast.Tuple, ast.List, ast.Set)) else [])
            if any(isinstance(c, ast.Constant) and c.value in NAMES for c in consts):
                lines.append(node.lineno)
                break
    return lines


def test_the_branch_finder_sees_the_usual_forms():
    src = ('a = q == "intensity"\nb = "rain_norm" != q\nc = q in ("intensity", None)\nd = q not in ["rain_norm"]\n'
           'e = f(variable="intensity")\n')
    assert _string_branches(src) == [1, 2, 3, 4]


def test_no_quantity_string_branches_outside_the_registry():
    found = []
    for f in sorted(PKG_DIR.rglob("*.py")):
        rel = f.relative_to(PKG_DIR).as_posix()
        if rel in ALLOWED:
            continue
        found += [f"convlstm_dist/{rel}:{n}" for n in _string_branches(f.read_text())]
    assert not found, "compare quantity names through convlstm_dist.data.quantity instead:\n" + "\n".join(found)
