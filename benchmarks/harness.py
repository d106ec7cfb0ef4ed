"""What the benchmark scripts share: the repository's folders, ``ddpm`` commands run as child processes, the scoring
options and the rows they append, and the machine's description.

A script in ``benchmarks/`` is run as ``python benchmarks/X.py`` (its own folder is then on the module path) and
imports this module as ``import harness``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

REPO: Path = Path(__file__).resolve().parents[1]
"""The repository's root."""
SRC: Path = REPO / "src"
"""The package's source, put first on the module path of every child process (:func:`child_env`)."""
RESULTS: Path = REPO / "benchmarks" / "results"
"""Where every benchmark appends its rows and writes its reports (committed)."""
CACHE: Path = REPO / "benchmarks" / ".cache"
"""Samples and scratch that reruns reuse (not committed)."""
BIN: Path = Path(sys.executable).parent
"""The running Python's environment's executables."""
DDPM: str = str(BIN / "ddpm")
"""The ``ddpm`` command of the running Python's environment."""


# ---------------------------------------------------------------------------- child processes


class Finished(NamedTuple):
    """A child command's exit status and wall time in seconds."""

    returncode: int
    wall_s: float


def child_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment for a child: this checkout's ``src`` first on PYTHONPATH (so the code measured is
    the working tree's, whichever ``ddpm`` is installed) and, given ``threads``, OMP_NUM_THREADS."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_command(cmd: list[str], threads: int, *, check: bool = True,
                extra_env: Mapping[str, str] | None = None) -> Finished:
    """Print ``cmd`` and run it with :func:`child_env` (plus ``extra_env``); its exit status and wall time.
    With ``check``, a non-zero exit raises ``subprocess.CalledProcessError``."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=check, env={**child_env(threads), **(extra_env or {})})
    return Finished(proc.returncode, time.perf_counter() - t0)


def sample_npz(checkpoint: Path, num: int, folder: Path, npz: Path, threads: int) -> float:
    """The default ``ddpm sample`` of ``num`` images from ``checkpoint`` into ``folder`` and ``npz`` (both
    overwritten); its wall time in seconds."""
    return run_command([DDPM, "sample", "--checkpoint", str(checkpoint), "--num", str(num), "--out", str(folder),
                        "--npz", str(npz), "--quiet", "--overwrite"], threads).wall_s


# ---------------------------------------------------------------------------- scoring and rows


def add_scoring_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark here scores with: samples, reference, metrics, threads."""
    p.add_argument("--num", type=int, default=1000, help="samples per row")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ref-split", default="test")
    p.add_argument("--ref-num", type=int, default=2000)
    p.add_argument("--metrics", default="fid,fd")
    p.add_argument("--threads", type=int, default=2)


def reference_flags(args: argparse.Namespace) -> list[str]:
    """The ``ddpm eval`` flags for the reference and metrics of :func:`add_scoring_args`."""
    flags = ["--data", args.data, "--ref-split", args.ref_split, "--metrics", args.metrics]
    return flags + (["--ref-num", str(args.ref_num)] if args.ref_num else [])


def score_samples(npz: Path, out: Path, args: argparse.Namespace, *, overwrite: bool = False) -> dict:
    """``ddpm eval --samples NPZ`` against the reference of :func:`add_scoring_args`, into ``out``; its eval.json."""
    run_command([DDPM, "eval", "--samples", str(npz), *reference_flags(args), "--out", str(out),
                 *(["--overwrite"] if overwrite else [])], args.threads)
    return json.loads((out / "eval.json").read_text())


def append_row(path: Path | str, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` (its folder made if needed) and print it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def log(msg: str) -> None:
    """``msg`` on stderr, after the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the machine


def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name`` line of /proc/cpuinfo, or None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform's best guess elsewhere)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (avx2, avx512_bf16, amx_bf16, ...); empty elsewhere."""
    return set((_cpuinfo_field("flags") or "").split())
