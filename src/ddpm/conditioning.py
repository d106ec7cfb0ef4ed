"""Image conditions: the low-resolution view of a batch, its way back up, and conditioning augmentation.

A super-resolution model learns p(x | low(x)), where low(x) is x brought down by ``scale`` with the Lanczos resize
the data path uses (Pillow's, reproduced here to the 8-bit level: the same filter, the same fixed-point arithmetic
and rounding, horizontal pass then vertical), so a low-resolution picture a user resizes with Pillow is what the
model trained on. The network sees the low image brought back up to the model's size (the same filter, in floating
point) concatenated to x_t (SR3; improved-diffusion's SuperResModel). Conditioning augmentation (Ho et al. 2021)
corrupts the low image before it goes up, √(1−a)·low + √a·ε with a level a the network is told, so a cascade's
stage learns to repair the artefacts of the stage before it. Everything runs on the batch's device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .images import pixels_to_unit

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
LANCZOS_SUPPORT = 3.0


def _lanczos(x: float) -> float:
    """Pillow's Lanczos-3 kernel: sinc(x)·sinc(x/3) on [-3, 3)."""
    if not -LANCZOS_SUPPORT <= x < LANCZOS_SUPPORT:
        return 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    return sinc(x) * sinc(x / LANCZOS_SUPPORT)


