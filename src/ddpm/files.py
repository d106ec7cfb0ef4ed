"""File plumbing, in one place: atomic writes, directory fsync, hashes, safetensors files and the cache folder.

Every file ``ddpm`` writes goes through :func:`atomic_write`: the content is written to a hidden temporary name
beside the target (``.NAME.tmp-PID``), flushed to disk, and renamed onto the target, so a process killed at any
instant leaves either the old file or the new one under the real name, never half of one. A leftover temporary
file is recognised by :func:`is_partial_write` and removed by :func:`remove_partial_writes`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from .errors import UserError

PathLike = str | os.PathLike[str]
# Our temporary names (.NAME.tmp-PID), and those safetensors' own save_file leaves after a kill (.tmpXXXXXX).
_PARTIAL = re.compile(r"^\..+\.tmp-\d+$|^\.tmp")


class DiskFullError(UserError):
    """A write that the disk (or the user's quota) had no room for. The file it was writing is left as it was."""


# What torch.save's zip writer says when its file system is full, besides an OSError.
_TORCH_FULL = ("unexpected pos", "No space left", "file write failed")


def free_bytes(path: PathLike) -> int:
    """The bytes free for this user on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def disk_full(path: PathLike, needed: int | None = None,
              fix: str = "free some space, then run the same command again") -> DiskFullError:  # fmt: skip
    """The one-line error for a write to ``path`` that did not fit: where, how much is free and needed, the fix."""
    need = f", {human(needed)} needed" if needed else ""
    return DiskFullError(f"cannot write {path}: the disk is full ({human(free_bytes(path))} free there{need}): {fix}")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a write failing for want of space (ENOSPC, EDQUOT, or torch.save's message for it)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_FULL)


def human(size: float) -> str:
    """Bytes for a message: "512 MB", "23.4 GB" (powers of 1000, as disks and `free -h`'s GB are read)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def fsync_dir(directory: PathLike) -> None:
    """Make the entries of ``directory`` (renames, new files) durable, where the platform and file system can."""
    with contextlib.suppress(OSError):  # not every platform (Windows) or file system can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_name(path: Path) -> Path:
    """The hidden name beside ``path`` that :func:`atomic_write` writes first: ``.NAME.tmp-PID``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: PathLike, content: bytes | str | Callable[[Path], Any], *, durable: bool = True,
                 size_hint: int | None = None) -> Path:  # fmt: skip
    """Write ``content`` to ``path`` atomically and return the path.

    ``content`` is bytes, text (UTF-8), or a function that writes the file it is given (``write(tmp_path)``). It is
    written to :func:`temporary_name`, fsynced (``durable``), renamed onto ``path``, and the directory entry
    fsynced; on any failure the temporary file is removed and the error raised, with ``path`` untouched.
    ``durable=False`` skips the fsyncs, for files that are cheap to lose (pictures, logs). A write that the disk has
    no room for raises :class:`DiskFullError` (``size_hint``: the bytes the file needs, for its message).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if is_disk_full(e):
            with contextlib.suppress(OSError):
                tmp.unlink()
            size = size_hint if size_hint is not None else (None if callable(content) else len(content))
            raise disk_full(path, size) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
    return path


def is_partial_write(name: str) -> bool:
    """Whether a file name is a temporary file that a killed writer left behind."""
    return bool(_PARTIAL.match(name))


def remove_partial_writes(directory: PathLike) -> list[str]:
    """Delete the temporary files that killed writers left in ``directory``; returns their names."""
    d = Path(directory)
    removed = []
    for p in d.iterdir() if d.is_dir() else []:
        if is_partial_write(p.name) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes (identifies, e.g., the exact checkpoint an image came from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_safetensors(path: PathLike, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Atomically write ``tensors`` (name -> tensor of any shape) and string ``metadata`` to a safetensors file.

    The bytes are built in memory and written through :func:`atomic_write` (``safetensors.torch.save_file`` writes
    through a temporary file of its own that a SIGKILL leaves behind).
    """
    data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, data)


def cache_dir() -> Path:
    """Where ddpm caches what it computes once (reference features, FeatureNets, prepared sets of read-only
    folders): ``$DDPM_CACHE``, else ``$XDG_CACHE_HOME/ddpm``, else ``~/.cache/ddpm``."""
    if os.environ.get("DDPM_CACHE"):
        return Path(os.environ["DDPM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ddpm"


def append_line(path: PathLike, line: str) -> None:
    """Append one line of text to ``path`` (a log), with a :class:`DiskFullError` where the disk has no room."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(path) from None
        raise


class Busy(UserError):
    """Another process holds the lock of something this one would write."""


@contextlib.contextmanager
def exclusive_lock(path: PathLike, what: str,
                   on_wait: Callable[[dict[str, Any]], None] | None = None) -> Iterator[None]:  # fmt: skip
    """Hold ``path`` (a lock file, created if needed) exclusively with ``fcntl.flock`` while the block runs.

    The kernel drops the lock when its holder exits, however it exits (``kill -9`` included), so a lock is never
    stale. The file records who holds it (process, host, start). Held by another process: with ``on_wait``, call it
    with what the holder recorded and wait; else raise :class:`Busy` naming that process and ``what`` it locks.
    Where fcntl does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl  # POSIX only: the module is absent on Windows, where nothing is locked
    except ImportError:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        holder = _try_lock(f, fcntl)
        if holder is not None and on_wait is None:
            who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
            raise Busy(f"{what} is in use by another ddpm ({who}): wait for it to finish, or stop it first")
        if holder is not None:
            assert on_wait is not None
            on_wait(holder)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%H:%M:%S")}))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _try_lock(f: IO[str], fcntl: Any) -> dict[str, Any] | None:
    """Take the lock of open file ``f`` without waiting: None when taken, else what its holder recorded."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        f.seek(0)
        try:
            return dict(json.loads(f.read() or "{}"))
        except ValueError:
            return {}
