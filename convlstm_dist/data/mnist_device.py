"""Moving MNIST rendered on the training device, batch by batch, from disjoint digit pools.

The archive pipeline (:mod:`convlstm_dist.data.moving_mnist`) draws the digits of every split from
all 10,000 shipped MNIST test digits, so a digit can be seen in training and again in a test
sequence. Here each split owns its own digits (indices into the shipped 10,000):

==========  ===============  ======
split       digit indices    digits
==========  ===============  ======
train       0 – 6,999        7,000
val         7,000 – 7,999    1,000
test        8,000 – 9,999    2,000
==========  ===============  ======

The motion is that of :mod:`convlstm_dist.data.moving_mnist` (Srivastava et al. 2015, as used by
Shi et al. 2015): per digit a top-left position uniform in ``[0, size - 28]`` on both axes, a
direction uniform in ``[0, 2π)`` and a speed uniform in ``[2, 5)`` pixels per frame, velocity
``speed · (sin θ, cos θ)`` (row, column), bouncing off the borders, positions rounded half to even;
overlapping digits combine with ``max``; pixel values are ``uint8 / 255`` in float32. Given the
same digit, position and velocity, :func:`render` produces exactly the frames of
``moving_mnist.generate`` (the bouncing path is computed in closed form: the straight path folded
into ``[0, span]``, which equals the step-by-step reflection because a digit moves less than the
span per frame).

* Training: :meth:`DeviceMovingMNIST.train_batch` draws fresh motions from a seeded
  ``torch.Generator`` on the device and renders them there: no host work, no copy, no sync.
* Validation / test: :meth:`DeviceMovingMNIST.eval_set` draws the motions of the whole set once,
  on the CPU from a fixed seed, so the sequences are the same on every run and on every device;
  batches are rendered on the device when asked for.

Layout: sequences are ``(N, T, H, W)`` float32; :func:`split_io` cuts them into the model's
``x (N, T_in, 1, H, W)`` and ``y (N, T_out, 1, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from convlstm_dist.data.moving_mnist import load_digits
from convlstm_dist.data.shipped import mnist_images_path
from convlstm_dist.errors import UserError

N_SHIPPED = 10_000
POOLS: dict[str, tuple[int, int]] = {"train": (0, 7_000), "val": (7_000, 8_000), "test": (8_000, 10_000)}
EVAL_SEEDS: dict[str, int] = {"val": 7_000_001, "test": 8_000_001}
IMAGES_NAME = "t10k-images-idx3-ubyte.gz"


def pool(split: str) -> range:
    """The digit indices (into the shipped 10,000) that sequences of ``split`` draw from."""
    try:
        lo, hi = POOLS[split]
    except KeyError:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(POOLS)}") from None
    return range(lo, hi)


def default_images_path() -> Path:
    """The MNIST test images shipped in the package (``sample_data/mnist``); another copy is read
    only when its path is passed in (``--images``)."""
    return mnist_images_path()


def load_digit_tensor(device: torch.device | str = "cpu", images_path: str | Path | None = None) -> torch.Tensor:
    """The shipped MNIST digits as a uint8 tensor (10000, 28, 28) on ``device``."""
    digits = load_digits(images_path or default_images_path())
    if len(digits) < N_SHIPPED:
        raise UserError(f"the digit pools need the {N_SHIPPED:,} MNIST test digits, got {len(digits):,}")
    return torch.from_numpy(digits[:N_SHIPPED].copy()).to(device)


@dataclass(frozen=True)
class Motion:
    """What makes a batch of sequences: per sequence and digit, the digit's index (into the
    shipped 10,000), its start position (row, column; top-left corner) and its velocity (pixels
    per frame). ``digit_ids`` (N, K) int64; ``pos0`` and ``vel`` (N, K, 2) float64."""

    digit_ids: torch.Tensor
    pos0: torch.Tensor
    vel: torch.Tensor

    def __len__(self) -> int:
        return self.digit_ids.shape[0]

    def __getitem__(self, idx) -> Motion:
        return Motion(self.digit_ids[idx], self.pos0[idx], self.vel[idx])

    def to(self, device) -> Motion:
        return Motion(self.digit_ids.to(device), self.pos0.to(device), self.vel.to(device))


def draw_motion(n: int, split: str, span: int, n_digits: int = 2, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Motion:
    """``n`` sequences of ``n_digits`` digits from ``split``'s pool, drawn on ``device`` (the
    generator's device) with the conventions of ``moving_mnist._trajectory``."""
    digits = pool(split)
    device = generator.device if generator is not None else torch.device(device or "cpu")
    ids = torch.randint(digits.start, digits.stop, (n, n_digits), generator=generator, device=device)
    u = torch.rand((n, n_digits, 4), generator=generator, device=device, dtype=torch.float64)
    pos0 = u[..., :2] * span
    theta = u[..., 2] * (2 * math.pi)
    speed = 2.0 + 3.0 * u[..., 3]
    vel = speed[..., None] * torch.stack([torch.sin(theta), torch.cos(theta)], dim=-1)
    return Motion(ids, pos0, vel)


