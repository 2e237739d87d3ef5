"""Arguments the commands share are declared once (commands/common.py) and mean one thing everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from convlstm_dist.cli import build_parser
from convlstm_dist.commands.common import parse_baselines
from convlstm_dist.errors import UserError

COMMANDS = Path(__file__).resolve().parents[2] / "convlstm_dist" / "commands"


def test_baselines_none_means_no_baseline_and_stands_alone():
    assert parse_baselines("none") == [] and parse_baselines(" NONE ") == []
    assert parse_baselines("persistence, optical_flow,") == ["persistence", "optical_flow"]
    with pytest.raises(UserError, match="stands alone"):
        parse_baselines("none,sprog")


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", "m", "--archive", "a.zarr"],
    ["skill-report", "--config", "r.yaml"],
])
def test_evaluate_and_skill_report_share_their_scoring_arguments(argv):
    p = build_parser()
    default = p.parse_args(argv)
    assert parse_baselines(default.baselines) == ["persistence", "optical_flow", "sprog", "anvil"]
    assert default.workers == 2 and default.max_windows is None and default.crop is None
    assert default.motion == "shared"
    args = p.parse_args(argv + ["--baselines", "none", "--crop", "64x64", "--max-windows", "3", "--workers", "1",
                                "--motion", "own"])
    assert parse_baselines(args.baselines) == [] and args.crop == "64x64" and args.motion == "own"
    assert (args.max_windows, args.workers) == (3, 1)


def test_each_shared_flag_is_declared_in_one_place():
    for flag in ('"--set"', '"--baselines"', '"--max-windows"', '"--motion"'):
        where = sorted(f.name for f in COMMANDS.glob("*.py") if flag in f.read_text())
        assert where == ["common.py"], f"{flag} is declared in {where}; declare it once, in commands/common.py"


def test_motion_refuses_an_unknown_source(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["evaluate", "--model", "m", "--archive", "a.zarr", "--motion", "crop"])
    assert e.value.code == 2 and "invalid choice: 'crop'" in capsys.readouterr().err
