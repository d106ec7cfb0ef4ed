"""The widths of the CPU-budget networks for 128 and 256 px (tiny-128, tiny-256): training speed and a short FID
screen of each candidate, on crops of scikit-learn's two sample photos, as the 28 px `tiny` was chosen.

For each candidate (a width and channel multipliers, with tiny's shape otherwise: one residual block per level,
attention at 16 px, adaptive GroupNorm, levels down to 8 px), ``ddpm train`` runs for ``--minutes`` on
``--train`` crops, then ``ddpm sample`` draws ``--num`` images (the default sampler), and ``ddpm eval`` scores them
by Inception FID against ``--ref`` other crops (another seed). The report gives parameters, images/s, steps and FID.

    python benchmarks/cpu_presets.py [--sizes 128,256] [--minutes 6] [--num 200]

Nothing else may run on the machine meanwhile. Rows go to benchmarks/results/cpu_presets.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from harness import CACHE, DDPM, RESULTS, append_row, cpu_model, log, photo_crops, run_command, sample_npz

from ddpm.unet import UNet

# size -> {candidate: (base channels, channel multipliers)}
CANDIDATES: dict[int, dict[str, tuple[int, tuple[int, ...]]]] = {
    128: {"w16-12444": (16, (1, 2, 4, 4, 4)), "w16-12222": (16, (1, 2, 2, 2, 2)), "w32-11222": (32, (1, 1, 2, 2, 2))},
    256: {"w16-112444": (16, (1, 1, 2, 4, 4, 4)), "w8-124888": (8, (1, 2, 4, 8, 8, 8))},
}  # fmt: skip


def candidate_row(size: int, name: str, args: argparse.Namespace, train: Path, ref: Path, work: Path) -> dict:
    """Train, sample and score one candidate; its row."""
    base, mult = CANDIDATES[size][name]
    run = work / f"{size}-{name}"
    shutil.rmtree(run, ignore_errors=True)
    flags = ["--preset", f"tiny-{size}", "--base-channels", str(base), "--channel-mult", ",".join(map(str, mult)),
             "--image-size", str(size), "--batch-size", str(args.batch)]  # fmt: skip
    t = run_command([DDPM, "train", "--data", str(train), *flags, "--minutes", str(args.minutes), "--sample-every",
                     "0", "--checkpoint-every", "0", "--quiet", "--out", str(run)], args.threads).wall_s  # fmt: skip
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    npz = run / "samples.npz"
    sample_s = sample_npz(run, args.num, run / "samples", npz, args.threads)
    run_command([DDPM, "eval", "--samples", str(npz), "--data", str(ref), "--image-size", str(size), "--metrics",
                 "fid", "--out", str(run / "eval"), "--quiet"], args.threads)  # fmt: skip
    fid = json.loads((run / "eval" / "eval.json").read_text())["metrics"]["fid"]
    with torch.device("meta"):
        params = sum(p.numel() for p in UNet.from_preset(f"tiny-{size}", base_channels=base, channel_mult=mult,
                                                          channels=3, image_size=size).parameters())  # fmt: skip
    return {"size": size, "candidate": name, "base_channels": base, "channel_mult": list(mult), "params": params,
            "batch": args.batch, "minutes": args.minutes, "steps": metrics[-1]["step"],
            "images_per_s": metrics[-1]["images_per_s"], "bf16": metrics[-1]["bf16"], "train_wall_s": t,
            "sample_s": sample_s, "num": args.num, "ref": args.ref, "fid": fid, "cpu": cpu_model(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def report(rows: list[dict]) -> str:
    lines = ["| size | candidate | widths | params | images/s | steps | FID |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        widths = "/".join(str(r["base_channels"] * m) for m in r["channel_mult"])
        lines.append(f"| {r['size']} | {r['candidate']} | {widths} | {r['params'] / 1e6:.2f}M | "
                     f"{r['images_per_s']:.1f} | {r['steps']} | {r['fid']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--candidates", default=None, help="comma-separated names (default: all of each size)")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train", type=int, default=1024, help="training crops")
    ap.add_argument("--ref", type=int, default=500, help="reference crops (another seed)")
    ap.add_argument("--num", type=int, default=200, help="samples scored per candidate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=str(CACHE / "cpu_presets"))
    ap.add_argument("--results", default=str(RESULTS / "cpu_presets.jsonl"))
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        train = photo_crops(work / f"train-{size}", args.train, size, seed=1)
        ref = photo_crops(work / f"ref-{size}", args.ref, size, seed=2)
        names = [n for n in CANDIDATES[size] if args.candidates is None or n in args.candidates.split(",")]
        for name in names:
            log(f"{size} px, {name}")
            rows.append(candidate_row(size, name, args, train, ref, work))
            append_row(args.results, rows[-1])
    print(f"\n{cpu_model()}, torch {torch.__version__}, {args.threads} threads, {args.minutes:g} min each")
    print(report(rows))


if __name__ == "__main__":
    main()
