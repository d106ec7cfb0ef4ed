"""Datasets: the built-in digits, Fashion-MNIST, IDX files, CIFAR-10/100 folders and folders of images.

Everything ends up as one :class:`ImageDataset` of square images ``(N, C, H, W)``, C = 1 (grayscale) or
3 (colour), with optional int64 class labels ``(N,)``; ``images`` gives them as float32 in [-1, 1].
``load_dataset`` takes the string a user gave to ``--data`` and works out which of the formats it is. Errors
about a bad argument are :class:`~ddpm.errors.ParameterError` naming ``{spec}``, ``{image_size}`` or
``{skip_bad}``: the CLI shows its flags there.

The 8-bit mapping is x / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly (16-bit images: x / 257 first).
The set is held as its uint8 codes (a quarter of float32's memory) wherever that is lossless: 8-bit
files and digits' 17 levels (x / 8 - 1) kept at their own size or center-cropped. Images that were
resampled (``image_size`` other than the source's) or read from 16-bit files are not on a grid of
levels, and are held as float32 in [-1, 1], exactly the values they had before.

Training reads a folder of images through a prepared copy (:mod:`ddpm.prepared`): decoded once by
:func:`decode_fitted` into one uint8 array on disk that every process memory-maps; ``load_dataset`` also
opens such a prepared folder when ``spec`` names one.

CIFAR's "python version" is a pickle. It is read with :class:`_NumpyOnlyUnpickler`, which rebuilds
numpy arrays and nothing else: a downloaded file must never be able to run code on load.
"""

from __future__ import annotations

import gzip
import numbers
import os
import pickle
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor

from .errors import ParameterError, UserError
from .images import to_uint8

KNOWN_DATASETS = ("digits", "fashion-mnist")
SPLITS = ("train", "test")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
PREPARED_MANIFEST = "manifest.json"  # the file that marks a finished prepared set (ddpm.prepared)
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims (N, H, W)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim (N,)
_CIFAR_PIXELS = 3 * 32 * 32  # one record's image: R plane, then G, then B, each 32x32 row-major
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})  # plus every "I;16*" variant
_ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height

# A JPEG whose shorter side is at least JPEG_DRAFT_MARGIN x s x the target size (s = 2, 4 or 8) is decoded at 1/s
# scale (libjpeg's DCT scaling, Pillow's Image.draft), then resized like any other image. The margin keeps the
# final Lanczos reduction at 4x or more, where the two paths differ by at most a few levels (BENCHMARKS.md,
# "data_scale.py"); CelebA-sized files at --image-size 64 are below it and decode exactly as without a draft.
JPEG_DRAFT_MARGIN = 4
# What a prepared set records as its resize method; a prepared copy made by another method is stale.
RESIZE_METHOD = f"pillow-lanczos-centre-crop;jpeg-draft-margin-{JPEG_DRAFT_MARGIN}"


@dataclass
class ImageDataset:
    """A set of square images in [-1, 1], optionally with class labels.

    ``pixels`` holds the images ``(N, C, H, W)`` with H == W and C in {1, 3}: uint8 codes k in
    0..``levels`` meaning x = k / (levels / 2) − 1 (levels 255 for 8-bit data, 16 for digits), or float32
    x in [-1, 1] when the images are not on such a grid (resampled, 16-bit). ``images`` converts the whole
    set to float32 (a new tensor each call); :meth:`to_unit` converts a batch of ``pixels``.
    ``labels`` is int64 ``(N,)`` with values in 0..K-1, or None when unlabelled; ``class_names`` has K
    entries when labelled.

    A prepared set (:func:`ddpm.prepared.open_prepared`) holds ``pixels`` as a read-only memory map of its file,
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


def load_dataset(
    spec: str,
    image_size: int | None = None,
    skip_bad: bool = False,
    fashion_mnist_dir: str | Path = FASHION_MNIST_DIR,
    split: str = "train",
) -> ImageDataset:
    """Load what ``--data`` names: ``"digits"``, ``"fashion-mnist"``, an IDX file, or a folder.

    A folder may hold IDX files (the train split is used), a CIFAR-10/100 binary or python batch set,
    or images (flat: unlabelled; one subfolder per class: labelled by sorted subfolder name), or be a prepared
    set (:mod:`ddpm.prepared`), which is memory-mapped rather than read.

    ``split`` is ``"train"`` (what training uses) or ``"test"``: Fashion-MNIST's t10k files, an IDX
    folder's ``t10k-*``/``test-*`` file, CIFAR's ``test_batch`` (CIFAR-100: ``test``). The digits set and
    folders of images have no test split (digits trains on all 1797 images); asking for one, or for the
    test split of a single IDX file, raises ``UserError`` (pass the held-out data as ``spec`` instead).

    With ``image_size`` every image is resized so its shorter side is ``image_size`` and center-cropped
    to ``(image_size, image_size)``; without it the native size is kept (and must be square and shared).
    ``skip_bad`` skips image files that fail to decode (their names go to ``ImageDataset.skipped``)
    instead of raising. Returns images ``(N, C, S, S)`` float32 in [-1, 1]. Raises ``UserError``.
    """
    _check_request(spec, image_size, split)
    if spec == "digits":
        if split == "test":
            raise UserError("the digits set has no test split (training uses all 1797 images): use the train split")
        return _load_digits(image_size)
    if spec == "fashion-mnist":
        return _load_fashion_mnist(Path(fashion_mnist_dir), image_size, split)
    return _load_path(spec, image_size, skip_bad, Path(fashion_mnist_dir), split)


def _check_request(spec: str, image_size: int | None, split: str) -> None:
    """Refuse a bad ``image_size``, ``split`` or an empty ``spec`` before reading anything."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1
    ):
        raise UserError(f"image size must be a positive whole number of pixels, got {image_size!r}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: choose train or test")
    if not spec or not spec.strip():
        raise ParameterError(
            f"{{spec}} is empty; pass a folder of images, a dataset file, or one of: {', '.join(KNOWN_DATASETS)}"
        )


