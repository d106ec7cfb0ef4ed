"""Tests for ddpm.data.load: every input format lands in [-1, 1] with the right labels, and bad input says so."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.dataset import ImageDataset
from ddpm.data.folders import image_files
from ddpm.data.formats import FASHION_MNIST_CLASSES
from ddpm.data.load import load_dataset
from ddpm.errors import ParameterError, UserError
from ddpm.settings import flag_names
from ddpm.train import TrainConfig

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def user_error(match: str, *args, **kwargs) -> str:
    """Call load_dataset expecting a UserError matching ``match``; return its (one-line) message."""
    with pytest.raises(UserError, match=match) as info:
        load_dataset(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# fixture writers


def write_idx_images(path: Path, pixels: np.ndarray) -> Path:
    """(N, H, W) uint8 -> IDX images file; gzipped when the name ends in .gz."""
    n, h, w = pixels.shape
    data = struct.pack(">IIII", 0x803, n, h, w) + pixels.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_labels(path: Path, labels: list[int]) -> Path:
    data = struct.pack(">II", 0x801, len(labels)) + bytes(labels)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def cifar_pixels(n: int) -> np.ndarray:
    """(n, 3, 32, 32) uint8: R plane = 255, G plane = 0, B plane = 10 * i + column % 10 for image i."""
    px = np.zeros((n, 3, 32, 32), np.uint8)
    px[:, 0] = 255
    px[:, 2] = (10 * np.arange(n)[:, None, None] + np.arange(32)[None, None, :] % 10).astype(np.uint8)
    return px


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def gray(value: int, size: tuple[int, int] = (4, 4)) -> Image.Image:
    return Image.new("L", size, value)


# --------------------------------------------------------------------------------------------------
# built-in datasets


def test_digits_values_labels_and_name():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    raw = load_digits()
    assert torch.equal(ds.images[5, 0], torch.from_numpy(raw.images[5] / 16 * 2 - 1).float())
    # held as digits' own 17 levels (x = k/8 - 1), a quarter of float32's memory
    assert (
        ds.pixels.dtype == torch.uint8
        and ds.levels == 16
        and torch.equal(ds.pixels[5, 0].double(), torch.from_numpy(raw.images[5]))
    )
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == raw.target.tolist() and sorted(set(ds.labels.tolist())) == list(range(10))
    assert ds.class_names == [str(k) for k in range(10)]
    assert (len(ds), ds.channels, ds.image_size, ds.num_classes) == (1797, 1, 8, 10)
    assert ds.name == "digits (1797 images, 8x8, 1 channel, 10 classes)" and ds.skipped == []

    big = load_dataset("digits", image_size=16)
    assert big.images.shape == (1797, 1, 16, 16)
    assert big.images.min().item() >= -1.0 and big.images.max().item() <= 1.0
    # bilinear upsampling keeps each image's mean brightness, and the border stays background
    assert torch.allclose(big.images.mean((1, 2, 3)), ds.images.mean((1, 2, 3)), atol=0.05)
    assert big.images[:, :, :, 0].mean().item() < -0.95
    assert big.pixels.dtype == torch.float32  # resampled values are between the levels: kept as they are


def test_fashion_mnist():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist")
    assert ds.images.shape == (60000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    assert ds.pixels.dtype == torch.uint8 and 4 * ds.pixels.nbytes == ds.images.nbytes == 4 * 47_040_000
    assert ds.num_classes == 10 and ds.class_names == FASHION_MNIST_CLASSES and ds.class_names[9] == "Ankle boot"
    assert ds.labels is not None and ds.labels[:4].tolist() == [9, 0, 0, 3]  # the split's well-known first items
    assert torch.bincount(ds.labels).tolist() == [6000] * 10
    # the same folder given as a path keeps the class names
    assert load_dataset(str(FASHION_DIR)).class_names == FASHION_MNIST_CLASSES


def test_fashion_mnist_not_found(tmp_path):
    msg = user_error("Fashion-MNIST was not found", "fashion-mnist", fashion_mnist_dir=tmp_path)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg and "data PATH" in msg


def test_missing_path_names_known_datasets(tmp_path):
    msg = user_error("no such file or folder", str(tmp_path / "nope"))
    assert "digits" in msg and "fashion-mnist" in msg
    user_error("data is empty", "")


@pytest.mark.parametrize("size", [0, -3, 2.5, "32", True])
def test_bad_image_size(size):
    user_error("positive whole number", "digits", image_size=size)


# --------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_file_values_and_labels(tmp_path, suffix):
    px = np.array([[[0, 255], [51, 204]], [[255, 255], [0, 0]], [[10, 20], [30, 40]]], np.uint8)
    images = write_idx_images(tmp_path / f"train-images-idx3-ubyte{suffix}", px)
    write_idx_labels(tmp_path / f"train-labels-idx1-ubyte{suffix}", [2, 0, 4])
    ds = load_dataset(str(images))
    assert ds.images.shape == (3, 1, 2, 2)
    assert ds.images[0, 0].flatten().tolist() == pytest.approx([-1.0, 1.0, -0.6, 0.6], abs=1e-6)
    assert torch.equal(ds.images, torch.from_numpy(px[:, None] / 127.5 - 1).float())
    assert torch.equal(ds.pixels, torch.from_numpy(px[:, None])) and ds.levels == 255
    assert torch.equal(ds.to_unit(ds.pixels[1:]), ds.images[1:])  # a batch converts as the whole set does
    assert ds.labels.tolist() == [2, 0, 4] and ds.class_names == ["0", "1", "2", "3", "4"] and ds.num_classes == 5


def test_idx_unlabelled_and_images_to_labels_naming(tmp_path):
    px = np.full((2, 3, 3), 255, np.uint8)
    ds = load_dataset(str(write_idx_images(tmp_path / "solo-images.idx3", px)))
    assert ds.labels is None and ds.class_names is None and ds.num_classes is None
    assert ds.images.eq(1.0).all()
    # "images" -> "labels", "idx3" -> "idx1"; a gzipped label file next to a plain image file is found too
    write_idx_labels(tmp_path / "solo-labels.idx1.gz", [1, 1])
    assert load_dataset(str(tmp_path / "solo-images.idx3")).labels.tolist() == [1, 1]


def test_idx_folder_prefers_train_split(tmp_path):
    write_idx_images(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 2, 2), np.uint8))
    write_idx_labels(tmp_path / "train-labels-idx1-ubyte.gz", [0, 1, 2])
    write_idx_images(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((1, 2, 2), 255, np.uint8))
    write_idx_labels(tmp_path / "t10k-labels-idx1-ubyte.gz", [1])
    (tmp_path / "README").write_text("not an IDX file")
    ds = load_dataset(str(tmp_path))
    assert len(ds) == 3 and ds.images.eq(-1.0).all() and ds.labels.tolist() == [0, 1, 2]


def test_idx_label_count_mismatch(tmp_path):
    images = write_idx_images(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx_labels(tmp_path / "train-labels-idx1-ubyte", [0, 1])
    msg = user_error("label count does not match", str(images))
    assert "2 labels" in msg and "3 images" in msg and "train-labels-idx1-ubyte" in msg and "train-images" in msg


def test_idx_bad_files(tmp_path):
    bad = tmp_path / "x-images-idx3-ubyte"
    bad.write_bytes(struct.pack(">IIII", 0x804, 1, 2, 2) + bytes(4))
    user_error("unknown file format", str(bad))
    short = write_idx_images(tmp_path / "y-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    short.write_bytes(short.read_bytes()[:-1])
    user_error("truncated or corrupt", str(short))
    labels = write_idx_labels(tmp_path / "z-labels-idx1-ubyte", [0])
    user_error("is an IDX labels file", str(labels))
    wrong = write_idx_images(tmp_path / "w-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    (tmp_path / "w-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x803, 1) + bytes(1))
    user_error("not an IDX labels file", str(wrong))


def test_idx_resize_and_non_square(tmp_path):
    px = np.zeros((1, 4, 8), np.uint8)  # H=4, W=8: columns 2..5 (the centre) are white
    px[:, :, 2:6] = 255
    path = write_idx_images(tmp_path / "wide-images-idx3-ubyte", px)
    user_error("not square.*image_size", str(path))
    crop = load_dataset(str(path), image_size=4)  # center crop, no resampling needed
    assert crop.images.shape == (1, 1, 4, 4) and crop.images.eq(1.0).all()
    small = load_dataset(str(path), image_size=2)  # crop then antialiased downsize: still all white
    assert small.images.shape == (1, 1, 2, 2) and torch.allclose(small.images, torch.ones(1, 1, 2, 2))
    ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8), (1, 8, 1))  # (1, 8, 8) dark left, bright right
    ds = load_dataset(str(write_idx_images(tmp_path / "ramp-images-idx3-ubyte", ramp)), image_size=4)
    row = ds.images[0, 0, 0]
    assert bool((row[1:] > row[:-1]).all()) and ds.images.min() >= -1 and ds.images.max() <= 1


# --------------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_binary(tmp_path):
    px = cifar_pixels(3)
    for name, rows, labels in [("data_batch_1.bin", px[:2], [3, 7]), ("data_batch_2.bin", px[2:], [9])]:
        (tmp_path / name).write_bytes(b"".join(bytes([lab]) + r.tobytes() for lab, r in zip(labels, rows, strict=True)))
    (tmp_path / "test_batch.bin").write_bytes(bytes([0]) + px[0].tobytes())  # the test split is not used
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (tmp_path / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    ds = load_dataset(str(tmp_path))
    assert ds.images.shape == (3, 3, 32, 32) and ds.channels == 3
    assert ds.labels.tolist() == [3, 7, 9] and ds.class_names == names and ds.num_classes == 10
    assert ds.images[:, 0].eq(1.0).all() and ds.images[:, 1].eq(-1.0).all()
    assert ds.images[2, 2, 17, 13].item() == pytest.approx((20 + 3) / 127.5 - 1)  # image 2, B plane, col 13
    assert ds.name.startswith("cifar-10")


def test_cifar_binary_truncated(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(3073 + 5))
    user_error("not a whole number of 3073-byte", str(tmp_path))


def test_cifar100_binary_uses_fine_label(tmp_path):
    px = cifar_pixels(2)
    (tmp_path / "train.bin").write_bytes(bytes([1, 42]) + px[0].tobytes() + bytes([0, 5]) + px[1].tobytes())
    ds = load_dataset(str(tmp_path), image_size=16)
    assert ds.labels.tolist() == [42, 5] and ds.class_names == [str(k) for k in range(43)]
    assert ds.images.shape == (2, 3, 16, 16) and ds.images[:, 0].eq(1.0).all() and ds.name.startswith("cifar-100")


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python(tmp_path, protocol):
    px = cifar_pixels(3).reshape(3, 3072)
    for i, (rows, labels) in enumerate([(px[:2], [1, 0]), (px[2:], [2])], start=1):
        batch = {b"batch_label": b"training batch", b"labels": labels, b"data": rows, b"filenames": [b"a.png"]}
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(tmp_path / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"cat", b"dog", b"emu"], b"num_vis": 3072}, f, protocol=protocol)
    ds = load_dataset(str(tmp_path))
    assert ds.labels.tolist() == [1, 0, 2] and ds.class_names == ["cat", "dog", "emu"]
    assert torch.equal(ds.images, torch.from_numpy(cifar_pixels(3) / 127.5 - 1).float())


def test_cifar100_python_numpy1_style_pickle(tmp_path):
    px = cifar_pixels(2).reshape(2, 3072)
    batch = {b"data": px, b"fine_labels": np.array([3, 1]), b"coarse_labels": [0, 0]}
    # numpy 1.x (and the original CIFAR files) name the module numpy.core, not numpy._core
    blob = pickle.dumps(batch, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in blob
    (tmp_path / "train").write_bytes(blob)
    (tmp_path / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"a", b"b", b"c", b"d"]}, protocol=2))
    ds = load_dataset(str(tmp_path))
    assert ds.labels.tolist() == [3, 1] and ds.class_names == ["a", "b", "c", "d"] and ds.name.startswith("cifar-100")
    assert ds.images[1, 2, 0, 9].item() == pytest.approx(19 / 127.5 - 1)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 5])
def test_malicious_cifar_pickle_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar"
    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, f, protocol=protocol)
    msg = user_error("refusing to load", str(folder))
    assert "system" in msg and not marker.exists()
    # a not-a-pickle file is a clean error, too
    (folder / "data_batch_1").write_bytes(b"\x00garbage")
    user_error("cannot read .* as a CIFAR python batch", str(folder))


def test_cifar_python_wrong_content(tmp_path):
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}, f)
    user_error("not a CIFAR python batch", str(tmp_path))


# --------------------------------------------------------------------------------------------------
# folders of images


def test_flat_gray_folder_values_and_ignored_files(tmp_path):
    save(gray(0), tmp_path / "a.png")
    save(gray(255), tmp_path / "b.PNG")  # extensions are case-insensitive
    save(gray(51), tmp_path / "c.bmp")
    (tmp_path / ".hidden.png").write_bytes(b"not an image")  # hidden: ignored, so no decode error
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path))
    assert ds.images.shape == (3, 1, 4, 4) and ds.labels is None and ds.class_names is None
    assert [ds.images[i].unique().tolist() for i in range(3)] == [[-1.0], [1.0], [pytest.approx(-0.6)]]
    assert ds.pixels.dtype == torch.uint8 and [ds.pixels[i].unique().tolist() for i in range(3)] == [[0], [255], [51]]
    assert ds.name == f"{tmp_path.name} (3 images, 4x4, 1 channel, unlabelled)"


def test_modes_gray_family(tmp_path):
    save(Image.fromarray(np.array([[0, 65535], [32768, 257]], np.uint16)), tmp_path / "a16.png")  # I;16
    save(Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("1"), tmp_path / "b1.png")  # bilevel
    la = np.array([[[0, 255], [0, 0]], [[0, 128], [200, 255]]], np.uint8)  # (value, alpha) pairs
    save(Image.fromarray(la, "LA"), tmp_path / "c_la.png")
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    ds = load_dataset(str(tmp_path))
    assert ds.channels == 1
    i16, bilevel, lam = (ds.images[k, 0] for k in range(3))
    assert i16[0, 0].item() == -1.0 and i16[0, 1].item() == 1.0  # 65535 -> 1: scaled, not clipped
    assert i16[1, 0].item() == pytest.approx(32768 / 257 / 127.5 - 1, abs=1e-6)
    assert i16[1, 1].item() == pytest.approx(1 / 127.5 - 1, abs=1e-6)  # 257 is 1 in 8-bit terms
    assert bilevel.tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    assert lam[0, 0].item() == -1.0  # opaque black stays black
    assert lam[0, 1].item() == 1.0  # fully transparent -> white
    assert lam[1, 0].item() == pytest.approx(round(255 * 127 / 255) / 127.5 - 1)  # half alpha over white
    assert lam[1, 1].item() == pytest.approx(200 / 127.5 - 1)
    assert ds.pixels.dtype == torch.float32  # a 16-bit file is not on the 8-bit grid: the set stays float


def test_modes_colour_family(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 0)  # transparent -> white
    save(Image.fromarray(rgba, "RGBA"), tmp_path / "a_rgba.png")
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0])
    pal.putpixel((1, 1), 0)
    save(pal, tmp_path / "b_pal.gif")
    save(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "c_cmyk.jpg")  # CMYK red
    save(Image.new("RGB", (2, 2), (0, 0, 255)), tmp_path / "d.webp")
    ds = load_dataset(str(tmp_path))
    assert ds.channels == 3 and len(ds) == 4
    assert ds.images[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert ds.images[0, :, 0, 1].tolist() == [1.0, 1.0, 1.0]
    assert ds.images[1, :, 0, 0].tolist() == [-1.0, 1.0, -1.0] and ds.images[1, :, 1, 1].tolist() == [-1.0] * 3
    assert torch.allclose(ds.images[2, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]), atol=0.1)  # JPEG is lossy
    assert torch.allclose(ds.images[3, :, 0, 0], torch.tensor([-1.0, -1.0, 1.0]), atol=0.1)


def test_palette_transparency_goes_white(tmp_path):
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30, 0, 0, 0])
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 1
    save(pal, tmp_path / "p.png")
    ds = load_dataset(str(tmp_path))
    assert ds.images[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert ds.images[0, :, 1, 1].tolist() == pytest.approx([10 / 127.5 - 1, 20 / 127.5 - 1, 30 / 127.5 - 1])


def test_mixed_gray_and_colour_broadcasts(tmp_path):
    save(gray(51), tmp_path / "a.png")
    save(Image.new("RGB", (4, 4), (255, 0, 51)), tmp_path / "b.png")
    ds = load_dataset(str(tmp_path))
    assert ds.channels == 3
    assert ds.images[0].unique().tolist() == [pytest.approx(-0.6)]  # gray copied to all three channels
    assert ds.images[1, :, 2, 2].tolist() == pytest.approx([1.0, -1.0, -0.6])


def test_class_subfolders(tmp_path):
    save(gray(0), tmp_path / "dog" / "1.png")
    save(gray(255), tmp_path / "cat" / "x.png")
    save(gray(255), tmp_path / "cat" / "nested" / "y.png")
    (tmp_path / ".cache").mkdir()
    save(gray(0), tmp_path / ".cache" / "z.png")  # hidden folder: not a class
    (tmp_path / "empty").mkdir()  # no images: not a class
    ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.images[:, 0, 0, 0].tolist() == [1.0, 1.0, -1.0]
    assert ds.name.endswith("(3 images, 4x4, 1 channel, 2 classes)")


def test_files_beside_class_subfolders(tmp_path):
    save(gray(0), tmp_path / "cat" / "1.png")
    save(gray(0), tmp_path / "stray.png")
    msg = user_error("mixes image files", str(tmp_path))
    assert "stray.png" in msg and "cat" in msg


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    user_error("no images found", str(tmp_path))


def test_bad_images_with_and_without_skip_bad(tmp_path):
    save(gray(255), tmp_path / "good.png")
    for i in range(5):
        (tmp_path / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    msg = user_error("5 file.* could not be read", str(tmp_path))
    assert "broken0.png" in msg and "and 2 more" in msg and "skip_bad" in msg
    ds = load_dataset(str(tmp_path), skip_bad=True)
    assert len(ds) == 1 and ds.images.eq(1.0).all()
    assert ds.skipped == [f"broken{i}.png" for i in range(5)]
    for i in range(5):
        (tmp_path / f"broken{i}.png").unlink()
    (tmp_path / "good.png").write_bytes(b"junk")
    user_error("none of the 1 image files", str(tmp_path), skip_bad=True)


def test_sizes_need_image_size(tmp_path):
    save(gray(0, (4, 4)), tmp_path / "a.png")
    save(gray(0, (6, 6)), tmp_path / "b.png")
    user_error("different sizes.*image_size N", str(tmp_path))
    assert load_dataset(str(tmp_path), image_size=3).images.shape == (2, 1, 3, 3)
    other = tmp_path / "rect"
    save(gray(0, (6, 4)), other / "c.png")
    user_error("6x4, not square.*image_size N", str(other))


@pytest.mark.parametrize("wide", [True, False])
def test_center_crop_keeps_the_centre(tmp_path, wide):
    px = np.full((8, 32), 255, np.uint8)  # 32 wide, 8 tall: white, with black bands at both far ends
    px[:, :4] = 0
    px[:, 28:] = 0
    save(Image.fromarray(px if wide else px.T.copy()), tmp_path / "img.png")
    exact = load_dataset(str(tmp_path), image_size=8)  # shorter side already 8: a pure crop of columns 12..19
    assert exact.images.shape == (1, 1, 8, 8) and exact.images.eq(1.0).all()
    # resampling filters reach a few pixels past the square but never the bands 8 pixels away
    down = load_dataset(str(tmp_path), image_size=4)
    assert down.images.shape == (1, 1, 4, 4) and torch.allclose(down.images, torch.ones(1, 1, 4, 4), atol=1e-2)
    up = load_dataset(str(tmp_path), image_size=12)
    assert up.images.shape == (1, 1, 12, 12) and torch.allclose(up.images, torch.ones(1, 1, 12, 12), atol=1e-2)
    # an off-centre feature moves with the crop: a black column at x=13 lands at 1/8 of the output width
    px[:, 13] = 0
    save(Image.fromarray(px if wide else px.T.copy()), tmp_path / "img.png")
    line = load_dataset(str(tmp_path), image_size=8).images[0, 0]
    assert (line[:, 1] if wide else line[1, :]).eq(-1.0).all() and line.eq(-1.0).sum().item() == 8


def test_resize_sixteen_bit_and_colour(tmp_path):
    save(Image.fromarray(np.full((6, 6), 65535, np.uint16)), tmp_path / "a.png")
    save(Image.new("RGB", (9, 6), (255, 0, 0)), tmp_path / "b.png")
    ds = load_dataset(str(tmp_path), image_size=4)
    assert ds.images.shape == (2, 3, 4, 4)
    assert torch.allclose(ds.images[0], torch.ones(3, 4, 4), atol=1e-4)
    assert ds.images[1, 0].eq(1.0).all() and ds.images[1, 1:].eq(-1.0).all()


def test_unknown_single_files(tmp_path):
    img = save(gray(0), tmp_path / "one.png")
    user_error("single image", str(img))
    other = tmp_path / "data.csv"
    other.write_text("1,2,3")
    user_error("unknown file format", str(other))


# --------------------------------------------------------------------------------------------------
# splits


def test_fashion_mnist_test_split():
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist", split="test")
    assert ds.images.shape == (10000, 1, 28, 28) and ds.class_names == FASHION_MNIST_CLASSES
    assert ds.labels[:4].tolist() == [9, 2, 1, 1]  # the t10k file's well-known first items
    assert ds.name.startswith("fashion-mnist test")
    assert torch.equal(load_dataset(str(FASHION_DIR), split="test").images, ds.images)


def test_idx_folder_test_split(tmp_path):
    write_idx_images(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((3, 2, 2), np.uint8))
    write_idx_images(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((1, 2, 2), 255, np.uint8))
    write_idx_labels(tmp_path / "t10k-labels-idx1-ubyte.gz", [1])
    ds = load_dataset(str(tmp_path), split="test")
    assert len(ds) == 1 and ds.images.eq(1.0).all() and ds.labels.tolist() == [1]
    assert len(load_dataset(str(tmp_path), split="train")) == 3  # the default is unchanged
    user_error("no test split", str(tmp_path / "train-images-idx3-ubyte.gz"), split="test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    user_error("test IDX image files", str(tmp_path), split="test")


def test_cifar_test_split(tmp_path):
    px = cifar_pixels(3)
    (tmp_path / "data_batch_1.bin").write_bytes(b"".join(bytes([3]) + r.tobytes() for r in px[:2]))
    user_error("without its test file test_batch.bin", str(tmp_path), split="test")
    (tmp_path / "test_batch.bin").write_bytes(bytes([5]) + px[2].tobytes())
    ds = load_dataset(str(tmp_path), split="test")
    assert len(ds) == 1 and ds.labels.tolist() == [5]
    assert ds.images[0, 2, 0, 3].item() == pytest.approx((20 + 3) / 127.5 - 1)  # image 2's B plane
    assert len(load_dataset(str(tmp_path))) == 2


def test_splits_that_do_not_exist(tmp_path):
    user_error("digits set has no test split", "digits", split="test")
    save(gray(10), tmp_path / "a.png")
    user_error("has no test split", str(tmp_path), split="test")
    user_error("unknown split 'valid'", "digits", split="valid")
    assert len(load_dataset(str(tmp_path), split="train")) == 1


# --------------------------------------------------------------------------------------------------
# errors name the parameter; the CLI shows its flag there


CLI_FLAGS = flag_names(TrainConfig)


def cli_text(*args, **kwargs) -> str:
    """The message of load_dataset's ParameterError as the CLI prints it (the flags in place of the names)."""
    with pytest.raises(ParameterError) as info:
        load_dataset(*args, **kwargs)
    return info.value.render(CLI_FLAGS.__getitem__)


