"""Data at scale: preparing a folder of real-photo JPEGs once against decoding it at every start.

Usage::

    python benchmarks/data_scale.py --root /var/tmp/ddpm-data-scale [--sizes 10000,50000,200000] [--phone 256]
                                    [--ddp-sizes 5000,200000] [--in-memory-max 200000] [--in-memory-ddp-max 50000]
                                    [--image-size 64] [--ddp-steps 20] [--out benchmarks/results/data_scale.json]

It builds, under ``--root`` (kept between runs: delete it to rebuild), folders of JPEGs cut from scikit-learn's
sample photos (``sklearn.datasets.load_sample_images``, two 640×427 photos): CelebA-sized 178×218 crops (at random
scales and places, quality 90) for each of ``--sizes`` and ``--ddp-sizes`` (the sets share files by hard links),
and ``--phone`` phone-sized 4032×3024 ones (a crop upscaled with bicubic filtering plus sensor-like noise σ = 3, so
the files are the size of a phone's, quality 92). Then, on this machine, against the in-memory loader
(``ddpm.data.load.load_dataset``) in the same run:

1. **First preparation**: ``prepare_dataset`` with one worker per core (a fresh process; the time inside it, and the
   whole command's) against ``load_dataset`` of the same folder at ``--image-size`` (its time and peak RSS). The
   source files are read once before each timing, so both decode from the page cache.
2. **Phone-sized photos per image**: the same, per image, with 1 worker and with all cores.
3. **Command to first training step**: ``ddpm train --data FOLDER --image-size S --steps 1 --log-every 1`` from the
   command to its first metrics line, on the prepared set and with the in-memory loader (this script patches
   ``ddpm.train.loop.training_data`` to ``load_dataset`` for that), and on a 64-image folder: the model's own
   start-up.
4. **Memory under torchrun --nproc_per_node 2**: each rank's peak private (anonymous, ``RssAnon``) and file-backed
   (``RssFile``) memory, sampled every 50 ms from ``/proc``, over ``--ddp-steps`` steps: the first start (rank 0
   prepares, the other waits), a later start, and the in-memory loader (up to ``--in-memory-ddp-max`` images: it
   holds the whole set in every rank).
5. **Pixels**: the reduced-scale JPEG decode (``Image.draft``) against the full decode, both then resized by
   Lanczos, on the phone-sized photos (max and mean absolute difference in 8-bit levels), and the prepared
   CelebA-sized set against ``load_dataset`` (expected identical: those files are below the draft margin).

Timings are only meaningful on a quiet machine: the header prints the load average. Peak memory of the in-memory loader
at 200,000 images is about 10 GB per process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from harness import RESULTS, child_env, cpu_flags, cpu_model
from PIL import Image, features

from ddpm.data.folders import decode_fitted, decode_image
from ddpm.data.prepared import prepared_locations
from ddpm.images import fit_square

CELEBA = (178, 218)
PHONE = (4032, 3024)
# The results' keys for the in-memory loader ("today", "today_s", "today_ms", "today_peak_rss_mb",
# "pixels_celeba_prepared_vs_today") are the committed results' (benchmarks/results/data_scale*.json), which report()
# reads.
TRAIN_ARGS = [
    "--preset",
    "tiny",
    "--batch-size",
    "64",
    "--sample-every",
    "0",
    "--checkpoint-every",
    "0",
    "--num-samples",
    "1",
    "--sample-steps",
    "1",
    "--log-every",
    "1",
    "--quiet",
]


# --------------------------------------------------------------------------------------------------
# the folders


def _photos() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def _celeba_file(args: tuple[int, str]) -> None:
    """JPEG ``i`` of the CelebA-sized pool: a 178×218 crop of a sample photo shrunk by a random factor in [s, 1]."""
    i, path = args
    rng = np.random.default_rng(i)
    photo = _PHOTOS[i % 2]
    w, h = CELEBA
    s = rng.uniform(max(w / photo.width, h / photo.height), 1.0)
    src = photo.resize((round(photo.width * s), round(photo.height * s)), Image.Resampling.LANCZOS)
    x, y = rng.integers(0, src.width - w + 1), rng.integers(0, src.height - h + 1)
    src.crop((x, y, x + w, y + h)).save(path, quality=90)


def _phone_file(args: tuple[int, str]) -> None:
    """JPEG ``i`` of the phone-sized set: a 4:3 crop of a sample photo upscaled to 4032×3024 plus noise σ = 3."""
    i, path = args
    rng = np.random.default_rng(10_000_000 + i)
    photo = _PHOTOS[i % 2]
    cw = int(rng.uniform(0.5, 1.0) * min(photo.width, photo.height * 4 / 3))
    ch = cw * 3 // 4
    x, y = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
    big = np.asarray(photo.crop((x, y, x + cw, y + ch)).resize(PHONE, Image.Resampling.BICUBIC), dtype=np.float32)
    big += rng.normal(0.0, 3.0, big.shape).astype(np.float32)
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=92)


_PHOTOS: list[Image.Image] = []


def _init_worker() -> None:
    _PHOTOS.extend(_photos())


def build_pool(folder: Path, n: int, make) -> list[Path]:
    """``folder`` holding files 0..n-1 made by ``make`` (the missing ones made now, in parallel)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:07d}.jpg" for i in range(n)]
    todo = [(i, str(p)) for i, p in enumerate(paths) if not p.exists()]
    if todo:
        print(f"making {len(todo)} files in {folder} ...", flush=True)
        with multiprocessing.get_context("fork").Pool(os.cpu_count(), initializer=_init_worker) as pool:
            for _ in pool.imap_unordered(make, todo, chunksize=64):
                pass
    return paths


