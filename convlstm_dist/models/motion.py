"""Motion of a field between frames, and advection by it — in torch, on the model's device.

The Lagrangian encoder–forecaster (:class:`convlstm_dist.models.lagrangian.LagrangianForecaster`)
uses these to forecast in the frame of reference that moves with the rain: the inputs are shifted
so that they line up with the last frame, the ConvLSTM forecasts growth and decay there, and its
forecast is carried forward along the motion.

* :func:`estimate_motion` — phase correlation (the normalised cross-power spectrum of two frames,
  whose inverse FFT peaks at their displacement), summed over the consecutive pairs of the inputs,
  in overlapping tiles (``tile`` pixels, half-tile stride) with a sub-pixel peak. Tiles with too
  little signal take the motion of the whole frame; the tile motions are smoothed and interpolated
  to every pixel. Every tile's vector is refined by Gauss–Newton on the frames' differences (to a
  few hundredths of a pixel on a translation). A frame no bigger than one tile (a training crop, a
  scored crop) has one motion vector.
* :func:`advect` — semi-Lagrangian: ``out(p) = field(p - k·v(p))``, bilinear, zero (= dry) where the
  trajectory starts outside the grid.

Units: ``v`` is in pixels per time step, ``v[:, 0]`` along H (rows), ``v[:, 1]`` along W (columns);
a feature at ``p`` at step ``t`` is at ``p + v`` at ``t + 1``. pysteps (the optical-flow baselines'
:func:`convlstm_dist.verify.baselines.motion_field`) orders the components the other way round,
``[u (columns), v (rows)]``, with the same sign and unit: :func:`from_uv` converts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TILE = 96  # pixels; a 100x100 training crop or a 128x128 scored crop is one tile (one motion vector)
MIN_SIGNAL = 0.02  # fraction of a tile's pixels above zero in both frames for the tile's own motion


def _tiles(x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """(N, H, W) -> (N, nh, nw, sh, sw) overlapping tiles (stride = half a tile)."""
    sh, sw = size
    th, tw = max(sh // 2, 1), max(sw // 2, 1)
    t = x.unfold(1, sh, th).unfold(2, sw, tw)
    return t, t.shape[1], t.shape[2]


def _peak(r: torch.Tensor, max_shift: tuple[float, float]) -> torch.Tensor:
    """Correlation surfaces (..., sh, sw), zero shift at [0, 0] (FFT layout) -> (..., 2) sub-pixel peak."""
    sh, sw = r.shape[-2:]
    r = torch.fft.fftshift(r, dim=(-2, -1))
    cy, cx = sh // 2, sw // 2
    dy = torch.arange(sh, device=r.device) - cy
    dx = torch.arange(sw, device=r.device) - cx
    allowed = (dy.abs()[:, None] <= max_shift[0]) & (dx.abs()[None, :] <= max_shift[1])
    r = torch.where(allowed, r, torch.full_like(r, float("-inf")))
    flat = r.flatten(-2).argmax(-1)
    iy, ix = flat // sw, flat % sw
    # parabolic refinement on the neighbours (wrap-around: the peak is never at the border, max_shift < half)
    g = r.flatten(0, -3) if r.dim() > 2 else r[None]
    iyf, ixf = iy.reshape(-1), ix.reshape(-1)
    n = torch.arange(g.shape[0], device=r.device)

    def at(y, x):
        v = g[n, y % sh, x % sw]
        return torch.where(torch.isfinite(v), v, g[n, iyf, ixf])

    c = g[n, iyf, ixf]
    oy = _parabola(at(iyf - 1, ixf), c, at(iyf + 1, ixf))
    ox = _parabola(at(iyf, ixf - 1), c, at(iyf, ixf + 1))
    vy = (iyf - cy).to(r.dtype) + oy
    vx = (ixf - cx).to(r.dtype) + ox
    return torch.stack([vy, vx], dim=-1).reshape(*r.shape[:-2], 2)


def _parabola(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    den = a - 2 * b + c
    off = 0.5 * (a - c) / torch.where(den.abs() > 1e-12, den, torch.ones_like(den))
    return torch.where(den < -1e-12, off.clamp(-0.5, 0.5), torch.zeros_like(off))


@torch.no_grad()
def estimate_motion(frames: torch.Tensor, tile: int = TILE, pairs: int = 4) -> torch.Tensor:
    """``frames`` (B, T, H, W), T >= 2, non-negative (0 = dry) -> motion ``v`` (B, 2, H, W) in pixels per step."""
    if frames.dim() != 4 or frames.shape[1] < 2:
        raise ValueError(f"motion needs frames (B, T>=2, H, W), got {tuple(frames.shape)}")
    x = frames.float().nan_to_num(0.0).clamp_min(0.0)
    B, T, H, W = x.shape
    size = (min(tile, H), min(tile, W))
    win = torch.outer(torch.hann_window(size[0], periodic=False, device=x.device),
                      torch.hann_window(size[1], periodic=False, device=x.device))
    k = min(pairs, T - 1)
    a, b = x[:, T - 1 - k:T - 1], x[:, T - k:]  # (B, k, H, W) consecutive pairs
    ra, nh, nw = _tiles(a.flatten(0, 1), size)  # (B*k, nh, nw, sh, sw) views of the frames
    rb, _, _ = _tiles(b.flatten(0, 1), size)
    wet = torch.minimum((ra > 0).float().mean((-2, -1)), (rb > 0).float().mean((-2, -1)))  # (B*k, nh, nw)
    ta = (ra - ra.mean((-2, -1), keepdim=True)) * win
    tb = (rb - rb.mean((-2, -1), keepdim=True)) * win
    cross = torch.conj(torch.fft.rfft2(ta)) * torch.fft.rfft2(tb)
    cross = cross / (cross.abs() + 1e-6 * cross.abs().amax((-2, -1), keepdim=True) + 1e-12)
    cross = cross.reshape(B, k, nh, nw, *cross.shape[-2:])
    wet = wet.reshape(B, k, nh, nw).mean(1)  # (B, nh, nw)
    r_tiles = torch.fft.irfft2(cross.sum(1), s=size)  # (B, nh, nw, sh, sw)
    max_shift = (size[0] / 4, size[1] / 4)
    r_all = (r_tiles * wet[..., None, None]).sum((1, 2))  # the whole frame: tiles weighted by signal
    v_all = _peak(r_all, max_shift)  # (B, 2)
    v_all = torch.where((wet.amax((1, 2)) >= MIN_SIGNAL)[:, None], v_all, torch.zeros_like(v_all))
    if nh * nw == 1:
        v_all = _refine(a, b, v_all)
        v = v_all[:, :, None, None]
    else:
        v_t = _peak(r_tiles, max_shift)  # (B, nh, nw, 2)
        sh, sw = size  # each tile's vector refined on the tile's own frames
        per_tile = lambda t: t.reshape(B, k, nh, nw, sh, sw).permute(0, 2, 3, 1, 4, 5).reshape(-1, k, sh, sw)  # noqa: E731
        v_t = _refine(per_tile(ra), per_tile(rb), v_t.reshape(-1, 2)).reshape(B, nh, nw, 2)
        v_t = torch.where((wet >= MIN_SIGNAL)[..., None], v_t, v_all[:, None, None, :])
        v = v_t.permute(0, 3, 1, 2)
        v = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return F.interpolate(v, size=(H, W), mode="bilinear", align_corners=True)


def _refine(a: torch.Tensor, b: torch.Tensor, v: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """Gauss–Newton refinement of one motion vector per sample: ``b(p) ≈ a(p - v)`` over every pair.

    ``a``, ``b`` (B, k, H, W) consecutive frames, ``v`` (B, 2) the phase-correlation estimate; the
    sum of squared differences is linearised in ``v`` (image gradients of the warped frame) and
    solved as a 2×2 system, away from the border that the warp leaves empty.
    """
    B, k, H, W = a.shape
    a = F.avg_pool2d(a, 3, 1, 1)  # a light blur: smoother gradients, a wider basin
    b = F.avg_pool2d(b, 3, 1, 1)
    flat_a = a.reshape(B * k, 1, H, W)
    for _ in range(iters):
        vv = v.repeat_interleave(k, 0)[:, :, None, None].expand(B * k, 2, H, W)
        w = advect(flat_a, vv, 1).reshape(B, k, H, W)
        inside = advect(torch.ones_like(flat_a), vv, 1).reshape(B, k, H, W) > 0.999
        gy = torch.zeros_like(w)
        gx = torch.zeros_like(w)
        gy[..., 1:-1, :] = (w[..., 2:, :] - w[..., :-2, :]) / 2
        gx[..., :, 1:-1] = (w[..., :, 2:] - w[..., :, :-2]) / 2
        inside[..., :2, :] = inside[..., -2:, :] = inside[..., :, :2] = inside[..., :, -2:] = False
        m = inside.float()
        r = (w - b) * m
        # d/dv of a(p - v) is -grad a(p - v): J = -[gy, gx]
        jy, jx = -gy * m, -gx * m
        A = torch.stack([torch.stack([(jy * jy).sum((1, 2, 3)), (jy * jx).sum((1, 2, 3))], -1),
                         torch.stack([(jx * jy).sum((1, 2, 3)), (jx * jx).sum((1, 2, 3))], -1)], -2)
        g = torch.stack([(jy * r).sum((1, 2, 3)), (jx * r).sum((1, 2, 3))], -1)
        ok = torch.linalg.det(A) > 1e-9 * (A.diagonal(dim1=-2, dim2=-1).sum(-1) ** 2 + 1e-12)
        A = torch.where(ok[:, None, None], A, torch.eye(2, device=A.device).expand_as(A))
        dv = -torch.linalg.solve(A, g[..., None])[..., 0]
        v = v + torch.where(ok[:, None], dv.clamp(-1.0, 1.0), torch.zeros_like(dv))
    return v


def advect(field: torch.Tensor, v: torch.Tensor, steps: float) -> torch.Tensor:
    """``field`` (B, C, H, W) carried ``steps`` time steps along ``v`` (B, 2, H, W): ``field(p - steps·v(p))``."""
    B, C, H, W = field.shape
    if steps == 0:
        return field
    ys = torch.arange(H, device=field.device, dtype=torch.float32)
    xs = torch.arange(W, device=field.device, dtype=torch.float32)
    py = ys[None, :, None] - steps * v[:, 0].float()
    px = xs[None, None, :] - steps * v[:, 1].float()
    grid = torch.stack([2 * px / max(W - 1, 1) - 1, 2 * py / max(H - 1, 1) - 1], dim=-1)  # (B, H, W, 2): x, y
    out = F.grid_sample(field.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(field.dtype)


def from_uv(uv):
    """A motion field in pysteps' convention, ``(..., 2, H, W)`` = ``[u (along columns), v (along rows)]``
    in pixels per step (numpy or torch), -> this module's ``[along rows, along columns]`` (same sign and
    unit: pysteps' semi-Lagrangian extrapolation and :func:`advect` then move a field the same way)."""
    if uv.shape[-3] != 2:
        raise ValueError(f"motion must have shape (..., 2, H, W), got {tuple(uv.shape)}")
    if isinstance(uv, torch.Tensor):
        return uv.flip(-3)
    return uv[..., ::-1, :, :].copy()
