"""Images from a checkpoint, each reproducible from its PNG metadata: :func:`generate`, :func:`reproduce`,
:func:`interpolate` and :func:`edit_image` (the library behind ``ddpm sample`` and ``ddpm edit``).

Image i of a run depends only on (seed, i): it has its own generator (``image_generators``), so it is the
same at any batch size. Every PNG records, in ``ddpm:*`` text chunks, everything needed to make it again
(see :class:`Provenance`), and :func:`reproduce` does exactly that. Bad arguments raise
:class:`~ddpm.errors.ParameterError` naming the parameter; the CLI renders those names as its flags.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, load_model, model_variance, resolve_checkpoint
from .denoiser import image_generators, randn
from .diffusion import LEARNED_VARIANCES
from .editing import check_strength, edit
from .errors import ParameterError, UserError, check_at_least
from .files import atomic_write, file_sha256, human
from .images import (
    from_uint8,
    grid_scale,
    load_image,
    load_mask,
    make_grid,
    picture_size,
    read_png_metadata,
    save_gif,
    save_png,
    side_by_side,
    to_uint8,
    trajectory_columns,
    trajectory_strip,
)
from .memory import Peak, StepMemory, available_memory, counted_peak, fake_tensors, needed, step_bound
from .memory import budget as memory_budget
from .provenance import Provenance
from .runtime import pick_device
from .sampler_choice import SamplerChoice, SampleSettings, check_sampler
from .sampling import sample
from .schedule import Schedule
from .unet import UNet, UNetConfig
from .version import __version__

TRAJECTORY_COLUMNS = 10
PathLike = str | os.PathLike[str]
# What an image-conditioned network samples given: its conditions (B, Cc, H, W), their augmentation level (B,), and
# the map applied to every x̂_0 (a super-resolution model's projection onto its low images); all None unconditioned.
SampledConditions = tuple[Tensor | None, Tensor | None, Callable[[Tensor], Tensor] | None]


def resolve_class(value: int | str, class_names: list[str] | None) -> int:
    """A class given as an index (3, "3") or a name ("Sneaker", any case) -> its index."""
    if not class_names:
        raise ParameterError("{label} needs a class-conditional checkpoint; this one was trained without --class-cond")
    text = str(value)
    if text.strip().lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < len(class_names):
            raise ParameterError(f"{{label}} {k} is out of range: this model has classes 0..{len(class_names) - 1}")
        return k
    lowered = [n.lower() for n in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    raise UserError(
        f"unknown class {text!r}: choose an index 0..{len(class_names) - 1} or one of {', '.join(class_names)}"
    )


def resolve_label(label: int | str | None, guidance: float | None, meta: Mapping[str, Any]) -> int | None:
    """The class index of ``label`` for a checkpoint with metadata ``meta``; guidance needs a label."""
    index = None if label is None else resolve_class(label, meta.get("class_names"))
    if guidance is not None and index is None:
        raise ParameterError("{guidance} needs {label}: guidance pushes samples toward a class")
    return index


# ---------------------------------------------------------------------------- opening a checkpoint


@dataclass
class Sampling:
    """A checkpoint opened for sampling: the network, its checkpoint and schedule, the sampler path, the class and
    guidance, and how it was asked for (every picture records these, :meth:`provenance`)."""

    model: UNet
    checkpoint: Checkpoint
    schedule: Schedule
    choice: SamplerChoice
    label: int | None  # the class index, resolved from an index or a name
    guidance: float | None
    clip_x0: bool
    ema: bool
    device: torch.device
    deterministic: bool  # the sampler path draws no noise (a dry run showed it)

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @functools.cached_property
    def sha256(self) -> str:
        """The checkpoint file's SHA-256 (hashed once)."""
        return file_sha256(self.checkpoint.path)

    def provenance(self, kind: str, seed: int, extra: Mapping[str, str] | None = None) -> Provenance:
        """The record of a picture of ``kind`` drawn from ``seed`` (image 0; :meth:`Provenance.of` for others)."""
        return Provenance(
            kind,
            seed,
            0,
            self.choice,
            self.label,
            self.guidance,
            self.clip_x0,
            self.ema,
            self.sha256,
            dict(extra or {}),
        )

    def draw(
        self,
        seed: int,
        indices: list[int],
        *,
        callback: Callable[[dict[str, Any]], None] | None = None,
        x_T: Tensor | None = None,
    ) -> Tensor:
        """Images ``indices`` of ``seed``: (len(indices), C, H, W) in [-1, 1] (see :func:`draw`)."""
        return draw(
            self.model,
            self.schedule,
            self.meta,
            self.choice,
            seed,
            indices,
            self.label,
            self.guidance,
            self.clip_x0,
            self.device,
            callback,
            x_T=x_T,
        )

    def batches(
        self,
        seed: int,
        num: int,
        *,
        batch_size: int,
        progress: bool = False,
        callback_for: Callable[[list[int]], Callable[[dict[str, Any]], None] | None] | None = None,
    ) -> Iterator[tuple[list[int], Tensor]]:
        """Images 0..num-1 of ``seed``, ``batch_size`` at a time or as many as fit (see :func:`draw_batches`)."""
        batch_size = fitting_batch(self.model, min(batch_size, num), self.device, self.guidance)
        return draw_batches(self.model, self.schedule, self.meta, self.choice, seed, num, batch_size=batch_size,
                            device=self.device, label=self.label, guidance=self.guidance, clip_x0=self.clip_x0,
                            progress=progress, callback_for=callback_for)  # fmt: skip


