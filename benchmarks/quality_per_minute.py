"""Quality per CPU-minute: train a recipe for M minutes, sample with the default sampler, score, append a row.

    python benchmarks/quality_per_minute.py --recipes default,fp32,diffusers --minutes 25 --num 1000

Each recipe is trained in its own process with the same thread count, one after the other (nothing else may
run on the machine: PyTorch's thread pool stalls when another process holds a core). A ``ddpm`` recipe is
``ddpm train --data D --minutes M`` plus its flags, then the default ``ddpm sample --num N``; the
``diffusers`` recipe is what a user of that library would write from its ``train_unconditional`` example:
``UNet2DModel`` (1.1M parameters at 28×28: blocks 32/32/64, attention at 14×14) and ``DDPMScheduler``
(linear β, T = 1000, ε), AdamW at 1e-4 with 500 warm-up steps and cosine decay, EMA as in the example
(power 3/4, up to 0.9999), batch 64, sampled with DDIM at 100 steps. Samples are scored by
``ddpm eval --samples`` against the test split (standard Inception FID, and the FeatureNet FD), and each
row goes to ``--results`` (JSON lines) with the recipe, its flags, steps, images/s, wall times and scores.
Runs live in ``--runs`` and are reused by ``--reuse`` (same recipe and minutes) instead of retrained.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import DDPM, RESULTS, add_scoring_args, append_row, run_command, sample_npz, score_samples

from ddpm.checkpoint import load_checkpoint
from ddpm.data.load import load_dataset
from ddpm.images import to_uint8

# Three settings that `ddpm train` turns on by default, turned off: adaptive GroupNorm (scale-shift norm), AdamW
# beta2 0.99 (0.999 instead) and stratified timesteps (independent draws instead).
FLAGS_WITHOUT_ADAGN_BETA2_STRAT = ["--no-scale-shift-norm", "--adam-beta2", "0.999", "--no-t-stratified"]

# Recipes without those three settings: each is FLAGS_WITHOUT_ADAGN_BETA2_STRAT plus its own `ddpm train` flags (a
# recipe's own flag wins, as the last of a repeated flag does: "adagn", "strat" and "beta2-0.99" turn one of the three
# back on), so that a name always trains what was measured under it.
RECIPES_WITHOUT_ADAGN_BETA2_STRAT: dict[str, list[str]] = {
    "fp32": ["--no-bf16"],
    "v": ["--prediction", "v"],
    "cosine-lr": ["--lr-schedule", "cosine"],
    "minsnr": ["--loss-weight", "min-snr"],
    "laplace": ["--t-sampling", "laplace"],
    "laplace-s1": ["--t-sampling", "laplace", "--laplace-scale", "1"],
    "v-cosine": ["--prediction", "v", "--lr-schedule", "cosine"],
    "minsnr-cosine": ["--loss-weight", "min-snr", "--lr-schedule", "cosine"],
    "laplace-cosine": ["--t-sampling", "laplace", "--lr-schedule", "cosine"],
    "v-minsnr-cosine": ["--prediction", "v", "--loss-weight", "min-snr", "--lr-schedule", "cosine"],
    "v-cosine-lr2e-3": ["--prediction", "v", "--lr-schedule", "cosine", "--lr", "2e-3"],
    # network shape and batch at CPU budgets, each spelled out in full, so that it does not depend on the tiny
    # preset's defaults ("tiny2-b128": two levels at batch 128; "mult122-b64": three levels at batch 64)
    "tiny2-b128": ["--channel-mult", "1,2", "--batch-size", "128"],
    "mult122": ["--channel-mult", "1,2,2", "--batch-size", "128"],
    "mult122-attn7": ["--channel-mult", "1,2,2", "--attention", "7", "--batch-size", "128"],
    "mult122-b64": ["--channel-mult", "1,2,2", "--batch-size", "64"],
    "mult122-w48": ["--channel-mult", "1,2,2", "--base-channels", "48"],
    "res2": ["--res-blocks", "2"],
    "mult124": ["--channel-mult", "1,2,4"],
    "mult124-w24": ["--channel-mult", "1,2,4", "--base-channels", "24"],
    "b32": ["--batch-size", "32"],
    "b16": ["--batch-size", "16"],
    "lr2e-3": ["--lr", "2e-3"],
    "adagn": ["--scale-shift-norm"],
    "strat": ["--t-stratified"],
    "beta2-0.99": ["--adam-beta2", "0.99"],
    "groups8": ["--norm-groups", "8"],
    "adagn-b2-strat": ["--scale-shift-norm", "--adam-beta2", "0.99", "--t-stratified"],
    "b2-strat": ["--adam-beta2", "0.99", "--t-stratified"],
}
# Named ddpm recipes: `default` is `ddpm train`'s defaults; `default-before` (a name the result rows use) the defaults
# without the three settings above.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "default-before": FLAGS_WITHOUT_ADAGN_BETA2_STRAT,
    "adagn-groups8": ["--norm-groups", "8"],
    # the defaults at batch 32, narrower (24/48/48 channels), and both: fewer FLOPs per step or per image,
    # for a CPU without bf16, where training is compute-bound
    "default-b32": ["--batch-size", "32"],
    "default-w24": ["--base-channels", "24"],
    "default-w24-b32": ["--base-channels", "24", "--batch-size", "32"],
    **{name: [*FLAGS_WITHOUT_ADAGN_BETA2_STRAT, *flags] for name, flags in RECIPES_WITHOUT_ADAGN_BETA2_STRAT.items()},
}
DIFFUSERS = "diffusers"


def train_ddpm(run: Path, flags: list[str], args: argparse.Namespace) -> dict:
    """Train with ``ddpm train`` unless ``--reuse`` finds the run; returns steps, images/s and wall time."""
    wall = math.nan
    if not (args.reuse and (run / "checkpoints").exists()):
        budget = ["--steps", str(args.steps)] if args.steps else ["--minutes", str(args.minutes)]
        wall = run_command(
            [DDPM, "train", "--data", args.data, *budget, "--out", str(run), "--quiet", *flags], args.threads
        ).wall_s
    log = run / "metrics.jsonl"  # absent when the run is shorter than ddpm train's --log-every
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    ck = load_checkpoint(run)
    return {
        "steps": ck.step,
        "images_per_s": records[-1]["images_per_s"] if records else math.nan,
        "train_wall_s": wall,
        "bf16": ck.meta.get("bf16"),
    }


def sample_ddpm(run: Path, args: argparse.Namespace) -> tuple[Path, float]:
    """The default ``ddpm sample`` of ``args.num`` images into an .npz; returns (npz, wall seconds)."""
    npz = run / f"samples-{args.num}.npz"
    if args.reuse and npz.exists():
        return npz, math.nan
    return npz, sample_npz(run, args.num, run / f"samples-{args.num}", npz, args.threads)


# ---------------------------------------------------------------------------- the diffusers recipe


DIFFUSERS_BATCH = 64


def diffusers_train(
    model: torch.nn.Module, sched: Any, images: torch.Tensor, minutes: float, seed: int
) -> tuple[int, float]:
    """Train ``model`` on ``images`` ((N, C, S, S) in [-1, 1]) as diffusers' ``train_unconditional`` example does, for
    ``minutes`` (AdamW with warm-up and cosine decay, EMA), leaving the EMA weights in it; the steps taken and the
    seconds they took."""
    from diffusers.training_utils import EMAModel  # only this recipe needs diffusers

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    batch = DIFFUSERS_BATCH
    # The example decays over its planned steps; plan them from the first minute's measured speed.
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    deadline = time.monotonic() + minutes * 60
    t0, step, planned = time.monotonic(), 0, None
    gen = torch.Generator().manual_seed(seed)
    model.train()
    while time.monotonic() < deadline:
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        loss = torch.nn.functional.mse_loss(model(sched.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if planned is None and step == 20:
            planned = int(step + (deadline - time.monotonic()) * step / (time.monotonic() - t0))
        # get_cosine_schedule_with_warmup's curve: linear warm-up over 500 steps, then a half cosine to 0.
        progress = 0.0 if planned is None else max(0.0, (step - 500) / max(1, planned - 500))
        for group in opt.param_groups:
            group["lr"] = 1e-4 * min(1.0, (step + 1) / 500) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        step += 1
    train_s = time.monotonic() - t0
    ema.copy_to(model.parameters())
    return step, train_s


def diffusers_sample(
    model: torch.nn.Module, sched: Any, num: int, shape: tuple[int, int, int], seed: int
) -> np.ndarray:
    """``num`` images (uint8 (N, H, W, C)) from ``model`` with DDIM at 100 steps, in batches of 250."""
    from diffusers import DDIMScheduler

    model.eval()
    ddim = DDIMScheduler.from_config(sched.config)
    ddim.set_timesteps(100)
    out = []
    with torch.no_grad():
        for start in range(0, num, 250):
            n = min(250, num - start)
            x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed + 1 + start))
            for t in ddim.timesteps:
                x = ddim.step(model(x, t).sample, t, x).prev_sample
            out.append(to_uint8(x))
    return np.concatenate(out)


def diffusers_worker(run: Path, minutes: float, num: int, data: str, seed: int) -> None:
    """Train the diffusers recipe for ``minutes`` and write ``samples-{num}.npz`` and ``stats.json`` in ``run``."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    ds = load_dataset(data)
    c, size = ds.channels, ds.image_size
    model = UNet2DModel(
        sample_size=size,
        in_channels=c,
        out_channels=c,
        layers_per_block=2,
        block_out_channels=(32, 32, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    )
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    steps, train_s = diffusers_train(model, sched, ds.images, minutes, seed)
    t1 = time.monotonic()
    images = diffusers_sample(model, sched, num, (c, size, size), seed)
    run.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run / f"samples-{num}.npz", images=images)
    (run / "stats.json").write_text(
        json.dumps(
            {
                "steps": steps,
                "images_per_s": steps * DIFFUSERS_BATCH / train_s,
                "train_wall_s": train_s,
                "sample_wall_s": time.monotonic() - t1,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def run_diffusers(run: Path, args: argparse.Namespace) -> tuple[dict, Path]:
    npz = run / f"samples-{args.num}.npz"
    if not (args.reuse and npz.exists()):
        run_command(
            [
                sys.executable,
                __file__,
                "--diffusers-worker",
                str(run),
                "--minutes",
                str(args.minutes),
                "--num",
                str(args.num),
                "--data",
                args.data,
            ],
            args.threads,
        )
    return json.loads((run / "stats.json").read_text()), npz


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", default="default", help=f"comma-separated: {', '.join([*RECIPES, DIFFUSERS])}")
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train ddpm recipes for this many steps instead of --minutes: a screen of recipes that cost "
        "the same per step, whose results do not depend on the machine's load",
    )
    p.add_argument("--skip-score", action="store_true", help="train and sample only (score later with --reuse)")
    add_scoring_args(p)
    p.add_argument("--runs", default="runs/qpm")
    p.add_argument("--results", type=Path, default=RESULTS / "quality_per_minute.jsonl")
    p.add_argument("--reuse", action="store_true", help="reuse runs and samples already in --runs")
    p.add_argument("--diffusers-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.diffusers_worker:
        diffusers_worker(Path(args.diffusers_worker), args.minutes, args.num, args.data, seed=0)
        return
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES and n != DIFFUSERS]
    if unknown:
        sys.exit(f"error: unknown recipe {unknown[0]!r}: choose from {', '.join([*RECIPES, DIFFUSERS])}")
    for name in names:
        run = Path(args.runs) / (f"{name}-{args.steps}steps" if args.steps else f"{name}-{args.minutes:g}min")
        if name == DIFFUSERS:
            if args.steps:
                sys.exit("error: the diffusers recipe runs for --minutes only")
            info, npz = run_diffusers(run, args)
            sample_wall = info.pop("sample_wall_s")
            flags = ["UNet2DModel 32/32/64, DDPMScheduler, AdamW 1e-4 cosine, EMA, batch 64, DDIM-100"]
        else:
            flags = RECIPES[name]
            info = train_ddpm(run, flags, args)
            npz, sample_wall = sample_ddpm(run, args)
        if args.skip_score:
            continue
        result = score_samples(npz, run / f"eval-{args.num}", args)
        row = {
            "recipe": name,
            "flags": flags,
            "minutes": None if args.steps else args.minutes,
            **info,
            "sample_wall_s": sample_wall,
            "num": args.num,
            "ref_split": args.ref_split,
            "ref_num": args.ref_num,
            "scores": result.get("metrics"),
            "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        append_row(args.results, row)


if __name__ == "__main__":
    main()
