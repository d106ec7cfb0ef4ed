"""What a training step reads: the images of its batch and, for a conditioned task, their conditions.

``--task generate`` reads the images alone. ``--task super-resolution --scale N`` computes each image's condition
on the fly: the image (after its flip) as 8-bit pixels, brought down N times by Pillow's Lanczos
(:func:`ddpm.conditioning.low_of`), corrupted by conditioning augmentation where it is on, and brought back up to the
model's size. ``--task paired`` reads targets and their inputs (:mod:`ddpm.data.paired`), the pair flipped together.
Every random number comes from the step's draws (:mod:`.draws`), so conditioned runs resume exactly and W processes
compute what one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cascade import COND_NOISE, PROJECT, network_conditions
from ..conditioning import ConditionSpec, low_of, low_projector
from ..data.dataset import ImageDataset
from ..data.paired import paired_data
from ..data.preparing import training_data
from ..errors import ParameterError
from ..generate import SampledConditions
from ..images import pixels_to_unit, to_8bit
from ..runtime import Dist
from ..seeding import image_seed, mix
from .augment import AugmentDraws, augment
from .config import TrainConfig


@dataclass(frozen=True)
class Augmentation:
    """One micro-batch's non-leaking augmentation: its draws, the probability and the operations."""

    draws: AugmentDraws
    p: float
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """What one pass trains on: x_0 (B, C, H, W) in [-1, 1], the network's condition (B, Cc, H, W) or None, and the
    augmentation parameters (B, AUGMENT_DIM) or None."""

    x0: Tensor
    cond: Tensor | None
    augment: Tensor | None


@dataclass
class TrainingSet:
    """The items a run trains on, on ``device``: images (a set held there, or a prepared set left in its memory map
    and gathered a batch at a time), and for a paired task the inputs, item i being target row ``target_rows[i]``
    with input row ``input_rows[i]``. ``spec`` describes the condition (None: unconditioned)."""

    data: ImageDataset
    spec: ConditionSpec | None
    device: torch.device
    inputs: ImageDataset | None = None
    target_rows: Tensor | None = None  # (M,) int64 on the CPU (paired)
    input_rows: Tensor | None = None  # (M,) int64 on the CPU (paired)
    dropped: list[str] = field(default_factory=list)  # pairs left out for an unreadable partner (--skip-bad)

    def __post_init__(self) -> None:
        self._held = self._hold(self.data)
        self._held_inputs = None if self.inputs is None else self._hold(self.inputs)

    def _hold(self, data: ImageDataset) -> Tensor:
        """(N, C, H, W) as stored: moved to the device, or (a prepared set) its memory map, read a batch at a time."""
        return data.pixels if data.memory_mapped else data.pixels.to(self.device)

    def __len__(self) -> int:
        return len(self.data) if self.target_rows is None else int(self.target_rows.shape[0])

    @property
    def labels(self) -> Tensor | None:
        """Each item's class (M,) int64 on the device, or None for unlabelled data."""
        if self.data.labels is None:
            return None
        rows = self.data.labels if self.target_rows is None else self.data.labels[self.target_rows]
        return rows.to(self.device)

    def images(self, indices: Tensor) -> Tensor:
        """Items ``indices`` (B,) int64: their images (B, C, H, W) in [-1, 1] on the device."""
        rows = indices.cpu() if self.target_rows is None else self.target_rows[indices.cpu()]
        return self.data.to_unit(_read(self.data, self._held, rows, self.device))

    def batch(self, indices: Tensor, flip: Tensor | None = None, level: Tensor | None = None,
              noise: Tensor | None = None, augmented: Augmentation | None = None) -> Batch:  # fmt: skip
        """Items ``indices`` (B,): their images x_0 (B, C, H, W) in [-1, 1], mirrored where ``flip`` (B,) bool, then
        augmented by ``augmented`` (:mod:`.augment`), and their conditions as the network takes them (B, Cc, H, W);
        ``level`` (B,) and ``noise`` (B, C, h, w) augment a super-resolution condition (see
        :meth:`ConditionSpec.network_input`), which is the low view of the augmented image."""
        x0 = self.images(indices)
        if flip is not None:
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        labels = None
        if augmented is not None:
            x0, labels = augment(x0, augmented.draws, augmented.p, augmented.ops)
        return Batch(x0, self._condition(x0, indices, flip, level, noise), labels)

    def _condition(self, x0: Tensor, indices: Tensor, flip: Tensor | None, level: Tensor | None,
                   noise: Tensor | None) -> Tensor | None:  # fmt: skip
        """The conditions (B, Cc, H, W) of items ``indices`` whose images (after flips and augmentation) are x0."""
        spec = self.spec
        if spec is None:
            return None
        size = self.data.image_size
        if spec.task == "super-resolution":
            assert spec.scale is not None  # recorded for the task
            return spec.network_input(low_of(to_8bit(x0), spec.scale), size, level, noise)
        assert self.inputs is not None and self.input_rows is not None and self._held_inputs is not None  # paired
        given = self.inputs.to_unit(_read(self.inputs, self._held_inputs, self.input_rows[indices.cpu()], self.device))
        if flip is not None:
            given = torch.where(flip.view(-1, 1, 1, 1), given.flip(-1), given)
        return spec.network_input(given, size)

    def conditions(self, indices: Tensor) -> Tensor | None:
        """Items ``indices``' conditions as given (not flipped, not augmented): the low images (B, C, h, w) in
        [-1, 1] of super-resolution, the inputs (B, Ci, H, W) of paired data, None unconditioned."""
        if self.spec is None:
            return None
        if self.spec.task == "super-resolution":
            assert self.spec.scale is not None
            low = low_of(to_8bit(self.images(indices)), self.spec.scale)
            return pixels_to_unit(low)
        assert self.inputs is not None and self.input_rows is not None and self._held_inputs is not None
        rows = self.input_rows[indices.cpu()]
        return self.inputs.to_unit(_read(self.inputs, self._held_inputs, rows, self.device))

    def sampling_conditions(self, indices: list[int], seed: int) -> SampledConditions:
        """What the network takes to sample items ``indices`` (a grid's, --eval-every's), as ``ddpm sample`` gives
        it by default: their conditions (B, Cc, H, W) and augmentation level (B,) at :data:`ddpm.cascade.COND_NOISE`,
        its noise seeded by (seed, item), and (super-resolution, :data:`ddpm.cascade.PROJECT`) the projection of x̂_0
        onto their low images; (None, None, None) unconditioned."""
        if self.spec is None:
            return None, None, None
        given = self.conditions(torch.tensor(indices, dtype=torch.long))
        assert given is not None  # conditioned
        gens = [torch.Generator().manual_seed(image_seed(mix(seed, 0xC0DE), i)) for i in indices]
        cond, level = network_conditions(self.spec, given, self.data.image_size, COND_NOISE, gens, self.device)
        return cond, level, low_projector(self.spec, given.to(self.device)) if PROJECT else None

    def shown_conditions(self, indices: list[int]) -> Tensor:
        """Items ``indices``' conditions as a picture beside their images: (B, C, H, W) in [-1, 1], a low image
        enlarged pixel by pixel, an input in the images' channels."""
        given = self.conditions(torch.tensor(indices, dtype=torch.long))
        assert given is not None  # conditioned
        c, size = self.data.channels, self.data.image_size
        shown = F.interpolate(given, size=(size, size), mode="nearest") if given.shape[-1] != size else given
        if shown.shape[1] != c:
            shown = shown.repeat(1, c, 1, 1) if shown.shape[1] == 1 else shown.mean(1, keepdim=True)
        return shown


