"""Making a prepared data set (:mod:`ddpm.data.prepared`), and the data a training run reads.

``ddpm prepare`` makes one, and ``ddpm train --data FOLDER`` makes one the first time it trains on a folder of
images, and again whenever the folder's files, the image size or the resize method have changed. The pixel file's
CRC-32s are one per block of :data:`BLOCK_ROWS` rows. The manifest is written last (a temporary name, fsync,
rename). A preparation in progress keeps ``pixels-<id>.npy.partial`` and ``journal-<id>.jsonl``, the blocks written
so far: killed and run again on the same source, it decodes only the rest.

Images are decoded by :func:`ddpm.data.folders.decode_fitted` in a pool of processes (one per core), each writing its
blocks of rows straight into the file. 8-bit images are stored exactly as ``load_dataset`` decodes them; 16-bit
ones are rounded to the nearest 8-bit level, as :meth:`ddpm.data.dataset.ImageDataset.as_uint8` rounds them. IDX files,
CIFAR and the built-in sets are read by ``load_dataset`` and stored as their uint8 codes (rounded to 8 bits when
resized); without a prepared set, training keeps reading those in memory as before.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from ..errors import ParameterError, UserError, check_at_least
from ..files import atomic_write, exclusive_lock, fsync_dir, human, is_partial_write
from ..runtime import Dist
from ..version import __version__
from .dataset import PREPARED_MANIFEST, ImageDataset, check_request, describe_shape, list_names
from .folders import RESIZE_METHOD, decode_fitted, decode_image
from .load import load_dataset
from .prepared import (
    FORMAT,
    VERSION,
    Source,
    Unusable,
    candidate_folders,
    describe_source,
    npy_header,
    open_prepared,
    prepared_id,
    source_kind,
    usable_manifest,
)

BLOCK_ROWS = 64  # images per decoding task, and rows per CRC-32 block of the pixel file
SYNC_EVERY_S = 1.0  # how often a preparation makes its written rows durable and records them in the journal
MEMORY_RESIZE = "load_dataset;8-bit-rounded"  # the resize method of sources read in memory (IDX, CIFAR, built-in)
WAIT_TIMEOUT = timedelta(days=7)  # how long other ranks wait for rank 0's preparation (the process group's is 30 min)


# --------------------------------------------------------------------------------------------------
# preparing


def _settings(source: Source, image_size: int | None) -> dict[str, Any]:
    """What the pixels depend on besides the source's files; another value means another preparation."""
    return {"image_size": image_size, "resize": RESIZE_METHOD if source.kind == "images" else MEMORY_RESIZE}


def _check_skipped(m: dict[str, Any], skip_bad: bool, where: str) -> None:
    """A set made with skip_bad holds fewer images than its source: reused without skip_bad it says so, as
    load_dataset would."""
    if m["skipped"] and not skip_bad:
        bad = [s["file"] for s in m["skipped"]]
        raise ParameterError(
            f"{len(bad)} file(s) in {where} could not be read as images: {list_names(bad)}; "
            "fix or remove them, or pass {skip_bad} to skip them"
        )


def prepare_dataset(
    data: str,
    image_size: int | None = None,
    *,
    skip_bad: bool = False,
    prepared_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    say: Callable[[str], None] | None = print,
) -> Path:
    """Make sure a finished, current prepared copy of ``data`` at ``image_size`` exists; returns its folder.

    ``data`` is what ``--data`` takes (a folder of images, IDX, CIFAR, ``digits``, ``fashion-mnist``, or a prepared
    set, which is checked and returned). An intact copy made from the same files with the same settings is reused;
    otherwise the images are decoded by ``workers`` processes (default: one per core; 1 decodes here) into the
    first writable of :func:`ddpm.data.prepared.prepared_locations`, resuming a killed preparation of the same files.
    ``say`` gets one line saying where the set is and how big (None: silent); ``progress`` shows a bar with images/s
    and the time left. Unreadable images stop it with their names unless ``skip_bad``. Raises
    UserError/ParameterError."""
    check_request(data, image_size, "train")
    if workers is not None:
        check_at_least("workers", workers, 1)
    say = say or (lambda _line: None)
    kind = source_kind(data)
    if kind == "prepared":
        open_prepared(data, image_size=image_size)
        return Path(data).expanduser()
    source = describe_source(data, kind)
    settings = _settings(source, image_size)
    places = candidate_folders(source.path, source.label, image_size, prepared_dir)
    found, stale = _usable(places, source, settings)
    if found is not None:
        folder, m = found
        _check_skipped(m, skip_bad, str(source.path or data))
        say(f"data: {m['name']}, prepared in {folder} ({human(_set_bytes(folder, m))})")
        return folder
    for folder in places:
        try:
            new = not folder.exists()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / ".lock").touch()
        except OSError:
            continue  # not writable here: the next place

        def waiting(_holder: dict[str, Any], folder: Path = folder) -> None:
            say(f"waiting for another process that is preparing {folder}")

        try:
            with exclusive_lock(folder / ".lock", f"the prepared folder {folder}", on_wait=waiting):
                return _prepare_locked(folder, source, settings, skip_bad, workers, progress, say, stale.get(folder))
        except BaseException:
            if new:  # a failed first attempt leaves no empty folders behind (a killed one leaves its journal)
                _remove_if_empty(folder)
            raise
    raise ParameterError(
        f"cannot write a prepared copy of {data} in {' or '.join(map(str, places))}: pass "
        "{prepared_dir} DIR on a writable disk"
    )


