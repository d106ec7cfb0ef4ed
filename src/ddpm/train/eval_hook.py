"""``ddpm train --eval-every K``: a sample-quality number during training, from the EMA weights.

Every call samples the same images 0..num-1 (the same seeds, the default sampler) and scores them against the
train split's cached reference statistics, so the curve moves only with the weights. FD (FeatureNet features,
:mod:`ddpm.evaluation.featurenet`) costs seconds on a CPU; FID (:mod:`ddpm.evaluation.inception`) embeds
:data:`~ddpm.evaluation.reference.FID_TRAIN_REF_NUM` reference images once and then only the samples.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ParameterError
from ..evaluation.featurenet import featurenet_for
from ..evaluation.inception import Inception, find_inception
from ..evaluation.reference import (
    FID_TRAIN_REF_NUM,
    fd_against,
    reference_features,
    subset_indices,
    to_pixels,
)
from ..files import cache_dir as default_cache
from ..generate import draw_batches
from .log import default_choice

BATCH_SIZE = 256  # images per sampling batch; image i is the same at any batch size


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
    ) -> None:
        if metric not in ("fd", "fid"):
            raise ParameterError(f"{{eval_metric}} must be fd or fid; got {metric!r}")
        self.metric, self.num, self.data, self.data_name = metric, num, data, data_name
        self.seed, self.steps, self.device, self.progress = seed, steps, device, progress
        self.cache_dir = cache_dir or default_cache()
        self.ref: tuple[Any, torch.Tensor, torch.Tensor, int] | None = None
        # Fail before training starts, not at the first evaluation.
        if metric == "fd" and data.labels is None:
            raise ParameterError(
                f"{{eval_metric}} fd needs a labelled data set (FeatureNet is a classifier), and "
                f"{data_name} has none: use class subfolders, or {{eval_metric}} fid"
            )
        if metric == "fid":
            find_inception()

    def _prepare(self) -> tuple[Any, torch.Tensor, torch.Tensor, int]:
        """(extractor, reference mean (D,), covariance (D, D), reference count), built on the first call."""
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
            _, mean, cov, _, _ = reference_features(ext, pixels, self.cache_dir, info, progress=self.progress)
            self.ref = (ext, mean, cov, len(pixels))
        return self.ref

    @torch.no_grad()
    def __call__(
        self,
        model: torch.nn.Module,
        schedule: Any,
        prediction: str,
        num_classes: int | None = None,
        variance: str = "fixed-small",
    ) -> dict[str, float]:
        """Sample with ``model`` (in eval mode) and score: {"eval_<metric>", "eval_num", "eval_ref_num", "eval_s"}.

        With ``num_classes`` image i is of class i mod num_classes, so every class is scored."""
        t0 = time.perf_counter()
        ext, mean, cov, ref_num = self._prepare()
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
            )
        ]
        model.train(was_training)
        feats = ext.features(np.concatenate(pixels))
        value = fd_against(feats, mean, cov)
        return {
            f"eval_{self.metric}": value,
            "eval_num": self.num,
            "eval_ref_num": ref_num,
            "eval_s": time.perf_counter() - t0,
        }