def _load_path(spec: str, image_size: int | None, skip_bad: bool, fashion_mnist_dir: Path,
               split: str) -> ImageDataset:
    """``spec`` as a path: an IDX file, or a folder of CIFAR batches, IDX files or images."""
    path = Path(spec).expanduser()
    if not path.exists():
        known = ", ".join(KNOWN_DATASETS)
        raise ParameterError(f"{{spec}} {spec!r}: no such file or folder, and not a known dataset name "
                             f"(known: {known})")
    if path.is_file():
        if split == "test":
            raise ParameterError(f"{{spec}} {spec!r} is one IDX file, which has no test split: pass the test file "
                                 "itself as the data, with the train split")
        return _load_idx_file(path, image_size)
    if not path.is_dir():
        raise ParameterError(f"{{spec}} {spec!r} is neither a file nor a folder; pass a folder of images or a dataset "
                             "file")

    if (path / PREPARED_MANIFEST).is_file():
        from .prepared import open_prepared  # imported here: ddpm.prepared builds on this module

        if split == "test":
            raise ParameterError(f"{{spec}} {spec!r} is a prepared set, which holds a train split only: pass the "
                                 "held-out data itself, with the train split")
        return open_prepared(path, image_size=image_size)
    cifar = _find_cifar(path, split)
    if cifar is not None:
        return _load_cifar(path, *cifar, image_size=image_size)
    idx = _find_idx_images(path, split)
    if idx is not None:
        # the Fashion-MNIST folder given as a path still gets its class names
        is_fashion = path.resolve() == fashion_mnist_dir.expanduser().resolve()
        return _load_idx_file(idx, image_size, names=FASHION_MNIST_CLASSES if is_fashion else None)
    if split == "test":
        raise UserError(f"{spec} has no test split (no t10k/test IDX file or CIFAR test batch; a folder of images "
                        "is all train): pass a folder of held-out images as the data, with the train split")
    return _load_image_folder(path, image_size, skip_bad)


# --------------------------------------------------------------------------------------------------
# shared helpers


def _describe(title: str, images: Tensor, num_classes: int | None) -> str:
    return describe_shape(title, tuple(images.shape), num_classes)


def describe_shape(title: str, shape: tuple[int, ...], num_classes: int | None) -> str:
    """A data set's name for logs and checkpoints, from its images' shape (N, C, H, W): "title (N images, HxW, ...)"."""
    n, c, h, w = shape
    classes = "unlabelled" if num_classes is None else f"{num_classes} classes"
    return f"{title} ({n} images, {h}x{w}, {c} channel{'s' if c != 1 else ''}, {classes})"


