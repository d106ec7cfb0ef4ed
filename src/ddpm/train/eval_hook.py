"""``ddpm train --eval-every K``: a sample-quality number during training, from the EMA weights.

Every call samples the same images 0..num-1 (the same seeds, the default sampler) and scores them against the
train split's cached reference statistics, so the curve moves only with the weights. FD (FeatureNet features,
:mod:`ddpm.evaluation.featurenet`) costs seconds on a CPU; FID (:mod:`ddpm.evaluation.inception`) embeds
:data:`~ddpm.evaluation.reference.FID_TRAIN_REF_NUM` reference images once and then only the samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import read_meta
from ..data.load import load_dataset
from ..errors import ParameterError, UserError
from ..evaluation.featurenet import featurenet_for
from ..evaluation.inception import Inception, find_inception
from ..evaluation.metrics import memorization
from ..evaluation.reference import (
    FID_TRAIN_REF_NUM,
    fd_against,
    reference_features,
    subset_indices,
    to_pixels,
)
from ..files import cache_dir as default_cache
from ..generate import SampledConditions, draw_batches
from .batches import TrainingSet
from .config import PATIENCE
from .log import default_choice

BATCH_SIZE = 256  # images per sampling batch; image i is the same at any batch size
BEST_NAME = "best.safetensors"  # the best --eval-every checkpoint, in the run directory


class TrainingEval:
    """``ddpm train --eval-every K``: FD (FeatureNet) or FID of ``num`` EMA samples against the train split.

    The first call builds the extractor (training the FeatureNet once if none is cached) and the
    reference statistics (cached, so a resumed or repeated run does not pay again). Every call samples
    images 0..num-1 from the same seeds with the default sampler, so the curve moves only with the weights.
    """

    def __init__(
        self,
        metric: str,
        num: int,
        data: Any,
        data_name: str,
        seed: int,
        steps: int,
        device: torch.device,
        cache_dir: Path | None = None,
        progress: bool = False,
        items: TrainingSet | None = None,
    ) -> None:
        if metric not in ("fd", "fid"):
            raise ParameterError(f"{{eval_metric}} must be fd or fid; got {metric!r}")
        self.metric, self.num, self.data, self.data_name = metric, num, data, data_name
        self.seed, self.steps, self.device, self.progress = seed, steps, device, progress
        self.items = items  # a conditioned run's items: sample i is drawn given item i's condition (i mod their count)
        self.cache_dir = cache_dir or default_cache()
        self.ref: _Reference | None = None
        # Fail before training starts, not at the first evaluation.
        if metric == "fd" and data.labels is None:
            raise ParameterError(
                f"{{eval_metric}} fd needs a labelled data set (FeatureNet is a classifier), and "
                f"{data_name} has none: use class subfolders, or {{eval_metric}} fid"
            )
        if metric == "fid":
            find_inception()

    def _conditions(self, indices: list[int]) -> SampledConditions:
        """The condition (B, Cc, H, W), level (B,) and x̂_0 projection samples ``indices`` are drawn with: item i mod
        the items'."""
        assert self.items is not None  # a conditioned run
        return self.items.sampling_conditions([i % len(self.items) for i in indices], self.seed)

    def _prepare(self) -> _Reference:
        """The extractor and the reference's features and statistics (and the held-out images' features, the
        memorization share's baseline), built on the first call and cached on disk."""
        if self.ref is None:
            pixels = self.data.as_uint8()
            ext: Any
            if self.metric == "fd":
                ext = featurenet_for(pixels, self.data.labels, self.data_name, self.cache_dir, device=self.device)
            else:
                ext = Inception(device=self.device)
                pixels = pixels[subset_indices(len(pixels), FID_TRAIN_REF_NUM)]
            info = {"data": self.data_name, "split": "train", "num": len(pixels)}
            # The reference is embedded once (then cached): a bar shows its time left (Inception: minutes on a CPU).
            feats, mean, cov, _, _ = reference_features(ext, pixels, self.cache_dir, info, progress=self.progress)
            self.ref = _Reference(ext, mean, cov, feats, self._held_out(ext, len(pixels)))
        return self.ref

    def _held_out(self, ext: Any, num: int) -> torch.Tensor | None:
        """Features of up to ``num`` test-split images (None where the data has no test split: the memorization
        baseline is then leave-one-out within the training images)."""
        try:
            test = load_dataset(self.data_name, self.data.image_size, split="test").as_uint8()
        except UserError:
            return None
        test = test[subset_indices(len(test), min(num, len(test)), seed=2)]
        info = {"data": self.data_name, "split": "test", "num": len(test), "use": "memorization"}
        return reference_features(ext, test, self.cache_dir, info, progress=self.progress)[0]

    @torch.no_grad()
    def __call__(
        self,
        model: torch.nn.Module,
        schedule: Any,
        prediction: str,
        num_classes: int | None = None,
        variance: str = "fixed-small",
    ) -> dict[str, float]:
        """Sample with ``model`` (in eval mode) and score: {"eval_<metric>", "eval_memorized", "eval_num",
        "eval_ref_num", "eval_s"}, where eval_memorized is the share of samples closer to a training image than 99% of
        held-out images are (``ddpm eval --memorization``'s, in the metric's features; about 0.01 when nothing is
        copied).

        With ``num_classes`` image i is of class i mod num_classes, so every class is scored."""
        t0 = time.perf_counter()
        ref = self._prepare()
        ext, mean, cov = ref.ext, ref.mean, ref.cov
        was_training = model.training
        model.eval()
        choice = default_choice(self.steps, schedule)
        meta = {
            "channels": self.data.channels,
            "image_size": self.data.image_size,
            "prediction": prediction,
            "variance": variance,
        }
        pixels = [
            to_pixels(x)
            for _, x in draw_batches(
                model,
                schedule,
                meta,
                choice,
                self.seed,
                self.num,
                batch_size=BATCH_SIZE,
                device=self.device,
                cycle_classes=num_classes,
                conditions_for=self._conditions if self.items is not None and self.items.spec is not None else None,
            )
        ]
        model.train(was_training)
        feats = ext.features(np.concatenate(pixels))
        value = fd_against(feats, mean, cov)
        memorized = memorization(feats, ref.train, ref.held_out)["share_closer"]
        return {
            f"eval_{self.metric}": value,
            "eval_memorized": memorized,
            "eval_num": self.num,
            "eval_ref_num": len(ref.train),
            "eval_s": time.perf_counter() - t0,
        }


