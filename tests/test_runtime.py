"""Device choice, bf16 detection and the single-process case of the process-group helpers."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest
import torch

import ddpm.runtime as rt
from ddpm.errors import ParameterError, UserError


def test_bf16_instructions_are_read_from_the_cpu(monkeypatch):
    """Where the CPU has no bf16 instructions, PyTorch emulates bf16 (slowly) and ddpm train does not time it."""
    for caps, native in (
        ({"avx512_bf16": True, "amx_bf16": False}, True),
        ({"amx_bf16": True}, True),
        ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False),
        ({}, False),
    ):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        monkeypatch.setattr(rt.platform, "system", lambda: "Linux")
        monkeypatch.setattr(rt.platform, "machine", lambda: "x86_64")
        assert rt.cpu_bf16_native() is native
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: 1 / 0)  # an old or odd PyTorch: assume none
    assert rt.cpu_bf16_native() is False


def test_pick_device_names_and_refusals(monkeypatch):
    assert rt.pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert rt.pick_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        rt.pick_device("gpu0")
    with pytest.raises(ParameterError) as e:
        rt.pick_device("cuda")
    assert str(e.value).startswith("device cuda was asked for") and e.value.render(lambda n: "--" + n).endswith(
        "use --device cpu"
    )


def test_a_lone_process_is_rank_0_of_1_and_its_votes_are_its_own(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    px = rt.setup_processes("cpu")
    assert (px.rank, px.world, px.main, px.device) == (0, 1, True, torch.device("cpu"))
    assert px.any(True) is True and px.any(False) is False
    assert px.max_int(7) == 7 and px.broadcast([3, 1]) == [3, 1] and px.local_world == 1
    px.barrier()  # a no-op alone
    assert rt.cpu_model() and isinstance(rt.cpu_model(), str)


# Allocates and frees a 16 MiB block in a fresh process after hold_freed_memory(), and reports from glibc's own
# accounting (mallinfo2) whether the block was mapped apart from the heap, and how much freed memory the heap kept.
_MALLOC_PROBE = """
import ctypes, json
from ddpm.runtime import hold_freed_memory
held = hold_freed_memory()
libc = ctypes.CDLL(None)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
p = libc.malloc(16 << 20)
mapped = libc.mallinfo2().hblkhd
libc.free(p)
print(json.dumps({"held": held, "mapped": mapped, "kept": libc.mallinfo2().fordblks}))
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc") and hasattr(ctypes.CDLL(None), "mallinfo2")
    except (OSError, ValueError):
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only")
def test_held_memory_keeps_a_freed_block_that_glibc_would_unmap():
    """glibc alone maps a 16 MiB block apart from the heap and returns it on free (each forward pass of a large batch
    then faults its pages in again); after hold_freed_memory() it comes from the heap and stays there when freed."""

    def probe(**env: str) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _MALLOC_PROBE], env={**os.environ, **env}, check=True, capture_output=True, text=True
        ).stdout
        return json.loads(out)

    size = 16 << 20
    held, system = probe(), probe(DDPM_MALLOC="system")
    assert held["held"] is True and system["held"] is False
    assert system["mapped"] >= size and system["kept"] < size
    assert held["mapped"] < size and held["kept"] >= size


def test_held_memory_leaves_the_users_own_malloc_settings(monkeypatch):
    """DDPM_MALLOC=system, glibc's MALLOC_*_ variables and GLIBC_TUNABLES' malloc entries each leave glibc as it is."""
    calls = []
    monkeypatch.setattr(rt.ctypes, "CDLL", lambda *a: calls.append(a))
    for name, value in (
        ("DDPM_MALLOC", "system"),
        ("MALLOC_TRIM_THRESHOLD_", "0"),
        ("MALLOC_MMAP_THRESHOLD_", "1"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
    ):
        with monkeypatch.context() as m:
            for other in ("DDPM_MALLOC", "GLIBC_TUNABLES", *rt.MALLOC_ENV):
                m.delenv(other, raising=False)
            m.setenv(name, value)
            assert rt.hold_freed_memory() is False
    assert calls == []


def test_every_ddpm_command_holds_freed_memory(monkeypatch, tmp_path, capsys):
    import ddpm.cli

    calls = []
    monkeypatch.setattr(ddpm.cli, "hold_freed_memory", lambda: calls.append(1) or True)
    assert ddpm.cli.main(["sample", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert calls == [1] and "error:" in capsys.readouterr().err
