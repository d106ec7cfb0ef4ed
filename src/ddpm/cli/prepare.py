"""``ddpm prepare``: decode a data set once into the memory-mapped form training reads (:mod:`ddpm.data.prepared`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..data.paired import check_pairs
from ..data.prepared import open_prepared
from ..data.preparing import prepare_dataset
from ..settings import help_of, option
from ..train import TrainConfig
from .flags import add_config_flags, settings_from


@dataclass
class PrepareSettings:
    """``ddpm prepare``'s flags: the four it shares with ``ddpm train`` (same help, so the same flags find the same
    prepared set), the number of decoding processes and --quiet."""

    data: str = option(help_of(TrainConfig, "data"), default="", metavar="DATA")
    image_size: int | None = option(help_of(TrainConfig, "image_size"), default=None, metavar="N")
    condition_data: str | None = option(
        "also prepare this folder of inputs paired with --data, at --data's size (as ddpm train --condition-data "
        "reads it)",
        default=None,
        metavar="INPUTS",
    )
    skip_bad: bool = option(help_of(TrainConfig, "skip_bad"), default=False, action="store_true")
    prepared_dir: str | None = option(help_of(TrainConfig, "prepared_dir"), default=None, metavar="DIR")
    workers: int | None = option("decoding processes (default: one per CPU core)", default=None, metavar="N")
    progress: bool = option("no progress bar", default=True, flag="--quiet", action="store_false")


def add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm prepare``."""
    p = sub.add_parser(
        "prepare",
        help="decode a data set once, for fast training starts",
        description="Decode a folder of images (or IDX, CIFAR, digits, fashion-mnist) once into one uint8 array that "
        "training memory-maps: every later `ddpm train` with the same --data, --image-size and "
        "--prepared-dir starts at once, and all torchrun ranks share one copy. `ddpm train` does this "
        "itself for a folder of images; this command does it ahead of time. A prepared copy of the same "
        "files and settings is reused; a killed preparation resumes where it stopped.",
    )
    add_config_flags(p, PrepareSettings, show_default=False, required=("data",))


def cmd_prepare(args: argparse.Namespace) -> int:
    """``ddpm prepare``: prepare (or find) the set and say where it is and how big."""
    s = settings_from(args, PrepareSettings)
    folder = prepare_dataset(
        s.data, s.image_size, skip_bad=s.skip_bad, prepared_dir=s.prepared_dir, workers=s.workers, progress=s.progress
    )
    if s.condition_data is not None:
        check_pairs(Path(s.data).expanduser(), Path(s.condition_data).expanduser())
        size = open_prepared(folder).image_size  # the inputs are read at the targets' size
        prepare_dataset(s.condition_data, size, skip_bad=s.skip_bad, prepared_dir=s.prepared_dir, workers=s.workers,
                        progress=s.progress)  # fmt: skip
    return 0
