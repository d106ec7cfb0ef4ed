"""Fitting a run to the machine it runs on, before its first step: the micro-batch and gradient checkpointing that
fit in memory, the precision that is faster here, and the disk a checkpoint needs.

Each decision is said in one line at the start and recorded in the run's settings (``micro_batch``,
``grad_checkpoint``; bf16 in the checkpoint), so a resume repeats it. Measurements that cost time are cached in
:func:`ddpm.files.cache_dir` (the precision per CPU model, torch version and network; a step's memory per network).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CHECKPOINT_DIR, checkpoint_bytes
from ..errors import ParameterError
from ..files import atomic_write, cache_dir, disk_full, free_bytes, human
from ..memory import StepMemory, available_memory, counted_peak, fake_tensors, needed, step_bound
from ..memory import budget as memory_budget
from ..runtime import Dist, cpu_bf16_native, cpu_model
from ..unet import UNet, UNetConfig
from .config import TrainConfig
from .schedules import ema_update

TIMING_SECONDS = 3.0  # about how long each precision is timed, at least one step each
MAX_ROUNDS = 50  # steps of each precision at most (a small network's step takes milliseconds: many are needed)
SLOW_STEP = 10.0  # seconds: a step this long is announced before it starts
SLOW_TIMING = 1e12  # parameters x images x pixels above which timing the precisions is announced (a minute or more)
GRID_SHARE = 0.1  # the most of a run's time its sample grids may take before they are shrunk
MEMORY_CACHE, PRECISION_CACHE = "memory.json", "precision.json"


@dataclass
class Fit:
    """What a run was fitted to: images per forward pass, gradient checkpointing, bf16, the seconds of one
    micro-batch's forward and backward where it was timed, and the lines that said so."""

    micro_batch: int
    grad_checkpoint: bool
    bf16: bool
    micro_seconds: float | None
    lines: list[str]


def fit_run(cfg: TrainConfig, raw: UNet, px: Dist, recorded: dict[str, Any] | None, bf16: bool | None) -> Fit:
    """Decide the micro-batch, gradient checkpointing and precision of a run (rank 0; every rank gets its answer).

    ``recorded`` is a resumed run's own settings (its choices are kept); ``bf16`` the arithmetic already fixed (by
    --bf16/--no-bf16 or the resumed run), else None."""
    lines: list[str] = []
    micro, ckpt = cfg.micro_batch, cfg.grad_checkpoint
    if recorded is not None:  # a resumed run splits as it did
        micro = micro if micro is not None else recorded.get("micro_batch") or cfg.batch_size
        ckpt = ckpt if ckpt is not None else bool(recorded.get("grad_checkpoint", False))
    seconds = None
    if px.main:
        check_disk(Path(cfg.out), raw, cfg.keep, lines)
        micro, ckpt = fit_memory(cfg, raw.config, px, bf16 is True, micro, ckpt, lines)
        bf16, seconds = choose_precision(raw, px.device, micro, ckpt, bf16, lines)
        if px.device.type == "cuda":  # the count is an estimate there: a real step confirms it
            micro = trial_micro_batch(lambda m: _step_once(raw, px.device, m, ckpt, bool(bf16)), cfg.batch_size, micro,
                                      lines)  # fmt: skip
        passes = cfg.grad_accum * cfg.batch_size // micro
        if seconds is not None and seconds * passes > SLOW_STEP:
            lines.append(f"time: about {duration(seconds * passes)} per step here, as timed ({passes} pass(es) of "
                         f"{micro} images); the first step shows below")  # fmt: skip
    micro, ckpt_i, bf16_i = px.broadcast([micro or 0, int(bool(ckpt)), int(bool(bf16))])
    return Fit(micro, bool(ckpt_i), bool(bf16_i), seconds, lines)


def check_disk(out: Path, raw: UNet, keep: int, lines: list[str]) -> None:
    """Refuse a run whose disk cannot hold one checkpoint; say so when it cannot hold ``keep`` + 1 (the newest is
    written before the oldest is removed), as the run then stops at the checkpoint that does not fit."""
    need, free = checkpoint_bytes(raw), free_bytes(out)
    if free < need:
        raise disk_full(out / CHECKPOINT_DIR, need, fix="free some space, or choose another --out")
    if free < need * (keep + 1):
        lines.append(f"disk: {human(free)} free in {out}, and a checkpoint takes about {human(need)}: fewer than "
                     f"--keep {keep} more fit, so the run stops with a message at the first that does not (free space, "
                     "or lower --keep)")  # fmt: skip


