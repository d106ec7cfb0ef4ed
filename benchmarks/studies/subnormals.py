"""Subnormal floats in a trained network, and whether flushing them to zero speeds up sampling on this CPU.

Floats below float32's smallest normal value (1.18e-38) take a slow path on x86 CPUs, and a trained network
could make them (a SiLU of a large negative input, say). ``ddpm`` leaves ``torch.set_flush_denormal`` off: this
measured no gain beyond the noise (BENCHMARKS.md). Per checkpoint it reports:

- the share of the network's intermediate outputs (every module's output, one call on a batch of N(0, 1)
  inputs at each of a few t) that are subnormal, with flushing off;
- the wall time of ``ddpm.generate`` for ``--num`` images with the default sampler, flushing off and on,
  alternating ``--rounds`` times (the fastest of each), and whether the images written are the same.

    .venv/bin/python benchmarks/studies/subnormals.py --checkpoints runs/qpm-25c/default-25min,runs/qpm-25c/lr2e-3-25min
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddpm.checkpoint import load_model
from ddpm.generate import generate
from ddpm.sampler_choice import SampleSettings

TIMES = (999, 500, 100, 10)


@torch.no_grad()
def subnormal_share(model: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> tuple[int, int]:
    """(subnormal values, all values) over every module's tensor output for x_t = N(0, 1) noise of ``shape``
    (B, C, H, W) at each t in TIMES; the caller turns flushing off first."""
    counts = [0, 0]
    tiny = torch.finfo(torch.float32).tiny

    def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            a = output.detach().abs()
            counts[0] += int(((a > 0) & (a < tiny)).sum())
            counts[1] += a.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g)
        for t in TIMES:
            model(x, torch.full((shape[0],), t, dtype=torch.long))
    finally:
        for h in handles:
            h.remove()
    return counts[0], counts[1]


def time_generate(checkpoint: str, num: int, flush: bool, out: Path) -> tuple[float, np.ndarray]:
    """Wall seconds of ``generate`` for ``num`` images with flushing ``flush``, and the images (num, H, W, C)."""
    torch.set_flush_denormal(flush)
    start = time.perf_counter()
    generate(SampleSettings(checkpoint, overwrite=True), out, num=num, npz=out / "images.npz")
    return time.perf_counter() - start, np.load(out / "images.npz")["images"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", required=True, help="comma-separated checkpoints or run directories")
    p.add_argument("--num", type=int, default=128, help="images per timed generate call")
    p.add_argument("--rounds", type=int, default=2, help="off/on pairs per checkpoint")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"flush supported: {torch.set_flush_denormal(False)}")
    print("| checkpoint | subnormal outputs | generate, flush off (s) | flush on (s) | speed-up | same images |")
    print("|---|---:|---:|---:|---:|---|")
    for ck in args.checkpoints.split(","):
        model, loaded, _ = load_model(ck, use_ema=True, device=torch.device("cpu"))
        c, size = int(loaded.meta["channels"]), int(loaded.meta["image_size"])
        torch.set_flush_denormal(False)
        sub, total = subnormal_share(model, (64, c, size, size))
        off, on, same = [], [], True
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                t_off, img_off = time_generate(ck, args.num, False, Path(tmp) / "off")
                t_on, img_on = time_generate(ck, args.num, True, Path(tmp) / "on")
                off.append(t_off)
                on.append(t_on)
                same = same and bool(np.array_equal(img_off, img_on))
        print(
            f"| {ck} | {sub:,} of {total:,} ({100 * sub / total:.3f}%) | {min(off):.2f} | {min(on):.2f} | "
            f"{min(off) / min(on):.2f}× | {'yes' if same else 'no'} |"
        )


if __name__ == "__main__":
    main()
