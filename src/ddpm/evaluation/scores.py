"""The figures ``ddpm eval`` reports: FID, KID, precision/recall and FD in their feature spaces, and the
variational bound (``--nll``), each with its protocol recorded in the run's :attr:`EvalRun.protocol`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import model_variance
from ..data.dataset import ImageDataset
from ..data.load import load_dataset
from ..denoiser import image_generators
from ..diffusion import LEARNED_VARIANCES
from ..errors import ParameterError, UserError
from ..generate import Sampling
from ..likelihood import bits_per_dim
from .featurenet import featurenet_for
from .inception import Inception
from .metrics import kid, precision_recall
from .reference import fd_against, reference_features, subset_indices
from .settings import INCEPTION_METRICS, EvalRun, log

KID_SUBSETS, KID_MAX_SUBSET, PR_K = 100, 1000, 3
# The features a run computed, for the memorization report: (extractor, generated (N, D), reference (M, D)).
Features = tuple[Any, Tensor, Tensor]


def embed(run: EvalRun, key: str, ext: Any, gen: np.ndarray, ref: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features of the generated images uint8 (N, C, H, W), then of the reference (cached), announcing the time an
    uncached reference takes at the rate measured on the generated images: (generated, reference, reference
    mean (D,), reference covariance (D, D)). The extractor and the cache file go into the protocol under ``key``."""
    cfg = run.cfg
    t0 = time.perf_counter()
    f_gen = ext.features(gen, batch_size=cfg.batch_size, progress=cfg.progress, desc=f"{ext.name} (generated)")
    rate = len(gen) / max(time.perf_counter() - t0, 1e-9)

    def announce(n: int) -> None:
        log(f"reference features ({ext.name}) are not cached: {n} images to embed, about {n / rate / 60:.1f} min at "
            f"the {rate:.1f} img/s measured on the generated images; cached afterwards (a smaller --ref-num costs "
            "less)")  # fmt: skip

    info = {"data": run.data, "split": cfg.ref_split, "num": len(ref)}
    f_ref, mean, cov, file, cached = reference_features(
        ext, ref, run.cache, info, cfg.batch_size, cfg.progress, announce
    )
    run.protocol["extractors"][key] = ext.protocol()
    run.protocol["cache"][f"{key}_reference"] = f"{file} ({'read' if cached else 'written'})"
    return f_gen, f_ref, mean, cov


def score(run: EvalRun, metrics: list[str], gen: np.ndarray, ref: np.ndarray) -> tuple[dict[str, Any], Features]:
    """The asked-for metrics of generated against reference images, uint8 (N, C, H, W) and (M, C, H, W); also
    the features computed, for the memorization report."""
    results: dict[str, Any] = {}
    run.protocol["extractors"], run.protocol["cache"] = {}, {}
    features = None
    if any(m in INCEPTION_METRICS for m in metrics) or (run.cfg.memorization and "fd" not in metrics):
        features = _inception_scores(run, metrics, gen, ref, results)
    if "fd" in metrics:
        fnet = _featurenet(run)
        f_gen, f_ref, mean, cov = embed(run, "featurenet", fnet, gen, ref)
        results["fd"] = fd_against(f_gen, mean, cov)
        features = features or (fnet, f_gen, f_ref)
    assert features is not None  # every metric computes some features
    return results, features


