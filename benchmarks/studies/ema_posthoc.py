"""EMA length after the fact: rebuild other EMA profiles from a run's raw-weight snapshots, sample, score.

    ddpm train --data fashion-mnist --steps 6000 --checkpoint-every 100 --keep 100 --out RUN
    PYTHONPATH=benchmarks python benchmarks/studies/ema_posthoc.py --run RUN \\
        --profiles stored,warmup:10,warmup:5,warmup:20,raw --num 1000

The EMA that ``ddpm train`` keeps is ema_{n+1} = β_n ema_n + (1 − β_n) θ_{n+1} with
β_n = min(decay, (1+n)/(K+n)) and K = 10: a weighted average Σ_n w_n θ_n of the raw weights θ_n after n steps.
Other profiles have other weights w_n. With the raw weights saved every S steps, θ_n between two snapshots is
taken on the straight line between them (before the first one, as the first one), so any profile's average is
a combination of the snapshots. Profiles:

- ``stored``: the run's own EMA (the last checkpoint's), as ``ddpm sample`` uses it;
- ``raw``: the last raw weights, no averaging;
- ``warmup:K``: β_n = min(decay, (1+n)/(K+n)), decay the run's ``--ema-decay``; ``warmup:10`` is the run's own
  profile rebuilt from the snapshots, so its distance to ``stored`` and its score check the rebuild;
- ``warmup:K:DECAY``: the same with the cap DECAY instead of the run's.

Each profile's length is reported as σ_rel, the standard deviation of the step n under the weights w_n over
the last step N (Karras et al. 2024). Each profile's weights are written as the EMA of a checkpoint in
RUN/posthoc/, sampled with the default ``ddpm sample`` and scored with ``ddpm eval`` against the test split; one
row per profile goes to ``--results``.

A study in ``benchmarks/studies/``: it takes what it shares with the benchmarks from ``benchmarks/harness.py``, so it
runs from the repository's root with ``benchmarks/`` on the module path (``PYTHONPATH=benchmarks``), as above.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from harness import RESULTS, add_scoring_args, append_row, sample_npz, score_samples

from ddpm.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


def profile_weights(profile: str, last: int, decay: float) -> np.ndarray:
    """w_n for n = 0..last (float64, summing to 1) of a ``warmup:K[:DECAY]`` profile (``decay`` unless DECAY is
    given); ``raw`` puts all weight on ``last``."""
    w = np.zeros(last + 1)
    if profile == "raw":
        w[last] = 1.0
        return w
    kind, *values = profile.split(":")
    if kind != "warmup" or len(values) not in (1, 2):
        raise SystemExit(f"error: unknown profile {profile!r}: use stored, raw, warmup:K or warmup:K:DECAY")
    k = float(values[0])
    decay = float(values[1]) if len(values) == 2 else decay
    n = np.arange(last)
    beta = np.minimum(decay, (1 + n) / (k + n))
    # w_0 = Π_{m<last} β_m; w_n = (1 − β_{n−1}) Π_{m=n}^{last−1} β_m for n ≥ 1
    tail = np.concatenate([np.cumprod(beta[::-1])[::-1], [1.0]])  # tail[n] = Π_{m=n}^{last−1} β_m
    w[0] = tail[0]
    w[1:] = (1 - beta) * tail[1:]
    return w


def sigma_rel(w: np.ndarray) -> float:
    """Standard deviation of the step under the weights w, over the last step."""
    n = np.arange(len(w))
    mean = float(w @ n)
    return float(np.sqrt(w @ (n - mean) ** 2)) / (len(w) - 1)


def snapshot_coefficients(w: np.ndarray, steps: list[int]) -> np.ndarray:
    """How much of each snapshot (at ``steps``, ascending) Σ_n w_n θ_n takes when θ_n is interpolated linearly."""
    c = np.zeros(len(steps))
    s = np.asarray(steps)
    for n, wn in enumerate(w):
        if wn == 0.0:
            continue
        j = int(np.searchsorted(s, n))  # first snapshot at or after n
        if j == 0 or s[j] == n:
            c[j] += wn
        else:
            a = (n - s[j - 1]) / (s[j] - s[j - 1])
            c[j - 1] += (1 - a) * wn
            c[j] += a * wn
    return c


def combine(states: list[dict[str, torch.Tensor]], c: np.ndarray) -> dict[str, torch.Tensor]:
    """Σ_k c_k states_k for floating tensors (accumulated in float64); other tensors from the last state."""
    out = {}
    for name, last in states[-1].items():
        if not last.is_floating_point():
            out[name] = last.clone()
            continue
        acc = torch.zeros_like(last, dtype=torch.float64)
        for ck, st in zip(c, states, strict=True):
            if ck != 0.0:
                acc += ck * st[name].double()
        out[name] = acc.to(last.dtype)
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ over all floating tensors."""
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a ddpm train run with checkpoints every S steps")
    p.add_argument("--profiles", default="stored,warmup:10,raw")
    add_scoring_args(p)
    p.add_argument("--results", type=Path, default=RESULTS / "ema_posthoc.jsonl")
    args = p.parse_args()

    found = list_checkpoints(args.run)
    if len(found) < 2:
        sys.exit(f"error: {args.run} has {len(found)} checkpoints; train with --checkpoint-every S --keep K")
    steps = [s for s, _ in found]
    cks = [load_checkpoint(path) for _, path in found]
    last = cks[-1]
    decay = float(last.meta["train"]["ema_decay"])
    raws = [ck.model for ck in cks]
    stored_to_raw = distance(last.ema, last.model)
    out_dir = args.run / "posthoc"
    out_dir.mkdir(exist_ok=True)
    print(f"{len(steps)} snapshots, steps {steps[0]}..{steps[-1]} every {steps[1] - steps[0]}; ema decay {decay}")
    for profile in args.profiles.split(","):
        if profile == "stored":
            ema, sig = last.ema, None
        else:
            w = profile_weights(profile, steps[-1], decay)
            ema, sig = combine(raws, snapshot_coefficients(w, steps)), sigma_rel(w)
        name = profile.replace(":", "-")
        path = out_dir / f"{name}.safetensors"
        save_checkpoint(path, last.model, ema, {**last.meta, "ema_profile": profile})
        npz = out_dir / f"{name}-samples-{args.num}.npz"
        sample_s = sample_npz(path, args.num, out_dir / f"{name}-samples-{args.num}", npz, args.threads)
        scores = score_samples(npz, out_dir / f"{name}-eval", args, overwrite=True)
        row = {
            "run": str(args.run),
            "step": steps[-1],
            "snapshot_every": steps[1] - steps[0],
            "profile": profile,
            "sigma_rel": sig,
            "dist_to_stored": distance(ema, last.ema),
            "dist_stored_to_raw": stored_to_raw,
            "sample_wall_s": sample_s,
            "num": args.num,
            "ref_split": args.ref_split,
            "ref_num": args.ref_num,
            "scores": scores["metrics"],
            "date": time.strftime("%Y-%m-%d %H:%M"),
        }
        append_row(args.results, row)


if __name__ == "__main__":
    main()