def _fit_codes(codes: np.ndarray, levels: int, image_size: int | None, source: str) -> Tensor:
    """uint8 codes (N, C, H, W) in 0..levels -> ``ImageDataset.pixels`` of (N, C, S, S).

    Center-cropped to a square; that stays uint8 (lossless). Resizing to another size (bilinear, antialiased
    when shrinking) converts to float32 in [-1, 1] first and stays float.
    """
    images = torch.from_numpy(np.array(codes, dtype=np.uint8))  # a writable copy
    h, w = images.shape[-2:]
    if image_size is None:
        if h != w:
            raise ParameterError(f"{source} holds {h}x{w} images, not square; pass {{image_size}} N to center-crop "
                                 "them")
        return images
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top : top + side, left : left + side]
    if side == image_size:
        return images.contiguous()
    unit = images.float().div_(levels / 2).sub_(1.0)
    out = F.interpolate(
        unit, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=image_size < side
    )
    return out.clamp_(-1.0, 1.0)


def _labelled(labels: np.ndarray, names: list[str] | None, source: str) -> tuple[Tensor, list[str]]:
    """Labels (N,) -> int64 tensor and K class names ("0".."K-1" when the source gives none)."""
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    top = int(labels.max()) + 1 if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise UserError(f"{source} holds a negative label ({int(labels.min())}); labels must be 0..K-1")
    if names is None:
        names = [str(k) for k in range(top)]
    elif top > len(names):
        raise UserError(f"{source} holds label {top - 1} but only {len(names)} class names; check the meta file")
    return torch.from_numpy(labels), names


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, decompressed when it starts with the gzip magic (whatever its extension)."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}; check that the file is complete (download it again)") from e