def _read(data: ImageDataset, held: Tensor, rows: Tensor, device: torch.device) -> Tensor:
    """Rows ``rows`` (B,) of a set as stored, on ``device``: indexed there for a set held on the device; gathered
    from a prepared set's memory map on the CPU (rows checked against its checksums) and only the batch moved."""
    if data.memory_mapped:
        return data.gather(rows).to(device)
    return held[rows.to(held.device)]


def training_set(cfg: TrainConfig, px: Dist) -> TrainingSet:
    """The run's items on every rank of ``px``: --data (prepared where it is a folder) and, for a paired task, the
    inputs of --condition-data at the targets' size; refuses a scale the image size does not divide."""

    def load(folder: str, size: int | None) -> ImageDataset:
        return training_data(folder, size, cfg.skip_bad, cfg.prepared_dir, px, progress=cfg.progress)

    if cfg.task == "paired":
        assert cfg.condition_data is not None  # validated with the task
        pairs = paired_data(cfg.data, cfg.condition_data, cfg.image_size, load)
        spec = ConditionSpec("paired", pairs.inputs.channels, pairs.targets.image_size)
        return TrainingSet(pairs.targets, spec, px.device, pairs.inputs, pairs.target_rows, pairs.input_rows,
                           pairs.dropped)  # fmt: skip
    data = load(cfg.data, cfg.image_size)
    if cfg.task == "generate":
        return TrainingSet(data, None, px.device)
    assert cfg.scale is not None  # validated with the task
    size = data.image_size
    if size % cfg.scale or size // cfg.scale < 2:
        fits = max(2, round(size / cfg.scale)) * cfg.scale
        raise ParameterError(f"{{scale}} {cfg.scale} does not divide the image size {size} into a low image of 2 px "
                             f"or more: pass {{image_size}} {fits}, or another {{scale}}")  # fmt: skip
    return TrainingSet(data, ConditionSpec("super-resolution", data.channels, size // cfg.scale, cfg.scale,
                                           cfg.cond_noise_max), px.device)  # fmt: skip
