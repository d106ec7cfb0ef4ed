"""Peak training memory per image for each preset at its resolution, with and without --grad-checkpoint, in float32
and under bf16 autocast; and from it the batch that fits in 16, 24 and 80 GiB.

Usage::

    python benchmarks/memory.py [--presets tiny-32,tiny-64,ddpm-cifar10,adm-64,adm-128,ddpm-256]
                                [--device cpu|cuda] [--mode shapes|real] [--batches 2,4]
                                [--precisions float32,bf16] [--json PATH]

What one measurement is: one training step as ``ddpm train`` takes it (forward, the MSE to the noise, backward,
gradient clipping, AdamW, the EMA update), with the raw weights, the EMA weights and AdamW's two moments already in
memory (every step after the first), at batch b; its peak is the most memory held at any point of the step.

- ``--device cuda``: ``torch.cuda.max_memory_allocated``, PyTorch's caching allocator's count of the bytes its
  tensors hold (the CUDA context, about 0.5 GiB, and memory the allocator reserves but has not handed out are extra).
- ``--device cpu --mode real``: PyTorch's accounting of its own tensors, taken by a dispatch mode that adds up the
  bytes of every tensor storage alive after each operator (storages are followed by weak reference, so a freed one
  leaves the sum). What a kernel allocates and frees inside one operator is not seen.
- ``--mode shapes`` (CPU only): the same count on FakeTensors: the step runs on shapes and dtypes alone, nothing is
  computed, so a 400M-parameter network at 256 px takes seconds on any machine. AdamW is written out in its foreach
  form (CUDA's default: the square root of the second moment of every parameter at once), and bf16 follows the CPU's
  autocast lists. tests/test_memory_benchmark.py checks that shapes and real agree exactly on a small preset.

Per image = (forward-backward peak at b2 − at b1) / (b2 − b1), over batches large enough that the activations make
the peak (32 and 64 by default in shapes mode, where a batch costs no memory; 8 and 16 when the step is computed);
fixed = the b1 peak − b1 × per image (weights, EMA, moments, and what does not grow
with the batch). The optimizer step's peak (weights, EMA, moments, gradients and AdamW's temporaries; no activations)
does not grow with the batch. The batch that fits in G GiB = ⌊(G − 1 GiB − fixed) / per image⌋, or 0 where the
optimizer step alone does not fit; 1 GiB is left for the CUDA context and the cuBLAS/cuDNN workspaces. On a CPU these
are estimates until a GPU measures the step (``benchmarks/gpu_check.sh`` runs this script with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from harness import cpu_flags, cpu_model
from torch import Tensor

from ddpm.files import human
from ddpm.memory import CPU_EXTRA, GIB, HEADROOM, MIB, Peak, counted_peak, fake_tensors, needed, peak_rss
from ddpm.runtime import hold_freed_memory
from ddpm.train.fit import step_memory
from ddpm.train.schedules import ema_update
from ddpm.unet import PRESETS, UNet

BUDGETS_GIB = (16, 24, 80)
RESERVED_GIB = 1.0  # the CUDA context and library workspaces, outside PyTorch's count
DEFAULT_PRESETS = ("tiny-32", "tiny-64", "ddpm-cifar10", "adm-64", "adm-128", "ddpm-256")
LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.99), 1e-8, 0.0  # ddpm train's AdamW (betas as --adam-beta2's default)


def _foreach_adamw(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], step: int
) -> None:
    """AdamW's foreach form (torch.optim.AdamW on CUDA) with its temporaries, for shapes mode, where the optimizer's
    own step counters cannot be read."""
    b1, b2 = BETAS
    torch._foreach_mul_(params, 1 - LR * WEIGHT_DECAY)
    torch._foreach_lerp_(exp_avgs, grads, 1 - b1)
    torch._foreach_mul_(exp_avg_sqs, b2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - b2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(1 - b2**step))
    torch._foreach_add_(denom, EPS)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -LR / (1 - b1**step))


@dataclass
class Step:
    """One training step, split where its peaks are measured, and the tensors held from one step to the next."""

    forward_backward: Callable[[], None]
    update: Callable[[], None]
    held: list[Tensor]


def build_step(
    preset: str,
    size: int,
    batch: int,
    *,
    bf16: bool,
    checkpointing: bool,
    dev: torch.device,
    mode: str,
    channels: int,
    overrides: dict[str, Any],
) -> Step:
    """The network, its EMA, AdamW's moments and a batch, as ``ddpm train`` holds them after its first step (in
    "real" mode a first step is taken here to create the moments), and the step on them."""
    cuda = dev.type == "cuda"
    net = UNet.from_preset(preset, channels=channels, image_size=size, **overrides)
    if cuda:
        net = net.to(memory_format=torch.channels_last)  # ddpm train's default on CUDA
    ema = UNet(net.config).requires_grad_(False)
    net.train()
    net.grad_checkpoint = checkpointing
    params = list(net.parameters())
    x_t = torch.randn(batch, channels, size, size, device=dev)
    t = torch.randint(0, 1000, (batch,), device=dev)
    noise = torch.randn(batch, channels, size, size, device=dev)
    if mode == "real":  # ddpm train's AdamW; a first step creates its moments, as in every later step
        opt = torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
        moments = []
    else:
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    def forward_backward() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (net(x_t, t).float() - noise).pow(2).mean()
        loss.backward()

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if mode == "real":
            opt.step()
        else:
            with torch.no_grad():
                _foreach_adamw(params, [p.grad for p in params], [m for m, _ in moments], [v for _, v in moments], 2)
        ema_update(ema, net, 0.999)
        for p in params:
            p.grad = None

    if mode == "real":
        forward_backward()
        update()
        moments = [(opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]) for p in params]
    held = [*params, *ema.parameters(), *(m for pair in moments for m in pair), x_t, t, noise]
    return Step(forward_backward, update, held)


def cuda_peak(step: Step, dev: torch.device) -> Peak:
    """``step``'s memory by the CUDA caching allocator's count."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    step.forward_backward()
    torch.cuda.synchronize(dev)
    fb = torch.cuda.max_memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    step.update()
    torch.cuda.synchronize(dev)
    return Peak(before, fb, torch.cuda.max_memory_allocated(dev))


