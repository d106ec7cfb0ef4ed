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
    atomic_write,
    cache_dir,
    file_sha256,
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

    with pytest.raises(OSError):
        atomic_write(target, fails_halfway)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


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
