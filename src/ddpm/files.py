"""File plumbing, in one place: atomic writes, directory fsync, hashes, safetensors files and the cache folder.

Every file ``ddpm`` writes goes through :func:`atomic_write`: the content is written to a hidden temporary name
beside the target (``.NAME.tmp-PID``), flushed to disk, and renamed onto the target, so a process killed at any
instant leaves either the old file or the new one under the real name, never half of one. A leftover temporary
file is recognised by :func:`is_partial_write` and removed by :func:`remove_partial_writes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save as safetensors_bytes
from torch import Tensor

PathLike = str | os.PathLike[str]
# Our temporary names (.NAME.tmp-PID), and those safetensors' own save_file leaves after a kill (.tmpXXXXXX).
_PARTIAL = re.compile(r"^\..+\.tmp-\d+$|^\.tmp")


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


def atomic_write(path: PathLike, content: bytes | str | Callable[[Path], None], *, durable: bool = True) -> Path:
    """Write ``content`` to ``path`` atomically and return the path.

    ``content`` is bytes, text (UTF-8), or a function that writes the file it is given (``write(tmp_path)``). It is
    written to :func:`temporary_name`, fsynced (``durable``), renamed onto ``path``, and the directory entry
    fsynced; on any failure the temporary file is removed and the error raised, with ``path`` untouched.
    ``durable=False`` skips the fsyncs, for files that are cheap to lose (pictures, logs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
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
