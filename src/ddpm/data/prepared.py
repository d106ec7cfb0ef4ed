"""Prepared data sets: what one is, where it lives, whether it is current, and opening it as a memory map.

A prepared set is a source decoded once into one uint8 array on disk that every process memory-maps
(:mod:`ddpm.data.preparing` makes one). It is a folder holding

- ``pixels-<id>.npy``: uint8 ``(N, C, S, S)``, the images in the order :func:`ddpm.data.load.load_dataset` gives them;
- ``labels-<id>.npy``: int64 ``(N,)``, when the source is labelled;
- ``manifest.json``: the source with a SHA-256 of its file list (names, sizes, mtimes), S, C, the resize method,
  the class names, the files skipped and why, and each file's byte count, .npy header and CRC-32s (one per block
  of rows).

The manifest is written last, so a folder without one is unfinished and is never opened as a set. Opening a set
checks the manifest, the .npy header and the byte counts; :meth:`ddpm.data.dataset.ImageDataset.gather` checks each
block's CRC-32 the first time a batch reads from it, so a damaged file is reported before its rows are trained on.
A set named directly is checked against its source, where that source is on this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ParameterError, UserError
from ..files import cache_dir
from .dataset import KNOWN_DATASETS, PREPARED_MANIFEST, ImageDataset, missing_source
from .folders import folder_listing
from .formats import FASHION_MNIST_DIR, find_cifar, find_idx_images, label_file_for, load_fashion_mnist, visible

FORMAT = "ddpm-prepared"
VERSION = 1


# --------------------------------------------------------------------------------------------------
# the source and where its prepared copy lives


@dataclass
class Source:
    """What a prepared set is made from, and the fingerprint that says when it has changed."""

    spec: str  # as given to --data
    kind: str  # "images" (decoded here, in parallel) or "memory" (read by load_dataset: IDX, CIFAR, built-in)
    path: Path | None  # the folder or file, resolved; None for a built-in set
    label: str  # the folder's or file's name, or the built-in set's: names the prepared folder
    fingerprint: str  # SHA-256 of the file list: relative names, sizes, mtimes (and labels)
    files: int
    entries: list[tuple[str, int]] = field(default_factory=list)  # images: (file, label -1..K-1), in load order
    class_names: list[str] | None = None


def source_kind(spec: str) -> str:
    """ "prepared" (a prepared set), "images" (a folder of images) or "memory" (anything else load_dataset reads,
    or a path it will refuse with the right message)."""
    if spec in KNOWN_DATASETS:
        return "memory"
    path = Path(spec).expanduser()
    if not path.is_dir():
        return "memory"
    if (path / PREPARED_MANIFEST).is_file():
        return "prepared"
    if find_cifar(path) is not None or find_idx_images(path) is not None:
        return "memory"
    return "images"


def _sha256(lines: list[str]) -> str:
    """The SHA-256 (hex) of ``lines``, each ended by a newline."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def _stat_lines(files: list[tuple[str, int]] | list[tuple[Path, int]], root: Path) -> list[str]:
    """One line per file: name relative to ``root``, size, mtime in ns and label; changing any changes the set."""
    out, cut = [], len(os.fspath(root).rstrip(os.sep)) + 1
    for path, label in files:
        name = os.fspath(path)
        st = os.stat(name)
        out.append(f"{name[cut:].replace(os.sep, '/')}\t{st.st_size}\t{st.st_mtime_ns}\t{label}")
    return out


def describe_source(spec: str, kind: str) -> Source:
    """The source ``spec`` names, listed and fingerprinted (a folder of 200,000 images: about a second)."""
    if kind == "images":
        folder = Path(spec).expanduser().resolve()
        entries, names = folder_listing(folder)
        lines = _stat_lines(entries, folder) + ["classes\t" + "\t".join(names or [])]
        return Source(spec, kind, folder, folder.name or "data", _sha256(lines), len(entries), entries, names)
    if spec == "digits":
        import sklearn

        return Source(spec, kind, None, spec, _sha256([f"digits from scikit-learn {sklearn.__version__}"]), 1)
    path = Path(FASHION_MNIST_DIR if spec == "fashion-mnist" else spec).expanduser().resolve()
    if not path.exists():  # the error load_dataset gives: Fashion-MNIST not installed, or no such path
        if spec == "fashion-mnist":
            load_fashion_mnist(Path(FASHION_MNIST_DIR), None)
        raise missing_source(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and visible(p))
        root = path
    else:
        labels = label_file_for(path) if path.is_file() else None
        files, root = [path] + ([labels] if labels else []), path.parent
    lines = _stat_lines([(p, -1) for p in files], root)
    label = spec if spec in KNOWN_DATASETS else path.name
    return Source(spec, kind, None if spec in KNOWN_DATASETS else path, label, _sha256(lines), len(files))


