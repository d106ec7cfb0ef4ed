"""Training on few images: non-leaking augmentation against none, on Fashion-MNIST subsets, at equal steps.

    python benchmarks/small_data.py [--sizes 500,2000] [--augment 0,0.15,0.4] [--seeds 0,1] [--seeds-large 0]
        [--steps 3000] [--curve 1000,2000] [--num 1000] [--curve-num 500] [--ref-num 2000] [--runs runs/small-data]

Each subset holds ``size`` training images, a tenth of each class, drawn once with a fixed seed from the 60,000; it is
written as IDX files beside the full test split's (so ``--data SUBSET --ref-split test`` scores against the first
``--ref-num`` test images, the project's FID protocol, and the memorization baseline is real held-out images). Every
(size, p, seed) trains the default network for ``--steps`` steps (``ddpm train --data SUBSET --augment p --seed s``),
keeping the checkpoints of the ``--curve`` steps. Each curve checkpoint and the last are scored by ``ddpm eval``
(Inception FID of ``--curve-num`` samples against the test split), the last also with ``--num`` samples and
``--memorization`` (the share of samples closer to a training image than 99% of test images are). Rows go to
benchmarks/results/small_data.jsonl, the table to small_data.md and the curves to small_data.png. Quality, not time, is
compared (equal steps), so the figures do not depend on the machine's load; the wall times are reported as measured.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
from harness import DDPM, RESULTS, append_row, cpu_model, run_command

from ddpm.checkpoint import CHECKPOINT_DIR, checkpoint_name
from ddpm.data.load import load_dataset
from ddpm.images import plot_lines, save_png

ROWS = RESULTS / "small_data.jsonl"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of uint8 ``array`` (images (N, H, W) or labels (N,))."""
    magic = (0x0803 if array.ndim == 3 else 0x0801).to_bytes(4, "big")
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(magic + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def subset(folder: Path, size: int) -> Path:
    """``folder`` holding ``size`` balanced training images of Fashion-MNIST (seed 0) and the full test split."""
    if (folder / "train-images-idx3-ubyte").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist", None)
    assert data.labels is not None
    labels = data.labels.numpy()
    rng = np.random.default_rng(0)
    pick = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == k), size // 10, replace=False)
                                   for k in range(10)]))  # fmt: skip
    write_idx(folder / "train-images-idx3-ubyte", data.as_uint8()[pick, 0])
    write_idx(folder / "train-labels-idx1-ubyte", labels[pick].astype(np.uint8))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(FASHION / f"{name}.gz") as src, open(folder / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return folder


def train(args: argparse.Namespace, data: Path, run: Path, p: float, seed: int) -> float:
    """``ddpm train`` of one row (reused when its last checkpoint exists); its wall time in seconds (0 if reused)."""
    if (run / CHECKPOINT_DIR / checkpoint_name(args.steps)).is_file():
        return 0.0
    every = min(args.curve) if args.curve else args.steps
    flags = ["--augment", f"{p:g}"] if p > 0 else []
    return run_command([DDPM, "train", "--data", str(data), "--steps", str(args.steps), "--seed", str(seed),
                        "--checkpoint-every", str(every), "--keep", "1000", "--sample-every", "0", *flags,
                        "--out", str(run), "--quiet"], args.threads).wall_s  # fmt: skip


def score(args: argparse.Namespace, data: Path, run: Path, step: int, num: int, memorization: bool) -> dict:
    """``ddpm eval`` of checkpoint ``step`` of ``run`` against the full test split; its eval.json."""
    out = run / "eval" / f"step-{step}-{num}"
    if not (out / "eval.json").is_file():
        memo = ["--memorization"] if memorization else []
        run_command([DDPM, "eval", "--checkpoint", str(run / CHECKPOINT_DIR / checkpoint_name(step)), "--data",
                     str(data), "--ref-split", "test", "--ref-num", str(args.ref_num), "--metrics", "fid", "--num",
                     str(num), "--out", str(out), "--quiet", "--overwrite", *memo], args.threads)  # fmt: skip
    return json.loads((out / "eval.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def numbers(kind: type):
        return lambda s: [kind(v) for v in s.split(",") if v]

    p.add_argument("--sizes", type=numbers(int), default=[500, 2000])
    p.add_argument("--augment", type=numbers(float), default=[0.0, 0.15, 0.4])
    p.add_argument("--seeds", type=numbers(int), default=[0, 1], help="training seeds of the smallest size")
    p.add_argument("--seeds-large", type=numbers(int), default=[0], help="training seeds of the other sizes")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--curve", type=numbers(int), default=[1000, 2000])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--curve-num", type=int, default=500)
    p.add_argument("--ref-num", type=int, default=2000, help="test images the FID and memorization compare with")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/small-data")
    args = p.parse_args()
    runs = Path(args.runs)
    for size in args.sizes:
        data = subset(runs / f"fashion-{size}", size)
        for seed in args.seeds if size == min(args.sizes) else args.seeds_large:
            for aug in args.augment:
                run = runs / f"n{size}-p{aug:g}-s{seed}"
                wall = train(args, data, run, aug, seed)
                curve = {step: score(args, data, run, step, args.curve_num, False)["metrics"]["fid"]
                         for step in sorted({*args.curve, args.steps})}  # fmt: skip
                final = score(args, data, run, args.steps, args.num, True)
                memo = final["memorization"]["features"]
                append_row(ROWS, {"size": size, "augment": aug, "seed": seed, "steps": args.steps,
                                  "fid": final["metrics"]["fid"], "fid_curve": curve, "curve_num": args.curve_num,
                                  "num": args.num, "memorized": memo["share_closer"],
                                  "memorized_expected": memo["expected_share"],
                                  "memorized_pixels": final["memorization"]["pixels"]["share_closer"],
                                  "train_s": round(wall, 1), "cpu": cpu_model()})  # fmt: skip
    report(args)


def report(args: argparse.Namespace) -> None:
    """small_data.md (FID and memorization share per size and p: per seed, mean) and small_data.png (FID against
    steps, one line per size and p, seeds averaged)."""
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    rows = [r for r in rows if r["steps"] == args.steps]
    latest = {(r["size"], r["augment"], r["seed"]): r for r in rows}
    lines = ["| images | --augment | FID (mean) | FID per seed | memorized share (features) | per seed |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    curves = {}
    for size in args.sizes:
        for aug in args.augment:
            mine = [r for (s, a, _), r in sorted(latest.items()) if (s, a) == (size, aug)]
            if not mine:
                continue
            fids, memo = [r["fid"] for r in mine], [r["memorized"] for r in mine]
            lines.append(f"| {size} | {aug:g} | {statistics.mean(fids):.2f} | {', '.join(f'{v:.2f}' for v in fids)} | "
                         f"{statistics.mean(memo):.3f} | {', '.join(f'{v:.3f}' for v in memo)} |")  # fmt: skip
            steps = sorted({int(k) for r in mine for k in r["fid_curve"]})
            curves[f"{size} images, p {aug:g}"] = [statistics.mean(r["fid_curve"][str(s)] for r in mine) for s in steps]
    (RESULTS / "small_data.md").write_text(
        f"CPU: {cpu_model()}; {args.steps} steps per row\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))
    if curves:
        xs = sorted({int(k) for r in rows for k in r["fid_curve"]})
        title = f"Inception FID of {args.curve_num} samples against training steps (test split)"
        picture = plot_lines(xs, curves, width=720, title=title)
        save_png(RESULTS / "small_data.png", picture)


if __name__ == "__main__":
    main()