# ---------------------------------------------------------------------------- memory


def fit_memory(cfg: TrainConfig, config: UNetConfig, px: Dist, bf16: bool, micro: int | None, ckpt: bool | None,
               lines: list[str]) -> tuple[int, bool]:  # fmt: skip
    """The micro-batch (a divisor of the batch) and gradient checkpointing of a step that fits in this machine's
    memory: the whole batch if it fits, else the largest micro-batch that does, else the same with gradient
    checkpointing. Given values are kept (and checked). One line says what was changed and why."""
    budget = memory_budget(px.device, px.local_world)
    batch = cfg.batch_size
    if micro is not None and batch % micro:
        raise ParameterError(f"{{micro_batch}} {micro} does not divide {{batch_size}} {batch}: pass a divisor of it")
    if surely_fits(config, micro or batch, budget):
        return micro or batch, bool(ckpt)
    for checkpointing in [ckpt] if ckpt is not None else [False, True]:
        memory = step_memory(config, bf16, checkpointing)
        sizes = [micro] if micro is not None else [d for d in range(batch, 0, -1) if batch % d == 0]
        fitting = [m for m in sizes if memory.bytes(m) <= budget]
        if fitting:
            if fitting[0] != batch or checkpointing != bool(ckpt):
                lines.append(_memory_line(config, batch, fitting[0], checkpointing, memory, px.device))
            return fitting[0], checkpointing
    smallest = micro or 1
    need = needed(step_memory(config, bf16, bool(ckpt) if ckpt is not None else True).bytes(smallest), px.device)
    fix = ("a smaller {micro_batch}" if micro is not None else "{grad_checkpoint}" if ckpt is False else
           "a smaller network ({preset}, {base_channels}) or a smaller {image_size}")  # fmt: skip
    raise ParameterError(
        f"a training step does not fit in memory: {smallest} image(s) at a time need about {human(need)}, "
        f"{human(available_memory(px.device))} is available here: pass {fix}"
    )


def _memory_line(config: UNetConfig, batch: int, micro: int, ckpt: bool, memory: StepMemory,
                 device: torch.device) -> str:  # fmt: skip
    """The line that says how a step was fitted in memory."""
    how = f"{batch // micro} micro-batches of {micro}" if micro != batch else "one pass"
    ck = " with gradient checkpointing" if ckpt else ""
    return (
        f"memory: a step of {batch} images at {config.image_size} px needs about "
        f"{human(needed(memory.bytes(batch), device))}, {human(available_memory(device))} is available: {how}{ck}, "
        f"the same step in {human(needed(memory.bytes(micro), device))} (--micro-batch and --grad-checkpoint set it)"
    )


def surely_fits(config: UNetConfig, batch: int, budget: float) -> bool:
    """Whether a training step of ``batch`` images is far below ``budget`` bytes by a quick bound
    (:func:`ddpm.memory.step_bound`), so need not be counted."""
    with torch.device("meta"):
        params = sum(p.numel() for p in UNet(config).parameters())
    return step_bound(params, config, batch) < budget / 2


def step_memory(config: UNetConfig, bf16: bool, grad_checkpoint: bool) -> StepMemory:
    """A training step's memory for networks of ``config`` (counted on FakeTensors at batches 2 and 4; cached)."""
    key = json.dumps([config.to_dict(), bf16, grad_checkpoint, torch.__version__], sort_keys=True)
    cached = _read_cache(MEMORY_CACHE).get(key)
    if cached is not None:
        return StepMemory(**cached)
    peaks = [_counted_step(config, b, bf16, grad_checkpoint) for b in (2, 4)]
    memory = StepMemory.fit(2, peaks[0], 4, peaks[1])
    _write_cache(MEMORY_CACHE, key, memory.__dict__)
    return memory


