"""Images from a checkpoint, each reproducible from its PNG metadata: :func:`generate`, :func:`reproduce`,
:func:`interpolate` and :func:`edit_image` (the library behind ``ddpm sample`` and ``ddpm edit``).

Image i of a run depends only on (seed, i): it has its own generator (``image_generators``), so it is the
same at any batch size. Every PNG records, in ``ddpm:*`` text chunks, everything needed to make it again
(see :class:`Provenance`), and :func:`reproduce` does exactly that. Bad arguments raise
:class:`~ddpm.errors.ParameterError` naming the parameter; the CLI renders those names as its flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor
from tqdm.auto import tqdm

from .checkpoint import file_sha256, load_model, model_variance, resolve_checkpoint
from .diffusion import LEARNED_VARIANCES
from .editing import check_strength, edit
from .errors import ParameterError, UserError, check_at_least
from .images import (
    from_uint8,
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
from .provenance import Provenance, SamplerChoice
from .runtime import pick_device
from .sampling import (
    DEFAULT_SAMPLER,
    DETERMINISTIC_SAMPLER,
    SAMPLERS,
    Denoised,
    image_generators,
    randn,
    sample,
    sampler_options,
)
from .schedule import Schedule, spaced_timesteps
from .version import __version__

TRAJECTORY_COLUMNS = 10
PathLike = str | os.PathLike[str]


def default_sampler(deterministic: bool = False) -> tuple[str, str, int]:
    """``DEFAULT_SAMPLER`` (or ``DETERMINISTIC_SAMPLER``) as (name, spacing, steps); both are set by measurement."""
    name, spacing, steps = DETERMINISTIC_SAMPLER if deterministic else DEFAULT_SAMPLER
    return str(name), str(spacing), int(steps)


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
    raise UserError(f"unknown class {text!r}: choose an index 0..{len(class_names) - 1} or one of "
                    f"{', '.join(class_names)}")


def resolve_label(label: int | str | None, guidance: float | None, meta: Mapping[str, Any]) -> int | None:
    """The class index of ``label`` for a checkpoint with metadata ``meta``; guidance needs a label."""
    index = None if label is None else resolve_class(label, meta.get("class_names"))
    if guidance is not None and index is None:
        raise ParameterError("{guidance} needs {label}: guidance pushes samples toward a class")
    return index


# ---------------------------------------------------------------------------- the sampling path


def _typed_option(key: str, value: Any, default: Any) -> Any:
    """An option value given as text ("true", "3") -> the type of the sampler's default; other values as given."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ParameterError(f"{{options}} {key}={value}: expected true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(value)
        except ValueError:
            kind = "n integer" if isinstance(default, int) else " number"
            raise ParameterError(f"{{options}} {key}={value}: expected a{kind}") from None
    return value


def choose_sampler(timesteps: int, *, sampler: str | None = None, spacing: str | None = None,
                   steps: int | None = None, eta: float | None = None, options: Mapping[str, Any] | None = None,
                   deterministic: bool = False) -> SamplerChoice:
    """The sampler path asked for, with the measured defaults (``DEFAULT_SAMPLER``; ``DETERMINISTIC_SAMPLER``
    when ``deterministic`` and no ``sampler`` is given) filled in for a schedule of ``timesteps`` steps.

    ``options`` are the sampler's options except ``eta`` (see :func:`ddpm.sampler_options`); values given as
    text are converted to the type of the option's default.
    """
    d_name, d_spacing, d_steps = default_sampler(deterministic and sampler is None)
    name = sampler or d_name
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    steps = min(d_steps, timesteps) if steps is None else steps
    if not 1 <= steps <= timesteps:
        raise ParameterError(f"{{steps}} must lie in 1..{timesteps} (the checkpoint's T); got {steps}")
    accepted = sampler_options(name)
    chosen: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key == "eta":
            raise ParameterError("set eta with {eta}, not {options}")
        if key not in accepted:
            raise UserError(f"sampler {name!r} has no option {key!r}; its options: "
                            f"{', '.join(k for k in accepted if k != 'eta') or 'none'}")
        chosen[key] = _typed_option(key, value, accepted[key])
    if "eta" in accepted:
        value = float(accepted["eta"]) if eta is None else float(eta)
        if not 0.0 <= value <= 1.0:
            raise ParameterError(f"{{eta}} must lie in [0, 1] (0 deterministic, 1 like DDPM); got {eta}")
        chosen["eta"] = value
    elif eta is not None:
        with_eta = ", ".join(n for n in SAMPLERS if "eta" in sampler_options(n))
        raise ParameterError(f"{{eta}} is a noise level and sampler {name!r} has none: drop {{eta}} or pick one of "
                             f"{with_eta}")
    return SamplerChoice(name, spacing or d_spacing, steps, chosen)


