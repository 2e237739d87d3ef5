"""Moving MNIST on the device (``data/mnist_device.py``) and the Table-1 runner's cross-entropy
(``experiments/table1_device.py``, ``convlstm-dist table1``).

* the train / val / test digit pools are the documented ranges and never overlap, and a split's
  sequences only ever show digits of its own pool (checked on the ids and on the rendered pixels);
* the motion is the CPU generator's (``moving_mnist.generate``): same digit, position and
  velocity -> the very same frames;
* validation and test sets are deterministic (same seed -> same sequences, on a new instance),
  training batches are fresh per batch and reproducible from the seed;
* the cross-entropy is computed in float32 from low-precision logits and matches a float64
  reference, where a bf16 computation does not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlstm_dist.cli import main
from convlstm_dist.data import mnist_device as md
from convlstm_dist.data import moving_mnist as mm
from convlstm_dist.models.losses import bce_per_sequence, bce_sum
from convlstm_dist.experiments import table1_device as t1
from convlstm_dist.experiments import table1_report as t1_report


@pytest.fixture(scope="module")
def data():
    return md.DeviceMovingMNIST("cpu")


def pool_coded_digits() -> torch.Tensor:
    """10,000 fake digits: full 28x28 squares whose grey level says the pool (train 60, val 120, test 240)."""
    d = torch.zeros(md.N_SHIPPED, 28, 28, dtype=torch.uint8)
    for value, split in ((60, "train"), (120, "val"), (240, "test")):
        r = md.pool(split)
        d[r.start:r.stop] = value
    return d


def test_pools_are_the_documented_disjoint_ranges():
    assert md.pool("train") == range(7000)
    assert md.pool("val") == range(7000, 8000)
    assert md.pool("test") == range(8000, 10000)
    sets = {s: set(md.pool(s)) for s in md.POOLS}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(md.N_SHIPPED))
    with pytest.raises(ValueError):
        md.pool("validation")


def test_sequences_only_show_digits_of_their_pool(data):
    g = data.generator(5)
    for _ in range(3):
        _, motion = data.train_batch(32, g)
        ids = motion.digit_ids
        assert ids.shape == (32, 2) and ids.min() >= 0 and ids.max() < 7000
    for split, n in (("val", 300), ("test", 300)):
        ids = data.eval_set(split, n).motion.digit_ids
        r = md.pool(split)
        assert ids.min() >= r.start and ids.max() < r.stop
        assert len(torch.unique(ids)) > 0.2 * len(r)  # the pool is really sampled, not one digit
    # by construction: with pool-coded digits, the rendered pixels carry only the split's code
    coded = md.DeviceMovingMNIST("cpu", digits=pool_coded_digits())
    seen = {"train": coded.train_batch(16, coded.generator(0))[0],
            "val": coded.eval_set("val", 16).all(), "test": coded.eval_set("test", 16).all()}
    for split, value in (("train", 60), ("val", 120), ("test", 240)):
        levels = set(torch.unique((seen[split] * 255).round().to(torch.int64)).tolist())
        assert levels == {0, value}, (split, levels)


def test_motion_and_frames_are_those_of_the_cpu_generator(data):
    """Rebuild the draws of moving_mnist.generate(seed=3): the device renderer gives the same frames."""
    digits = mm.load_digits()
    ref = mm.generate(6, seed=3, digits=digits)
    ids, pos, vel = [], [], []
    for k in range(6):
        rng = np.random.default_rng([3, k])
        row = ([], [], [])
        for _ in range(2):  # the order of draws in generate / _trajectory
            row[0].append(rng.integers(len(digits)))
            p0, theta, speed = rng.uniform(0, 36, size=2), rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 5.0)
            row[1].append(p0)
            row[2].append(speed * np.array([np.sin(theta), np.cos(theta)]))
        ids.append(row[0]), pos.append(row[1]), vel.append(row[2])
    motion = md.Motion(torch.tensor(ids), torch.tensor(np.array(pos)), torch.tensor(np.array(vel)))
    out = data.render(motion)
    assert out.shape == (6, 20, 64, 64) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), ref)


def test_trajectories_bounce_inside_the_frame(data):
    m = data.eval_set("test", 200).motion
    speed = m.vel.norm(dim=-1)
    assert speed.min() >= 2.0 and speed.max() < 5.0
    pos = md.positions(m, 20, data.span)
    assert pos.min() >= 0 and pos.max() <= data.span == 36
    step = (pos[:, :, 1:] - pos[:, :, :-1]).abs()
    assert step.max() <= 6  # <= 5 px per frame, plus rounding


def test_eval_sets_are_deterministic_and_training_is_fresh_per_batch(data):
    other = md.DeviceMovingMNIST("cpu", digits=data.digits.clone())
    for split in ("val", "test"):
        a, b = data.eval_set(split, 12), other.eval_set(split, 12)
        torch.testing.assert_close(a.all(), b.all(), rtol=0, atol=0)
        torch.testing.assert_close(torch.cat(list(a.batches(5))), a.all(), rtol=0, atol=0)
        assert not torch.equal(a.all(), data.eval_set(split, 12, seed=123).all())
    assert not torch.equal(data.eval_set("val", 12).all(), data.eval_set("test", 12).all())
    g1, g2 = data.generator(7), other.generator(7)
    first, second = data.train_batch(4, g1)[0], data.train_batch(4, g1)[0]
    assert not torch.equal(first, second)
    torch.testing.assert_close(other.train_batch(4, g2)[0], first, rtol=0, atol=0)
    x, y = md.split_io(first, 10)
    assert x.shape == (4, 10, 1, 64, 64) and y.shape == (4, 10, 1, 64, 64)
    assert 0 <= float(first.min()) and float(first.max()) <= 1


def _reference_ce(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over sequences of the summed BCE, in float64 (from the logits' own values)."""
    z, y = logits.double(), target.double()
    err = torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))
    return float(err.flatten(1).sum(1).mean())


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_cross_entropy_upcasts_low_precision_logits(low):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 10, 1, 64, 64, generator=g) ** 4
    logits = (torch.randn(3, 10, 1, 64, 64, generator=g) * 4 - 3).to(low)
    ref = _reference_ce(logits, target)
    per_seq = bce_per_sequence(logits, target)
    assert per_seq.dtype == torch.float32 and per_seq.shape == (3,)
    ours = float(per_seq.mean())
    assert abs(ours - ref) / ref < 2e-6
    assert float(bce_sum(logits.float(), target)) == pytest.approx(ours, rel=1e-6)  # the paper's number
    naive = float(F.binary_cross_entropy_with_logits(logits, target.to(low), reduction="sum") / 3)
    assert abs(naive - ref) / ref > 20 * abs(ours - ref) / ref  # what computing in low precision costs


