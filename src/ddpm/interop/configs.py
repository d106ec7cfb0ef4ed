"""Configurations between ddpm and diffusers: ``UNetConfig`` <-> ``UNet2DModel``'s config.json, ``Schedule`` and
the sampling settings <-> ``DDPMScheduler``'s scheduler_config.json (see :mod:`ddpm.interop`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..checkpoint import model_variance
from ..diffusion import VARIANCES, output_channels
from ..errors import ParameterError, UserError
from ..schedule import Schedule
from ..unet import UNet, UNetConfig

DIFFUSERS_VERSION = "0.42.1"
WEIGHTS_SAFETENSORS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"

PREDICTION_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
PREDICTION_FROM_DIFFUSERS = {v: k for k, v in PREDICTION_TO_DIFFUSERS.items()}
# diffusers' variance_type -> the ddpm sampler's `variance` option (the *_log forms draw the same σ).
VARIANCE_FROM_DIFFUSERS = {
    "fixed_small": "posterior",
    "fixed_small_log": "posterior",
    "fixed_large": "beta",
    "fixed_large_log": "beta",
}
VARIANCE_TO_DIFFUSERS = {"posterior": "fixed_small", "beta": "fixed_large"}
# diffusers' variance_type of a network that predicts its variance -> the checkpoint's variance (ddpm.diffusion).
LEARNED_FROM_DIFFUSERS = {"learned_range": "learned-range"}
LEARNED_TO_DIFFUSERS = {v: k for k, v in LEARNED_FROM_DIFFUSERS.items()}

# The defaults of UNet2DModel's constructor (diffusers 0.42.1): a config.json that omits a key means this value.
UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
# The defaults of DDPMScheduler's constructor (diffusers 0.42.1).
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
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
        _need(
            c,
            "attn_norm_num_groups",
            lambda v: v is not None,
            "with scale_shift UNet2DModel's middle attention "
            "has no GroupNorm unless attn_norm_num_groups is set, and ours has one",
        )
    base = chans[0]
    ted = c["time_embedding_dim"]
    if ted is not None and ted != 4 * base:
        raise _refuse("time_embedding_dim", ted, f"the time embedding has 4 x block_out_channels[0] = {4 * base} units")
    attn_sizes = tuple(size // 2**i for i, b in enumerate(downs) if b.startswith("Attn"))
    head_dim = _unet_head_dim(c, chans, downs)
    cfg = UNetConfig(
        channels=int(c["in_channels"]),
        image_size=size,
        base_channels=base,
        channel_mult=tuple(ch // base for ch in chans),
        num_res_blocks=int(c["layers_per_block"]),
        attention_resolutions=attn_sizes,
        dropout=float(c["dropout"]),
        num_heads=1,
        head_channels=head_dim,
        num_classes=None,
        groups=groups,
        downsample_padding="same" if c["downsample_padding"] == 0 else "symmetric",
        scale_shift_norm=scale_shift,
        out_channels=out_channels,
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
        raise UserError(
            f"config.json has field(s) {unknown} that this ddpm does not know (diffusers newer than "
            f"{DIFFUSERS_VERSION}?): they cannot be checked, so the model is not imported"
        )
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
    _need(
        c,
        "freq_shift",
        lambda v: v == 1,
        "the time embedding's frequencies are exp(-ln(1e4)·i/(half-1)) (freq_shift=1)",
    )
    _need(c, "center_input_sample", lambda v: v is False, "inputs are used as they are")
    _need(c, "act_fn", lambda v: v in ("silu", "swish"), "the activation is SiLU")
    _need(
        c,
        "norm_eps",
        lambda v: isinstance(v, int | float) and math.isclose(v, NORM_EPS, rel_tol=1e-9),
        f"GroupNorm eps is {NORM_EPS}",
    )
    _need(c, "norm_num_groups", lambda v: isinstance(v, int) and v >= 1, "GroupNorm needs a group count")
    _need(
        c,
        "resnet_time_scale_shift",
        lambda v: v in ("default", "scale_shift"),
        "the time embedding is added ('default') or scales and shifts the second GroupNorm ('scale_shift')",
    )
    _need(c, "class_embed_type", lambda v: v is None, "class embeddings are not imported")
    _need(c, "num_class_embeds", lambda v: v is None, "class embeddings are not imported")
    _need(c, "mid_block_type", lambda v: v == "UNetMidBlock2D", "the middle block is res-attention-res")
    _need(c, "add_attention", lambda v: v is True, "the middle block has attention")
    _need(c, "mid_block_scale_factor", lambda v: v == 1, "blocks are not rescaled")
    _need(c, "downsample_type", lambda v: v == "conv", "downsampling is a strided conv")
    _need(c, "upsample_type", lambda v: v == "conv", "upsampling is nearest + conv")
    _need(
        c,
        "downsample_padding",
        lambda v: v in (0, 1),
        "the downsampling conv pads 1 ('symmetric') or right/bottom by 1 (0, 'same')",
    )
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
        why = (
            f"with the scheduler's variance_type {variance_type!r} the network outputs its prediction and its "
            f"variance, out_channels = 2 x in_channels = {2 * cin}"
        )
    elif out == 2 * cin:
        why = (
            "2 x in_channels is a network that predicts its variance too, which needs the scheduler's "
            f"variance_type 'learned_range' (it is {variance_type!r})"
        )
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
    mult, size = list(cfg.channel_mult), cfg.image_size
    attn = [size // 2**i in cfg.attention_resolutions for i in range(len(mult))]
    head_dim = _exportable_head_dim(cfg, attn)
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": size,
        "in_channels": cfg.channels,
        "out_channels": cfg.out_channels or cfg.channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None,
        "freq_shift": 1,
        "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.base_channels * m for m in mult],
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if cfg.downsample_padding == "same" else 1,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": cfg.groups,
        # UNet2DModel drops the middle attention's GroupNorm under scale_shift unless this is set.
        "attn_norm_num_groups": cfg.groups if cfg.scale_shift_norm else None,
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if cfg.scale_shift_norm else "default",
        "add_attention": True,
        "class_embed_type": None,
        # Our label embedding has one extra row, index num_classes, for "no label" (label -1).
        "num_class_embeds": None if cfg.num_classes is None else cfg.num_classes + 1,
        "num_train_timesteps": None,
    }


def _exportable_head_dim(cfg: Any, attn: list[bool]) -> int | None:
    """UNet2DModel's ``attention_head_dim`` for our ``UNetConfig`` (``attn``: which levels attend); raises
    ``UserError`` naming the first of our fields that UNet2DModel cannot represent."""
    if getattr(cfg, "resblock_updown", False):
        raise UserError(
            "a network with residual up/down blocks (resblock_updown: the adm-64 and adm-128 presets) "
            "cannot be exported: diffusers' ResnetDownsampleBlock2D/ResnetUpsampleBlock2D are not mapped "
            "yet"
        )
    mult = list(cfg.channel_mult)
    if mult[0] != 1:
        raise UserError(
            f"channel_mult={tuple(mult)} cannot be exported: UNet2DModel's first level has the width of "
            "conv_in and the time embedding (channel_mult[0] must be 1)"
        )
    bad = sorted({w for w in _norm_widths(cfg) if w % cfg.groups})
    if bad:
        raise UserError(
            f"groups={cfg.groups} cannot be exported: it does not divide the normalised width(s) {bad} "
            "(ddpm used fewer groups there; UNet2DModel uses norm_num_groups everywhere)"
        )
    widths = [cfg.base_channels * m for m, a in zip(mult, attn, strict=True) if a] + [cfg.base_channels * mult[-1]]
    if cfg.head_channels is not None:
        return int(cfg.head_channels)
    if cfg.num_heads == 1:
        return None
    if len(set(widths)) == 1:
        return int(widths[0] // cfg.num_heads)
    raise UserError(
        f"num_heads={cfg.num_heads} cannot be exported: UNet2DModel sets heads = width / "
        f"attention_head_dim, and the attention widths {sorted(set(widths))} differ"
    )


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
        raise UserError(
            "scheduler field rescale_betas_zero_snr=true cannot be represented: it makes the last ᾱ zero "
            "(β_T = 1), which a ddpm Schedule does not allow"
        )
    variance_from_diffusers(c)
    if c["prediction_type"] not in PREDICTION_FROM_DIFFUSERS:
        raise UserError(
            f"scheduler field prediction_type={c['prediction_type']!r} cannot be represented: choose one "
            f"of {', '.join(PREDICTION_FROM_DIFFUSERS)}"
        )
    if c["clip_sample"] and not c["thresholding"] and float(c["clip_sample_range"]) != 1.0:
        raise UserError(
            f"scheduler field clip_sample_range={c['clip_sample_range']!r} cannot be represented: ddpm "
            "clips x̂_0 to [-1, 1] (or not at all, --no-clip)"
        )
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
            raise UserError(
                f"scheduler field beta_schedule={kind!r} cannot be represented: ddpm reads linear, "
                "scaled_linear, squaredcos_cap_v2, sigmoid and trained_betas"
            )
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
        raise UserError(
            "scheduler field variance_type='learned' cannot be represented: diffusers takes the "
            "network's second half as the variance σ² itself, ddpm's learned variance as log σ²; of the "
            "learned variances only 'learned_range' (improved DDPM's interpolation) is imported"
        )
    known = [*VARIANCE_FROM_DIFFUSERS, *LEARNED_FROM_DIFFUSERS]
    raise UserError(f"scheduler field variance_type={vt!r} cannot be represented: ddpm reads {', '.join(known)}")


def scheduler_config_to_diffusers(
    schedule: Any,
    prediction: str,
    variance: str = "posterior",
    clip: bool = True,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``DDPMScheduler`` scheduler_config.json dict for a ddpm schedule and prediction type.

    ``variance`` is the sampler's choice for a fixed variance, ``posterior`` (fixed_small) or ``beta``
    (fixed_large), or ``learned-range`` for a network that predicts its variance (learned_range).
    ``sampling`` holds diffusers-only settings to keep (timestep_spacing, thresholding, ... of an imported model).
    """
    c = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        **SCHEDULER_DEFAULTS,
        **(sampling or {}),
    }
    p = schedule.params
    c.update(
        num_train_timesteps=schedule.timesteps,
        trained_betas=None,
        prediction_type=PREDICTION_TO_DIFFUSERS[prediction],
        variance_type={**VARIANCE_TO_DIFFUSERS, **LEARNED_TO_DIFFUSERS}[variance],
        clip_sample=bool(clip),
        rescale_betas_zero_snr=False,
        beta_start=SCHEDULER_DEFAULTS["beta_start"],
        beta_end=SCHEDULER_DEFAULTS["beta_end"],
        beta_schedule="linear",
    )
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
    T = timesteps_of(meta)
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
        raise UserError(
            "the checkpoint's variance 'learned' (the network outputs log σ²) cannot be exported: "
            "diffusers' variance_type 'learned' reads that output as σ² itself, so DDPMPipeline would "
            "draw with another variance; a network trained with variance learned-range can be exported"
        )
    if trained not in VARIANCES:
        raise UserError(
            f"the checkpoint's variance {trained!r} is unknown to this ddpm (it knows "
            f"{', '.join(VARIANCES)}): the checkpoint is from a newer ddpm"
        )
    model = meta["model"]
    out, want = model.get("out_channels") or model["channels"], output_channels(model["channels"], trained)
    if out != want:
        raise UserError(
            f"the checkpoint's network has out_channels={out} but its variance {trained!r} needs {want}: "
            "the checkpoint is inconsistent"
        )
    if trained in LEARNED_TO_DIFFUSERS:
        if variance is not None:
            raise ParameterError(
                f"{{variance}} cannot be chosen for this checkpoint: its network predicts its "
                f"variance ({trained}), exported as variance_type {LEARNED_TO_DIFFUSERS[trained]!r}"
            )
        return trained
    if variance is not None:
        return variance
    imported = ((meta.get("diffusers") or {}).get("scheduler_config") or {}).get("variance_type")
    if imported in VARIANCE_FROM_DIFFUSERS:
        return VARIANCE_FROM_DIFFUSERS[imported]
    return "beta" if trained == "fixed-large" else "posterior"


def timesteps_of(meta: dict[str, Any]) -> int:
    """T of a checkpoint's schedule."""
    return Schedule.from_dict(meta["schedule"]).timesteps
