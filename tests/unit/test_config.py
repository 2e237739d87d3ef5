"""Typed config: defaults, recipes, --set, and clear errors for impossible values."""

import pytest

from convlstm_dist.config import Config, flatten, load_config, parse_overrides
from convlstm_dist.errors import UserError


def test_defaults_validate():
    cfg = Config()
    assert cfg.model.hidden == [64, 64] and cfg.model.input_kernel == [3, 3]


def test_scalar_kernel_broadcast():
    cfg = load_config(None, ["model.hidden=[8, 8, 8]", "model.input_kernel=5", "model.state_kernel=[1]"])
    assert cfg.model.input_kernel == [5, 5, 5] and cfg.model.state_kernel == [1, 1, 1]


def test_recipe_then_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: demo\ntrain: {lr: 0.01, epochs: 3}\n")
    cfg = load_config(p, ["train.lr=3e-4"])
    assert cfg.name == "demo" and cfg.train.lr == 3e-4 and cfg.train.epochs == 3


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.hidden=[8, 8]", None),
        ("model.input_kernel=[4, 3]", "kernels must be odd"),
        ("model.hiden=[8]", "unknown key"),
        ("data.in_len=0", "data.in_len"),
        ("data.batch_size=-1", "data.batch_size"),
        ("model.height=63", "not divisible"),
        ("model.hidden=[]", "at least one"),
        ("model.input_kernel=[3, 3, 3]", "3 entries"),
        ("train.lr=-1", "train.lr"),
        ("name=a b", "name"),
    ],
)
def test_bad_values_give_clear_errors(override, needle):
    if needle is None:
        load_config(None, [override])
        return
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.lr=.inf", ["train.lr", "finite"]),
        ("train.lr=.nan", ["train.lr", "finite"]),
        ("train.lr=nan", ["train.lr", "finite"]),
        ("train.weight_decay=.inf", ["train.weight_decay", "finite"]),
        ("train.grad_clip=.inf", ["train.grad_clip", "finite"]),
        ("data.min_wet_fraction=.nan", ["data.min_wet_fraction", "finite"]),
        ("data.split.block_hours=.inf", ["data.split.block_hours", "finite"]),
        ("scaling.cpus_per_worker=.inf", ["scaling.cpus_per_worker", "finite"]),
    ],
)
def test_non_finite_floats_are_refused(override, needles):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_checkpoint_metric_must_be_reported_by_training():
    with pytest.raises(UserError) as err:
        load_config(None, ["run.checkpoint_metric=val_los"])
    msg = str(err.value)
    assert "run.checkpoint_metric" in msg and "did you mean 'val_loss'" in msg
    assert "valid names:" in msg and "val_csi_2mmh" in msg and "train_loss" in msg
    assert load_config(None, ["run.checkpoint_metric=val_csi_2mmh"]).run.checkpoint_metric == "val_csi_2mmh"


@pytest.mark.parametrize("name", ["../../x", "a/b", "a'b", 'a"b', "a b", "a..b", "..", ".hidden", "x" * 101,
                                  "a\\b", "a`b"])
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(UserError) as err:
        load_config(None, [f"run.name={name}"] if "'" not in name else [f'run.name="{name}"'])
    assert "run.name" in str(err.value) and "letters, digits" in str(err.value)


def test_safe_run_names_pass():
    assert load_config(None, ["run.name=radar_v2.1-a"]).run.name == "radar_v2.1-a"
    assert load_config(None, ["run.name=null"]).run.name is None
    with pytest.raises(UserError, match="name"):
        load_config(None, ["name=../up"])


def test_missing_recipe_and_bad_set():
    with pytest.raises(UserError, match="not found"):
        load_config("nope.yaml")
    with pytest.raises(UserError, match="key=value"):
        parse_overrides(["train.lr"])


def test_flatten_has_dotted_keys():
    flat = flatten(Config())
    assert flat["model.hidden"] == [64, 64] and "train.lr" in flat and "data.split.block_hours" in flat