def fitting_batch(model: UNet, batch_size: int, device: torch.device, guidance: float | None = None) -> int:
    """``batch_size``, or the largest batch of ``model``'s sampling that fits in ``device``'s memory where it does not
    (said in one line; image i is the same at any batch size)."""
    cfg = model.config
    budget = memory_budget(device)
    guided = 2 if guidance not in (None, 0, 1) else 1  # guidance calls the network on 2B images
    if step_bound(sum(p.numel() for p in model.parameters()), cfg, guided * batch_size) < budget / 2:
        return batch_size
    memory = sampling_memory(cfg)
    fits = max(1, memory.largest_batch(budget) // guided)
    if fits >= batch_size:
        return batch_size
    need = human(needed(memory.bytes(guided * batch_size), device))
    print(f"memory: sampling {batch_size} images at a time needs about {need}, {human(available_memory(device))} is "
          f"available: batches of {fits} (the images are the same at any batch size)")  # fmt: skip
    return fits


def sampling_memory(config: UNetConfig) -> StepMemory:
    """The memory of one network call at sampling time (no gradients), counted on FakeTensors at batches 2 and 4."""

    def counted(batch: int) -> Peak:
        with fake_tensors(), torch.no_grad():
            net = UNet(config).eval()
            shape = (batch, config.channels, config.image_size, config.image_size)
            x, t = torch.randn(shape), torch.randint(0, 1000, (batch,))
            extras = net.extra_inputs(batch)

            def call() -> None:
                net(x, t, **extras)

            return counted_peak([*net.parameters(), x, t, *extras.values()], call)

    return StepMemory.fit(2, counted(2), 4, counted(4))


def open_for_sampling(
    checkpoint: PathLike | None,
    settings: SampleSettings,
    device: torch.device | str | None = None,
    *,
    deterministic: bool = False,
    conditioned: bool = False,
) -> Sampling:
    """Load ``checkpoint`` (a file or a run directory) with the weights ``settings`` asks for, choose and check its
    sampler path (:meth:`SampleSettings.choice`; ``deterministic``: :data:`~ddpm.sampler_choice.DETERMINISTIC_SAMPLER`
    when no sampler is given) and resolve its class: the one way every command opens a checkpoint to sample it.
    ``device`` defaults to ``settings.device``. A network conditioned on an image is refused unless ``conditioned``
    (:mod:`ddpm.cascade` samples those)."""
    if checkpoint is None:
        raise ParameterError("{checkpoint} is required: a .safetensors checkpoint or a run directory")
    dev = device if isinstance(device, torch.device) else pick_device(device or settings.device)
    model, ckpt, schedule = load_model(checkpoint, use_ema=settings.ema, device=dev)
    if ckpt.meta.get("condition") and not conditioned:
        task = ckpt.meta["condition"].get("task", "an image")
        raise ParameterError(f"{{checkpoint}} {ckpt.path} is conditioned on an image ({task}): sample it with "
                             "{condition} FOLDER|FILE.npz (ddpm sample, ddpm eval), or as a {then} stage after a base "
                             "model")  # fmt: skip
    choice = settings.choice(schedule.timesteps, deterministic)
    draws_no_noise = check_sampler(choice, schedule)
    label = resolve_label(settings.label, settings.guidance, ckpt.meta)
    return Sampling(
        model, ckpt, schedule, choice, label, settings.guidance, settings.clip_x0, settings.ema, dev, draws_no_noise
    )


# ---------------------------------------------------------------------------- drawing


def draw(
    model: Any,
    schedule: Schedule,
    meta: Mapping[str, Any],
    choice: SamplerChoice,
    seed: int,
    indices: list[int],
    label: int | None,
    guidance: float | None,
    clip_x0: bool,
    device: torch.device,
    callback: Callable[[dict[str, Any]], None] | None = None,
    x_T: Tensor | None = None,
    cycle_classes: int | None = None,
    progress: bool = False,
    condition: Tensor | None = None,
    condition_level: Tensor | None = None,
    generators: list[torch.Generator] | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Images ``indices`` of ``seed``: (len(indices), C, H, W) in [-1, 1]. The one call every path shares.

    ``meta`` gives channels, image_size and prediction (a checkpoint's metadata). The label of every image is
    ``label``, or with ``cycle_classes=K`` image i's class is i mod K (one class per column of a grid).
    ``progress`` shows a bar over the model calls where they take more than a second. An image-conditioned network
    takes its images' conditions (B, Cc, H, W) and their augmentation level (B,) as it takes them
    (:func:`ddpm.cascade.network_conditions`). ``generators`` (one per image) replace image i's own generator.
    ``project`` is applied to every x̂_0 (see :func:`ddpm.sample`).
    """
    c, size = int(meta["channels"]), int(meta["image_size"])
    labels = None
    if cycle_classes:
        labels = torch.tensor(indices, device=device) % cycle_classes
    elif label is not None:
        labels = torch.full((len(indices),), label, dtype=torch.long)
    return sample(
        model,
        (len(indices), c, size, size),
        schedule,
        sampler=choice.name,
        steps=choice.steps,
        generator=image_generators(seed, indices) if generators is None else generators,
        clip_x0=clip_x0,
        labels=labels,
        guidance=guidance,
        spacing=choice.spacing,
        callback=callback,
        x_T=x_T,
        device=device,
        progress=progress,
        condition=condition,
        condition_level=condition_level,
        project=project,
        **model_kind(meta, choice),
    )


def model_kind(meta: Mapping[str, Any], choice: SamplerChoice) -> dict[str, Any]:
    """What sampling needs to know of a checkpoint's network, as keywords of :func:`ddpm.sample`: its prediction,
    its learned variance (if any), and ``choice``'s options, where the ancestral sampler's ``variance`` defaults to
    the one the network was trained for (β for ``fixed-large``; the network's own for a learned one). Edits pass a
    choice named ``edit``: they keep the sampler's own default."""
    variance = model_variance(dict(meta))
    options = dict(choice.options)
    if choice.name == "ddpm" and variance == "fixed-large":
        options.setdefault("variance", "beta")
    return {
        "prediction": meta.get("prediction", "eps"),
        "learned_variance": variance if variance in LEARNED_VARIANCES else None,
        **options,
    }


def draw_batches(
    model: Any,
    schedule: Schedule,
    meta: Mapping[str, Any],
    choice: SamplerChoice,
    seed: int,
    num: int,
    *,
    batch_size: int,
    device: torch.device,
    label: int | None = None,
    cycle_classes: int | None = None,
    guidance: float | None = None,
    clip_x0: bool = True,
    progress: bool = False,
    callback_for: Callable[[list[int]], Callable[[dict[str, Any]], None] | None] | None = None,
    conditions_for: Callable[[list[int]], SampledConditions] | None = None,
) -> Iterator[tuple[list[int], Tensor]]:
    """Images 0..num-1 of ``seed``, ``batch_size`` at a time: yields (indices, images (B, C, H, W) in [-1, 1]).

    The batched loop of ``ddpm sample``, ``ddpm eval``, the training grids and ``--eval-every``; image i is the
    same at any batch size. ``callback_for(indices)`` gives a batch its sampler callback (or None),
    ``conditions_for(indices)`` an image-conditioned network's (condition, level, projection) of those images (see
    :data:`SampledConditions`); see :func:`draw`
    for the other arguments.
    """
    with tqdm(
        total=num,
        desc=f"sampling {choice.name}, {choice.steps} steps",
        unit="img",
        dynamic_ncols=True,
        disable=not progress,
    ) as bar:
        for start in range(0, num, batch_size):
            idx = list(range(start, min(num, start + batch_size)))
            callback = callback_for(idx) if callback_for is not None else None
            cond, level, project = conditions_for(idx) if conditions_for is not None else (None, None, None)
            yield (
                idx,
                draw(
                    model,
                    schedule,
                    meta,
                    choice,
                    seed,
                    idx,
                    label,
                    guidance,
                    clip_x0,
                    device,
                    callback,
                    cycle_classes=cycle_classes,
                    condition=cond,
                    condition_level=level,
                    project=project,
                ),
            )
            bar.update(len(idx))


def check_out_dir(out: Path, names: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out} is a file: choose a directory")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise ParameterError(
            f"{out} already holds {clash[0]} (and {len(clash) - 1} more of the files this would "
            "write): choose another {out} or pass {overwrite}"
        )


def generate(
    settings: SampleSettings,
    out: PathLike,
    *,
    num: int = 64,
    seed: int = 0,
    batch_size: int = 256,
    npz: PathLike | None = None,
    trajectories: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write images 0..num-1 of ``seed`` from ``settings.checkpoint`` as ``out/000000.png``, ... and
    ``out/grid.png``, each with its :class:`Provenance`; with ``trajectories=N`` also trajectory-<i>.png/.gif of the
    first N images, with ``npz`` the images as a uint8 (num, H, W, C) array ``images``. Returns the paths written."""
    check_at_least("num", num, 1)
    check_at_least("batch_size", batch_size, 1)
    check_at_least("trajectories", trajectories, 0)
    s = open_for_sampling(settings.checkpoint, settings)
    out = Path(out)
    names = [f"{i:06d}.png" for i in range(num)]
    n_traj = min(num, trajectories)
    traj_names = [f"trajectory-{i:06d}.{ext}" for i in range(n_traj) for ext in ("png", "gif")]
    check_out_dir(out, [*names, "grid.png", *traj_names], settings.overwrite)
    if npz and Path(npz).exists() and not settings.overwrite:
        raise ParameterError(f"{npz} already exists: choose another {{npz}} or pass {{overwrite}}")
    prov = s.provenance("sample", seed)
    out.mkdir(parents=True, exist_ok=True)
    images = np.empty((num, s.image_size, s.image_size, s.channels), np.uint8)
    paths: dict[int, list[dict[str, Any]]] = {}  # batch start -> that batch's trajectory states

    def recorder(idx: list[int]) -> Callable[[dict[str, Any]], None] | None:
        rows = [j for j, i in enumerate(idx) if i < n_traj]
        if not rows:
            return None
        path = paths.setdefault(idx[0], [])
        return lambda d: path.append({"t": int(d["t"]), "x": to_uint8(d["x"][rows]), "x0": to_uint8(d["x0"][rows])})

    for idx, x in s.batches(seed, num, batch_size=batch_size, progress=progress, callback_for=recorder):
        batch = to_uint8(x)
        for j, i in enumerate(idx):
            images[i] = batch[j]
            save_png(out / names[i], batch[j], prov.of("sample", i).text_chunks())
        path = paths.pop(idx[0], [])
        for k, j in enumerate(j for j, i in enumerate(idx) if i < n_traj):
            _write_trajectory(
                out,
                idx[j],
                [(p["t"], p["x"][k], p["x0"][k]) for p in path],
                batch[j],
                prov.of("trajectory", idx[j]).text_chunks(),
            )
    save_png(
        out / "grid.png",
        make_grid(images, pad_value=128, scale=grid_scale(s.image_size)),
        prov.of("grid", f"0-{num - 1}").text_chunks(),
    )
    if npz:
        save_npz(npz, images)
    return [*(out / n for n in names), out / "grid.png", *(out / n for n in traj_names), *([Path(npz)] if npz else [])]


def save_npz(path: PathLike, images: np.ndarray) -> Path:
    """Write uint8 images (N, H, W, C) as the array ``images`` of a compressed .npz, atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez_compressed would add ".npz" to a name
            np.savez_compressed(f, images=images)

    return atomic_write(path, write)


def _write_trajectory(
    out: Path, index: int, path: list[tuple[int, np.ndarray, np.ndarray]], final: np.ndarray, meta: dict[str, str]
) -> None:
    """trajectory-<index>.png (x_t over x̂_0, ~10 states ending in the image) and .gif (one frame per call)."""
    scale = grid_scale(final.shape[0])
    # The path's states: one per model call (x_t, x̂_0 there), then the final image as both rows.
    states = [(x, x0) for _, x, x0 in path] + [(final, final)]
    cols = trajectory_columns(len(states), TRAJECTORY_COLUMNS)
    strip = trajectory_strip([states[k][0] for k in cols], [states[k][1] for k in cols], scale=scale)
    labels = ",".join(str(path[k][0]) if k < len(path) else "final" for k in cols)
    save_png(out / f"trajectory-{index:06d}.png", strip, {**meta, "ddpm:columns": labels})
    frames = [
        _caption(side_by_side(x, x0, scale=scale), f"{n + 1}/{len(path)} t={t}") for n, (t, x, x0) in enumerate(path)
    ]
    save_gif(out / f"trajectory-{index:06d}.gif", frames)


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """Add a 12-pixel text bar under a uint8 (H, W, C) frame. It also keeps consecutive GIF frames distinct
    (Pillow merges identical ones), so the GIF has exactly one frame per model call."""
    h, w, c = frame.shape
    bar = Image.new("L" if c == 1 else "RGB", (w, 12), 255 if c == 1 else (255, 255, 255))
    ImageDraw.Draw(bar).text((1, 0), text, fill=0 if c == 1 else (0, 0, 0))
    arr = np.asarray(bar, dtype=np.uint8)
    return np.concatenate([frame, arr[:, :, None] if c == 1 else arr], axis=0)


def slerp(a: Tensor, b: Tensor, weights: Sequence[float]) -> Tensor:
    """Spherical interpolation between two noise tensors a, b (1, C, H, W): (len(weights), C, H, W).

    x(w) = sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b, θ the angle between a and b (linear when they are
    parallel). w = 0 and w = 1 return a and b exactly, so the ends of an interpolation are plain samples.
    """
    fa, fb = a.flatten().double(), b.flatten().double()
    cos = float((fa @ fb) / (fa.norm() * fb.norm()))
    theta = math.acos(max(-1.0, min(1.0, cos)))
    frames = []
    for w in weights:
        if w == 0:
            frames.append(a[0])
        elif w == 1:
            frames.append(b[0])
        elif math.sin(theta) < 1e-6:
            frames.append(((1 - w) * a[0].double() + w * b[0].double()).to(a.dtype))
        else:
            ca, cb = math.sin((1 - w) * theta) / math.sin(theta), math.sin(w * theta) / math.sin(theta)
            frames.append((ca * a[0].double() + cb * b[0].double()).to(a.dtype))
    return torch.stack(frames)


def interpolate(
    settings: SampleSettings, out: PathLike, seed_a: int, seed_b: int, *, frames: int = 8, batch_size: int = 256
) -> Path:
    """Write ``out/interpolation.png``: ``frames`` images along the spherical interpolation between the starting
    noise of image 0 of ``seed_a`` and of ``seed_b``, with a deterministic sampler (``DETERMINISTIC_SAMPLER``
    unless ``settings.sampler`` is given); its ends are image 0 of :func:`generate` with those seeds."""
    check_at_least("frames", frames, 2, " (the two ends)")
    check_at_least("batch_size", batch_size, 1)
    s = open_for_sampling(settings.checkpoint, settings, deterministic=True)
    if not s.deterministic:
        raise ParameterError(
            f"{{interpolate}} needs a deterministic sampler, and {s.choice.name!r} with these "
            "options adds noise: drop {sampler} (UniPC is used), or use dpmpp-2m, dpmpp-3m, or "
            "ddim, dpmpp-2m-sde or sa-solver with {eta} 0"
        )
    out = Path(out)
    check_out_dir(out, ["interpolation.png"], settings.overwrite)
    # x_T of image 0 of each seed: the very draw `generate(seed=S)` starts image 0 from.
    shape = (1, s.channels, s.image_size, s.image_size)
    ends = [randn(shape, image_generators(seed, [0])) for seed in (seed_a, seed_b)]
    x_T = slerp(ends[0], ends[1], [k / (frames - 1) for k in range(frames)])
    pictures = []
    for start in range(0, frames, batch_size):
        idx = list(range(start, min(frames, start + batch_size)))
        # No noise is drawn by a deterministic sampler; the generators only satisfy the signature.
        pictures.append(to_uint8(s.draw(seed_a, idx, x_T=x_T[idx])))
    strip = make_grid(np.concatenate(pictures), nrow=frames, pad_value=128, scale=grid_scale(s.image_size))
    out.mkdir(parents=True, exist_ok=True)
    prov = s.provenance("interpolation", seed_a, {"seed_b": str(seed_b), "frames": str(frames)})
    return save_png(out / "interpolation.png", strip, prov.text_chunks())


def reproduce(
    checkpoint: PathLike, image: PathLike, out: PathLike, *, device: str = "auto", overwrite: bool = False
) -> tuple[Path, Provenance]:
    """Make ``image`` (a sample PNG written by :func:`generate`) again from its metadata, as ``out/<its name>``;
    ``checkpoint`` must be the file it was made with (checked by SHA-256). Returns (the path, the provenance
    read from ``image``, whose ``version`` says which ddpm made it)."""
    path, info, old = read_provenance(checkpoint, image)
    src, out = Path(image), Path(out)
    if "then" in old.extra or "condition" in old.extra:
        raise UserError(f"{src} was made by a cascade or from a condition image: reproduce it with its stages and "
                        "condition (ddpm sample --then/--condition; ddpm.cascade.reproduce_picture)")  # fmt: skip
    check_out_dir(out, [src.name], overwrite)
    s = open_for_sampling(path, old.sample_settings(device))
    x = s.draw(old.seed, [int(old.index)])
    out.mkdir(parents=True, exist_ok=True)
    again = dataclasses.replace(old, version=__version__)
    return save_png(out / src.name, to_uint8(x)[0], again.text_chunks()), old


def read_provenance(checkpoint: PathLike, image: PathLike) -> tuple[Path, dict[str, str], Provenance]:
    """What sample picture ``image`` records, checked against ``checkpoint`` (by SHA-256): (the checkpoint's file,
    the picture's text chunks, its :class:`Provenance` with the extra entries it carries, in their order)."""
    src = Path(image)
    if not src.is_file():
        raise ParameterError(f"{{image}} {src} does not exist: pass a PNG written by ddpm sample")
    try:
        info = read_png_metadata(src)
    except OSError:
        raise ParameterError(f"{{image}} {src} is not a readable PNG: pass a PNG written by ddpm sample") from None
    if "ddpm:seed" not in info or "ddpm:index" not in info or "ddpm:checkpoint_sha256" not in info:
        raise UserError(
            f"{src} has no ddpm metadata (no ddpm:seed/ddpm:index text chunks): only PNGs written by "
            "ddpm sample can be reproduced"
        )
    kind = info.get("ddpm:kind", "sample")
    if kind != "sample":
        raise UserError(
            f"{src} is a {kind} picture, not a sample: reproduce the sample images (000000.png, ...) it was made with"
        )
    path = resolve_checkpoint(checkpoint)
    sha, recorded = file_sha256(path), info["ddpm:checkpoint_sha256"]
    if sha != recorded:
        raise UserError(
            f"{path} (sha256 {sha[:12]}) is not the checkpoint {src.name} was made with "
            f"(sha256 {recorded[:12]}): pass that checkpoint"
        )
    try:
        old = Provenance.from_text_chunks(info)
        int(old.index)
    except (KeyError, ValueError) as e:
        raise UserError(f"{src} has damaged ddpm metadata ({type(e).__name__}: {e}): it cannot be reproduced") from None
    extra = {k.removeprefix("ddpm:"): v for k, v in info.items() if k.startswith("ddpm:")
             and k not in old.text_chunks()}  # fmt: skip
    return path, info, dataclasses.replace(old, extra=extra)


def edit_image(
    settings: SampleSettings,
    image: PathLike,
    out: PathLike,
    *,
    strength: float | None = None,
    mask: PathLike | None = None,
    resample: int = 1,
    seed: int = 0,
    resize: bool = True,
) -> tuple[Path, Provenance]:
    """SDEdit (no ``mask``) or inpaint (white pixels of ``mask`` regenerated, RePaint with ``resample`` > 1) the
    picture ``image`` with ``settings.checkpoint``; writes the PNG ``out`` with its :class:`Provenance`.
    ``settings.steps`` counts the full path; an edit uses those below round(strength·(T−1)). ``strength`` defaults
    to 1 with a mask.

    A picture of another size than the model's is brought to it as training does (shorter side to the model's size,
    centre crop, Lanczos: :func:`ddpm.images.fit_square`), and its provenance records ``resized_from`` (WxH); a mask
    may then have the picture's size or the model's. ``resize=False`` refuses such a picture instead.
    Returns (the path, its provenance)."""
    strength, settings = _edit_settings(settings, strength, mask, resample)
    out = Path(out)
    if out.is_dir():
        raise ParameterError(f"{{out}} {out} is a directory: give the PNG file to write")
    if out.exists() and not settings.overwrite:
        raise ParameterError(f"{out} already exists: choose another {{out}} or pass {{overwrite}}")
    s = open_for_sampling(settings.checkpoint, settings)
    picture = from_uint8(load_image(image, s.channels, s.image_size, resize=resize)[None]).to(s.device)  # (1,C,H,W)
    given = picture_size(image)
    size = s.image_size
    fitted = given if resize and given != (size, size) else None
    mask_t = None if mask is None else torch.from_numpy(load_mask(mask, size, fitted))[None, None].to(s.device)
    labels = None if s.label is None else torch.tensor([s.label], dtype=torch.long)
    c = s.choice
    x = edit(
        s.model,
        picture,
        s.schedule,
        strength,
        mask_t,
        sampler=c.name,
        steps=c.steps,
        spacing=c.spacing,
        resample=resample,
        generator=image_generators(seed, [0]),
        clip_x0=s.clip_x0,
        labels=labels,
        guidance=s.guidance,
        **model_kind(s.meta, dataclasses.replace(c, name="edit")),
    )
    extra = {
        "strength": repr(float(strength)),
        "resample": str(resample),
        "image_sha256": file_sha256(image),
        "mask_sha256": file_sha256(mask) if mask else "",
    }
    if fitted is not None:
        extra["resized_from"] = f"{fitted[0]}x{fitted[1]}"
    prov = s.provenance("edit", seed, extra)
    return save_png(out, to_uint8(x)[0], prov.text_chunks()), prov


def _edit_settings(
    settings: SampleSettings, strength: float | None, mask: PathLike | None, resample: int
) -> tuple[float, SampleSettings]:
    """The strength of an edit (1 with a mask when not given) and its settings: RePaint (``resample`` > 1) takes the
    ancestral step and needs a mask."""
    if strength is None:
        if mask is None:
            raise ParameterError(
                "{strength} is required without {mask}: e.g. {strength} 0.5 (0 keeps the picture, 1 regenerates it)"
            )
        strength = 1.0
    check_strength(strength)
    check_at_least("resample", resample, 1, " (1 = no resampling)")
    if resample > 1:
        if mask is None:
            raise ParameterError("{resample} needs {mask}: RePaint resampling harmonises generated and known pixels")
        if settings.sampler not in (None, "ddpm") or settings.options or settings.eta is not None:
            raise ParameterError("{resample} uses the ancestral DDPM step: drop {sampler}/{options}/{eta}")
        settings = dataclasses.replace(settings, sampler="ddpm")
    return strength, settings
