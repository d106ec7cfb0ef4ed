"""Loading a data set: the built-in digits, Fashion-MNIST, IDX files, CIFAR-10/100 folders, folders of images and
prepared sets.

Everything ends up as one :class:`~ddpm.data.dataset.ImageDataset` of square images ``(N, C, H, W)``, C = 1 (grayscale)
or 3 (colour), with optional int64 class labels ``(N,)``; ``images`` gives them as float32 in [-1, 1].
``load_dataset`` takes the string a user gave to ``--data`` and works out which of the formats it is: the readers
are in :mod:`ddpm.data.formats` (IDX, CIFAR, the built-in sets) and :mod:`ddpm.data.folders` (folders of images). Errors
about a bad argument are :class:`~ddpm.errors.ParameterError` naming ``{data}``, ``{image_size}`` or
``{skip_bad}``: the CLI shows its flags there.

The 8-bit mapping is x / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly (16-bit images: x / 257 first).
The set is held as its uint8 codes (a quarter of float32's memory) wherever that is lossless: 8-bit
files and digits' 17 levels (x / 8 - 1) kept at their own size or center-cropped. Images that were
resampled (``image_size`` other than the source's) or read from 16-bit files are not on a grid of
levels, and are held as float32 in [-1, 1], exactly the values they had before.

Training reads a folder of images through a prepared copy (:mod:`ddpm.data.prepared`): decoded once by
:func:`ddpm.data.folders.decode_fitted` into one uint8 array on disk that every process memory-maps; ``load_dataset``
also opens such a prepared folder when ``spec`` names one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ParameterError, UserError
from .dataset import PREPARED_MANIFEST, ImageDataset, check_request, missing_source
from .folders import load_image_folder
from .formats import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    find_cifar,
    find_idx_images,
    load_cifar,
    load_digits,
    load_fashion_mnist,
    load_idx_file,
)
from .prepared import open_prepared


def load_dataset(
    data: str,
    image_size: int | None = None,
    skip_bad: bool = False,
    fashion_mnist_dir: str | Path = FASHION_MNIST_DIR,
    split: str = "train",
) -> ImageDataset:
    """Load what ``--data`` names: ``"digits"``, ``"fashion-mnist"``, an IDX file, or a folder.

    A folder may hold IDX files (the train split is used), a CIFAR-10/100 binary or python batch set,
    or images (flat: unlabelled; one subfolder per class: labelled by sorted subfolder name), or be a prepared
    set (:mod:`ddpm.data.prepared`), which is memory-mapped rather than read.

    ``split`` is ``"train"`` (what training uses) or ``"test"``: Fashion-MNIST's t10k files, an IDX
    folder's ``t10k-*``/``test-*`` file, CIFAR's ``test_batch`` (CIFAR-100: ``test``). The digits set and
    folders of images have no test split (digits trains on all 1797 images); asking for one, or for the
    test split of a single IDX file, raises ``UserError`` (pass the held-out data as ``data`` instead).

    With ``image_size`` every image is resized so its shorter side is ``image_size`` and center-cropped
    to ``(image_size, image_size)``; without it the native size is kept (and must be square and shared).
    ``skip_bad`` skips image files that fail to decode (their names go to ``ImageDataset.skipped``)
    instead of raising. Returns images ``(N, C, S, S)`` float32 in [-1, 1]. Raises ``UserError``.
    """
    check_request(data, image_size, split)
    if data == "digits":
        if split == "test":
            raise UserError("the digits set has no test split (training uses all 1797 images): use the train split")
        return load_digits(image_size)
    if data == "fashion-mnist":
        return load_fashion_mnist(Path(fashion_mnist_dir), image_size, split)
    return _load_path(data, image_size, skip_bad, Path(fashion_mnist_dir), split)


def _load_path(spec: str, image_size: int | None, skip_bad: bool, fashion_mnist_dir: Path, split: str) -> ImageDataset:
    """``spec`` as a path: an IDX file, or a folder of CIFAR batches, IDX files or images."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise missing_source(spec)
    if path.is_file():
        if split == "test":
            raise ParameterError(
                f"{{data}} {spec!r} is one IDX file, which has no test split: pass the test file "
                "itself as the data, with the train split"
            )
        return load_idx_file(path, image_size)
    if not path.is_dir():
        raise ParameterError(
            f"{{data}} {spec!r} is neither a file nor a folder; pass a folder of images or a dataset file"
        )

    if (path / PREPARED_MANIFEST).is_file():
        if split == "test":
            raise ParameterError(
                f"{{data}} {spec!r} is a prepared set, which holds a train split only: pass the "
                "held-out data itself, with the train split"
            )
        return open_prepared(path, image_size=image_size)
    cifar = find_cifar(path, split)
    if cifar is not None:
        return load_cifar(path, *cifar, image_size=image_size)
    idx = find_idx_images(path, split)
    if idx is not None:
        # the Fashion-MNIST folder given as a path still gets its class names
        is_fashion = path.resolve() == fashion_mnist_dir.expanduser().resolve()
        return load_idx_file(idx, image_size, names=FASHION_MNIST_CLASSES if is_fashion else None)
    if split == "test":
        raise UserError(
            f"{spec} has no test split (no t10k/test IDX file or CIFAR test batch; a folder of images "
            "is all train): pass a folder of held-out images as the data, with the train split"
        )
    return load_image_folder(path, image_size, skip_bad)