def test_parameter_errors_read_as_flags_through_the_cli(tmp_path):
    missing = str(tmp_path / "nope")
    assert cli_text(missing) == (
        f"--data {missing!r}: no such file or folder, and not a known dataset name (known: digits, fashion-mnist)"
    )
    assert cli_text(" ") == "--data is empty; pass a folder of images, a dataset file, or one of: digits, fashion-mnist"
    save(gray(0, (4, 4)), tmp_path / "a" / "x.png")
    save(gray(0, (6, 6)), tmp_path / "a" / "y.png")
    assert cli_text(str(tmp_path / "a")) == (
        f"images in {tmp_path / 'a'} have different sizes (4x4, 6x6); pass "
        "--image-size N to resize and center-crop them to NxN"
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"junk")
    assert cli_text(str(tmp_path / "b")).endswith("fix or remove them, or pass --skip-bad to skip them")


def test_image_files_are_the_visible_images_in_path_part_order(tmp_path):
    """The listing against a plain Path.rglob oracle: the same files in the same order (by path parts, so
    "a/z.png" before "a-b/x.png"), hidden files and folders left out, symlinked folders not followed."""
    for name in ("a/z.png", "a-b/x.png", "a/b/c.JPG", "a.png", "b.txt", ".h/x.png", "a/.y.png", "dir.png/q.gif"):
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
        else:
            save(gray(0), tmp_path / name)
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "l.png").symlink_to(tmp_path / "a.png")
    for recursive in (True, False):
        found = tmp_path.rglob("*") if recursive else tmp_path.iterdir()
        before = sorted(
            p
            for p in found
            if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(tmp_path).parts)
        )
        assert image_files(tmp_path, recursive) == before
    assert [p.relative_to(tmp_path).as_posix() for p in image_files(tmp_path, True)] == [
        "a/b/c.JPG",
        "a/z.png",
        "a-b/x.png",
        "a.png",
        "dir.png/q.gif",
        "l.png",
    ]
