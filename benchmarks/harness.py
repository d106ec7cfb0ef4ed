"""What the benchmark scripts share: the repository's folders, ``ddpm`` commands run as child processes, the scoring
options and the rows they append, the machine's description, and the sampling-and-scoring of samplers_model.py.

A script in ``benchmarks/`` is run as ``python benchmarks/X.py`` (its own folder is then on the module path) and
imports this module as ``import harness``; the tests find it through pytest's ``pythonpath`` (pyproject.toml), and
the studies in ``benchmarks/studies/`` that use it are run from the repository's root with ``PYTHONPATH=benchmarks``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import ddpm
from ddpm.data.load import load_dataset
from ddpm.denoiser import image_generators
from ddpm.evaluation.featurenet import FeatureNet, accuracy, load_feature_net, save_feature_net, train_feature_net
from ddpm.evaluation.metrics import frechet_distance
from ddpm.images import to_uint8
from ddpm.sampling import sampler_options
from ddpm.schedule import Schedule

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


def run_command(
    cmd: list[str], threads: int, *, check: bool = True, extra_env: Mapping[str, str] | None = None
) -> Finished:
    """Print ``cmd`` and run it with :func:`child_env` (plus ``extra_env``); its exit status and wall time.
    With ``check``, a non-zero exit raises ``subprocess.CalledProcessError``."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=check, env={**child_env(threads), **(extra_env or {})})
    return Finished(proc.returncode, time.perf_counter() - t0)


def sample_npz(checkpoint: Path, num: int, folder: Path, npz: Path, threads: int) -> float:
    """The default ``ddpm sample`` of ``num`` images from ``checkpoint`` into ``folder`` and ``npz`` (both
    overwritten); its wall time in seconds."""
    return run_command(
        [
            DDPM,
            "sample",
            "--checkpoint",
            str(checkpoint),
            "--num",
            str(num),
            "--out",
            str(folder),
            "--npz",
            str(npz),
            "--quiet",
            "--overwrite",
        ],
        threads,
    ).wall_s


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
    run_command(
        [
            DDPM,
            "eval",
            "--samples",
            str(npz),
            *reference_flags(args),
            "--out",
            str(out),
            *(["--overwrite"] if overwrite else []),
        ],
        args.threads,
    )
    return json.loads((out / "eval.json").read_text())


def append_row(path: Path | str, row: dict) -> None:
    """Append ``row`` as one JSON line to ``path`` (its folder made if needed) and print it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def photo_crops(folder: Path, n: int, size: int, seed: int = 0, gray: bool = False) -> Path:
    """``folder`` filled with ``n`` PNG crops of scikit-learn's two sample photos (427x640): squares of a random side
    from ``size`` to the photo's height at random places, Lanczos-resized to ``size``, half of them mirrored (gray
    with ``gray``). Made once: a folder that holds ``n`` PNGs already is returned as it is."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) == n:
        return folder
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(min(size, img.shape[0]), img.shape[0] + 1))
        y, x = int(rng.integers(0, img.shape[0] - side + 1)), int(rng.integers(0, img.shape[1] - side + 1))
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        (crop.convert("L") if gray else crop).save(folder / f"{i:05d}.png")
    return folder


def log(msg: str) -> None:
    """``msg`` on stderr, after the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the machine


def cpuinfo_field(name: str) -> str | None:
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
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (avx2, avx512_bf16, amx_bf16, ...); empty elsewhere."""
    return set((cpuinfo_field("flags") or "").split())


# ---------------------------------------------------------------------------- sampling and scoring on a trained model
# Shared by samplers_model.py and studies/sampler_variants.py: the same real sets, feature network, sample cache and
# 1000-step reference, so that their rows compare.

FASHION_TEST = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"
"""Fashion-MNIST's test split, the reference of the samplers' FD."""
REFERENCE: tuple[str, str, int] = ("ddpm", "linspace", 1000)
"""The reference configuration (sampler, spacing, evaluations): all T steps, so the spacing does not matter."""