def _usable(places: list[Path], source: Source, settings: dict[str, Any],
            ) -> tuple[tuple[Path, dict[str, Any]] | None, dict[Path, str]]:  # fmt: skip
    """The first of ``places`` that holds a finished, current prepared set (with its manifest), and why each place
    looked at before it could not be used."""
    stale: dict[Path, str] = {}
    for folder in places:
        try:
            m = usable_manifest(folder, source, settings)
        except Unusable as e:
            stale[folder] = str(e)
            continue
        if m is not None:
            return (folder, m), stale
    return None, stale


def _prepare_locked(
    folder: Path,
    source: Source,
    settings: dict[str, Any],
    skip_bad: bool,
    workers: int | None,
    progress: bool,
    say: Callable[[str], None],
    stale: str | None,
) -> Path:
    """Prepare into ``folder`` (its lock held), unless another process finished it while this one waited."""
    try:
        m = usable_manifest(folder, source, settings)
    except Unusable as e:
        m, stale = None, str(e)
    if m is None:
        foreign = [p.name for p in folder.iterdir() if not _ours(p.name)]
        if foreign:
            raise ParameterError(
                f"{folder} holds files that are not a prepared set ({list_names(foreign)}): "
                "move them, or pass {prepared_dir} DIR to keep the prepared copy elsewhere"
            )
        if stale:
            say(f"the prepared copy in {folder} is out of date ({stale}): preparing it again")
        t0 = time.monotonic()
        try:
            if source.kind == "images":
                m = _build_images(folder, source, settings, skip_bad, workers, progress)
            else:
                m = _build_memory(folder, source, settings)
        except OSError as e:
            raise ParameterError(
                f"cannot write the prepared copy in {folder}: {e.strerror or e}; free space there or "
                "pass {prepared_dir} DIR on another disk"
            ) from None
        skipped = f"; skipped {len(m['skipped'])} unreadable file(s)" if m["skipped"] else ""
        say(
            f"prepared {m['name']} in {folder} ({human(_set_bytes(folder, m))}, {time.monotonic() - t0:.1f} s{skipped})"
        )
        return folder
    _check_skipped(m, skip_bad, str(source.path or source.spec))
    say(f"data: {m['name']}, prepared in {folder} ({human(_set_bytes(folder, m))})")
    return folder


def _set_bytes(folder: Path, m: dict[str, Any]) -> int:
    """The bytes of a prepared set's pixel and label files, from its manifest ``m``."""
    return m["pixels"]["bytes"] + (m["labels"]["bytes"] if m["labels"] else 0)


