"""``ddpm train``: flags from :class:`ddpm.train.TrainConfig`'s fields in, :func:`ddpm.train.train` out."""

from __future__ import annotations

import argparse
import os

from ..train import TrainConfig, train
from .flags import add_config_flags, settings_from


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm train``: one flag per TrainConfig field."""
    p = sub.add_parser("train", help="train a model on a dataset", description="Train a diffusion model.")
    add_config_flags(p, TrainConfig)


def cmd_train(args: argparse.Namespace) -> int:
    """``ddpm train``: run training; rank 0 prints the last checkpoint's path."""
    result = train(settings_from(args, TrainConfig))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 speaks
        print(f"wrote {result.checkpoint}")
    return 0
