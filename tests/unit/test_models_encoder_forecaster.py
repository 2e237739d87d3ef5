"""Encoder–forecaster and FC-LSTM: paper parameter counts, shapes, fast == literal, gradients,
state continuation, errors, registry, FLOPs."""

from __future__ import annotations

import pytest
import torch

from convlstm_dist.models import build_model, count_flops, forward_flops

# Table 1 of Shi et al. 2015 (Moving MNIST, 64×64, patch 4 -> 16 channels at 16×16).
PAPER = [
    ("fclstm", [2048, 2048], [1, 1], [1, 1], 142_667_776),
    ("convlstm", [256], [5], [5], 13_524_496),
    ("convlstm", [128, 128], [5, 5], [5, 5], 10_042_896),
    ("convlstm", [128, 64, 64], [5, 5, 5], [5, 5, 5], 7_585_296),
    ("convlstm", [128, 128], [9, 9], [1, 1], 11_550_224),
    ("convlstm", [128, 64, 64], [9, 9, 9], [1, 1, 1], 8_830_480),
]
TINY = dict(in_channels=2, hidden=[5, 4], input_kernel=[3, 5], state_kernel=[5, 1], patch=2, height=8, width=6)


def tiny(kind="convlstm", impl="fast", **kw):
    torch.manual_seed(0)
    m = build_model(kind, **{**TINY, "impl": impl, **kw}).double()
    with torch.no_grad():  # random peepholes/biases too, so every term is exercised
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("kind,hidden,ik,sk,want", PAPER)
def test_paper_parameter_counts(kind, hidden, ik, sk, want):
    with torch.device("meta"):
        m = build_model(kind, in_channels=1, hidden=hidden, input_kernel=ik, state_kernel=sk,
                        patch=4, height=64, width=64)
    assert sum(p.numel() for p in m.parameters()) == want


@pytest.mark.parametrize("kind", ["convlstm", "fclstm"])
@pytest.mark.parametrize("given_state", [False, True])
def test_fast_equals_literal_fp32(kind, given_state):
    lit = tiny(kind, "literal").float()
    fast = tiny(kind, "fast").float()
    fast.load_state_dict(lit.state_dict())
    x = torch.randn(3, 4, 2, 8, 6)
    state = None
    if given_state:
        _, state = lit(torch.randn(3, 2, 2, 8, 6), 1)
        state = [(h.detach(), c.detach()) for h, c in state]
    (ya, sa), (yb, sb) = lit(x, 5, state), fast(x, 5, state)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    for (ha, ca), (hb, cb) in zip(sa, sb):
        torch.testing.assert_close(hb, ha, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cb, ca, rtol=1e-5, atol=1e-6)
    (ya.square().mean() + sum(h.sum() for h, _ in sa)).backward()
    (yb.square().mean() + sum(h.sum() for h, _ in sb)).backward()
    for (name, pa), (_, pb) in zip(lit.named_parameters(), fast.named_parameters()):
        scale = pa.grad.abs().max()
        assert (pa.grad - pb.grad).abs().max() <= 1e-5 * scale + 1e-7, name


@pytest.mark.parametrize("kind", ["convlstm", "fclstm"])
@pytest.mark.parametrize("impl", ["fast", "literal"])
def test_every_parameter_registered_and_trained(kind, impl):
    m = build_model(kind, **{**TINY, "impl": impl})  # default init (zero peepholes)
    names = {n for n, _ in m.named_parameters()}
    for part in ("encoder", "forecaster"):
        for l in range(2):
            for w in ("weight_h", "bias", "w_ci", "w_cf", "w_co"):
                assert f"{part}.{l}.{w}" in names
    assert "forecaster.0.weight_x" not in names and "encoder.0.weight_x" in names
    y, _ = m(torch.rand(2, 3, 2, 8, 6), 3)
    y.square().sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("k", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("t_in,n_out", [(3, 2), (2, 5)])
def test_output_shapes(k, t_in, n_out):
    m = build_model("convlstm", in_channels=1, hidden=[4, 3], input_kernel=[k, k], state_kernel=[k, 1],
                    patch=2, height=8, width=12)
    y, state = m(torch.rand(2, t_in, 1, 8, 12), n_out)
    assert y.shape == (2, n_out, 1, 8, 12)
    assert [tuple(h.shape) for h, _ in state] == [(2, 4, 4, 6), (2, 3, 4, 6)]


@pytest.mark.parametrize("impl", ["fast", "literal"])
def test_state_continues_sequence(impl):
    m = tiny(impl=impl)
    x = torch.randn(2, 5, 2, 8, 6, dtype=torch.float64)
    y_all, s_all = m(x, 3)
    _, s1 = m(x[:, :2], 1)
    y_cont, s_cont = m(x[:, 2:], 3, s1)
    torch.testing.assert_close(y_cont, y_all)
    torch.testing.assert_close(s_cont[1][1], s_all[1][1])


@pytest.mark.parametrize("kind", ["convlstm", "fclstm"])
def test_hparams_rebuild(kind):
    m = build_model(kind, **TINY)
    again = build_model(**m.hparams)
    assert again.hparams == m.hparams
    again.load_state_dict(m.state_dict())


@pytest.mark.parametrize("kw,match", [
    (dict(input_kernel=[3, 4]), "encoder layer 2: input_kernel=4 is even"),
    (dict(state_kernel=[2, 1]), "encoder layer 1: state_kernel=2 is even"),
    (dict(input_kernel=[3]), "input_kernel has 1 entries"),
    (dict(height=7), "not divisible by patch=2|divisible by patch=2"),
    (dict(impl="cuda"), "unknown impl 'cuda'; valid: fast, literal"),
])
def test_constructor_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model("convlstm", **{**TINY, **kw})


def test_unknown_kind_lists_valid():
    with pytest.raises(ValueError, match="valid: convlstm, fclstm"):
        build_model("transformer", **TINY)


@pytest.mark.parametrize("kind", ["convlstm", "fclstm"])
@pytest.mark.parametrize("shape,match", [
    ((2, 2, 8, 6), "expected input of shape \\(B, T, C, H, W\\)"),
    ((2, 3, 1, 8, 6), "input has 1 channels, model expects in_channels=2"),
    ((2, 3, 2, 7, 6), "not divisible by patch=2"),
])
def test_forward_errors(kind, shape, match):
    with pytest.raises(ValueError, match=match):
        build_model(kind, **TINY)(torch.zeros(shape), 2)


def test_flops_convention():
    m = build_model("convlstm", in_channels=1, hidden=[4], input_kernel=[3], state_kernel=[1],
                    patch=1, height=5, width=5)
    # per step: 2 * 25 px * 16 out * (1*9 + 4*1); encoder 2 steps + forecaster (4*1 only) 3 steps
    fwd = 2 * 25 * 16 * 13 * 2 + 2 * 25 * 16 * 4 * 3 + 2 * 25 * 4 * 1 * 3
    assert forward_flops(m, 2, 3, 5, 5) == fwd
    assert count_flops(m, 2, 3, 5, 5) == 3 * fwd
