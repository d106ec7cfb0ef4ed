"""Prepared data sets: a source decoded once into one uint8 array on disk that every process memory-maps.

``ddpm prepare`` makes one, and ``ddpm train --data FOLDER`` makes one the first time it trains on a folder of
images, and again whenever the folder's files, the image size or the resize method have changed. A prepared set
is a folder holding

- ``pixels-<id>.npy``: uint8 ``(N, C, S, S)``, the images in the order :func:`ddpm.data.load_dataset` gives them;
- ``labels-<id>.npy``: int64 ``(N,)``, when the source is labelled;
- ``manifest.json``: the source with a SHA-256 of its file list (names, sizes, mtimes), S, C, the resize method,
  the class names, the files skipped and why, and each file's byte count, .npy header and CRC-32s (one per block
  of :data:`BLOCK_ROWS` rows).

The manifest is written last (a temporary name, fsync, rename), so a folder without one is unfinished and is
never opened as a set. A preparation in progress keeps ``pixels-<id>.npy.partial`` and ``journal-<id>.jsonl``,
the blocks written so far: killed and run again on the same source, it decodes only the rest. Opening a set checks
the manifest, the .npy header and the byte counts; :meth:`ddpm.data.ImageDataset.gather` checks each block's CRC-32
the first time a batch reads from it, so a damaged file is reported before its rows are trained on.

Images are decoded by :func:`ddpm.data.decode_fitted` in a pool of processes (one per core), each writing its
blocks of rows straight into the file. 8-bit images are stored exactly as ``load_dataset`` decodes them; 16-bit
ones are rounded to the nearest 8-bit level, as :meth:`ddpm.data.ImageDataset.as_uint8` rounds them. IDX files,
CIFAR and the built-in sets are read by ``load_dataset`` and stored as their uint8 codes (rounded to 8 bits when
resized); without a prepared set, training keeps reading those in memory as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from .data import (
    FASHION_MNIST_DIR,
    KNOWN_DATASETS,
    PREPARED_MANIFEST,
    RESIZE_METHOD,
    ImageDataset,
    _check_request,
    _find_cifar,
    _find_idx_images,
    _label_file_for,
    _list_names,
    _visible,
    decode_fitted,
    decode_image,
    describe_shape,
    folder_listing,
    load_dataset,
)
from .errors import ParameterError, UserError, check_at_least
from .reference import default_cache_dir
from .runtime import Dist

FORMAT = "ddpm-prepared"
VERSION = 1
BLOCK_ROWS = 64  # images per decoding task, and rows per CRC-32 block of the pixel file
SYNC_EVERY_S = 1.0  # how often a preparation makes its written rows durable and records them in the journal
MEMORY_RESIZE = "load_dataset;8-bit-rounded"  # the resize method of sources read in memory (IDX, CIFAR, built-in)
WAIT_TIMEOUT = timedelta(days=7)  # how long other ranks wait for rank 0's preparation (the process group's is 30 min)


# --------------------------------------------------------------------------------------------------
# the source and where its prepared copy lives


@dataclass
class _Source:
    """What a prepared set is made from, and the fingerprint that says when it has changed."""

    spec: str  # as given to --data
    kind: str  # "images" (decoded here, in parallel) or "memory" (read by load_dataset: IDX, CIFAR, built-in)
    path: Path | None  # the folder or file, resolved; None for a built-in set
    label: str  # the folder's or file's name, or the built-in set's: names the prepared folder
    fingerprint: str  # SHA-256 of the file list: relative names, sizes, mtimes (and labels)
    files: int
    entries: list[tuple[str, int]] = field(default_factory=list)  # images: (file, label -1..K-1), in load order
    class_names: list[str] | None = None


def _source_kind(spec: str) -> str:
    """"prepared" (a prepared set), "images" (a folder of images) or "memory" (anything else load_dataset reads,
    or a path it will refuse with the right message)."""
    if spec in KNOWN_DATASETS:
        return "memory"
    path = Path(spec).expanduser()
    if not path.is_dir():
        return "memory"
    if (path / PREPARED_MANIFEST).is_file():
        return "prepared"
    if _find_cifar(path) is not None or _find_idx_images(path) is not None:
        return "memory"
    return "images"


def _sha256(lines: list[str]) -> str:
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


def _describe_source(spec: str, kind: str) -> _Source:
    """The source ``spec`` names, listed and fingerprinted (a folder of 200,000 images: about a second)."""
    if kind == "images":
        folder = Path(spec).expanduser().resolve()
        entries, names = folder_listing(folder)
        lines = _stat_lines(entries, folder) + ["classes\t" + "\t".join(names or [])]
        return _Source(spec, kind, folder, folder.name or "data", _sha256(lines), len(entries), entries, names)
    if spec == "digits":
        import sklearn

        return _Source(spec, kind, None, spec, _sha256([f"digits from scikit-learn {sklearn.__version__}"]), 1)
    path = Path(FASHION_MNIST_DIR if spec == "fashion-mnist" else spec).expanduser().resolve()
    if not path.exists():
        load_dataset(spec)  # raises the error that names the problem (a missing path, Fashion-MNIST not installed)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _visible(p))
        root = path
    else:
        labels = _label_file_for(path) if path.is_file() else None
        files, root = [path] + ([labels] if labels else []), path.parent
    lines = _stat_lines([(p, -1) for p in files], root)
    label = spec if spec in KNOWN_DATASETS else path.name
    return _Source(spec, kind, None if spec in KNOWN_DATASETS else path, label, _sha256(lines), len(files))


def _settings(source: _Source, image_size: int | None) -> dict[str, Any]:
    """What the pixels depend on besides the source's files; another value means another preparation."""
    return {"image_size": image_size, "resize": RESIZE_METHOD if source.kind == "images" else MEMORY_RESIZE}


