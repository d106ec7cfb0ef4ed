"""Feature extractors and cached reference features, shared by ``ddpm eval`` and ``ddpm train --eval-every``.

Images travel as 8-bit pixels, uint8 ``(N, C, H, W)``, on both sides: generated images are rounded the
way PNGs store them, and the data set is rounded the same way (exact for 8-bit data), so a real image
and its saved copy have the same features.

Two extractors, one interface (``name``, ``sha256``, ``protocol()``, ``features(pixels) -> (N, D)``):

- :class:`ddpm.inception.Inception`: the standard FID network (2048-d pool3).
- :class:`FeatureNetExtractor`: the small :class:`ddpm.evaluate.FeatureNet` classifier (64-d), trained once
  per data set on its labelled train split and cached by the data's content hash (it is never retrained
  when the file is there; the run that trains it says so).

Reference features are cached under :func:`default_cache_dir` by a key of the reference images'
content (SHA-256 of their pixels, so the split and the subset are part of it), the extractor's SHA-256 and
its preprocessing: a second evaluation against the same data embeds only the generated images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checkpoint import save_safetensors
from .errors import UserError
from .images import pixels_to_unit, to_uint8

CACHE_VERSION = "1"
FID_TRAIN_REF_NUM = 10_000  # reference images for --eval-metric fid during training (FD uses the whole split)


def default_cache_dir() -> Path:
    """``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm``, else ``~/.cache/ddpm``."""
    if os.environ.get("DDPM_CACHE"):
        return Path(os.environ["DDPM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ddpm"


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


# ---------------------------------------------------------------------------- the FeatureNet extractor


class FeatureNetExtractor:
    """A trained :class:`ddpm.evaluate.FeatureNet` behind the extractor interface (64-d features)."""

    name = "featurenet"

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        from .evaluate import load_feature_net

        try:
            net, self.meta = load_feature_net(path)
        except ValueError as e:
            raise UserError(f"--featurenet {path}: {e}") from None
        from .checkpoint import file_sha256

        self.path, self.sha256 = Path(path), file_sha256(path)
        self.device = torch.device(device)
        self.net = net.to(self.device)

    def protocol(self) -> dict[str, str]:
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256,
                "features": f"global-average-pooled last convolution, {self.net.feature_dim}-d",
                "input": "x = pixel/127.5 - 1, the data's own size and channels",
                **{k: v for k, v in self.meta.items() if k in ("data", "trained_on", "epochs", "train_accuracy")}}

    @torch.no_grad()
    def features(self, pixels: np.ndarray, batch_size: int = 500, progress: bool = False,
                 desc: str = "featurenet") -> Tensor:
        """uint8 (N, C, H, W) → (N, feature_dim) float64 on the CPU."""
        out = []
        for i in range(0, len(pixels), batch_size):
            x = pixels_to_unit(torch.as_tensor(pixels[i:i + batch_size]).to(self.device))
            out.append(self.net.features(x).double().cpu())
        return torch.cat(out)


def featurenet_epochs(n: int) -> int:
    """About 300 optimisation steps of 128 images, and at least 2 epochs: 2 for Fashion-MNIST, 22 for digits."""
    return max(2, math.ceil(300 * 128 / n))


def featurenet_for(train_pixels: np.ndarray, train_labels: Tensor | None, data_name: str, cache_dir: Path,
                   path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                   log: Callable[[str], None] = print) -> FeatureNetExtractor:
    """The FeatureNet of a data set: ``path`` if given, else the cached one for this train split's content.

    When none is cached it is trained once, on all of ``train_pixels`` uint8 (N, C, H, W) with their
    ``train_labels`` (N,), seeded, and saved; ``log`` says so and where. Unlabelled data raises UserError.
    """
    from .evaluate import accuracy, save_feature_net, train_feature_net

    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"--featurenet {path}: no such file; drop the flag to use (or train) the cached one")
        return FeatureNetExtractor(Path(path), device)
    if train_labels is None:
        raise UserError(f"--metrics fd needs a labelled data set (FeatureNet is a classifier), and {data_name} has "
                        "no labels: use class subfolders, or --metrics fid")
    key = content_sha256(train_pixels, train_labels)
    file = cache_dir / "featurenet" / f"featurenet-v{CACHE_VERSION}-{key[:20]}.safetensors"
    if not file.is_file():
        n = len(train_pixels)
        epochs = featurenet_epochs(n)
        log(f"training the FeatureNet for {data_name} once ({n} images, {epochs} epochs; cached as {file})")
        t0 = time.perf_counter()
        images = pixels_to_unit(train_pixels)
        net = train_feature_net(images, train_labels, epochs=epochs, seed=0)
        meta = {"data": data_name, "trained_on": f"{n} train images, content sha256 {key}", "epochs": str(epochs),
                "train_accuracy": f"{accuracy(net, images, train_labels):.4f}",
                "train_seconds": f"{time.perf_counter() - t0:.0f}"}
        save_feature_net(net, file, meta)
    return FeatureNetExtractor(file, device)


# ---------------------------------------------------------------------------- reference features


def reference_features(extractor: Any, pixels: np.ndarray, cache_dir: Path, info: dict[str, Any],
                       batch_size: int = 50, progress: bool = False,
                       before_compute: Callable[[int], None] | None = None
                       ) -> tuple[Tensor, Tensor, Tensor, Path, bool]:
    """Features of reference pixels uint8 (N, C, H, W), from the cache or computed (and then cached).

    Returns (features (N, D) float64, mean (D,), covariance (D, D), cache file, was it cached). The key is
    the pixels' content hash, the extractor's SHA-256 and preprocessing; ``info`` (data, split, num, ...)
    is stored beside them for people reading the cache. ``before_compute(n)`` runs when n images must be
    embedded (to announce the time it takes).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

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
    from .evaluate import gaussian_frechet_distance

    return gaussian_frechet_distance(feats.mean(0), torch.cov(feats.T).reshape(feats.shape[1], -1), mean, cov)


