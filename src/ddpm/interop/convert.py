"""``ddpm convert``'s work: reading and writing diffusers folders, :func:`import_diffusers` and
:func:`export_diffusers` (see :mod:`ddpm.interop`)."""

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
from torch import Tensor

from ..checkpoint import CHECKPOINT_DIR, checkpoint_meta, checkpoint_name, load_model, save_checkpoint
from ..errors import ParameterError, UserError
from ..unet import UNet, UNetConfig
from .configs import (
    DIFFUSERS_VERSION,
    SCHEDULER_DEFAULTS,
    VARIANCE_TO_DIFFUSERS,
    WEIGHTS_BIN,
    WEIGHTS_SAFETENSORS,
    export_variance,
    schedule_from_diffusers,
    scheduler_config_to_diffusers,
    timesteps_of,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    variance_from_diffusers,
)
from .weights import state_dict_from_diffusers, state_dict_to_diffusers

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
            raise UserError(
                f"{binf} cannot be read safely as weights only ({type(e).__name__}): it may hold "
                "code, not just tensors; use the .safetensors file instead"
            ) from None
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise UserError(f"{binf} is not a state dict of tensors")
        return dict(sd), binf
    raise UserError(
        f"{folder} has no {WEIGHTS_SAFETENSORS} or {WEIGHTS_BIN} (sharded or variant weights are not "
        "read): download the full-precision weights"
    )


def read_diffusers(src: str | os.PathLike[str]) -> tuple[Any, Any, str, str, dict[str, Tensor], dict[str, Any]]:
    """Read a diffusers folder: (UNetConfig, Schedule, prediction, variance (``fixed-small`` or ``learned-range``),
    our EMA/raw state dict, record for the metadata).

    Layouts: files at the root (config.json, weights, scheduler_config.json) or a pipeline folder with
    ``unet/`` and ``scheduler/``.
    """
    root = Path(src)
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    sched_path = next(
        (p for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json") if p.is_file()), None
    )
    if not (unet_dir / "config.json").is_file():
        raise UserError(f"{root} is not a diffusers model folder: no config.json at its root or in unet/")
    if sched_path is None:
        raise UserError(
            f"{root} has no scheduler_config.json (at its root or in scheduler/): the noise schedule "
            "the model was trained with is needed"
        )
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
    record = {
        "source": str(root),
        "weights": weights_path.name,
        "unet_config": unet_cfg,
        "scheduler_config": {**SCHEDULER_DEFAULTS, **{k: v for k, v in sched_cfg.items() if not k.startswith("_")}},
    }
    return cfg, schedule, prediction, variance, state, record


def _check_dst(dst: Path) -> None:
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise UserError(f"{dst} already exists: ddpm convert never overwrites; choose another DST")


def _write_dir_atomically(dst: Path, write: Callable[[Path], object]) -> None:
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


# The scheduler settings an imported model's folder had that an export writes back as they were.
KEPT_SCHEDULER_KEYS = ("timestep_spacing", "steps_offset", "thresholding", "dynamic_thresholding_ratio",
                       "sample_max_value", "clip_sample_range")  # fmt: skip


def export_diffusers(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], use_ema: bool = True, variance: str | None = None
) -> tuple[Path, str | None]:
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
    if cfg.cond_channels:
        task = (ckpt.meta.get("condition") or {}).get("task", "an image")
        raise ParameterError(f"{ckpt.path} is conditioned on an image ({task}), and diffusers has no pipeline that "
                             "passes one to the network: it cannot be exported (sample it with ddpm sample "
                             "--condition)")  # fmt: skip
    variance = export_variance(ckpt.meta, variance)
    unet_json = unet_config_to_diffusers(cfg)
    weights = state_dict_to_diffusers(net.state_dict(), net)
    imported = (ckpt.meta.get("diffusers") or {}).get("scheduler_config") or {}
    keep = {k: v for k, v in imported.items() if k in KEPT_SCHEDULER_KEYS}
    sched_json = scheduler_config_to_diffusers(
        schedule, ckpt.meta.get("prediction", "eps"), variance, bool(imported.get("clip_sample", True)), keep
    )
    note = None
    if cfg.num_classes is not None:
        note = (
            f"class-conditional model: wrote unet/ and scheduler/ but no model_index.json, because DDPMPipeline "
            f"cannot pass labels; load it with UNet2DModel.from_pretrained(DST, subfolder='unet') and call it "
            f"with class_labels (0..{cfg.num_classes - 1}, or {cfg.num_classes} for 'no label')"
        )

    def write(tmp: Path) -> None:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        (tmp / "unet" / "config.json").write_text(json.dumps(unet_json, indent=2) + "\n")
        save_file(weights, str(tmp / "unet" / WEIGHTS_SAFETENSORS), metadata={"format": "pt"})
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_json, indent=2) + "\n")
        if note is None:
            index = {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": DIFFUSERS_VERSION,
                "scheduler": ["diffusers", "DDPMScheduler"],
                "unet": ["diffusers", "UNet2DModel"],
            }
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    _write_dir_atomically(dst, write)
    return dst, note


def checkpoint_summary(meta: dict[str, Any]) -> str:
    """ "<n> parameters, <prediction> prediction, T=<T>" for a checkpoint's metadata."""
    n = sum(math.prod(shape) for shape in _shapes(meta))
    return f"{n:,} parameters, {meta['prediction']} prediction, T={timesteps_of(meta)}"


def _shapes(meta: dict[str, Any]) -> list[tuple[int, ...]]:
    with torch.device("meta"):
        net = UNet(UNetConfig.from_dict(meta["model"]))
    return [tuple(p.shape) for p in net.parameters()]