def _head_magic(path: Path) -> int | None:
    """The first 4 bytes of a (maybe gzipped) file as a big-endian int, or None if unreadable/short."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                with gzip.open(f) as g:
                    head = g.read(4)
    except (OSError, EOFError, zlib.error):
        return None
    return struct.unpack(">I", head)[0] if len(head) == 4 else None


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


# --------------------------------------------------------------------------------------------------
# digits and Fashion-MNIST


def _load_digits(image_size: int | None) -> ImageDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    codes = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16: x = k / 8 - 1
    pixels = _fit_codes(codes, 16, image_size, "digits")
    labels = torch.from_numpy(digits.target.astype(np.int64))
    names = [str(k) for k in range(10)]
    return ImageDataset(pixels, labels, names, _describe("digits", pixels, 10), levels=16)


def _load_fashion_mnist(folder: Path, image_size: int | None, split: str = "train") -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images_file = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        if images_file.is_file():
            break
    else:
        raise ParameterError(
            f"Fashion-MNIST was not found in {folder} (no {prefix}-images-idx3-ubyte[.gz]); install it with "
            "`apt-get install dataset-fashion-mnist`, or download the IDX files and pass {spec} PATH to them"
        )
    if _label_file_for(images_file) is None:
        raise UserError(
            f"Fashion-MNIST labels ({prefix}-labels-idx1-ubyte[.gz]) are missing from {folder}; "
            "reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    title = "fashion-mnist" if split == "train" else "fashion-mnist test"
    return _load_idx_file(images_file, image_size, names=FASHION_MNIST_CLASSES, title=title)


# --------------------------------------------------------------------------------------------------
# IDX (MNIST format)


def _label_file_for(images_file: Path) -> Path | None:
    """The labels file next to an IDX images file, by the usual naming, or None."""
    name = images_file.name
    stem = name[:-3] if name.endswith(".gz") else name
    bases = [
        stem.replace("-images-idx3-ubyte", "-labels-idx1-ubyte"),
        stem.replace("images", "labels").replace("idx3", "idx1"),
    ]
    for base in dict.fromkeys(bases):
        if base == stem:
            continue
        for candidate in (base + ".gz", base) if name.endswith(".gz") else (base, base + ".gz"):
            if (images_file.parent / candidate).is_file():
                return images_file.parent / candidate
    return None


def _find_idx_images(folder: Path, split: str = "train") -> Path | None:
    """The IDX images file to use in a folder: the train split if present, else the only one; None if none.

    With ``split="test"``: the one whose name starts with t10k or test (UserError when the folder holds
    IDX files but no such one)."""
    with os.scandir(folder) as found:  # names first: a folder of 200,000 images costs no stat or read per image
        candidates = [Path(e.path) for e in found
                      if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS]
    files = sorted(p for p in candidates if p.is_file() and _head_magic(p) == _IDX_IMAGES_MAGIC)
    if not files:
        return None
    if split == "test":
        test = [p for p in files if p.name.lower().startswith(("t10k", "test"))]
        if len(test) != 1:
            raise ParameterError(f"{folder} holds {len(test)} test IDX image files (named t10k-* or test-*) among "
                                 f"{', '.join(p.name for p in files)}; pass {{spec}} PATH to the test file, "
                                 "train split")
        return test[0]
    train = [p for p in files if p.name.lower().startswith("train")]
    if len(train) == 1:
        return train[0]
    if len(files) == 1:
        return files[0]
    choices = ", ".join(p.name for p in (train or files))
    raise ParameterError(f"{folder} holds several IDX image files ({choices}); pass {{spec}} PATH to the one to use")


def _load_idx_file(
    path: Path, image_size: int | None, names: list[str] | None = None, title: str | None = None
) -> ImageDataset:
    """Load an IDX images file (N, H, W) uint8 and the labels file beside it, if any."""
    magic = _head_magic(path)
    if magic == _IDX_LABELS_MAGIC:
        raise UserError(f"{path} is an IDX labels file; pass the images file (…-images-idx3-ubyte) instead")
    if magic != _IDX_IMAGES_MAGIC:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            raise UserError(f"{path} is a single image; pass the folder that holds your images instead")
        raise UserError(
            f"{path}: unknown file format (not an IDX image file, magic 0x00000803); pass an IDX "
            "images file, a folder of images, or a CIFAR-10/100 folder"
        )
    data = _read_maybe_gzip(path)
    if len(data) < 16:
        raise UserError(f"{path} is truncated: an IDX images header is 16 bytes, the file has {len(data)}")
    n, h, w = struct.unpack(">III", data[4:16])
    if len(data) != 16 + n * h * w:
        raise UserError(
            f"{path} should hold {n} images of {h}x{w} ({16 + n * h * w} bytes) but has {len(data)} "
            "bytes; the file is truncated or corrupt, download it again"
        )
    if n == 0:
        raise UserError(f"{path} holds no images")
    images = _fit_codes(np.frombuffer(data, np.uint8, n * h * w, 16).reshape(n, 1, h, w), 255, image_size, str(path))
    del data

    labels = None
    label_file = _label_file_for(path)
    if label_file is not None:
        ldata = _read_maybe_gzip(label_file)
        if len(ldata) < 8 or struct.unpack(">I", ldata[:4])[0] != _IDX_LABELS_MAGIC:
            raise UserError(f"{label_file} is not an IDX labels file (magic 0x00000801); remove or rename it")
        (count,) = struct.unpack(">I", ldata[4:8])
        if count != n:
            raise UserError(
                f"label count does not match image count: {label_file.name} has {count} labels, "
                f"{path.name} has {n} images; pair the files from the same split"
            )
        if len(ldata) != 8 + n:
            raise UserError(
                f"{label_file} should hold {n} labels ({8 + n} bytes) but has {len(ldata)} bytes; "
                "the file is truncated or corrupt"
            )
        labels, names = _labelled(np.frombuffer(ldata, np.uint8, n, 8), names, str(label_file))
    else:
        names = None
    return ImageDataset(
        images, labels, names, _describe(title or path.name, images, None if names is None else len(names))
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def _numbered(folder: Path, pattern: str) -> list[Path]:
    rx = re.compile(pattern)
    with os.scandir(folder) as entries:
        found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := rx.fullmatch(e.name)) and e.is_file()]
    return [p for _, p in sorted(found)]


def _find_cifar(folder: Path, split: str = "train") -> tuple[str, list[Path]] | None:
    """("bin10" | "bin100" | "py", batch files) when the folder is a CIFAR-10/100 training set.

    With ``split="test"`` the files are test_batch[.bin] (CIFAR-10) or test[.bin] (CIFAR-100) instead;
    UserError when the folder is a CIFAR training set without its test file."""
    found = _find_cifar_train(folder)
    if found is None or split == "train":
        return found
    kind = found[0]
    name = {"bin10": "test_batch.bin", "bin100": "test.bin"}.get(kind)
    if kind == "py":
        name = "test" if found[1][0].name == "train" else "test_batch"
    if not (folder / name).is_file():
        raise UserError(f"{folder} is a CIFAR training set without its test file {name}: copy it there, "
                        "or use the train split")
    return kind, [folder / name]


def _find_cifar_train(folder: Path) -> tuple[str, list[Path]] | None:
    if batches := _numbered(folder, r"data_batch_(\d+)\.bin"):
        return "bin10", batches
    if (folder / "train.bin").is_file():
        return "bin100", [folder / "train.bin"]
    if batches := _numbered(folder, r"data_batch_(\d+)"):
        return "py", batches
    if (folder / "train").is_file() and (folder / "meta").is_file():
        return "py", [folder / "train"]
    return None


# The functions numpy's own array pickles call, taken from numpy itself so no private module path is imported.
_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # protocols 0-4: _reconstruct(ndarray, shape, dtype) + setstate
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5: _frombuffer(buffer, dtype, shape, order)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays; refuses every other global.

    A pickle can call any importable function on load; this one resolves only the few names numpy's
    own array pickles reference (numpy 1.x and 2.x module paths, protocols 0-5).
    """

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
        ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,
        ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
        # protocol <= 2 pickles made by Python 3 spell bytes as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): lambda text, encoding="utf-8": _latin1_encode(text, encoding),
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"refusing to load {module}.{name} from a pickle: CIFAR batches hold only numpy "
                "arrays, so this file is not a genuine CIFAR batch; download it again"
            ) from None


