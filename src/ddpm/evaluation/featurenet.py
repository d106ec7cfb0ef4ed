"""FeatureNet: the small classifier whose penultimate layer gives the quick FD (``ddpm eval --metrics fd``,
``ddpm train --eval-every``).

:class:`FeatureNet` is a compact CNN classifier for small images (28×28 Fashion-MNIST, 8×8 digits).
Inception-v3 features make no sense at these sizes (and need a download), so a FeatureNet is trained on
the real training split and its penultimate layer (the global-average-pooled last convolution, like
Inception's pool3) is the feature space. Numbers are therefore comparable only between runs that use the
same FeatureNet weights.

:func:`featurenet_for` gives a data set's FeatureNet behind the extractor interface of
:mod:`ddpm.evaluation.reference` (:class:`FeatureNetExtractor`): trained once per data set on its labelled train split
and cached by the data's content hash (it is never retrained when the file is there; the run that trains it
says so).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import ParameterError
from ..files import file_sha256, save_safetensors
from ..images import pixels_to_unit
from .reference import CACHE_VERSION, content_sha256


class FeatureNet(nn.Module):
    """Compact CNN classifier for (B, C, S, S) images in [-1, 1]; ``features`` is its penultimate layer.

    conv3×3(C→w) BN ReLU, maxpool 2 → conv3×3(w→2w) BN ReLU, maxpool 2 → conv3×3(2w→2w) BN ReLU →
    global average pool → ``feature_dim`` = 2w features → linear → ``num_classes`` logits.
    For 28×28 with w = 32: about 5.6M multiply-adds per image (28→14→7); 8×8 goes 8→4→2.
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.config = {"channels": int(channels), "num_classes": int(num_classes), "width": int(width)}
        w = width
        # BatchNorm makes the few CPU epochs count.
        self.body = nn.Sequential(
            nn.Conv2d(channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, w, S/2, S/2)
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2w, S/4, S/4)
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),  # (B, 2w, S/4, S/4)
        )
        self.head = nn.Linear(2 * w, num_classes)
        self.feature_dim = 2 * w

    def features(self, x: Tensor) -> Tensor:
        """(B, C, S, S) → (B, feature_dim): the global-average-pooled last convolution (non-negative)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) → (B, num_classes) logits."""
        return self.head(self.features(x))


def train_feature_net(
    images: Tensor,
    labels: Tensor,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    width: int = 32,
    log: Callable[[str], None] | None = None,
) -> FeatureNet:
    """Train a :class:`FeatureNet` on ``images`` (N, C, S, S) in [-1, 1] and ``labels`` (N,) with Adam.

    Seeded (init and batch order come from ``seed``), so the same data and thread count give the same
    weights. Light augmentation is left out on purpose: the features should describe the data as it is.
    """
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"want images (N, C, S, S) and labels (N,); got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    torch.manual_seed(seed)
    net = FeatureNet(images.shape[1], int(labels.max()) + 1, width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    steps_total = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps_total, pct_start=0.15)
    net.train()
    t0 = time.perf_counter()
    with torch.enable_grad():  # callers may sample under no_grad (the --eval-every hook): training needs grads
        for epoch in range(epochs):
            _feature_net_epoch(
                net, opt, sched, images, labels, torch.randperm(n, generator=gen), batch_size, epoch, epochs, t0, log
            )
    return net.eval().requires_grad_(False)


