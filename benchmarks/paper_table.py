"""The DDPM paper's Table 2 (and improved DDPM's objectives) trained and measured on Fashion-MNIST at equal steps.

    python benchmarks/paper_table.py --steps 1000 --num 1000 --seeds 0,1 --other-seeds 0 --ancestral-steps 50 \\
        --compare-steps 50,100 --default-rows eps-simple,eps-hybrid --nll-num 32 --runs runs/paper-table

(the measured protocol in BENCHMARKS.md, about two hours on a 2-core CPU; the defaults are the fuller one).

Each row trains ``ddpm train --data fashion-mnist --steps S`` with ddpm's default recipe (network, optimiser, EMA,
bf16 where native: the same for every row) and the row's prediction target, objective and reverse variance:

=====================  ============  ==========  ===============  ======================  ==========================
row                    prediction    loss        variance         paper (CIFAR-10 FID)    source
=====================  ============  ==========  ===============  ======================  ==========================
mean-vlb-learned       μ̃             L (vlb)     learned          23.69                   Ho et al. 2020, Table 2
mean-vlb-fixed         μ̃             L (vlb)     fixed-large      13.22                   Table 2 (σ² = β_t)
mean-mse               μ̃             MSE         fixed-large      unstable                Table 2
eps-vlb-learned        ε             L (vlb)     learned          unstable                Table 2
eps-vlb-fixed          ε             L (vlb)     fixed-large      13.51                   Table 2
eps-simple             ε             L_simple    fixed-small      3.17 (σ² = β_t)         Table 2; ddpm's default
eps-hybrid             ε             L_hybrid    learned-range    (about L_simple's)      Nichol & Dhariwal 2021
eps-vlb-importance     ε             L (vlb)     learned-range    (worse FID, best NLL)   improved DDPM §3.3
=====================  ============  ==========  ===============  ======================  ==========================

A row whose loss becomes non-finite stops there (``--nonfinite stop``) and is reported as diverged, with its loss
curve. Every finished row is then measured:

- **bits/dim**: ``ddpm eval --nll`` (the variational bound with the row's own Σ, all T steps) on ``--nll-num``
  test images, the same seeded subset for every row;
- **FID**: for each of ``--seeds`` (``--other-seeds`` for rows outside ``--compare-rows``), ``--num`` samples
  scored by ``ddpm eval --samples`` (standard Inception FID against ``--ref-num`` images of ``--ref-split``, test by
  default), drawn with ancestral sampling (``--sampler ddpm``, the paper's sampler, at ``--ancestral-steps``
  respaced steps, with the row's Σ) and with the default sampler (the rows in ``--default-rows``: all by default);
- for the rows in ``--compare-rows``: ancestral sampling at each of ``--compare-steps``, to set a learned Σ against
  a fixed one at few steps (improved DDPM's Figure 8 claim).

Rows go to ``--results`` (JSON lines) and the loss curves to ``<results>.png``; ``--report`` prints the Markdown
table from the JSON lines. Runs live in ``--runs`` and are reused when they hold the final checkpoint. Scores do
not depend on the machine's load (equal steps, seeded), but the wall times recorded do.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from harness import DDPM, RESULTS, append_row, run_command

from ddpm.images import plot_curve, save_png

ROWS: dict[str, tuple[list[str], str]] = {
    "mean-vlb-learned": (["--prediction", "mean", "--loss", "vlb", "--variance", "learned"], "23.69"),
    "mean-vlb-fixed": (["--prediction", "mean", "--loss", "vlb", "--variance", "fixed-large"], "13.22"),
    "mean-mse": (["--prediction", "mean", "--loss", "simple", "--variance", "fixed-large"], "unstable"),
    "eps-vlb-learned": (["--loss", "vlb", "--variance", "learned"], "unstable"),
    "eps-vlb-fixed": (["--loss", "vlb", "--variance", "fixed-large"], "13.51"),
    "eps-simple": ([], "3.17"),
    "eps-hybrid": (["--loss", "hybrid", "--variance", "learned-range"], "–"),
    "eps-vlb-importance": (["--loss", "vlb", "--variance", "learned-range", "--t-sampling", "importance"], "–"),
}


# glibc returns every freed block above its mmap threshold to the system, so each forward pass of a large batch
# page-faults its activations in again: sampling spent half its time in the kernel. Holding freed memory instead
# made 20-step sampling of 256 images 1.8x faster and Inception scoring 1.7x (AMD EPYC, 2 threads); the numbers
# drawn are the same. Set in the environment, these take the place of ddpm's own, smaller hold_freed_memory().
MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def _run(cmd: list[str], threads: int, check: bool = True) -> tuple[int, float]:
    """Run ``cmd`` with glibc holding freed memory (MALLOC); its exit status and wall time."""
    return run_command(cmd, threads, check=check, extra_env=MALLOC)


def _checkpoint_step(run: Path) -> int | None:
    found = sorted((run / "checkpoints").glob("*.safetensors")) if (run / "checkpoints").exists() else []
    return int(found[-1].stem.split("-")[-1]) if found else None


def train_row(run: Path, flags: list[str], args: argparse.Namespace) -> dict:
    """Train (or reuse) one row; its steps, loss curve and whether it diverged."""
    wall, rc = math.nan, 0
    if _checkpoint_step(run) != args.steps:
        rc, wall = _run(
            [
                DDPM,
                "train",
                "--data",
                args.data,
                "--steps",
                str(args.steps),
                "--out",
                str(run),
                "--log-every",
                "10",
                "--sample-every",
                "0",
                "--checkpoint-every",
                str(args.steps),
                "--nonfinite",
                "stop",
                "--quiet",
                "--seed",
                str(args.train_seed),
                *flags,
                *(["--resume"] if (run / "checkpoints").exists() else []),
            ],
            args.threads,
            check=False,
        )
    log = run / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if _checkpoint_step(run) != args.steps and not (rc == 2 and records):  # exit 2 after logging: non-finite
        raise SystemExit(f"training {run.name} failed with exit code {rc} before it trained (see its message above)")
    curve = [(r["step"], r["loss"]) for r in records]
    finished = _checkpoint_step(run) == args.steps
    return {
        "steps": records[-1]["step"] if records else 0,
        "diverged": not finished,
        "train_wall_s": wall,
        "images_per_s": records[-1]["images_per_s"] if records else math.nan,
        "loss_curve": curve,
    }


def nll(run: Path, args: argparse.Namespace) -> dict:
    out = run / f"nll-{args.nll_num}"
    if not (out / "eval.json").exists():
        _run(
            [
                DDPM,
                "eval",
                "--checkpoint",
                str(run),
                "--data",
                args.data,
                "--nll",
                "--nll-num",
                str(args.nll_num),
                "--out",
                str(out),
                "--quiet",
            ],
            args.threads,
        )
    return json.loads((out / "eval.json").read_text())["metrics"]["nll"]


def fid(run: Path, name: str, seed: int, sampler: list[str], args: argparse.Namespace) -> float:
    """Inception FID of ``--num`` samples of ``seed`` drawn with ``sampler`` flags."""
    npz = run / f"{name}-seed{seed}-{args.num}.npz"
    if not npz.exists():
        _run(
            [
                DDPM,
                "sample",
                "--checkpoint",
                str(run),
                "--num",
                str(args.num),
                "--seed",
                str(seed),
                "--out",
                str(run / f"{name}-seed{seed}"),
                "--npz",
                str(npz),
                "--quiet",
                "--overwrite",
                *sampler,
            ],
            args.threads,
        )
    out = run / f"eval-{name}-seed{seed}-{args.num}"
    if not (out / "eval.json").exists():
        _run(
            [
                DDPM,
                "eval",
                "--samples",
                str(npz),
                "--data",
                args.data,
                "--ref-split",
                args.ref_split,
                "--ref-num",
                str(args.ref_num),
                "--metrics",
                "fid",
                "--out",
                str(out),
                "--quiet",
            ],
            args.threads,
        )
    return float(json.loads((out / "eval.json").read_text())["metrics"]["fid"])


def measure(run: Path, row: str, args: argparse.Namespace) -> dict:
    compared = row in args.compare_rows.split(",")
    seeds = [int(s) for s in (args.seeds if compared or args.other_seeds is None else args.other_seeds).split(",")]
    paths = {f"ancestral-{args.ancestral_steps}": ["--sampler", "ddpm", "--steps", str(args.ancestral_steps)]}
    if args.default_rows is None or row in args.default_rows.split(","):
        paths["default"] = []
    if compared:
        for k in (int(v) for v in args.compare_steps.split(",") if v):
            paths[f"ancestral-{k}"] = ["--sampler", "ddpm", "--steps", str(k)]
    scores = {}
    for name, flags in paths.items():
        values = [fid(run, name, s, flags, args) for s in seeds]
        scores[name] = {"fid": values, "mean": statistics.fmean(values)}
    return {"fid": scores, "nll": nll(run, args) if args.nll_num else None}


def report(results: Path) -> str:
    """The Markdown table of the newest row of each name in ``results``."""
    rows: dict[str, dict] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["row"]] = r
    paths = sorted({p for r in rows.values() for p in (r.get("fid") or {})}, key=lambda p: (p == "default", p))
    head = [
        "row",
        "flags",
        "paper FID",
        "steps",
        "bits/dim (± s.e.)",
        "− eps-simple's, paired (± s.e.)",
        *[f"FID {p}" for p in paths],
    ]
    base = (rows.get("eps-simple") or {}).get("nll") or {}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in ROWS:
        r = rows.get(name)
        if r is None:
            continue
        if r["diverged"]:
            cells = [f"diverged at step {r['steps']}"] + ["–"] * (len(paths) + 1)
        else:
            n = r["nll"]
            cells = [f"{n['bits_per_dim']:.3f} ± {n['bits_per_dim_stderr']:.3f}" if n else "–", _paired(n, base)]
            cells += [
                f"{r['fid'][p]['mean']:.2f} (" + " / ".join(f"{v:.2f}" for v in r["fid"][p]["fid"]) + ")"
                if p in r["fid"]
                else "–"
                for p in paths
            ]
        lines.append(
            f"| {name} | `{' '.join(r['flags']) or '(defaults)'}` | {r['paper']} | {r['steps']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _paired(nll: dict | None, base: dict) -> str:
    """Mean and standard error of this row's bits/dim minus the base row's, image by image (same images, same
    x_t draws), or "–" where either lacks the per-image values."""
    a, b = (nll or {}).get("per_image_bits_per_dim"), base.get("per_image_bits_per_dim")
    if not a or not b or len(a) != len(b) or a is b:
        return "–"
    diff = [x - y for x, y in zip(a, b, strict=True)]
    return f"{statistics.fmean(diff):+.3f} ± {statistics.stdev(diff) / math.sqrt(len(diff)):.3f}"


def plot(results: Path) -> Path:
    """Each row's loss curve (its own units, log scale) in one PNG, a panel per row, drawn by ddpm.images."""
    panels = []
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if len(r["loss_curve"]) >= 2:
            steps, losses = zip(*r["loss_curve"], strict=True)
            state = f"diverged at step {r['steps']}" if r["diverged"] else f"{r['steps']} steps"
            panels.append(
                plot_curve(
                    steps,
                    [abs(v) for v in losses],
                    width=480,
                    height=240,
                    title=f"{r['row']} ({state}): loss, log scale",
                )
            )
    out = results.with_suffix(".png")
    if panels:
        panels += [np.full_like(panels[0], 255)] * (len(panels) % 2)  # two panels per line
        lines = [np.concatenate(panels[i : i + 2], axis=1) for i in range(0, len(panels), 2)]
        save_png(out, np.concatenate(lines, axis=0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    p.add_argument("--steps", type=int, default=5000, help="training steps of every row")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1000, help="samples per FID")
    p.add_argument("--seeds", default="0,1", help="sample seeds, one FID each")
    p.add_argument("--other-seeds", help="sample seeds of the rows not in --compare-rows (default: --seeds)")
    p.add_argument("--default-rows", help="rows sampled with the default sampler too (default: all)")
    p.add_argument("--ref-num", type=int, default=2000, help="images of the FID reference")
    p.add_argument("--ref-split", default="test", help="the reference's split (digits has only train)")
    p.add_argument("--ancestral-steps", type=int, default=100, help="respaced steps of the ancestral sampler")
    p.add_argument("--compare-rows", default="eps-simple,eps-hybrid", help="rows sampled at --compare-steps too")
    p.add_argument("--compare-steps", default="50,100", help="ancestral steps for the learned/fixed comparison")
    p.add_argument("--nll-num", type=int, default=200, help="test images for bits/dim (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/paper-table")
    p.add_argument("--results", default=str(RESULTS / "paper_table.jsonl"))
    p.add_argument("--report", action="store_true", help="print the table of --results and plot its curves")
    args = p.parse_args()
    results = Path(args.results)
    if not args.report:
        names = [n.strip() for n in args.rows.split(",") if n.strip()]
        unknown = [n for n in names if n not in ROWS]
        if unknown:
            sys.exit(f"error: unknown row {unknown[0]!r}: choose from {', '.join(ROWS)}")
        # every row trains first, so a long run has all its rows before any scoring
        trained = {name: train_row(Path(args.runs) / f"{name}-{args.steps}", ROWS[name][0], args) for name in names}
        for name in names:
            flags, paper = ROWS[name]
            run = Path(args.runs) / f"{name}-{args.steps}"
            t0 = time.perf_counter()
            row = {"row": name, "flags": flags, "paper": paper, **trained[name]}
            if not row["diverged"]:
                row.update(measure(run, name, args))
            append_row(
                results,
                {
                    **row,
                    "measure_wall_s": time.perf_counter() - t0,
                    "num": args.num,
                    "ref_num": args.ref_num,
                    "nll_num": args.nll_num,
                    "command": " ".join(sys.argv),
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                },
            )
    print(report(results))
    print(f"loss curves: {plot(results)}")


if __name__ == "__main__":
    main()
