"""Folders of images: listing their files, decoding each into pixels, and reading a whole folder in memory.

A folder is flat (unlabelled) or holds one subfolder per class (labelled by sorted subfolder name). Files are
decoded as :func:`ddpm.images.decode_picture` decodes a picture: (H, W) gray or (H, W, 3) colour, values 0..255
(uint8, or float32 for 16-bit), EXIF rotation applied, transparency composited onto white; with an image size they
are resized by :func:`ddpm.images.fit_square`. 8-bit images are held as their uint8 codes; 16-bit ones, not on the
8-bit grid, as float32 in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import ParameterError, UserError
from ..images import decode_picture, fit_square
from .dataset import IMAGE_EXTENSIONS, ImageDataset, describe, list_names

_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height

# A JPEG whose shorter side is at least JPEG_DRAFT_MARGIN x s x the target size (s = 2, 4 or 8) is decoded at 1/s
# scale (libjpeg's DCT scaling, Pillow's Image.draft), then resized like any other image. The margin keeps the
# final Lanczos reduction at 4x or more, where the two paths differ by at most a few levels (BENCHMARKS.md,
# "data_scale.py"); CelebA-sized files at --image-size 64 are below it and decode exactly as without a draft.
JPEG_DRAFT_MARGIN = 4
# What a prepared set records as its resize method; a prepared copy made by another method is stale.
RESIZE_METHOD = f"pillow-lanczos-centre-crop;jpeg-draft-margin-{JPEG_DRAFT_MARGIN}"


def image_files(folder: Path, recursive: bool) -> list[Path]:
    """The image files (by extension) in ``folder``, or below it when ``recursive``, sorted by their path's parts;
    hidden ones (any part starting with ".") left out, symlinked folders not followed (as ``Path.rglob``)."""
    return [Path(name) for name in _image_names(os.fspath(folder), recursive)]


def _image_names(folder: str, recursive: bool) -> list[str]:
    """:func:`image_files` as strings, from one ``os.scandir`` pass (200,000 files list in a fraction of a second)."""
    found: list[tuple[tuple[str, ...], str]] = []

    def scan(directory: str, parts: tuple[str, ...]) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if recursive and entry.is_dir(follow_symlinks=False):
                    scan(entry.path, (*parts, entry.name))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    found.append(((*parts, entry.name), entry.path))

    scan(folder, ())
    found.sort()
    return [name for _, name in found]


def decode_image(path: Path) -> np.ndarray:
    """An image file as (H, W) gray or (H, W, 3) colour, values 0..255 (uint8, or float32 for 16-bit).

    Transparent pixels are composited onto white; an EXIF rotation is applied."""
    with Image.open(path) as img:
        return _decoded(img)


def decode_fitted(path: Path, size: int) -> np.ndarray:
    """An image file resized so its shorter side is ``size`` and center-cropped: (S, S) gray or (S, S, 3) colour,
    values 0..255 (uint8, or float32 for 16-bit), S = ``size``.

    ``fit_square(decode_image(path), size)``, except that a JPEG at least :data:`JPEG_DRAFT_MARGIN` x 2 x ``size``
    on its shorter side is decoded at 1/2, 1/4 or 1/8 scale first (the largest that keeps that margin), then cropped
    and resized by the same Lanczos filter from the same box in its own pixels: a phone photo costs a small fraction
    of a full decode, and the pixels differ by a few levels (BENCHMARKS.md, "data_scale.py")."""
    with Image.open(path) as img:
        w, h = img.size
        scale = next((s for s in (8, 4, 2) if min(w, h) >= s * JPEG_DRAFT_MARGIN * size), 1)
        if scale == 1 and _plain(img) and min(w, h) != size:
            return _fitted(img, size)
        if scale == 1 or img.format not in ("JPEG", "MPO"):
            return fit_square(_decoded(img), size)
        rotated = img.getexif().get(0x0112) in _ROTATED
        drafted = img.draft(img.mode, (w // scale, h // scale))
        if drafted is None or w / drafted[1][2] != scale:  # no reduced decode on offer: decode it whole
            return fit_square(_decoded(img), size)
        arr = _decoded(img)
    if rotated:
        w, h = h, w
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2  # the full-size box, in the reduced image's pixels below
    box = (left / scale, top / scale, (left + side) / scale, (top + side) / scale)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS, box=box))


def _plain(img: Image.Image) -> bool:
    """An 8-bit gray or RGB picture without transparency or EXIF rotation: one that ``decode_picture`` returns as its
    own pixels, so it can be resized as it is."""
    return img.mode in ("L", "RGB") and "transparency" not in img.info and img.getexif().get(0x0112, 1) == 1


def _fitted(img: Image.Image, size: int) -> np.ndarray:
    """``fit_square(decode_picture(img), size)`` for a :func:`_plain` picture that needs a resize, without the copies
    of the general path (benchmarks/data_scale.py): the same Lanczos resize of the same box of the
    same pixels, so the same numbers (tested against the general path)."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)))