def step_peak(step: Step) -> Peak:
    """``step``'s memory by the live tensor storages (:class:`ddpm.memory.LiveBytes`), the held tensors first."""
    return counted_peak(step.held, step.forward_backward, step.update)


def measure_step(
    preset: str,
    size: int,
    batch: int,
    *,
    bf16: bool = False,
    checkpointing: bool = False,
    device: str = "cpu",
    mode: str = "real",
    channels: int = 3,
    **overrides: Any,
) -> Peak:
    """The memory of one training step of ``preset`` (with UNetConfig ``overrides``) at ``size`` px on ``batch``
    images of ``channels`` channels (see the module docstring).

    ``mode`` "real" computes the step (on ``device``); "shapes" runs it on FakeTensors on the CPU.
    """
    if mode not in ("real", "shapes"):
        raise ValueError(f"mode must be real or shapes; got {mode!r}")
    if mode == "shapes" and device != "cpu":
        raise ValueError("shapes mode runs on the CPU's FakeTensors: pass --device cpu")
    cuda = device.startswith("cuda")
    dev = torch.device(device)
    torch.manual_seed(0)
    with fake_tensors(mode == "shapes"), dev if cuda else nullcontext():  # (the device context slows every CPU op)
        step = build_step(
            preset,
            size,
            batch,
            bf16=bf16,
            checkpointing=checkpointing,
            dev=dev,
            mode=mode,
            channels=channels,
            overrides=overrides,
        )
        return cuda_peak(step, dev) if cuda else step_peak(step)


@dataclass
class Row:
    """One preset, precision and checkpointing setting: the fitted per-image and fixed memory, and batches that fit."""

    preset: str
    size: int
    params: int
    precision: str
    checkpointing: bool
    batches: tuple[int, int]
    peaks: tuple[int, int]  # the whole step's, at each batch
    per_image: float
    fixed: float
    optimizer_peak: int
    fits: dict[str, int]
    device: str
    mode: str


