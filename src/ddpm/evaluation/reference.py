"""Reference features, cached by content, shared by ``ddpm eval`` and ``ddpm train --eval-every``.

Images travel as 8-bit pixels, uint8 ``(N, C, H, W)``, on both sides: generated images are rounded the
way PNGs store them (:func:`to_pixels`), and the data set is rounded the same way (exact for 8-bit data), so
a real image and its saved copy have the same features.

Two extractors share one interface (``name``, ``sha256``, ``protocol()``, ``features(pixels) -> (N, D)``):

- :class:`ddpm.evaluation.inception.Inception`: the standard FID network (2048-d pool3).
- :class:`ddpm.evaluation.featurenet.FeatureNetExtractor`: the small FeatureNet classifier (64-d).

Reference features are cached under :func:`ddpm.files.cache_dir` by a key of the reference images'
content (SHA-256 of their pixels, so the split and the subset are part of it), the extractor's SHA-256 and
its preprocessing: a second evaluation against the same data embeds only the generated images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..files import save_safetensors
from ..images import to_uint8
from .metrics import gaussian_frechet_distance

CACHE_VERSION = "1"
FID_TRAIN_REF_NUM = 10_000  # reference images for --eval-metric fid during training (FD uses the whole split)


def to_pixels(images: Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → uint8 (N, C, H, W) pixels, round((x + 1) · 127.5), the rounding PNGs get."""
    return to_uint8(images, channels_last=False)


def content_sha256(pixels: np.ndarray, labels: Tensor | np.ndarray | None = None) -> str:
    """SHA-256 of uint8 (N, C, H, W) pixels (shape included) and, if given, their labels (N,)."""
    h = hashlib.sha256(json.dumps(list(pixels.shape)).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    if labels is not None:
        h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def subset_indices(total: int, num: int, seed: int = 0) -> np.ndarray:
    """``num`` of ``total`` indices, a seeded random subset in increasing order (all of them when num ≥ total).

    Random rather than the first ``num``: folders of class subfolders are sorted by class."""
    if num >= total:
        return np.arange(total)
    perm = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num]
    return np.sort(perm.numpy())


# ---------------------------------------------------------------------------- reference features


def reference_features(
    extractor: Any,
    pixels: np.ndarray,
    cache_dir: Path,
    info: dict[str, Any],
    batch_size: int = 50,
    progress: bool = False,
    before_compute: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Path, bool]:
    """Features of reference pixels uint8 (N, C, H, W), from the cache or computed (and then cached).

    Returns (features (N, D) float64, mean (D,), covariance (D, D), cache file, was it cached). The key is
    the pixels' content hash, the extractor's SHA-256 and preprocessing; ``info`` (data, split, num, ...)
    is stored beside them for people reading the cache. ``before_compute(n)`` runs when n images must be
    embedded (to announce the time it takes).
    """
    recipe = json.dumps(extractor.protocol().get("resize", ""))
    key = hashlib.sha256(f"{CACHE_VERSION}|{extractor.sha256}|{recipe}|{content_sha256(pixels)}".encode()).hexdigest()
    file = cache_dir / "reference" / f"{extractor.name}-{key[:24]}.safetensors"
    if file.is_file():
        try:
            t = load_file(str(file))
            with safe_open(str(file), framework="pt") as f:
                ok = (f.metadata() or {}).get("key") == key
            if ok and t["features"].shape[0] == len(pixels):
                return t["features"].double(), t["mean"], t["cov"], file, True
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
            pass
    if before_compute is not None:
        before_compute(len(pixels))
    feats = extractor.features(pixels, batch_size=batch_size, progress=progress, desc="reference features")
    mean, cov = feats.mean(0), torch.cov(feats.T)
    meta = {"key": key, "extractor_sha256": extractor.sha256, **{k: str(v) for k, v in info.items()}}
    save_safetensors(file, {"features": feats.float(), "mean": mean, "cov": cov}, meta)
    # float32 storage is exact: both extractors compute in float32.
    return feats.float().double(), mean, cov, file, False


def fd_against(feats: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Fréchet distance between features (N, D) and a Gaussian given by its mean (D,) and covariance (D, D)."""
    return gaussian_frechet_distance(feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], -1), mean, cov)
