"""The GPU check: everything to learn from one lent GPU, in one run of under 8 minutes. Run it through
``benchmarks/gpu_check.sh`` (which keeps the log); ``--dry-run`` runs every stage on the CPU at tiny sizes (the slow
test ``tests/test_gpu_check.py`` does, so that the script does not rot while no GPU is lent).

Stages, in order, each with its own time limit inside the whole ``--budget`` (a stage that would not fit is recorded
as skipped, and the JSON is rewritten after every stage, so a run cut short still reports what it did):

1. ``env``: torch, CUDA, the GPU, the CPU, and the versions of the packages the project needs.
2. ``install``: how ``gpu_check.sh``'s ``pip install --no-deps --no-build-isolation --no-index -e .`` went, before
   this script started (nothing can be downloaded there); the script and every stage also run with ``src`` first on
   ``PYTHONPATH``, so the working tree's code is what runs either way.
3. ``data``: a labelled colour data set made here (10 classes of smooth colour fields with noise, 256×256 PNGs).
4. ``resume``: ``ddpm train`` on the GPU for 2N steps, and for N steps then resumed to 2N: weights, EMA and AdamW's
   moments must be bit-identical (dropout, flips and label dropout on).
5. ``cpu_sample``: that GPU checkpoint samples on the CPU.
6. ``torchrun``: one process under torchrun: the process group's backend (nccl on CUDA) and a training run.
7. ``speed``: each preset at its own size for 80 to 200 steps, bf16 autocast, channels-last: images/s between
   the logged steps after warm-up, and the model FLOP utilisation (3 × the forward's FLOPs, counted by
   ``torch.utils.flop_counter``, × images/s) against the GPU's dense bf16 peak from its datasheet, and against a
   bf16 matmul measured here.
8. ``sample``: 10,000 images from the ddpm-cifar10 run, timed (PNG files and an .npz included).
9. ``fd``: ``ddpm eval --metrics fd`` of those samples against the data (FeatureNet: no Inception file there).
10. ``tests``: the fast lane of the test suite (modules whose packages are missing there are left out, and said).
11. ``compile``: the ddpm-cifar10 run again with ``--compile``: images/s after compilation, and the time to the
    first logged step (compilation included).
12. ``memory``: ``benchmarks/memory.py --device cuda`` for the published presets (what BENCHMARKS.md estimates).

Estimated on an H100 from the FLOP counts and the CPU's timings (not yet measured): about 8 minutes for all twelve,
so the last stage may be skipped at the default budget; its skip is recorded.

Writes ``OUT/gpu_check.json``; what the stages print goes to stdout (``gpu_check.sh`` tees it to
``OUT/gpu_check.log``). Scratch (runs, data, samples) goes to ``--work`` (a temporary folder by default), not to
``OUT``, so that only the small files come back.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from harness import REPO, child_env, cpu_model
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import ddpm
from ddpm.checkpoint import load_checkpoint, load_training_state, state_path
from ddpm.runtime import setup_processes
from ddpm.unet import PRESETS, UNet

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets, by a part of torch's device name.
BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0}

# (preset, training batch, steps) for the speed stage: batches that fit an 80 GiB GPU in bf16 without checkpointing,
# by benchmarks/memory.py's estimates (BENCHMARKS.md), with room to spare.
SPEED = [
    ("tiny-32", 256, 200),
    ("tiny-64", 128, 200),
    ("ddpm-cifar10", 128, 150),
    ("adm-64", 64, 100),
    ("adm-128", 32, 80),
    ("ddpm-256", 16, 80),
]
DRY_SPEED = [("tiny-32", 4, 6), ("tiny-64", 4, 6)]
DRY_SIZE = 16  # every dry-run preset trains at 16 px


class Check:
    """The run's settings, its clock and its results (written to OUT/gpu_check.json after every stage)."""

    def __init__(self, out: Path, work: Path, dry_run: bool, budget: float) -> None:
        self.out, self.work, self.dry = out, work, dry_run
        self.deadline = time.monotonic() + budget
        self.device = "cpu" if dry_run else "cuda"
        self.env = child_env()
        self.results: dict[str, Any] = {"dry_run": dry_run, "budget_s": budget, "stages": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def run(self, cmd: list[str], limit: float, **kw: Any) -> subprocess.CompletedProcess:
        """Run ``cmd`` (its output shown), at most ``limit`` seconds or what is left of the budget."""
        timeout = max(1.0, min(limit, self.left() - 2))
        print(f"$ {' '.join(cmd)}  (limit {timeout:.0f} s)", flush=True)
        proc = subprocess.run(
            cmd,
            cwd=REPO,
            env=self.env,
            timeout=timeout,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kw,
        )
        print(proc.stdout[-6000:], end="" if proc.stdout.endswith("\n") else "\n", flush=True)
        return proc

    def ddpm(self, *args: str, limit: float) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "ddpm", *args], limit)

    def stage(self, name: str, fn: Callable[[Check], dict[str, Any]], needs: float = 10.0) -> None:
        """Run one stage if ``needs`` seconds are left, recording its status ("ok" unless it says otherwise, or
        raised), its seconds and what it returns. Each command of a stage has its own time limit."""
        print(f"\n=== {name} ({self.left():.0f} s of the budget left)", flush=True)
        if self.left() < needs:
            self.results["stages"][name] = {"status": "skipped", "why": "the time budget ran out"}
            self.save()
            return
        start = time.monotonic()
        try:
            record = {"status": "ok", **fn(self)}
        except subprocess.TimeoutExpired as e:
            record = {"status": "timeout", "why": f"stopped after {e.timeout:.0f} s"}
        except Exception as e:  # a failed stage is a result; the next stages still run
            record = {"status": "failed", "why": f"{type(e).__name__}: {e}"[:2000]}
        record["seconds"] = round(time.monotonic() - start, 1)
        self.results["stages"][name] = record
        print(f"--- {name}: {record['status']} in {record['seconds']} s", flush=True)
        self.save()


