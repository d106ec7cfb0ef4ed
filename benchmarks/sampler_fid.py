"""Sampler settings on one trained model, scored by standard Inception FID: one ``ddpm eval`` per setting.

    python benchmarks/sampler_fid.py --checkpoint RUN --num 1000 \\
        --config "default=" --config "no-clip=--no-clip" --config "ddpm-100=--sampler ddpm --steps 100"

Each ``--config NAME=FLAGS`` is ``ddpm eval --checkpoint RUN --num N FLAGS`` (the ``ddpm sample`` flags:
sampler, spacing, steps, eta, options, clipping) against ``--ref-num`` images of the test split. Image i of
every setting starts from the same seed, so the rows differ only by the sampler. One row per setting goes to
``--results`` with its flags, the wall time of sampling and scoring, and the scores. The scores do not depend
on the machine's load (the wall times do), so settings may run in several processes side by side.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from harness import DDPM, RESULTS, add_scoring_args, append_row, reference_flags, run_command


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint file")
    p.add_argument(
        "--config",
        action="append",
        required=True,
        metavar="NAME=FLAGS",
        help="a named setting: ddpm sample flags after the '=' (empty: the defaults); repeatable",
    )
    add_scoring_args(p)
    p.add_argument("--out", default=None, help="folder for each setting's eval (default: CHECKPOINT/sampler-fid)")
    p.add_argument("--results", type=Path, default=RESULTS / "sampler_fid.jsonl")
    args = p.parse_args()
    configs = []
    for c in args.config:
        name, sep, flags = c.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"error: --config {c!r} is not NAME=FLAGS")
        configs.append((name.strip(), shlex.split(flags)))
    ckpt = Path(args.checkpoint)
    base = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "sampler-fid"
    for name, flags in configs:
        out = base / f"{name}-{args.num}"
        wall = run_command(
            [
                DDPM,
                "eval",
                "--checkpoint",
                str(ckpt),
                "--num",
                str(args.num),
                *flags,
                *reference_flags(args),
                "--out",
                str(out),
                "--quiet",
                "--overwrite",
            ],
            args.threads,
        ).wall_s
        result = json.loads((out / "eval.json").read_text())
        row = {
            "checkpoint": str(ckpt),
            "config": name,
            "flags": flags,
            "num": args.num,
            "ref_split": args.ref_split,
            "ref_num": args.ref_num,
            "scores": result.get("metrics"),
            "wall_s": round(wall, 1),
            "threads": args.threads,
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        append_row(args.results, row)


if __name__ == "__main__":
    main()