def prepared_id(source: Source, settings: dict[str, Any]) -> str:
    """The short id in a preparation's file names: the source's fingerprint and the settings, hashed."""
    return _sha256([source.fingerprint, json.dumps(settings, sort_keys=True), str(VERSION)])[:16]


def prepared_locations(spec: str, image_size: int | None = None, prepared_dir: str | Path | None = None) -> list[Path]:
    """Where the prepared copy of ``spec`` at ``image_size`` is looked for and written, first choice first.

    A folder ``.ddpm/<name>-<S>px`` inside the source folder (beside a source file), then
    ``<cache>/prepared/<name>-<hash>-<S>px`` (the cache is ``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm``, else
    ``~/.cache/ddpm``); with ``prepared_dir``, only ``<prepared_dir>/<name>-<hash>-<S>px``. The hash is of the
    source's absolute path, so two sources never share a folder."""
    kind = source_kind(spec)
    if kind == "prepared":
        return [Path(spec).expanduser()]
    if spec in KNOWN_DATASETS:
        path, label = None, spec
    else:
        path = Path(spec).expanduser().resolve()
        label = path.name or "data"
    return candidate_folders(path, label, image_size, prepared_dir)


def candidate_folders(
    path: Path | None, label: str, image_size: int | None, prepared_dir: str | Path | None
) -> list[Path]:
    """:func:`prepared_locations` of a source at ``path`` (None: a built-in set) named ``label``."""
    tag = f"{image_size}px" if image_size is not None else "native"
    unique = f"{label}-{hashlib.sha256(str(path or label).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}-{tag}"
    if prepared_dir is not None:
        return [Path(prepared_dir).expanduser() / unique]
    beside = [] if path is None else [(path if path.is_dir() else path.parent) / ".ddpm" / f"{label}-{tag}"]
    return [*beside, cache_dir() / "prepared" / unique]


# --------------------------------------------------------------------------------------------------
# reading and checking a prepared set


_MANIFEST_KEYS = (
    "name",
    "source",
    "image_size",
    "resize",
    "count",
    "channels",
    "size",
    "levels",
    "pixels",
    "labels",
    "class_names",
    "skipped",
)


