"""Bring forecast/observation inputs to one layout: float64 numpy ``(B, T, H, W)`` in mm/h.

Accepts numpy arrays and torch tensors (detached and copied to CPU; torch is never imported
here). A ``(B, T, 1, H, W)`` array in the project layout ``B, T, C, H, W`` loses its
single channel; any other rank is an error. NaN (no data) is kept as NaN.
"""

from __future__ import annotations

import numpy as np


def to_numpy(x) -> np.ndarray:
    """numpy array or torch tensor → float64 numpy array (NaN kept)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def as_bthw(x, name: str) -> np.ndarray:
    """``(B, T, H, W)`` or ``(B, T, 1, H, W)`` → float64 ``(B, T, H, W)``."""
    a = to_numpy(x)
    if a.ndim == 5 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 4:
        raise ValueError(f"{name} must have shape (B, T, H, W) or (B, T, 1, H, W), got {a.shape}")
    return a
