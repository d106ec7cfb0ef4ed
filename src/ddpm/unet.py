"""The denoising network: a DDPM / improved-diffusion style UNet, its config dataclass and presets.

The network knows nothing of diffusion (EDM style): it maps ``(x, t[, labels])`` to a tensor of
``x``'s shape, and ``t`` is only a number that goes through a sinusoidal embedding (float, so
fractional t works). What the output means (eps, x0, v) is the caller's business.

Layout, for ``channel_mult=(1, 2, 2)`` and 32×32 input::

    conv_in 3×3 ─► [res×N (+attn)] 32² ─► down ─► [res×N] 16² ─► down ─► [res×N] 8²
                                                                            │
    conv_out ◄─ [res×(N+1)] 32² ◄─ up ◄─ [res×(N+1)] 16² ◄─ up ◄─ [res×(N+1)] 8² ◄─ mid: res–attn–res

Every down-path output is saved and concatenated onto the input of one up-path block, as in the
reference implementation of Ho et al. (2020), whose CIFAR-10 net (35.7M parameters) is the
``ddpm-cifar10`` preset here. :data:`PRESETS` holds the published networks for 32 to 256 px and small CPU-budget
ones; :func:`auto_preset` picks one from the image size and the device (``ddpm train`` without ``--preset``).

With ``grad_checkpoint`` set on a network, training keeps only the inputs of its residual and attention blocks and
recomputes the rest during the backward pass (``torch.utils.checkpoint``, the same dropout masks): the same loss and
gradients in a fraction of the activation memory (BENCHMARKS.md, "memory.py"), for a second forward pass of those
blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .errors import UserError

__all__ = ["AUTO_PRESET", "PRESETS", "UNet", "UNetConfig", "auto_preset", "timestep_embedding"]

DOWNSAMPLE_PADDINGS = ("symmetric", "same")


@dataclass
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet`; saved as JSON inside checkpoints."""

    channels: int = 1  # image channels in and out
    image_size: int = 8
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()  # feature-map sizes (e.g. 16) that get self-attention
    dropout: float = 0.0
    num_heads: int = 1
    head_channels: int | None = None  # when set, overrides num_heads: heads = channels // head_channels
    num_classes: int | None = None
    groups: int = 32  # GroupNorm groups; reduced to a divisor of the channel count for narrow layers
    # How each stride-2 downsampling conv pads: "symmetric" (1 pixel on every side; the default, so also what a
    # checkpoint that does not record this field was made with) or "same" (1 pixel on the right and bottom only:
    # TensorFlow's "SAME", as in the DDPM authors' model and diffusers' downsample_padding=0). Same weights,
    # different outputs.
    downsample_padding: str = "symmetric"
    # How each residual block takes the time (and label) embedding: added per channel after the first conv
    # (False: the DDPM authors' choice, and what a checkpoint that does not record this field means), or as a
    # scale and shift of the second GroupNorm, h = GN(h)·(1 + s) + b ("adaptive GroupNorm", Dhariwal & Nichol
    # 2021; diffusers' "scale_shift").
    scale_shift_norm: bool = False
    # How the resolution changes between levels: a strided conv down and nearest-×2-then-conv up (False: DDPM's, and
    # what a checkpoint that does not record this field means), or a residual block that average-pools (down) or
    # nearest-upsamples (up) both its branches between its first activation and first conv ("BigGAN" up/down,
    # Dhariwal & Nichol 2021's resblock_updown; diffusers' downsample_type / upsample_type "resnet").
    resblock_updown: bool = False
    # Output channels: None means `channels` (the prediction alone); 2 × channels for a network that also predicts
    # its reverse variance (ddpm.diffusion.LEARNED_VARIANCES; improved-diffusion's learn_sigma).
    out_channels: int | None = None
    # An image condition's channels, concatenated to x_t at the input (SR3, improved-diffusion's SuperResModel: a
    # super-resolution stage's low image brought up to the model's size, a restoration task's input); 0: none.
    cond_channels: int = 0
    # An embedding of the conditioning-augmentation level a in [0, 1] (Ho et al. 2021), added to the time
    # embedding: the network is told how much noise its condition carries.
    cond_level: bool = False
    # The length of a vector of augmentation parameters (EDM's non-leaking augmentation, Karras et al. 2022), whose
    # linear embedding is added to the time embedding; zero means "not augmented". 0: none.
    augment_dim: int = 0

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; accept both so from_dict(to_dict()) round-trips.
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists; ``out_channels``, ``cond_channels``, ``cond_level`` and
        ``augment_dim`` only when set, so a network without them is described as one made without the fields)."""
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        if d["out_channels"] is None:
            del d["out_channels"]
        for name, unset in (("cond_channels", 0), ("cond_level", False), ("augment_dim", 0)):  # recorded where set
            if d[name] == unset:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise so a typo is not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown UNetConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def validate(self) -> None:
        """Raise a ``UserError`` (a ``ValueError``) naming the bad value."""
        if self.channels < 1:
            raise UserError(f"channels must be >= 1, got {self.channels}")
        if self.out_channels is not None and self.out_channels < 1:
            raise UserError(f"out_channels must be None or >= 1, got {self.out_channels}")
        if self.base_channels < 1:
            raise UserError(f"base_channels must be >= 1, got {self.base_channels}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise UserError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if self.num_res_blocks < 1:
            raise UserError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 1:
            raise UserError(f"num_classes must be None or >= 1, got {self.num_classes}")
        if self.groups < 1:
            raise UserError(f"groups must be >= 1, got {self.groups}")
        if self.cond_channels < 0 or self.augment_dim < 0:
            raise UserError(f"cond_channels and augment_dim must be >= 0, got {self.cond_channels}, {self.augment_dim}")
        if self.downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise UserError(
                f"downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, got {self.downsample_padding!r}"
            )
        if self.head_channels is None and self.num_heads < 1:
            raise UserError(f"num_heads must be >= 1, got {self.num_heads}")
        if self.head_channels is not None and self.head_channels < 1:
            raise UserError(f"head_channels must be None or >= 1, got {self.head_channels}")
        divisor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size < 1 or self.image_size % divisor:
            raise UserError(
                f"image_size {self.image_size} is not divisible by {divisor} (= 2^(len(channel_mult)-1) for "
                f"channel_mult={self.channel_mult}); pick a size that is a multiple of {divisor} or a shorter "
                f"channel_mult"
            )


# name -> UNetConfig keyword arguments. `channels`, `image_size` and `num_classes` are the data's business, set by
# UNet.from_preset. Each published network's parameter count, as its paper gives it, is checked in tests/test_unet.py
# (with the paper's class count and output channels, against diffusers' UNet2DModel built to the same configuration).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # CPU budgets (8×8 digits, 28×28 Fashion-MNIST): three levels (28/14/7), the only attention the middle block's;
    # three levels and adaptive GroupNorm (scale_shift_norm) won the screens at equal wall-clock
    # (benchmarks/quality_per_minute.py; BENCHMARKS.md, "Decisions and the measurements behind them").
    "tiny": dict(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(), dropout=0.0,
                 image_size=8, scale_shift_norm=True),
    # CPU budgets for colour images, in tiny's spirit (width 32, one residual block per level, adaptive GroupNorm, no
    # dropout), with the published networks' attention at 16 px: 32/16/8 (tiny-32) and 64/32/16/8 (tiny-64).
    "tiny-32": dict(channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                    attention_resolutions=(16,), dropout=0.0, scale_shift_norm=True),
    "tiny-64": dict(channels=3, image_size=64, base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                    attention_resolutions=(16,), dropout=0.0, scale_shift_norm=True),
    # The same down to 8 px for 128 and 256 px, narrower at the large levels, where a CPU's time goes.
    "tiny-128": dict(channels=3, image_size=128, base_channels=16, channel_mult=(1, 2, 4, 4, 4), num_res_blocks=1,
                     attention_resolutions=(16,), dropout=0.0, scale_shift_norm=True),
    "tiny-256": dict(channels=3, image_size=256, base_channels=16, channel_mult=(1, 1, 2, 4, 4, 4), num_res_blocks=1,
                     attention_resolutions=(16,), dropout=0.0, scale_shift_norm=True),
    # 28×28 / 32×32: attention at the 7×7 / 8×8 level.
    "small": dict(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7, 8),
                  dropout=0.1, image_size=28),
    # Ho et al. (2020), CIFAR-10 32×32: 35.7M params.
    "ddpm-cifar10": dict(channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), dropout=0.1, num_heads=1, groups=32),
    # Dhariwal & Nichol (2021, "Diffusion Models Beat GANs", the ImageNet 64×64 model of guided-diffusion): width 192,
    # 3 blocks, (1,2,3,4), attention at 32/16/8 px with 64-channel heads, adaptive GroupNorm, residual up/down,
    # dropout 0.1; 296M params as published (with 1000 classes and a learned variance's 6 output channels).
    "adm-64": dict(channels=3, image_size=64, base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                   attention_resolutions=(32, 16, 8), dropout=0.1, head_channels=64, scale_shift_norm=True,
                   resblock_updown=True),
    # Dhariwal & Nichol (2021), the ImageNet 128×128 model: width 256, 2 blocks, (1,1,2,3,4), attention at 32/16/8 px
    # with 4 heads, adaptive GroupNorm, residual up/down, no dropout; 422M params as published (likewise).
    "adm-128": dict(channels=3, image_size=128, base_channels=256, channel_mult=(1, 1, 2, 3, 4), num_res_blocks=2,
                    attention_resolutions=(32, 16, 8), dropout=0.0, num_heads=4, scale_shift_norm=True,
                    resblock_updown=True),
    # Ho et al. (2020), the LSUN / CelebA-HQ 256×256 model: width 128, 2 blocks, (1,1,2,2,4,4), attention at 16 px
    # with one head, no dropout: 114M params.
    "ddpm-256": dict(channels=3, image_size=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                     attention_resolutions=(16,), dropout=0.0, num_heads=1),
}
# fmt: on

# `ddpm train` without --preset: the network for the image size and the device, from the first row whose size is at
# least the data's (larger images get the last). On a GPU the published networks; on a CPU the CPU-budget ones, whose
# widths were chosen by images/s and a short FID screen (benchmarks/cpu_presets.py; BENCHMARKS.md, "cpu_presets.py").
# Up to 32 px both are `tiny` (the digits demo and the 25-minute Fashion-MNIST figures).
AUTO_PRESET = "auto"
AUTO_PRESETS: tuple[tuple[int, str, str], ...] = (
    (32, "tiny", "tiny"), (64, "tiny-64", "adm-64"), (128, "tiny-128", "adm-128"), (256, "tiny-256", "ddpm-256"),
)  # fmt: skip


def auto_preset(image_size: int, device_type: str) -> tuple[str, str]:
    """(the preset ``ddpm train`` uses without --preset for square images of ``image_size`` px on a device of type
    ``device_type``, the one the other kind of device would get): a CPU gets the CPU-budget network, anything else
    the published one (see :data:`AUTO_PRESETS`)."""
    row = next((r for r in AUTO_PRESETS if image_size <= r[0]), AUTO_PRESETS[-1])
    cpu, published = row[1], row[2]
    return (cpu, published) if device_type == "cpu" else (published, cpu)


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: (B,) timesteps, any numeric dtype; used as float.
        dim: embedding size.
    Returns:
        (B, dim) float32 tensor ``[sin(t·f_0..f_{h-1}), cos(t·f_0..f_{h-1})]`` with f_i geometric from 1 to
        1/max_period (the transformer / DDPM embedding); zero-padded when ``dim`` is odd.
    """
    half = dim // 2
    # Geometric frequencies from 1 down to 1/max_period, as in the DDPM reference (half - 1 in the exponent).
    exponent = torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=1e-6)


