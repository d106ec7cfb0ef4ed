"""The diffusers format, in and out: ``ddpm convert SRC DST``.

**Import.** A diffusers ``UNet2DModel`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, or a
``.bin`` read with ``torch.load(weights_only=True)``) with its ``DDPMScheduler`` (``scheduler_config.json``),
either at the root of a folder (as ``google/ddpm-cifar10-32`` has them) or as a pipeline folder with ``unet/``
and ``scheduler/``, becomes an ordinary ddpm checkpoint (step 0, EMA weights = raw weights) that ``ddpm sample``,
``ddpm edit``, ``ddpm eval`` and ``ddpm train --init-from`` use like any other.

**Export.** A ddpm checkpoint (its EMA weights unless told otherwise) becomes a pipeline folder: ``model_index.json``,
``unet/`` and ``scheduler/``, which ``diffusers.DDPMPipeline.from_pretrained(DST)`` and
``UNet2DModel.from_pretrained(DST, subfolder="unet")`` load. Nothing here imports diffusers.

The two networks are the same up to names, with three correspondences:

- time embedding: ours is ``[sin, cos]`` with frequencies exp(−ln(10⁴)·i/(h−1)), i.e. diffusers'
  ``flip_sin_to_cos=False, freq_shift=1``;
- attention: our 1×1 ``qkv`` conv is diffusers' ``to_q``/``to_k``/``to_v`` linears stacked (2022-era names
  ``query``/``key``/``value``/``proj_attn`` are read too);
- downsampling: diffusers' ``downsample_padding=0`` (TensorFlow's "SAME", the DDPM authors' choice) is
  ``UNetConfig.downsample_padding="same"``; ``downsample_padding=1`` is our ``"symmetric"``.

Whatever has no counterpart (other embeddings, activations, norm eps, block types, class embeddings, ...) is
refused with one line that names the field.

Scheduler ↔ checkpoint: ``linear`` ↔ ``Schedule.linear``, ``squaredcos_cap_v2`` ↔ ``Schedule.cosine`` (s = 0.008,
max β 0.999), other tables ↔ ``trained_betas``; ``epsilon``/``sample``/``v_prediction`` ↔ ``eps``/``x0``/``v``.
The sampling settings (``variance_type``, ``clip_sample``) are what ``ddpm sample`` flags choose:
``fixed_small`` is ``--option variance=posterior`` (the default), ``fixed_large`` (the DDPM paper's CIFAR-10
choice) is ``--option variance=beta``, ``clip_sample=false`` is ``--no-clip``; see :func:`pipeline_flags`.

Learned variances: diffusers' ``learned_range`` is ddpm's ``learned-range`` (improved DDPM eq. 15: the network's
second C output channels v give log σ² = frac·log β_t + (1 − frac)·log β̃_t, frac = (v + 1)/2), both ways: a
UNet2DModel with ``out_channels = 2 × in_channels`` and that scheduler imports as a checkpoint whose variance is
``learned-range`` (``UNetConfig.out_channels = 2C``), and such a checkpoint exports as one. diffusers' ``learned``
reads the second half as σ² itself, ddpm's ``learned`` as log σ²: neither is converted into the other.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .checkpoint import CHECKPOINT_DIR, checkpoint_meta, checkpoint_name, load_model, model_variance, save_checkpoint
from .diffusion import VARIANCES, output_channels
from .errors import ParameterError, UserError
from .schedule import Schedule
from .unet import AttentionBlock, Downsample, ResBlock, UNet, UNetConfig, Upsample

# The diffusers release whose UNet2DModel / DDPMScheduler / DDPMPipeline this module was checked against (tests).
DIFFUSERS_VERSION = "0.42.1"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS = {v: k for k, v in PREDICTION_TO_DIFFUSERS.items()}
# diffusers' variance_type -> the ddpm sampler's `variance` option (the *_log forms draw the same σ).
VARIANCE_FROM_DIFFUSERS = {"fixed_small": "posterior", "fixed_small_log": "posterior",
                           "fixed_large": "beta", "fixed_large_log": "beta"}
VARIANCE_TO_DIFFUSERS = {"posterior": "fixed_small", "beta": "fixed_large"}
# diffusers' variance_type of a network that predicts its variance -> the checkpoint's variance (ddpm.diffusion).
LEARNED_FROM_DIFFUSERS = {"learned_range": "learned-range"}
LEARNED_TO_DIFFUSERS = {v: k for k, v in LEARNED_FROM_DIFFUSERS.items()}

# The defaults of UNet2DModel's constructor (diffusers 0.42.1): a config.json that omits a key means this value.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}
# The defaults of DDPMScheduler's constructor (diffusers 0.42.1).
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "variance_type": "fixed_small", "clip_sample": True, "prediction_type": "epsilon",
    "thresholding": False, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
NORM_EPS = 1e-6  # our GroupNorm eps (ddpm.unet._norm)
_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


def _refuse(field: str, value: Any, why: str) -> UserError:
    return UserError(f"diffusers field {field}={value!r} cannot be represented: {why}")


# ---------------------------------------------------------------------------- configs


def unet_config_from_diffusers(d: dict[str, Any], variance_type: str = "fixed_small") -> Any:
    """A ``UNetConfig`` for a diffusers ``UNet2DModel`` config dict (missing keys take diffusers' defaults), read
    with a ``DDPMScheduler`` of ``variance_type``: ``learned_range`` needs ``out_channels = 2 × in_channels`` (the
    prediction, then the variance), which becomes ``UNetConfig.out_channels``; a fixed variance needs
    ``out_channels = in_channels``.

    Raises ``UserError`` naming the first field that our UNet cannot represent.
    """
    c = _unet_fields(d)
    _check_unet_scalars(c)
    out_channels = _unet_out_channels(c, variance_type)
    size, chans, downs = _unet_levels(c)
    groups = int(c["norm_num_groups"])
    _need(c, "attn_norm_num_groups", lambda v: v in (None, groups), "attention norms use norm_num_groups")
    scale_shift = c["resnet_time_scale_shift"] == "scale_shift"
    if scale_shift:
        _need(c, "attn_norm_num_groups", lambda v: v is not None, "with scale_shift UNet2DModel's middle attention "
              "has no GroupNorm unless attn_norm_num_groups is set, and ours has one")
    base = chans[0]
    ted = c["time_embedding_dim"]
    if ted is not None and ted != 4 * base:
        raise _refuse("time_embedding_dim", ted, f"the time embedding has 4 x block_out_channels[0] = {4 * base} units")
    attn_sizes = tuple(size // 2**i for i, b in enumerate(downs) if b.startswith("Attn"))
    head_dim = _unet_head_dim(c, chans, downs)
    cfg = UNetConfig(
        channels=int(c["in_channels"]), image_size=size, base_channels=base,
        channel_mult=tuple(ch // base for ch in chans), num_res_blocks=int(c["layers_per_block"]),
        attention_resolutions=attn_sizes, dropout=float(c["dropout"]), num_heads=1, head_channels=head_dim,
        num_classes=None, groups=groups, downsample_padding="same" if c["downsample_padding"] == 0 else "symmetric",
        scale_shift_norm=scale_shift, out_channels=out_channels,
    )
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"the diffusers config gives an invalid network: {e}") from None
    if any(ch % groups for ch in _norm_widths(cfg)):
        raise _refuse("norm_num_groups", groups, "it must divide every normalised width")
    return cfg


def _unet_fields(d: dict[str, Any]) -> dict[str, Any]:
    """Every UNet2DModel field of config dict ``d``, with diffusers' default where ``d`` has none.

    Refuses fields this ddpm does not know (a newer diffusers) and models other than UNet2DModel.
    """
    unknown = sorted(k for k in d if not k.startswith("_") and k not in UNET_DEFAULTS)
    if unknown:
        raise UserError(f"config.json has field(s) {unknown} that this ddpm does not know (diffusers newer than "
                        f"{DIFFUSERS_VERSION}?): they cannot be checked, so the model is not imported")
    if d.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse("_class_name", d["_class_name"], "only UNet2DModel is supported")
    return {**UNET_DEFAULTS, **{k: v for k, v in d.items() if not k.startswith("_")}}


def _need(c: dict[str, Any], field: str, ok: Callable[[Any], bool], why: str) -> None:
    """Refuse ``c[field]`` with ``why`` unless ``ok(c[field])``."""
    if not ok(c[field]):
        raise _refuse(field, c[field], why)


def _check_unet_scalars(c: dict[str, Any]) -> None:
    """Refuse the first single-valued field (embedding, activation, norms, block kinds, channels, dropout) whose
    value our UNet does not have."""
    _need(c, "time_embedding_type", lambda v: v == "positional", "only the sinusoidal ('positional') embedding exists")
    _need(c, "flip_sin_to_cos", lambda v: v is False, "the time embedding is [sin, cos] (flip_sin_to_cos=false)")
    _need(c, "freq_shift", lambda v: v == 1,
          "the time embedding's frequencies are exp(-ln(1e4)·i/(half-1)) (freq_shift=1)")
    _need(c, "center_input_sample", lambda v: v is False, "inputs are used as they are")
    _need(c, "act_fn", lambda v: v in ("silu", "swish"), "the activation is SiLU")
    _need(c, "norm_eps", lambda v: isinstance(v, int | float) and math.isclose(v, NORM_EPS, rel_tol=1e-9),
          f"GroupNorm eps is {NORM_EPS}")
    _need(c, "norm_num_groups", lambda v: isinstance(v, int) and v >= 1, "GroupNorm needs a group count")
    _need(c, "resnet_time_scale_shift", lambda v: v in ("default", "scale_shift"),
          "the time embedding is added ('default') or scales and shifts the second GroupNorm ('scale_shift')")
    _need(c, "class_embed_type", lambda v: v is None, "class embeddings are not imported")
    _need(c, "num_class_embeds", lambda v: v is None, "class embeddings are not imported")
    _need(c, "mid_block_type", lambda v: v == "UNetMidBlock2D", "the middle block is res-attention-res")
    _need(c, "add_attention", lambda v: v is True, "the middle block has attention")
    _need(c, "mid_block_scale_factor", lambda v: v == 1, "blocks are not rescaled")
    _need(c, "downsample_type", lambda v: v == "conv", "downsampling is a strided conv")
    _need(c, "upsample_type", lambda v: v == "conv", "upsampling is nearest + conv")
    _need(c, "downsample_padding", lambda v: v in (0, 1), "the downsampling conv pads 1 ('symmetric') or "
          "right/bottom by 1 (0, 'same')")
    _need(c, "layers_per_block", lambda v: isinstance(v, int) and v >= 1, "need at least one residual block per level")
    _need(c, "in_channels", lambda v: isinstance(v, int) and v >= 1, "need a positive channel count")
    _need(c, "dropout", lambda v: isinstance(v, int | float) and 0 <= v < 1, "dropout lies in [0, 1)")


def _unet_out_channels(c: dict[str, Any], variance_type: str) -> int | None:
    """``UNetConfig.out_channels`` of the UNet2DModel fields ``c`` read with a scheduler of ``variance_type``: None
    (the image's channels) for a fixed variance, 2 × in_channels for ``learned_range``; any other out_channels is
    refused, naming it."""
    cin, out = c["in_channels"], c["out_channels"]
    learned = variance_type in LEARNED_FROM_DIFFUSERS
    if out == (2 * cin if learned else cin):
        return out if learned else None
    if learned:
        why = (f"with the scheduler's variance_type {variance_type!r} the network outputs its prediction and its "
               f"variance, out_channels = 2 x in_channels = {2 * cin}")
    elif out == 2 * cin:
        why = ("2 x in_channels is a network that predicts its variance too, which needs the scheduler's "
               f"variance_type 'learned_range' (it is {variance_type!r})")
    else:
        why = "the output has the input's channels (in_channels), or twice as many with variance_type 'learned_range'"
    raise _refuse("out_channels", out, why)


def _unet_levels(c: dict[str, Any]) -> tuple[int, list[int], list[str]]:
    """(image size, width per level, down block type per level), refusing sizes and block layouts we cannot build."""
    size = c["sample_size"]
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise _refuse("sample_size", c["sample_size"], "a square image size (one int) is needed")
    chans = [int(x) for x in c["block_out_channels"]]
    downs, ups = list(c["down_block_types"]), list(c["up_block_types"])
    if not chans or any(ch % chans[0] for ch in chans):
        raise _refuse("block_out_channels", chans, "every level's width must be a multiple of the first")
    if len(downs) != len(chans) or any(b not in _DOWN_BLOCKS for b in downs):
        raise _refuse("down_block_types", downs, f"one of {'/'.join(_DOWN_BLOCKS)} per entry of block_out_channels")
    if len(ups) != len(chans) or any(b not in _UP_BLOCKS for b in ups):
        raise _refuse("up_block_types", ups, f"one of {'/'.join(_UP_BLOCKS)} per entry of block_out_channels")
    if [b.startswith("Attn") for b in ups] != [b.startswith("Attn") for b in reversed(downs)]:
        raise _refuse("up_block_types", ups, "attention must sit at the same resolutions going up as going down")
    if size % 2 ** (len(chans) - 1):
        raise _refuse("sample_size", size, f"it must be divisible by 2^{len(chans) - 1}")
    return size, chans, downs


def _unet_head_dim(c: dict[str, Any], chans: list[int], downs: list[str]) -> int | None:
    """The attention head width (None: one head per attention), refused unless it divides every attention width."""
    head_dim = c["attention_head_dim"]
    if head_dim is not None:
        widths = [chans[i] for i, b in enumerate(downs) if b.startswith("Attn")] + [chans[-1]]
        if not isinstance(head_dim, int) or head_dim < 1 or any(w % head_dim for w in widths):
            raise _refuse("attention_head_dim", head_dim, f"it must divide every attention width {sorted(set(widths))}")
    return head_dim


def unet_config_to_diffusers(cfg: Any) -> dict[str, Any]:
    """The ``UNet2DModel`` config.json dict of our ``UNetConfig`` (every key, so nothing falls to a default).

    Raises ``UserError`` naming the first of our fields that UNet2DModel cannot represent.
    """
    if getattr(cfg, "resblock_updown", False):
        raise UserError("a network with residual up/down blocks (resblock_updown: the adm-64 and adm-128 presets) "
                        "cannot be exported: diffusers' ResnetDownsampleBlock2D/ResnetUpsampleBlock2D are not mapped "
                        "yet")
    mult, size = list(cfg.channel_mult), cfg.image_size
    if mult[0] != 1:
        raise UserError(f"channel_mult={tuple(mult)} cannot be exported: UNet2DModel's first level has the width of "
                        "conv_in and the time embedding (channel_mult[0] must be 1)")
    bad = sorted({w for w in _norm_widths(cfg) if w % cfg.groups})
    if bad:
        raise UserError(f"groups={cfg.groups} cannot be exported: it does not divide the normalised width(s) {bad} "
                        "(ddpm used fewer groups there; UNet2DModel uses norm_num_groups everywhere)")
    attn = [size // 2**i in cfg.attention_resolutions for i in range(len(mult))]
    widths = [cfg.base_channels * m for m, a in zip(mult, attn, strict=True) if a] + [cfg.base_channels * mult[-1]]
    if cfg.head_channels is not None:
        head_dim = cfg.head_channels
    elif cfg.num_heads == 1:
        head_dim = None
    elif len(set(widths)) == 1:
        head_dim = widths[0] // cfg.num_heads
    else:
        raise UserError(f"num_heads={cfg.num_heads} cannot be exported: UNet2DModel sets heads = width / "
                        f"attention_head_dim, and the attention widths {sorted(set(widths))} differ")
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": size, "in_channels": cfg.channels, "out_channels": cfg.out_channels or cfg.channels,
        "center_input_sample": False, "time_embedding_type": "positional", "time_embedding_dim": None,
        "freq_shift": 1, "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.base_channels * m for m in mult], "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1, "downsample_padding": 0 if cfg.downsample_padding == "same" else 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": cfg.dropout, "act_fn": "silu",
        "attention_head_dim": head_dim, "norm_num_groups": cfg.groups,
        # UNet2DModel drops the middle attention's GroupNorm under scale_shift unless this is set.
        "attn_norm_num_groups": cfg.groups if cfg.scale_shift_norm else None,
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift_norm else "default",
        "add_attention": True, "class_embed_type": None,
        # Our label embedding has one extra row, index num_classes, for "no label" (label -1).
        "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1, "num_train_timesteps": None,
    }


def _norm_widths(cfg: Any) -> list[int]:
    """The channel count of every GroupNorm of the UNet built from ``cfg``."""
    with torch.device("meta"):
        net = UNet(cfg)
    return [m.num_channels for m in net.modules() if isinstance(m, nn.GroupNorm)]


def schedule_from_diffusers(d: dict[str, Any]) -> tuple[Any, str]:
    """(Schedule, prediction) of a ``DDPMScheduler`` config dict; refuses what ddpm cannot sample like diffusers."""
    if d.get("_class_name", "DDPMScheduler") != "DDPMScheduler":
        raise UserError(f"scheduler _class_name={d['_class_name']!r} cannot be imported: only DDPMScheduler is read")
    c = {**SCHEDULER_DEFAULTS, **{k: v for k, v in d.items() if not k.startswith("_")}}
    if c["rescale_betas_zero_snr"]:
        raise UserError("scheduler field rescale_betas_zero_snr=true cannot be represented: it makes the last ᾱ zero "
                        "(β_T = 1), which a ddpm Schedule does not allow")
    variance_from_diffusers(c)
    if c["prediction_type"] not in PREDICTION_FROM_DIFFUSERS:
        raise UserError(f"scheduler field prediction_type={c['prediction_type']!r} cannot be represented: choose one "
                        f"of {', '.join(PREDICTION_FROM_DIFFUSERS)}")
    if c["clip_sample"] and not c["thresholding"] and float(c["clip_sample_range"]) != 1.0:
        raise UserError(f"scheduler field clip_sample_range={c['clip_sample_range']!r} cannot be represented: ddpm "
                        "clips x̂_0 to [-1, 1] (or not at all, --no-clip)")
    T, kind = c["num_train_timesteps"], c["beta_schedule"]
    try:
        if c["trained_betas"] is not None:
            schedule = Schedule(torch.tensor([float(b) for b in c["trained_betas"]], dtype=torch.float64))
            if schedule.timesteps != T:
                raise ValueError(f"trained_betas has {schedule.timesteps} entries but num_train_timesteps is {T}")
        elif kind == "linear":
            schedule = Schedule.linear(int(T), float(c["beta_start"]), float(c["beta_end"]))
        elif kind == "squaredcos_cap_v2":
            schedule = Schedule.cosine(int(T))
        elif kind == "scaled_linear":  # β = linspace(√β_start, √β_end, T)², as a table
            b = torch.linspace(float(c["beta_start"]) ** 0.5, float(c["beta_end"]) ** 0.5, int(T), dtype=torch.float64)
            schedule = Schedule(b**2)
        elif kind == "sigmoid":  # β = β_start + (β_end − β_start) · sigmoid(linspace(−6, 6, T)), as a table
            s = torch.sigmoid(torch.linspace(-6, 6, int(T), dtype=torch.float64))
            schedule = Schedule(s * (float(c["beta_end"]) - float(c["beta_start"])) + float(c["beta_start"]))
        else:
            raise UserError(f"scheduler field beta_schedule={kind!r} cannot be represented: ddpm reads linear, "
                            "scaled_linear, squaredcos_cap_v2, sigmoid and trained_betas")
    except (ValueError, TypeError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"scheduler config gives an invalid schedule ({e})") from None
    return schedule, PREDICTION_FROM_DIFFUSERS[c["prediction_type"]]


def variance_from_diffusers(d: dict[str, Any]) -> str:
    """The reverse variance (:data:`ddpm.diffusion.VARIANCES`) that the network of a ``DDPMScheduler`` config dict
    was trained for: ``learned-range`` for variance_type ``learned_range``, ``fixed-small`` for the fixed ones (which
    are sampling choices, see :func:`pipeline_flags`). Refuses ``learned`` (σ² there, log σ² in ddpm) and unknowns."""
    vt = d.get("variance_type", SCHEDULER_DEFAULTS["variance_type"])
    if vt in LEARNED_FROM_DIFFUSERS:
        return LEARNED_FROM_DIFFUSERS[vt]
    if vt in VARIANCE_FROM_DIFFUSERS:
        return "fixed-small"
    if vt == "learned":
        raise UserError("scheduler field variance_type='learned' cannot be represented: diffusers takes the "
                        "network's second half as the variance σ² itself, ddpm's learned variance as log σ²; of the "
                        "learned variances only 'learned_range' (improved DDPM's interpolation) is imported")
    known = [*VARIANCE_FROM_DIFFUSERS, *LEARNED_FROM_DIFFUSERS]
    raise UserError(f"scheduler field variance_type={vt!r} cannot be represented: ddpm reads {', '.join(known)}")


def scheduler_config_to_diffusers(schedule: Any, prediction: str, variance: str = "posterior", clip: bool = True,
                                  sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``DDPMScheduler`` scheduler_config.json dict for a ddpm schedule and prediction type.

    ``variance`` is the sampler's choice for a fixed variance, ``posterior`` (fixed_small) or ``beta``
    (fixed_large), or ``learned-range`` for a network that predicts its variance (learned_range).
    ``sampling`` holds diffusers-only settings to keep (timestep_spacing, thresholding, ... of an imported model).
    """
    c = {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, **SCHEDULER_DEFAULTS,
         **(sampling or {})}
    p = schedule.params
    c.update(num_train_timesteps=schedule.timesteps, trained_betas=None, prediction_type=PREDICTION_TO_DIFFUSERS[
        prediction], variance_type={**VARIANCE_TO_DIFFUSERS, **LEARNED_TO_DIFFUSERS}[variance], clip_sample=bool(clip),
        rescale_betas_zero_snr=False, beta_start=SCHEDULER_DEFAULTS["beta_start"],
        beta_end=SCHEDULER_DEFAULTS["beta_end"], beta_schedule="linear")
    if schedule.kind == "linear":
        c.update(beta_start=p["beta_start"], beta_end=p["beta_end"])
    elif schedule.kind == "cosine" and p.get("s") == 0.008 and p.get("max_beta") == 0.999:
        c.update(beta_schedule="squaredcos_cap_v2")
    else:
        c.update(trained_betas=schedule.betas.tolist())
    return c


def pipeline_flags(meta: dict[str, Any]) -> str:
    """The ``ddpm sample`` flags that reproduce ``DDPMPipeline`` (all T steps) for a checkpoint's metadata, with the
    scheduler that :func:`export_diffusers` writes by default (or that the checkpoint was imported with). A network
    that predicts its variance needs no variance flag: the ddpm sampler draws with the learned one by default.
    Refuses what :func:`export_variance` refuses (a ``learned`` network has no DDPMPipeline)."""
    sched = (meta.get("diffusers") or {}).get("scheduler_config") or {}
    T = _timesteps(meta)
    flags = f"--sampler ddpm --steps {T}"
    if export_variance(meta) == "beta":
        flags += " --option variance=beta"
    if sched.get("clip_sample", True) is False:
        flags += " --no-clip"
    return flags


def export_variance(meta: dict[str, Any], variance: str | None = None) -> str:
    """The :func:`scheduler_config_to_diffusers` variance of a checkpoint's metadata: ``learned-range`` for a
    learned-range network; for a fixed variance ``variance`` ('posterior' or 'beta') or, when None, the imported
    scheduler's choice, else ``beta`` for a network trained for ``fixed-large`` and ``posterior`` otherwise.

    Refuses a ``learned`` network (its log σ² would be read as σ² by diffusers' ``learned``), a ``variance`` for a
    learned-range one (``ParameterError``), and a network whose output channels disagree with its variance.
    """
    trained = model_variance(meta)
    if trained == "learned":
        raise UserError("the checkpoint's variance 'learned' (the network outputs log σ²) cannot be exported: "
                        "diffusers' variance_type 'learned' reads that output as σ² itself, so DDPMPipeline would "
                        "draw with another variance; a network trained with variance learned-range can be exported")
    if trained not in VARIANCES:
        raise UserError(f"the checkpoint's variance {trained!r} is unknown to this ddpm (it knows "
                        f"{', '.join(VARIANCES)}): the checkpoint is from a newer ddpm")
    model = meta["model"]
    out, want = model.get("out_channels") or model["channels"], output_channels(model["channels"], trained)
    if out != want:
        raise UserError(f"the checkpoint's network has out_channels={out} but its variance {trained!r} needs {want}: "
                        "the checkpoint is inconsistent")
    if trained in LEARNED_TO_DIFFUSERS:
        if variance is not None:
            raise ParameterError(f"{{variance}} cannot be chosen for this checkpoint: its network predicts its "
                                 f"variance ({trained}), exported as variance_type {LEARNED_TO_DIFFUSERS[trained]!r}")
        return trained
    if variance is not None:
        return variance
    imported = ((meta.get("diffusers") or {}).get("scheduler_config") or {}).get("variance_type")
    if imported in VARIANCE_FROM_DIFFUSERS:
        return VARIANCE_FROM_DIFFUSERS[imported]
    return "beta" if trained == "fixed-large" else "posterior"


def _timesteps(meta: dict[str, Any]) -> int:
    """T of a checkpoint's schedule."""
    return Schedule.from_dict(meta["schedule"]).timesteps


# ---------------------------------------------------------------------------- weights


def _module_pairs(net: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(our prefix, diffusers prefix, our module) for every leaf-level block of ``net``, in a fixed order."""
    pairs: list[tuple[str, str, nn.Module]] = [
        ("time_mlp.0", "time_embedding.linear_1", net.time_mlp[0]),
        ("time_mlp.2", "time_embedding.linear_2", net.time_mlp[2]),
        ("conv_in", "conv_in", net.conv_in),
    ]
    if net.label_emb is not None:
        pairs.append(("label_emb", "class_embedding", net.label_emb))
    level, j = 0, 0
    for k, layers in enumerate(net.down):
        if isinstance(layers[0], Downsample):
            pairs.append((f"down.{k}.0", f"down_blocks.{level}.downsamplers.0", layers[0]))
            level, j = level + 1, 0
            continue
        for m, layer in enumerate(layers):
            kind = "resnets" if isinstance(layer, ResBlock) else "attentions"
            pairs.append((f"down.{k}.{m}", f"down_blocks.{level}.{kind}.{j}", layer))
        j += 1
    pairs += [("mid.0", "mid_block.resnets.0", net.mid[0]), ("mid.1", "mid_block.attentions.0", net.mid[1]),
              ("mid.2", "mid_block.resnets.1", net.mid[2])]
    per_level = net.config.num_res_blocks + 1
    for k, layers in enumerate(net.up):
        block, i = divmod(k, per_level)
        for m, layer in enumerate(layers):
            if isinstance(layer, ResBlock):
                name = f"resnets.{i}"
            elif isinstance(layer, AttentionBlock):
                name = f"attentions.{i}"
            else:
                assert isinstance(layer, Upsample)
                name = "upsamplers.0"
            pairs.append((f"up.{k}.{m}", f"up_blocks.{block}.{name}", layer))
    pairs += [("norm_out", "conv_norm_out", net.norm_out), ("conv_out", "conv_out", net.conv_out)]
    return pairs


# Our sub-module name -> diffusers', inside a residual block.
_RES_NAMES = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
              "skip": "conv_shortcut"}
# diffusers' attention names, today's first, then the 2022-era ones that older folders hold.
_ATTN_NAMES = {"q": ("to_q", "query"), "k": ("to_k", "key"), "v": ("to_v", "value"), "out": ("to_out.0", "proj_attn")}


def state_dict_from_diffusers(theirs: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """Our state dict (float32) for ``net``'s architecture from a diffusers UNet2DModel state dict.

    Every diffusers tensor must be used and every one of ours found, with the right shape.
    """
    ours_ref = net.state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(*names: str) -> Tensor:
        for name in names:
            if name in theirs:
                used.add(name)
                return theirs[name]
        raise UserError(f"the diffusers weights have no tensor {names[0]} (the config and the weights disagree)")

    def put(ours: str, value: Tensor) -> None:
        want = ours_ref[ours].shape
        if value.numel() != want.numel():
            raise UserError(f"diffusers tensor for {ours} has shape {tuple(value.shape)}, expected {tuple(want)} "
                            "(the config and the weights disagree)")
        out[ours] = value.detach().to(torch.float32).reshape(want).clone()

    for mine, prefix, module in _module_pairs(net):
        if isinstance(module, ResBlock):
            for sub, their_sub in _RES_NAMES.items():
                if f"{mine}.{sub}.weight" in ours_ref:
                    for p in ("weight", "bias"):
                        put(f"{mine}.{sub}.{p}", take(f"{prefix}.{their_sub}.{p}"))
        elif isinstance(module, AttentionBlock):
            for p in ("weight", "bias"):
                put(f"{mine}.norm.{p}", take(f"{prefix}.group_norm.{p}"))
                qkv = [take(*(f"{prefix}.{n}.{p}" for n in _ATTN_NAMES[x])) for x in "qkv"]
                c = qkv[0].shape[0]
                put(f"{mine}.qkv.{p}", torch.cat([t.reshape(c, -1) if p == "weight" else t for t in qkv]))
                put(f"{mine}.proj.{p}", take(*(f"{prefix}.{n}.{p}" for n in _ATTN_NAMES["out"])))
        elif isinstance(module, Downsample | Upsample):
            for p in ("weight", "bias"):
                put(f"{mine}.conv.{p}", take(f"{prefix}.conv.{p}", f"{prefix}.Conv2d_0.{p}"))
        else:
            for p in ("weight", "bias"):
                if f"{mine}.{p}" in ours_ref:
                    put(f"{mine}.{p}", take(f"{prefix}.{p}"))
    extra = sorted(set(theirs) - used)
    if extra:
        raise UserError(f"the diffusers weights hold {len(extra)} tensor(s) the config does not explain, e.g. "
                        f"{extra[0]}: the config and the weights disagree")
    missing = sorted(set(ours_ref) - set(out))
    if missing:  # cannot happen while _module_pairs covers the UNet; guard against silent changes
        raise AssertionError(f"no diffusers tensor mapped to {missing[:3]}")
    return out


def state_dict_to_diffusers(ours: dict[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """The diffusers UNet2DModel state dict (today's names) of our state dict ``ours`` for ``net``'s architecture."""
    out: dict[str, Tensor] = {}

    def put(name: str, value: Tensor) -> None:
        out[name] = value.detach().to(torch.float32).contiguous().clone()

    for mine, prefix, module in _module_pairs(net):
        if isinstance(module, ResBlock):
            for sub, their_sub in _RES_NAMES.items():
                if f"{mine}.{sub}.weight" in ours:
                    for p in ("weight", "bias"):
                        put(f"{prefix}.{their_sub}.{p}", ours[f"{mine}.{sub}.{p}"])
        elif isinstance(module, AttentionBlock):
            c = module.proj.out_channels
            for p in ("weight", "bias"):
                put(f"{prefix}.group_norm.{p}", ours[f"{mine}.norm.{p}"])
                q, k, v = ours[f"{mine}.qkv.{p}"].reshape(3, c, -1).squeeze(-1).unbind(0)
                for name, t in (("to_q", q), ("to_k", k), ("to_v", v)):
                    put(f"{prefix}.{name}.{p}", t)
                put(f"{prefix}.to_out.0.{p}", ours[f"{mine}.proj.{p}"].reshape(c, -1).squeeze(-1))
        elif isinstance(module, Downsample | Upsample):
            for p in ("weight", "bias"):
                put(f"{prefix}.conv.{p}", ours[f"{mine}.conv.{p}"])
        else:
            for p in ("weight", "bias"):
                if f"{mine}.{p}" in ours:
                    put(f"{prefix}.{p}", ours[f"{mine}.{p}"])
    return out


# ---------------------------------------------------------------------------- folders


def is_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder with a UNet config at its root or in ``unet/``."""
    p = Path(path)
    return p.is_dir() and ((p / "config.json").is_file() or (p / "unet" / "config.json").is_file())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a JSON object")
    return d


def _read_weights(folder: Path) -> tuple[dict[str, Tensor], Path]:
    """The UNet tensors of a diffusers model folder: safetensors if present, else the .bin (weights only)."""
    st, binf = folder / WEIGHTS_SAFETENSORS, folder / WEIGHTS_BIN
    if st.is_file():

        try:
            return load_file(str(st)), st
        except (SafetensorError, OSError) as e:
            raise UserError(f"{st} is not a readable safetensors file ({e})") from None
    if binf.is_file():
        try:
            sd = torch.load(binf, map_location="cpu", weights_only=True)  # never plain pickle
        except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or unsafe file
            raise UserError(f"{binf} cannot be read safely as weights only ({type(e).__name__}): it may hold "
                            "code, not just tensors; use the .safetensors file instead") from None
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise UserError(f"{binf} is not a state dict of tensors")
        return dict(sd), binf
    raise UserError(f"{folder} has no {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN} (sharded or variant weights are not "
                    "read): download the full-precision weights")


def read_diffusers(src: str | os.PathLike[str]) -> tuple[Any, Any, str, str, dict[str, Tensor], dict[str, Any]]:
    """Read a diffusers folder: (UNetConfig, Schedule, prediction, variance (``fixed-small`` or ``learned-range``),
    our EMA/raw state dict, record for the metadata).

    Layouts: files at the root (config.json, weights, scheduler_config.json) or a pipeline folder with
    ``unet/`` and ``scheduler/``.
    """
    root = Path(src)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    sched_path = next((p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json")
                       if p.is_file()), None)
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"{root} is not a diffusers model folder: no config.json at its root or in unet/")
    if sched_path is None:
        raise UserError(f"{root} has no scheduler_config.json (at its root or in scheduler/): the noise schedule "
                        "the model was trained with is needed")
    unet_cfg, sched_cfg = _read_json(unet_dir / "config.json"), _read_json(sched_path)
    try:
        variance = variance_from_diffusers(sched_cfg)  # first: a refused variance_type is named as such
        cfg = unet_config_from_diffusers(unet_cfg, sched_cfg.get("variance_type", SCHEDULER_DEFAULTS["variance_type"]))
        schedule, prediction = schedule_from_diffusers(sched_cfg)
    except UserError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # a value of the wrong kind, e.g. a string for a number
        raise UserError(f"{root} has a malformed config ({type(e).__name__}: {e})") from None
    theirs, weights_path = _read_weights(unet_dir)
    with torch.device("meta"):
        skeleton = UNet(cfg)
    state = state_dict_from_diffusers(theirs, skeleton)
    record = {"source": str(root), "weights": weights_path.name,
              "unet_config": unet_cfg,
              "scheduler_config": {**SCHEDULER_DEFAULTS, **{k: v for k, v in sched_cfg.items()
                                                            if not k.startswith("_")}}}
    return cfg, schedule, prediction, variance, state, record


def _check_dst(dst: Path) -> None:
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise UserError(f"{dst} already exists: ddpm convert never overwrites; choose another DST")


def _write_dir_atomically(dst: Path, write: Callable[[Path], None]) -> None:
    """Write a folder under a temporary name beside ``dst``, then rename it onto ``dst`` (empty or absent)."""
    _check_dst(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by a killed convert of this same process id: ours to remove
        shutil.rmtree(tmp)
    tmp.mkdir()  # (mkdir honours the umask, unlike tempfile.mkdtemp's 0700)
    try:
        write(tmp)
        if dst.exists():
            dst.rmdir()  # empty: checked above
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def import_diffusers(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Convert a diffusers folder into a ddpm checkpoint.

    ``dst`` ending in ``.safetensors`` is written as that one file; anything else becomes a run directory
    holding ``checkpoints/step-000000000.safetensors``. Returns the checkpoint file. Never overwrites.
    """
    dst = Path(dst)
    _check_dst(dst)
    cfg, schedule, prediction, variance, state, record = read_diffusers(src)
    meta = checkpoint_meta(0, cfg, schedule, prediction, variance=variance, diffusers=record)
    ema = {k: v.clone() for k, v in state.items()}  # the same values; safetensors refuses shared memory
    if dst.suffix == ".safetensors":
        return save_checkpoint(dst, state, ema, meta)
    name = Path(CHECKPOINT_DIR) / checkpoint_name(0)
    _write_dir_atomically(dst, lambda tmp: save_checkpoint(tmp / name, state, ema, meta))
    return dst / name


def export_diffusers(src: str | os.PathLike[str], dst: str | os.PathLike[str], use_ema: bool = True,
                     variance: str | None = None) -> tuple[Path, str | None]:
    """Write a ddpm checkpoint (file or run directory) as a diffusers pipeline folder ``dst``.

    ``variance`` ('posterior' or 'beta') sets the scheduler's variance_type; by default the imported model's own,
    else 'beta' (fixed_large) for a network trained for ``fixed-large`` and 'posterior' (fixed_small) otherwise. A
    ``learned-range`` network exports as variance_type learned_range (out_channels 2C) and refuses ``variance``; a
    ``learned`` one is refused (see :func:`export_variance`). Returns (dst, a note or None): a
    class-conditional model is written without model_index.json, since DDPMPipeline cannot pass labels.
    """
    dst = Path(dst)
    _check_dst(dst)
    if variance is not None and variance not in VARIANCE_TO_DIFFUSERS:
        raise ParameterError(f"{{variance}} must be one of {', '.join(VARIANCE_TO_DIFFUSERS)}; got {variance!r}")
    net, ckpt, schedule = load_model(src, use_ema=use_ema)
    assert isinstance(net, UNet)
    cfg = net.config
    variance = export_variance(ckpt.meta, variance)
    unet_json = unet_config_to_diffusers(cfg)
    weights = state_dict_to_diffusers(net.state_dict(), net)
    imported = (ckpt.meta.get("diffusers") or {}).get("scheduler_config") or {}
    keep = {k: v for k, v in imported.items() if k in ("timestep_spacing", "steps_offset", "thresholding",
                                                       "dynamic_thresholding_ratio", "sample_max_value",
                                                       "clip_sample_range")}
    sched_json = scheduler_config_to_diffusers(schedule, ckpt.meta.get("prediction", "eps"), variance,
                                               bool(imported.get("clip_sample", True)), keep)
    note = None
    if cfg.num_classes is not None:
        note = (f"class-conditional model: wrote unet/ and scheduler/ but no model_index.json, because DDPMPipeline "
                f"cannot pass labels; load it with UNet2DModel.from_pretrained(DST, subfolder='unet') and call it "
                f"with class_labels (0..{cfg.num_classes - 1}, or {cfg.num_classes} for 'no label')")

    def write(tmp: Path) -> None:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        (tmp / "unet" / "config.json").write_text(json.dumps(unet_json, indent=2) + "\n")
        save_file(weights, str(tmp / "unet" / WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_json, indent=2) + "\n")
        if note is None:
            index = {"_class_name": "DDPMPipeline", "_diffusers_version": DIFFUSERS_VERSION,
                     "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    _write_dir_atomically(dst, write)
    return dst, note


def checkpoint_summary(meta: dict[str, Any]) -> str:
    """"<n> parameters, <prediction> prediction, T=<T>" for a checkpoint's metadata."""
    n = sum(math.prod(shape) for shape in _shapes(meta))
    return f"{n:,} parameters, {meta['prediction']} prediction, T={_timesteps(meta)}"


def _shapes(meta: dict[str, Any]) -> list[tuple[int, ...]]:
    with torch.device("meta"):
        net = UNet(UNetConfig.from_dict(meta["model"]))
    return [tuple(p.shape) for p in net.parameters()]