def check_sampler(choice: SamplerChoice, schedule: Schedule) -> bool:
    """Validate the options by a dry run on a 1-pixel dummy; True when the sampler draws no noise."""
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    try:
        timesteps = spaced_timesteps(schedule, choice.steps, choice.spacing)
        SAMPLERS[choice.name](lambda x, t: Denoised(torch.zeros_like(x), x, torch.zeros_like(x), "learned-range"),
                              torch.zeros(1, 1, 1, 1), schedule, timesteps, g, None, **choice.options)
    except (ValueError, TypeError) as e:
        raise ParameterError(f"sampler {choice.name!r} refuses these settings ({e}): "
                             "fix {options}/{eta}/{steps}") from None
    return torch.equal(g.get_state(), before)


# ---------------------------------------------------------------------------- drawing


def draw(model: Any, schedule: Schedule, meta: Mapping[str, Any], choice: SamplerChoice, seed: int,
         indices: list[int], label: int | None, guidance: float | None, clip_x0: bool, device: torch.device,
         callback: Callable[[dict[str, Any]], None] | None = None, x_T: Tensor | None = None,
         cycle_classes: int | None = None) -> Tensor:
    """Images ``indices`` of ``seed``: (len(indices), C, H, W) in [-1, 1]. The one call every path shares.

    ``meta`` gives channels, image_size and prediction (a checkpoint's metadata). The label of every image is
    ``label``, or with ``cycle_classes=K`` image i's class is i mod K (one class per column of a grid).
    """
    c, size = int(meta["channels"]), int(meta["image_size"])
    labels = None
    if cycle_classes:
        labels = torch.tensor(indices, device=device) % cycle_classes
    elif label is not None:
        labels = torch.full((len(indices),), label, dtype=torch.long)
    return sample(model, (len(indices), c, size, size), schedule, sampler=choice.name, steps=choice.steps,
                  generator=image_generators(seed, indices), clip_x0=clip_x0, labels=labels, guidance=guidance,
                  spacing=choice.spacing, callback=callback, x_T=x_T, device=device, **model_kind(meta, choice))


def model_kind(meta: Mapping[str, Any], choice: SamplerChoice) -> dict[str, Any]:
    """What sampling needs to know of a checkpoint's network, as keywords of :func:`ddpm.sample`: its prediction,
    its learned variance (if any), and ``choice``'s options, where the ancestral sampler's ``variance`` defaults to
    the one the network was trained for (β for ``fixed-large``; the network's own for a learned one). Edits pass a
    choice named ``edit``: they keep the sampler's own default."""
    variance = model_variance(dict(meta))
    options = dict(choice.options)
    if choice.name == "ddpm" and variance == "fixed-large":
        options.setdefault("variance", "beta")
    return {"prediction": meta.get("prediction", "eps"),
            "learned_variance": variance if variance in LEARNED_VARIANCES else None, **options}


