"""Tests for ddpm.files: atomic writes leave the old file or the new one, never half of one or a stray temporary file;
hashes; the cache folder."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ddpm.files import (
    Busy,
    DiskFullError,
    append_line,
    atomic_write,
    cache_dir,
    exclusive_lock,
    file_sha256,
    human,
    is_disk_full,
    is_partial_write,
    remove_partial_writes,
    save_safetensors,
    temporary_name,
)


def test_atomic_write_takes_bytes_text_or_a_writer_and_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    assert atomic_write(target, b"one") == target and target.read_bytes() == b"one"  # the folder is created
    atomic_write(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"three"), durable=False)
    assert target.read_bytes() == b"three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"old")

    def fails_halfway(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(
        DiskFullError,
        match=rf"^cannot write {re.escape(str(target))}: the disk is full \(.* free there, "
        r"1.0 kB needed\): free some space",
    ):
        atomic_write(target, fails_halfway, size_hint=1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]

    def fails_otherwise(tmp: Path) -> None:
        tmp.write_bytes(b"x")
        raise OSError(13, "Permission denied")

    with pytest.raises(PermissionError):  # not a full disk: raised as it is
        atomic_write(target, fails_otherwise)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_torch_saves_full_disk_message_is_a_full_disk(tmp_path):
    assert is_disk_full(OSError(28, "No space left on device")) and is_disk_full(OSError(122, "Disk quota exceeded"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    assert not is_disk_full(RuntimeError("shape mismatch")) and not is_disk_full(OSError(2, "No such file"))
    assert human(512) == "512 bytes" and human(1.5e6) == "1.5 MB" and human(23.4e9) == "23.4 GB"


def test_append_line_names_a_full_disk(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    append_line(log, "a")
    real_open = open

    def full_open(path, mode="r", *a, **k):
        if str(path) == str(log) and "a" in mode:
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(DiskFullError, match="metrics.jsonl: the disk is full"):
        append_line(log, "b")
    monkeypatch.undo()
    assert log.read_text() == "a\n"


def test_a_second_holder_is_refused_with_the_first_ones_process(tmp_path):
    lock = tmp_path / ".lock"
    code = (f"import time; from ddpm.files import exclusive_lock\n"
            f"with exclusive_lock({str(lock)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=rf"^run directory r is in use by another ddpm \(process {holder.pid} on "):
            with exclusive_lock(lock, "run directory r"):
                pass
        waited = []
        holder.kill()  # kill -9: the kernel drops the lock
        holder.wait()
        with exclusive_lock(lock, "run directory r", on_wait=waited.append):
            pass
        assert waited == []  # free again: taken at once
    finally:
        holder.kill()


def test_partial_write_names():
    assert temporary_name(Path("/x/step-1.safetensors")).name.startswith(".step-1.safetensors.tmp-")
    assert is_partial_write(temporary_name(Path("a.png")).name)
    assert is_partial_write(".tmpKrYQRp")  # safetensors' own save_file temporary
    assert not is_partial_write("step-000000010.safetensors") and not is_partial_write(".lock")
    assert not is_partial_write(".hidden.tmp-notapid")


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    data = bytes(range(256)) * 5000  # more than one read chunk
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_cache_dir_follows_ddpm_cache_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DDPM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "ddpm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "ddpm"


_KILLED_MID_WRITE = """
import os, pathlib, signal, sys, torch
from ddpm.files import save_safetensors

def half_then_die(self, data):
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

pathlib.Path.write_bytes = half_then_die
save_safetensors(sys.argv[1], {"w": torch.full((64, 64), 2.0)}, {"k": "new"})
"""


@pytest.mark.slow
def test_a_write_killed_midway_keeps_the_old_file_and_its_leftover_is_removable(tmp_path):
    target = tmp_path / "weights.safetensors"
    save_safetensors(target, {"w": torch.ones(64, 64)}, {"k": "old"})
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(target)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert len(leftovers) == 1 and re.fullmatch(r"\.weights\.safetensors\.tmp-\d+", leftovers[0]), leftovers
    assert float(load_file(str(target))["w"].sum()) == 64 * 64  # the old weights, intact
    (tmp_path / ".tmpKrYQRp").write_bytes(b"partial")  # what safetensors' own save_file leaves when killed
    remove_partial_writes(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.safetensors"]
