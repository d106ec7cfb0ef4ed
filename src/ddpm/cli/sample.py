"""``ddpm sample`` and ``ddpm edit``: flags in, :mod:`ddpm.generate` out.

Both commands' flags are :class:`~ddpm.sampler_choice.SampleSettings` (the sampling flags they share with ``ddpm
eval``) followed by their own fields, declared here.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from ..cascade import CascadeSettings, reproduce_picture, sample_files
from ..checkpoint import model_variance, read_meta, resolve_checkpoint
from ..diffusion import LEARNED_VARIANCES
from ..errors import ParameterError
from ..generate import edit_image, generate, interpolate
from ..images import picture_size
from ..sampler_choice import DEFAULT_SAMPLER, SampleSettings
from ..settings import option
from ..version import __version__
from .flags import add_config_flags, settings_from


@dataclass
class SampleCommand(CascadeSettings):
    """``ddpm sample``: the sampling flags (and a cascade's stages), then how many images, where, and the pictures
    besides them."""

    condition: str | None = option(
        "for a model conditioned on an image (super-resolution, paired): a folder of its inputs or an .npz of "
        "uint8 NHWC 'images'; one output per input, named after it (--num K: K each, NAME-k.png)",
        default=None,
        metavar="DIR|FILE.npz",
    )
    num: int | None = option("number of images (default: 64; with --condition: per condition, default 1)", default=None)
    out: str = option("directory for 000000.png, ... and grid.png", default="")
    seed: int | None = option("image i depends only on (seed, i) (default: 0)", default=None)
    batch_size: int = option("images per forward pass (default: 256)", default=256)
    npz: str | None = option("also write the images as uint8 NHWC array 'images' in this .npz", default=None)
    progress: bool = option("no progress bar", default=True, flag="--quiet", action="store_false")
    image: str | None = option(
        "make IMAGE.png (written by ddpm sample) again, from its metadata, as --out/<its "
        "name>; --checkpoint must be the file it was made with (checked by SHA-256)",
        default=None,
        flag="--reproduce",
        metavar="IMAGE.png",
    )
    trajectory: bool = option(
        "also write trajectory-000000.png (rows x_t and predicted x0, ~10 steps ending in the "
        "image) and trajectory-000000.gif (every model call a frame) for the first images",
        default=False,
        action="store_true",
    )
    trajectories: int = option(
        "with --trajectory: how many images get pictures (default: 4)",
        default=4,
        flag="--trajectory-count",
        metavar="N",
    )
    interpolate: list[int] | None = option(
        "instead of --num images, write interpolation.png: spherical "
        "interpolation between the starting noise of image 0 of SEED_A and of "
        "SEED_B (needs a deterministic sampler); its ends are image 0 of --seed "
        "SEED_A / SEED_B",
        default=None,
        nargs=2,
        type=int,
        metavar=("SEED_A", "SEED_B"),
    )
    frames: int = option("with --interpolate: number of frames (default: 8)", default=8)


@dataclass
class EditCommand(SampleSettings):
    """``ddpm edit``: the sampling flags, then the picture, the edit and where it goes."""

    image: str = option("the picture to edit (any mode; converted to the model's channels)", default="")
    out: str = option("the edited PNG to write", default="")
    strength: float | None = option(
        "in [0, 1]: 0 keeps the picture, 1 regenerates it from noise (required without --mask; default 1 with --mask)",
        default=None,
    )
    mask: str | None = option(
        "a picture of the image's size or the model's: white (>= 128 gray) = regenerate, black = keep", default=None
    )
    resample: int = option(
        "with --mask: RePaint, redo every ancestral step R times (uses the ddpm sampler; default 1)",
        default=1,
        metavar="R",
    )
    seed: int = option("the edit depends only on the seed (default: 0)", default=0)
    resize: bool = option(
        "refuse a picture whose size is not the model's instead of resizing and cropping it",
        default=True,
        flag="--no-resize",
        action="store_false",
    )


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm sample`` and its flags."""
    s = sub.add_parser(
        "sample",
        help="generate images from a checkpoint",
        description="Generate images from a checkpoint (EMA weights by default). Image i depends only on "
        "(--seed, i), at any --batch-size. Every PNG records in text chunks how to make it again; "
        "--reproduce IMAGE.png does so. --trajectory draws the sampling path, --interpolate walks "
        "between the starting noise of two seeds.",
    )
    add_config_flags(s, SampleCommand, show_default=False, required=("checkpoint", "out"))


def add_edit_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm edit`` and its flags."""
    s = sub.add_parser(
        "edit",
        help="edit an image with a checkpoint (SDEdit, inpainting)",
        description="Edit a picture with a model. A picture of another size is brought to the model's as training "
        "does (shorter side to its size, centre crop, Lanczos), said in one line. Without --mask: SDEdit "
        "(noise the picture to step round(strength*(T-1)) and denoise it). With --mask: regenerate the "
        "white pixels and keep the black ones exactly (RePaint resampling with --resample).",
    )
    add_config_flags(s, EditCommand, show_default=False, required=("checkpoint", "image", "out"))


def _given(settings: SampleCommand, names: list[str]) -> list[str]:
    """Which of the fields ``names`` differ from their defaults, as ``{name}`` placeholders."""
    unset = SampleCommand()
    return [f"{{{n}}}" for n in names if getattr(settings, n) != getattr(unset, n)]


def cmd_sample(args: argparse.Namespace) -> int:
    """``ddpm sample``: numbered images and a grid, or --reproduce, or --interpolate; with --condition, --then or a
    conditioned checkpoint, :func:`ddpm.cascade.sample_files`."""
    s = settings_from(args, SampleCommand)
    if s.image is not None:
        return _reproduce(s)
    if s.condition is not None or s.then or _conditioned(s):
        return _sample_conditioned(s)
    if s.interpolate is not None:
        if _given(s, ["num", "seed", "trajectory", "npz"]):
            raise ParameterError("{interpolate} makes interpolation.png only: drop {num}/{seed}/{trajectory}/{npz}")
        seed_a, seed_b = s.interpolate
        path = interpolate(s, s.out, seed_a, seed_b, frames=s.frames, batch_size=s.batch_size)
        print(f"wrote {path} ({s.frames} frames from seed {seed_a} to seed {seed_b})")
        return 0
    if s.trajectory and s.trajectories < 1:
        raise ParameterError(f"{{trajectories}} must be at least 1; got {s.trajectories}")
    num = 64 if s.num is None else s.num
    generate(
        s,
        s.out,
        num=num,
        seed=0 if s.seed is None else s.seed,
        batch_size=s.batch_size,
        npz=s.npz,
        trajectories=s.trajectories if s.trajectory else 0,
        progress=s.progress,
    )
    extra = f", {min(num, s.trajectories)} trajectories" if s.trajectory else ""
    print(f"wrote {num} images and grid.png to {s.out}{extra}" + (f", and {s.npz}" if s.npz else ""))
    _say_what_uses_the_variance(s)
    return 0


def _conditioned(s: SampleCommand) -> bool:
    """Whether --checkpoint's network is conditioned on an image."""
    assert s.checkpoint is not None  # --checkpoint is required
    return bool(read_meta(resolve_checkpoint(s.checkpoint)).get("condition"))


def _sample_conditioned(s: SampleCommand) -> int:
    """``ddpm sample`` of a conditioned model (--condition) or a cascade (--then)."""
    given = _given(s, ["trajectory", "interpolate"])
    if given:
        raise ParameterError(f"{' '.join(given)} draw one unconditioned model: drop them with {{condition}}/{{then}}")
    paths, lines = sample_files(s, s.out, condition=s.condition, num=s.num, seed=0 if s.seed is None else s.seed,
                                batch_size=s.batch_size, npz=s.npz, progress=s.progress)  # fmt: skip
    for line in lines:
        print(line)
    images = [p for p in paths if p.suffix == ".png" and p.name != "grid.png"]
    stages = f" through {len(s.then) + 1} stages" if s.then else ""
    print(f"wrote {len(images)} images{stages} to {s.out}" + (f", and {s.npz}" if s.npz else ""))
    return 0


def _reproduce(s: SampleCommand) -> int:
    """``ddpm sample --reproduce IMAGE.png``: every setting comes from the image's metadata (a cascade's later stages
    and a condition's folder are named again with --then and --condition)."""
    given = [f"{{{n}}}" for n in s.sampler_flags_given()] + _given(
        s, ["num", "seed", "trajectory", "interpolate", "npz", "cond_noise"]
    )
    if given:
        raise ParameterError(f"{{image}} takes every setting from the image's metadata: drop {' '.join(given)}")
    assert s.checkpoint is not None and s.image is not None  # --checkpoint is required; --reproduce was given
    path, made = reproduce_picture(s.checkpoint, s.image, s.out, then=s.then, condition=s.condition, device=s.device,
                                   overwrite=s.overwrite)  # fmt: skip
    if made.version != __version__:
        print(
            f"note: {path.name} was made by ddpm {made.version}, this is {__version__}; the pixels may "
            "differ if sampling changed in between",
            file=sys.stderr,
        )
    print(f"wrote {path} (seed {made.seed}, image {made.index})")
    return 0


def _say_what_uses_the_variance(s: SampleCommand) -> None:
    """One line when the network learned its variance but the sampler does not use it (all but ``ddpm``)."""
    assert s.checkpoint is not None  # --checkpoint is required
    variance = model_variance(read_meta(resolve_checkpoint(s.checkpoint)))
    sampler = s.sampler or DEFAULT_SAMPLER.name
    if variance in LEARNED_VARIANCES and sampler != "ddpm":
        print(
            f"note: the network learned its variance ({variance}); the ddpm sampler draws with it, {sampler} "
            "follows the network's mean"
        )


def cmd_edit(args: argparse.Namespace) -> int:
    """``ddpm edit``: SDEdit or inpaint one picture; writes one PNG with metadata."""
    e = settings_from(args, EditCommand)
    path, made = edit_image(
        e, e.image, e.out, strength=e.strength, mask=e.mask, resample=e.resample, seed=e.seed, resize=e.resize
    )
    if "resized_from" in made.extra:
        w, h = picture_size(path)
        print(
            f"resized {e.image} from {made.extra['resized_from']} to the model's {w}x{h} as training does "
            "(shorter side, centre crop, Lanczos; --no-resize refuses instead)"
        )
    what = "inpainted" if e.mask is not None else f"SDEdit at strength {e.strength:g}"
    print(f"wrote {path} ({what}, {made.choice.name})")
    return 0
