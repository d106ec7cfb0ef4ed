"""UNet throughput on this machine: parameters, GFLOPs, training images/s, sampling evals/s, % of measured peak.

Usage::

    python benchmarks/throughput.py [--presets tiny,small,ddpm-cifar10] [--seconds S] [--threads N]
                                    [--precisions float32,bf16,auto] [--cases tiny:1:28:128:128,... | --set 64px]

``--set 64px`` measures every preset for colour images at 3×64×64, the published networks at a small batch (on a
CPU they run at a few images per second).

``--compile`` adds a ``torch.compile`` row for each case (TorchInductor, which on a CPU builds C++ kernels with
the system compiler) and reports the one-off compile time next to the steady speed, so the time it costs
can be set against what it saves over a run.

``--precisions bf16`` runs the network under bf16 autocast, with a bf16 peak measured beside the float32 one; each
row's "% peak" is against the peak of its own precision. ``auto`` runs each case in the precision ``ddpm train``
chooses for it (:func:`ddpm.train.fit.choose_precision`: on a CPU with bf16 instructions the faster of the two,
timed on the network at the training batch and cached per CPU model, torch version and network) and names the
choice and its timed ratio.

The peak is *measured* here (a large float32 matmul and a large conv2d, the faster of the two), so the
percentages say how well the network's mix of small convs, norms and activations uses this machine, not
how it compares with a datasheet. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (a
multiply-add counts as 2); training is counted as 3× the forward (forward + backward for inputs and
weights), the usual convention. On a CPU shared with other jobs the numbers drop; the header prints the
load average so a reader can tell.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
from harness import cpu_model
from torch.utils.flop_counter import FlopCounterMode

from ddpm.train.fit import choose_precision
from ddpm.unet import PRESETS, UNet

# (preset, channels, image size, training batch, sampling batch)
Case = tuple[str, int, int, int, int]
CASES: list[Case] = [
    ("tiny", 1, 8, 128, 256),
    ("tiny", 1, 28, 64, 128),
    ("small", 1, 28, 32, 64),
    ("ddpm-cifar10", 3, 32, 8, 16),
]
# Named sets of cases (--set): every preset for colour images at 64×64, batches sized for a CPU.
CASE_SETS: dict[str, list[Case]] = {
    "64px": [
        ("tiny-32", 3, 64, 32, 64),
        ("tiny-64", 3, 64, 32, 64),
        ("ddpm-cifar10", 3, 64, 8, 16),
        ("adm-64", 3, 64, 2, 4),
        ("adm-128", 3, 64, 2, 4),
        ("ddpm-256", 3, 64, 2, 4),
    ],
}


def load_average() -> str:
    """The 1/5/15-minute load averages, or 'n/a'."""
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def timed(fn: Callable[[], object], seconds: float, min_iters: int = 2) -> tuple[int, float]:
    """Call ``fn`` repeatedly for about ``seconds`` (at least ``min_iters`` times); return (iterations, elapsed)."""
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and iters >= min_iters:
            return iters, elapsed


def measured_peak(seconds: float, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """GFLOP/s of a 2048² matmul and of a 3×3 conv (32×128×32×32 -> 128 channels) in ``dtype``."""
    with torch.no_grad():
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        torch.mm(a, b)  # warm-up
        n, dt = timed(lambda: torch.mm(a, b), seconds)
        mm = 2 * 2048**3 * n / dt / 1e9

        conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(dtype)
        x = torch.randn(32, 128, 32, 32, dtype=dtype)
        conv(x)
        n, dt = timed(lambda: conv(x), seconds)
        cv = 2 * 32 * 32 * 32 * 128 * 128 * 9 * n / dt / 1e9
    return mm, cv


def forward_flops(net: UNet, channels: int, size: int) -> float:
    """FLOPs of one forward pass for one image."""
    x, t = torch.zeros(1, channels, size, size), torch.zeros(1, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t)
    return float(counter.get_total_flops())


def make_optimizer(net: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it (one kernel for all parameters)."""
    try:
        return torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(net.parameters(), lr=1e-4)