def _ident(source: _Source, settings: dict[str, Any]) -> str:
    """The short id in a preparation's file names: the source's fingerprint and the settings, hashed."""
    return _sha256([source.fingerprint, json.dumps(settings, sort_keys=True), str(VERSION)])[:16]


def prepared_locations(spec: str, image_size: int | None = None, prepared_dir: str | Path | None = None) -> list[Path]:
    """Where the prepared copy of ``spec`` at ``image_size`` is looked for and written, first choice first.

    A folder ``.ddpm/<name>-<S>px`` inside the source folder (beside a source file), then
    ``<cache>/prepared/<name>-<hash>-<S>px`` (the cache is ``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm``, else
    ``~/.cache/ddpm``); with ``prepared_dir``, only ``<prepared_dir>/<name>-<hash>-<S>px``. The hash is of the
    source's absolute path, so two sources never share a folder."""
    kind = _source_kind(spec)
    if kind == "prepared":
        return [Path(spec).expanduser()]
    if spec in KNOWN_DATASETS:
        path, label = None, spec
    else:
        path = Path(spec).expanduser().resolve()
        label = path.name or "data"
    return _candidates(path, label, image_size, prepared_dir)


def _candidates(path: Path | None, label: str, image_size: int | None, prepared_dir: str | Path | None) -> list[Path]:
    tag = f"{image_size}px" if image_size is not None else "native"
    unique = f"{label}-{hashlib.sha256(str(path or label).encode('utf-8', 'surrogateescape')).hexdigest()[:8]}-{tag}"
    if prepared_dir is not None:
        return [Path(prepared_dir).expanduser() / unique]
    beside = [] if path is None else [(path if path.is_dir() else path.parent) / ".ddpm" / f"{label}-{tag}"]
    return [*beside, default_cache_dir() / "prepared" / unique]


# --------------------------------------------------------------------------------------------------
# reading and checking a prepared set


_MANIFEST_KEYS = ("name", "source", "image_size", "resize", "count", "channels", "size", "levels", "pixels", "labels",
                  "class_names", "skipped")