@dataclass
class _Reference:
    """What every evaluation of a run compares with: the extractor, the training images' features (M, D), their mean
    (D,) and covariance (D, D), and held-out images' features (T, D) or None."""

    ext: Any
    mean: torch.Tensor
    cov: torch.Tensor
    train: torch.Tensor
    held_out: torch.Tensor | None


@dataclass
class BestCheckpoint:
    """The best --eval-every score of a run so far, kept in ``best.safetensors`` beside the checkpoints (never
    rotated away), and how many evals have passed without beating it: after ``patience`` of them a run stops
    (--early-stop) or warns once."""

    path: Path
    metric: str
    every: int
    patience: int | None
    step: int | None = None
    value: float = math.inf
    warned: bool = False

    @classmethod
    def open(cls, out: Path, metric: str, every: int, patience: int | None) -> BestCheckpoint:
        """The run's record: from its best.safetensors where a resumed run has one."""
        best = cls(out / BEST_NAME, metric, every, patience)
        if best.path.is_file():
            record = read_meta(best.path).get("eval", {})
            best.step, best.value = record.get("step"), float(record.get("value", math.inf))
        return best

    def update(self, step: int, value: float, save: Callable[[Path], None]) -> tuple[bool, str | None]:
        """After the eval at ``step``: write best.safetensors (``save(path)``) where ``value`` beats the best; returns
        (whether the run stops, a line to say or None)."""
        if value < self.value:
            self.step, self.value = step, value
            save(self.path)
            return False, None
        assert self.step is not None  # the first eval always improves on inf
        waited = (step - self.step) // self.every
        limit = self.patience or PATIENCE
        if waited < limit:
            return False, None
        name = self.metric.upper()
        if self.patience is not None:
            return True, (f"stopped at step {step}: {name} has not improved for {waited} evals since step "
                          f"{self.step} ({self.value:.4g}; --early-stop {self.patience}); best.safetensors holds that "
                          "step")  # fmt: skip
        if self.warned:
            return False, None
        self.warned = True
        return False, (f"note: {name} has not improved for {waited} evals since step {self.step} ({self.value:.4g}, "
                       "kept in best.safetensors): the model may be copying its images or done; --early-stop N stops "
                       "a run after N such evals")  # fmt: skip
