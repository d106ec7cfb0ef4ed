"""The random draws of a training step, each a pure function of (seed, step).

The data order of epoch e comes from a generator seeded by (seed, e), and step k's timesteps, noise, label
dropout and flips for the *whole global batch* from one seeded by (seed, k); each rank and micro-batch takes its
slice. So resuming needs no saved RNG state (N steps + resume + N steps equals 2N steps bit for bit), and W
processes with batch B draw what one process with batch W·B draws.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..losses import Objective
from ..seeding import mix
from .augment import AugmentDraws, draw_augment


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> Tensor:
    """Indices (batch_size,) of the images in ``step``'s global batch.

    Epoch-wise shuffles, the last partial batch dropped; with fewer images than one batch an epoch is
    several shuffles concatenated. Depends only on (step, n, batch_size, seed).
    """
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(step, per_epoch)
    perm = _epoch_order(n, max(1, math.ceil(batch_size / n)), seed, epoch)
    return perm[j * batch_size : (j + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, reps: int, seed: int, epoch: int) -> Tensor:
    """The shuffled image order of one epoch, (n · reps,); cached so a step does not redraw it."""
    g = torch.Generator().manual_seed(mix(seed, epoch, 0xDA7A))
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])


@dataclass(frozen=True)
class Draws:
    """The random draws of one optimisation step for the whole global batch (G images), identical on every rank."""

    indices: Tensor  # (G,) int64: which images
    t: Tensor  # (G,) int64: their timesteps
    noise: Tensor  # (G, C, H, W): their ε
    drop: Tensor  # (G,) bool: label replaced by "no label" (class-conditional runs)
    flip: Tensor  # (G,) bool: mirrored (--flip runs)
    cond_level: Tensor | None = None  # (G,) conditioning-augmentation levels a (super-resolution runs with it on)
    cond_noise: Tensor | None = None  # (G, C, h, w): the noise ε of that augmentation, at the low images' size
    augment: AugmentDraws | None = None  # the non-leaking augmentation's numbers (--augment runs)


def step_draws(
    step: int,
    seed: int,
    n_images: int,
    global_batch: int,
    image_shape: tuple[int, ...] | torch.Size,
    objective: Objective,
    label_dropout: float,
    device: torch.device | str = "cpu",
    cond_shape: tuple[int, ...] | None = None,
    cond_noise_max: float = 0.0,
    augment: bool = False,
) -> Draws:
    """Step ``step``'s draws, a pure function of the arguments: the images from :func:`batch_indices`, then
    t, ε, label dropout and flips, in that order, from one generator on ``device`` seeded by (seed, step); with
    ``cond_shape`` (C, h, w) then the conditioning-augmentation levels, uniform on [0, ``cond_noise_max``], and
    their noise; with ``augment`` then the augmentation's numbers (:func:`ddpm.train.augment.draw_augment`). Each comes
    after every other draw, so the draws of a run without it are unchanged.

    ``image_shape`` is (C, H, W). Each rank and micro-batch of the loop takes its slice of the global batch.
    """
    g = torch.Generator(device).manual_seed(mix(seed, step))
    indices = batch_indices(step, n_images, global_batch, seed).to(device)
    t = objective.draw_t(global_batch, g, device)
    noise = torch.randn((global_batch, *image_shape), generator=g, device=device)
    drop = torch.rand(global_batch, generator=g, device=device) < label_dropout
    flip = torch.rand(global_batch, generator=g, device=device) < 0.5
    level = cond_noise = None
    if cond_shape is not None:
        level = torch.rand(global_batch, generator=g, device=device) * cond_noise_max
        cond_noise = torch.randn((global_batch, *cond_shape), generator=g, device=device)
    aug = draw_augment(g, global_batch, device) if augment else None
    return Draws(indices, t, noise, drop, flip, level, cond_noise, aug)