class _Unusable(Exception):
    """A folder's prepared set cannot be used as it is; the message says why (stale or damaged)."""


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
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
    """The folder's manifest, or None when there is none; _Unusable when it is not one this version reads."""
    path = folder / PREPARED_MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Unusable(f"its {PREPARED_MANIFEST} cannot be read ({type(e).__name__})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise _Unusable(f"its {PREPARED_MANIFEST} is not a ddpm prepared-set manifest")
    if m.get("version") != VERSION:
        raise _Unusable(f"it was written in format version {m.get('version')}, this ddpm reads version {VERSION}")
    missing = [k for k in _MANIFEST_KEYS if k not in m]
    if missing:
        raise _Unusable(f"its {PREPARED_MANIFEST} lacks {', '.join(missing)}")
    return m


def _check_files(folder: Path, m: dict[str, Any]) -> None:
    """The pixel and label files the manifest names: present, their byte counts and .npy headers as recorded, and
    the labels' CRC-32 (the pixels' blocks are checked as they are read). _Unusable when anything differs."""
    try:
        px, n, c, s = m["pixels"], m["count"], m["channels"], m["size"]
        _check_npy(folder / px["file"], (n, c, s, s), np.uint8, px["bytes"], px["offset"])
        if len(px["crc32"]) != -(-n // px["block_rows"]):
            raise _Unusable("its manifest lists the wrong number of checksums")
        if m["labels"] is not None:
            lb = m["labels"]
            _check_npy(folder / lb["file"], (n,), np.int64, lb["bytes"], lb["offset"])
            if zlib.crc32((folder / lb["file"]).read_bytes()) != lb["crc32"]:
                raise _Unusable(f"{lb['file']} does not match its checksum")
    except (KeyError, TypeError, ValueError) as e:
        raise _Unusable(f"its {PREPARED_MANIFEST} is incomplete ({type(e).__name__}: {e})") from None


def _check_npy(path: Path, shape: tuple[int, ...], dtype: Any, size: int, offset: int) -> None:
    try:
        actual = path.stat().st_size
        header = _npy_header(path)
    except FileNotFoundError:
        raise _Unusable(f"{path.name} is missing") from None
    except (OSError, ValueError) as e:
        raise _Unusable(f"{path.name} has no readable .npy header ({e})") from None
    if actual != size:
        raise _Unusable(f"{path.name} has {actual} bytes, the manifest says {size} (truncated or replaced)")
    if header != (shape, np.dtype(dtype), False, offset):
        raise _Unusable(f"{path.name}'s header says {header[1]} {header[0]}, the manifest {np.dtype(dtype)} {shape}")


def _usable(folder: Path, source: _Source, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of the set in ``folder`` when it is a finished, intact copy of ``source`` with ``settings``;
    None when the folder holds no finished set; _Unusable saying why when it holds a stale or damaged one."""
    m = _read_manifest(folder)
    if m is None:
        return None
    if m.get("resize") != settings["resize"]:
        raise _Unusable(f"it was made with another resize method ({m.get('resize')})")
    if m.get("image_size") != settings["image_size"]:
        raise _Unusable(f"it was made at image size {m.get('image_size')}")
    if m.get("source", {}).get("fingerprint") != source.fingerprint:
        raise _Unusable("files were added, removed or changed in the source since")
    _check_files(folder, m)
    return m


def _check_skipped(m: dict[str, Any], skip_bad: bool, where: str) -> None:
    """A set made with skip_bad holds fewer images than its source: reused without skip_bad it says so, as
    load_dataset would."""
    if m["skipped"] and not skip_bad:
        bad = [s["file"] for s in m["skipped"]]
        raise ParameterError(f"{len(bad)} file(s) in {where} could not be read as images: {_list_names(bad)}; "
                             "fix or remove them, or pass {skip_bad} to skip them")


def _human(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


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
                    raise UserError(f"the prepared set {self.folder} is damaged: images {start}..{start + count - 1} "
                                    f"of {self.path.name} do not match their checksum; delete {self.folder} and "
                                    "run again to prepare it anew")
                self.checked[b] = True


def open_prepared(path: str | Path, *, image_size: int | None = None, check_source: bool = True) -> ImageDataset:
    """The prepared set in folder ``path`` as an :class:`~ddpm.data.ImageDataset` whose ``pixels`` (N, C, S, S) uint8
    are a read-only memory map of its file (nothing is read until a batch gathers its rows).

    Checks the manifest, the .npy headers and byte counts, and the labels' checksum; ``gather`` checks each block of
    rows when first read. With ``check_source`` a source folder that still exists must not have changed since.
    ``image_size``, when given, must be the set's S. Raises a one-line ParameterError naming ``{spec}``."""
    folder = Path(path).expanduser()
    try:
        m = _read_manifest(folder)
        if m is None:
            raise _Unusable(f"it has no {PREPARED_MANIFEST} (an unfinished preparation)")
        _check_files(folder, m)
    except _Unusable as e:
        raise ParameterError(f"{{spec}} {folder} is not a usable prepared set: {e}; prepare it again") from None
    if image_size is not None and image_size != m["size"]:
        raise ParameterError(f"{{spec}} {folder} holds {m['size']}x{m['size']} images, not {image_size}: pass "
                             f"{{image_size}} {m['size']} or prepare the source at {image_size}")
    if check_source:
        _check_current(folder, m)
    pixels = np.load(folder / m["pixels"]["file"], mmap_mode="r", allow_pickle=False)  # (N, C, S, S) uint8
    with warnings.catch_warnings():  # torch warns that the map is read-only: nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        pixels_t = torch.from_numpy(pixels)
    labels = None
    if m["labels"] is not None:
        labels = torch.from_numpy(np.load(folder / m["labels"]["file"], allow_pickle=False).copy())
    return ImageDataset(pixels_t, labels, m["class_names"], m["name"], [s["file"] for s in m["skipped"]],
                        levels=m["levels"], row_check=_BlockCheck(folder, m))


def _check_current(folder: Path, m: dict[str, Any]) -> None:
    """A prepared set named directly must still match its source where that source is on this machine."""
    src = m["source"]
    spec = src["path"] if src.get("path") else src["spec"]
    if src.get("path") and not Path(src["path"]).exists():
        return  # prepared elsewhere, or the source was moved away: the set stands on its own
    try:
        kind = _source_kind(spec)
        current = None if kind == "prepared" else _describe_source(spec, kind).fingerprint
    except UserError:  # a built-in set not installed here, say: the set stands on its own
        return
    if current is not None and current != src["fingerprint"]:
        raise ParameterError(f"{{spec}} {folder} was prepared from {spec}, which has changed since (files added, "
                             f"removed or changed): prepare it again, or pass {{spec}} {spec} itself")


# --------------------------------------------------------------------------------------------------
# preparing


def prepare_dataset(spec: str, image_size: int | None = None, *, skip_bad: bool = False,
                    prepared_dir: str | Path | None = None, workers: int | None = None, progress: bool = True,
                    say: Callable[[str], None] | None = print) -> Path:
    """Make sure a finished, current prepared copy of ``spec`` at ``image_size`` exists; returns its folder.

    ``spec`` is what ``--data`` takes (a folder of images, IDX, CIFAR, ``digits``, ``fashion-mnist``, or a prepared
    set, which is checked and returned). An intact copy made from the same files with the same settings is reused;
    otherwise the images are decoded by ``workers`` processes (default: one per core; 1 decodes here) into the
    first writable of :func:`prepared_locations`, resuming a killed preparation of the same files. ``say`` gets one
    line saying where the set is and how big (None: silent); ``progress`` shows a bar with images/s and the time
    left. Unreadable images stop it with their names unless ``skip_bad``. Raises UserError/ParameterError."""
    _check_request(spec, image_size, "train")
    if workers is not None:
        check_at_least("workers", workers, 1)
    say = say or (lambda _line: None)
    kind = _source_kind(spec)
    if kind == "prepared":
        open_prepared(spec, image_size=image_size)
        return Path(spec).expanduser()
    source = _describe_source(spec, kind)
    settings = _settings(source, image_size)
    places = _candidates(source.path, source.label, image_size, prepared_dir)
    stale: dict[Path, str] = {}
    for folder in places:
        try:
            m = _usable(folder, source, settings)
        except _Unusable as e:
            stale[folder] = str(e)
            continue
        if m is not None:
            _check_skipped(m, skip_bad, str(source.path or spec))
            say(f"data: {m['name']}, prepared in {folder} ({_human(_set_bytes(folder, m))})")
            return folder
    for folder in places:
        try:
            new = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / ".lock", "a+b")  # closed by the with below
        except OSError:
            continue  # not writable here: the next place
        try:
            with lock, _locked(lock, folder, say):
                return _prepare_locked(folder, source, settings, skip_bad, workers, progress, say, stale.get(folder))
        except BaseException:
            if new:  # a failed first attempt leaves no empty folders behind (a killed one leaves its journal)
                _remove_if_empty(folder)
            raise
    raise ParameterError(f"cannot write a prepared copy of {spec} in {' or '.join(map(str, places))}: pass "
                         "{prepared_dir} DIR on a writable disk")


def _prepare_locked(folder: Path, source: _Source, settings: dict[str, Any], skip_bad: bool, workers: int | None,
                    progress: bool, say: Callable[[str], None], stale: str | None) -> Path:
    """Prepare into ``folder`` (its lock held), unless another process finished it while this one waited."""
    try:
        m = _usable(folder, source, settings)
    except _Unusable as e:
        m, stale = None, str(e)
    if m is None:
        foreign = [p.name for p in folder.iterdir() if not _ours(p.name)]
        if foreign:
            raise ParameterError(f"{folder} holds files that are not a prepared set ({_list_names(foreign)}): "
                                 "move them, or pass {prepared_dir} DIR to keep the prepared copy elsewhere")
        if stale:
            say(f"the prepared copy in {folder} is out of date ({stale}): preparing it again")
        t0 = time.monotonic()
        try:
            if source.kind == "images":
                m = _build_images(folder, source, settings, skip_bad, workers, progress)
            else:
                m = _build_memory(folder, source, settings)
        except OSError as e:
            raise ParameterError(f"cannot write the prepared copy in {folder}: {e.strerror or e}; free space there or "
                                 "pass {prepared_dir} DIR on another disk") from None
        skipped = f"; skipped {len(m['skipped'])} unreadable file(s)" if m["skipped"] else ""
        say(f"prepared {m['name']} in {folder} ({_human(_set_bytes(folder, m))}, "
            f"{time.monotonic() - t0:.1f} s{skipped})")
        return folder
    _check_skipped(m, skip_bad, str(source.path or source.spec))
    say(f"data: {m['name']}, prepared in {folder} ({_human(_set_bytes(folder, m))})")
    return folder


def _set_bytes(folder: Path, m: dict[str, Any]) -> int:
    return m["pixels"]["bytes"] + (m["labels"]["bytes"] if m["labels"] else 0)


def _ours(name: str) -> bool:
    """Whether a file name in a prepared-set folder is one this module writes."""
    return (name in (PREPARED_MANIFEST, ".lock") or name.startswith((".tmp-", "pixels-", "labels-", "journal-")))


@contextlib.contextmanager
def _locked(lock: Any, folder: Path, say: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock file ``lock`` (open) exclusively: one preparation of a folder at a time. Where fcntl does not
    exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"waiting for another process that is preparing {folder}")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds only its lock file, and its parent ``.ddpm`` when that is left empty."""
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [".lock"]:
            (folder / ".lock").unlink()
            folder.rmdir()
            if folder.parent.name == ".ddpm":
                folder.parent.rmdir()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system can fsync a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """``array`` saved to ``path`` (temporary name, fsync, rename); its file entry for the manifest."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _, _, _, offset = _npy_header(path)
    return {"file": path.name, "bytes": path.stat().st_size, "offset": offset, "crc32": zlib.crc32(path.read_bytes())}


def _finish(folder: Path, m: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """Write the manifest (the set's 'finished' mark, last, atomically), then remove this module's other files:
    an older set's, leftovers of killed preparations."""
    tmp = folder / f".tmp-{os.getpid()}-{PREPARED_MANIFEST}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(m, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / PREPARED_MANIFEST)
    _fsync_dir(folder)
    for p in folder.iterdir():
        if _ours(p.name) and p.name not in keep | {PREPARED_MANIFEST, ".lock"}:
            with contextlib.suppress(OSError):
                p.unlink()  # a process still mapping an old file keeps reading it until it closes
    return m


def _manifest(source: _Source, settings: dict[str, Any], shape: tuple[int, int, int, int], levels: int,
              pixels: dict[str, Any], labels: dict[str, Any] | None, names: list[str] | None,
              skipped: list[dict[str, str]]) -> dict[str, Any]:
    from . import __version__  # here: the package imports this module before it sets its version

    n, c, s, _ = shape
    title = source.label if source.kind == "images" or source.path is None else source.path.name
    return {
        "format": FORMAT, "version": VERSION,
        "name": describe_shape(title, shape, None if names is None else len(names)),
        "source": {"spec": source.spec, "path": str(source.path) if source.path else None, "kind": source.kind,
                   "files": source.files, "fingerprint": source.fingerprint},
        "image_size": settings["image_size"], "resize": settings["resize"],
        "count": n, "channels": c, "size": s, "levels": levels,
        "pixels": pixels, "labels": labels, "class_names": names, "skipped": skipped,
        "made_with": {"ddpm": __version__, "pillow": Image.__version__, "numpy": np.__version__},
    }


def _build_memory(folder: Path, source: _Source, settings: dict[str, Any]) -> dict[str, Any]:
    """IDX, CIFAR and the built-in sets: read by load_dataset, stored as their uint8 codes (resized: rounded)."""
    ds = load_dataset(source.spec, settings["image_size"])
    codes, levels = (ds.pixels.numpy(), ds.levels) if ds.pixels.dtype == torch.uint8 else (ds.as_uint8(), 255)
    ident = _ident(source, settings)
    pixels = _write_npy(folder / f"pixels-{ident}.npy", np.ascontiguousarray(codes))
    flat = np.ascontiguousarray(codes).reshape(len(codes), -1)  # (N, C*S*S)
    pixels.update(block_rows=BLOCK_ROWS, crc32=[zlib.crc32(flat[i:i + BLOCK_ROWS].data)
                                                for i in range(0, len(flat), BLOCK_ROWS)])
    labels = None if ds.labels is None else _write_npy(folder / f"labels-{ident}.npy", ds.labels.numpy())
    m = _manifest(source, settings, tuple(codes.shape), levels, pixels, labels, ds.class_names, [])
    m["name"] = ds.name
    return _finish(folder, m, {pixels["file"]} | ({labels["file"]} if labels else set()))


# --- folders of images: blocks of rows decoded by a pool of processes, journalled so a killed run resumes


def _eight_bit(arr: np.ndarray) -> np.ndarray:
    """Decoded pixels as uint8: 8-bit ones as they are; 16-bit ones (float32 0..255) rounded exactly as
    ImageDataset.as_uint8 rounds what load_dataset holds for them (x = p / 127.5 - 1, then round((x + 1) * 127.5))."""
    if arr.dtype == np.uint8:
        return arr
    x = arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.clip(np.rint((x + np.float32(1.0)) * np.float32(127.5)), 0, 255).astype(np.uint8)


def _decode_block(task: tuple[str, int, int, int, int | None, list[str]]) -> dict[str, Any]:
    """Decode one block of images and write its rows into the partial pixel file (a pool worker's job).

    ``task`` = (partial file, data offset, first row, S, image_size or None for native, file names). Returns the
    block's journal record: its rows' kinds ("1" gray, "0" colour, "x" unreadable), the unreadable files' reasons,
    the sizes that differ from S (native size only), and the CRC-32 of the rows as written."""
    partial, offset, start, size, resize, names = task
    rows = np.zeros((len(names), 3, size, size), np.uint8)  # (B, 3, S, S); gray rows are copied to 3 channels
    kinds, bad, sizes = [], [], []
    for i, name in enumerate(names):
        try:
            arr = decode_fitted(Path(name), resize) if resize is not None else decode_image(Path(name))
        except Exception as e:  # any decoder failure means "this file is not a readable image"
            bad.append([i, f"{type(e).__name__}: {e}"[:300]])
            kinds.append("x")
            continue
        if arr.shape[:2] != (size, size):
            sizes.append([i, int(arr.shape[1]), int(arr.shape[0])])
            kinds.append("x")
            continue
        codes = _eight_bit(arr)
        rows[i] = codes[None] if codes.ndim == 2 else codes.transpose(2, 0, 1)
        kinds.append("1" if codes.ndim == 2 else "0")
    with open(partial, "r+b") as f:
        f.seek(offset + start * rows[0].nbytes)
        f.write(rows.data)
    return {"start": start, "n": len(names), "kinds": "".join(kinds), "bad": bad, "sizes": sizes,
            "crc32": zlib.crc32(rows.data)}


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them and keeps the journal consistent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _decoded_blocks(tasks: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    """The records of ``tasks`` as they finish: in this process when one worker (or one task) is asked for, else
    in a pool of ``workers`` processes (forked where that exists: no start-up cost), stopped when abandoned."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_decode_block, tasks)
        return
    method = "fork" if sys.platform.startswith("linux") else None
    pool = multiprocessing.get_context(method).Pool(min(workers, len(tasks)), initializer=_ignore_sigint)
    try:
        yield from pool.imap_unordered(_decode_block, tasks)
    finally:
        pool.terminate()
        pool.join()


class _Journal:
    """The blocks finished so far, appended to ``journal-<id>.jsonl`` once their rows are durable: the pixel file is
    fsynced first, at most every SYNC_EVERY_S seconds, then the records written since are appended and fsynced."""

    def __init__(self, path: Path, partial: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # closed by close()
        self.pixels = os.open(partial, os.O_RDWR)
        self.pending: list[str] = []
        self.last = time.monotonic()

    def add(self, record: dict[str, Any]) -> None:
        self.pending.append(json.dumps(record))
        if time.monotonic() - self.last >= SYNC_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            os.fsync(self.pixels)
            self.file.write("".join(line + "\n" for line in self.pending))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.pending.clear()
        self.last = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.file.close()
            os.close(self.pixels)


def _resume(journal: Path, partial: Path, head: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The blocks a killed preparation with the same id and shape recorded as done ({first row: record}); {} when
    there is nothing to resume from."""
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
        if not lines or json.loads(lines[0]) != head:
            return {}
        shape, _, _, offset = _npy_header(partial)
        if shape != tuple(head["shape"]):
            return {}
        if partial.stat().st_size != offset + int(np.prod(shape)):
            return {}
    except (OSError, ValueError):
        return {}
    n, done = head["shape"][0], {}
    for line in lines[1:]:
        try:
            r = json.loads(line)
            start = r["start"]
            if start % BLOCK_ROWS == 0 and r["n"] == min(BLOCK_ROWS, n - start) and len(r["kinds"]) == r["n"]:
                done[start] = r
        except (ValueError, KeyError, TypeError):
            break  # a torn last line: what came before it stands
    return done


def _native_size(source: _Source) -> int:
    """S of a folder used at its own size: the first readable image's, which must be square."""
    for path, _ in source.entries:
        try:
            arr = decode_image(Path(path))
        except Exception:  # unreadable: reported with the others when the blocks are decoded
            continue
        h, w = arr.shape[:2]
        if h != w:
            raise ParameterError(f"images in {source.path} are {w}x{h}, not square; pass {{image_size}} N to resize "
                                 "and center-crop them to NxN")
        return h
    raise UserError(f"none of the {len(source.entries)} image files in {source.path} could be read; check the files")


def _build_images(folder: Path, source: _Source, settings: dict[str, Any], skip_bad: bool, workers: int | None,
                  progress: bool) -> dict[str, Any]:
    """Decode a folder of images into ``folder``: blocks of BLOCK_ROWS rows in parallel into a partial file, then
    (if files were skipped, or every image is gray) a pass that writes the final layout, then the manifest."""
    n, image_size = len(source.entries), settings["image_size"]
    size = image_size if image_size is not None else _native_size(source)
    ident = _ident(source, settings)
    partial, journal = folder / f"pixels-{ident}.npy.partial", folder / f"journal-{ident}.jsonl"
    shape = (n, 3, size, size)
    head = {"id": ident, "shape": list(shape)}
    done = _resume(journal, partial, head)
    if not done:
        for p in (partial, journal):
            p.unlink(missing_ok=True)
        mm = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)  # a sparse file
        del mm
        with open(journal, "w", encoding="utf-8") as f:
            f.write(json.dumps(head) + "\n")
    offset = _npy_header(partial)[3]
    files = [p for p, _ in source.entries]
    tasks = [(str(partial), offset, start, size, image_size, files[start:start + BLOCK_ROWS])
             for start in range(0, n, BLOCK_ROWS) if start not in done]
    bar = tqdm(total=n, initial=sum(r["n"] for r in done.values()), desc=f"preparing {source.label}", unit="img",
               dynamic_ncols=True, disable=not progress, smoothing=0.05)
    log = _Journal(journal, partial)
    try:
        for record in _decoded_blocks(tasks, workers or default_workers()):
            done[record["start"]] = record
            log.add(record)
            bar.update(record["n"])
            _check_sizes([record], size, source.path)
    finally:
        bar.close()
        log.close()
    return _finish_images(folder, source, settings, skip_bad, ident, partial, journal, [done[s] for s in sorted(done)])


def _check_sizes(records: list[dict[str, Any]], size: int, folder: Path | None) -> None:
    """At its own size a folder's images must share one (S, S): a ParameterError naming some of the sizes found."""
    found = {(w, h) for r in records for _, w, h in r["sizes"]}
    if found:
        found.add((size, size))
        examples = ", ".join(f"{w}x{h}" for w, h in sorted(found)[:3])
        raise ParameterError(f"images in {folder} have different sizes ({examples}{', ...' if len(found) > 3 else ''}"
                             "); pass {image_size} N to resize and center-crop them to NxN")


def _finish_images(folder: Path, source: _Source, settings: dict[str, Any], skip_bad: bool, ident: str,
                   partial: Path, journal: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """All blocks decoded: refuse unreadable files unless skip_bad, then the final pixel file (the partial one
    renamed, or rewritten without the skipped rows / with one channel), the labels and the manifest."""
    _check_sizes(records, _npy_header(partial)[0][-1], source.path)
    kinds = "".join(r["kinds"] for r in records)
    bad = [(r["start"] + i, reason) for r in records for i, reason in r["bad"]]
    names = [Path(source.entries[i][0]).relative_to(source.path).as_posix() for i, _ in bad]
    if bad and not skip_bad:
        raise ParameterError(f"{len(bad)} file(s) in {source.path} could not be read as images: {_list_names(names)}; "
                             "fix or remove them, or pass {skip_bad} to skip them")
    keep = np.array([k != "x" for k in kinds])
    if not keep.any():
        raise UserError(f"none of the {len(kinds)} image files in {source.path} could be read; check the files")
    channels = 1 if "0" not in kinds else 3
    size = _npy_header(partial)[0][-1]
    final = folder / f"pixels-{ident}.npy"
    if channels == 3 and keep.all():
        os.replace(partial, final)  # the journal's last flush fsynced it
        crcs = [r["crc32"] for r in records]
    else:
        crcs = _rewrite(partial, final, np.flatnonzero(keep), channels)
        partial.unlink()
    _fsync_dir(folder)
    pixels = {"file": final.name, "bytes": final.stat().st_size, "offset": _npy_header(final)[3],
              "block_rows": BLOCK_ROWS, "crc32": crcs}
    labels = None
    if source.class_names is not None:
        values = np.array([source.entries[i][1] for i in np.flatnonzero(keep)], dtype=np.int64)
        labels = _write_npy(folder / f"labels-{ident}.npy", values)
    skipped = [{"file": name, "reason": reason} for name, (_, reason) in zip(names, bad, strict=True)]
    m = _manifest(source, settings, (int(keep.sum()), channels, size, size), 255, pixels, labels,
                  source.class_names, skipped)
    return _finish(folder, m, {final.name} | ({labels["file"]} if labels else set()))


def _rewrite(partial: Path, final: Path, rows: np.ndarray, channels: int) -> list[int]:
    """Copy ``rows`` of the partial file (their first ``channels`` channels) into a new .npy ``final`` (temporary
    name, fsync, rename), a block at a time; returns the CRC-32 of each block of BLOCK_ROWS rows as written."""
    src = np.load(partial, mmap_mode="r")  # (N, 3, S, S)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), channels, *src.shape[2:]))
    crcs = []
    for b in range(0, len(rows), BLOCK_ROWS):
        block = np.ascontiguousarray(src[rows[b:b + BLOCK_ROWS], :channels])
        dst[b:b + len(block)] = block
        crcs.append(zlib.crc32(block.data))
    dst.flush()
    del dst, src
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return crcs


# --------------------------------------------------------------------------------------------------
# what training reads


def training_data(spec: str, image_size: int | None, skip_bad: bool, prepared_dir: str | Path | None, px: Dist,
                  progress: bool = True) -> ImageDataset:
    """The data a training run reads, on every rank of ``px``.

    A folder of images (or a prepared set) is prepared if needed by rank 0 alone, the others waiting, then every
    rank memory-maps the same file: one copy in the page cache however many ranks run, and a set larger than memory
    trains. Any other source (IDX, CIFAR, the built-in sets) is loaded in memory by each rank, as
    :func:`ddpm.data.load_dataset` reads it. Rank 0 says in one line where the prepared set is and how big."""
    _check_request(spec, image_size, "train")
    kind = _source_kind(spec)
    if kind == "memory":
        return load_dataset(spec, image_size, skip_bad=skip_bad)

    def prepare() -> Path:
        return prepare_dataset(spec, image_size, skip_bad=skip_bad, prepared_dir=prepared_dir,
                               progress=progress and px.main, say=print if px.main else None)

    folder = prepare() if px.world == 1 else _from_main(px, prepare)
    if not (folder / PREPARED_MANIFEST).is_file():  # another machine's rank 0 made it, on a disk this one lacks
        raise ParameterError(f"rank {px.rank} cannot see the prepared set {folder} that rank 0 made: keep it on a "
                             "file system every machine sees ({prepared_dir} DIR), or run `ddpm prepare` with the same "
                             "flags on each machine first")
    return open_prepared(folder, image_size=image_size, check_source=False)


def _from_main(px: Dist, make: Callable[[], Path]) -> Path:
    """``make()`` on rank 0 while the other ranks wait, then its result on every rank; rank 0's UserError is raised
    on every rank. The wait uses a gloo group of its own with a long timeout: a first preparation may take longer
    than the process group's."""
    group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    error: UserError | None = None
    payload = b""
    if px.main:
        try:
            payload = b"P" + os.fsencode(make())
        except ParameterError as e:
            payload, error = b"E" + e.template.encode(), e
        except UserError as e:
            payload, error = b"U" + str(e).encode(), e
    try:
        length = torch.tensor([len(payload)], dtype=torch.int64)
        dist.broadcast(length, 0, group=group)
        buf = torch.tensor(list(payload), dtype=torch.uint8) if px.main else torch.empty(int(length), dtype=torch.uint8)
        dist.broadcast(buf, 0, group=group)
    finally:
        dist.destroy_process_group(group)
    if error is not None:
        raise error
    payload = bytes(buf.tolist())
    kind, body = payload[:1], payload[1:]
    if kind == b"E":
        raise ParameterError(body.decode())
    if kind == b"U":
        raise UserError(body.decode())
    return Path(os.fsdecode(body))