def bench_case(
    preset: str,
    channels: int,
    size: int,
    train_batch: int,
    sample_batch: int,
    seconds: float,
    bf16: bool = False,
    compile: bool = False,
) -> dict[str, float]:
    """Measure one preset at one image shape (the network under bf16 autocast with ``bf16``; compiled with
    ``torch.compile`` with ``compile``, whose first two training steps and first sampling call, compilation
    included, are reported as ``compile_s``)."""
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    torch.manual_seed(0)
    net = UNet.from_preset(preset, channels=channels, image_size=size)
    params = sum(p.numel() for p in net.parameters())
    flops = forward_flops(net, channels, size)
    model = torch.compile(net) if compile else net

    net.train()
    opt = make_optimizer(net)
    x = torch.randn(train_batch, channels, size, size)
    target = torch.randn_like(x)
    t = torch.randint(0, 1000, (train_batch,))

    def train_step() -> None:
        with autocast():
            loss = (model(x, t).float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(2):
        train_step()
    warm = time.perf_counter() - start
    n, dt = timed(train_step, seconds)
    train_ips = n * train_batch / dt

    net.eval()
    xs = torch.randn(sample_batch, channels, size, size)
    ts = torch.full((sample_batch,), 500)
    with torch.no_grad(), autocast():
        start = time.perf_counter()
        model(xs, ts)
        warm += time.perf_counter() - start
        n, dt = timed(lambda: model(xs, ts), seconds)
    sample_eps = n * sample_batch / dt

    return dict(
        params=params,
        compile_s=warm,
        gflops=flops / 1e9,
        train_ips=train_ips,
        step_ms=1e3 * train_batch / train_ips,
        train_gflops=3 * flops * train_ips / 1e9,
        sample_eps=sample_eps,
        sample_gflops=flops * sample_eps / 1e9,
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], list[Case]]:
    """The arguments, the precisions and the cases they ask for (``args.presets`` set to the cases' presets where
    ``--set`` or ``--cases`` chose them)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets", default="tiny,small,ddpm-cifar10", help=f"comma-separated presets out of {sorted(PRESETS)}"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--precisions", default="float32", help="comma-separated: float32, bf16 (autocast), auto (ddpm train's choice)"
    )
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row for each case and precision")
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated preset:channels:size:train_batch:sample_batch (default: the built-in "
        "list, filtered by --presets)",
    )
    parser.add_argument("--set", default=None, choices=sorted(CASE_SETS), help="a named list of cases instead")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - {"float32", "bf16", "auto"}:
        parser.error(f"--precisions {args.precisions!r}: choose from float32, bf16, auto")
    cases = CASES
    if args.set:
        cases = CASE_SETS[args.set]
        args.presets = ",".join(dict.fromkeys(c[0] for c in cases))
    if args.cases:
        try:
            cases = [
                (f[0], int(f[1]), int(f[2]), int(f[3]), int(f[4]))
                for f in (c.split(":") for c in args.cases.split(",") if c.strip())
            ]
        except (IndexError, ValueError):
            parser.error(f"--cases {args.cases!r}: write preset:channels:size:train_batch:sample_batch, ...")
        args.presets = ",".join(dict.fromkeys(c[0] for c in cases))
    unknown = sorted(set(wanted_presets(args)) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    return args, precisions, cases


def wanted_presets(args: argparse.Namespace) -> list[str]:
    """The presets of ``--presets``."""
    return [p.strip() for p in args.presets.split(",") if p.strip()]


def print_header(args: argparse.Namespace, precisions: list[str]) -> dict[str, float]:
    """Print the machine, the measured peak of each precision and the command; the peaks in GFLOP/s."""
    print("# UNet throughput\n")
    print(f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)")
    print(f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {', '.join(precisions)}, CPU")
    print(f"- load average before the run (1/5/15 min): {load_average()}")
    peaks = {}
    for name in dict.fromkeys(q for p in precisions for q in (("float32", "bf16") if p == "auto" else (p,))):
        mm, cv = measured_peak(args.seconds, torch.bfloat16 if name == "bf16" else torch.float32)
        peaks[name] = max(mm, cv)
        print(
            f"- measured {name} peak: matmul 2048² {mm:.1f} GFLOP/s, conv2d 3×3 128ch 32×32 {cv:.1f} GFLOP/s "
            f"-> peak {peaks[name]:.1f} GFLOP/s"
        )
    print(
        "- command: python benchmarks/throughput.py "
        + " ".join(
            f"--{k} {v}"
            for k, v in (
                ("presets", args.presets),
                ("seconds", args.seconds),
                ("threads", args.threads),
                ("precisions", args.precisions),
                ("cases", args.cases),
                ("set", args.set),
            )
            if v is not None
        )
        + (" --compile" if args.compile else "")
    )
    print()
    return peaks


def print_rows(args: argparse.Namespace, precisions: list[str], cases: list[Case], peaks: dict[str, float]) -> None:
    """Measure each case of a wanted preset in each precision (and compiled, with ``--compile``): one table row
    each."""
    print(
        "| preset | shape | precision | compiled (first steps s) | params | GFLOP/fwd/img | train batch "
        "| train img/s | train step ms "
        "| train GFLOP/s | train % peak | sample batch | sample evals/s | sample GFLOP/s | sample % peak |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    wanted = wanted_presets(args)
    compiles = (False, True) if args.compile else (False,)
    runs = ((c, p, k) for c in cases for p in precisions for k in compiles)
    for (preset, channels, size, tb, sb), name, comp in runs:
        if preset not in wanted:
            continue
        bf16, shown = name == "bf16", name
        if name == "auto":
            net, lines = UNet.from_preset(preset, channels=channels, image_size=size), []
            bf16 = choose_precision(net, torch.device("cpu"), tb, False, None, lines)[0]
            shown = "auto: " + lines[-1].removeprefix("precision: ").split(" here")[0] if lines else "auto: float32"
        peak = peaks["bf16" if bf16 else "float32"]
        r = bench_case(preset, channels, size, tb, sb, args.seconds, bf16=bf16, compile=comp)
        compiled = f"yes ({r['compile_s']:.0f} s)" if comp else "no"
        print(
            f"| {preset} | {channels}×{size}×{size} | {shown} | {compiled} | {r['params'] / 1e6:.2f}M "
            f"| {r['gflops']:.4f} | {tb} "
            f"| {r['train_ips']:.1f} | {r['step_ms']:.0f} | {r['train_gflops']:.1f} "
            f"| {100 * r['train_gflops'] / peak:.0f}% | {sb} | {r['sample_eps']:.1f} | {r['sample_gflops']:.1f} "
            f"| {100 * r['sample_gflops'] / peak:.0f}% |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure, print a Markdown report."""
    args, precisions, cases = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    peaks = print_header(args, precisions)
    print_rows(args, precisions, cases, peaks)
    print(f"\nload average after the run: {load_average()}")


if __name__ == "__main__":
    main()
