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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from harness import DDPM, RESULTS, append_row, child_env, cpu_model
from safetensors.numpy import load_file

WAYS = {"system": {"DDPM_MALLOC": "system"}, "held": {}}


def timed(cmd: list[str], way: str, threads: int, peaks: dict[str, list[float]] | None = None) -> float:
    """Run a ``ddpm`` command with one allocator setting; its wall time in seconds (its peak resident memory in MB
    appended to ``peaks[way]``)."""
    print(f"$ [{way}] " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**child_env(threads), **WAYS[way]}, stdout=subprocess.DEVNULL)
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


def alternate(
    args: argparse.Namespace,
    command: Callable[[str, int], list[str]],
    result: Callable[[str, int], dict[str, np.ndarray]],
) -> dict:
    """Run ``command(way, i)`` for each repeat i, both ways in turn; stop unless every ``result(way, i)`` (named
    arrays) equals the first run's bit for bit. Wall times and peak memory by way."""
    walls: dict[str, list[float]] = {w: [] for w in WAYS}
    peaks: dict[str, list[float]] = {w: [] for w in WAYS}
    first: dict[str, np.ndarray] | None = None
    for i in range(args.repeats):
        for way in WAYS:
            walls[way].append(timed(command(way, i), way, args.threads, peaks))
            got = result(way, i)
            first = got if first is None else first
            if got.keys() != first.keys() or not all(np.array_equal(got[k], first[k]) for k in got):
                raise SystemExit(f"{way} run {i} computed other numbers than the first run: allocator changed maths")
    return {"wall_s": walls, "peak_rss_mb": peaks, "identical": True}


def bench_train(out: Path, args: argparse.Namespace) -> dict:
    def command(way: str, i: int) -> list[str]:
        shutil.rmtree(out / f"train-{way}-{i}", ignore_errors=True)
        return [
            DDPM,
            "train",
            "--data",
            "fashion-mnist",
            "--steps",
            str(args.steps),
            "--out",
            str(out / f"train-{way}-{i}"),
            "--quiet",
        ]

    row = alternate(args, command, lambda way, i: weights(out / f"train-{way}-{i}"))
    speed = {
        w: [
            json.loads((out / f"train-{w}-{i}" / "metrics.jsonl").read_text().splitlines()[-1])["images_per_s"]
            for i in range(args.repeats)
        ]
        for w in WAYS
    }
    return {"command": f"ddpm train --data fashion-mnist --steps {args.steps}", **row, "images_per_s": speed}


def bench_sample(out: Path, args: argparse.Namespace) -> dict:
    def command(way: str, i: int) -> list[str]:
        return [
            DDPM,
            "sample",
            "--checkpoint",
            str(out / "train-held-0"),
            "--num",
            str(args.num),
            "--batch-size",
            str(args.num),
            "--out",
            str(out / f"sample-{way}-{i}"),
            "--npz",
            str(out / f"sample-{way}-{i}.npz"),
            "--overwrite",
            "--quiet",
        ]

    def images(way: str, i: int) -> dict[str, np.ndarray]:
        with np.load(out / f"sample-{way}-{i}.npz") as z:
            return {"images": z["images"]}

    return {
        "command": f"ddpm sample --num {args.num} --batch-size {args.num} (default sampler, 20 steps)",
        **alternate(args, command, images),
    }


def bench_eval(out: Path, args: argparse.Namespace) -> dict:
    npz = out / "eval-samples.npz"
    base = [
        DDPM,
        "eval",
        "--data",
        "fashion-mnist",
        "--ref-split",
        "test",
        "--ref-num",
        "2000",
        "--metrics",
        "fid",
        "--cache-dir",
        str(out / "cache"),
        "--quiet",
        "--samples",
        str(npz),
        "--overwrite",
    ]
    timed(
        [
            DDPM,
            "sample",
            "--checkpoint",
            str(out / "train-held-0"),
            "--num",
            "1000",
            "--out",
            str(out / "eval-samples"),
            "--npz",
            str(npz),
            "--overwrite",
            "--quiet",
        ],
        "held",
        args.threads,
    )
    timed([*base, "--out", str(out / "eval-warm")], "held", args.threads)  # the reference's features, cached

    def fid(way: str, i: int) -> dict[str, np.ndarray]:
        return {"fid": np.array(json.loads((out / f"eval-{way}-{i}" / "eval.json").read_text())["metrics"]["fid"])}

    row = alternate(args, lambda way, i: [*base, "--out", str(out / f"eval-{way}-{i}")], fid)
    return {
        "command": "ddpm eval --samples (1,000) --metrics fid --ref-num 2000 (reference cached)",
        **row,
        "fid": float(fid("held", 0)["fid"]),
    }


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
        row.update(
            cpu=cpu_model(),
            threads=args.threads,
            median_wall_s=medians,
            speedup=round(medians["system"] / medians["held"], 2),
        )
        append_row(args.results, row)


if __name__ == "__main__":
    main()