def _decoded(img: Image.Image) -> np.ndarray:
    """``decode_image`` of an opened file: (H, W) or (H, W, 3), its pixels loaded and decoded by ``decode_picture``."""
    img.load()
    return decode_picture(img)


def load_image_folder(folder: Path, image_size: int | None, skip_bad: bool) -> ImageDataset:
    """A folder of images read in memory: pixels (N, C, S, S), labels (N,) by class subfolder or None.

    Unreadable files raise a ParameterError naming them, or are skipped and listed with ``skip_bad``."""
    entries, names = _folder_entries(folder)
    arrays, labels, bad = [], [], []
    for path, label in entries:
        try:
            arr = decode_image(path)
        except Exception:  # any decoder failure means "this file is not a readable image"
            bad.append(str(path.relative_to(folder)))
            continue
        arrays.append(fit_square(arr, image_size) if image_size is not None else arr)
        labels.append(label)
    if bad and not skip_bad:
        raise ParameterError(
            f"{len(bad)} file(s) in {folder} could not be read as images: {list_names(bad)}; "
            "fix or remove them, or pass {skip_bad} to skip them"
        )
    if not arrays:
        raise UserError(f"none of the {len(entries)} image files in {folder} could be read; check the files")
    if image_size is None:
        _check_one_square_size(arrays, folder)
    images = _stack(arrays)
    labels_t = torch.tensor(labels, dtype=torch.int64) if names is not None else None
    title = describe(folder.name or str(folder), images, None if names is None else len(names))
    return ImageDataset(images, labels_t, names, title, bad if skip_bad else [])


def _folder_entries(folder: Path) -> tuple[list[tuple[Path, int]], list[str] | None]:
    """(file, label) pairs of a folder of images and its class names: one class per subfolder (sorted by name),
    or unlabelled (label -1, names None) when the images lie in the folder itself."""
    entries, names = folder_listing(folder)
    return [(Path(name), label) for name, label in entries], names


def folder_listing(folder: Path) -> tuple[list[tuple[str, int]], list[str] | None]:
    """:func:`_folder_entries` with the files' paths as strings: the files ``load_dataset`` reads from a folder of
    images, in its order, with their labels (-1 when unlabelled) and the class names (None when unlabelled)."""
    top_files = _image_names(os.fspath(folder), recursive=False)
    with os.scandir(folder) as found:
        subfolders = sorted(e.name for e in found if not e.name.startswith(".") and e.is_dir())
    classes = [(name, files) for name in subfolders if (files := _image_names(os.path.join(folder, name), True))]
    if top_files and classes:
        raise UserError(
            f"{folder} mixes image files ({list_names([os.path.basename(p) for p in top_files])}) with class "
            f"subfolders ({list_names([name for name, _ in classes])}); move the files into a class "
            "subfolder, or the subfolders out, so there is one layout"
        )
    if classes:
        entries = [(p, k) for k, (_, files) in enumerate(classes) for p in files]
        names: list[str] | None = [name for name, _ in classes]
    else:
        entries = [(p, -1) for p in top_files]
        names = None
    if not entries:
        raise UserError(
            f"no images found in {folder}: expected PNG/JPEG/BMP/GIF/WebP files, one subfolder of them "
            "per class, IDX files, or a CIFAR-10/100 folder"
        )
    return entries, names


def _check_one_square_size(arrays: list[np.ndarray], folder: Path) -> None:
    """Without ``image_size`` the images must share one square size."""
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        examples = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
        raise ParameterError(
            f"images in {folder} have different sizes ({examples}"
            f"{', ...' if len(sizes) > 3 else ''}); pass {{image_size}} N to resize and center-crop "
            "them to NxN"
        )
    ((h, w),) = sizes
    if h != w:
        raise ParameterError(
            f"images in {folder} are {w}x{h}, not square; pass {{image_size}} N to resize and center-crop them to NxN"
        )


def _stack(arrays: list[np.ndarray]) -> Tensor:
    """Decoded images of one size, (S, S) gray or (S, S, 3) colour -> ``ImageDataset.pixels`` (N, C, S, S).

    Gray images among colour ones are broadcast to 3 channels. 8-bit files stay uint8; 16-bit ones (float32
    0..255, not on the 8-bit grid) become float32 in [-1, 1]."""
    channels = 1 if all(a.ndim == 2 for a in arrays) else 3
    size = arrays[0].shape[0]
    eight_bit = all(a.dtype == np.uint8 for a in arrays)
    pixels = np.empty((len(arrays), channels, size, size), np.uint8 if eight_bit else np.float32)  # (N, C, S, S)
    for i, a in enumerate(arrays):
        pixels[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(pixels) if eight_bit else torch.from_numpy(pixels).div_(127.5).sub_(1.0)
