"""Super-resolution and cascades on Fashion-MNIST, against Lanczos, in one run on one machine.

    python benchmarks/cascade.py [--minutes 25] [--splits 10,15] [--levels 0,0.05] [--projects on,off] [--seeds 0,1]
        [--sr-seeds 0,1] [--num 1000] [--ref-num 2000] [--parts sr,noaug,cascade] [--runs runs/cascade]

Trains, each for its share of ``--minutes`` of this machine (nothing else may run meanwhile):
(a) super-resolution x2 (14 -> 28) and x4 (7 -> 28) with the default network and conditioning augmentation;
(b) x2 without conditioning augmentation (``--cond-noise-max 0``);
(c) cascades of a 14 px base (``--image-size 14 --channel-mult 1,2``) and a x2 stage that share ``--minutes``, split
    ``--splits`` ways (the base's minutes), against the direct 28 px default model (``ddpm train --minutes``).
``--parts`` picks some of them: sr is (a), noaug (b), cascade (c).
Then scores everything by ``ddpm eval`` (standard Inception FID of ``--num`` images against ``--ref-num`` test images):
first the cascades at each sampling-time augmentation level of ``--levels`` and each of ``--projects`` (x̂_0 projected
onto the low image, ``ddpm sample``'s default, or not: ``--no-project``) with seed 0, then the best cascade and the
direct model with every seed of ``--seeds``, then the super-resolution models on the test split's low images (PSNR,
SSIM, consistency, FID; Lanczos in the same table) at the best level, with and without the projection. Rows go to
benchmarks/results/cascade.jsonl, the table of that ``--minutes`` to cascade-<minutes>min.md, and a picture (low |
x4 samples | truth) to docs/super-resolution.png. Finished runs in ``--runs`` are reused (a stopped benchmark
continues).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from harness import DDPM, REPO, RESULTS, append_row, cpu_model, run_command

from ddpm.cascade import Stage, cascade
from ddpm.checkpoint import list_checkpoints
from ddpm.conditioning import low_of
from ddpm.data.load import load_dataset
from ddpm.images import make_grid, pixels_to_unit, save_png, to_uint8

ROWS = RESULTS / "cascade.jsonl"
PICTURE = REPO / "docs" / "super-resolution.png"


def train(run: Path, minutes: float, flags: list[str], threads: int) -> Path:
    """``ddpm train --data fashion-mnist --minutes M`` with ``flags`` into ``run`` (reused when it holds a run)."""
    if list_checkpoints(run):
        print(f"reusing {run}", flush=True)
        return run
    run_command([DDPM, "train", "--data", "fashion-mnist", "--minutes", f"{minutes:g}", *flags, "--out", str(run),
                 "--quiet"], threads)  # fmt: skip
    return run


def evaluate(args: argparse.Namespace, name: str, out: Path, flags: list[str], seed: int) -> dict:
    """``ddpm eval`` with ``flags`` (its checkpoint and stages) and seed, against the test split; one row appended
    when it ran (a reused evaluation's row is already in the results)."""
    ran = not (out / "eval.json").is_file()
    if ran:
        run_command([DDPM, "eval", *flags, "--data", "fashion-mnist", "--ref-split", "test", "--ref-num",
                     str(args.ref_num), "--num", str(args.num), "--metrics", "fid", "--seed", str(seed), "--out",
                     str(out), "--quiet", "--overwrite"], args.threads)  # fmt: skip
    record = json.loads((out / "eval.json").read_text())
    row = {"row": name, "seed": seed, "flags": flags, "metrics": record["metrics"], "seconds": record["seconds"],
           "cpu": cpu_model(), "minutes": args.minutes}  # fmt: skip
    if ran or not any((r["row"], r["seed"], r.get("minutes")) == (name, seed, args.minutes) for r in kept_rows()):
        append_row(ROWS, row)
    return row


def kept_rows() -> list[dict]:
    """The rows of benchmarks/results/cascade.jsonl, oldest first (none before the first run)."""
    return [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.is_file() else []


def trained(args: argparse.Namespace) -> dict[str, Path]:
    """Every run of the comparison's ``--parts``, trained (or reused): name -> run directory."""
    runs, m, t = Path(args.runs), args.minutes, args.threads
    sr = ["--task", "super-resolution"]
    out = {}
    if "sr" in args.parts:
        out["sr2"] = train(runs / "sr2", m, [*sr, "--scale", "2"], t)
        out["sr4"] = train(runs / "sr4", m, [*sr, "--scale", "4"], t)
    if "noaug" in args.parts:
        out["sr2-noaug"] = train(runs / "sr2-noaug", m, [*sr, "--scale", "2", "--cond-noise-max", "0"], t)
    if "cascade" not in args.parts:
        return out
    out["direct"] = train(runs / "direct", m, [], t)
    for base_minutes in args.splits:
        out[f"base-{base_minutes:g}"] = train(runs / f"base-{base_minutes:g}", base_minutes,
                                              ["--image-size", "14", "--channel-mult", "1,2"], t)  # fmt: skip
        out[f"sr2-{m - base_minutes:g}"] = train(runs / f"sr2-{m - base_minutes:g}", m - base_minutes,
                                                 [*sr, "--scale", "2"], t)  # fmt: skip
    return out


def fid(row: dict) -> float:
    """A row's FID: the model's (a conditioned evaluation's table holds the baselines beside it)."""
    m = row["metrics"]
    return float(m["conditioned"]["model"]["fid"] if "conditioned" in m else m["fid"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=25.0)
    p.add_argument("--splits", type=lambda s: [float(v) for v in s.split(",")], default=[10.0, 15.0])
    p.add_argument("--levels", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.05])
    p.add_argument(
        "--projects",
        type=lambda s: [v.strip() == "on" for v in s.split(",")],
        default=[True, False],
        help="on: sample with x0 projected onto the low image (the default of ddpm sample); off: --no-project",
    )
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1])
    p.add_argument(
        "--sr-seeds",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="the sample seeds of the super-resolution rows (default: --seeds)",
    )
    p.add_argument("--num", type=int, default=1000)
    p.add_argument(
        "--parts",
        type=lambda s: s.split(","),
        default=["sr", "noaug", "cascade"],
        help="which comparisons: sr (x2, x4 against Lanczos), noaug (conditioning augmentation off), cascade",
    )
    p.add_argument("--ref-num", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default="runs/cascade")
    args = p.parse_args()
    runs, evals = trained(args), Path(args.runs) / "eval"
    level = args.levels[0]  # the super-resolution rows' level where no cascade picks one
    if "cascade" in args.parts:
        level = compare_cascades(args, runs, evals)
    # (a), (b): the super-resolution models on the test split's low images, at the best level.
    for key in [k for k in ("sr2", "sr4", "sr2-noaug") if k in runs]:
        for project in args.projects:
            said, tag, off = projection(project)
            for seed in args.sr_seeds or args.seeds:
                flags = ["--checkpoint", str(runs[key]), "--cond-noise", f"{level:g}", *off]
                evaluate(args, key + said, evals / f"{key}{tag}-s{seed}", flags, seed)
    if "sr4" in runs:
        picture(runs["sr4"], level)
    report(args)


