"""File formats read in memory: the built-in digits, Fashion-MNIST, IDX files and CIFAR-10/100 folders.

Each reader returns an :class:`~ddpm.data.dataset.ImageDataset` of uint8 codes ``(N, C, S, S)`` (float32 in [-1, 1]
when resized to another size) with int64 labels ``(N,)`` where the source has them. The finders say whether a
folder is a CIFAR set or holds IDX files, without reading the images of a folder of pictures.

CIFAR's "python version" is a pickle. It is read with :class:`_NumpyOnlyUnpickler`, which rebuilds
numpy arrays and nothing else: a downloaded file must never be able to run code on load.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ParameterError, UserError
from .dataset import IMAGE_EXTENSIONS, ImageDataset, describe

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

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims (N, H, W)
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim (N,)
_CIFAR_PIXELS = 3 * 32 * 32  # one record's image: R plane, then G, then B, each 32x32 row-major


# --------------------------------------------------------------------------------------------------
# shared helpers


def _fit_codes(codes: np.ndarray, levels: int, image_size: int | None, source: str) -> Tensor:
    """uint8 codes (N, C, H, W) in 0..levels -> ``ImageDataset.pixels`` of (N, C, S, S).

    Center-cropped to a square; that stays uint8 (lossless). Resizing to another size (bilinear, antialiased
    when shrinking) converts to float32 in [-1, 1] first and stays float.
    """
    images = torch.from_numpy(np.array(codes, dtype=np.uint8))  # a writable copy
    h, w = images.shape[-2:]
    if image_size is None:
        if h != w:
            raise ParameterError(
                f"{source} holds {h}x{w} images, not square; pass {{image_size}} N to center-crop them"
            )
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


def visible(p: Path) -> bool:
    """Whether ``p`` is a file listed as a source's own (its name does not start with ".")."""
    return not p.name.startswith(".")


# --------------------------------------------------------------------------------------------------
# digits and Fashion-MNIST