def _latin1_encode(text: str, encoding: str) -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UserError(f"refusing to decode a pickle's bytes with codec {encoding!r}; the file is not a CIFAR batch")
    return text.encode("latin-1")


def _load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR python-version pickle as a dict with str keys (bytes keys from Python 2 are decoded)."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except Exception as e:  # a damaged pickle can fail in many ways; all mean the same to the user
        raise UserError(
            f"cannot read {path} as a CIFAR python batch ({type(e).__name__}: {e}); download the file again"
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR python batch (expected a dict, got {type(obj).__name__})")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _names_from(values: Any) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def _load_cifar(folder: Path, kind: str, files: list[Path], image_size: int | None) -> ImageDataset:
    pixel_parts, label_parts = [], []
    names: list[str] | None = None
    if kind.startswith("bin"):
        label_bytes = 1 if kind == "bin10" else 2  # CIFAR-100: (coarse, fine); the fine label is used
        record = label_bytes + _CIFAR_PIXELS
        for path in files:
            data = path.read_bytes()
            if not data or len(data) % record:
                raise UserError(
                    f"{path} has {len(data)} bytes, not a whole number of {record}-byte CIFAR records; "
                    "the file is truncated or corrupt, download it again"
                )
            rows = np.frombuffer(data, np.uint8).reshape(-1, record)
            label_parts.append(rows[:, label_bytes - 1])
            pixel_parts.append(rows[:, label_bytes:])
        meta = folder / ("batches.meta.txt" if kind == "bin10" else "fine_label_names.txt")
        if meta.is_file():
            names = [line.strip() for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        for path in files:
            batch = _load_pickle(path)
            data = batch.get("data")
            labels = batch.get("fine_labels", batch.get("labels"))
            if (
                not isinstance(data, np.ndarray)
                or data.dtype != np.uint8
                or data.ndim != 2
                or data.shape[1] != _CIFAR_PIXELS
                or labels is None
                or len(labels) != len(data)
            ):
                raise UserError(
                    f"{path} is not a CIFAR python batch (needs uint8 'data' of shape (N, 3072) and "
                    "one label per row); download the python version again"
                )
            pixel_parts.append(data)
            label_parts.append(np.asarray(labels))
        meta_file = folder / ("meta" if files[0].name in ("train", "test") else "batches.meta")
        if meta_file.is_file():
            meta = _load_pickle(meta_file)
            found = meta.get("fine_label_names", meta.get("label_names"))
            names = _names_from(found) if found is not None else None
    pixels = np.concatenate(pixel_parts).reshape(-1, 3, 32, 32)  # channel-major: R plane, G plane, B plane
    labels_t, names = _labelled(np.concatenate(label_parts), names, str(folder))
    images = _fit_codes(pixels, 255, image_size, str(folder))
    title = ("cifar-100" if kind == "bin100" or files[0].name in ("train", "test") else "cifar-10") + f": {folder.name}"
    return ImageDataset(images, labels_t, names, _describe(title, images, len(names)))


# --------------------------------------------------------------------------------------------------
# folders of images


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


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with alpha last -> (H, W, C) uint8, composited onto white."""
    colour = rgba[..., :-1].astype(np.float32)
    alpha = rgba[..., -1:].astype(np.float32) / 255.0
    return np.rint(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def decode_image(path: Path) -> np.ndarray:
    """An image file as (H, W) gray or (H, W, 3) colour, values 0..255 (uint8, or float32 for 16-bit).

    Transparent pixels are composited onto white; an EXIF rotation is applied."""
    with Image.open(path) as img:
        return _decoded(img)


def decode_fitted(path: Path, size: int) -> np.ndarray:
    """An image file resized so its shorter side is ``size`` and center-cropped: (S, S) gray or (S, S, 3) colour,
    values 0..255 (uint8, or float32 for 16-bit), S = ``size``.

    ``_fit(decode_image(path), size)``, except that a JPEG at least :data:`JPEG_DRAFT_MARGIN` x 2 x ``size`` on its
    shorter side is decoded at 1/2, 1/4 or 1/8 scale first (the largest that keeps that margin), then cropped and
    resized by the same Lanczos filter from the same box in its own pixels: a phone photo costs a small fraction of
    a full decode, and the pixels differ by the measured few levels stated in BENCHMARKS.md."""
    with Image.open(path) as img:
        w, h = img.size
        scale = next((s for s in (8, 4, 2) if min(w, h) >= s * JPEG_DRAFT_MARGIN * size), 1)
        if scale == 1 or img.format not in ("JPEG", "MPO"):
            return _fit(_decoded(img), size)
        rotated = img.getexif().get(0x0112) in _ROTATED
        drafted = img.draft(img.mode, (w // scale, h // scale))
        if drafted is None or w / drafted[1][2] != scale:  # no reduced decode on offer: decode it whole
            return _fit(_decoded(img), size)
        arr = _decoded(img)
    if rotated:
        w, h = h, w
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2  # the full-size box, in the reduced image's pixels below
    box = (left / scale, top / scale, (left + side) / scale, (top + side) / scale)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.LANCZOS, box=box))


def _decoded(img: Image.Image) -> np.ndarray:
    """``decode_image`` of an opened file: its pixels, EXIF rotation applied, alpha composited onto white."""
    img.load()
    img = ImageOps.exif_transpose(img)  # phone photos are often stored sideways with a rotate tag
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit (or wider) grayscale: scale, don't clip
        wide = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255 exactly
        return np.clip(wide, 0.0, 255.0).astype(np.float32)
    if "transparency" in img.info or mode in ("PA", "RGBa", "La"):
        img = img.convert("LA" if mode in _GRAY_MODES else "RGBA")
        mode = img.mode
    if mode in ("LA", "RGBA"):
        arr = _composite_on_white(np.asarray(img))
        return arr[..., 0] if mode == "LA" else arr
    return np.asarray(img.convert("L" if mode in _GRAY_MODES else "RGB"))


def _fit(arr: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` and center-crop to (size, size); one Pillow resize with a box."""
    h, w = arr.shape[:2]
    side = min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    if side == size and top == int(top) and left == int(left):
        return arr[int(top) : int(top) + size, int(left) : int(left) + size]
    img = Image.fromarray(arr, mode="F") if arr.dtype == np.float32 else Image.fromarray(arr)
    box = (left, top, left + side, top + side)
    out = np.asarray(img.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return np.clip(out, 0.0, 255.0).astype(np.float32) if arr.dtype == np.float32 else out


def _list_names(paths: list[str], first: int = 3) -> str:
    shown = ", ".join(paths[:first])
    return shown + (f" and {len(paths) - first} more" if len(paths) > first else "")


def _load_image_folder(folder: Path, image_size: int | None, skip_bad: bool) -> ImageDataset:
    entries, names = _folder_entries(folder)
    arrays, labels, bad = [], [], []
    for path, label in entries:
        try:
            arr = decode_image(path)
        except Exception:  # any decoder failure means "this file is not a readable image"
            bad.append(str(path.relative_to(folder)))
            continue
        arrays.append(_fit(arr, image_size) if image_size is not None else arr)
        labels.append(label)
    if bad and not skip_bad:
        raise ParameterError(
            f"{len(bad)} file(s) in {folder} could not be read as images: {_list_names(bad)}; "
            "fix or remove them, or pass {skip_bad} to skip them"
        )
    if not arrays:
        raise UserError(f"none of the {len(entries)} image files in {folder} could be read; check the files")
    if image_size is None:
        _check_one_square_size(arrays, folder)
    images = _stack(arrays)
    labels_t = torch.tensor(labels, dtype=torch.int64) if names is not None else None
    title = _describe(folder.name or str(folder), images, None if names is None else len(names))
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
            f"{folder} mixes image files ({_list_names([os.path.basename(p) for p in top_files])}) with class "
            f"subfolders ({_list_names([name for name, _ in classes])}); move the files into a class "
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