def _ok(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}: {proc.stdout.strip().splitlines()[-1:]}")


# ---------------------------------------------------------------------------- stages


def env(c: Check) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("numpy", "pillow", "safetensors", "tqdm", "scikit-learn", "pytest", "diffusers", "tensorboard"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            capability=f"{p.major}.{p.minor}",
            memory_gib=round(p.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            bf16_peak_tflops=_datasheet_peak(torch.cuda.get_device_name(0)),
        )
    elif not c.dry:
        raise RuntimeError("no CUDA device: run with --dry-run on a machine without a GPU")
    return info


def install(c: Check) -> dict[str, Any]:
    """The exit status of gpu_check.sh's ``pip install -e .`` (passed in GPU_CHECK_PIP_STATUS), and where ``ddpm``
    is imported from."""
    if c.dry:
        return {"status": "skipped", "why": "dry run: the development environment is left as it is"}
    status = os.environ.get("GPU_CHECK_PIP_STATUS")
    if not status:
        return {"status": "skipped", "why": "not run through benchmarks/gpu_check.sh, which installs the project"}
    return {
        "installed": status == "0",
        "pip_exit_status": status,
        "ddpm_from": str(Path(ddpm.__file__).parent),
        "note": "this script and its stages run with src first on PYTHONPATH either way",
    }


def data(c: Check) -> dict[str, Any]:
    """10 classes of colour fields (one hue per class, a smooth random gradient, pixel noise) as PNG files."""
    size, per_class = (32, 3) if c.dry else (256, 16)
    root = c.work / "data"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(10):
        hue = np.array([np.cos(2 * np.pi * (k / 10 + j / 3)) for j in range(3)]) * 90 + 128
        (root / f"class{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            gx, gy = rng.normal(0, 40, 2)
            field = hue[None, None, :] + gx * (xx[..., None] - 0.5) + gy * (yy[..., None] - 0.5)
            pixels = np.clip(field + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{k}" / f"{i}.png")
    return {"folder": str(root), "images": 10 * per_class, "size": size}


def _quick(c: Check) -> list[str]:
    return ["--sample-every", "0", "--num-samples", "1", "--sample-steps", "1", "--quiet", "--device", c.device]


def resume(c: Check) -> dict[str, Any]:
    n = 2 if c.dry else 20
    base = [
        "train",
        "--data",
        "digits",
        "--preset",
        "tiny",
        "--batch-size",
        "64",
        "--dropout",
        "0.1",
        "--flip",
        "--class-cond",
        "--checkpoint-every",
        "0",
        "--log-every",
        "1",
        *_quick(c),
    ]
    straight, split = c.work / "resume_straight", c.work / "resume_split"
    _ok(c.ddpm(*base, "--out", str(straight), "--steps", str(2 * n), limit=120), "the straight run")
    _ok(c.ddpm(*base, "--out", str(split), "--steps", str(n), limit=120), "the first half")
    _ok(c.ddpm(*base, "--out", str(split), "--steps", str(2 * n), "--resume", limit=120), "the resumed half")

    def tensors(run: Path) -> dict[str, torch.Tensor]:
        ck = load_checkpoint(run)
        out = {**{f"model.{k}": v for k, v in ck.model.items()}, **{f"ema.{k}": v for k, v in ck.ema.items()}}
        for i, s in load_training_state(state_path(ck.path))["optimizer"]["state"].items():
            out.update({f"adam.{i}.exp_avg": s["exp_avg"], f"adam.{i}.exp_avg_sq": s["exp_avg_sq"]})
        return out

    a, b = tensors(straight), tensors(split)
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    c.results["resume_checkpoint"] = str(straight)
    return {
        "status": "ok" if not differ else "failed",
        "steps": 2 * n,
        "bit_exact": not differ,
        "tensors": len(a),
        "differing": differ[:10],
        "bf16": bool(load_checkpoint(straight).meta.get("bf16")),
    }


def cpu_sample(c: Check) -> dict[str, Any]:
    run = c.results.get("resume_checkpoint")
    if run is None:
        raise RuntimeError("no checkpoint from the resume stage")
    out = c.work / "cpu_samples"
    _ok(
        c.ddpm(
            "sample",
            "--checkpoint",
            run,
            "--device",
            "cpu",
            "--num",
            "8",
            "--steps",
            "5",
            "--out",
            str(out),
            "--quiet",
            limit=120,
        ),
        "sampling on the CPU",
    )
    return {"images": len(list(out.glob("0*.png")))}


def torchrun(c: Check) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    probe = c.run([*cmd, str(Path(__file__).resolve()), "--probe-dist", c.device], 90)
    _ok(probe, "the process-group probe")
    found = re.search(r"PROBE (\{.*\})", probe.stdout)
    backend = json.loads(found.group(1)) if found else None
    if backend is None or backend.get("all_reduce") != [1.0] * 4:
        raise RuntimeError(f"the process group did not all-reduce: {backend}")
    out = c.work / "torchrun"
    train = c.run(
        [
            *cmd,
            "-m",
            "ddpm",
            "train",
            "--data",
            "digits",
            "--preset",
            "tiny",
            "--batch-size",
            "64",
            "--steps",
            "4" if c.dry else "20",
            "--out",
            str(out),
            *_quick(c),
        ],
        150,
    )
    _ok(train, "training under torchrun")
    return {"process_group": backend, "world_size": int(load_checkpoint(out).meta.get("world_size", 1))}


def _flops_per_image(preset: str, size: int) -> float:
    """The forward's FLOPs for one 3-channel image (a multiply-add counts 2), counted on the meta device."""
    with torch.device("meta"):
        net = UNet.from_preset(preset, channels=3, image_size=size)
        x, t = torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, t)
    return float(counter.get_total_flops())


def _rate(run: Path, batch: int) -> tuple[float, float]:
    """(images/s between the second logged step and the last, seconds to the first logged step)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "time_s" in r]
    if len(records) < 3:
        raise RuntimeError(f"{run}: too few logged steps ({len(records)}) to time")
    a, b = records[1], records[-1]
    return (b["step"] - a["step"]) * batch / (b["time_s"] - a["time_s"]), records[0]["time_s"]


def _train_speed(c: Check, preset: str, batch: int, steps: int, compile: bool = False) -> dict[str, Any]:
    size = DRY_SIZE if c.dry else int(PRESETS[preset]["image_size"])
    run = c.work / "runs" / (preset + ("-compiled" if compile else ""))
    log_every = max(1, steps // 6)
    start = time.monotonic()
    proc = c.ddpm(
        "train",
        "--data",
        str(c.work / "data"),
        "--image-size",
        str(size),
        "--preset",
        preset,
        "--steps",
        str(steps),
        "--batch-size",
        str(batch),
        "--log-every",
        str(log_every),
        "--checkpoint-every",
        "0",
        "--keep",
        "1",
        "--out",
        str(run),
        *(["--bf16", "--channels-last"] if not c.dry else []),
        *(["--compile"] if compile else []),
        *_quick(c),
        limit=300 if compile else 150,
    )
    _ok(proc, f"training {preset}")
    wall = time.monotonic() - start
    ips, first = _rate(run, batch)
    flops = _flops_per_image(preset, size)
    row = {
        "size": size,
        "batch": batch,
        "steps": steps,
        "images_per_s": round(ips, 1),
        "wall_s": round(wall, 1),
        "first_log_s": round(first, 1),
        "forward_gflops_per_image": round(flops / 1e9, 2),
        "train_tflops": round(3 * flops * ips / 1e12, 2),
        "run": str(run),
    }
    peak = c.results["stages"].get("env", {}).get("bf16_peak_tflops")
    measured = c.results.get("measured_bf16_tflops")
    if peak:
        row["mfu_datasheet"] = round(3 * flops * ips / 1e12 / peak, 4)
    if measured:
        row["mfu_measured_matmul"] = round(3 * flops * ips / 1e12 / measured, 4)
    return row


def _measured_matmul_tflops(device: str) -> float:
    """A large bf16 matmul's TFLOP/s here (the attainable peak), timed after a warm-up."""
    n = 512 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    reps, start = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def speed(c: Check) -> dict[str, Any]:
    c.results["measured_bf16_tflops"] = round(_measured_matmul_tflops(c.device), 3)
    rows: dict[str, Any] = {"measured_bf16_matmul_tflops": c.results["measured_bf16_tflops"]}
    for preset, batch, steps in DRY_SPEED if c.dry else SPEED:
        if c.left() < 40:
            rows[preset] = {"status": "skipped", "why": "the time budget ran out"}
            continue
        try:
            rows[preset] = _train_speed(c, preset, batch, steps)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            rows[preset] = {"status": "failed", "why": str(e)[:500]}
        c.results["stages"]["speed"] = {"status": "running", **rows}
        c.save()
    return rows


def memory(c: Check) -> dict[str, Any]:
    rows = c.work / "memory.jsonl"
    rows.unlink(missing_ok=True)
    args = (
        ["--device", "cpu", "--mode", "real", "--presets", "tiny-32", "--precisions", "float32", "--batches", "1,2"]
        if c.dry
        else ["--device", "cuda", "--presets", "adm-64,adm-128,ddpm-256", "--precisions", "bf16", "--batches", "8,16"]
    )
    _ok(c.run([sys.executable, "benchmarks/memory.py", *args, "--json", str(rows)], 150), "memory.py")
    return {"rows": [json.loads(line) for line in rows.read_text().splitlines()]}


def sample(c: Check) -> dict[str, Any]:
    preset = "tiny-32" if c.dry else "ddpm-cifar10"
    run = c.work / "runs" / preset
    num = 20 if c.dry else 10_000
    out, npz = c.work / "samples", c.work / "samples.npz"
    start = time.monotonic()
    _ok(
        c.ddpm(
            "sample",
            "--checkpoint",
            str(run),
            "--num",
            str(num),
            "--batch-size",
            "10" if c.dry else "1000",
            "--npz",
            str(npz),
            "--out",
            str(out),
            "--quiet",
            "--device",
            c.device,
            *(["--steps", "2"] if c.dry else []),
            limit=200,
        ),
        "sampling",
    )
    wall = time.monotonic() - start
    c.results["samples_npz"] = str(npz)
    return {
        "preset": preset,
        "images": num,
        "wall_s": round(wall, 1),
        "images_per_s": round(num / wall, 1),
        "note": "wall clock of `ddpm sample` with its defaults (sampler, steps), start-up and PNG writing included",
    }


def fd(c: Check) -> dict[str, Any]:
    npz = c.results.get("samples_npz")
    if npz is None:
        raise RuntimeError("no samples from the sample stage")
    out = c.work / "eval"
    size = DRY_SIZE if c.dry else 32
    _ok(
        c.ddpm(
            "eval",
            "--samples",
            npz,
            "--data",
            str(c.work / "data"),
            "--image-size",
            str(size),
            "--metrics",
            "fd",
            "--out",
            str(out),
            "--cache-dir",
            str(c.work / "cache"),
            "--quiet",
            "--device",
            c.device,
            limit=150,
        ),
        "ddpm eval",
    )
    found = sorted(out.rglob("eval.json"))
    return {"eval": json.loads(found[0].read_text()) if found else None}


def tests(c: Check) -> dict[str, Any]:
    if c.dry:
        return {"status": "skipped", "why": "dry run: it runs inside the test suite"}
    ignore = []
    if importlib.util.find_spec("diffusers") is None:
        ignore.append("tests/test_convert.py")
    proc = c.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            *(f"--ignore={p}" for p in ignore),
        ],
        240,
    )
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary)}
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    return {
        "status": "ok" if proc.returncode == 0 else "failed",
        "summary": summary,
        "counts": counts,
        "failed": failed[:30],
        "left_out": ignore,
        "returncode": proc.returncode,
    }