def load_digits(image_size: int | None) -> ImageDataset:
    """scikit-learn's 1797 digits: codes (1797, 1, 8, 8) in 0..16 (x = k / 8 - 1), labels (1797,) in 0..9."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    codes = digits.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16: x = k / 8 - 1
    pixels = _fit_codes(codes, 16, image_size, "digits")
    labels = torch.from_numpy(digits.target.astype(np.int64))
    names = [str(k) for k in range(10)]
    return ImageDataset(pixels, labels, names, describe("digits", pixels, 10), levels=16)


def load_fashion_mnist(folder: Path, image_size: int | None, split: str = "train") -> ImageDataset:
    """Fashion-MNIST's ``split`` from the IDX files in ``folder``: images (N, 1, 28, 28), labels (N,) in 0..9."""
    prefix = "train" if split == "train" else "t10k"
    for suffix in (".gz", ""):
        images_file = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        if images_file.is_file():
            break
    else:
        raise ParameterError(
            f"Fashion-MNIST was not found in {folder} (no {prefix}-images-idx3-ubyte[.gz]); install it with "
            "`apt-get install dataset-fashion-mnist`, or download the IDX files and pass {data} PATH to them"
        )
    if label_file_for(images_file) is None:
        raise UserError(
            f"Fashion-MNIST labels ({prefix}-labels-idx1-ubyte[.gz]) are missing from {folder}; "
            "reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    title = "fashion-mnist" if split == "train" else "fashion-mnist test"
    return load_idx_file(images_file, image_size, names=FASHION_MNIST_CLASSES, title=title)


# --------------------------------------------------------------------------------------------------
# IDX (MNIST format)


def label_file_for(images_file: Path) -> Path | None:
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


def find_idx_images(folder: Path, split: str = "train") -> Path | None:
    """The IDX images file to use in a folder: the train split if present, else the only one; None if none.

    With ``split="test"``: the one whose name starts with t10k or test (UserError when the folder holds
    IDX files but no such one)."""
    with os.scandir(folder) as found:  # names first: a folder of 200,000 images costs no stat or read per image
        candidates = [
            Path(e.path)
            for e in found
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS
        ]
    files = sorted(p for p in candidates if p.is_file() and _head_magic(p) == _IDX_IMAGES_MAGIC)
    if not files:
        return None
    if split == "test":
        test = [p for p in files if p.name.lower().startswith(("t10k", "test"))]
        if len(test) != 1:
            raise ParameterError(
                f"{folder} holds {len(test)} test IDX image files (named t10k-* or test-*) among "
                f"{', '.join(p.name for p in files)}; pass {{data}} PATH to the test file, "
                "train split"
            )
        return test[0]
    train = [p for p in files if p.name.lower().startswith("train")]
    if len(train) == 1:
        return train[0]
    if len(files) == 1:
        return files[0]
    choices = ", ".join(p.name for p in (train or files))
    raise ParameterError(f"{folder} holds several IDX image files ({choices}); pass {{data}} PATH to the one to use")


def load_idx_file(
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
    label_file = label_file_for(path)
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
        images, labels, names, describe(title or path.name, images, None if names is None else len(names))
    )


# --------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100


def _numbered(folder: Path, pattern: str) -> list[Path]:
    """The files in ``folder`` whose whole name matches ``pattern``, sorted by its one numbered group."""
    rx = re.compile(pattern)
    with os.scandir(folder) as entries:
        found = [(int(m.group(1)), Path(e.path)) for e in entries if (m := rx.fullmatch(e.name)) and e.is_file()]
    return [p for _, p in sorted(found)]


def find_cifar(folder: Path, split: str = "train") -> tuple[str, list[Path]] | None:
    """("bin10" | "bin100" | "py", batch files) when the folder is a CIFAR-10/100 training set.

    With ``split="test"`` the files are test_batch[.bin] (CIFAR-10) or test[.bin] (CIFAR-100) instead;
    UserError when the folder is a CIFAR training set without its test file."""
    found = _find_cifar_train(folder)
    if found is None or split == "train":
        return found
    kind = found[0]
    if kind == "py":
        name = "test" if found[1][0].name == "train" else "test_batch"
    else:
        name = {"bin10": "test_batch.bin", "bin100": "test.bin"}[kind]
    if not (folder / name).is_file():
        raise UserError(
            f"{folder} is a CIFAR training set without its test file {name}: copy it there, or use the train split"
        )
    return kind, [folder / name]


def _find_cifar_train(folder: Path) -> tuple[str, list[Path]] | None:
    """:func:`find_cifar` of the train split."""
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
    """``_codecs.encode`` for a pickle's bytes, latin-1 only."""
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
    """Class names from a CIFAR meta pickle (bytes or str) as str."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def load_cifar(folder: Path, kind: str, files: list[Path], image_size: int | None) -> ImageDataset:
    """The CIFAR batch ``files`` :func:`find_cifar` found in ``folder``: images (N, 3, 32, 32) (or resized), fine
    labels (N,), class names from the meta file (else "0".."K-1")."""
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
            array = batch.get("data")
            labels = batch.get("fine_labels", batch.get("labels"))
            if (
                not isinstance(array, np.ndarray)
                or array.dtype != np.uint8
                or array.ndim != 2
                or array.shape[1] != _CIFAR_PIXELS
                or labels is None
                or len(labels) != len(array)
            ):
                raise UserError(
                    f"{path} is not a CIFAR python batch (needs uint8 'data' of shape (N, 3072) and "
                    "one label per row); download the python version again"
                )
            pixel_parts.append(array)
            label_parts.append(np.asarray(labels))
        meta_file = folder / ("meta" if files[0].name in ("train", "test") else "batches.meta")
        if meta_file.is_file():
            meta_dict = _load_pickle(meta_file)
            found = meta_dict.get("fine_label_names", meta_dict.get("label_names"))
            names = _names_from(found) if found is not None else None
    pixels = np.concatenate(pixel_parts).reshape(-1, 3, 32, 32)  # channel-major: R plane, G plane, B plane
    labels_t, names = _labelled(np.concatenate(label_parts), names, str(folder))
    images = _fit_codes(pixels, 255, image_size, str(folder))
    title = ("cifar-100" if kind == "bin100" or files[0].name in ("train", "test") else "cifar-10") + f": {folder.name}"
    return ImageDataset(images, labels_t, names, describe(title, images, len(names)))