def _ours(name: str) -> bool:
    """Whether a file name in a prepared-set folder is one this module writes."""
    return (
        name in (PREPARED_MANIFEST, ".lock")
        or name.startswith(("pixels-", "labels-", "journal-"))
        or is_partial_write(name)
    )


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` when it holds only its lock file, and its parent ``.ddpm`` when that is left empty."""
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] == [".lock"]:
            (folder / ".lock").unlink()
            folder.rmdir()
            if folder.parent.name == ".ddpm":
                folder.parent.rmdir()


def _write_npy(path: Path, array: np.ndarray) -> dict[str, Any]:
    """``array`` saved to ``path`` (temporary name, fsync, rename); its file entry for the manifest."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)
    _, _, _, offset = npy_header(path)
    return {"file": path.name, "bytes": path.stat().st_size, "offset": offset, "crc32": zlib.crc32(path.read_bytes())}


def _finish(folder: Path, m: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """Write the manifest (the set's 'finished' mark, last, atomically), then remove this module's other files:
    an older set's, leftovers of killed preparations."""
    atomic_write(folder / PREPARED_MANIFEST, json.dumps(m, indent=1))
    for p in folder.iterdir():
        if _ours(p.name) and p.name not in keep | {PREPARED_MANIFEST, ".lock"}:
            with contextlib.suppress(OSError):
                p.unlink()  # a process still mapping an old file keeps reading it until it closes
    return m


def _manifest(
    source: Source,
    settings: dict[str, Any],
    shape: tuple[int, int, int, int],
    levels: int,
    pixels: dict[str, Any],
    labels: dict[str, Any] | None,
    names: list[str] | None,
    skipped: list[dict[str, str]],
) -> dict[str, Any]:
    n, c, s, _ = shape
    title = source.label if source.kind == "images" or source.path is None else source.path.name
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": describe_shape(title, shape, None if names is None else len(names)),
        "source": {
            "spec": source.spec,
            "path": str(source.path) if source.path else None,
            "kind": source.kind,
            "files": source.files,
            "fingerprint": source.fingerprint,
        },
        "image_size": settings["image_size"],
        "resize": settings["resize"],
        "count": n,
        "channels": c,
        "size": s,
        "levels": levels,
        "pixels": pixels,
        "labels": labels,
        "class_names": names,
        "skipped": skipped,
        "made_with": {"ddpm": __version__, "pillow": Image.__version__, "numpy": np.__version__},
    }


def _build_memory(folder: Path, source: Source, settings: dict[str, Any]) -> dict[str, Any]:
    """IDX, CIFAR and the built-in sets: read by load_dataset, stored as their uint8 codes (resized: rounded)."""
    ds = load_dataset(source.spec, settings["image_size"])
    codes, levels = (ds.pixels.numpy(), ds.levels) if ds.pixels.dtype == torch.uint8 else (ds.as_uint8(), 255)
    ident = prepared_id(source, settings)
    pixels = _write_npy(folder / f"pixels-{ident}.npy", np.ascontiguousarray(codes))
    flat = np.ascontiguousarray(codes).reshape(len(codes), -1)  # (N, C*S*S)
    pixels.update(
        block_rows=BLOCK_ROWS,
        crc32=[zlib.crc32(flat[i : i + BLOCK_ROWS].data) for i in range(0, len(flat), BLOCK_ROWS)],
    )
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
    return {
        "start": start,
        "n": len(names),
        "kinds": "".join(kinds),
        "bad": bad,
        "sizes": sizes,
        "crc32": zlib.crc32(rows.data),
    }


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
        shape, _, _, offset = npy_header(partial)
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


def _native_size(source: Source) -> int:
    """S of a folder used at its own size: the first readable image's, which must be square."""
    for path, _ in source.entries:
        try:
            arr = decode_image(Path(path))
        except Exception:  # unreadable: reported with the others when the blocks are decoded
            continue
        h, w = arr.shape[:2]
        if h != w:
            raise ParameterError(
                f"images in {source.path} are {w}x{h}, not square; pass {{image_size}} N to resize "
                "and center-crop them to NxN"
            )
        return h
    raise UserError(f"none of the {len(source.entries)} image files in {source.path} could be read; check the files")


def _build_images(
    folder: Path, source: Source, settings: dict[str, Any], skip_bad: bool, workers: int | None, progress: bool
) -> dict[str, Any]:
    """Decode a folder of images into ``folder``: blocks of BLOCK_ROWS rows in parallel into a partial file, then
    (if files were skipped, or every image is gray) a pass that writes the final layout, then the manifest."""
    n, image_size = len(source.entries), settings["image_size"]
    size = image_size if image_size is not None else _native_size(source)
    ident = prepared_id(source, settings)
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
    offset = npy_header(partial)[3]
    files = [p for p, _ in source.entries]
    tasks = [
        (str(partial), offset, start, size, image_size, files[start : start + BLOCK_ROWS])
        for start in range(0, n, BLOCK_ROWS)
        if start not in done
    ]
    bar = tqdm(
        total=n,
        initial=sum(r["n"] for r in done.values()),
        desc=f"preparing {source.label}",
        unit="img",
        dynamic_ncols=True,
        disable=not progress,
        smoothing=0.05,
    )
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
        raise ParameterError(
            f"images in {folder} have different sizes ({examples}{', ...' if len(found) > 3 else ''}"
            "); pass {image_size} N to resize and center-crop them to NxN"
        )


def _finish_images(
    folder: Path,
    source: Source,
    settings: dict[str, Any],
    skip_bad: bool,
    ident: str,
    partial: Path,
    journal: Path,
    records: list[dict[str, Any]],
) -> dict[str, Any]:
    """All blocks decoded: refuse unreadable files unless skip_bad, then the final pixel file (the partial one
    renamed, or rewritten without the skipped rows / with one channel), the labels and the manifest."""
    _check_sizes(records, npy_header(partial)[0][-1], source.path)
    kinds = "".join(r["kinds"] for r in records)
    bad = [(r["start"] + i, reason) for r in records for i, reason in r["bad"]]
    assert source.path is not None  # a folder of images
    names = [Path(source.entries[i][0]).relative_to(source.path).as_posix() for i, _ in bad]
    if bad and not skip_bad:
        raise ParameterError(
            f"{len(bad)} file(s) in {source.path} could not be read as images: {list_names(names)}; "
            "fix or remove them, or pass {skip_bad} to skip them"
        )
    keep = np.array([k != "x" for k in kinds])
    if not keep.any():
        raise UserError(f"none of the {len(kinds)} image files in {source.path} could be read; check the files")
    channels = 1 if "0" not in kinds else 3
    size = npy_header(partial)[0][-1]
    final = folder / f"pixels-{ident}.npy"
    if channels == 3 and keep.all():
        os.replace(partial, final)  # the journal's last flush fsynced it
        crcs = [r["crc32"] for r in records]
    else:
        crcs = _rewrite(partial, final, np.flatnonzero(keep), channels)
        partial.unlink()
    fsync_dir(folder)
    pixels = {
        "file": final.name,
        "bytes": final.stat().st_size,
        "offset": npy_header(final)[3],
        "block_rows": BLOCK_ROWS,
        "crc32": crcs,
    }
    labels = None
    if source.class_names is not None:
        values = np.array([source.entries[i][1] for i in np.flatnonzero(keep)], dtype=np.int64)
        labels = _write_npy(folder / f"labels-{ident}.npy", values)
    skipped = [{"file": name, "reason": reason} for name, (_, reason) in zip(names, bad, strict=True)]
    m = _manifest(
        source, settings, (int(keep.sum()), channels, size, size), 255, pixels, labels, source.class_names, skipped
    )
    return _finish(folder, m, {final.name} | ({labels["file"]} if labels else set()))


def _rewrite(partial: Path, final: Path, rows: np.ndarray, channels: int) -> list[int]:
    """Copy ``rows`` of the partial file (their first ``channels`` channels) into a new .npy ``final`` (temporary
    name, fsync, rename), a block at a time; returns the CRC-32 of each block of BLOCK_ROWS rows as written."""
    src = np.load(partial, mmap_mode="r")  # (N, 3, S, S)
    crcs: list[int] = []

    def write(tmp: Path) -> None:
        dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), channels, *src.shape[2:]))
        for b in range(0, len(rows), BLOCK_ROWS):
            block = np.ascontiguousarray(src[rows[b : b + BLOCK_ROWS], :channels])
            dst[b : b + len(block)] = block
            crcs.append(zlib.crc32(block.data))
        dst.flush()
        del dst

    atomic_write(final, write)
    return crcs


# --------------------------------------------------------------------------------------------------
# what training reads


def training_data(
    data: str, image_size: int | None, skip_bad: bool, prepared_dir: str | Path | None, px: Dist, progress: bool = True
) -> ImageDataset:
    """The data a training run reads, on every rank of ``px``.

    A folder of images (or a prepared set) is prepared if needed by rank 0 alone, the others waiting, then every
    rank memory-maps the same file: one copy in the page cache however many ranks run, and a set larger than memory
    trains. Any other source (IDX, CIFAR, the built-in sets) is loaded in memory by each rank, as
    :func:`ddpm.data.load.load_dataset` reads it. Rank 0 says in one line where the prepared set is and how big."""
    check_request(data, image_size, "train")
    kind = source_kind(data)
    if kind == "memory":
        return load_dataset(data, image_size, skip_bad=skip_bad)

    def prepare() -> Path:
        return prepare_dataset(
            data,
            image_size,
            skip_bad=skip_bad,
            prepared_dir=prepared_dir,
            progress=progress and px.main,
            say=print if px.main else None,
        )

    folder = prepare() if px.world == 1 else _from_main(px, prepare)
    if not (folder / PREPARED_MANIFEST).is_file():  # another machine's rank 0 made it, on a disk this one lacks
        raise ParameterError(
            f"rank {px.rank} cannot see the prepared set {folder} that rank 0 made: keep it on a "
            "file system every machine sees ({prepared_dir} DIR), or run `ddpm prepare` with the same "
            "flags on each machine first"
        )
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