def real_sets(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(train images, train labels, reference images, reference labels, description of the reference)."""
    train = load_dataset(data)
    if data == "fashion-mnist":
        test = load_dataset(FASHION_TEST)
        return train.images, train.labels, test.images, test.labels, f"Fashion-MNIST t10k ({len(test)} images)"
    if data == "digits":
        # The digits set has no test split: the reference is the whole set (the model was trained on it).
        return train.images, train.labels, train.images, train.labels, f"digits, all {len(train)} images"
    raise SystemExit(f"--data {data!r}: this benchmark knows fashion-mnist and digits")


def feature_net(
    data: str, train_x: torch.Tensor, train_y: torch.Tensor, ref_x: torch.Tensor, ref_y: torch.Tensor, epochs: int
) -> tuple[FeatureNet, dict[str, str]]:
    """The FeatureNet of ``data`` and its metadata: loaded from RESULTS if saved there, else trained on the training
    images for ``epochs`` (its accuracy measured on the reference, or on a held-out fifth of digits) and saved."""
    path = RESULTS / f"samplers_model.featurenet-{data}.safetensors"
    if path.exists():
        net, meta = load_feature_net(path)
        log(f"feature net loaded from {path.name}")
        return net, meta
    t0 = time.perf_counter()
    if data == "digits":  # hold out a fifth to measure accuracy; train on the rest
        perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
        held, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
        net = train_feature_net(train_x[fit], train_y[fit], epochs=epochs, batch_size=64, seed=0, log=log)
        acc, on = accuracy(net, train_x[held], train_y[held]), f"held-out 20% of digits ({len(held)} images)"
    else:
        net = train_feature_net(train_x, train_y, epochs=epochs, seed=0, log=log)
        acc, on = accuracy(net, ref_x, ref_y), f"test split ({len(ref_x)} images)"
    meta = {
        "accuracy": f"{acc:.4f}",
        "accuracy_on": on,
        "epochs": str(epochs),
        "train_seconds": f"{time.perf_counter() - t0:.0f}",
        "data": data,
    }
    save_feature_net(net, path, meta)
    log(f"feature net: accuracy {acc:.4f} on {on}; saved {path.name}")
    return net, meta


def checkpoint_id(path: Path) -> str:
    """A checkpoint file's cache key: its name and the start of its SHA-256."""
    h = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.stem}-{h}"


def cache_file(ckpt_key: str, sampler: str, spacing: str, steps: int, seed: int, options: dict | None = None) -> Path:
    """Where the samples of one configuration are cached. The sampler's option defaults, overridden by
    ``options`` (any keyword of ``ddpm.sample``), are part of the key, so that changing one invalidates them."""
    opts = {k: repr(v) for k, v in sampler_options(sampler).items()}
    opts.update({k: repr(v) for k, v in (options or {}).items()})
    h = hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]
    return CACHE / f"{ckpt_key}-{sampler}-{h}-{spacing}-{steps}-seed{seed}.npz"


def samples_for(
    model: torch.nn.Module,
    schedule: Schedule,
    ckpt_key: str,
    shape: tuple[int, int, int],
    sampler: str,
    spacing: str,
    steps: int,
    n: int,
    seed: int,
    batch: int,
    prediction: str = "eps",
    options: dict | None = None,
) -> tuple[np.ndarray, float | None]:
    """Images 0..n-1 (uint8 (n, C, H, W)) of one configuration, and seconds per image (as sampled, cached or not).
    Image i is drawn from ``image_generators(seed, [i])``; ``options`` are passed on to ``ddpm.sample`` (e.g.
    ``{"clip_x0": False}``). Samples are cached in CACHE and extended when ``n`` grows."""
    CACHE.mkdir(parents=True, exist_ok=True)
    f = cache_file(ckpt_key, sampler, spacing, steps, seed, options)
    have = np.zeros((0, *shape), np.uint8)
    secs = 0.0
    if f.exists():
        z = np.load(f)
        have, secs = z["images"], float(z["seconds"])
    if len(have) >= n:
        return have[:n], secs / len(have)
    t0 = time.perf_counter()
    start = len(have)
    for i0 in range(start, n, batch):
        i1 = min(n, i0 + batch)
        x = ddpm.sample(
            model,
            (i1 - i0, *shape),
            schedule,
            sampler=sampler,
            steps=steps,
            spacing=spacing,
            prediction=prediction,
            generator=image_generators(seed, range(i0, i1)),
            **(options or {}),
        )
        have = np.concatenate([have, to_uint8(x, channels_last=False)])
        np.savez(f, images=have, seconds=secs + time.perf_counter() - t0)  # save as we go: safe to interrupt
        log(f"  {sampler}/{spacing}/{steps} {options or ''}: {i1}/{n} images ({time.perf_counter() - t0:.0f} s)")
    return have, (secs + time.perf_counter() - t0) / len(have)


def paired_ratio(f_cfg: torch.Tensor, f_ref_gen: torch.Tensor, ref: torch.Tensor, reps: int = 300) -> dict:
    """FD(f_cfg)/FD(f_ref_gen) against ``ref``, bootstrapped over image indices (the same indices for both, since
    image i has the same seed in both): median, 90% interval and the shares of resamples within 10% and 25%."""
    g = torch.Generator().manual_seed(123)
    n = f_cfg.shape[0]
    ratios = []
    for _ in range(reps):
        idx = torch.randint(0, n, (n,), generator=g)
        ratios.append(frechet_distance(f_cfg[idx], ref) / frechet_distance(f_ref_gen[idx], ref))
    r = torch.tensor(ratios)
    return {
        "median": float(r.median()),
        "lo": float(r.quantile(0.05)),
        "hi": float(r.quantile(0.95)),
        "p_within_10": float((r <= 1.10).double().mean()),
        "p_within_25": float((r <= 1.25).double().mean()),
    }
