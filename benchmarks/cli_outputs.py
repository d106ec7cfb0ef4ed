"""What a fixed list of ``ddpm`` commands prints and writes, to compare two commits of a restructuring.

Runs each command in ``COMMANDS`` (training, resume, sampling, reproduce, interpolate, edit, eval, convert,
prepare, help texts and user mistakes) in a scratch folder and records its exit status, what it printed (numbers
that are timings masked) and the SHA-256 of every file it wrote (JSON files by their content, volatile timing keys
dropped). Two records from the same machine and thread count should be equal, command by command:

    python benchmarks/cli_outputs.py --out before.json      # on the old commit
    python benchmarks/cli_outputs.py --out after.json       # on the new one
    python benchmarks/cli_outputs.py --compare before.json after.json

The scratch folder is fixed (``--work``, default /tmp/ddpm-cli-outputs), so the paths that checkpoints and eval.json
record are the same on both sides. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

VOLATILE = {
    "time_s",
    "images_per_s",
    "seconds",
    "eval_s",
    "torch_version",
    "sha256",
    "featurenet_reference",
    "inception_reference",
    "fingerprint",
    "mtime",
    "created",
    "prepared_at",
    "id",
    "file",
    "journal",
}
FILE_ID = re.compile(r"-[0-9a-f]{16}\b")
TIMING = re.compile(r"\d+(\.\d+)?\s*(img/s|min|s\b|it/s|images/s)")

TRAIN = [
    "train",
    "--data",
    "digits",
    "--preset",
    "tiny",
    "--batch-size",
    "16",
    "--sample-every",
    "20",
    "--sample-steps",
    "4",
    "--num-samples",
    "4",
    "--checkpoint-every",
    "20",
    "--warmup",
    "2",
    "--log-every",
    "10",
    "--quiet",
]


def commands(w: Path) -> list[tuple[str, list[str]]]:
    """(name, argv after ``ddpm``) in the order they run; later ones read what earlier ones wrote."""
    run = str(w / "run")
    sample = ["sample", "--checkpoint", run, "--quiet"]
    return [
        ("version", ["--version"]),
        *[(f"help-{c}", [c, "--help"]) for c in ("train", "prepare", "sample", "edit", "eval", "convert")],
        ("train", [*TRAIN, "--steps", "40", "--out", run]),
        ("train-again-refused", [*TRAIN, "--steps", "40", "--out", run]),
        ("resume", [*TRAIN, "--steps", "60", "--out", run, "--resume"]),
        (
            "sample",
            [
                *sample,
                "--num",
                "6",
                "--steps",
                "8",
                "--out",
                str(w / "s"),
                "--npz",
                str(w / "s.npz"),
                "--trajectory",
                "--trajectory-count",
                "1",
                "--batch-size",
                "4",
            ],
        ),
        (
            "sample-ddim",
            [*sample, "--num", "3", "--sampler", "ddim", "--steps", "5", "--eta", "0.5", "--out", str(w / "ddim")],
        ),
        (
            "sample-option",
            [
                *sample,
                "--num",
                "2",
                "--sampler",
                "unipc",
                "--option",
                "order=2",
                "--steps",
                "6",
                "--spacing",
                "linspace",
                "--out",
                str(w / "unipc"),
            ],
        ),
        (
            "reproduce",
            ["sample", "--checkpoint", run, "--reproduce", str(w / "s" / "000003.png"), "--out", str(w / "again")],
        ),
        ("interpolate", [*sample, "--interpolate", "1", "2", "--frames", "4", "--out", str(w / "walk")]),
        (
            "edit",
            [
                "edit",
                "--checkpoint",
                run,
                "--image",
                str(w / "s" / "000001.png"),
                "--strength",
                "0.5",
                "--steps",
                "10",
                "--out",
                str(w / "edit.png"),
            ],
        ),
        (
            "edit-mask",
            [
                "edit",
                "--checkpoint",
                run,
                "--image",
                str(w / "s" / "000001.png"),
                "--mask",
                str(w / "s" / "000002.png"),
                "--steps",
                "10",
                "--out",
                str(w / "inpaint.png"),
            ],
        ),
        (
            "eval-checkpoint",
            [
                "eval",
                "--checkpoint",
                run,
                "--num",
                "40",
                "--steps",
                "4",
                "--metrics",
                "fd",
                "--quiet",
                "--out",
                str(w / "eval"),
                "--cache-dir",
                str(w / "cache"),
            ],
        ),
        (
            "eval-samples",
            [
                "eval",
                "--samples",
                str(w / "s.npz"),
                "--data",
                "digits",
                "--metrics",
                "fd",
                "--quiet",
                "--cache-dir",
                str(w / "cache"),
            ],
        ),
        (
            "eval-nll",
            [
                "eval",
                "--checkpoint",
                run,
                "--nll",
                "--nll-num",
                "2",
                "--batch-size",
                "2",
                "--quiet",
                "--out",
                str(w / "nll"),
            ],
        ),
        ("export", ["convert", run, str(w / "diffusers")]),
        ("import", ["convert", str(w / "diffusers"), str(w / "imported")]),
        (
            "prepare",
            ["prepare", "--data", str(w / "s"), "--image-size", "8", "--quiet", "--prepared-dir", str(w / "prepared")],
        ),
        ("err-steps", [*sample, "--steps", "0", "--out", str(w / "x")]),
        ("err-class", [*sample, "--class", "3", "--out", str(w / "x")]),
        ("err-guidance", [*sample, "--guidance", "2", "--out", str(w / "x")]),
        ("err-eta", [*sample, "--sampler", "unipc", "--eta", "0.5", "--out", str(w / "x")]),
        ("err-option", [*sample, "--option", "nope=1", "--out", str(w / "x")]),
        ("err-exists", [*sample, "--num", "2", "--steps", "8", "--out", str(w / "s")]),
        (
            "err-reproduce-flags",
            [
                "sample",
                "--checkpoint",
                run,
                "--reproduce",
                str(w / "s" / "000003.png"),
                "--steps",
                "4",
                "--out",
                str(w / "x"),
            ],
        ),
        (
            "err-edit-strength",
            ["edit", "--checkpoint", run, "--image", str(w / "s" / "000001.png"), "--out", str(w / "x.png")],
        ),
        ("err-eval-both", ["eval", "--checkpoint", run, "--samples", str(w / "s.npz"), "--data", "digits"]),
        ("err-eval-flags", ["eval", "--samples", str(w / "s.npz"), "--data", "digits", "--steps", "4"]),
        ("err-train-lr", ["train", "--out", str(w / "r2"), "--lr-schedule", "bogus", "--quiet"]),
        ("err-train-data", ["train", "--out", str(w / "r2"), "--data", str(w / "nope"), "--quiet"]),
        ("err-checkpoint", ["sample", "--checkpoint", str(w / "nope"), "--out", str(w / "x")]),
    ]


def file_record(path: Path) -> str:
    """A file's SHA-256, or for a JSON / JSON-lines file the hash of its content without volatile keys."""
    if path.suffix in (".json", ".jsonl"):
        try:
            rows = (
                [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
                if path.suffix == ".jsonl"
                else [json.loads(path.read_text())]
            )
            return "json:" + hashlib.sha256(json.dumps(_strip(rows), sort_keys=True).encode()).hexdigest()
        except ValueError:
            pass
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def snapshot(work: Path) -> dict[str, str]:
    return {
        FILE_ID.sub("-<id>", str(p.relative_to(work))): file_record(p)
        for p in sorted(work.rglob("*"))
        if p.is_file() and "cache" not in p.relative_to(work).parts
    }


def record(work: Path) -> dict[str, Any]:
    """Run every command; returns {name: {argv, rc, stdout, stderr, new_files}}."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = {**os.environ, "DDPM_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {}
    before = snapshot(work)
    for name, argv in commands(work):
        p = subprocess.run([sys.executable, "-m", "ddpm", *argv], capture_output=True, text=True, env=env, cwd=work)
        after = snapshot(work)
        new = {k: v for k, v in after.items() if before.get(k) != v}
        out[name] = {
            "argv": argv,
            "rc": p.returncode,
            "stdout": TIMING.sub("<t>", p.stdout),
            "stderr": TIMING.sub("<t>", p.stderr),
            "files": new,
        }
        before = after
        print(f"{name}: exit {p.returncode}, {len(new)} files", file=sys.stderr)
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Print the commands whose status, output or files differ; returns how many differ."""
    differ = 0
    for name in dict.fromkeys([*a, *b]):
        x, y = a.get(name), b.get(name)
        if x == y:
            continue
        differ += 1
        print(f"== {name}")
        if x is None or y is None:
            print("   only on one side")
            continue
        for key in ("rc", "stdout", "stderr"):
            if x[key] != y[key]:
                lines = difflib.unified_diff(
                    str(x[key]).splitlines(), str(y[key]).splitlines(), "before", "after", lineterm="", n=0
                )
                print(f"   {key}:\n" + "\n".join("     " + line for line in lines))
        for f in sorted(set(x["files"]) | set(y["files"])):
            if x["files"].get(f) != y["files"].get(f):
                print(f"   file {f}: {x['files'].get(f, 'absent')[:16]} -> {y['files'].get(f, 'absent')[:16]}")
    print(f"{differ} of {len(set(a) | set(b))} commands differ")
    return differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the record here (JSON)")
    ap.add_argument("--work", default="/tmp/ddpm-cli-outputs", help="scratch folder (emptied first)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two records")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        return 1 if compare(a, b) else 0
    rec = record(Path(args.work))
    text = json.dumps(rec, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
