"""What glibc's allocator settings cost the ``ddpm`` commands on a CPU: held freed memory (``ddpm``'s default, see
``ddpm.runtime.hold_freed_memory``) against glibc's own behaviour (``DDPM_MALLOC=system``), in one run.

    python benchmarks/malloc.py --out runs/malloc

Each command runs ``--repeats`` times each way, alternating, on the same inputs: ``ddpm train`` (Fashion-MNIST,
``--steps`` steps; images/s from its metrics.jsonl, start-up excluded), ``ddpm sample`` (``--num`` images in one
batch, the default sampler) and ``ddpm eval`` (Inception FID of 1,000 samples against 2,000 test images, the
reference statistics cached beforehand). Both ways must compute the same thing: the script checks that the trained
weights, the drawn images and the FID are identical, and stops otherwise. One JSON line per command goes to
``--results``; nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
from quality_per_minute import BIN, RESULTS, _env, append_row
from safetensors.numpy import load_file
from throughput import cpu_model

WAYS = {"system": {"DDPM_MALLOC": "system"}, "held": {}}


def timed(cmd: list[str], way: str, threads: int, peaks: dict[str, list[float]] | None = None) -> float:
    """Run a ``ddpm`` command with one allocator setting; its wall time in seconds (its peak resident memory in MB
    appended to ``peaks[way]``)."""
    print(f"$ [{way}] " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**_env(threads), **WAYS[way]}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"exit status {proc.returncode}: " + " ".join(cmd))
    if peaks is not None:
        peaks[way].append(round(usage.ru_maxrss / 1024))  # Linux reports kilobytes
    return wall


def weights(run: Path) -> dict[str, np.ndarray]:
    """Every tensor of the run's last checkpoint (its metadata holds wall times, so it is left out)."""
    return load_file(str(sorted((run / "checkpoints").glob("*.safetensors"))[-1]))


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def bench_train(out: Path, args: argparse.Namespace) -> dict:
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    peaks: dict[str, list[float]] = {w: [] for w in WAYS}
    speed: dict[str, list[float]] = {w: [] for w in WAYS}
    first: dict[str, np.ndarray] | None = None
    for i in range(args.repeats):
        for way in WAYS:
            run = out / f"train-{way}-{i}"
            shutil.rmtree(run, ignore_errors=True)
            cmd = [str(BIN / "ddpm"), "train", "--data", "fashion-mnist", "--steps", str(args.steps), "--out",
                   str(run), "--quiet"]
            walls[way].append(timed(cmd, way, args.threads, peaks))
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            speed[way].append(last["images_per_s"])
            w = weights(run)
            if first is None:
                first = w
            elif not same(first, w):
                raise SystemExit(f"train-{way}-{i} trained other weights than the first run: allocator changed maths")
    return {"command": f"ddpm train --data fashion-mnist --steps {args.steps}", "wall_s": walls, "peak_rss_mb": peaks,
            "images_per_s": speed, "identical": True}


def bench_sample(out: Path, args: argparse.Namespace) -> dict:
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    peaks: dict[str, list[float]] = {w: [] for w in WAYS}
    first: np.ndarray | None = None
    for i in range(args.repeats):
        for way in WAYS:
            npz = out / f"sample-{way}-{i}.npz"
            cmd = [str(BIN / "ddpm"), "sample", "--checkpoint", str(out / "train-held-0"), "--num", str(args.num),
                   "--batch-size", str(args.num), "--out", str(out / f"sample-{way}-{i}"), "--npz", str(npz),
                   "--overwrite", "--quiet"]
            walls[way].append(timed(cmd, way, args.threads, peaks))
            with np.load(npz) as z:
                images = z[z.files[0]]
            if first is None:
                first = images
            elif not np.array_equal(first, images):
                raise SystemExit(f"{npz} differs from the first run's images: allocator changed maths")
    return {"command": f"ddpm sample --num {args.num} --batch-size {args.num} (default sampler, 20 steps)",
            "wall_s": walls, "peak_rss_mb": peaks, "identical": True}


def bench_eval(out: Path, args: argparse.Namespace) -> dict:
    npz = out / "eval-samples.npz"
    base = [str(BIN / "ddpm"), "eval", "--data", "fashion-mnist", "--ref-split", "test", "--ref-num", "2000",
            "--metrics", "fid", "--cache-dir", str(out / "cache"), "--quiet"]
    timed([str(BIN / "ddpm"), "sample", "--checkpoint", str(out / "train-held-0"), "--num", "1000", "--out",
           str(out / "eval-samples"), "--npz", str(npz), "--overwrite", "--quiet"], "held", args.threads)
    timed([*base, "--samples", str(npz), "--out", str(out / "eval-warm")], "held", args.threads)  # cache
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    peaks: dict[str, list[float]] = {w: [] for w in WAYS}
    fids = set()
    for i in range(args.repeats):
        for way in WAYS:
            result = out / f"eval-{way}-{i}"
            walls[way].append(timed([*base, "--samples", str(npz), "--out", str(result), "--overwrite"], way,
                                    args.threads, peaks))
            fids.add(json.loads((result / "eval.json").read_text())["metrics"]["fid"])
    if len(fids) != 1:
        raise SystemExit(f"FID differs between runs ({sorted(fids)}): allocator changed maths")
    return {"command": "ddpm eval --samples (1,000) --metrics fid --ref-num 2000 (reference cached)",
            "wall_s": walls, "peak_rss_mb": peaks, "fid": fids.pop(), "identical": True}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/malloc"))
    p.add_argument("--results", type=Path, default=RESULTS / "malloc.jsonl")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for bench in (bench_train, bench_sample, bench_eval):
        row = bench(args.out, args)
        medians = {w: statistics.median(v) for w, v in row["wall_s"].items()}
        row.update(cpu=cpu_model(), threads=args.threads, median_wall_s=medians,
                   speedup=round(medians["system"] / medians["held"], 2))
        append_row(args.results, row)


if __name__ == "__main__":
    main()