class Unusable(Exception):
    """A folder's prepared set cannot be used as it is; the message says why (stale or damaged)."""


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, fortran_order, data offset) of a .npy file, read without loading (or unpickling) anything."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(shape), dtype, fortran, f.tell()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when there is none; Unusable when it is not one this version reads."""
    path = folder / PREPARED_MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Unusable(f"its {PREPARED_MANIFEST} cannot be read ({type(e).__name__})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise Unusable(f"its {PREPARED_MANIFEST} is not a ddpm prepared-set manifest")
    if m.get("version") != VERSION:
        raise Unusable(f"it was written in format version {m.get('version')}, this ddpm reads version {VERSION}")
    missing = [k for k in _MANIFEST_KEYS if k not in m]
    if missing:
        raise Unusable(f"its {PREPARED_MANIFEST} lacks {', '.join(missing)}")
    return m


def _check_files(folder: Path, m: dict[str, Any]) -> None:
    """The pixel and label files the manifest names: present, their byte counts and .npy headers as recorded, and
    the labels' CRC-32 (the pixels' blocks are checked as they are read). Unusable when anything differs."""
    try:
        px, n, c, s = m["pixels"], m["count"], m["channels"], m["size"]
        _check_npy(folder / px["file"], (n, c, s, s), np.uint8, px["bytes"], px["offset"])
        if len(px["crc32"]) != -(-n // px["block_rows"]):
            raise Unusable("its manifest lists the wrong number of checksums")
        if m["labels"] is not None:
            lb = m["labels"]
            _check_npy(folder / lb["file"], (n,), np.int64, lb["bytes"], lb["offset"])
            if zlib.crc32((folder / lb["file"]).read_bytes()) != lb["crc32"]:
                raise Unusable(f"{lb['file']} does not match its checksum")
    except (KeyError, TypeError, ValueError) as e:
        raise Unusable(f"its {PREPARED_MANIFEST} is incomplete ({type(e).__name__}: {e})") from None


def _check_npy(path: Path, shape: tuple[int, ...], dtype: Any, size: int, offset: int) -> None:
    """A .npy file of ``shape`` and ``dtype`` with ``size`` bytes and its data at ``offset``; Unusable when not."""
    try:
        actual = path.stat().st_size
        header = npy_header(path)
    except FileNotFoundError:
        raise Unusable(f"{path.name} is missing") from None
    except (OSError, ValueError) as e:
        raise Unusable(f"{path.name} has no readable .npy header ({e})") from None
    if actual != size:
        raise Unusable(f"{path.name} has {actual} bytes, the manifest says {size} (truncated or replaced)")
    if header != (shape, np.dtype(dtype), False, offset):
        raise Unusable(f"{path.name}'s header says {header[1]} {header[0]}, the manifest {np.dtype(dtype)} {shape}")


def usable_manifest(folder: Path, source: Source, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of the set in ``folder`` when it is a finished, intact copy of ``source`` with ``settings``;
    None when the folder holds no finished set; Unusable saying why when it holds a stale or damaged one."""
    m = _read_manifest(folder)
    if m is None:
        return None
    if m.get("resize") != settings["resize"]:
        raise Unusable(f"it was made with another resize method ({m.get('resize')})")
    if m.get("image_size") != settings["image_size"]:
        raise Unusable(f"it was made at image size {m.get('image_size')}")
    if m.get("source", {}).get("fingerprint") != source.fingerprint:
        raise Unusable("files were added, removed or changed in the source since")
    _check_files(folder, m)
    return m


class _BlockCheck:
    """Checks blocks of rows of a prepared pixel file against their CRC-32 the first time a batch reads them."""

    def __init__(self, folder: Path, m: dict[str, Any]) -> None:
        px = m["pixels"]
        self.folder, self.path, self.offset = folder, folder / px["file"], px["offset"]
        self.n, self.block_rows = m["count"], px["block_rows"]
        self.row_bytes = m["channels"] * m["size"] * m["size"]
        self.crcs = np.asarray(px["crc32"], dtype=np.uint32)
        self.checked = np.zeros(len(self.crcs), dtype=bool)

    def __call__(self, indices: Tensor) -> None:
        """Check the unchecked blocks holding rows ``indices`` (B,); UserError naming the rows when one differs."""
        blocks = np.unique(indices.numpy() // self.block_rows)
        todo = blocks[~self.checked[blocks]]
        if not len(todo):
            return
        with open(self.path, "rb") as f:
            for b in todo:
                start = int(b) * self.block_rows
                count = min(self.block_rows, self.n - start)
                f.seek(self.offset + start * self.row_bytes)
                if zlib.crc32(f.read(count * self.row_bytes)) != int(self.crcs[b]):
                    raise UserError(
                        f"the prepared set {self.folder} is damaged: images {start}..{start + count - 1} "
                        f"of {self.path.name} do not match their checksum; delete {self.folder} and "
                        "run again to prepare it anew"
                    )
                self.checked[b] = True


def open_prepared(path: str | Path, *, image_size: int | None = None, check_source: bool = True) -> ImageDataset:
    """The prepared set in folder ``path`` as an :class:`~ddpm.data.dataset.ImageDataset` whose ``pixels``
    (N, C, S, S) uint8 are a read-only memory map of its file (nothing is read until a batch gathers its rows).

    Checks the manifest, the .npy headers and byte counts, and the labels' checksum; ``gather`` checks each block of
    rows when first read. With ``check_source`` a source folder that still exists must not have changed since.
    ``image_size``, when given, must be the set's S. Raises a one-line ParameterError naming ``{data}``."""
    folder = Path(path).expanduser()
    try:
        m = _read_manifest(folder)
        if m is None:
            raise Unusable(f"it has no {PREPARED_MANIFEST} (an unfinished preparation)")
        _check_files(folder, m)
    except Unusable as e:
        raise ParameterError(f"{{data}} {folder} is not a usable prepared set: {e}; prepare it again") from None
    if image_size is not None and image_size != m["size"]:
        raise ParameterError(
            f"{{data}} {folder} holds {m['size']}x{m['size']} images, not {image_size}: pass "
            f"{{image_size}} {m['size']} or prepare the source at {image_size}"
        )
    if check_source:
        _check_current(folder, m)
    pixels = np.load(folder / m["pixels"]["file"], mmap_mode="r", allow_pickle=False)  # (N, C, S, S) uint8
    with warnings.catch_warnings():  # torch warns that the map is read-only: nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        pixels_t = torch.from_numpy(pixels)
    labels = None
    if m["labels"] is not None:
        labels = torch.from_numpy(np.load(folder / m["labels"]["file"], allow_pickle=False).copy())
    return ImageDataset(
        pixels_t,
        labels,
        m["class_names"],
        m["name"],
        [s["file"] for s in m["skipped"]],
        levels=m["levels"],
        row_check=_BlockCheck(folder, m),
    )


def _check_current(folder: Path, m: dict[str, Any]) -> None:
    """A prepared set named directly must still match its source where that source is on this machine."""
    src = m["source"]
    spec = src["path"] if src.get("path") else src["spec"]
    if src.get("path") and not Path(src["path"]).exists():
        return  # prepared elsewhere, or the source was moved away: the set stands on its own
    try:
        kind = source_kind(spec)
        current = None if kind == "prepared" else describe_source(spec, kind).fingerprint
    except UserError:  # a built-in set not installed here, say: the set stands on its own
        return
    if current is not None and current != src["fingerprint"]:
        raise ParameterError(
            f"{{data}} {folder} was prepared from {spec}, which has changed since (files added, "
            f"removed or changed): prepare it again, or pass {{data}} {spec} itself"
        )