def compare_cascades(args: argparse.Namespace, runs: dict[str, Path], evals: Path) -> float:
    """(c): the cascades at each level and projection (seed 0), then the best with every seed, and the direct model
    with every seed; the best cascade's level."""
    cascades = {}
    for base_minutes in args.splits:
        stage = f"sr2-{args.minutes - base_minutes:g}"
        for level in args.levels:
            for project in args.projects:
                name = (f"cascade base {base_minutes:g} + x2 {args.minutes - base_minutes:g} min, cond-noise {level:g}"
                        + projection(project)[0])  # fmt: skip
                # the x2 stage's own setting: a later stage is not projected unless it says project=1
                flags = ["--checkpoint", str(runs[f"base-{base_minutes:g}"]), "--then",
                         f"{runs[stage]}:project={int(project)}", "--cond-noise", f"{level:g}"]  # fmt: skip
                key = f"cascade-{base_minutes:g}-{level:g}{projection(project)[1]}"
                row = evaluate(args, name, evals / f"{key}-s0", flags, args.seeds[0])
                cascades[key] = (name, flags, row, level)
    best = min(cascades, key=lambda k: fid(cascades[k][2]))
    name, flags, _, level = cascades[best]
    for seed in args.seeds[1:]:
        evaluate(args, name, evals / f"{best}-s{seed}", flags, seed)
    for seed in args.seeds:
        evaluate(args, "direct 28 px, the default", evals / f"direct-s{seed}", ["--checkpoint", str(runs["direct"])],
                 seed)  # fmt: skip
    return level


