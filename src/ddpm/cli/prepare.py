"""``ddpm prepare``: decode a data set once into the memory-mapped form training reads (:mod:`ddpm.data.prepared`)."""

from __future__ import annotations

import argparse
import dataclasses

from ..data.preparing import prepare_dataset
from ..train import TrainConfig

# The flags ddpm prepare shares with ddpm train, with train's help: the same flags find the same prepared set.
SHARED = ("data", "image_size", "skip_bad", "prepared_dir")


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm prepare``: --data, --image-size, --skip-bad and --prepared-dir as ``ddpm train`` has them,
    --workers and --quiet."""
    p = sub.add_parser(
        "prepare", help="decode a data set once, for fast training starts",
        description="Decode a folder of images (or IDX, CIFAR, digits, fashion-mnist) once into one uint8 array that "
                    "training memory-maps: every later `ddpm train` with the same --data, --image-size and "
                    "--prepared-dir starts at once, and all torchrun ranks share one copy. `ddpm train` does this "
                    "itself for a folder of images; this command does it ahead of time. A prepared copy of the same "
                    "files and settings is reused; a killed preparation resumes where it stopped.")
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
    p.add_argument("--data", required=True, metavar="DATA", help=helps["data"])
    p.add_argument("--image-size", type=int, metavar="N", help=helps["image_size"])
    p.add_argument("--skip-bad", action="store_true", help=helps["skip_bad"])
    p.add_argument("--prepared-dir", metavar="DIR", help=helps["prepared_dir"])
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_prepare(args: argparse.Namespace) -> int:
    """``ddpm prepare``: prepare (or find) the set and say where it is and how big."""
    prepare_dataset(args.data, args.image_size, skip_bad=args.skip_bad, prepared_dir=args.prepared_dir,
                    workers=args.workers, progress=not args.quiet)
    return 0
