"""GPU checks of the one skill accumulator: validation counts on the device (the sums stay there
between batches) and gives the metrics the CPU gives."""

from __future__ import annotations

import math

import pytest
import torch

from convlstm_dist.train.validation import ValAccumulator
from convlstm_dist.verify.scores import SkillAccumulator

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        y = torch.rand(4, 5, 1, 32, 32, generator=g) * 0.9
        pred = (y + 0.1 * torch.randn(y.shape, generator=g)).clamp(0, 1)
        x = torch.rand(4, 3, 1, 32, 32, generator=g) * 0.9
        yield pred, y, x, torch.rand(y.shape, generator=g) > 0.1


def test_validation_on_cuda_matches_cpu_and_keeps_sums_on_the_device():
    dev = torch.device("cuda")
    cpu, gpu = ValAccumulator(5, "rain_norm", "mse"), ValAccumulator(5, "rain_norm", "mse")
    for pred, y, x, m in batches():
        cpu.add(pred, y, x, m)
        gpu.add(pred.to(dev), y.to(dev), x.to(dev), m.to(dev))
        assert gpu.model.device.type == "cuda" and gpu.model.hits.is_cuda and gpu.sums.is_cuda
    cpu.merge(torch.device("cpu"))
    gpu.merge(dev)
    a, b = cpu.metrics(), gpu.metrics()
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], rel=1e-5), k


def test_flat_state_on_cuda_round_trips():
    acc = SkillAccumulator(n_leads=5)
    for pred, y, _, m in batches(1):
        acc.accumulate(pred.cuda()[:, :, 0] * 50, y.cuda()[:, :, 0] * 50, m.cuda())
    flat = acc.flat()
    assert flat.is_cuda and flat.dtype == torch.float64 and flat.numel() == acc.flat_size
    state = acc.to_state()
    back = SkillAccumulator(n_leads=5).load_flat(flat).to_state()
    for key in state:
        assert (state[key] == back[key]).all(), key
