"""Reproduce the DDPM paper's CIFAR-10 FID with its own weights, and score our fast default sampler on them.

Needs a CUDA GPU, the google/ddpm-cifar10-32 folder downloaded beforehand (nothing is fetched here), e.g.
``hf download google/ddpm-cifar10-32 --local-dir ddpm-cifar10-32``, the CIFAR-10 python batches
(``cifar-10-batches-py``) and what ``ddpm eval`` needs for FID (the Inception weights, see its --help).

    python benchmarks/ddpm_cifar10_fid.py --hub ddpm-cifar10-32 --cifar cifar-10-batches-py

Steps, each a ddpm command (printed before it runs, so the run can be repeated by hand):

1. ``ddpm convert HUB OUT/model`` (skipped when OUT/model already holds the import);
2. for each sampler configuration, ``ddpm eval --checkpoint OUT/model --num 50000 --data CIFAR --ref-split train
   --metrics fid ...`` (50k samples against the 50k training images, as the paper measured), written to
   OUT/<name>/eval.json (skipped when that file exists);
3. a Markdown table of the FIDs beside the published figures, printed and written to OUT/results.md.

Configurations: ``ddpm-1000``, the paper's sampler (ancestral, σ² = β, all 1000 steps: what DDPMPipeline does
with this model's fixed_large scheduler), and our default sampler (ddpm.sampler_choice.DEFAULT_SAMPLER) at 10 and 20
model evaluations. Published: DDPM 3.17 at 1000 steps (Ho et al. 2020, Table 1); DDIM 13.36 at 10 and 6.84 at
20 steps on the same kind of model (Song et al. 2021, Table 1, η = 0).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from ddpm.interop.convert import is_diffusers_folder
from ddpm.sampler_choice import DEFAULT_SAMPLER

NUM = 50_000
DEFAULT_NAME, DEFAULT_SPACING = DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing
# name -> (ddpm eval sampler flags, the published figure to compare with, where it comes from)
CONFIGS: dict[str, tuple[list[str], float, str]] = {
    "ddpm-1000": (
        ["--sampler", "ddpm", "--steps", "1000", "--option", "variance=beta"],
        3.17,
        "DDPM, 1000 steps (Ho et al. 2020)",
    ),
    "default-10": (
        ["--sampler", DEFAULT_NAME, "--spacing", DEFAULT_SPACING, "--steps", "10"],
        13.36,
        "DDIM, 10 steps (Song et al. 2021)",
    ),
    "default-20": (
        ["--sampler", DEFAULT_NAME, "--spacing", DEFAULT_SPACING, "--steps", "20"],
        6.84,
        "DDIM, 20 steps (Song et al. 2021)",
    ),
}


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(argv: list[str]) -> None:
    """Run ``python -m ddpm ARGV`` and stop this script if it fails."""
    print("$ ddpm " + " ".join(shlex.quote(a) for a in argv), flush=True)
    done = subprocess.run([sys.executable, "-m", "ddpm", *argv], check=False)
    if done.returncode != 0:
        raise SystemExit(f"ddpm {argv[0]} failed with status {done.returncode}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hub", required=True, help="the downloaded google/ddpm-cifar10-32 folder")
    p.add_argument("--cifar", required=True, help="CIFAR-10: the extracted cifar-10-batches-py folder")
    p.add_argument("--out", default="runs/ddpm-cifar10-fid", help="work folder (default: runs/ddpm-cifar10-fid)")
    p.add_argument("--num", type=int, default=NUM, help=f"samples per configuration (default: {NUM})")
    p.add_argument("--batch-size", type=int, default=1000, help="images per forward pass (default: 1000)")
    p.add_argument("--only", nargs="*", choices=list(CONFIGS), default=list(CONFIGS), help="configurations to run")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        return fail(
            "no CUDA GPU: 150,000 samples of a 35.7M-parameter network (50,000 of them with 1000 steps "
            "each) need one; run this on a GPU machine"
        )
    hub, cifar, out = Path(args.hub), Path(args.cifar), Path(args.out)
    if not is_diffusers_folder(hub):
        return fail(
            f"{hub} is not a downloaded diffusers model folder (no config.json): download "
            "google/ddpm-cifar10-32 first, e.g. hf download google/ddpm-cifar10-32 --local-dir "
            f"{hub}"
        )
    if not cifar.is_dir():
        return fail(f"{cifar} is not a folder: pass the extracted CIFAR-10 python batches (cifar-10-batches-py)")

    model = out / "model"
    if not (model / "checkpoints").is_dir():
        run(["convert", str(hub), str(model)])
    rows = []
    for name in args.only:
        flags, published, source = CONFIGS[name]
        result = out / name / "eval.json"
        if not result.exists():
            run(
                [
                    "eval",
                    "--checkpoint",
                    str(model),
                    "--num",
                    str(args.num),
                    "--data",
                    str(cifar),
                    "--ref-split",
                    "train",
                    "--metrics",
                    "fid",
                    "--batch-size",
                    str(args.batch_size),
                    "--out",
                    str(out / name),
                    "--quiet",
                    *flags,
                ]
            )
        fid = json.loads(result.read_text())["metrics"]["fid"]
        rows.append(f"| {name} | `{' '.join(flags)}` | {fid:.2f} | {published} ({source}) |")

    table = "\n".join(
        [
            f"google/ddpm-cifar10-32 imported with ddpm convert; FID of {args.num:,} samples against the 50,000 "
            f"CIFAR-10 training images ({torch.cuda.get_device_name(0)}, torch {torch.__version__}).",
            "",
            "| configuration | sampler flags | FID | published |",
            "| --- | --- | --- | --- |",
            *rows,
        ]
    )
    print(table)
    (out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
