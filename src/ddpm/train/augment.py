"""Non-leaking augmentation (Karras et al. 2022, "Elucidating the Design Space", Appendix F; after Karras et al.
2020, StyleGAN2-ADA): each training image is transformed with probability ``p`` per operation, and the network is told
how, through a vector of augmentation parameters that is zero for an untouched image. Sampling passes zero, so the
samples come out un-augmented while the network has seen many more distinct images.

The operations (``--augment-ops``), in the order they are applied:

- xflip, yflip: mirror left-right, top-bottom;
- rot90: a quarter, half or three-quarter turn;
- shift: an integer translation of up to 1/8 of the size;
- scale, rotate, aniso, translate: one affine resampling (bicubic, reflection padding) for an isotropic scale
  2^N(0, 0.2²), a rotation uniform in (-π, π), an anisotropic scale 2^N(0, 0.2²) along x (its inverse along y) and a
  fractional translation N(0, 0.125²) of the size;
- colour: brightness + N(0, 0.2²), contrast × 2^N(0, 0.5²) around the image's mean, saturation × 2^N(0, 1) (colour
  images).

Every parameter comes from the step's draws (:func:`draw_augment`, from the (seed, step) stream), so exact resume and
the torchrun guarantee hold. The parameter vector has :data:`AUGMENT_DIM` entries whichever operations are on, each
zero where its operation was not applied (:data:`LABELS` names them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("xflip", "yflip", "rot90", "shift", "scale", "rotate", "aniso", "translate", "colour")
DEFAULT_OPS = "xflip,yflip,scale,aniso,translate"  # EDM's CIFAR-10 set
# Where each operation's parameters sit in the vector the network is told (zero: not applied).
LABELS: dict[str, slice] = {
    "xflip": slice(0, 1),
    "yflip": slice(1, 2),
    "rot90": slice(2, 4),  # sin(k π/2), 1 - cos(k π/2)
    "shift": slice(4, 6),  # (x, y) in fractions of the size
    "scale": slice(6, 7),  # log2 of the scale
    "rotate": slice(7, 9),  # sin θ, 1 - cos θ
    "aniso": slice(9, 10),  # log2 of the x scale (the y scale is its inverse)
    "translate": slice(10, 12),  # (x, y) in fractions of the size
    "colour": slice(12, 15),  # brightness, log2 contrast, log2 saturation
}
AUGMENT_DIM = 15
SHIFT_MAX, SCALE_STD, ANISO_STD, TRANSLATE_STD = 0.125, 0.2, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, SATURATION_STD = 0.2, 0.5, 1.0
GEOMETRIC = ("scale", "rotate", "aniso", "translate")


@dataclass(frozen=True)
class AugmentDraws:
    """The random numbers of one step's augmentation for G images: ``gate`` (G, 9) uniform (operation i is applied
    where gate[:, i] < p), ``uniform`` (G, 4) and ``normal`` (G, 7) for the parameters."""

    gate: Tensor
    uniform: Tensor
    normal: Tensor

    def __getitem__(self, rows: slice) -> AugmentDraws:
        return AugmentDraws(self.gate[rows], self.uniform[rows], self.normal[rows])


def draw_augment(g: torch.Generator, n: int, device: torch.device | str) -> AugmentDraws:
    """The augmentation draws of ``n`` images from generator ``g``, always the same amount (whichever operations are
    on, so a run's other draws never depend on them)."""
    gate = torch.rand(n, len(OPS), generator=g, device=device)
    uniform = torch.rand(n, 4, generator=g, device=device)
    normal = torch.randn(n, 7, generator=g, device=device)
    return AugmentDraws(gate, uniform, normal)


def parse_ops(text: str) -> tuple[str, ...]:
    """``"xflip,rot90"`` -> the operations' names (ValueError naming an unknown one)."""
    names = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    bad = [n for n in names if n not in OPS]
    if bad or not names:
        raise ValueError(f"unknown augmentation {bad[0] if bad else repr(text)}: choose from {', '.join(OPS)}")
    return names


def augment(x: Tensor, draws: AugmentDraws, p: float, ops: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """Images (B, C, H, W) in [-1, 1], square, each operation of ``ops`` applied with probability ``p`` by ``draws``:
    (the images, (B, AUGMENT_DIM) parameter vectors, zero where nothing was applied)."""
    b, _, h, w = x.shape
    on = {op: (draws.gate[:, i] < p) & (op in ops) for i, op in enumerate(OPS)}
    labels = torch.zeros(b, AUGMENT_DIM, device=x.device)
    u, n = draws.uniform, draws.normal
    x = torch.where(on["xflip"].view(-1, 1, 1, 1), x.flip(-1), x)
    x = torch.where(on["yflip"].view(-1, 1, 1, 1), x.flip(-2), x)
    labels[:, LABELS["xflip"]], labels[:, LABELS["yflip"]] = on["xflip"][:, None], on["yflip"][:, None]
    k = torch.where(on["rot90"], 1 + (u[:, 0] * 3).long().clamp(max=2), 0)
    x = _rot90(x, k)
    labels[:, LABELS["rot90"]] = torch.stack([_quarter_sin(k), 1 - _quarter_cos(k)], 1)
    shift = torch.where(on["shift"][:, None], ((u[:, 1:3] * 2 - 1) * SHIFT_MAX * w).round(), 0)
    x = _shift(x, shift.long())
    labels[:, LABELS["shift"]] = shift / w
    x, geometric = _affine(x, on, u, n)
    labels[:, 6:12] = geometric
    x, colour = _colour(x, on["colour"], n[:, 4:7])
    labels[:, LABELS["colour"]] = colour
    return x, labels


def _quarter_sin(k: Tensor) -> Tensor:
    """sin(k π/2) for integer k (B,), exactly."""
    return torch.tensor([0.0, 1.0, 0.0, -1.0], device=k.device)[k % 4]


def _quarter_cos(k: Tensor) -> Tensor:
    """cos(k π/2) for integer k (B,), exactly."""
    return torch.tensor([1.0, 0.0, -1.0, 0.0], device=k.device)[k % 4]


def _rot90(x: Tensor, k: Tensor) -> Tensor:
    """Image i of (B, C, H, W) turned k[i] quarter turns counter-clockwise."""
    out = x.clone()
    for turns in (1, 2, 3):
        rows = k == turns
        if bool(rows.any()):
            out[rows] = torch.rot90(x[rows], turns, dims=(-2, -1))
    return out


def reflect(index: Tensor, size: int) -> Tensor:
    """Indices outside 0..size-1 reflected back in (…, 2, 1, 0, 1, 2, …: reflection without repeating the edge)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    m = index % period
    return torch.where(m < size, m, period - m)


def _shift(x: Tensor, shift: Tensor) -> Tensor:
    """Image i of (B, C, H, W) moved by shift[i] = (dx, dy) whole pixels, the border filled by reflection."""
    b, _, h, w = x.shape
    if not bool(shift.any()):
        return x
    cols = reflect(torch.arange(w, device=x.device)[None] - shift[:, :1], w)  # (B, W)
    rows = reflect(torch.arange(h, device=x.device)[None] - shift[:, 1:], h)  # (B, H)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _affine(x: Tensor, on: dict[str, Tensor], u: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """The scale, rotation, anisotropic scale and fractional translation of each image as one bicubic resampling with
    reflection padding (only the images that have any): (the images, their parameters (B, 6))."""
    b = x.shape[0]
    log_s = torch.where(on["scale"], n[:, 0] * SCALE_STD, 0)
    theta = torch.where(on["rotate"], (u[:, 3] * 2 - 1) * math.pi, 0)
    log_a = torch.where(on["aniso"], n[:, 1] * ANISO_STD, 0)
    t = torch.where(on["translate"][:, None], n[:, 2:4] * TRANSLATE_STD, 0)
    params = torch.stack([log_s, torch.sin(theta), 1 - torch.cos(theta), log_a, t[:, 0], t[:, 1]], 1)
    rows = on["scale"] | on["rotate"] | on["aniso"] | on["translate"]
    if not bool(rows.any()):
        return x, params
    # The forward map p -> R S p + 2t in [-1, 1] coordinates; grid_sample needs its inverse at each output pixel.
    sx, sy = torch.exp2(log_s + log_a), torch.exp2(log_s - log_a)
    cos, sin = torch.cos(theta), torch.sin(theta)
    inv = torch.zeros(b, 2, 3, device=x.device)
    inv[:, 0, 0], inv[:, 0, 1] = cos / sx, sin / sx
    inv[:, 1, 0], inv[:, 1, 1] = -sin / sy, cos / sy
    inv[:, :, 2] = -(inv[:, :, :2] @ (2 * t)[:, :, None])[:, :, 0]
    sub = x[rows]
    grid = F.affine_grid(inv[rows], list(sub.shape), align_corners=False)
    out = x.clone()
    out[rows] = F.grid_sample(sub, grid, mode="bicubic", padding_mode="reflection", align_corners=False).clamp(-1, 1)
    return out, params


def _colour(x: Tensor, on: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    """Brightness, contrast (around each image's mean) and, for colour images, saturation (around each pixel's
    channel mean): (the images clipped to [-1, 1], their parameters (B, 3))."""
    brightness = torch.where(on, n[:, 0] * BRIGHTNESS_STD, 0)
    log_c = torch.where(on, n[:, 1] * CONTRAST_STD, 0)
    log_sat = torch.where(on, n[:, 2] * SATURATION_STD, 0) if x.shape[1] == 3 else torch.zeros_like(brightness)
    params = torch.stack([brightness, log_c, log_sat], 1)
    if not bool(on.any()):
        return x, params
    view = (-1, 1, 1, 1)
    y = x + brightness.view(view)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * torch.exp2(log_c).view(view) + mean
    if x.shape[1] == 3:
        gray = y.mean(dim=1, keepdim=True)
        y = (y - gray) * torch.exp2(log_sat).view(view) + gray
    return torch.where(on.view(view), y.clamp(-1, 1), x), params