def projection(project: bool) -> tuple[str, str, list[str]]:
    """How a row without the x̂_0 projection is named, its eval folder's suffix and its flag; empty when projected."""
    return ("", "", []) if project else (", no projection", "-noproj", ["--no-project"])


def picture(run: Path, level: float) -> None:
    """docs/super-resolution.png: eight test images, each a row of its 7 px view (enlarged), three x4 samples, truth."""
    test = load_dataset("fashion-mnist", None, split="test").as_uint8()
    truth = torch.from_numpy(test[[0, 1, 2, 3, 4, 5, 6, 7] if len(test) >= 8 else list(range(len(test)))])
    low = low_of(truth, 4)
    stage = Stage.open(run, cond_noise=level)
    samples = [cascade([stage], conditions=low, keys=list(range(len(low))), seed=s) for s in range(3)]
    shown = pixels_to_unit(low.repeat_interleave(4, -1).repeat_interleave(4, -2))
    rows = torch.stack([shown, *samples, pixels_to_unit(truth)], 1).flatten(0, 1)
    save_png(PICTURE, make_grid(to_uint8(rows), nrow=5, pad_value=255, scale=2))
    print(f"wrote {PICTURE}", flush=True)


def report(args: argparse.Namespace) -> None:
    """cascade.md: per row, the FID of each seed, their mean and spread, and the conditioned evaluations' tables."""
    rows = [r for r in kept_rows() if r.get("minutes") == args.minutes]
    lines = ["| row | seeds | FID (mean) | FID per seed | PSNR | SSIM | consistency |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["row"] for r in rows):
        mine = {r["seed"]: r for r in rows if r["row"] == name}
        fids = [fid(r) for r in mine.values()]
        first = next(iter(mine.values()))["metrics"]
        cells = ["", "", ""]
        if "conditioned" in first:
            m = first["conditioned"]["model"]
            cells = [f"{m['psnr']:.2f}", f"{m['ssim']:.3f}", f"{m.get('consistency', float('nan')):.2f}"]
        lines.append(f"| {name} | {len(fids)} | {statistics.mean(fids):.2f} | {', '.join(f'{v:.2f}' for v in fids)} | "
                     + " | ".join(cells) + " |")  # fmt: skip
        if "conditioned" in first:
            for base in [k for k in first["conditioned"] if k != "model"]:
                b = [r["metrics"]["conditioned"][base] for r in mine.values()]
                consistent = b[0].get("consistency", float("nan"))
                lines.append(f"| {name}: {base} | {len(b)} | {np.mean([x['fid'] for x in b]):.2f} | | "
                             f"{b[0]['psnr']:.2f} | {b[0]['ssim']:.3f} | {consistent:.2f} |")  # fmt: skip
    head = f"CPU: {cpu_model()}; {args.minutes:g} minutes per model or cascade\n\n"
    (RESULTS / f"cascade-{args.minutes:g}min.md").write_text(head + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
