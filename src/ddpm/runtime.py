"""Where and how the work runs: the device, bf16 autocast by hardware, and this process's place in a torchrun job.

Training, sampling and evaluation import these; nothing here knows about diffusion.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ParameterError, UserError


def pick_device(device: str = "auto") -> torch.device:
    """The torch device named ``device``: cpu, cuda, cuda:N, mps, or 'auto' (cuda, then mps, then cpu)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}: use cpu, cuda, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError("{device} cuda was asked for but no CUDA GPU is available: use {device} cpu")
    return dev


def cpu_bf16_native() -> bool:
    """True when this CPU has bf16 arithmetic instructions (x86 AVX512-BF16 or AMX-BF16, Linux on Arm BF16).

    Elsewhere PyTorch emulates bf16 on the CPU, and autocast makes the network slower than float32, so
    anything unknown (macOS, Windows on Arm, an old PyTorch) answers False.
    """
    caps: dict[str, Any] = {}
    with contextlib.suppress(Exception):  # torch.cpu.get_capabilities() is recent: its absence means "no"
        caps = dict(torch.cpu.get_capabilities())
    if caps.get("avx512_bf16") or caps.get("amx_bf16"):
        return True
    if platform.system() == "Linux" and platform.machine() in ("aarch64", "arm64"):
        # Linux lists Armv8.6's BF16 instructions as the word "bf16" on the Features line of /proc/cpuinfo.
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            return any(line.lower().startswith("features") and "bf16" in line.split() for line in f)
    return False


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ("AMD EPYC", "Intel(R) Xeon(R) ..."), else the platform's."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


# mallopt's parameter numbers (glibc's malloc.h) and the values set: blocks up to 32 MiB (the largest threshold
# glibc accepts on 64-bit) come from the heap, and freed heap memory is kept however much of it there is.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
HELD_MALLOC = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def hold_freed_memory() -> bool:
    """Make glibc keep memory that tensors free for the next allocation, instead of returning it to the system.

    By default glibc maps each large block afresh and hands freed memory at the heap's top back, so every forward
    pass of a large batch on the CPU page-faults its activations in again. Holding it makes CPU sampling,
    training and Inception scoring faster at about the same peak memory (benchmarks/malloc.py; BENCHMARKS.md,
    "malloc.py"); the numbers computed are identical. Freed memory stays with the process until it
    exits. ``ddpm`` commands call this first; library users may call it themselves.

    Does nothing, and returns False, outside glibc (macOS, Windows, musl), when ``DDPM_MALLOC=system`` is set, or
    when the user tunes glibc's malloc through its own environment variables (``MALLOC_*_`` or ``GLIBC_TUNABLES``).
    Returns True when every setting was taken.
    """
    if os.environ.get("DDPM_MALLOC", "") == "system" or any(name in os.environ for name in MALLOC_ENV):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # no confstr name, no such symbol, no C library to open
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    taken = [mallopt(param, value) for param, value in HELD_MALLOC]  # each setting tried, whatever the others did
    return all(ok == 1 for ok in taken)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast(self, values: list[int]) -> list[int]:
        """Rank 0's ``values`` on every rank (so all ranks take rank 0's decisions)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    @property
    def local_world(self) -> int:
        """The processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE), which share its memory."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))

    def gather(self, rows: Tensor) -> Tensor:
        """Every rank's ``rows`` (same shape on each) stacked in rank order: (world, *rows.shape)."""
        if self.world == 1:
            return rows[None]
        parts = [torch.empty_like(rows) for _ in range(self.world)]
        dist.all_gather(parts, rows.contiguous())
        return torch.stack(parts)

    def max_int(self, value: int) -> int:
        """The largest of every rank's ``value`` (so all ranks agree on a measured number)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], device=self.device, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


def setup_processes(device_name: str) -> Dist:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    Backend nccl when the processes use CUDA GPUs, gloo otherwise (CPU, and the tests).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(0, 1, pick_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)