def draw_batches(model: Any, schedule: Schedule, meta: Mapping[str, Any], choice: SamplerChoice, seed: int,
                 num: int, *, batch_size: int, device: torch.device, label: int | None = None,
                 cycle_classes: int | None = None, guidance: float | None = None, clip_x0: bool = True,
                 progress: bool = False,
                 callback_for: Callable[[list[int]], Callable[[dict[str, Any]], None] | None] | None = None,
                 ) -> Iterator[tuple[list[int], Tensor]]:
    """Images 0..num-1 of ``seed``, ``batch_size`` at a time: yields (indices, images (B, C, H, W) in [-1, 1]).

    The batched loop of ``ddpm sample``, ``ddpm eval``, the training grids and ``--eval-every``; image i is the
    same at any batch size. ``callback_for(indices)`` gives a batch its sampler callback (or None); see
    :func:`draw` for the other arguments.
    """
    with tqdm(total=num, desc=f"sampling {choice.name}, {choice.steps} steps", unit="img", dynamic_ncols=True,
              disable=not progress) as bar:
        for start in range(0, num, batch_size):
            idx = list(range(start, min(num, start + batch_size)))
            callback = callback_for(idx) if callback_for is not None else None
            yield idx, draw(model, schedule, meta, choice, seed, idx, label, guidance, clip_x0, device, callback,
                            cycle_classes=cycle_classes)
            bar.update(len(idx))


def _check_out_dir(out: Path, names: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out} is a file: choose a directory")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise ParameterError(f"{out} already holds {clash[0]} (and {len(clash) - 1} more of the files this would "
                             "write): choose another {out} or pass {overwrite}")


