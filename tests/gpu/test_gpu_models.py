"""GPU checks of the model fast path: bf16 autocast, fast == literal, torch.compile, CUDA graph step."""

from __future__ import annotations

import pytest
import torch

from convlstm_dist.train.graph_step import CudaGraphTrainStep
from convlstm_dist.models import build_model, get_loss

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
KW = dict(in_channels=1, hidden=[16, 8], input_kernel=[5, 3], state_kernel=[3, 3], patch=2, height=16, width=16)


@pytest.fixture(autouse=True)
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def pair(**kw):
    torch.manual_seed(0)
    lit = build_model("convlstm", **{**KW, "impl": "literal"}).cuda()
    with torch.no_grad():
        for p in lit.parameters():
            p.normal_(0, 0.2)
    fast = build_model("convlstm", **{**KW, "impl": "fast", **kw}).cuda()
    fast.load_state_dict(lit.state_dict())
    return lit, fast


def run(m, x):
    y, _ = m(x, 4)
    y.float().square().mean().backward()
    return y.float(), {n: p.grad.float() for n, p in m.named_parameters()}


def close(a, b, rtol):
    ya, ga = a
    yb, gb = b
    torch.testing.assert_close(yb, ya, rtol=rtol, atol=rtol * ya.abs().max().item())
    for n in ga:
        assert (ga[n] - gb[n]).abs().max() <= rtol * ga[n].abs().max() + 1e-7, n


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_equals_literal_cuda_fp32(channels_last):
    lit, fast = pair(channels_last=channels_last)
    x = torch.rand(3, 5, 1, 16, 16, device="cuda")
    close(run(lit, x), run(fast, x), 1e-4)


@pytest.mark.parametrize("impl", ["literal", "fast"])
def test_bf16_autocast_forward_backward(impl):
    m = build_model("convlstm", **{**KW, "impl": impl, "channels_last": impl == "fast"}).cuda()
    x = torch.rand(2, 5, 1, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, state = m(x, 3)
        loss = get_loss("bce")(y.float(), (x[:, :3] > 0.5).float())
    loss.backward()
    assert y.shape == (2, 3, 1, 16, 16) and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in m.parameters())


def test_compiled_gates_equal_eager():
    _, eager = pair()
    _, comp = pair(compile=True)
    x = torch.rand(3, 5, 1, 16, 16, device="cuda")
    close(run(eager, x), run(comp, x), 1e-4)


@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_step_equals_eager_steps(compile):
    _, eager = pair()
    _, graphed = pair(compile=compile)
    x = torch.rand(2, 5, 1, 16, 16, device="cuda")
    y = (torch.rand(2, 4, 1, 16, 16, device="cuda") > 0.5).float()
    loss_fn = get_loss("bce")
    opt_e = torch.optim.RMSprop(eager.parameters(), lr=1e-3, alpha=0.9)
    opt_g = torch.optim.RMSprop(graphed.parameters(), lr=1e-3, alpha=0.9, capturable=True)
    step = CudaGraphTrainStep(graphed, loss_fn, opt_g, x, y)
    for _ in range(3):
        opt_e.zero_grad()
        loss_e = loss_fn(eager(x, 4)[0], y)
        loss_e.backward()
        opt_e.step()
        loss_g = step.step(x, y)
        torch.testing.assert_close(loss_g, loss_e.detach(), rtol=1e-4, atol=1e-6)
    for (n, pe), (_, pg) in zip(eager.named_parameters(), graphed.named_parameters()):
        torch.testing.assert_close(pg, pe, rtol=1e-3, atol=1e-5, msg=n)