@functools.lru_cache(maxsize=32)
def lanczos_weights(in_size: int, out_size: int, fixed_point: bool) -> Tensor:
    """The (out_size, in_size) float64 matrix of one axis of Pillow's Lanczos resize of the whole image: each row the
    normalised kernel around the output pixel's centre (Pillow's ``precompute_coeffs``), and with ``fixed_point``
    those weights as the integers × 2^22 that Pillow's 8-bit path multiplies with."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    w = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        row = [_lanczos((x - center + 0.5) / filterscale) for x in range(lo, hi)]
        total = sum(row)
        row = [v / total if total != 0.0 else v for v in row]
        if fixed_point:
            row = [float(int(v * (1 << PRECISION_BITS) + (0.5 if v >= 0 else -0.5))) for v in row]
        w[i, lo:hi] = torch.tensor(row, dtype=torch.float64)
    return w


def resize_pixels(pixels: Tensor, size: int) -> Tensor:
    """uint8 images (B, C, H, W), square, to (B, C, size, size) exactly as Pillow's Lanczos resize does them:
    the horizontal pass, rounded and clipped to 8 bits, then the vertical one (computed in float64, where Pillow's
    fixed-point sums are exact; on the CPU for a device without float64)."""
    if pixels.dtype != torch.uint8:
        raise ValueError(f"resize_pixels takes uint8 pixels; got {pixels.dtype}")
    if pixels.device.type == "mps":
        return resize_pixels(pixels.cpu(), size).to(pixels.device)
    h, w = pixels.shape[-2:]
    x = pixels.to(torch.float64)
    if w != size:
        x = _fixed_point_pass(x, lanczos_weights(w, size, True).to(x.device), axis=-1)
    if h != size:
        x = _fixed_point_pass(x, lanczos_weights(h, size, True).to(x.device), axis=-2)
    return x.to(torch.uint8)


def _fixed_point_pass(x: Tensor, k: Tensor, axis: int) -> Tensor:
    """One axis of Pillow's 8-bit resample: Σ k·x + 2^21, shifted down by 22 bits and clipped to 0..255."""
    acc = torch.matmul(x, k.T) if axis == -1 else torch.matmul(k, x)
    return torch.floor((acc + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def as_unit(images: Tensor) -> Tensor:
    """Images (B, C, H, W) as uint8 pixels or floats in [-1, 1], as float32 in [-1, 1]."""
    return pixels_to_unit(images) if images.dtype == torch.uint8 else images.float()


def upsample(x: Tensor, size: int) -> Tensor:
    """Images (B, C, h, w) in any range, brought up (or down) to (B, C, size, size) by the Lanczos filter in floating
    point, without rounding: how a low image enters the network."""
    h, w = x.shape[-2:]
    kh = lanczos_weights(h, size, False).to(x.device, x.dtype)
    kw = lanczos_weights(w, size, False).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(kh, x), kw.T)


def low_of(pixels: Tensor, scale: int) -> Tensor:
    """The low-resolution view of uint8 images (B, C, S, S): (B, C, S/scale, S/scale) uint8, Pillow's Lanczos."""
    size = pixels.shape[-1]
    if scale < 1 or size % scale:
        raise ValueError(f"the image size {size} is not a multiple of the scale {scale}")
    return resize_pixels(pixels, size // scale)


def condition_of(low: Tensor, size: int, level: Tensor | None = None, noise: Tensor | None = None) -> Tensor:
    """The network's condition from low images (B, C, h, w) (uint8 pixels, or floats in [-1, 1]): in [-1, 1], with
    conditioning augmentation √(1−a)·low + √a·ε where ``level`` a (B,) and ``noise`` ε (B, C, h, w) are given, then
    brought up to (B, C, size, size)."""
    x = as_unit(low)
    if level is not None:
        if noise is None:
            raise ValueError("conditioning augmentation needs its noise")
        a = level.to(x.dtype).view(-1, 1, 1, 1)
        x = torch.sqrt(1.0 - a) * x + torch.sqrt(a) * noise.to(x)
    return upsample(x, size)


# ---------------------------------------------------------------------------- consistency with the low image

# Rounds of back-projection per denoiser call (project_low). Each round roughly halves the residual where the clip
# acts, and the state carries from one sampling step to the next; with 32, 500 x2 outputs of a 28 px model took
# 1.07x as long as without the projection (docs/experiments/cascade.md).
PROJECT_ROUNDS = 32


@functools.lru_cache(maxsize=32)
def _down_pinv(size: int, low: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The Lanczos down matrix A (low, size) of one axis and its pseudo-inverse A⁺ (size, low), computed in float64
    and held in ``dtype`` on ``device`` (made once, not at every sampling step)."""
    a = lanczos_weights(size, low, False)
    return a.to(device, dtype), torch.linalg.pinv(a).to(device, dtype)


def project_low(x: Tensor, low: Tensor, rounds: int = PROJECT_ROUNDS) -> Tensor:
    """Images x (B, C, S, S) in [-1, 1] moved towards the images whose low view is ``low`` (B, C, s, s) in [-1, 1]:
    ``rounds`` rounds of x ← clamp(x + A⁺ (low − D(x)) A⁺ᵀ, −1, 1).

    D is the low view in floating point as Pillow makes it: the Lanczos filter A of :func:`low_of` along the width,
    clipped to [−1, 1], then along the height, clipped (the clips are what the 8-bit path does; without them the
    ringing at a black background puts the true image's own view 3–4 levels off its low image). Where no clip acts,
    D(x) = A x Aᵀ and one round is the orthogonal projection onto {x : A x Aᵀ = low}, the nearest such image (A has
    full row rank; DDNM, Wang et al. 2023: the condition sets the range of A⁺, the model its null space). Where the
    low image is clipped, a residual appears only while x's own view is not (D(x) above black where low is black),
    so the constraint there is the inequality the clip implies, and the true image is a fixed point."""
    size, s = x.shape[-1], low.shape[-1]
    a, p = _down_pinv(size, s, x.dtype, x.device)
    y = low.to(x.device, x.dtype)
    for _ in range(rounds):
        down = torch.matmul(a, torch.matmul(x, a.T).clamp(-1.0, 1.0)).clamp(-1.0, 1.0)
        x = (x + torch.matmul(torch.matmul(p, y - down), p.T)).clamp(-1.0, 1.0)
    return x


# ---------------------------------------------------------------------------- what a conditioned network takes

TASKS = ("generate", "super-resolution", "paired")


@dataclass(frozen=True)
class ConditionSpec:
    """What an image-conditioned network takes, as its checkpoint records it (``meta["condition"]``).

    ``task`` is super-resolution (the condition is the target's low view, ``scale`` times smaller) or paired (an
    input image of the model's size: restoration, colourisation); ``channels`` and ``size`` are the condition's as
    given (the low size for super-resolution); ``noise_max`` is the range of training's conditioning augmentation
    (the network is told a level where it is > 0)."""

    task: str
    channels: int
    size: int
    scale: int | None = None
    noise_max: float = 0.0

    @property
    def told_level(self) -> bool:
        """Whether the network takes a conditioning-augmentation level."""
        return self.noise_max > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for a checkpoint's metadata."""
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ConditionSpec | None:
        """The condition a checkpoint's network takes, or None for an unconditioned one."""
        given = meta.get("condition")
        return None if not given else cls(**given)

    def network_input(self, images: Tensor, image_size: int, level: Tensor | None = None,
                      noise: Tensor | None = None) -> Tensor:  # fmt: skip
        """Conditions as given, (B, channels, size, size) uint8 pixels or floats in [-1, 1], as the network takes
        them: (B, channels, image_size, image_size) in [-1, 1], augmented where ``level`` (B,) and ``noise`` are
        given (see :func:`condition_of`)."""
        if tuple(images.shape[1:]) != (self.channels, self.size, self.size):
            raise ValueError(f"expected conditions of shape (B, {self.channels}, {self.size}, {self.size}), got "
                             f"{tuple(images.shape)}")  # fmt: skip
        if level is None and self.size == image_size:
            return as_unit(images)
        return condition_of(images, image_size, level, noise)


def low_projector(spec: ConditionSpec, given: Tensor) -> Callable[[Tensor], Tensor] | None:
    """For a super-resolution network of ``spec``, x̂_0 (B, C, S, S) -> :func:`project_low` onto its low images
    ``given`` (B, C, s, s) (uint8 pixels or floats in [-1, 1]); None for other tasks (their degradation is unknown)."""
    if spec.task != "super-resolution":
        return None
    return functools.partial(project_low, low=as_unit(given))
