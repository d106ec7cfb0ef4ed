"""``ddpm convert``: flags in, :mod:`ddpm.interop` out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoint import read_meta
from ..errors import UserError
from ..interop.configs import VARIANCE_TO_DIFFUSERS, pipeline_flags
from ..interop.convert import checkpoint_summary, export_diffusers, import_diffusers, is_diffusers_folder


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm convert``."""
    s = sub.add_parser(
        "convert",
        help="import a diffusers model, or export a checkpoint to diffusers",
        description="Convert between diffusers and ddpm. SRC a diffusers folder (config.json + weights + "
        "scheduler_config.json at its root, or unet/ + scheduler/): DST becomes a ddpm run directory "
        "(or one .safetensors file). SRC a ddpm checkpoint or run directory: DST becomes a diffusers "
        "pipeline folder. DST is never overwritten.",
    )
    s.add_argument("src", metavar="SRC", help="a diffusers folder, or a ddpm checkpoint file / run directory")
    s.add_argument("dst", metavar="DST", help="where to write; must not exist (an empty directory is fine)")
    s.add_argument("--no-ema", action="store_true", help="export: the raw weights instead of the EMA weights")
    s.add_argument(
        "--variance",
        default=None,
        choices=list(VARIANCE_TO_DIFFUSERS),
        help="export: the scheduler's variance_type, posterior = fixed_small, beta = fixed_large "
        "(default: the imported model's own, else beta for a network trained with the fixed-large "
        "variance and posterior otherwise); a network that predicts its variance (learned-range) "
        "is exported as learned_range and takes no --variance",
    )


def cmd_convert(args: argparse.Namespace) -> int:
    """``ddpm convert SRC DST``: the direction comes from what SRC is."""
    src = Path(args.src)
    if not src.exists():
        raise UserError(f"{src} does not exist: pass a diffusers folder or a ddpm checkpoint / run directory")
    if is_diffusers_folder(src):
        if args.no_ema or args.variance is not None:
            raise UserError("--no-ema and --variance are for exports; SRC is a diffusers folder (an import)")
        path = import_diffusers(src, args.dst)
        meta = read_meta(path)
        print(f"wrote {path} ({checkpoint_summary(meta)})")
        print(f"to sample as DDPMPipeline does: ddpm sample --checkpoint {args.dst} --out DIR {pipeline_flags(meta)}")
        return 0
    if src.is_file() and src.name.startswith("diffusion_pytorch_model"):
        raise UserError(f"{src} is a diffusers weights file: pass the folder that holds it and its config.json")
    dst, note = export_diffusers(src, args.dst, use_ema=not args.no_ema, variance=args.variance)
    print(f"wrote {dst} ({'raw' if args.no_ema else 'EMA'} weights)")
    if note:
        print(f"note: {note}")
    return 0
