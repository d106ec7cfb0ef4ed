"""Memory: what a step needs, counted before it runs, and what the machine has.

A step's peak is counted on its tensors' storages (:class:`LiveBytes`, a dispatch mode that adds up the bytes of every
storage alive after each operator), and it can be counted on FakeTensors (:func:`fake_tensors`): the step runs on
shapes and dtypes alone, nothing is computed, so a 400M-parameter network at 256 px is counted in seconds on any
machine. What a kernel allocates and frees inside one operator, the libraries' workspaces and the allocator's own
overhead are not seen: :func:`needed` adds them (:data:`HEADROOM`, :data:`CPU_EXTRA`) when a count is compared with
what the machine has (:func:`available_memory`, :func:`budget`).
Nothing here knows about diffusion: the step is a function the caller gives.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GIB = 2**30
MIB = 2**20
# Counted tensors are not all a process holds: kernels' scratch space, the libraries' workspaces and the allocator's
# overhead come on top; these cover what two real CPU steps held beyond the count (benchmarks/memory.py --rss;
# BENCHMARKS.md, "memory.py").
HEADROOM = 1.5
CPU_EXTRA = 2**30
# A bound on a training step's activation bytes per value of every level and block of a UNet, over 2x the most any
# preset's step counted (benchmarks/memory.py): a step under it surely fits, and need not be counted.
BOUND_BYTES = 400
CUDA_RESERVED = GIB  # the CUDA context and library workspaces, outside PyTorch's count


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the tensor storages alive, after every operator, and keeps the peak.

    Storages are keyed by their C++ object and followed by weak reference: views and in-place results add nothing,
    and a storage that was freed leaves the count. The count is swept for freed storages only when it would set a
    new peak (it can only overstate what is alive), so the peak is exact and most operators cost no sweep.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, StorageWeakRef] = {}  # keeps the weak references alive while their keys are checked
        self.sizes: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def add(self, tensor: Tensor) -> None:
        """Count ``tensor``'s storage (once however many tensors view it)."""
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        if ref.cdata not in self.refs:
            self.refs[ref.cdata], self.sizes[ref.cdata] = ref, storage.nbytes()
            self.live += storage.nbytes()
            if self.live > self.peak:
                self._sweep()
                self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        """Start a new peak from what is alive now."""
        self._sweep()
        self.peak = self.live

    def _sweep(self) -> None:
        expired = torch.UntypedStorage._expired
        for key in [k for k in self.refs if expired(k)]:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.add(leaf)
        return out


@contextlib.contextmanager
def fake_tensors(enabled: bool = True) -> Iterator[None]:
    """Tensors made inside are FakeTensors (shapes and dtypes, no data), so a step runs without computing."""
    if not enabled:
        yield
        return
    from torch._subclasses.fake_tensor import FakeTensorMode  # a private module of torch: loaded only when used

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


@dataclass
class Peak:
    """One counted step: the bytes held before it, the peak during its first part (a training step's forward and
    backward; a sampling step's forward) and during its second (the optimizer step and EMA update; 0 for none)."""

    before: int
    forward_backward: int
    optimizer: int = 0

    @property
    def peak(self) -> int:
        return max(self.forward_backward, self.optimizer)


def counted_peak(held: list[Tensor], first: Callable[[], None], second: Callable[[], None] | None = None) -> Peak:
    """The peak bytes of ``first()`` then ``second()``, counting the ``held`` tensors (weights, optimizer state, the
    batch) as alive from the start."""
    counter = LiveBytes()
    with counter:
        for tensor in held:
            counter.add(tensor)
        before = counter.live
        first()
        fb = counter.peak
        optimizer = 0
        if second is not None:
            counter.reset_peak()
            second()
            optimizer = counter.peak
        return Peak(before, fb, optimizer)


@dataclass(frozen=True)
class StepMemory:
    """A step's memory as a function of its batch b: max(fixed + per_image · b, optimizer), in bytes, from two
    counted batches (:meth:`fit`)."""

    fixed: float
    per_image: float
    optimizer: float

    @classmethod
    def fit(cls, b1: int, p1: Peak, b2: int, p2: Peak) -> StepMemory:
        """The line through the first-part peaks at batches b1 < b2."""
        per_image = (p2.forward_backward - p1.forward_backward) / (b2 - b1)
        return cls(p1.forward_backward - b1 * per_image, per_image, max(p1.optimizer, p2.optimizer))

    def bytes(self, batch: int) -> float:
        """The step's peak at ``batch`` images."""
        return max(self.fixed + self.per_image * batch, self.optimizer)

    def largest_batch(self, budget: float) -> int:
        """The most images whose step fits in ``budget`` bytes (0 where not even the fixed part does)."""
        if self.optimizer > budget or self.fixed + self.per_image > budget:
            return 0
        return int((budget - self.fixed) // max(self.per_image, 1.0))


def needed(counted: float, device: torch.device) -> float:
    """The memory a step whose tensors were counted at ``counted`` bytes needs on ``device``."""
    return counted * HEADROOM + (CPU_EXTRA if device.type == "cpu" else 0)


def budget(device: torch.device, share: int = 1) -> float:
    """The counted bytes a step may take on ``device`` (its available memory shared by ``share`` processes)."""
    return max(0.0, (available_memory(device) / share - (CPU_EXTRA if device.type == "cpu" else 0)) / HEADROOM)


def available_memory(device: torch.device) -> int:
    """Bytes this process can still use on ``device``: the CPU's MemAvailable (Linux; elsewhere the physical memory
    not in use, as well as it is known), or a CUDA device's free memory less :data:`CUDA_RESERVED`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(0, int(free) - CUDA_RESERVED)
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["MemAvailable"].split()[0]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return 1 << 62  # unknown: assume it fits


def peak_rss() -> int:
    """The most resident memory this process has held so far, in bytes (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def step_bound(params: int, config: Any, batch: int) -> float:
    """A quick upper bound on the bytes of a training step of ``batch`` images for a UNet of ``params`` parameters
    and ``config`` (its ``image_size``, ``base_channels``, ``channel_mult`` and ``num_res_blocks``): the weights, the
    EMA and AdamW's moments, and :data:`BOUND_BYTES` per activation value of each level and block. Sampling, which
    keeps no activations for a backward pass, needs less."""
    levels = sum((config.image_size // 2**i) ** 2 * config.base_channels * m for i, m in enumerate(config.channel_mult))
    return 16 * params + batch * levels * (config.num_res_blocks + 1) * BOUND_BYTES