def _scale(size: int) -> int:
    return max(1, 64 // size)


def generate(checkpoint: PathLike, out: PathLike, *, num: int = 64, seed: int = 0, sampler: str | None = None,
             spacing: str | None = None, steps: int | None = None, eta: float | None = None,
             options: Mapping[str, Any] | None = None, label: int | str | None = None, guidance: float | None = None,
             ema: bool = True, clip_x0: bool = True, device: str = "auto", batch_size: int = 256,
             npz: PathLike | None = None, trajectories: int = 0, overwrite: bool = False,
             progress: bool = False) -> list[Path]:
    """Write images 0..num-1 of ``seed`` as ``out/000000.png``, ... and ``out/grid.png``, each with its
    :class:`Provenance`; with ``trajectories=N`` also trajectory-<i>.png/.gif of the first N images, with ``npz``
    the images as a uint8 (num, H, W, C) array ``images``. Sampler arguments: see :func:`choose_sampler`.
    Returns the paths written."""
    check_at_least("num", num, 1)
    check_at_least("batch_size", batch_size, 1)
    check_at_least("trajectories", trajectories, 0)
    dev = pick_device(device)
    model, ckpt, schedule = load_model(checkpoint, use_ema=ema, device=dev)
    choice = choose_sampler(schedule.timesteps, sampler=sampler, spacing=spacing, steps=steps, eta=eta,
                            options=options)
    check_sampler(choice, schedule)
    out = Path(out)
    names = [f"{i:06d}.png" for i in range(num)]
    n_traj = min(num, trajectories)
    traj_names = [f"trajectory-{i:06d}.{ext}" for i in range(n_traj) for ext in ("png", "gif")]
    _check_out_dir(out, [*names, "grid.png", *traj_names], overwrite)
    if npz and Path(npz).exists() and not overwrite:
        raise ParameterError(f"{npz} already exists: choose another {{npz}} or pass {{overwrite}}")
    meta = ckpt.meta
    label_index = resolve_label(label, guidance, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    prov = Provenance("sample", seed, 0, choice, label_index, guidance, clip_x0, ema, file_sha256(ckpt.path))
    out.mkdir(parents=True, exist_ok=True)

    images = np.empty((num, size, size, c), np.uint8)
    paths: dict[int, list[dict[str, Any]]] = {}  # batch start -> that batch's trajectory states

    def recorder(idx: list[int]) -> Callable[[dict[str, Any]], None] | None:
        rows = [j for j, i in enumerate(idx) if i < n_traj]
        if not rows:
            return None
        path = paths.setdefault(idx[0], [])
        return lambda d: path.append({"t": int(d["t"]), "x": to_uint8(d["x"][rows]), "x0": to_uint8(d["x0"][rows])})

    for idx, x in draw_batches(model, schedule, meta, choice, seed, num, batch_size=batch_size, device=dev,
                               label=label_index, guidance=guidance, clip_x0=clip_x0, progress=progress,
                               callback_for=recorder):
        batch = to_uint8(x)
        for j, i in enumerate(idx):
            images[i] = batch[j]
            save_png(out / names[i], batch[j], prov.of("sample", i).text_chunks())
        path = paths.pop(idx[0], [])
        for k, j in enumerate(j for j, i in enumerate(idx) if i < n_traj):
            _write_trajectory(out, idx[j], [(p["t"], p["x"][k], p["x0"][k]) for p in path], batch[j],
                              prov.of("trajectory", idx[j]).text_chunks())
    save_png(out / "grid.png", make_grid(images, pad_value=128, scale=_scale(size)),
             prov.of("grid", f"0-{num - 1}").text_chunks())
    if npz:
        np.savez_compressed(npz, images=images)
    return [*(out / n for n in names), out / "grid.png", *(out / n for n in traj_names),
            *([Path(npz)] if npz else [])]


def _write_trajectory(out: Path, index: int, path: list[tuple[int, np.ndarray, np.ndarray]], final: np.ndarray,
                      meta: dict[str, str]) -> None:
    """trajectory-<index>.png (x_t over x̂_0, ~10 states ending in the image) and .gif (one frame per call)."""
    scale = _scale(final.shape[0])
    # The path's states: one per model call (x_t, x̂_0 there), then the final image as both rows.
    states = [(x, x0) for _, x, x0 in path] + [(final, final)]
    cols = trajectory_columns(len(states), TRAJECTORY_COLUMNS)
    strip = trajectory_strip([states[k][0] for k in cols], [states[k][1] for k in cols], scale=scale)
    labels = ",".join(str(path[k][0]) if k < len(path) else "final" for k in cols)
    save_png(out / f"trajectory-{index:06d}.png", strip, {**meta, "ddpm:columns": labels})
    frames = [_caption(side_by_side(x, x0, scale=scale), f"{n + 1}/{len(path)} t={t}")
              for n, (t, x, x0) in enumerate(path)]
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


def interpolate(checkpoint: PathLike, out: PathLike, seed_a: int, seed_b: int, *, frames: int = 8,
                sampler: str | None = None, spacing: str | None = None, steps: int | None = None,
                eta: float | None = None, options: Mapping[str, Any] | None = None, label: int | str | None = None,
                guidance: float | None = None, ema: bool = True, clip_x0: bool = True, device: str = "auto",
                batch_size: int = 256, overwrite: bool = False) -> Path:
    """Write ``out/interpolation.png``: ``frames`` images along the spherical interpolation between the starting
    noise of image 0 of ``seed_a`` and of ``seed_b``, with a deterministic sampler (``DETERMINISTIC_SAMPLER``
    unless ``sampler`` is given); its ends are image 0 of :func:`generate` with those seeds."""
    check_at_least("frames", frames, 2, " (the two ends)")
    check_at_least("batch_size", batch_size, 1)
    dev = pick_device(device)
    model, ckpt, schedule = load_model(checkpoint, use_ema=ema, device=dev)
    choice = choose_sampler(schedule.timesteps, sampler=sampler, spacing=spacing, steps=steps, eta=eta,
                            options=options, deterministic=True)
    if not check_sampler(choice, schedule):
        raise ParameterError(f"{{interpolate}} needs a deterministic sampler, and {choice.name!r} with these options "
                             "adds noise: drop {sampler} (UniPC is used), or use dpmpp-2m, dpmpp-3m, or ddim, "
                             "dpmpp-2m-sde or sa-solver with {eta} 0")
    out = Path(out)
    _check_out_dir(out, ["interpolation.png"], overwrite)
    meta = ckpt.meta
    label_index = resolve_label(label, guidance, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    # x_T of image 0 of each seed: the very draw `generate(seed=S)` starts image 0 from.
    ends = [randn((1, c, size, size), image_generators(s, [0])) for s in (seed_a, seed_b)]
    x_T = slerp(ends[0], ends[1], [k / (frames - 1) for k in range(frames)])
    pictures = []
    for start in range(0, frames, batch_size):
        idx = list(range(start, min(frames, start + batch_size)))
        # No noise is drawn by a deterministic sampler; the generators only satisfy the signature.
        x = draw(model, schedule, meta, choice, seed_a, idx, label_index, guidance, clip_x0, dev, x_T=x_T[idx])
        pictures.append(to_uint8(x))
    strip = make_grid(np.concatenate(pictures), nrow=frames, pad_value=128, scale=_scale(size))
    out.mkdir(parents=True, exist_ok=True)
    prov = Provenance("interpolation", seed_a, 0, choice, label_index, guidance, clip_x0, ema, file_sha256(ckpt.path),
                      {"seed_b": str(seed_b), "frames": str(frames)})
    return save_png(out / "interpolation.png", strip, prov.text_chunks())


def reproduce(checkpoint: PathLike, image: PathLike, out: PathLike, *, device: str = "auto",
              overwrite: bool = False) -> tuple[Path, Provenance]:
    """Make ``image`` (a sample PNG written by :func:`generate`) again from its metadata, as ``out/<its name>``;
    ``checkpoint`` must be the file it was made with (checked by SHA-256). Returns (the path, the provenance
    read from ``image``, whose ``version`` says which ddpm made it)."""
    src = Path(image)
    if not src.is_file():
        raise ParameterError(f"{{image}} {src} does not exist: pass a PNG written by ddpm sample")
    try:
        info = read_png_metadata(src)
    except OSError:
        raise ParameterError(f"{{image}} {src} is not a readable PNG: pass a PNG written by ddpm sample") from None
    if "ddpm:seed" not in info or "ddpm:index" not in info or "ddpm:checkpoint_sha256" not in info:
        raise UserError(f"{src} has no ddpm metadata (no ddpm:seed/ddpm:index text chunks): only PNGs written by "
                        "ddpm sample can be reproduced")
    kind = info.get("ddpm:kind", "sample")
    if kind != "sample":
        raise UserError(f"{src} is a {kind} picture, not a sample: reproduce the sample images "
                        "(000000.png, ...) it was made with")
    path = resolve_checkpoint(checkpoint)
    sha, recorded = file_sha256(path), info["ddpm:checkpoint_sha256"]
    if sha != recorded:
        raise UserError(f"{path} (sha256 {sha[:12]}) is not the checkpoint {src.name} was made with "
                        f"(sha256 {recorded[:12]}): pass that checkpoint")
    out = Path(out)
    _check_out_dir(out, [src.name], overwrite)
    try:
        old = Provenance.from_text_chunks(info)
        index = int(old.index)
    except (KeyError, ValueError) as e:
        raise UserError(f"{src} has damaged ddpm metadata ({type(e).__name__}: {e}): it cannot be reproduced") from None
    dev = pick_device(device)
    model, ckpt, schedule = load_model(path, use_ema=old.ema, device=dev)
    check_sampler(old.choice, schedule)
    x = draw(model, schedule, ckpt.meta, old.choice, old.seed, [index], old.label, old.guidance, old.clip_x0, dev)
    out.mkdir(parents=True, exist_ok=True)
    again = dataclasses.replace(old, index=index, version=__version__)
    return save_png(out / src.name, to_uint8(x)[0], again.text_chunks()), old


def edit_image(checkpoint: PathLike, image: PathLike, out: PathLike, *, strength: float | None = None,
               mask: PathLike | None = None, resample: int = 1, seed: int = 0, sampler: str | None = None,
               spacing: str | None = None, steps: int | None = None, eta: float | None = None,
               options: Mapping[str, Any] | None = None, label: int | str | None = None,
               guidance: float | None = None, ema: bool = True, clip_x0: bool = True, device: str = "auto",
               overwrite: bool = False, resize: bool = True) -> tuple[Path, Provenance]:
    """SDEdit (no ``mask``) or inpaint (white pixels of ``mask`` regenerated, RePaint with ``resample`` > 1) the
    picture ``image`` with a checkpoint; writes the PNG ``out`` with its :class:`Provenance`. ``steps`` counts
    the full path; an edit uses those below round(strength·(T−1)). ``strength`` defaults to 1 with a mask.

    A picture of another size than the model's is brought to it as training does (shorter side to the model's size,
    centre crop, Lanczos: :func:`ddpm.images.fit_square`), and its provenance records ``resized_from`` (WxH); a mask
    may then have the picture's size or the model's. ``resize=False`` refuses such a picture instead.
    Returns (the path, its provenance)."""
    if strength is None:
        if mask is None:
            raise ParameterError("{strength} is required without {mask}: e.g. {strength} 0.5 (0 keeps the picture, "
                                 "1 regenerates it)")
        strength = 1.0
    check_strength(strength)
    check_at_least("resample", resample, 1, " (1 = no resampling)")
    if resample > 1:
        if mask is None:
            raise ParameterError("{resample} needs {mask}: RePaint resampling harmonises generated and known pixels")
        if sampler not in (None, "ddpm") or options or eta is not None:
            raise ParameterError("{resample} uses the ancestral DDPM step: drop {sampler}/{options}/{eta}")
        sampler = "ddpm"
    out = Path(out)
    if out.is_dir():
        raise ParameterError(f"{{out}} {out} is a directory: give the PNG file to write")
    if out.exists() and not overwrite:
        raise ParameterError(f"{out} already exists: choose another {{out}} or pass {{overwrite}}")
    dev = pick_device(device)
    model, ckpt, schedule = load_model(checkpoint, use_ema=ema, device=dev)
    choice = choose_sampler(schedule.timesteps, sampler=sampler, spacing=spacing, steps=steps, eta=eta,
                            options=options)
    check_sampler(choice, schedule)
    meta = ckpt.meta
    label_index = resolve_label(label, guidance, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    picture = from_uint8(load_image(image, c, size, resize=resize)[None]).to(dev)  # (1, C, H, W)
    given = picture_size(image)
    fitted = given if resize and given != (size, size) else None
    mask_t = None if mask is None else torch.from_numpy(load_mask(mask, size, fitted))[None, None].to(dev)  # (1,1,H,W)
    labels = None if label_index is None else torch.tensor([label_index], dtype=torch.long)
    x = edit(model, picture, schedule, strength, mask_t, sampler=choice.name, steps=choice.steps,
             spacing=choice.spacing, resample=resample, generator=image_generators(seed, [0]), clip_x0=clip_x0,
             labels=labels, guidance=guidance, **model_kind(meta, dataclasses.replace(choice, name="edit")))
    extra = {"strength": repr(float(strength)), "resample": str(resample), "image_sha256": file_sha256(image),
             "mask_sha256": file_sha256(mask) if mask else ""}
    if fitted is not None:
        extra["resized_from"] = f"{fitted[0]}x{fitted[1]}"
    prov = Provenance("edit", seed, 0, choice, label_index, guidance, clip_x0, ema, file_sha256(ckpt.path), extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_png(out, to_uint8(x)[0], prov.text_chunks()), prov
