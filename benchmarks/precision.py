"""The automatic precision against both forced ones, as a user meets it: whole ``ddpm train`` runs.

For each case (data, network, batch), ``ddpm train`` runs for ``--steps`` steps (fewer for the photos) three ways,
in turn for ``--rounds`` rounds (the order rotating, so the machine's drift hits each alike): with no precision flag
(the choice ``ddpm train`` makes by timing a few steps of the network here, said in its ``precision:`` line), with
``--bf16`` and with ``--no-bf16``. Each run's images/s is its own ``metrics.jsonl`` figure (the loop's, without the
start-up). The report says, per case, the choice, the medians, and whether the choice is the faster of the two.

    python benchmarks/precision.py [--cases digits,fashion-mnist,photos-64,photos-128] [--steps 150] [--rounds 3]

Nothing else may run on the machine meanwhile. Rows go to benchmarks/results/precision.jsonl; the choice is cached
as ``ddpm train`` caches it (a cache folder of the benchmark's own, made anew for each invocation).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from harness import DDPM, RESULTS, append_row, child_env, cpu_flags, cpu_model, log, photo_crops

# name -> (data, extra ddpm train flags, steps as a share of --steps); photo folders are made by harness.photo_crops
CASES: dict[str, tuple[str, list[str], float]] = {
    "digits": ("digits", [], 1.0),
    "fashion-mnist": ("fashion-mnist", [], 1.0),
    "photos-64": ("photos-64", ["--image-size", "64", "--batch-size", "16"], 0.4),
    "photos-128": ("photos-128", ["--image-size", "128", "--batch-size", "8"], 0.2),
}
WAYS = {"auto": [], "bf16": ["--bf16"], "float32": ["--no-bf16"]}


def one_run(data: str, flags: list[str], steps: int, work: Path, cache: Path, threads: int) -> tuple[float, str]:
    """One ``ddpm train`` of ``steps`` steps: its images/s and its precision line (or the forced precision)."""
    out = work / "run"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [DDPM, "train", "--data", data, *flags, "--steps", str(steps), "--sample-every", "0",
           "--checkpoint-every", "0", "--log-every", str(steps), "--quiet", "--out", str(out)]  # fmt: skip
    env = {**child_env(threads), "DDPM_CACHE": str(cache)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    said = next((line for line in proc.stdout.splitlines() if line.startswith("precision: ")), "")
    return float(last["images_per_s"]), said or ("bf16" if last["bf16"] else "float32")


def measure(name: str, args: argparse.Namespace, work: Path, cache: Path) -> dict:
    """The three ways of one case, ``args.rounds`` times in rotating order."""
    data, extra, share = CASES[name]
    steps = max(10, int(args.steps * share))
    if data.startswith("photos-"):
        data = str(photo_crops(work / data, args.photos, int(data.split("-")[1]) + 32, seed=0))
    rates: dict[str, list[float]] = {w: [] for w in WAYS}
    said = ""
    order = list(WAYS)
    for r in range(args.rounds):
        for way in order[r % 3 :] + order[: r % 3]:
            rate, line = one_run(data, extra + WAYS[way], steps, work, cache, args.threads)
            rates[way].append(rate)
            said = line if way == "auto" else said
            log(f"{name} round {r + 1} {way}: {rate:.1f} images/s")
    med = {w: statistics.median(v) for w, v in rates.items()}
    chose = "bf16" if said.startswith("precision: bf16") else "float32"
    faster = "bf16" if med["bf16"] > med["float32"] else "float32"
    return {"case": name, "flags": extra, "steps": steps, "rounds": args.rounds, "choice": chose, "said": said,
            "images_per_s": rates, "median": med, "faster": faster, "choice_is_faster": chose == faster,
            "bf16_over_float32": med["bf16"] / med["float32"], "cpu": cpu_model(),
            "avx512_bf16": "avx512_bf16" in cpu_flags(), "amx": "amx_bf16" in cpu_flags(),
            "torch": torch.__version__, "threads": args.threads, "date": time.strftime("%Y-%m-%d")}  # fmt: skip


def report(rows: list[dict]) -> str:
    """The Markdown table of rows measured in one run."""
    lines = ["| case | auto choice (its line) | images/s auto / bf16 / float32 | bf16 ÷ float32 | choice faster |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        m = r["median"]
        ratio = re.search(r"[\d.]+x", r["said"])
        lines.append(f"| {r['case']} | {r['choice']} ({ratio.group(0) if ratio else r['said']}) | {m['auto']:.1f} / "
                     f"{m['bf16']:.1f} / {m['float32']:.1f} | {r['bf16_over_float32']:.2f} | "
                     f"{'yes' if r['choice_is_faster'] else 'no'} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="digits,fashion-mnist,photos-64,photos-128")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=int, default=256, help="photo crops for the photos cases")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", default=str(RESULTS / "precision.jsonl"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        for name in (c.strip() for c in args.cases.split(",") if c.strip()):
            row = measure(name, args, work, cache)
            append_row(args.results, row)
            rows.append(row)
    print(f"\n{cpu_model()}, torch {torch.__version__}, {args.threads} threads, {args.steps} steps x {args.rounds}")
    print(report(rows))


if __name__ == "__main__":
    main()
