"""``ddpm sample`` and ``ddpm edit``: images from a checkpoint, each reproducible from its PNG metadata.

Image i of a run depends only on (seed, i): it has its own generator (``image_generators``), so it is the
same at any batch size. Every PNG records, in ``ddpm:*`` text chunks, everything needed to make it again
(see :func:`image_metadata`), and ``ddpm sample --reproduce IMAGE.png`` does exactly that.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import UserError

TRAJECTORY_COLUMNS = 10


def _default_sampler(deterministic: bool = False) -> tuple[str, str, int]:
    """``ddpm.sampling.DEFAULT_SAMPLER`` (or ``DETERMINISTIC_SAMPLER``) as (name, spacing, steps), read when
    called: both are set by measurement."""
    from .sampling import DEFAULT_SAMPLER, DETERMINISTIC_SAMPLER

    name, spacing, steps = DETERMINISTIC_SAMPLER if deterministic else DEFAULT_SAMPLER
    return str(name), str(spacing), int(steps)


def _add_sampler_flags(s: argparse.ArgumentParser, what: str) -> None:
    """Flags shared by ``sample`` and ``edit``: checkpoint, sampler path, class/guidance, device."""
    from .sampling import SAMPLERS
    from .schedule import SPACINGS

    name, spacing, steps = _default_sampler()
    s.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint, or a run directory (its latest)")
    s.add_argument("--sampler", default=None, choices=list(SAMPLERS),
                   help=f"sampler (default: {name}, chosen by measurement)")
    s.add_argument("--spacing", default=None, choices=list(SPACINGS),
                   help=f"how the sampling steps are spread over the T training steps (default: {spacing})")
    s.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps{what} (default: {steps}, for every sampler, capped at T)")
    s.add_argument("--eta", type=float, default=None,
                   help="noise level in [0, 1] of ddim (default 0), dpmpp-2m-sde and sa-solver (default 1): "
                        "0 deterministic (the probability-flow ODE), 1 as random as DDPM (the reverse SDE)")
    listed = "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in opts.items())
                       for n in SAMPLERS if (opts := {k: v for k, v in _sampler_options(n).items() if k != "eta"}))
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a sampler-specific option, repeatable (option=default): {listed or 'none'}")
    s.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name, for a model trained with --class-cond")
    s.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight with --class (0: unconditional, 1: conditional, "
                        ">1: stronger; default 1)")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    s.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    s.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    s.add_argument("--overwrite", action="store_true", help="replace files that are already there")


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm sample`` and its flags."""
    s = sub.add_parser(
        "sample", help="generate images from a checkpoint",
        description="Generate images from a checkpoint (EMA weights by default). Image i depends only on "
                    "(--seed, i), at any --batch-size. Every PNG records in text chunks how to make it again; "
                    "--reproduce IMAGE.png does so. --trajectory draws the sampling path, --interpolate walks "
                    "between the starting noise of two seeds.")
    _add_sampler_flags(s, "")
    s.add_argument("--num", type=int, default=None, help="number of images (default: 64)")
    s.add_argument("--out", required=True, help="directory for 000000.png, ... and grid.png")
    s.add_argument("--seed", type=int, default=None, help="image i depends only on (seed, i) (default: 0)")
    s.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    s.add_argument("--npz", default=None, help="also write the images as uint8 NHWC array 'images' in this .npz")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--reproduce", default=None, metavar="IMAGE.png",
                   help="make IMAGE.png (written by ddpm sample) again, from its metadata, as --out/<its name>; "
                        "--checkpoint must be the file it was made with (checked by SHA-256)")
    s.add_argument("--trajectory", action="store_true",
                   help="also write trajectory-000000.png (rows x_t and predicted x0, ~10 steps ending in the "
                        "image) and trajectory-000000.gif (every model call a frame) for the first images")
    s.add_argument("--trajectory-count", type=int, default=4, metavar="N",
                   help="with --trajectory: how many images get pictures (default: 4)")
    s.add_argument("--interpolate", type=int, nargs=2, default=None, metavar=("SEED_A", "SEED_B"),
                   help="instead of --num images, write interpolation.png: spherical interpolation between the "
                        "starting noise of image 0 of SEED_A and of SEED_B (needs a deterministic sampler); "
                        "its ends are image 0 of --seed SEED_A / SEED_B")
    s.add_argument("--frames", type=int, default=8, help="with --interpolate: number of frames (default: 8)")


