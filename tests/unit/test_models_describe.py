"""`convlstm-dist describe` prints the paper's parameter counts for the six Moving MNIST recipes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from convlstm_dist.commands import describe

pytest.importorskip("pydantic")
pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "fc-lstm-2048-2048": 142_667_776,
    "convlstm-5x5-256": 13_524_496,
    "convlstm-5x5-128-128": 10_042_896,
    "convlstm-5x5-128-64-64": 7_585_296,
    "convlstm-9x9-1x1-128-128": 11_550_224,
    "convlstm-9x9-1x1-128-64-64": 8_830_480,
}


@pytest.mark.parametrize("recipe,want", RECIPES.items())
def test_describe_recipe(recipe, want, capsys):
    ap = argparse.ArgumentParser()
    describe.register(ap.add_subparsers())
    args = ap.parse_args(["describe", "--config", str(ROOT / f"convlstm_dist/recipes/moving_mnist/{recipe}.yaml")])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"parameters: {want}" in lines
    flops = [l for l in lines if l.startswith("flops_per_sample: ")]
    assert len(flops) == 1 and int(flops[0].split()[1]) > 0