def _inception_scores(run: EvalRun, metrics: list[str], gen: np.ndarray, ref: np.ndarray,
                      results: dict[str, Any]) -> Features:  # fmt: skip
    """FID, KID and precision/recall in Inception-v3 features, into ``results``; returns the features."""
    ext = Inception(run.cfg.inception, run.device)
    f_gen, f_ref, mean, cov = embed(run, "inception", ext, gen, ref)
    if "fid" in metrics:
        results["fid"] = fd_against(f_gen, mean, cov)
    if "kid" in metrics:
        size = min(KID_MAX_SUBSET, len(f_gen), len(f_ref))
        g = torch.Generator().manual_seed(0)
        results["kid"], results["kid_std"] = kid(f_gen, f_ref, subsets=KID_SUBSETS, subset_size=size, generator=g)
        estimator = "unbiased MMD^2 per subset; kid_std = std over subsets"
        run.protocol["kid"] = {"kernel": "(x.y/2048 + 1)^3", "subsets": KID_SUBSETS, "subset_size": size,
                               "estimator": estimator, "seed": 0}  # fmt: skip
    if "pr" in metrics:
        real = f_ref[torch.as_tensor(subset_indices(len(f_ref), len(f_gen), seed=1))]
        results["precision"], results["recall"] = precision_recall(real, f_gen, k=PR_K)
        subset = "seeded random subset (seed 1) of the reference, as many as generated"
        run.protocol["pr"] = {"k": PR_K, "num_generated": len(f_gen), "num_real": len(real), "real": subset}
    return ext, f_gen, f_ref


def _featurenet(run: EvalRun) -> Any:
    """The data set's FeatureNet extractor (trained once and cached, or the one ``--featurenet`` names)."""
    train = load_dataset(run.data, run.image_size)
    if run.cfg.featurenet is None and train.labels is None:
        raise ParameterError(
            f"{{metrics}} fd needs a labelled data set (FeatureNet is a classifier), and {run.data} has no labels: "
            "use class subfolders, or {metrics} fid"
        )
    return featurenet_for(train.as_uint8(), train.labels, run.data, run.cache, run.cfg.featurenet, run.device, log)


def held_out(data: str, image_size: int | None) -> tuple[ImageDataset, str]:
    """The test split of ``data``, or (digits, image folders: none) the data itself: (the set, its split's name)."""
    try:
        return load_dataset(data, image_size, split="test"), "test"
    except UserError:
        return load_dataset(data, image_size), "train"


def bound(run: EvalRun, s: Sampling) -> dict[str, Any]:
    """The variational bound (bits/dim) of ``--nll-num`` seeded held-out images; records its protocol."""
    cfg, meta = run.cfg, s.meta
    ds, split = held_out(run.data, run.image_size)
    if (ds.channels, ds.image_size) != (s.channels, s.image_size):
        raise ParameterError(
            f"the checkpoint makes {s.image_size}x{s.image_size} images with {s.channels} channel(s) but {run.data} "
            f"is {ds.image_size}x{ds.image_size} with {ds.channels}: compare with the data it was trained on (or "
            "{image_size})"
        )
    n = min(cfg.nll_num, len(ds))
    x0 = ds.images[torch.as_tensor(subset_indices(len(ds), n, seed=3))]
    log(f"variational bound of {n} {split} images: {s.schedule.timesteps} model calls per batch of {cfg.batch_size}")
    trained = model_variance(meta)
    learned = trained if trained in LEARNED_VARIANCES else None
    variance = cfg.nll_variance or {"fixed-large": "beta"}.get(trained, "learned" if learned else "posterior")
    try:
        vb = bits_per_dim(s.model, x0, s.schedule, prediction=meta.get("prediction", "eps"), variance=variance,
                          clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, progress=cfg.progress, device=run.device,
                          generator=image_generators(cfg.seed, range(n)), learned_variance=learned)  # fmt: skip
    except ValueError as e:
        raise ParameterError(f"{{nll}}: {e}") from None
    run.protocol["nll"] = {
        "data": run.data, "split": split, "num": n, "subset": "seeded random subset (seed 3)", "variance": variance,
        "clip_x0": cfg.clip_x0, "timesteps": s.schedule.timesteps, "ema": cfg.ema,
        "noise": f"image i's x_t from (seed {cfg.seed}, i)",
        "units": "bits/dim, 8-bit data in [-1, 1], discretized Gaussian decoder (Ho et al. 2020)",
        "labels": "none (the unconditional bound)", "checkpoint_sha256": s.sha256,
    }  # fmt: skip
    return vb.summary()