def add_edit_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm edit`` and its flags."""
    s = sub.add_parser(
        "edit", help="edit an image with a checkpoint (SDEdit, inpainting)",
        description="Edit a picture the size of the model's images. Without --mask: SDEdit (noise the picture "
                    "to step round(strength*(T-1)) and denoise it). With --mask: regenerate the white pixels "
                    "and keep the black ones exactly (RePaint resampling with --resample).")
    _add_sampler_flags(s, " of the full path; an edit uses those below round(strength*(T-1))")
    s.add_argument("--image", required=True, help="the picture to edit (any mode; converted to the model's channels)")
    s.add_argument("--out", required=True, help="the edited PNG to write")
    s.add_argument("--strength", type=float, default=None,
                   help="in [0, 1]: 0 keeps the picture, 1 regenerates it from noise (required without --mask; "
                        "default 1 with --mask)")
    s.add_argument("--mask", default=None, help="same-size picture: white (>= 128 gray) = regenerate, black = keep")
    s.add_argument("--resample", type=int, default=1, metavar="R",
                   help="with --mask: RePaint, redo every ancestral step R times (uses the ddpm sampler; default 1)")
    s.add_argument("--seed", type=int, default=0, help="the edit depends only on the seed (default: 0)")


def resolve_class(value: str, class_names: list[str] | None) -> int:
    """A class given as an index ("3") or a name ("Sneaker", any case) -> its index."""
    if not class_names:
        raise UserError("--class needs a class-conditional checkpoint; this one was trained without --class-cond")
    if value.strip().lstrip("-").isdigit():
        k = int(value)
        if not 0 <= k < len(class_names):
            raise UserError(f"--class {k} is out of range: this model has classes 0..{len(class_names) - 1}")
        return k
    lowered = [n.lower() for n in class_names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    raise UserError(f"unknown class {value!r}: choose an index 0..{len(class_names) - 1} or one of "
                    f"{', '.join(class_names)}")


# ---------------------------------------------------------------------------- the sampling path


@dataclass
class SamplerChoice:
    """A sampler with its path: name, spacing, steps and sampler options (``eta`` included where it has one)."""

    name: str
    spacing: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)


def _sampler_options(name: str) -> dict[str, Any]:
    """The options a sampler function accepts (the keywords after the common six) and their defaults."""
    from .sampling import SAMPLERS

    params = list(inspect.signature(SAMPLERS[name]).parameters.values())[6:]
    return {p.name: p.default for p in params}


def _parse_value(key: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--option {key}={text}: expected true or false")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise UserError(f"--option {key}={text}: expected a{'n integer' if isinstance(default, int) else ' number'}"
                            ) from None
    return text


def parse_options(name: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> options of sampler ``name``, typed like the sampler's defaults."""
    accepted = _sampler_options(name)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UserError(f"--option {pair!r} is not KEY=VALUE: write e.g. --option lower_order_final=true")
        if key == "eta":
            raise UserError("set eta with --eta, not --option")
        if key not in accepted:
            raise UserError(f"sampler {name!r} has no option {key!r}; its options: "
                            f"{', '.join(k for k in accepted if k != 'eta') or 'none'}")
        out[key] = _parse_value(key, value, accepted[key])
    return out


def choose_sampler(args: argparse.Namespace, timesteps: int, deterministic: bool = False) -> SamplerChoice:
    """The sampler, spacing, steps and options the flags ask for, with the measured defaults filled in
    (the deterministic default when ``deterministic`` and no --sampler is given)."""
    from .sampling import SAMPLERS

    d_name, d_spacing, d_steps = _default_sampler(deterministic and args.sampler is None)
    name = args.sampler or d_name
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    steps = args.steps if args.steps is not None else min(d_steps, timesteps)
    if not 1 <= steps <= timesteps:
        raise UserError(f"--steps must lie in 1..{timesteps} (the checkpoint's T); got {steps}")
    options = parse_options(name, args.option)
    accepted = _sampler_options(name)
    if "eta" in accepted:
        eta = float(accepted["eta"]) if args.eta is None else float(args.eta)
        if not 0.0 <= eta <= 1.0:
            raise UserError(f"--eta must lie in [0, 1] (0 deterministic, 1 like DDPM); got {args.eta}")
        options["eta"] = eta
    elif args.eta is not None:
        with_eta = ", ".join(n for n in SAMPLERS if "eta" in _sampler_options(n))
        raise UserError(f"--eta is a noise level and sampler {name!r} has none: drop --eta or pick one of {with_eta}")
    return SamplerChoice(name, args.spacing or d_spacing, steps, options)