class _FixedLogits(torch.nn.Module):
    """A 'model' that returns preset (bf16) logits, to test the evaluation path itself."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.i = logits, 0

    def forward(self, x, n_out):
        out = self.logits[self.i:self.i + x.shape[0]]
        self.i += x.shape[0]
        return out, None


def test_evaluation_after_autocast_is_fp32_and_matches_float64(data):
    test = data.eval_set("test", 6)
    target = md.split_io(test.all(), 10)[1]
    logits = (torch.randn(6, 10, 1, 64, 64, generator=torch.Generator().manual_seed(1)) * 5 - 4).to(torch.bfloat16)
    ce = t1.evaluate_cross_entropy(_FixedLogits(logits), test, 10, 10, torch.bfloat16, batch_size=4)
    assert ce == pytest.approx(_reference_ce(logits, target), rel=2e-6)
    # a real model: fp32 evaluation equals the same model in float64
    from convlstm_dist.models import build_model

    torch.manual_seed(0)
    model = build_model("convlstm", in_channels=1, hidden=[4], input_kernel=[3], state_kernel=[3], patch=4,
                        height=64, width=64)
    ce32 = t1.evaluate_cross_entropy(model, test, 10, 10, None, batch_size=3)
    x, y = md.split_io(test.all().double(), 10)
    with torch.no_grad():
        ref64 = float(bce_per_sequence(model.double()(x, 10)[0], y).mean())  # float32 loss of fp64 logits
        z = model(x, 10)[0]
    assert ce32 == pytest.approx(_reference_ce(z, y), rel=1e-5) and ce32 == pytest.approx(ref64, rel=1e-5)
    model.float()
    ce_bf16 = t1.evaluate_cross_entropy(model, test, 10, 10, torch.bfloat16, batch_size=3)
    assert np.isfinite(ce_bf16) and ce_bf16 == pytest.approx(ce32, rel=0.05)
    assert t1.target_entropy(test, 10) < ce32


def test_share_weights_and_ranking_helpers():
    assert t1.share_weight("mm-convlstm-5x5-128-64-64", ["5x5-128-64-64=2"]) == 2.0
    assert t1.share_weight("mm-fc-lstm-2048-2048", ["5x5-128-64-64=2"]) == 1.0
    with pytest.raises(ValueError):
        t1.share_weight("x", ["x=0"])
    assert t1_report._ranks([3.0, 1.0, 2.0]) == [3, 1, 2]
    assert t1_report.kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0 and t1_report.kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0


def test_dry_run_of_one_model_writes_the_report(tmp_path):
    rc = main(["table1", "--out", str(tmp_path), "--time-budget", "60", "--device", "cpu", "--dry-run",
               "--models", "5x5-128-64-64", "--val-n", "2", "--test-n", "2", "--eval-batch", "2",
               "--max-steps", "1"])
    assert rc == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["table1-dryrun-curves.csv", "table1-dryrun.csv", "table1-dryrun.json", "table1-dryrun.md",
                     "table1-dryrun.png"]
    rep = json.loads((tmp_path / "table1-dryrun.json").read_text())
    (run,) = rep["runs"]
    assert run["recipe"] == "mm-convlstm-5x5-128-64-64" and run["steps"] == 1 and np.isfinite(run["test_ce"])
    assert rep["meta"]["param_check"][0]["full_params"] == 7_585_296
    assert "3670.85" in (tmp_path / "table1-dryrun.md").read_text()


def test_a_share_too_small_to_train_still_scores_the_model(data):
    """The time budget, not a step count, ends training: a share used up by the first validation
    trains 0 steps and still reports validation and test cross-entropy."""
    (cfg,) = t1.table1_configs(["data.batch_size=2"], dry_run=True, only=["9x9-1x1-128-64-64"])
    run = t1.train_one(cfg, data, data.eval_set("val", 2), data.eval_set("test", 2), 0.01, seed=0, eval_batch=2,
                       say=lambda m: None)
    assert run.steps == 0 and [p["step"] for p in run.curve] == [0]
    assert np.isfinite(run.test_ce) and run.test_ce == pytest.approx(run.curve[0]["val_ce"], rel=0.2)