M = TypeVar("M", bound=nn.Module)


def _zero(module: M) -> M:
    """Zero a module's parameters (used for the last layer of each residual branch and the output)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _resample(x: Tensor, how: str | None) -> Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2) for "down" (2×2 average), (B, C, 2H, 2W) for "up" (nearest), else x."""
    if how == "down":
        return F.avg_pool2d(x, 2)
    if how == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class ResBlock(nn.Module):
    """GroupNorm–SiLU–conv, + time embedding per channel, GroupNorm–SiLU–dropout–conv, + skip.

    With ``scale_shift`` the embedding gives a scale s and a shift b per channel instead of an addend, applied
    after the second GroupNorm: GN(h)·(1 + s) + b. With ``resample`` "down" or "up" the block also halves or doubles
    the resolution: both the branch (after its first activation) and the skip are average-pooled or
    nearest-upsampled (the residual up/down of Dhariwal & Nichol 2021).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float,
        groups: int,
        scale_shift: bool = False,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.resample = resample
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        # Zero-init: each block starts as the identity, so a deep net trains from step one.
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x (B, in_ch, H, W), emb (B, emb_dim) -> (B, out_ch, H', W'): H' = H, H/2 ("down") or 2H ("up")."""
        h = F.silu(self.norm1(x))
        if self.resample is not None:
            h, x = _resample(h, self.resample), _resample(x, self.resample)
        h = self.conv1(h)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, out_ch or 2·out_ch, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise UserError(
                f"attention over {channels} channels cannot be split into {num_heads} heads; "
                f"choose num_heads / head_channels that divide it"
            )
        self.num_heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3×3 conv: (B, C, H, W) -> (B, C, H/2, W/2).

    ``padding="symmetric"`` pads one pixel on every side; ``"same"`` pads one on the right and bottom only
    (TensorFlow's "SAME" for even sizes), which shifts the sampling grid by one pixel.
    """

    def __init__(self, channels: int, padding: str = "symmetric") -> None:
        super().__init__()
        self.same = padding == "same"
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.same else 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2)."""
        if self.same:
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_label_dtype(labels: Tensor) -> None:
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def check_labels(labels: Tensor, num_classes: int | None) -> None:
    """Raise ``ValueError`` naming the bad values unless ``labels`` (B,) are integers in [-1, num_classes-1].

    -1 means "no label". ``num_classes`` None checks only the lower end (a model whose classes are not
    known). This reads the values back from the device, one synchronisation: call it once where labels
    enter (sampling, training data), not inside the network.
    """
    _check_label_dtype(labels)
    bad = labels < -1
    if num_classes is not None:
        bad = bad | (labels >= num_classes)
    if bool(bad.any()):
        values = sorted({int(v) for v in labels[bad].tolist()})
        shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
        bounds = "[-1, ...)" if num_classes is None else f"[-1, {num_classes - 1}]"
        raise ValueError(f"labels must lie in {bounds} (-1 = no label); got {shown}")


def model_num_classes(model: object) -> int | None:
    """The number of classes of a :class:`UNet` (or one wrapped with ``.module`` or ``._orig_mod``), else None."""
    for inner in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        config = getattr(inner, "config", None)
        if isinstance(config, UNetConfig):
            return config.num_classes
    return None


class UNet(nn.Module):
    """DDPM-style UNet: ``forward(x (B, C, H, W), t (B,), labels (B,) | None) -> (B, C, H, W)``.

    ``grad_checkpoint`` (an attribute, False by default, not part of the config: it changes memory and time, not
    the numbers): while gradients are recorded, each residual and attention block keeps only its inputs and is
    recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant, restoring the RNG state so that
    dropout draws the same masks).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.grad_checkpoint = False
        cfg = config
        ch, groups = cfg.base_channels, cfg.groups
        emb_dim = 4 * ch

        def heads(c: int) -> int:
            return c // cfg.head_channels if cfg.head_channels is not None else cfg.num_heads

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, groups, cfg.scale_shift_norm, resample)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, heads(c), groups)

        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row num_classes is the learned "no label" embedding that label -1 maps to.
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        # The conditioning-augmentation level and the augmentation parameters enter like the time (made only where
        # the config asks, so every other network is built, and seeded, as before).
        self.level_mlp = (nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
                          if cfg.cond_level else None)  # fmt: skip
        self.augment_emb = nn.Linear(cfg.augment_dim, emb_dim, bias=False) if cfg.augment_dim else None

        self.conv_in = nn.Conv2d(cfg.channels + cfg.cond_channels, ch, 3, padding=1)

        self.down, skip_chs, cur, size = _down_path(cfg, res, attn)
        self.mid = nn.ModuleList([res(cur, cur), attn(cur), res(cur, cur)])
        self.up, cur = _up_path(cfg, res, attn, skip_chs, cur, size)

        self.norm_out = _norm(cur, groups)
        # Zero-init output: a fresh network predicts exactly 0 (the mean of eps), a calm starting point.
        self.conv_out = _zero(nn.Conv2d(cur, cfg.out_channels or cfg.channels, 3, padding=1))

    @classmethod
    def from_preset(
        cls,
        name: str,
        channels: int | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        **overrides: Any,
    ) -> UNet:
        """Build a preset network. ``channels``/``image_size`` default to the preset's own (1×8 for tiny,
        1×28 for small, 3×32 for ddpm-cifar10); any other UNetConfig field can be overridden by keyword."""
        if name not in PRESETS:
            raise UserError(f"unknown UNet preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = dict(PRESETS[name])
        if channels is not None:
            kwargs["channels"] = channels
        if image_size is not None:
            kwargs["image_size"] = image_size
        kwargs["num_classes"] = num_classes
        known = {f.name for f in fields(UNetConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"unknown UNetConfig field(s) {unknown}; known fields are {sorted(known)}")
        kwargs.update(overrides)
        return cls(UNetConfig(**kwargs))

    def _check_inputs(self, x: Tensor, t: Tensor, labels: Tensor | None, cond: Tensor | None = None) -> None:
        """Shapes and dtypes only, no read-back from the device: label values are checked once where labels
        enter (:func:`check_labels`, called by :func:`ddpm.sample` and the training loop)."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.channels:
            raise ValueError(f"expected x of shape (B, {cfg.channels}, H, W), got {tuple(x.shape)}")
        divisor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % divisor or x.shape[3] % divisor:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} is not divisible by {divisor} "
                f"(= 2^(len(channel_mult)-1) for channel_mult={cfg.channel_mult})"
            )
        if t.shape != (x.shape[0],):
            raise ValueError(f"expected t of shape ({x.shape[0]},) (one timestep per image), got {tuple(t.shape)}")
        if labels is not None:
            if cfg.num_classes is None:
                raise ValueError("labels were given but this network was built with num_classes=None")
            if labels.shape != (x.shape[0],):
                raise ValueError(f"expected labels of shape ({x.shape[0]},), got {tuple(labels.shape)}")
            _check_label_dtype(labels)
        want = (x.shape[0], cfg.cond_channels, *x.shape[2:])
        if cfg.cond_channels and (cond is None or tuple(cond.shape) != want):
            got = "none" if cond is None else tuple(cond.shape)
            raise ValueError(f"this network is conditioned on an image: expected cond of shape {want}, got {got}")
        if cond is not None and not cfg.cond_channels:
            raise ValueError("a condition was given but this network was built with cond_channels=0")

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None, cond: Tensor | None = None,
                cond_level: Tensor | None = None, augment: Tensor | None = None) -> Tensor:  # fmt: skip
        """Predict a tensor of ``x``'s shape.

        Args:
            x: (B, C, H, W) input, H and W divisible by 2^(len(channel_mult)-1).
            t: (B,) timesteps, integer or float (fractional values are fine).
            labels: (B,) integer class labels in [-1, num_classes-1], -1 meaning "no label". When the
                network is class-conditional and ``labels`` is None, every image gets -1.
            cond: (B, cond_channels, H, W) the image condition of a conditioned network (required there).
            cond_level: (B,) its conditioning-augmentation level in [0, 1] (None: 0, a clean condition).
            augment: (B, augment_dim) augmentation parameters (None: zeros, "not augmented").
        Returns:
            (B, C, H, W) tensor (2C channels for a network that predicts its variance).
        """
        self._check_inputs(x, t, labels, cond)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels).to(x.dtype))  # (B, 4·base)
        for extra in self._extra_embeddings(x, labels, cond_level, augment):
            emb = emb + extra
        h = self.conv_in(x if cond is None else torch.cat([x, cond.to(x.dtype)], dim=1))
        skips = [h]
        for layers in self.down:
            for layer in cast(nn.ModuleList, layers):
                h = self._block(layer, h, emb)
            skips.append(h)

        for layer in self.mid:
            h = self._block(layer, h, emb)

        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in cast(nn.ModuleList, layers):
                h = self._block(layer, h, emb)

        return self.conv_out(F.silu(self.norm_out(h)))

    def extra_inputs(self, batch: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
        """Neutral values of the inputs this network takes besides (x, t, labels), as keywords of :meth:`forward`
        for ``batch`` images: a zero condition (B, cond_channels, H, W), level 0 (B,), no augmentation (B, D). Empty
        for a network without them; what memory counting and timing call the network with."""
        cfg, size = self.config, self.config.image_size
        extras = {}
        if cfg.cond_channels:
            extras["cond"] = torch.zeros(batch, cfg.cond_channels, size, size, device=device)
        if cfg.cond_level:
            extras["cond_level"] = torch.zeros(batch, device=device)
        if cfg.augment_dim:
            extras["augment"] = torch.zeros(batch, cfg.augment_dim, device=device)
        return extras

    def _extra_embeddings(self, x: Tensor, labels: Tensor | None, cond_level: Tensor | None,
                          augment: Tensor | None) -> list[Tensor]:  # fmt: skip
        """The label, conditioning-level and augmentation embeddings (B, 4·base) to add to the time's."""
        out = []
        b = x.shape[0]
        if self.label_emb is not None:
            n = int(self.config.num_classes or 0)  # set whenever label_emb is
            idx = torch.full((b,), n, dtype=torch.long, device=x.device) if labels is None else \
                torch.where(labels < 0, n, labels).long()  # fmt: skip
            out.append(self.label_emb(idx))
        if (cond_level is not None and self.level_mlp is None) or (augment is not None and self.augment_emb is None):
            raise ValueError("a conditioning level or augmentation vector was given to a network built without it")
        if self.level_mlp is not None:
            level = torch.zeros(b, device=x.device) if cond_level is None else cond_level.float()
            out.append(self.level_mlp(timestep_embedding(level * 1000, self.config.base_channels).to(x.dtype)))
        if self.augment_emb is not None:
            aug = torch.zeros(b, self.config.augment_dim, device=x.device) if augment is None else augment
            out.append(self.augment_emb(aug.to(x.dtype)))
        return out

    def _block(self, layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        """One layer of the path on h (B, C, H, W); residual and attention blocks are checkpointed with
        ``grad_checkpoint`` while gradients are recorded."""
        args = (h, emb) if isinstance(layer, ResBlock) else (h,)
        if self.grad_checkpoint and torch.is_grad_enabled() and isinstance(layer, (ResBlock, AttentionBlock)):
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)


def _down_path(
    cfg: UNetConfig,
    res: Callable[..., nn.Module],
    attn: Callable[[int], nn.Module],
) -> tuple[nn.ModuleList, list[int], int, int]:
    """The down path's blocks, the channels of every tensor it saves for the up path, and the channels and size
    it ends at."""
    ch = cfg.base_channels
    down = nn.ModuleList()
    skip_chs = [ch]
    cur, size = ch, cfg.image_size
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            layers = nn.ModuleList([res(cur, ch * mult)])
            cur = ch * mult
            if size in cfg.attention_resolutions:
                layers.append(attn(cur))
            down.append(layers)
            skip_chs.append(cur)
        if level != len(cfg.channel_mult) - 1:
            resample = res(cur, cur, "down") if cfg.resblock_updown else Downsample(cur, cfg.downsample_padding)
            down.append(nn.ModuleList([resample]))
            skip_chs.append(cur)
            size //= 2
    return down, skip_chs, cur, size


def _up_path(
    cfg: UNetConfig,
    res: Callable[..., nn.Module],
    attn: Callable[[int], nn.Module],
    skip_chs: list[int],
    cur: int,
    size: int,
) -> tuple[nn.ModuleList, int]:
    """The up path: num_res_blocks + 1 blocks per level, each eating one saved skip; and its last channels."""
    ch = cfg.base_channels
    up = nn.ModuleList()
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            layers = nn.ModuleList([res(cur + skip_chs.pop(), ch * mult)])
            cur = ch * mult
            if size in cfg.attention_resolutions:
                layers.append(attn(cur))
            if level != 0 and i == cfg.num_res_blocks:
                layers.append(res(cur, cur, "up") if cfg.resblock_updown else Upsample(cur))
                size *= 2
            up.append(layers)
    assert not skip_chs
    return up, cur