def fit(preset: str, size: int, b1: int, b2: int, *, bf16: bool, checkpointing: bool, device: str, mode: str) -> Row:
    """Measure batches b1 < b2 and fit the forward-backward peak = fixed + per_image × batch."""
    s1, s2 = (
        measure_step(preset, size, b, bf16=bf16, checkpointing=checkpointing, device=device, mode=mode)
        for b in (b1, b2)
    )
    per_image = (s2.forward_backward - s1.forward_backward) / (b2 - b1)
    fixed = s1.forward_backward - b1 * per_image
    optimizer_peak = max(s1.optimizer, s2.optimizer)

    def batch_in(gib: int) -> int:
        room = (gib - RESERVED_GIB) * GIB
        return 0 if optimizer_peak > room else max(0, math.floor((room - fixed) / per_image))

    fits = {f"{g}GiB": batch_in(g) for g in BUDGETS_GIB}
    with torch.device("meta"):
        params = sum(p.numel() for p in UNet.from_preset(preset, channels=3, image_size=size).parameters())
    return Row(
        preset,
        size,
        params,
        "bf16" if bf16 else "float32",
        checkpointing,
        (b1, b2),
        (s1.peak, s2.peak),
        per_image,
        fixed,
        optimizer_peak,
        fits,
        device,
        mode,
    )