def compile_stage(c: Check) -> dict[str, Any]:
    if c.dry:
        return {"status": "skipped", "why": "dry run: TorchInductor on a CPU takes minutes"}
    return _train_speed(c, "ddpm-cifar10", 128, 200, compile=True)


def _datasheet_peak(name: str) -> float | None:
    for part, peak in BF16_PEAK_TFLOPS.items():
        if part in name:
            return peak
    return None


def probe_dist(device: str) -> None:
    """Under torchrun: what ddpm's set-up does (one process: no process group, no DDP), then a process group of the
    backend ddpm uses for ``device`` with more than one process (nccl on CUDA, gloo on the CPU), checked by an
    all-reduce and a barrier; prints the findings as one JSON line."""
    px = setup_processes(device)
    found: dict[str, Any] = {
        "ddpm_world": px.world,
        "ddpm_device": str(px.device),
        "ddpm_group": dist.get_backend() if dist.is_initialized() else None,
    }
    backend = "nccl" if px.device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    x = torch.ones(4, device=px.device) * (dist.get_rank() + 1)
    dist.all_reduce(x)
    dist.barrier()
    found.update(backend=dist.get_backend(), all_reduce=x.tolist(), world=dist.get_world_size())
    dist.destroy_process_group()
    print("PROBE " + json.dumps(found), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the stages; exit 0 when every stage that ran is ok (a skipped stage is not a failure)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="where gpu_check.json goes (default: gpu_check)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all stages (default: 450)")
    parser.add_argument("--probe-dist", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_dist:
        probe_dist(args.probe_dist)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ddpm-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    c = Check(out, work, args.dry_run, args.budget)
    c.results.update(
        command="benchmarks/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:]),
        work=str(work),
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    c.stage("env", env, needs=0)
    c.stage("install", install)
    c.stage("data", data)
    c.stage("resume", resume, needs=30)
    c.stage("cpu_sample", cpu_sample)
    c.stage("torchrun", torchrun, needs=30)
    c.stage("speed", speed, needs=60)
    c.stage("sample", sample, needs=40)
    c.stage("fd", fd, needs=30)
    c.stage("tests", tests, needs=60)
    c.stage("compile", compile_stage, needs=60)
    c.stage("memory", memory, needs=40)
    c.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    c.save()
    bad = {k: v["status"] for k, v in c.results["stages"].items() if v["status"] not in ("ok", "skipped")}
    print(f"\n{json.dumps({k: v['status'] for k, v in c.results['stages'].items()})}")
    print(f"wrote {out / 'gpu_check.json'}" + (f"; not ok: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
