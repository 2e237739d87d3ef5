"""ConvLSTM cell: paper equations (checked against an independent step), kernel and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convlstm_dist.models import ConvLSTMCell


def reference_step(x, h, c, wx, wh, b, wci, wcf, wco, kx, kh):
    """Eq. (3) of Shi et al. 2015 with explicit per-gate weights (dicts keyed by gate)."""
    def pre(g):
        out = F.conv2d(h, wh[g], b[g], padding=kh // 2)
        return out if x is None else out + F.conv2d(x, wx[g], padding=kx // 2)
    i = torch.sigmoid(pre("i") + wci * c)
    f = torch.sigmoid(pre("f") + wcf * c)
    c_new = f * c + i * torch.tanh(pre("c"))
    o = torch.sigmoid(pre("o") + wco * c_new)
    return o * torch.tanh(c_new), c_new


@pytest.mark.parametrize("cin,hidden,kx,kh", [(3, 4, 3, 3), (2, 5, 5, 1), (1, 3, 1, 3), (0, 4, 3, 5)])
def test_cell_matches_paper_equations(cin, hidden, kx, kh):
    g = torch.Generator().manual_seed(0)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    gates = "ifco"
    wx = {k: rnd(hidden, cin, kx, kx) for k in gates} if cin else None
    wh = {k: rnd(hidden, hidden, kh, kh) for k in gates}
    b = {k: rnd(hidden) for k in gates}
    wci, wcf, wco = rnd(hidden, 1, 1), rnd(hidden, 1, 1), rnd(hidden, 1, 1)
    cell = ConvLSTMCell(cin, hidden, kx, kh).double()
    with torch.no_grad():  # documented layout: stacked i, f, c, o
        if cin:
            cell.weight_x.copy_(torch.cat([wx[k] for k in gates]))
        cell.weight_h.copy_(torch.cat([wh[k] for k in gates]))
        cell.bias.copy_(torch.cat([b[k] for k in gates]))
        cell.w_ci.copy_(wci), cell.w_cf.copy_(wcf), cell.w_co.copy_(wco)
    x = rnd(2, cin, 6, 7) if cin else None
    h, c = rnd(2, hidden, 6, 7), rnd(2, hidden, 6, 7)
    want = reference_step(x, h, c, wx, wh, b, wci, wcf, wco, kx, kh)
    got = cell(x, (h, c))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_cell_parameter_layout():
    cell = ConvLSTMCell(3, 4, 5, 3)
    shapes = {k: tuple(v.shape) for k, v in cell.state_dict().items()}
    assert shapes == {"weight_x": (16, 3, 5, 5), "weight_h": (16, 4, 3, 3), "bias": (16,),
                      "w_ci": (4, 1, 1), "w_cf": (4, 1, 1), "w_co": (4, 1, 1)}
    assert "weight_x" not in ConvLSTMCell(0, 4, 5, 3).state_dict()


@pytest.mark.parametrize("kx,kh,bad", [(4, 3, "input_kernel=4"), (3, 2, "state_kernel=2"), (0, 3, "input_kernel=0")])
def test_cell_rejects_bad_kernels(kx, kh, bad):
    with pytest.raises(ValueError, match=f"encoder layer 2: {bad}"):
        ConvLSTMCell(3, 4, kx, kh, name="encoder layer 2")


@pytest.mark.parametrize("shape", [(2, 3, 6), (2, 5, 6, 6), (2, 3, 6, 6, 1)])
def test_cell_rejects_bad_input(shape):
    cell = ConvLSTMCell(3, 4, 3, 3, name="encoder layer 1")
    h = torch.zeros(2, 4, 6, 6)
    with pytest.raises(ValueError, match="encoder layer 1: expected input"):
        cell(torch.zeros(shape), (h, h))


def test_cell_without_input_rejects_tensor():
    cell = ConvLSTMCell(0, 4, 3, 3, name="forecaster layer 1")
    h = torch.zeros(2, 4, 6, 6)
    with pytest.raises(ValueError, match="no input"):
        cell(torch.zeros(2, 3, 6, 6), (h, h))
