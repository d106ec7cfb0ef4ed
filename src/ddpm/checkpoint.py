"""Checkpoints: one self-describing safetensors file per checkpoint, plus a training-state file.

``step-000001000.safetensors`` holds the model weights (``model.*``) and the EMA weights (``ema.*``)
and, in its metadata under the key ``ddpm``, the JSON of everything needed to sample: model config,
schedule, prediction type, image size and channels, normalization, class names, step, format version
(:func:`checkpoint_meta`), and for a training run its settings.
Nothing in it is executable, so a downloaded checkpoint is safe to open.

``step-000001000.state.pt`` holds what only resuming needs: the step and the optimizer's state. There is no
RNG state to keep, since every random draw of training is a function of (seed, step) (:mod:`ddpm.train.draws`).
It is written by ``torch.save`` and read only with ``torch.load(weights_only=True)``.

Every file is written through :func:`ddpm.files.atomic_write`, so a crash at any moment leaves either the old file or
the new one under the real name, never half of one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor

from .errors import UserError
from .files import atomic_write, save_safetensors
from .schedule import Schedule
from .unet import UNet, UNetConfig

FORMAT = "ddpm-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d+)\.safetensors$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: metadata and the two weight sets (name -> tensor)."""

    meta: dict[str, Any]
    model: dict[str, Tensor]
    ema: dict[str, Tensor]
    path: Path

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def checkpoint_name(step: int) -> str:
    """File name of the checkpoint at ``step``: ``step-000001000.safetensors``."""
    return f"step-{step:09d}.safetensors"


def state_path(checkpoint_path: str | os.PathLike[str]) -> Path:
    """The training-state file that goes with a checkpoint file."""
    p = Path(checkpoint_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".state.pt")


def save_checkpoint(
    path: str | os.PathLike[str], model: dict[str, Tensor], ema: dict[str, Tensor], meta: dict[str, Any]
) -> Path:
    """Atomically write model and EMA state dicts plus ``meta`` (JSON-ready) to a safetensors file."""
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model.items()}
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, **meta}
    return save_safetensors(path, tensors, {"ddpm": json.dumps(meta)})


def checkpoint_meta(
    step: int,
    model: UNetConfig,
    schedule: Schedule,
    prediction: str,
    *,
    class_names: list[str] | None = None,
    data: str | None = None,
    world_size: int = 1,
    variance: str = "fixed-small",
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to sample from a checkpoint, as JSON-ready values: the network's config, the schedule,
    what the network predicts, its reverse variance (recorded when not ``fixed-small``: see :func:`model_variance`),
    the image format and the class names; ``extra`` keys follow (training writes ``bf16`` and ``train``, its
    settings; ``ddpm convert`` writes ``diffusers``, where the weights came from)."""
    if variance != "fixed-small":
        extra = {"variance": variance, **extra}
    return {
        "step": step,
        "model": model.to_dict(),
        "schedule": schedule.to_dict(),
        "prediction": prediction,
        "image_size": model.image_size,
        "channels": model.channels,
        "normalization": {"range": [-1.0, 1.0], "to_pixels": "round((x + 1) * 127.5)"},
        "class_names": class_names,
        "data": data,
        "world_size": world_size,
        **extra,
    }


def model_variance(meta: dict[str, Any]) -> str:
    """The reverse variance a checkpoint's network was trained for (``fixed-small`` when not recorded)."""
    return str(meta.get("variance", "fixed-small"))


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the metadata of a checkpoint file (cheap: reads the header, not the weights)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a ddpm checkpoint (not a readable safetensors file: {e})") from None
    try:
        meta = json.loads(header["ddpm"])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path} is a safetensors file but not a ddpm checkpoint (no 'ddpm' metadata)") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a ddpm checkpoint (format {meta.get('format')!r})")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format version {meta['version']}, newer than this ddpm "
            f"understands ({FORMAT_VERSION}): upgrade ddpm"
        )
    return meta


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint file, or the latest checkpoint of a run directory."""
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    tensors = load_file(str(path))
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    return Checkpoint(meta=meta, model=model, ema=ema or dict(model), path=path)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``run_dir/checkpoints``, oldest first."""
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file as given, or a run directory's latest checkpoint."""
    p = Path(path)
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise UserError(
                f"{p} holds no checkpoints (looked in {p / CHECKPOINT_DIR}): train first, or pass a .safetensors file"
            )
        return found[-1][1]
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist: pass a .safetensors file or a run directory")
    return p


def remove_orphans(directory: str | os.PathLike[str]) -> list[str]:
    """Delete the training-state files in ``directory`` that have no checkpoint beside them (a write that stopped
    between the two files); returns their names."""
    d = Path(directory)
    names = {p.name for p in d.iterdir()} if d.is_dir() else set()
    orphans = sorted(
        n for n in names if n.endswith(".state.pt") and n.replace(".state.pt", ".safetensors") not in names
    )
    for name in orphans:
        (d / name).unlink(missing_ok=True)
    return orphans


def checkpoint_bytes(net: torch.nn.Module) -> int:
    """About the bytes one checkpoint of ``net`` takes on disk: the raw and EMA weights (float32) in the safetensors
    file, AdamW's two moments in the state file, and their headers."""
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    return 16 * params + 8 * buffers + (1 << 18)


def save_training_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write the resume-only state (tensors, numbers, strings, lists, dicts)."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training-state file with ``weights_only=True`` (no arbitrary code runs)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"training state {path} is missing: the run cannot be resumed exactly from it") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt or unsafe file
        raise UserError(
            f"training state {path} cannot be read safely ({type(e).__name__}): resume from an earlier checkpoint"
        ) from None


def load_model(
    path: str | os.PathLike[str], use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[UNet, Checkpoint, Schedule]:
    """Build the network of a checkpoint (file or run directory) with its EMA (or raw) weights.

    Returns (the UNet in eval mode on ``device``, the Checkpoint, its Schedule).
    """
    ckpt = load_checkpoint(path)
    try:
        model = UNet(UNetConfig.from_dict(ckpt.meta["model"]))
        model.load_state_dict(ckpt.ema if use_ema else ckpt.model)
        schedule = Schedule.from_dict(ckpt.meta["schedule"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(
            f"{ckpt.path} is damaged or from an incompatible ddpm version ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]})"
        ) from None
    return model.to(device).eval().requires_grad_(False), ckpt, schedule
