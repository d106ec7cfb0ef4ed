"""What ``ddpm eval --samples`` reads: a folder of images (with the provenance ``ddpm sample`` wrote into them) or an
``.npz`` of uint8 images, as uint8 (N, C, H, W).

A folder's pictures that are not samples (grids, trajectories, interpolations, the memorization picture: a
``ddpm:kind`` other than sample) are skipped, and where some files carry ``ddpm sample``'s record, the files
without one are skipped too (the training grids that share RUN/samples with them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.folders import decode_image, image_files
from ..errors import ParameterError, UserError
from ..images import conform, from_nhwc, read_npz_images
from ..provenance import Provenance

Images = np.ndarray | list[np.ndarray]  # uint8 (N, C, H, W), or images (H, W) / (H, W, 3) of several sizes


def read_samples(path: Path) -> tuple[Images, dict[str, Any]]:
    """Images to score, as uint8 (N, C, H, W) or (where they differ in size or channels) a list of decoded pictures,
    and what their files say about how they were made."""
    if not path.exists():
        raise ParameterError(f"{{samples}} {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ParameterError(f"{{samples}} {path} is a file but not an .npz: pass a folder of images or an .npz")
        return _read_npz(path)
    return _read_folder(path)


def _read_npz(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The uint8 (N, C, H, W) images of an .npz (:func:`ddpm.images.read_npz_images`) and where they came from."""
    images, key = read_npz_images(path)
    return images, {"source": str(path), "format": f"npz array {key!r}"}


def _read_folder(path: Path) -> tuple[Images, dict[str, Any]]:
    """The sample images of a folder, and the provenance that ``ddpm sample`` wrote into them, if any."""
    files, provenances, skipped = _sample_files(path)
    if not files:
        raise ParameterError(
            f"{{samples}} {path} holds no images (PNG/JPEG/...; ddpm's grids and trajectories do not "
            "count): point it at the folder ddpm sample wrote, or at an .npz"
        )
    pixels = _decode_all(files, path)
    info: dict[str, Any] = {
        "source": str(path),
        "format": "image files",
        "files": len(files),
        "skipped_non_sample_pictures": skipped,
    }
    recorded = [p.settings() for p in provenances if p is not None]
    if recorded:  # written by ddpm sample: the protocol travels in the PNGs
        info["ddpm_metadata"] = {
            **recorded[0],
            "files_with_metadata": len(recorded),
            "all_alike": all(s == recorded[0] for s in recorded),
        }
    return pixels, info


def _provenance(text: Mapping[str, str]) -> Provenance | None:
    """What an image's ``ddpm:*`` text chunks say it was made from, or None when it has none.

    A damaged record (a key missing, a value that does not parse) counts as none: such a file is scored
    only when no file of its folder carries a readable record."""
    try:
        return Provenance.from_text_chunks(text)
    except (KeyError, ValueError):
        return None


def _sample_files(path: Path) -> tuple[list[Path], list[Provenance | None], int]:
    """The images of a folder that are samples, with their provenance, and how many pictures were skipped.

    Skipped: ddpm's other pictures (grids, trajectories, interpolations: a ``ddpm:kind`` other than sample)
    and, when some files carry ddpm sample's record, the files without one (the training grids that share
    RUN/samples with them, say)."""
    files, provenances, skipped = [], [], 0
    for p in image_files(path, recursive=False):
        with Image.open(p) as im:
            text = dict(getattr(im, "text", {}) or {})
        if text.get("ddpm:kind", "sample") != "sample":
            skipped += 1
            continue
        files.append(p)
        provenances.append(_provenance(text))
    if any(prov is not None for prov in provenances):
        keep = [i for i, prov in enumerate(provenances) if prov is not None]
        skipped += len(files) - len(keep)
        files, provenances = [files[i] for i in keep], [provenances[i] for i in keep]
    return files, provenances, skipped


def _decode_all(files: list[Path], folder: Path) -> Images:
    """The image files as uint8 (N, C, H, W) where they are of one size and mode, else as a list of pictures."""
    arrays = []
    for p in files:
        try:
            arrays.append(decode_image(p))
        except Exception:  # noqa: BLE001 - any decoder failure means the same to the user
            raise UserError(f"{p} cannot be read as an image: remove it or fix it") from None
    if len({a.shape for a in arrays}) > 1:
        return [np.rint(a).astype(np.uint8) if a.dtype != np.uint8 else a for a in arrays]
    return from_nhwc(np.stack(arrays).astype(np.uint8), str(folder))


def conform_samples(images: Images, channels: int, size: int) -> tuple[np.ndarray, list[str]]:
    """The images as uint8 (N, ``channels``, ``size``, ``size``), each brought to that size and those channels as
    training reads pictures (:func:`ddpm.images.conform`: shorter side, centre crop, Lanczos); with the sizes and
    channels they were brought from ("500x400 RGB"), or [] where they were already so."""
    if isinstance(images, np.ndarray) and images.shape[1:] == (channels, size, size):
        return images, []
    if isinstance(images, np.ndarray):  # (N, C, H, W): pictures (H, W) or (H, W, 3)
        pictures = [p[0] if p.shape[0] == 1 else p.transpose(1, 2, 0) for p in images]
    else:
        pictures = list(images)
    was = sorted({f"{p.shape[1]}x{p.shape[0]} {'RGB' if p.ndim == 3 else 'gray'}" for p in pictures})
    return np.stack([conform(p, channels, size).transpose(2, 0, 1) for p in pictures]), was