def _counted_step(config: UNetConfig, batch: int, bf16: bool, grad_checkpoint: bool) -> Any:
    """The counted peak of one training step on FakeTensors: forward, MSE, backward, then AdamW and the EMA, with
    the weights, EMA weights and AdamW's moments held."""
    with fake_tensors():
        net = UNet(config).train()
        net.grad_checkpoint = grad_checkpoint
        ema = UNet(config).requires_grad_(False)
        params = list(net.parameters())
        moments = [torch.zeros_like(p) for p in params for _ in range(2)]
        shape = (batch, config.channels, config.image_size, config.image_size)
        x, noise, t = torch.randn(shape), torch.randn(shape), torch.randint(0, 1000, (batch,))

        def forward_backward() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = net(x, t, **net.extra_inputs(batch)).float()
            (out[:, : config.channels] - noise).pow(2).mean().backward()

        def update() -> None:
            with torch.no_grad():
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                sq = [g * g for g in grads]  # AdamW's temporaries, as the foreach form holds them
                for p, g, m, v, q in zip(params, grads, moments[::2], moments[1::2], sq, strict=True):
                    m.lerp_(g, 0.1)
                    v.mul_(0.99).add_(q, alpha=0.01)
                    p.sub_(m / (v.sqrt() + 1e-8), alpha=1e-4)
            ema_update(ema, net, 0.999)

        return counted_peak([*params, *ema.parameters(), *moments, x, noise, t], forward_backward, update)


def trial_micro_batch(step: Callable[[int], None], batch: int, micro: int, lines: list[str]) -> int:
    """The largest divisor of ``batch`` up to ``micro`` whose real step (``step(m)``) runs without running out of
    GPU memory (said in one line where it is smaller than ``micro``)."""
    for m in [d for d in range(micro, 0, -1) if batch % d == 0]:
        try:
            step(m)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        if m != micro:
            lines.append(f"memory: a trial step of {micro} images ran out of GPU memory: {batch // m} micro-batches of "
                         f"{m} (--micro-batch sets it)")  # fmt: skip
        return m
    raise ParameterError("a training step of one image runs out of GPU memory: pass {grad_checkpoint}, a smaller "
                         "network ({preset}, {base_channels}) or a smaller {image_size}")  # fmt: skip


