"""Setting a run up: its directory, its networks (new, from --init-from, or resumed with the optimizer), and the
checks that a resume keeps the run's numbers."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..checkpoint import (
    CHECKPOINT_DIR,
    list_checkpoints,
    load_checkpoint,
    load_training_state,
    remove_orphans,
    state_path,
)
from ..conditioning import ConditionSpec
from ..data.dataset import ImageDataset
from ..diffusion import LEARNED_VARIANCES, output_channels
from ..errors import ParameterError, UserError
from ..files import exclusive_lock, remove_partial_writes
from ..runtime import Dist
from ..seeding import mix
from ..unet import AUTO_PRESET, UNet, UNetConfig, auto_preset
from .augment import AUGMENT_DIM
from .config import RESUME_MUST_MATCH, UNRECORDED_VALUES, TrainConfig


@dataclass
class Networks:
    """A run's networks at its starting step: ``raw`` (trained), ``ema``, ``model`` (what the loop calls:
    ``raw``, or its DDP/compiled wrapper), the optimizer, the arithmetic (bf16: None until :mod:`.fit` decides it;
    memory format), the preset the run records (``auto`` resolved: from the image size and device for a new run, the
    checkpoint's on resume) and a resumed run's recorded settings."""

    raw: UNet
    ema: UNet
    model: nn.Module
    opt: torch.optim.Optimizer
    step: int
    bf16: bool | None
    memory_format: torch.memory_format
    preset: str
    state: dict[str, Any]  # the resumed training state's other entries (e.g. the loss-aware sampler's history)
    recorded: dict[str, Any] | None = None  # the resumed checkpoint's training settings


def build_networks(cfg: TrainConfig, data: ImageDataset, px: Dist, out: Path,
                   spec: ConditionSpec | None = None) -> Networks:  # fmt: skip
    """The networks to train: new from cfg.preset (seeded; ``auto``: :func:`ddpm.unet.auto_preset`), from --init-from,
    or restored with their optimizer from the latest checkpoint of ``out`` (--resume); on px.device, wrapped in DDP
    and torch.compile as asked; taking the condition ``spec`` describes. A new run says in one line which network it
    trains."""
    device = px.device
    preset = cfg.preset
    torch.manual_seed(mix(cfg.seed, 0x1417))  # the initial weights, identical on every rank
    if cfg.resume:  # the run's own network, as saved, whatever the preset means today
        path, state = latest_resumable(out)
        ck = load_checkpoint(path)
        if preset == AUTO_PRESET:  # no --preset: the run's own, as recorded
            preset = ck.meta["train"].get("preset", UNRECORDED_VALUES["preset"])
        check_compatible(
            ck.meta["train"], replace(cfg, preset=preset), px.world, int(ck.meta.get("world_size", 1)), path
        )
        raw = UNet(UNetConfig.from_dict(ck.meta["model"]))
        ema = copy.deepcopy(raw).eval().requires_grad_(False)
    elif cfg.init_from is not None:  # a new run that starts from another checkpoint's network and weights
        raw, ema = networks_from_checkpoint(cfg, data, spec)
        if px.main:
            print(f"network: {cfg.init_from}'s ({describe_network(raw)})")
    else:
        raw, preset = new_network(cfg, data, device, px.main, spec)
        ema = copy.deepcopy(raw).eval().requires_grad_(False)
    opt = torch.optim.AdamW(raw.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)

    step, extra, recorded = 0, {}, None
    bf16 = cfg.bf16
    if cfg.resume:
        recorded = ck.meta["train"]
        extra = {k: v for k, v in state.items() if k not in ("step", "optimizer")}
        raw.load_state_dict(ck.model)
        ema.load_state_dict(ck.ema)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if cfg.bf16 is None and "bf16" in ck.meta:
            bf16 = bool(ck.meta["bf16"])  # keep the run's arithmetic, so a resume stays bit-exact
        if px.main:
            print(f"resuming from {path} at step {step}")

    use_cuda = device.type == "cuda"
    channels_last = cfg.channels_last if cfg.channels_last is not None else use_cuda
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    raw.to(device, memory_format=fmt)  # type: ignore[call-overload]  # nn.Module.to takes it
    ema.to(device)
    _optimizer_to(opt, device)
    model: nn.Module = raw
    if px.world > 1:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if use_cuda else None)
    if cfg.compile:
        model = cast(nn.Module, torch.compile(model))
    return Networks(raw, ema, model, opt, step, bf16, fmt, preset, extra, recorded)


def describe_network(net: UNet) -> str:
    """One phrase: the levels' sizes, where attention is, and the parameter count, e.g. "levels 64→32→16→8 px,
    attention at 16 px and the middle, 1.63M parameters"."""
    cfg = net.config
    sizes = [cfg.image_size // 2**i for i in range(len(cfg.channel_mult))]
    attn = [s for s in sizes if s in cfg.attention_resolutions]
    where = f"at {', '.join(map(str, attn))} px and the middle" if attn else "in the middle block only"
    count = sum(p.numel() for p in net.parameters())
    return (
        f"levels {'→'.join(map(str, sizes))} px, attention {where}, {count / 1e6:.{1 if count >= 1e8 else 2}f}M "
        "parameters"
    )


def new_network(cfg: TrainConfig, data: ImageDataset, device: torch.device, announce: bool,
                spec: ConditionSpec | None = None) -> tuple[UNet, str]:  # fmt: skip
    """A new run's network (seeded by the caller) and the preset it records: cfg.preset, or with ``auto`` the one
    for the data's image size, with the input channels and level embedding of the condition ``spec`` describes; with
    ``announce`` one line says which network it is and why."""
    preset, other = cfg.preset, None
    chosen = preset == AUTO_PRESET
    if chosen:
        preset, other = auto_preset(data.image_size, device.type)
    overrides: dict[str, Any] = {
        "channels": data.channels,
        "image_size": data.image_size,
        "num_classes": data.num_classes if cfg.class_cond else None,
    }
    if cfg.dropout is not None:
        overrides["dropout"] = cfg.dropout
    if cfg.variance in LEARNED_VARIANCES:
        overrides["out_channels"] = output_channels(data.channels, cfg.variance)
    if spec is not None:
        overrides.update(cond_channels=spec.channels, cond_level=spec.told_level)
    if cfg.augment > 0:
        overrides["augment_dim"] = AUGMENT_DIM
    overrides.update(cfg.network_overrides())
    try:
        raw = UNet.from_preset(preset, **overrides)
    except ValueError as e:
        raise ParameterError(
            f"preset {preset!r} does not fit the data: {e} (flags: {{image_size}}, {{preset}}, {{channel_mult}})"
        ) from None
    if announce:
        print(
            f"network: {preset} ({why_this_network(data.image_size, device, preset, other)}): {describe_network(raw)}"
        )
    return raw, preset


def why_this_network(size: int, device: torch.device, preset: str, other: str | None) -> str:
    """Why a new run trains its network: the preset flag, or chosen for the size and device (naming the other)."""
    if other is None:
        return "--preset"
    if other == preset:
        return f"chosen for {size}x{size} images; --preset names another"
    where = "a CPU" if device.type == "cpu" else f"a {device.type.upper()} device"
    elsewhere = "a GPU" if device.type == "cpu" else "a CPU"
    return f"chosen for {size}x{size} images on {where}; on {elsewhere} it would be {other}; --preset names either"


def networks_from_checkpoint(cfg: TrainConfig, data: ImageDataset,
                             spec: ConditionSpec | None = None) -> tuple[UNet, UNet]:  # fmt: skip
    """The (raw, EMA) networks for ``--init-from``: the checkpoint's network config and both its weight sets.

    The data must fit that network (channels, image size, classes, the condition ``spec`` describes) and the run
    must keep its schedule and prediction type; ``--dropout`` may change (it has no weights).
    """
    assert cfg.init_from is not None
    ck = load_checkpoint(cfg.init_from)
    where = f"{{init_from}} {ck.path}"
    if ConditionSpec.from_meta(ck.meta) != spec:
        raise ParameterError(f"{where} was trained for the condition {ck.meta.get('condition')}, this run has "
                             f"{None if spec is None else spec.to_dict()}: match {{task}}, {{scale}} and "
                             "{cond_noise_max}")  # fmt: skip
    try:
        mcfg = UNetConfig.from_dict(ck.meta["model"])
        saved_schedule, saved_prediction = ck.meta["schedule"], ck.meta.get("prediction", "eps")
    except (KeyError, TypeError, ValueError) as e:
        raise ParameterError(f"{where} is damaged or from an incompatible ddpm version ({type(e).__name__})") from None
    fixes = {
        "channels": "use data with that many channels",
        "image_size": f"pass {{image_size}} {mcfg.image_size}",
        "num_classes": "{class_cond} and the data's classes must match the checkpoint's",
    }
    for name, have in (
        ("channels", data.channels),
        ("image_size", data.image_size),
        ("num_classes", data.num_classes if cfg.class_cond else None),
    ):
        if getattr(mcfg, name) != have:
            raise ParameterError(
                f"{where}: its network has {name}={getattr(mcfg, name)} but the data gives {have}: {fixes[name]}"
            )
    if cfg.make_schedule().to_dict() != saved_schedule:
        raise ParameterError(
            f"{where}: it was trained with the schedule {saved_schedule}, this run has "
            f"{cfg.make_schedule().to_dict()}: match {{schedule}}/{{timesteps}}/{{beta_start}}/"
            "{beta_end} (a custom table cannot be fine-tuned)"
        )
    if (mcfg.out_channels or mcfg.channels) != output_channels(mcfg.channels, cfg.variance):
        raise ParameterError(
            f"{where}: its network has {mcfg.out_channels or mcfg.channels} output channels, "
            f"{{variance}} {cfg.variance} needs {output_channels(mcfg.channels, cfg.variance)}: pass "
            f"{{variance}} {ck.meta.get('variance', 'fixed-small')}"
        )
    if saved_prediction != cfg.prediction:
        raise ParameterError(
            f"{where}: it predicts {saved_prediction}, this run {{prediction}} {cfg.prediction}: "
            f"pass {{prediction}} {saved_prediction}"
        )
    if cfg.augment > 0 and mcfg.augment_dim != AUGMENT_DIM:
        raise ParameterError(f"{where}: its network takes no augmentation vector, and {{augment}} needs one: drop "
                             "{augment}, or start from a checkpoint trained with it")  # fmt: skip
    if cfg.dropout is not None:
        mcfg.dropout = cfg.dropout
    raw, ema = UNet(mcfg), UNet(mcfg)
    raw.load_state_dict(ck.model)
    ema.load_state_dict(ck.ema)
    return raw, ema.eval().requires_grad_(False)


@contextlib.contextmanager
def run_dir_lock(out: Path, resume: bool) -> Iterator[None]:
    """Make this process the one writer of run directory ``out`` while the block runs (``out/.lock``:
    :func:`ddpm.files.exclusive_lock`), after the checks that need no writing: another ``ddpm train`` on the same
    directory, with or without --resume, is refused with one line naming the process that holds it. A directory
    made here is removed again if the run fails before writing anything into it."""
    check_run_dir(out, resume)
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_lock(out / ".lock", f"run directory {out}"):
            yield
    except BaseException:
        if made:
            _remove_if_unused(out)
        raise


def _remove_if_unused(out: Path) -> None:
    """Remove run directory ``out`` where it holds nothing but its lock and empty folders."""
    with contextlib.suppress(OSError):
        if any(p.is_file() and p.name != ".lock" for p in out.rglob("*")):
            return
        for p in sorted(out.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        out.rmdir()


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse a run directory that is a file, that already holds a run (unless resuming), or that holds nothing to
    resume."""
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out} is a file, not a directory: choose another {{out}}")
    existing = list_checkpoints(out)
    if existing and not resume:
        raise ParameterError(
            f"{out} already holds a run ({len(existing)} checkpoints, latest step "
            f"{existing[-1][0]}): pass {{resume}} to continue it, or choose another {{out}}"
        )
    if resume and not existing:
        raise ParameterError(
            f"nothing to resume in {out}: it holds no checkpoints (drop {{resume}} to start a new run)"
        )


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Create the run directory (refusing one that already holds a run unless resuming), and clear what a killed
    or failed writer left in it: half-written files, and a training state without its checkpoint (said)."""
    check_run_dir(out, resume)
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    remove_partial_writes(out / CHECKPOINT_DIR)  # half-written files of a killed process
    for name in remove_orphans(out / CHECKPOINT_DIR):
        print(f"removed {out / CHECKPOINT_DIR / name}: its checkpoint was never written (a write that stopped)")


def latest_resumable(out: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``out`` whose weights and training state both load, with that state.

    A checkpoint is renamed into place only after its state file, so the newest one is normally
    complete; older ones are the fallback if a file was damaged after the fact.
    """
    problems = []
    for _, path in reversed(list_checkpoints(out)):
        try:
            state = load_training_state(state_path(path))
            return path, state
        except UserError as e:
            problems.append(str(e))
    raise UserError(f"no checkpoint in {out} can be resumed: {problems[0] if problems else 'none found'}")


def check_compatible(saved: dict[str, Any], cfg: TrainConfig, world: int, saved_world: int, path: Path) -> None:
    """Refuse to resume with settings that would change the run's numbers, naming each difference.

    A setting the checkpoint does not record (it predates the flag) counts as what that run used: the flag's
    default then, which is today's default unless :data:`UNRECORDED_VALUES` says otherwise."""
    defaults = {f.name: f.default for f in fields(TrainConfig)} | UNRECORDED_VALUES
    recorded = {k: saved.get(k, defaults[k]) for k in RESUME_MUST_MATCH}
    recorded["micro_batch"] = recorded["micro_batch"] or recorded["batch_size"]  # not split: one pass of the batch
    now = {k: getattr(cfg, k) for k in RESUME_MUST_MATCH}
    if now["micro_batch"] is None:  # not given: the run's own
        now["micro_batch"] = recorded["micro_batch"]
    diffs = [f"{{{k}}} {recorded[k]!r} in the checkpoint, {now[k]!r} now" for k in RESUME_MUST_MATCH
             if recorded[k] != now[k]]  # fmt: skip
    if saved_world != world:
        diffs.append(f"{saved_world} processes in the checkpoint, {world} now (the effective batch would change)")
    if diffs:
        raise ParameterError(f"cannot resume from {path.name}: " + "; ".join(diffs) + " (use the original settings)")


def _optimizer_to(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Move loaded optimizer state (exp_avg, ...) to the parameters' device. `step` counters stay on CPU."""
    for state in opt.state.values():
        for k, v in state.items():
            if isinstance(v, Tensor) and k != "step":
                state[k] = v.to(device)
