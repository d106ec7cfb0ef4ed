"""``ddpm sample`` and ``ddpm edit``: flags in, :mod:`ddpm.generate` out."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ..checkpoint import model_variance, read_meta, resolve_checkpoint
from ..diffusion import LEARNED_VARIANCES
from ..errors import UserError
from ..generate import default_sampler, edit_image, generate, interpolate, reproduce
from ..images import picture_size
from ..sampling import SAMPLERS, sampler_options
from ..schedule import SPACINGS
from ..version import __version__

# Library parameter -> flag, where the flag is not "--" + the name with dashes (see ddpm.errors.ParameterError).
FLAGS = {"label": "--class", "options": "--option", "trajectories": "--trajectory-count"}
SAMPLE_FLAGS = {**FLAGS, "image": "--reproduce"}


def add_sampler_flags(s: argparse.ArgumentParser, what: str) -> None:
    """Flags shared by ``sample``, ``edit`` and ``eval``: checkpoint, sampler path, class/guidance, device."""
    name, spacing, steps = default_sampler()
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
                       for n in SAMPLERS if (opts := {k: v for k, v in sampler_options(n).items() if k != "eta"}))
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
    add_sampler_flags(s, "")
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
        description="Edit a picture with a model. A picture of another size is brought to the model's as training "
                    "does (shorter side to its size, centre crop, Lanczos), said in one line. Without --mask: SDEdit "
                    "(noise the picture to step round(strength*(T-1)) and denoise it). With --mask: regenerate the "
                    "white pixels and keep the black ones exactly (RePaint resampling with --resample).")
    add_sampler_flags(s, " of the full path; an edit uses those below round(strength*(T-1))")
    s.add_argument("--image", required=True, help="the picture to edit (any mode; converted to the model's channels)")
    s.add_argument("--out", required=True, help="the edited PNG to write")
    s.add_argument("--strength", type=float, default=None,
                   help="in [0, 1]: 0 keeps the picture, 1 regenerates it from noise (required without --mask; "
                        "default 1 with --mask)")
    s.add_argument("--mask", default=None, help="a picture of the image's size or the model's: white (>= 128 gray) = "
                                                "regenerate, black = keep")
    s.add_argument("--resample", type=int, default=1, metavar="R",
                   help="with --mask: RePaint, redo every ancestral step R times (uses the ddpm sampler; default 1)")
    s.add_argument("--seed", type=int, default=0, help="the edit depends only on the seed (default: 0)")
    s.add_argument("--no-resize", action="store_true",
                   help="refuse a picture whose size is not the model's instead of resizing and cropping it")


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> {key: value text}; the library types the values (ddpm.generate.choose_sampler)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--option {pair!r} is not KEY=VALUE: write e.g. --option lower_order_final=true")
        out[key.strip().replace("-", "_")] = value
    return out


def sampler_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags ``add_sampler_flags`` adds, as keyword arguments of the ddpm.generate functions."""
    return {"sampler": args.sampler, "spacing": args.spacing, "steps": args.steps, "eta": args.eta,
            "options": parse_options(args.option), "label": args.class_, "guidance": args.guidance,
            "ema": not args.no_ema, "clip_x0": not args.no_clip, "device": args.device, "overwrite": args.overwrite}


def _given(args: argparse.Namespace, flags: Sequence[str]) -> list[str]:
    """Which of ``flags`` (as "--name") were set on the command line."""
    dests = {"--class": "class_", "--option": "option"}
    values = [(f, getattr(args, dests.get(f, f[2:].replace("-", "_")))) for f in flags]
    return [f for f, v in values if v is not None and v is not False and v != []]


def cmd_sample(args: argparse.Namespace) -> int:
    """``ddpm sample``: numbered images and a grid, or --reproduce, or --interpolate."""
    if args.reproduce is not None:
        given = _given(args, ["--sampler", "--spacing", "--steps", "--eta", "--option", "--class", "--guidance",
                              "--no-ema", "--no-clip", "--num", "--seed", "--trajectory", "--interpolate", "--npz"])
        if given:
            raise UserError(f"--reproduce takes every setting from the image's metadata: drop {' '.join(given)}")
        path, made = reproduce(args.checkpoint, args.reproduce, args.out, device=args.device, overwrite=args.overwrite)
        if made.version != __version__:
            print(f"note: {path.name} was made by ddpm {made.version}, this is {__version__}; the pixels may "
                  "differ if sampling changed in between", file=sys.stderr)
        print(f"wrote {path} (seed {made.seed}, image {made.index})")
        return 0
    if args.interpolate is not None:
        if args.num is not None or args.seed is not None or args.trajectory or args.npz:
            raise UserError("--interpolate makes interpolation.png only: drop --num/--seed/--trajectory/--npz")
        seed_a, seed_b = args.interpolate
        path = interpolate(args.checkpoint, args.out, seed_a, seed_b, frames=args.frames, batch_size=args.batch_size,
                           **sampler_args(args))
        print(f"wrote {path} ({args.frames} frames from seed {seed_a} to seed {seed_b})")
        return 0
    if args.trajectory and args.trajectory_count < 1:
        raise UserError(f"--trajectory-count must be at least 1; got {args.trajectory_count}")
    num = 64 if args.num is None else args.num
    generate(args.checkpoint, args.out, num=num, seed=0 if args.seed is None else args.seed,
             batch_size=args.batch_size, npz=args.npz, trajectories=args.trajectory_count if args.trajectory else 0,
             progress=not args.quiet, **sampler_args(args))
    extra = f", {min(num, args.trajectory_count)} trajectories" if args.trajectory else ""
    print(f"wrote {num} images and grid.png to {args.out}{extra}" + (f", and {args.npz}" if args.npz else ""))
    _say_what_uses_the_variance(args)
    return 0


def _say_what_uses_the_variance(args: argparse.Namespace) -> None:
    """One line when the network learned its variance but the sampler does not use it (all but ``ddpm``)."""
    variance = model_variance(read_meta(resolve_checkpoint(args.checkpoint)))
    sampler = args.sampler or default_sampler()[0]
    if variance in LEARNED_VARIANCES and sampler != "ddpm":
        print(f"note: the network learned its variance ({variance}); the ddpm sampler draws with it, {sampler} "
              "follows the network's mean")


def cmd_edit(args: argparse.Namespace) -> int:
    """``ddpm edit``: SDEdit or inpaint one picture; writes one PNG with metadata."""
    path, made = edit_image(args.checkpoint, args.image, args.out, strength=args.strength, mask=args.mask,
                            resample=args.resample, seed=args.seed, resize=not args.no_resize, **sampler_args(args))
    if "resized_from" in made.extra:
        w, h = picture_size(path)
        print(f"resized {args.image} from {made.extra['resized_from']} to the model's {w}x{h} as training does "
              "(shorter side, centre crop, Lanczos; --no-resize refuses instead)")
    what = "inpainted" if args.mask is not None else f"SDEdit at strength {args.strength:g}"
    print(f"wrote {path} ({what}, {made.choice.name})")
    return 0