def machine() -> str:
    """The CPU model, its logical cores and its bf16-relevant flags."""
    flags = cpu_flags()
    marks = [
        name for name, flag in (("AVX2", "avx2"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16")) if flag in flags
    ]
    return f"{cpu_model()} ({os.cpu_count()} logical cores; {', '.join(marks) or 'no AVX2'})"


# ---------------------------------------------------------------------------- estimate against measured (--rss)

# (preset, size, batch): the CPU networks at their sizes and the published ones at batches a 2-core CPU can step
RSS_CASES = [("tiny", 28, 64), ("tiny-64", 64, 64), ("tiny-128", 128, 32), ("tiny-256", 256, 8),
             ("ddpm-cifar10", 32, 32), ("adm-64", 64, 4), ("adm-128", 128, 2)]  # fmt: skip


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_rss(spec: dict[str, Any]) -> dict[str, int]:
    """Run in a child process: two real training steps of ``spec``'s network and batch on the CPU; the resident memory
    before the network was built and the process's peak."""
    hold_freed_memory()  # as every ddpm command does: the allocator keeps what tensors free
    torch.manual_seed(0)
    baseline = resident_bytes()
    step = build_step(spec["preset"], spec["size"], spec["batch"], bf16=spec["bf16"], checkpointing=spec["ckpt"],
                      dev=torch.device("cpu"), mode="real", channels=3, overrides={})  # fmt: skip
    for _ in range(2):
        step.forward_backward()
        step.update()
    return {"baseline": baseline, "peak": peak_rss()}


def rss_row(preset: str, size: int, batch: int, bf16: bool, ckpt: bool) -> dict[str, Any]:
    """The estimate ``ddpm train`` fits a step with, against the resident memory two real steps took in a child."""
    spec = {"preset": preset, "size": size, "batch": batch, "bf16": bf16, "ckpt": ckpt}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          check=True)  # fmt: skip
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    config = UNet.from_preset(preset, channels=3, image_size=size).config
    counted = step_memory(config, bf16, ckpt).bytes(batch)
    grown = measured["peak"] - measured["baseline"]
    estimate = needed(counted, torch.device("cpu"))
    return {**spec, "counted": counted, "estimate": estimate, "measured": grown, "peak_rss": measured["peak"],
            "estimate_over_measured": estimate / grown}  # fmt: skip


def rss_report(rows: list[dict[str, Any]]) -> str:
    head = "| preset | size | batch | precision | grad ckpt | counted | estimate | measured RSS growth"
    lines = [head + " | estimate ÷ measured |", "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['size']} | {r['batch']} | {'bf16' if r['bf16'] else 'float32'} | "
                     f"{'on' if r['ckpt'] else 'off'} | {human(r['counted'])} | {human(r['estimate'])} | "
                     f"{human(r['measured'])} | {r['estimate_over_measured']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def rss_main(args: argparse.Namespace) -> None:
    """--rss: every case of :data:`RSS_CASES` in float32 and bf16, each in its own child process."""
    rows = []
    wanted = args.rss_presets.split(",") if args.rss_presets else [c[0] for c in RSS_CASES]
    for preset, size, batch in [c for c in RSS_CASES if c[0] in wanted]:
        for precision in (p.strip() for p in args.precisions.split(",") if p.strip()):
            rows.append(rss_row(preset, size, batch, precision == "bf16", False))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({**rows[-1], "machine": machine(), "torch": torch.__version__}) + "\n")
    print(f"\n{machine()}, torch {torch.__version__}; estimate = counted x {HEADROOM} + {human(CPU_EXTRA)}")
    print(rss_report(rows))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure, print a Markdown table (and JSON lines with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated, each at its own size")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--mode",
        default=None,
        choices=["real", "shapes"],
        help="real (compute the step) or shapes (FakeTensors, CPU only; default on the CPU)",
    )
    parser.add_argument(
        "--batches",
        default=None,
        help="the two batch sizes of the fit (default: 32,64 in shapes mode, 8,16 in real mode)",
    )
    parser.add_argument("--precisions", default="float32,bf16", help="comma-separated: float32, bf16 (autocast)")
    parser.add_argument("--checkpointing", default="off,on", help="comma-separated: off, on (--grad-checkpoint)")
    parser.add_argument("--json", default=None, help="also append one JSON line per row to this file")
    parser.add_argument("--rss", action="store_true",
                        help="instead: the estimate ddpm train fits a step with, against the resident memory of two "
                             "real steps (each case in a child process; CPU)")  # fmt: skip
    parser.add_argument("--rss-presets", default=None, help="with --rss: only these presets of its cases")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child_rss(json.loads(args.child))))
        return
    if args.rss:
        rss_main(args)
        return
    mode = args.mode or ("shapes" if args.device == "cpu" else "real")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    b1, b2 = (int(b) for b in (args.batches or ("32,64" if mode == "shapes" else "8,16")).split(","))
    if not 0 < b1 < b2:
        parser.error(f"--batches {args.batches!r}: two sizes, the first smaller, e.g. 2,4")
    if args.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / GIB:.0f} GiB)"
    else:
        where = machine()

    print("# Training memory per image\n")
    print(f"- device: {args.device}, {where}; torch {torch.__version__}")
    cuda = args.device.startswith("cuda")
    print(
        f"- accounting: {'torch.cuda.max_memory_allocated' if cuda else 'live tensor storages'} ({mode}); fit over "
        f"batches {b1} and {b2}; batches that fit leave {RESERVED_GIB:g} GiB for the CUDA context"
        + ("" if cuda else " (estimates until a GPU measures them)")
    )
    print("- command: python benchmarks/memory.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])))
    print()
    print(
        "| preset | size | params | precision | grad checkpoint | MiB per image | fixed GiB | optimizer step GiB "
        f"| peak at {b1} / {b2} (GiB) | batch in 16 / 24 / 80 GiB |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for preset in presets:
        size = int(PRESETS[preset].get("image_size", 32))
        for precision in (p.strip() for p in args.precisions.split(",") if p.strip()):
            for ck in (c.strip() == "on" for c in args.checkpointing.split(",") if c.strip()):
                row = fit(
                    preset, size, b1, b2, bf16=precision == "bf16", checkpointing=ck, device=args.device, mode=mode
                )
                fits = " / ".join(str(row.fits[f"{g}GiB"]) for g in BUDGETS_GIB)
                print(
                    f"| {preset} | {size} | {row.params / 1e6:.1f}M | {precision} | {'on' if ck else 'off'} "
                    f"| {row.per_image / MIB:.1f} | {row.fixed / GIB:.2f} | {row.optimizer_peak / GIB:.2f} "
                    f"| {row.peaks[0] / GIB:.2f} / "
                    f"{row.peaks[1] / GIB:.2f} | {fits} |",
                    flush=True,
                )
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({**asdict(row), "machine": where, "torch": torch.__version__}) + "\n")


if __name__ == "__main__":
    main()