def check_sampler(choice: SamplerChoice, schedule: Any) -> bool:
    """Validate the options by a dry run on a 1-pixel dummy; True when the sampler draws no noise."""
    from .sampling import SAMPLERS
    from .schedule import spaced_timesteps

    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    try:
        timesteps = spaced_timesteps(schedule, choice.steps, choice.spacing)
        SAMPLERS[choice.name](lambda x, t: (torch.zeros_like(x), x), torch.zeros(1, 1, 1, 1), schedule,
                              timesteps, g, None, **choice.options)
    except (ValueError, TypeError) as e:
        raise UserError(f"sampler {choice.name!r} refuses these settings ({e}): fix --option/--eta/--steps") from None
    return torch.equal(g.get_state(), before)


# ---------------------------------------------------------------------------- metadata


def image_metadata(kind: str, seed: int, index: int | str, choice: SamplerChoice, label: int | None,
                   guidance: float | None, clip_x0: bool, ema: bool, checkpoint_sha256: str,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    """The ``ddpm:*`` text chunks of a PNG, in a fixed order (so a reproduced file is byte-identical).

    Keys: kind (sample, grid, trajectory, interpolation, edit), seed, index, sampler, spacing, steps,
    eta (samplers that have one), options (JSON, when any besides eta),
    guidance, class, clip_x0, ema, checkpoint_sha256, version, then ``extra``.
    """
    from . import __version__

    meta = {"ddpm:kind": kind, "ddpm:seed": str(seed), "ddpm:index": str(index), "ddpm:sampler": choice.name,
            "ddpm:spacing": choice.spacing, "ddpm:steps": str(choice.steps)}
    rest = {k: v for k, v in choice.options.items() if k != "eta"}
    if "eta" in choice.options:
        meta["ddpm:eta"] = repr(float(choice.options["eta"]))
    if rest:
        meta["ddpm:options"] = json.dumps(rest, sort_keys=True)
    meta.update({
        "ddpm:guidance": "" if guidance is None else repr(float(guidance)),
        "ddpm:class": "" if label is None else str(label),
        "ddpm:clip_x0": str(bool(clip_x0)),
        "ddpm:ema": str(bool(ema)),
        "ddpm:checkpoint_sha256": checkpoint_sha256,
        "ddpm:version": __version__,
    })
    meta.update({f"ddpm:{k}": v for k, v in (extra or {}).items()})
    return meta


# ---------------------------------------------------------------------------- drawing


def _draw(model: Any, schedule: Any, meta: dict[str, Any], choice: SamplerChoice, seed: int, indices: list[int],
          label: int | None, guidance: float | None, clip_x0: bool, device: torch.device,
          callback: Callable[[dict[str, Any]], None] | None = None, x_T: Tensor | None = None) -> Tensor:
    """Images ``indices`` of ``seed``: (len(indices), C, H, W) in [-1, 1]. The one call every path shares."""
    from .sampling import image_generators, sample

    c, size = int(meta["channels"]), int(meta["image_size"])
    labels = None if label is None else torch.full((len(indices),), label, dtype=torch.long)
    return sample(model, (len(indices), c, size, size), schedule, sampler=choice.name, steps=choice.steps,
                  generator=image_generators(seed, indices), clip_x0=clip_x0,
                  prediction=meta.get("prediction", "eps"), labels=labels, guidance=guidance,
                  spacing=choice.spacing, callback=callback, x_T=x_T, device=device, **choice.options)


def _label_and_guidance(args: argparse.Namespace, meta: dict[str, Any]) -> int | None:
    label = None if args.class_ is None else resolve_class(args.class_, meta.get("class_names"))
    if args.guidance is not None and label is None:
        raise UserError("--guidance needs --class: guidance pushes samples toward a class")
    return label


def _check_out_dir(out: Path, names: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise UserError(f"{out} already holds {clash[0]} (and {len(clash) - 1} more of the files this would write): "
                        "choose another --out or pass --overwrite")


def _scale(size: int) -> int:
    return max(1, 64 // size)


def cmd_sample(args: argparse.Namespace) -> int:
    """``ddpm sample``: numbered images and a grid, or --reproduce, or --interpolate."""
    if args.reproduce is not None:
        return _reproduce(args)
    if args.interpolate is not None:
        return _interpolate(args)
    from .checkpoint import file_sha256, load_model
    from .images import make_grid, save_png, to_uint8
    from .train import pick_device

    num = 64 if args.num is None else args.num
    seed = 0 if args.seed is None else args.seed
    if num < 1:
        raise UserError(f"--num must be at least 1; got {num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.trajectory and args.trajectory_count < 1:
        raise UserError(f"--trajectory-count must be at least 1; got {args.trajectory_count}")
    device = pick_device(args.device)
    model, ckpt, schedule = load_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    choice = choose_sampler(args, schedule.timesteps)
    check_sampler(choice, schedule)
    out = Path(args.out)
    names = [f"{i:06d}.png" for i in range(num)]
    n_traj = min(num, args.trajectory_count) if args.trajectory else 0
    traj_names = [f"trajectory-{i:06d}.{ext}" for i in range(n_traj) for ext in ("png", "gif")]
    _check_out_dir(out, [*names, "grid.png", *traj_names], args.overwrite)
    if args.npz and Path(args.npz).exists() and not args.overwrite:
        raise UserError(f"{args.npz} already exists: choose another --npz or pass --overwrite")
    meta = ckpt.meta
    label = _label_and_guidance(args, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    sha = file_sha256(ckpt.path)
    out.mkdir(parents=True, exist_ok=True)

    images = np.empty((num, size, size, c), np.uint8)
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, desc=f"sampling {choice.name}, {choice.steps} steps", unit="img", dynamic_ncols=True)
    for start in range(0, num, args.batch_size):
        idx = list(range(start, min(num, start + args.batch_size)))
        rows = [j for j, i in enumerate(idx) if i < n_traj]
        path: list[dict[str, Any]] = []

        def record(d: dict[str, Any], rows: list[int] = rows, path: list[dict[str, Any]] = path) -> None:
            path.append({"t": int(d["t"]), "x": to_uint8(d["x"][rows]), "x0": to_uint8(d["x0"][rows])})

        x = _draw(model, schedule, meta, choice, seed, idx, label, args.guidance, not args.no_clip, device,
                  callback=record if rows else None)
        batch = to_uint8(x)
        for j, i in enumerate(idx):
            images[i] = batch[j]
            save_png(out / names[i], batch[j], image_metadata("sample", seed, i, choice, label, args.guidance,
                                                              not args.no_clip, not args.no_ema, sha))
        for k, j in enumerate(rows):
            tmeta = image_metadata("trajectory", seed, idx[j], choice, label, args.guidance, not args.no_clip,
                                   not args.no_ema, sha)
            _write_trajectory(out, idx[j], [(p["t"], p["x"][k], p["x0"][k]) for p in path], batch[j], tmeta)
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    save_png(out / "grid.png", make_grid(images, pad_value=128, scale=_scale(size)),
             image_metadata("grid", seed, f"0-{num - 1}", choice, label, args.guidance, not args.no_clip,
                            not args.no_ema, sha))
    if args.npz:
        np.savez_compressed(args.npz, images=images)
    extra = f", {n_traj} trajectories" if n_traj else ""
    print(f"wrote {num} images and grid.png to {out}{extra}" + (f", and {args.npz}" if args.npz else ""))
    return 0


def _write_trajectory(out: Path, index: int, path: list[tuple[int, np.ndarray, np.ndarray]], final: np.ndarray,
                      meta: dict[str, str]) -> None:
    """trajectory-<index>.png (x_t over x̂_0, ~10 states ending in the image) and .gif (one frame per call)."""
    from .images import save_gif, save_png, side_by_side, trajectory_columns, trajectory_strip

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
    from PIL import Image, ImageDraw

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


def _interpolate(args: argparse.Namespace) -> int:
    from .checkpoint import file_sha256, load_model
    from .images import make_grid, save_png, to_uint8
    from .sampling import image_generators, randn
    from .train import pick_device

    if args.num is not None or args.seed is not None or args.trajectory or args.npz:
        raise UserError("--interpolate makes interpolation.png only: drop --num/--seed/--trajectory/--npz")
    if args.frames < 2:
        raise UserError(f"--frames must be at least 2 (the two ends); got {args.frames}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {args.batch_size}")
    seed_a, seed_b = args.interpolate
    device = pick_device(args.device)
    model, ckpt, schedule = load_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    choice = choose_sampler(args, schedule.timesteps, deterministic=True)
    if not check_sampler(choice, schedule):
        raise UserError(f"--interpolate needs a deterministic sampler, and {choice.name!r} with these options adds "
                        "noise: drop --sampler (UniPC is used), or use dpmpp-2m, dpmpp-3m, or ddim, dpmpp-2m-sde "
                        "or sa-solver with --eta 0")
    out = Path(args.out)
    _check_out_dir(out, ["interpolation.png"], args.overwrite)
    meta = ckpt.meta
    label = _label_and_guidance(args, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    # x_T of image 0 of each seed: the very draw `ddpm sample --seed S` starts image 0 from.
    ends = [randn((1, c, size, size), image_generators(s, [0])) for s in (seed_a, seed_b)]
    x_T = slerp(ends[0], ends[1], [k / (args.frames - 1) for k in range(args.frames)])
    pictures = []
    for start in range(0, args.frames, args.batch_size):
        idx = list(range(start, min(args.frames, start + args.batch_size)))
        # No noise is drawn by a deterministic sampler; the generators only satisfy the signature.
        x = _draw(model, schedule, meta, choice, seed_a, idx, label, args.guidance, not args.no_clip, device,
                  x_T=x_T[idx])
        pictures.append(to_uint8(x))
    strip = make_grid(np.concatenate(pictures), nrow=args.frames, pad_value=128, scale=_scale(size))
    out.mkdir(parents=True, exist_ok=True)
    info = image_metadata("interpolation", seed_a, 0, choice, label, args.guidance, not args.no_clip,
                          not args.no_ema, file_sha256(ckpt.path),
                          {"seed_b": str(seed_b), "frames": str(args.frames)})
    save_png(out / "interpolation.png", strip, info)
    print(f"wrote {out / 'interpolation.png'} ({args.frames} frames from seed {seed_a} to seed {seed_b})")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from . import __version__
    from .checkpoint import file_sha256, load_model, resolve_checkpoint
    from .images import read_png_metadata, save_png, to_uint8
    from .train import pick_device

    src = Path(args.reproduce)
    given = [flag for flag, value in (("--sampler", args.sampler), ("--spacing", args.spacing),
                                      ("--steps", args.steps), ("--eta", args.eta), ("--option", args.option),
                                      ("--class", args.class_), ("--guidance", args.guidance),
                                      ("--no-ema", args.no_ema), ("--no-clip", args.no_clip), ("--num", args.num),
                                      ("--seed", args.seed), ("--trajectory", args.trajectory),
                                      ("--interpolate", args.interpolate), ("--npz", args.npz))
             if value is not None and value is not False and value != []]
    if given:
        raise UserError(f"--reproduce takes every setting from the image's metadata: drop {' '.join(given)}")
    if not src.is_file():
        raise UserError(f"--reproduce {src} does not exist: pass a PNG written by ddpm sample")
    try:
        info = read_png_metadata(src)
    except OSError:
        raise UserError(f"--reproduce {src} is not a readable PNG: pass a PNG written by ddpm sample") from None
    if "ddpm:seed" not in info or "ddpm:index" not in info or "ddpm:checkpoint_sha256" not in info:
        raise UserError(f"{src} has no ddpm metadata (no ddpm:seed/ddpm:index text chunks): only PNGs written by "
                        "ddpm sample can be reproduced")
    kind = info.get("ddpm:kind", "sample")
    if kind != "sample":
        raise UserError(f"{src} is a {kind} picture, not a sample: reproduce the sample images "
                        "(000000.png, ...) it was made with")
    path = resolve_checkpoint(args.checkpoint)
    sha, recorded = file_sha256(path), info["ddpm:checkpoint_sha256"]
    if sha != recorded:
        raise UserError(f"{path} (sha256 {sha[:12]}) is not the checkpoint {src.name} was made with "
                        f"(sha256 {recorded[:12]}): pass that checkpoint")
    out = Path(args.out)
    _check_out_dir(out, [src.name], args.overwrite)
    try:
        seed, index, steps = int(info["ddpm:seed"]), int(info["ddpm:index"]), int(info["ddpm:steps"])
        options = json.loads(info.get("ddpm:options", "{}"))
        if "ddpm:eta" in info:
            options["eta"] = float(info["ddpm:eta"])
        # Images from before spacing was recorded were sampled with sample()'s own default, linspace.
        choice = SamplerChoice(info["ddpm:sampler"], info.get("ddpm:spacing", "linspace"), steps, options)
        guidance = float(info["ddpm:guidance"]) if info.get("ddpm:guidance") else None
        label = int(info["ddpm:class"]) if info.get("ddpm:class") else None
        ema, clip = info.get("ddpm:ema", "True") == "True", info.get("ddpm:clip_x0", "True") == "True"
    except (KeyError, ValueError) as e:
        raise UserError(f"{src} has damaged ddpm metadata ({type(e).__name__}: {e}): it cannot be reproduced") from None
    device = pick_device(args.device)
    model, ckpt, schedule = load_model(path, use_ema=ema, device=device)
    check_sampler(choice, schedule)
    x = _draw(model, schedule, ckpt.meta, choice, seed, [index], label, guidance, clip, device)
    out.mkdir(parents=True, exist_ok=True)
    save_png(out / src.name, to_uint8(x)[0], image_metadata("sample", seed, index, choice, label, guidance, clip,
                                                            ema, sha))
    if info.get("ddpm:version", __version__) != __version__:
        print(f"note: {src.name} was made by ddpm {info['ddpm:version']}, this is {__version__}; the pixels may "
              "differ if sampling changed in between", file=sys.stderr)
    print(f"wrote {out / src.name} (seed {seed}, image {index})")
    return 0


# ---------------------------------------------------------------------------- ddpm edit


def cmd_edit(args: argparse.Namespace) -> int:
    """``ddpm edit``: SDEdit or inpaint one picture; writes one PNG with metadata."""
    from .checkpoint import file_sha256, load_model
    from .editing import check_strength, edit
    from .images import from_uint8, load_image, load_mask, save_png, to_uint8
    from .sampling import image_generators
    from .train import pick_device

    strength = args.strength
    if strength is None:
        if args.mask is None:
            raise UserError("--strength is required without --mask: e.g. --strength 0.5 (0 keeps the picture, "
                            "1 regenerates it)")
        strength = 1.0
    check_strength(strength)
    if args.resample < 1:
        raise UserError(f"--resample must be at least 1 (1 = no resampling); got {args.resample}")
    if args.resample > 1:
        if args.mask is None:
            raise UserError("--resample needs --mask: RePaint resampling harmonises generated and known pixels")
        if args.sampler not in (None, "ddpm") or args.option or args.eta is not None:
            raise UserError("--resample uses the ancestral DDPM step: drop --sampler/--option/--eta")
        args.sampler = "ddpm"
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: give the PNG file to write")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists: choose another --out or pass --overwrite")
    device = pick_device(args.device)
    model, ckpt, schedule = load_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    choice = choose_sampler(args, schedule.timesteps)
    check_sampler(choice, schedule)
    meta = ckpt.meta
    label = _label_and_guidance(args, meta)
    c, size = int(meta["channels"]), int(meta["image_size"])
    image = from_uint8(load_image(args.image, c, size)[None]).to(device)  # (1, C, H, W)
    mask = None
    if args.mask is not None:
        mask = torch.from_numpy(load_mask(args.mask, size))[None, None].to(device)  # (1, 1, H, W)
    labels = None if label is None else torch.tensor([label], dtype=torch.long)
    x = edit(model, image, schedule, strength, mask, sampler=choice.name, steps=choice.steps, spacing=choice.spacing,
             resample=args.resample, generator=image_generators(args.seed, [0]),
             prediction=meta.get("prediction", "eps"), clip_x0=not args.no_clip, labels=labels,
             guidance=args.guidance, **choice.options)
    extra = {"strength": repr(float(strength)), "resample": str(args.resample),
             "image_sha256": file_sha256(args.image), "mask_sha256": file_sha256(args.mask) if args.mask else ""}
    info = image_metadata("edit", args.seed, 0, choice, label, args.guidance, not args.no_clip, not args.no_ema,
                          file_sha256(ckpt.path), extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(out, to_uint8(x)[0], info)
    what = "inpainted" if mask is not None else f"SDEdit at strength {strength:g}"
    print(f"wrote {out} ({what}, {choice.name})")
    return 0
