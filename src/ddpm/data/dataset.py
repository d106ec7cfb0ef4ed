"""The in-memory data set every reader returns, and what the readers share.

An :class:`ImageDataset` holds square images ``(N, C, H, W)``, C = 1 (grayscale) or 3 (colour), with optional
int64 class labels ``(N,)``; ``images`` gives them as float32 in [-1, 1]. The 8-bit mapping is x / 127.5 - 1, so
0 -> -1 and 255 -> 1 exactly (16-bit images: x / 257 first). The set is held as its uint8 codes (a quarter of
float32's memory) wherever that is lossless, else as float32 in [-1, 1].

Also here: the checks on a ``--data`` request made before anything is read, and the names that describe a set in
logs and errors. Errors about a bad argument are :class:`~ddpm.errors.ParameterError` naming ``{data}``: the CLI
shows its flags there.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import ParameterError, UserError
from ..images import to_uint8

KNOWN_DATASETS = ("digits", "fashion-mnist")
SPLITS = ("train", "test")
PREPARED_MANIFEST = "manifest.json"  # the file that marks a finished prepared set (ddpm.data.prepared)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


@dataclass
class ImageDataset:
    """A set of square images in [-1, 1], optionally with class labels.

    ``pixels`` holds the images ``(N, C, H, W)`` with H == W and C in {1, 3}: uint8 codes k in
    0..``levels`` meaning x = k / (levels / 2) − 1 (levels 255 for 8-bit data, 16 for digits), or float32
    x in [-1, 1] when the images are not on such a grid (resampled, 16-bit). ``images`` converts the whole
    set to float32 (a new tensor each call); :meth:`to_unit` converts a batch of ``pixels``.
    ``labels`` is int64 ``(N,)`` with values in 0..K-1, or None when unlabelled; ``class_names`` has K
    entries when labelled.

    A prepared set (:func:`ddpm.data.prepared.open_prepared`) holds ``pixels`` as a read-only memory map of its file,
    with ``row_check`` set: :meth:`gather` checks each block of rows against its checksum on first use.
    """

    pixels: Tensor  # (N, C, H, W) uint8 codes in 0..levels, or float32 in [-1, 1]
    labels: Tensor | None  # (N,) int64 in 0..K-1, or None
    class_names: list[str] | None  # K names, or None when unlabelled
    name: str  # e.g. "digits (1797 images, 8x8, 1 channel, 10 classes)"
    skipped: list[str] = field(default_factory=list)  # files skipped as unreadable (skip_bad=True)
    levels: int = 255  # the largest code of uint8 ``pixels``
    row_check: Callable[[Tensor], None] | None = field(default=None, repr=False, compare=False)

    @property
    def memory_mapped(self) -> bool:
        """True when ``pixels`` is a memory map of a prepared file: read rows with :meth:`gather`, don't copy it."""
        return self.row_check is not None

    def gather(self, indices: Tensor) -> Tensor:
        """Rows ``indices`` (B,) int64 of ``pixels`` as stored: (B, C, H, W), a new CPU tensor.

        For a memory-mapped set every block of rows is checked against the prepared file's checksums the first
        time it is read (UserError when it does not match)."""
        if self.row_check is not None:
            self.row_check(indices)
        return self.pixels[indices]

    def to_unit(self, pixels: Tensor) -> Tensor:
        """Some of this set's ``pixels`` (any shape, e.g. a batch ``(B, C, H, W)``) as float32 in [-1, 1]."""
        return pixels if pixels.is_floating_point() else pixels.float().div_(self.levels / 2).sub_(1.0)

    def as_uint8(self) -> np.ndarray:
        """All images as 8-bit pixels, uint8 ``(N, C, H, W)`` (p ↔ p/127.5 − 1): the stored ``pixels`` themselves
        when they are 8-bit codes, else ``images`` rounded to the nearest 8-bit level."""
        if self.pixels.dtype == torch.uint8 and self.levels == 255:
            return self.pixels.numpy()
        return to_uint8(self.images, channels_last=False)

    @property
    def images(self) -> Tensor:
        """All images, float32 ``(N, C, H, W)`` in [-1, 1]: a conversion of ``pixels`` (4x its memory if uint8)."""
        return self.to_unit(self.pixels)

    @property
    def channels(self) -> int:
        """C: 1 for grayscale, 3 for colour."""
        return int(self.pixels.shape[1])

    @property
    def image_size(self) -> int:
        """H (== W)."""
        return int(self.pixels.shape[-1])

    @property
    def num_classes(self) -> int | None:
        """K, or None when the dataset has no labels."""
        return None if self.labels is None or self.class_names is None else len(self.class_names)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def check_request(data: str, image_size: int | None, split: str) -> None:
    """Refuse a bad ``image_size``, ``split`` or an empty ``data`` before reading anything."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1
    ):
        raise UserError(f"image size must be a positive whole number of pixels, got {image_size!r}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose train or test")
    if not data or not data.strip():
        raise ParameterError(
            f"{{data}} is empty; pass a folder of images, a dataset file, or one of: {', '.join(KNOWN_DATASETS)}"
        )


def missing_source(data: str) -> ParameterError:
    """The error for a ``data`` that is neither an existing file or folder nor a known data set name."""
    known = ", ".join(KNOWN_DATASETS)
    return ParameterError(f"{{data}} {data!r}: no such file or folder, and not a known dataset name (known: {known})")


def describe(title: str, images: Tensor, num_classes: int | None) -> str:
    """:func:`describe_shape` of images ``(N, C, H, W)``."""
    return describe_shape(title, tuple(images.shape), num_classes)


def describe_shape(title: str, shape: tuple[int, ...], num_classes: int | None) -> str:
    """A data set's name for logs and checkpoints, from its images' shape (N, C, H, W): "title (N images, HxW, ...)"."""
    n, c, h, w = shape
    classes = "unlabelled" if num_classes is None else f"{num_classes} classes"
    return f"{title} ({n} images, {h}x{w}, {c} channel{'s' if c != 1 else ''}, {classes})"


def list_names(paths: list[str], first: int = 3) -> str:
    """The first ``first`` of ``paths`` joined for a message, and how many more there are."""
    shown = ", ".join(paths[:first])
    return shown + (f" and {len(paths) - first} more" if len(paths) > first else "")
