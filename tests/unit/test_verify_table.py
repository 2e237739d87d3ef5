"""Skill tables: CSV columns, text table, plot file."""

import csv

import numpy as np
import pytest

from convlstm_dist.verify.scores import SkillAccumulator
from convlstm_dist.verify.table import CSV_COLUMNS, format_table, label_rows, plot_skill, write_csv


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    obs = rng.gamma(0.6, 5.0, (2, 3, 16, 16))
    out = []
    for method, noise in (("convlstm", 0.5), ("persistence", 3.0)):
        fcst = np.clip(obs + rng.normal(0, noise, obs.shape), 0, None)
        acc = SkillAccumulator((0.5, 5.0), n_leads=3).accumulate(fcst, obs)
        out += label_rows(acc.compute(), method, lead_step_min=6)
    return out


def test_label_rows_sets_lead_minutes(rows):
    assert sorted({r["lead_min"] for r in rows}) == [6, 12, 18]
    assert {r["method"] for r in rows} == {"convlstm", "persistence"}


def test_csv_has_the_documented_columns(rows, tmp_path):
    path = write_csv(rows, tmp_path / "sub" / "skill.csv")
    with path.open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        assert CSV_COLUMNS[:9] == ("method", "lead_min", "threshold_mmh", "csi", "pod", "far", "hss", "mse", "mae")
        assert CSV_COLUMNS[9:] == ("bmse", "corr")
        got = list(reader)
    assert len(got) == len(rows) == 2 * 3 * 2
    assert float(got[0]["csi"]) == pytest.approx(rows[0]["csi"])


def test_unlabelled_rows_are_refused(tmp_path):
    raw = SkillAccumulator(n_leads=1).compute()
    with pytest.raises(ValueError, match="label_rows"):
        write_csv(raw, tmp_path / "x.csv")


def test_format_table_shows_each_method_and_threshold(rows):
    text = format_table(rows, methods=["persistence", "convlstm"])
    assert "threshold >= 0.5 mm/h" in text and "threshold >= 5 mm/h" in text
    header = text.splitlines()[1]
    assert header.index("csi:persistence") < header.index("csi:convlstm") < header.index("mse:convlstm")
    assert len(text.splitlines()) == 2 * (2 + 3) + 1


def test_plot_file_is_written(rows, tmp_path):
    path = plot_skill(rows, tmp_path / "skill.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_training_skill_outputs_use_the_same_writer(tmp_path):
    """train's skill.csv/png (a checkpoint's lead_table) come from this module, with evaluate's columns;
    a lead_table of an older checkpoint (fewer keys) still writes its columns."""
    import torch

    from convlstm_dist.train.report import skill_outputs
    from convlstm_dist.train.validation import ValAccumulator

    acc = ValAccumulator(out_len=2, quantity="rain_norm", loss_name="mse")
    y = torch.rand(2, 2, 1, 8, 8)
    acc.add(torch.rand(2, 2, 1, 8, 8), y, torch.rand(2, 3, 1, 8, 8), torch.ones_like(y, dtype=torch.bool))
    acc.merge(torch.device("cpu"))
    csv_path, png = skill_outputs(acc.lead_table(), 2, 300, tmp_path / "new")
    with csv_path.open() as fh:
        got = list(csv.DictReader(fh))
    assert tuple(got[0]) == CSV_COLUMNS and {r["method"] for r in got} == {"model", "persistence"}
    assert sorted({float(r["lead_min"]) for r in got}) == [5.0, 10.0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    old = [{"method": "model", "lead": 1, "threshold_mmh": 0.5, "csi": 0.5, "pod": 0.6, "far": 0.2, "hss": 0.4,
            "mse": 1.0}]
    csv_path, _ = skill_outputs(old, 1, 300, tmp_path / "old")
    with csv_path.open() as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == ("method", "lead_min", "threshold_mmh", "csi", "pod", "far",
                                                          "hss", "mse")
    empty_csv, empty_png = skill_outputs([], 1, 300, tmp_path / "empty")
    assert empty_csv.exists() and empty_png.exists()
