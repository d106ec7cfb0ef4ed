"""``ddpm sample``: images from a checkpoint, each reproducible from (seed, index)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

DEFAULT_SAMPLE_STEPS = 1000
DEFAULT_SAMPLER = "ddpm"


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm sample`` and its flags."""
    s = sub.add_parser("sample", help="generate images from a checkpoint",
                       description="Generate images from a checkpoint with its EMA weights.")
    s.add_argument("--checkpoint", required=True, help="a .safetensors checkpoint, or a run directory (its latest)")
    s.add_argument("--num", type=int, default=64, help="number of images (default: 64)")
    s.add_argument("--out", required=True, help="directory for 000000.png, ... and grid.png")
    s.add_argument("--seed", type=int, default=0, help="image i depends only on (seed, i) (default: 0)")
    s.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's default)")
    s.add_argument("--sampler", default=None, help=f"sampler name (default: {DEFAULT_SAMPLER})")
    s.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default: 256)")
    s.add_argument("--npz", default=None, help="also write the images as uint8 NHWC array 'images' in this .npz")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    s.add_argument("--no-clip", action="store_true", help="do not clip the predicted x0 to [-1, 1]")
    s.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    s.add_argument("--class", dest="class_", default=None, metavar="C",
                   help="class index or name, for a model trained with --class-cond")
    s.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight with --class (0: unconditional, 1: conditional, "
                        ">1: stronger; default 1)")
    s.add_argument("--overwrite", action="store_true", help="replace images already in --out")
    s.add_argument("--quiet", action="store_true", help="no progress bar")


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


def cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import file_sha256, load_model
    from .images import make_grid, save_png, to_uint8
    from .sampling import SAMPLERS, image_generators, sample
    from .train import pick_device

    if args.num < 1:
        raise UserError(f"--num must be at least 1; got {args.num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {args.batch_size}")
    sampler = args.sampler or DEFAULT_SAMPLER
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    device = pick_device(args.device)
    model, ckpt, schedule = load_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    steps = args.steps if args.steps is not None else min(DEFAULT_SAMPLE_STEPS, schedule.timesteps)
    if not 1 <= steps <= schedule.timesteps:
        raise UserError(f"--steps must lie in 1..{schedule.timesteps}; got {steps}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    names = [f"{i:06d}.png" for i in range(args.num)]
    clash = [n for n in [*names, "grid.png"] if (out / n).exists()]
    if clash and not args.overwrite:
        raise UserError(f"{out} already holds {clash[0]} (and {len(clash) - 1} more of the files this would write): "
                        "choose another --out or pass --overwrite")
    if args.npz and Path(args.npz).exists() and not args.overwrite:
        raise UserError(f"{args.npz} already exists: choose another --npz or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)

    meta = ckpt.meta
    label = None if args.class_ is None else resolve_class(args.class_, meta.get("class_names"))
    if args.guidance is not None and label is None:
        raise UserError("--guidance needs --class: guidance pushes samples toward a class")
    c, size = int(meta["channels"]), int(meta["image_size"])
    sha = file_sha256(ckpt.path)
    images = np.empty((args.num, size, size, c), np.uint8)
    progress = not args.quiet
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.num, desc=f"sampling {sampler}, {steps} steps", unit="img", dynamic_ncols=True)
    for start in range(0, args.num, args.batch_size):
        idx = list(range(start, min(args.num, start + args.batch_size)))
        labels = None if label is None else torch.full((len(idx),), label, dtype=torch.long)
        x = sample(model, (len(idx), c, size, size), schedule, sampler=sampler, steps=steps,
                   generator=image_generators(args.seed, idx), clip_x0=not args.no_clip,
                   prediction=meta.get("prediction", "eps"), labels=labels, guidance=args.guidance, device=device)
        batch = to_uint8(x)
        for j, i in enumerate(idx):
            images[i] = batch[j]
            save_png(out / names[i], batch[j], {
                "ddpm:seed": str(args.seed), "ddpm:index": str(i), "ddpm:sampler": sampler,
                "ddpm:steps": str(steps), "ddpm:checkpoint_sha256": sha, "ddpm:ema": str(not args.no_ema),
                "ddpm:clip_x0": str(not args.no_clip),
                "ddpm:class": "" if label is None else str(label),
                "ddpm:guidance": "" if args.guidance is None else repr(args.guidance),
            })
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    save_png(out / "grid.png", make_grid(images, scale=max(1, 64 // size)))
    if args.npz:
        np.savez_compressed(args.npz, images=images)
    print(f"wrote {args.num} images and grid.png to {out}" + (f", and {args.npz}" if args.npz else ""))
    return 0
