"""Where a ``ddpm train`` step spends its time on this CPU: the real command under the PyTorch profiler.

    python benchmarks/profile_train.py --precisions float32,bf16 --steps 40 --threads 2

For each precision, ``ddpm train --data D --steps W+S`` (the defaults otherwise: network, batch, objective, EMA)
runs under ``torch.profiler``; the first W steps (oneDNN picks and builds its kernels there) and whatever follows the
last optimizer step (the final checkpoint and sample grid) are left out. Each operator's self time in the window is
put in one category: by the operator for the network's work (convolutions forward and backward, matmuls and
attention, GroupNorm, SiLU, autocast's dtype casts), by the enclosing call for the AdamW step and the EMA update,
and "other" for the rest (element-wise adds, concatenation, upsampling, the data and draws, gradient clipping).
The table gives milliseconds per step and the share of the wall time; what is left of the wall time is Python
and time between operators. Run it on a quiet machine: the wall times count.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from ddpm.cli import main as ddpm_main

# Category by the operator's own name (first match wins), for operators outside the optimizer and the EMA.
BY_NAME: list[tuple[str, tuple[str, ...]]] = [
    ("convolution, backward", ("aten::convolution_backward",)),
    ("convolution, forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution")),
    (
        "matmul and attention",
        ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data"),
    ),
    ("GroupNorm", ("aten::native_group_norm", "aten::native_group_norm_backward")),
    ("SiLU", ("aten::silu", "aten::silu_backward")),
    ("dtype casts and copies", ("aten::copy_", "aten::_to_copy")),
]
BY_CALLER = [("AdamW step", "Optimizer.step"), ("EMA update", "aten::_foreach_lerp_")]


def categorize(event) -> str:
    """The category of one profiler event (a ``FunctionEvent``): by an enclosing call, else by its name."""
    parent = event
    while parent is not None:
        for label, prefix in BY_CALLER:
            if parent.name.startswith(prefix):
                return label
        parent = parent.cpu_parent
    for label, names in BY_NAME:
        if event.name in names:
            return label
    return "other"


def profile_run(precision: str, args: argparse.Namespace) -> dict:
    """Profile one ``ddpm train`` run; returns per-step milliseconds by category and the window's wall per step."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            "train",
            "--data",
            args.data,
            "--steps",
            str(args.warmup + args.steps),
            "--out",
            f"{tmp}/run",
            "--quiet",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "0",
            "--bf16" if precision == "bf16" else "--no-bf16",
        ]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            ddpm_main(cmd)
        events = prof.events()
        steps = sorted((e for e in events if e.name.startswith("Optimizer.step")), key=lambda e: e.time_range.start)
        if len(steps) != args.warmup + args.steps:
            raise SystemExit(f"error: expected {args.warmup + args.steps} optimizer steps, found {len(steps)}")
        lo, hi = steps[args.warmup - 1].time_range.end, steps[-1].time_range.end
        per: dict[str, float] = defaultdict(float)
        for e in events:
            if lo <= e.time_range.start and e.time_range.end <= hi and e.self_cpu_time_total > 0:
                per[categorize(e)] += e.self_cpu_time_total
    wall_ms = (hi - lo) / 1000 / args.steps
    return {"precision": precision, "wall_ms": wall_ms, "ms": {k: v / 1000 / args.steps for k, v in per.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precisions", default="float32,bf16")
    p.add_argument("--steps", type=int, default=40, help="profiled steps")
    p.add_argument("--warmup", type=int, default=10, help="steps left out first")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--batch-size", type=int, default=None, help="default: ddpm train's")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - {"float32", "bf16"}:
        raise SystemExit(f"error: --precisions takes float32 and/or bf16; got {args.precisions!r}")
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("error: --warmup and --steps must be at least 1 (the window starts after a whole step)")
    torch.set_num_threads(args.threads)
    print(
        f"load average before: {os.getloadavg()}; {time.strftime('%Y-%m-%d %H:%M')}; torch {torch.__version__}; "
        f"{args.threads} threads; {args.steps} steps after {args.warmup}"
    )
    rows = [profile_run(precision, args) for precision in precisions]
    labels = [label for label, _ in BY_NAME] + [label for label, _ in BY_CALLER] + ["other", "Python and gaps"]
    for r in rows:
        r["ms"]["Python and gaps"] = r["wall_ms"] - sum(r["ms"].values())
    print("| category | " + " | ".join(f"{r['precision']} ms/step | share" for r in rows) + " |")
    print("|---|" + "---:|---:|" * len(rows))
    for label in labels:
        cells = [f"{r['ms'].get(label, 0.0):.1f} | {100 * r['ms'].get(label, 0.0) / r['wall_ms']:.0f}%" for r in rows]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| **wall** | " + " | ".join(f"**{r['wall_ms']:.1f}** | 100%" for r in rows) + " |")


if __name__ == "__main__":
    main()
