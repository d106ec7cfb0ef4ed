"""The FID scale on Fashion-MNIST, measured with ``ddpm eval --samples``: what FID real images get.

Rows (each an .npz of uint8 images scored by the real command against the test split):

- floor: N training images (a seeded random subset) vs the test split: the FID of a perfect model at that N.
- noise σ: the same N=1000 training images with Gaussian noise, p/255 + σ·z clipped to [0, 1], rounded.
- blur r: the same images through Pillow's GaussianBlur(radius=r).

First the Inception speed on this machine (one thread, float32, batch 50, 28×28 inputs resized to 299,
after a warm-up batch), from which the time for 1k/10k/50k images is extrapolated. Results go to
benchmarks/results/fid_scale.{json,md}, rewritten after each row.

    .venv/bin/python benchmarks/fid_scale.py --ref-num 2000
    .venv/bin/python benchmarks/fid_scale.py --only floor-2000    # a row in a second process, say
    .venv/bin/python benchmarks/fid_scale.py --report-only        # the report from the rows scored so far
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from harness import CACHE, RESULTS, log
from PIL import Image, ImageFilter

from ddpm.cli import main as ddpm_main
from ddpm.data.load import load_dataset
from ddpm.evaluation.inception import Inception
from ddpm.evaluation.reference import subset_indices, to_pixels

ROWS_CACHE = CACHE / "fid_scale"  # each row's .npz and its ddpm eval folder


def noisy(pixels: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """uint8 (N, C, H, W) + Gaussian noise of std σ in [0, 1] units, clipped and rounded back to uint8."""
    z = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    return np.clip(np.rint((pixels / 255.0 + sigma * z) * 255.0), 0, 255).astype(np.uint8)


def blurred(pixels: np.ndarray, radius: float) -> np.ndarray:
    out = [np.asarray(Image.fromarray(p[0]).filter(ImageFilter.GaussianBlur(radius)))[None] for p in pixels]
    return np.stack(out)


def inception_rate(n: int = 100, batch: int = 50) -> tuple[float, float]:
    """Images per second of the Inception forward pass (with resize), after one warm-up batch: per second of
    wall time, and per second of this process's CPU time (with one thread, the rate of a quiet core)."""
    net = Inception()
    x = np.random.default_rng(0).integers(0, 256, (n + batch, 1, 28, 28), dtype=np.uint8)
    net.features(x[:batch], batch_size=batch)
    t0, c0 = time.perf_counter(), time.process_time()
    net.features(x[batch:], batch_size=batch)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def row_specs(num: int, more_floors: list[int]) -> list[tuple[str, str]]:
    """(label, name) of every row, most informative first (an interrupted run keeps the rows it finished)."""
    rows = [("floor: train images", f"floor-{num}")]
    rows += [(f"train + noise σ={s}", f"noise{s}-{num}") for s in (0.05, 0.1, 0.2)]
    rows += [("train, blur radius 1", f"blur1.0-{num}")]
    rows += [("floor: train images", f"floor-{n}") for n in more_floors]
    rows += [("train, blur radius 0.5", f"blur0.5-{num}")]
    return rows


def row_pixels(name: str, train: np.ndarray, num: int) -> np.ndarray:
    """The uint8 (N, 1, 28, 28) images of row ``name``: a seeded subset of the train split, perturbed."""
    kind, n = name.rsplit("-", 1)
    base = train[subset_indices(len(train), int(n), seed=7)]
    if kind.startswith("noise"):
        return noisy(base, float(kind[5:]), seed=1)
    if kind.startswith("blur"):
        return blurred(base, float(kind[4:]))
    return base


def write_report(specs: list[tuple[str, str]], args: argparse.Namespace, rates: tuple[float, float]) -> None:
    """benchmarks/results/fid_scale.{json,md} from the eval.json of every row scored so far."""
    results = []
    for label, name in specs:
        f = ROWS_CACHE / name / "eval.json"
        if f.is_file():
            rec = json.loads(f.read_text())
            results.append(
                {
                    "row": label,
                    "name": name,
                    "num": rec["protocol"]["generated"]["num"],
                    **rec["metrics"],
                    "eval_seconds": rec["seconds"],
                }
            )
    rate = rates[1]
    report = {
        "rows": results,
        "ref": f"Fashion-MNIST test split, {args.ref_num} images (seeded subset)",
        "inception_images_per_wall_s": rates[0],
        "inception_images_per_cpu_s": rate,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "extrapolated_minutes": {str(n): n / rate / 60 for n in (1000, 10000, 50000)},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fid_scale.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| images | N | FID | KID ± std | precision | recall |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['row']} | {r['num']} | {r['fid']:.2f} | {r['kid']:.4f} ± {r['kid_std']:.4f} | "
        f"{r['precision']:.3f} | {r['recall']:.3f} |"
        for r in results
    ]
    lines.append("")
    lines.append(
        f"Inception-v3 on {args.threads} thread(s): {rate:.2f} images per CPU-second "
        f"({rates[0]:.2f} per wall-clock second on the shared machine) → "
        + ", ".join(f"{n // 1000}k images ≈ {n / rate / 60:.0f} min" for n in (1000, 10000, 50000))
        + " of one core (extrapolated)"
    )
    (RESULTS / "fid_scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref-num", type=int, default=2000, help="test-split reference images (default 2000)")
    p.add_argument("--num", type=int, default=1000, help="N of the first floor row and the noise and blur rows")
    p.add_argument("--more-floors", default="2000", help="N of further floor rows, comma-separated")
    p.add_argument("--only", default=None, help="score only these rows (names such as floor-2000, comma-separated)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="score nothing: measure the Inception speed and write the report from the rows scored",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ROWS_CACHE.mkdir(parents=True, exist_ok=True)
    specs = row_specs(args.num, [int(n) for n in args.more_floors.split(",") if n])
    rates = inception_rate()
    log(f"Inception: {rates[0]:.2f} img/s (wall), {rates[1]:.2f} img/s (CPU time) on {args.threads} thread(s)")
    if args.report_only:
        write_report(specs, args, rates)
        return
    train = to_pixels(load_dataset("fashion-mnist").images)  # (60000, 1, 28, 28) uint8
    only = None if args.only is None else set(args.only.split(","))
    for label, name in specs:
        if only is not None and name not in only:
            continue
        npz = ROWS_CACHE / f"{name}.npz"
        np.savez_compressed(npz, images=row_pixels(name, train, args.num).transpose(0, 2, 3, 1))
        out = ROWS_CACHE / name
        argv = [
            "eval",
            "--samples",
            str(npz),
            "--data",
            "fashion-mnist",
            "--ref-split",
            "test",
            "--ref-num",
            str(args.ref_num),
            "--metrics",
            "fid,kid,pr",
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
        ]
        log("ddpm " + " ".join(argv))
        assert ddpm_main(argv) == 0
        m = json.loads((out / "eval.json").read_text())["metrics"]
        log(f"{label} ({name}): FID {m['fid']:.2f}, KID {m['kid']:.4f}, P {m['precision']:.3f}, R {m['recall']:.3f}")
        write_report(specs, args, rates)


if __name__ == "__main__":
    main()