def _feature_net_epoch(
    net: FeatureNet,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    images: Tensor,
    labels: Tensor,
    order: Tensor,
    batch_size: int,
    epoch: int,
    epochs: int,
    t0: float,
    log: Callable[[str], None] | None,
) -> None:
    """One pass over ``images`` (N, C, S, S) in the order ``order`` (N,), logging loss and accuracy."""
    n = images.shape[0]
    total, correct, loss_sum = 0, 0, 0.0
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        x, y = images[idx], labels[idx]
        logits = net(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += len(idx)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += loss.item() * len(idx)
    if log is not None:
        log(
            f"feature net epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.3f}, "
            f"train acc {correct / total:.3f} ({time.perf_counter() - t0:.0f} s)"
        )


@torch.no_grad()
def extract_features(net: FeatureNet, images: Tensor, batch_size: int = 500) -> Tensor:
    """Features (N, feature_dim) float64 of images (N, C, S, S) in [-1, 1]."""
    net.eval()
    out = [net.features(images[i : i + batch_size].float()) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out).double()


@torch.no_grad()
def accuracy(net: FeatureNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` (N, C, S, S) that ``net`` classifies as ``labels`` (N,)."""
    net.eval()
    hits = sum(
        int((net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, images.shape[0], batch_size)
    )
    return hits / images.shape[0]


def save_feature_net(net: FeatureNet, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Atomically write the weights and config to a safetensors file (no pickle)."""
    meta = {k: str(v) for k, v in net.config.items()}
    meta.update(metadata or {})
    save_safetensors(path, net.state_dict(), meta)


def load_feature_net(path: str | os.PathLike[str]) -> tuple[FeatureNet, dict[str, str]]:
    """Read a file written by :func:`save_feature_net`: (network in eval mode, its metadata)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    try:
        net = FeatureNet(int(meta["channels"]), int(meta["num_classes"]), int(meta["width"]))
    except KeyError as e:
        raise ValueError(f"{path} is not a FeatureNet file (metadata lacks {e})") from None
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False), meta


# ---------------------------------------------------------------------------- the extractor


class FeatureNetExtractor:
    """A trained :class:`FeatureNet` behind the extractor interface of :mod:`.reference` (64-d features)."""

    name = "featurenet"

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        net, self.meta = load_feature_net(path)  # ValueError when the file is not a FeatureNet
        self.path, self.sha256 = Path(path), file_sha256(path)
        self.device = torch.device(device)
        self.net = net.to(self.device)

    def protocol(self) -> dict[str, str]:
        return {
            "name": self.name,
            "file": str(self.path),
            "sha256": self.sha256,
            "features": f"global-average-pooled last convolution, {self.net.feature_dim}-d",
            "input": "x = pixel/127.5 - 1, the data's own size and channels",
            # In this order: safetensors returns the metadata in a different order in every process.
            **{k: self.meta[k] for k in ("data", "trained_on", "epochs", "train_accuracy") if k in self.meta},
        }

    @torch.no_grad()
    def features(
        self, pixels: np.ndarray, batch_size: int = 500, progress: bool = False, desc: str = "featurenet"
    ) -> Tensor:
        """uint8 (N, C, H, W) → (N, feature_dim) float64 on the CPU. (``progress`` and ``desc`` are the
        extractor interface's; a FeatureNet pass is too quick to need a bar.)"""
        out = []
        for i in range(0, len(pixels), batch_size):
            x = pixels_to_unit(torch.as_tensor(pixels[i : i + batch_size]).to(self.device))
            out.append(self.net.features(x).double().cpu())
        return torch.cat(out)


def featurenet_epochs(n: int) -> int:
    """About 300 optimisation steps of 128 images, and at least 2 epochs: 2 for Fashion-MNIST, 22 for digits."""
    return max(2, math.ceil(300 * 128 / n))


def featurenet_for(
    train_pixels: np.ndarray,
    train_labels: Tensor | None,
    data_name: str,
    cache_dir: Path,
    featurenet: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> FeatureNetExtractor:
    """The FeatureNet of a data set: the file ``featurenet`` if given, else the cached one for this train split's
    content.

    When none is cached it is trained once, on all of ``train_pixels`` uint8 (N, C, H, W) with their
    ``train_labels`` (N,), seeded, and saved; ``log`` says so and where. Unlabelled data (``train_labels``
    None) raises ParameterError: the network is a classifier. So does a file that is not a FeatureNet.
    """
    if featurenet is not None:
        if not Path(featurenet).is_file():
            raise ParameterError(
                f"{{featurenet}} {featurenet}: no such file; drop the flag to use (or train) the cached one"
            )
        return _extractor(Path(featurenet), device)
    if train_labels is None:
        raise ParameterError(
            f"{{train_labels}} is None: a FeatureNet is a classifier, and {data_name} has no labels; "
            "use class subfolders, or pass {featurenet}"
        )
    key = content_sha256(train_pixels, train_labels)
    file = cache_dir / "featurenet" / f"featurenet-v{CACHE_VERSION}-{key[:20]}.safetensors"
    if not file.is_file():
        n = len(train_pixels)
        epochs = featurenet_epochs(n)
        log(f"training the FeatureNet for {data_name} once ({n} images, {epochs} epochs; cached as {file})")
        t0 = time.perf_counter()
        images = pixels_to_unit(train_pixels)
        net = train_feature_net(images, train_labels, epochs=epochs, seed=0)
        meta = {
            "data": data_name,
            "trained_on": f"{n} train images, content sha256 {key}",
            "epochs": str(epochs),
            "train_accuracy": f"{accuracy(net, images, train_labels):.4f}",
            "train_seconds": f"{time.perf_counter() - t0:.0f}",
        }
        save_feature_net(net, file, meta)
    return _extractor(file, device)


def _extractor(file: Path, device: str | torch.device) -> FeatureNetExtractor:
    """The extractor of a FeatureNet file; a file that is not one raises ParameterError naming ``featurenet``."""
    try:
        return FeatureNetExtractor(file, device)
    except ValueError as e:
        raise ParameterError(f"{{featurenet}} {file}: {e}") from None