# ---------------------------------------------------------------------------- during training


class TrainingEval:
    """``ddpm train --eval-every K``: FD (FeatureNet) or FID of ``num`` EMA samples against the train split.

    The first call builds the extractor (training the FeatureNet once if none is cached) and the
    reference statistics (cached, so a resumed or repeated run does not pay again). Every call samples
    images 0..num-1 from the same seeds with the default sampler, so the curve moves only with the weights.
    """

    def __init__(self, metric: str, num: int, data: Any, data_name: str, seed: int, steps: int,
                 device: torch.device, cache_dir: Path | None = None) -> None:
        if metric not in ("fd", "fid"):
            raise UserError(f"--eval-metric must be fd or fid; got {metric!r}")
        self.metric, self.num, self.data, self.data_name = metric, num, data, data_name
        self.seed, self.steps, self.device = seed, steps, device
        self.cache_dir = cache_dir or default_cache_dir()
        self.ref: tuple[Any, Tensor, Tensor, int] | None = None
        # Fail before training starts, not at the first evaluation.
        if metric == "fd" and data.labels is None:
            raise UserError(f"--eval-metric fd needs a labelled data set (FeatureNet is a classifier), and "
                            f"{data_name} has none: use class subfolders, or --eval-metric fid")
        if metric == "fid":
            from .inception import find_inception

            find_inception()

    def _prepare(self) -> tuple[Any, Tensor, Tensor, int]:
        if self.ref is None:
            pixels = self.data.as_uint8()
            if self.metric == "fd":
                ext = featurenet_for(pixels, self.data.labels, self.data_name, self.cache_dir, device=self.device)
            else:
                from .inception import Inception

                ext = Inception(device=self.device)
                pixels = pixels[subset_indices(len(pixels), FID_TRAIN_REF_NUM)]
            info = {"data": self.data_name, "split": "train", "num": len(pixels)}
            _, mean, cov, _, _ = reference_features(ext, pixels, self.cache_dir, info)
            self.ref = (ext, mean, cov, len(pixels))
        return self.ref

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, schedule: Any, prediction: str,
                 num_classes: int | None = None) -> dict[str, float]:
        """Sample with ``model`` (in eval mode) and score: {"eval_<metric>", "eval_num", "eval_ref_num", "eval_s"}."""
        from .sampling import DEFAULT_SAMPLER, image_generators, sample

        t0 = time.perf_counter()
        ext, mean, cov, ref_num = self._prepare()
        was_training = model.training
        model.eval()
        name, spacing, _ = DEFAULT_SAMPLER
        c, s = self.data.channels, self.data.image_size
        pixels = []
        for i0 in range(0, self.num, 256):
            idx = range(i0, min(self.num, i0 + 256))
            labels = None if not num_classes else torch.tensor(list(idx), device=self.device) % num_classes
            x = sample(model, (len(idx), c, s, s), schedule, sampler=name, steps=min(self.steps, schedule.timesteps),
                       spacing=spacing, generator=image_generators(self.seed, idx), prediction=prediction,
                       labels=labels, device=self.device)
            pixels.append(to_pixels(x))
        model.train(was_training)
        feats = ext.features(np.concatenate(pixels))
        value = fd_against(feats, mean, cov)
        return {f"eval_{self.metric}": value, "eval_num": self.num, "eval_ref_num": ref_num,
                "eval_s": time.perf_counter() - t0}