def _step_once(raw: UNet, device: torch.device, micro: int, ckpt: bool, bf16: bool) -> None:
    """One forward and backward of ``raw`` on ``micro`` random images (its gradients dropped after)."""
    cfg = raw.config
    was = raw.grad_checkpoint
    raw.grad_checkpoint = ckpt
    try:
        x = torch.randn(micro, cfg.channels, cfg.image_size, cfg.image_size, device=device)
        t = torch.zeros(micro, dtype=torch.long, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = raw(x, t, **raw.extra_inputs(micro, device)).float()
        out.pow(2).mean().backward()
    finally:
        raw.zero_grad(set_to_none=True)
        raw.grad_checkpoint = was


# ---------------------------------------------------------------------------- precision


def choose_precision(raw: UNet, device: torch.device, micro: int, ckpt: bool, bf16: bool | None,
                     lines: list[str]) -> tuple[bool, float | None]:  # fmt: skip
    """bf16 autocast or float32, and the seconds of one micro-batch's forward and backward where timed.

    Given (``bf16`` not None): kept. CUDA: bf16 where the GPU supports it. A CPU with bf16 instructions: the faster
    of the two, timed on this network at this micro-batch (once per CPU model, torch version and network: cached).
    Elsewhere float32 (PyTorch emulates bf16 there, many times slower)."""
    if bf16 is not None:
        return bf16, None
    if device.type == "cuda":
        bf16 = bool(torch.cuda.is_bf16_supported())
        lines.append(f"precision: {'bf16 (this GPU computes it natively)' if bf16 else 'float32 (no bf16 here)'}")
        return bf16, None
    if device.type != "cpu":
        return False, None
    if not cpu_bf16_native():
        lines.append("precision: float32 (this CPU has no bf16 instructions; --bf16 would emulate them, slowly)")
        return False, None
    key = json.dumps([cpu_model(), torch.__version__, torch.get_num_threads(), raw.config.to_dict(), micro, ckpt])
    timed = _read_cache(PRECISION_CACHE).get(key)
    if timed is None:
        if sum(p.numel() for p in raw.parameters()) * micro * raw.config.image_size**2 > SLOW_TIMING:
            print("precision: timing float32 against bf16 on this network (once for this CPU and network; a few "
                  "steps each)", flush=True)  # fmt: skip
        timed = dict(zip(("float32", "bf16"), time_precisions(raw, device, micro, ckpt), strict=True))
        _write_cache(PRECISION_CACHE, key, timed)
    ratio = timed["float32"] / timed["bf16"]  # > 1: bf16 is faster
    bf16 = ratio > 1.0
    said = f"bf16, {ratio:.2f}x as fast as float32" if bf16 else f"float32, bf16 is {ratio:.2f}x as fast"
    lines.append(f"precision: {said} here ({cpu_model()}; timed on this network once; --bf16/--no-bf16 choose)")
    return bf16, timed["bf16" if bf16 else "float32"]


def time_precisions(raw: UNet, device: torch.device, micro: int, ckpt: bool) -> tuple[float, float]:
    """Median seconds of one forward and backward of ``raw`` on ``micro`` random images, in float32 and in bf16
    autocast, taken in turn (a warm-up of each first); about :data:`TIMING_SECONDS` each, at least one step.

    The network's weights are untouched (its gradients are dropped after each step) and the global random state
    is not used, so a training run that starts after this draws exactly what it would have."""
    cfg = raw.config
    g = torch.Generator().manual_seed(0)
    shape = (micro, cfg.channels, cfg.image_size, cfg.image_size)
    x = torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, 1000, (micro,), generator=g).to(device)
    was_training, was_ckpt = raw.training, raw.grad_checkpoint
    raw.train()
    raw.grad_checkpoint = ckpt
    rng = torch.get_rng_state()

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = raw(x, t, **raw.extra_inputs(micro, device)).float()
        out.pow(2).mean().backward()
        raw.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    try:
        first = step(False) + step(True)  # warm-up: the first calls build each precision's kernels
        if first < TIMING_SECONDS / 10:
            first = step(False) + step(True)  # a small network: its second calls are the steady state
        rounds = max(1, min(MAX_ROUNDS, int(2 * TIMING_SECONDS / max(first, 1e-6))))
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(rounds):
            for bf16 in (False, True):
                times[bf16].append(step(bf16))
    finally:
        torch.set_rng_state(rng)
        raw.train(was_training)
        raw.grad_checkpoint = was_ckpt
    return _median(times[False]), _median(times[True])


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


# ---------------------------------------------------------------------------- the cache


def _cache_file(name: str) -> Path:
    return cache_dir() / name


def _read_cache(name: str) -> dict[str, Any]:
    try:
        return dict(json.loads(_cache_file(name).read_text()))
    except (OSError, ValueError):
        return {}


def _write_cache(name: str, key: str, value: Any) -> None:
    """Add one entry to a cache file; a cache that cannot be written is only a cost, never an error."""
    entries = _read_cache(name)
    entries[key] = value
    try:
        atomic_write(_cache_file(name), json.dumps(entries, indent=1), durable=False)
    except (OSError, ValueError):
        pass


def time_line(per_step: float, step: int, total: int | None, left: float) -> str:
    """The estimate of a run's time from its first steps: seconds per step, and when the run ends."""
    if not math.isfinite(left):
        return f"time: {per_step:.3g} s per step here"
    until = (
        "--steps" if total is not None and left < math.inf and (total - step) * per_step <= left + 1 else "--minutes"
    )
    ends = time.strftime("%H:%M", time.localtime(time.time() + left))
    return f"time: {per_step:.3g} s per step here; the run ends in about {duration(left)} (at {until}, about {ends})"


def shrunk_grid(num: int, seconds_per_image: float, run_seconds: float) -> int:
    """How many images the sample grids hold: ``num``, or fewer (a square, at least 4) where ``num`` images at
    ``seconds_per_image`` each (over all the run's grids) would take more than :data:`GRID_SHARE` of
    ``run_seconds``."""
    if not math.isfinite(run_seconds) or num * seconds_per_image <= GRID_SHARE * run_seconds:
        return num
    fits = int(GRID_SHARE * run_seconds / max(seconds_per_image, 1e-9))
    side = max(2, math.isqrt(max(fits, 0)))
    return min(num, side * side)


def duration(seconds: float) -> str:
    """A duration for a message: "45 s", "12 min", "3.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