def linked_set(root: Path, name: str, files: list[Path]) -> Path:
    """A folder of hard links to ``files`` (made once): the sets share the pool's files."""
    folder = root / name
    if not (folder / files[-1].name).exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in files:
            os.link(f, folder / f.name)
    return folder


def warm(folder: Path) -> None:
    """Read every file once, so the timings that follow decode from the page cache alike."""
    for p in folder.iterdir():
        if p.is_file():
            p.read_bytes()


# --------------------------------------------------------------------------------------------------
# measurements, each in a fresh process


def _python(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last, returned here with the command's wall time."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["command_s"] = wall
    return out


IN_MEMORY_LOAD = """
import json, resource, sys, time
from ddpm.data.load import load_dataset
t = time.perf_counter()
ds = load_dataset(sys.argv[1], int(sys.argv[2]))
s = time.perf_counter() - t
print(json.dumps({"s": s, "n": len(ds), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PREPARE = """
import json, resource, sys, time
from ddpm.data.prepared import open_prepared
from ddpm.data.preparing import prepare_dataset
t = time.perf_counter()
folder = prepare_dataset(sys.argv[1], int(sys.argv[2]), prepared_dir=sys.argv[3], workers=int(sys.argv[4]),
                         progress=False)
s = time.perf_counter() - t
n = len(open_prepared(folder, check_source=False))
print(json.dumps({"s": s, "n": n, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "folder": str(folder)}))
"""

# `ddpm train` with the in-memory loader: training_data replaced by load_dataset (every rank loads the whole set).
IN_MEMORY_TRAIN = """
import sys
import ddpm.train.loop as loop
from ddpm.data.load import load_dataset
loop.training_data = lambda spec, size, skip_bad, *a, **k: load_dataset(spec, size, skip_bad=skip_bad)
from ddpm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def forget(folder: Path, size: int, prepared: Path) -> None:
    """Delete the prepared copy of ``folder`` (so the next start prepares it again)."""
    shutil.rmtree(prepared_locations(str(folder), size, prepared)[0], ignore_errors=True)


def first_preparation(folder: Path, size: int, prepared: Path, workers: int) -> dict:
    forget(folder, size, prepared)
    warm(folder)
    return _python(PREPARE, str(folder), str(size), str(prepared), str(workers))


def in_memory_load(folder: Path, size: int) -> dict:
    warm(folder)
    return _python(IN_MEMORY_LOAD, str(folder), str(size))


def first_step(out: Path, data: Path, size: int, in_memory: bool = False, prepared: Path | None = None) -> float:
    """Seconds from the command to the first metrics line (written after training step 1)."""
    shutil.rmtree(out, ignore_errors=True)
    args = ["train", "--data", str(data), "--image-size", str(size), "--out", str(out), "--steps", "1", *TRAIN_ARGS]
    if prepared is not None:
        args += ["--prepared-dir", str(prepared)]
    cmd = [sys.executable, "-c", IN_MEMORY_TRAIN, *args] if in_memory else [sys.executable, "-m", "ddpm", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        if proc.poll() is not None:
            raise SystemExit(f"training failed: {proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    took = time.perf_counter() - t0
    proc.communicate()
    return took


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _memory(pid: int) -> dict[str, float]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0]) / 1024  # MB
    except OSError:
        pass
    return out


def ddp_memory(out: Path, data: Path, size: int, steps: int, prepared: Path | None, in_memory: bool = False) -> dict:
    """Each rank's peak RssAnon / RssFile (MB) during ``torchrun --nproc_per_node 2 ... ddpm train``, and the time."""
    shutil.rmtree(out, ignore_errors=True)
    args = [
        "--data",
        str(data),
        "--image-size",
        str(size),
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--device",
        "cpu",
        *TRAIN_ARGS,
    ]
    if prepared is not None:
        args += ["--prepared-dir", str(prepared)]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    if in_memory:
        script = out.parent / "in_memory_train.py"
        script.write_text(IN_MEMORY_TRAIN)
        cmd = [*run, str(script), "train", *args]
    else:
        cmd = [*run, "-m", "ddpm", "train", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    peaks: dict[int, dict[str, float]] = {}
    while proc.poll() is None:
        for pid in _children(proc.pid):
            mem = _memory(pid)
            top = peaks.setdefault(pid, {})
            for k, v in mem.items():
                top[k] = max(top.get(k, 0.0), v)
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"torchrun failed: {stderr[-3000:]}")
    ranks = [peaks[p] for p in sorted(peaks)]
    return {
        "s": time.perf_counter() - t0,
        "ranks": ranks,
        "preparations": sum(line.startswith("prepared ") for line in stdout.splitlines()),
    }


# --------------------------------------------------------------------------------------------------
# pixels


def pixel_difference(files: list[Path], size: int) -> dict:
    """The draft path against the full decode + Lanczos, over ``files``: max and mean |difference| in levels."""
    diffs = [
        np.abs(decode_fitted(p, size).astype(np.int16) - fit_square(decode_image(p), size).astype(np.int16))
        for p in files
    ]
    d = np.stack(diffs)
    return {
        "images": len(files),
        "max": int(d.max()),
        "mean": float(d.mean()),
        "p99.9": float(np.percentile(d, 99.9)),
        "share_over_2": float((d > 2).mean()),
    }


# --------------------------------------------------------------------------------------------------


def machine() -> dict:
    """The CPU, its bf16 and AMX support, cores, memory, load, and the JPEG decoder's versions."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": any(f.startswith("amx") for f in flags),
        "load_average": os.getloadavg(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "pillow": Image.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "python": platform.python_version(),
    }


CHECK_PIXELS = """
import json, sys
import numpy as np
from ddpm.data.load import load_dataset
from ddpm.data.prepared import open_prepared
from ddpm.data.preparing import prepare_dataset
a = open_prepared(prepare_dataset(sys.argv[1], int(sys.argv[2]), prepared_dir=sys.argv[3], progress=False, say=None))
b = load_dataset(sys.argv[1], int(sys.argv[2])).as_uint8()
print(json.dumps({"images": len(b), "identical": bool(np.array_equal(a.pixels.numpy(), b))}))
"""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="where the folders are built and kept")
    ap.add_argument("--sizes", default="10000,50000,200000", help="CelebA-sized set sizes, comma-separated")
    ap.add_argument("--phone", type=int, default=256, help="phone-sized images (0: none)")
    ap.add_argument("--ddp-sizes", default="5000,200000", help="set sizes for the torchrun memory rows")
    ap.add_argument("--in-memory-max", type=int, default=200000, help="largest set the in-memory loader is timed on")
    ap.add_argument(
        "--in-memory-ddp-max",
        type=int,
        default=50000,
        help="largest set the in-memory loader runs under torchrun (it holds the set in every rank)",
    )
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--ddp-steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS / "data_scale.json")
    args = ap.parse_args()
    args.sizes = [int(v) for v in args.sizes.split(",") if v]
    args.ddp_sizes = [int(v) for v in args.ddp_sizes.split(",") if v]
    return args


def first_preparations(sets: dict[int, Path], args: argparse.Namespace, prepared: Path, cores: int) -> list[dict]:
    """Step 1: each CelebA-sized set's first preparation against the in-memory loader's load of it."""
    rows = []
    for n in args.sizes:
        row = {"n": n, "prepared": first_preparation(sets[n], args.image_size, prepared, cores)}
        if n <= args.in_memory_max:
            row["today"] = in_memory_load(sets[n], args.image_size)
            row["speedup"] = row["today"]["s"] / row["prepared"]["s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def phone_photos(args: argparse.Namespace, prepared: Path, cores: int) -> dict:
    """Step 2: phone-sized photos per image, prepared with 1 worker and with all cores, and by the in-memory loader;
    and step 5's draft-against-full-decode pixels on them."""
    n, s = args.phone, args.image_size
    folder = args.root / f"phone-{n}"
    phone = build_pool(folder, n, _phone_file)
    one = first_preparation(folder, s, prepared, 1)
    all_cores = first_preparation(folder, s, prepared, cores)
    loaded = in_memory_load(folder, s)
    row = {
        "n": n,
        "mb_per_file": sum(p.stat().st_size for p in phone) / len(phone) / 1e6,
        "today_ms": 1e3 * loaded["s"] / n,
        "today_peak_rss_mb": loaded["peak_rss_mb"],
        "prepared_1_worker_ms": 1e3 * one["s"] / n,
        f"prepared_{cores}_workers_ms": 1e3 * all_cores["s"] / n,
        "pixels_draft_vs_full": pixel_difference(phone[:50], s),
    }
    print(json.dumps(row), flush=True)
    return row


def first_steps(sets: dict[int, Path], args: argparse.Namespace, prepared: Path, runs: Path) -> list[dict]:
    """Step 3: command to first training step on each prepared set (prepared in step 1) and with the in-memory
    loader, beside the 64-image set's (the model's own start-up)."""
    s = args.image_size
    first_step(runs / "base", sets[64], s, prepared=prepared)  # prepares the 64-image set
    base = first_step(runs / "base", sets[64], s, prepared=prepared)
    rows = []
    for n in args.sizes:
        row = {"n": n, "model_start_s": base, "prepared_s": first_step(runs / f"p{n}", sets[n], s, prepared=prepared)}
        if n <= args.in_memory_max:
            warm(sets[n])
            row["today_s"] = first_step(runs / f"t{n}", sets[n], s, in_memory=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def ddp_memories(sets: dict[int, Path], args: argparse.Namespace, prepared: Path, runs: Path) -> list[dict]:
    """Step 4: each rank's memory under torchrun: first start, later start, and the in-memory loader."""
    s, steps = args.image_size, args.ddp_steps
    rows = []
    for n in args.ddp_sizes:
        forget(sets[n], s, prepared)
        row = {
            "n": n,
            "first_start": ddp_memory(runs / f"d{n}", sets[n], s, steps, prepared),
            "later_start": ddp_memory(runs / f"d{n}", sets[n], s, steps, prepared),
        }
        if n <= args.in_memory_ddp_max:
            row["today"] = ddp_memory(runs / f"dt{n}", sets[n], s, steps, None, in_memory=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    args = parse_args()
    root, s, cores = args.root, args.image_size, len(os.sched_getaffinity(0))
    prepared, runs = root / "prepared", root / "runs"
    results: dict = {"machine": machine(), "image_size": s, "command": " ".join(sys.argv)}
    print(json.dumps(results["machine"]), flush=True)

    every = sorted(set(args.sizes + args.ddp_sizes + [64]))
    pool = build_pool(root / "pool-178x218", max(every), _celeba_file)
    sets = {n: linked_set(root, f"celeba-{n}", pool[:n]) for n in every}

    results["first_preparation"] = first_preparations(sets, args, prepared, cores)
    if args.phone:
        results["phone"] = phone_photos(args, prepared, cores)
    results["first_step"] = first_steps(sets, args, prepared, runs)
    results["ddp_memory"] = ddp_memories(sets, args, prepared, runs)
    check = _python(CHECK_PIXELS, str(sets[min(args.sizes)]), str(s), str(prepared))
    results["pixels_celeba_prepared_vs_today"] = {"images": check["images"], "identical": check["identical"]}
    print(json.dumps(results["pixels_celeba_prepared_vs_today"]), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"wrote {args.out}")


START_LABELS = {"first_start": "first start", "later_start": "later start", "today": "in-memory loader"}


def report(r: dict) -> str:
    """The tables for BENCHMARKS.md."""
    m = r["machine"]
    lines = [
        f"{m['cpu']}, {m['cores']} cores, avx512_bf16 {m['avx512_bf16']}, AMX {m['amx']}, "
        f"{m['memory_gb']:.0f} GB, load average {' / '.join(f'{v:.2f}' for v in m['load_average'])}, Pillow "
        f"{m['pillow']} (libjpeg-turbo {m['libjpeg_turbo']}), --image-size {r['image_size']}",
        "",
        "| images | first preparation s (img/s) | in-memory load s (img/s) | speed-up "
        "| peak RSS prepared / in-memory MB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in r["first_preparation"]:
        n, p, t = row["n"], row["prepared"], row.get("today")
        loaded = f"{t['s']:.1f} ({n / t['s']:.0f})" if t else "not run"
        speedup = f"{row['speedup']:.2f}×" if t else "–"
        rss = f"{p['peak_rss_mb']:.0f} / " + (f"{t['peak_rss_mb']:.0f}" if t else "–")
        lines.append(f"| {n} | {p['s']:.1f} ({n / p['s']:.0f}) | {loaded} | {speedup} | {rss} |")
    if "phone" in r:
        ph = r["phone"]
        workers = next(k for k in ph if k.startswith("prepared_") and k.endswith("_workers_ms"))
        px = ph["pixels_draft_vs_full"]
        lines += [
            "",
            "| phone-sized 4032×3024 | ms per image |",
            "|---|---:|",
            f"| in-memory loader (full decode, 1 process) | {ph['today_ms']:.1f} |",
            f"| prepared, 1 worker | {ph['prepared_1_worker_ms']:.1f} |",
            f"| prepared, {workers.split('_')[1]} workers | {ph[workers]:.1f} |",
            "",
            f"Pixels, draft against full decode ({px['images']} phone photos, 8-bit levels): max {px['max']}, "
            f"mean {px['mean']:.3f}, 99.9th percentile {px['p99.9']:.0f}, "
            f"share above 2: {px['share_over_2']:.5f}",
        ]
    lines += [
        "",
        "| images | command to first step, prepared s | in-memory s | the model's own start-up s |",
        "|---:|---:|---:|---:|",
    ]
    for row in r["first_step"]:
        loaded = f"{row['today_s']:.1f}" if "today_s" in row else "not run"
        lines.append(f"| {row['n']} | {row['prepared_s']:.1f} | {loaded} | {row['model_start_s']:.1f} |")
    lines += [
        "",
        "| images | start | rank 0 RssAnon MB | rank 1 RssAnon MB | RssFile MB (r0 / r1) | preparations |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in r["ddp_memory"]:
        for key in ("first_start", "later_start", "today"):
            if key in row:
                ranks = row[key]["ranks"]
                anon = [f"{x.get('RssAnon', 0):.0f}" for x in ranks] + ["?"] * (2 - len(ranks))
                files = " / ".join(f"{x.get('RssFile', 0):.0f}" for x in ranks)
                lines.append(
                    f"| {row['n']} | {START_LABELS[key]} | {anon[0]} | {anon[1]} | {files} | "
                    f"{row[key]['preparations']} |"
                )
    c = r["pixels_celeba_prepared_vs_today"]
    lines += [
        "",
        f"CelebA-sized set, prepared against the in-memory loader: {c['images']} images, identical: {c['identical']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