def positions(motion: Motion, seq_len: int, span: int) -> torch.Tensor:
    """Top-left corners (N, K, T, 2) int64 of every digit in every frame, bouncing in ``[0, span]``."""
    t = torch.arange(seq_len, dtype=torch.float64, device=motion.pos0.device)
    p = motion.pos0[:, :, None, :] + t[None, None, :, None] * motion.vel[:, :, None, :]
    if span <= 0:
        return torch.zeros_like(p, dtype=torch.int64)
    folded = span - (torch.remainder(p, 2 * span) - span).abs()  # reflection at 0 and at span
    return torch.round(folded).to(torch.int64)  # half to even, like np.rint


def render(digits: torch.Tensor, motion: Motion, seq_len: int = 20, size: int = 64) -> torch.Tensor:
    """Frames float32 (N, T, size, size) in [0, 1] on the device of ``digits`` (uint8 (M, h, w))."""
    dh, dw = digits.shape[1:]
    if size < max(dh, dw):
        raise UserError(f"canvas size {size} is smaller than a digit ({dh}x{dw})")
    dev = digits.device
    motion = motion.to(dev)
    pos = positions(motion, seq_len, size - dh)                        # (N, K, T, 2)
    canvas = torch.arange(size, device=dev).view(size, 1)
    # one-hot placement: rows[..., y, i] = 1 where canvas row y shows digit row i (cols likewise);
    # frame = rows @ digit @ cols^T. Every sum has at most one non-zero term, an integer <= 255,
    # so the result is exact in float32 (and in TF32).
    rows = (canvas - pos[..., 0, None, None] == torch.arange(dh, device=dev)).to(torch.float32)  # (N, K, T, size, h)
    cols = (canvas - pos[..., 1, None, None] == torch.arange(dw, device=dev)).to(torch.float32)  # (N, K, T, size, w)
    imgs = digits[motion.digit_ids].to(torch.float32)                  # (N, K, h, w)
    frames = rows @ imgs[:, :, None] @ cols.transpose(-1, -2)          # (N, K, T, size, size)
    return frames.amax(dim=1) / 255.0


def split_io(seq: torch.Tensor, in_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, T, H, W)`` -> model input ``(N, in_len, 1, H, W)`` and target ``(N, T - in_len, 1, H, W)``."""
    return seq[:, :in_len, None], seq[:, in_len:, None]


class EvalSet:
    """A fixed set of sequences (validation or test): motions drawn once, frames rendered per batch."""

    def __init__(self, data: DeviceMovingMNIST, split: str, motion: Motion, seed: int):
        self.data, self.split, self.motion, self.seed = data, split, motion, seed

    def __len__(self) -> int:
        return len(self.motion)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for i in range(0, len(self), batch_size):
            yield self.data.render(self.motion[i:i + batch_size])

    def all(self) -> torch.Tensor:
        return self.data.render(self.motion)


class DeviceMovingMNIST:
    """Moving MNIST on ``device``: the 10,000 digits live there as uint8 (7.8 MB)."""

    def __init__(self, device: torch.device | str = "cpu", images_path: str | Path | None = None,
                 seq_len: int = 20, size: int = 64, n_digits: int = 2, digits: torch.Tensor | None = None):
        self.device = torch.device(device)
        self.digits = (digits if digits is not None else load_digit_tensor(self.device, images_path)).to(self.device)
        if len(self.digits) < N_SHIPPED:
            raise UserError(f"the digit pools need {N_SHIPPED:,} digits, got {len(self.digits):,}")
        self.seq_len, self.size, self.n_digits = seq_len, size, n_digits
        self.span = size - self.digits.shape[1]

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the device for :meth:`train_batch` (fresh sequences per batch, reproducible)."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def render(self, motion: Motion) -> torch.Tensor:
        return render(self.digits, motion, self.seq_len, self.size)

    def draw(self, n: int, split: str, generator: torch.Generator) -> Motion:
        return draw_motion(n, split, self.span, self.n_digits, generator)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Motion]:
        """``batch_size`` fresh training sequences (from the train pool) and their motion."""
        motion = self.draw(batch_size, "train", generator)
        return self.render(motion), motion

    def eval_set(self, split: str, n: int, seed: int | None = None) -> EvalSet:
        """``n`` fixed sequences of ``split`` (``val`` / ``test``; ``seed`` defaults to the split's),
        drawn on the CPU: the same ``(split, n, seed)`` gives the same sequences on every run and device."""
        seed = EVAL_SEEDS.get(split, 0) if seed is None else seed
        motion = draw_motion(n, split, self.span, self.n_digits, torch.Generator().manual_seed(seed))
        return EvalSet(self, split, motion.to(self.device), seed)
