"""Sampler quality vs number of model evaluations.

Oracle section (always): data x_0 ~ N(μ, Σ) in 6 dims (standard deviations 0.05..0.5 on rotated axes),
the exact noise predictor E[ε | x_t] as the model, schedule linear 1e-4..0.02, T = 1000. Error is the
2-Wasserstein distance between N(μ, Σ) and the Gaussian fitted to the samples. Every run starts from
the same x_T; stochastic samplers share one noise seed. diffusers' DDIMScheduler and
DPMSolverMultistepScheduler (if installed) are driven by the same predictor as peers.

The same question on a trained model is samplers_model.py's.

    .venv/bin/python benchmarks/samplers.py [--n 100000] [--out benchmarks/results/samplers_oracle.md]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageDraw

import ddpm
from ddpm.denoiser import make_denoiser
from ddpm.oracles import GaussianOracle, affine_gaussian
from ddpm.sampler_choice import DEFAULT_SAMPLER, DETERMINISTIC_SAMPLER
from ddpm.sampling import SAMPLERS
from ddpm.schedule import DEFAULT_SPACING, SPACINGS

EVALS = (5, 10, 20, 50, 100, 1000)
# (label, sampler name, options, deterministic)
CONFIGS: list[tuple[str, str, dict, bool]] = [
    ("ddpm (ancestral)", "ddpm", {}, False),
    ("ddim η=0", "ddim", {}, True),
    ("ddim η=1", "ddim", {"eta": 1.0}, False),
    ("dpmpp-2m", "dpmpp-2m", {}, True),
    ("dpmpp-2m lower_order_final", "dpmpp-2m", {"lower_order_final": True}, True),
    ("dpmpp-3m", "dpmpp-3m", {}, True),
    ("dpmpp-3m lower_order_final", "dpmpp-3m", {"lower_order_final": True}, True),
    ("dpmpp-2m-sde", "dpmpp-2m-sde", {}, False),
    ("dpmpp-2m-sde η=0.5", "dpmpp-2m-sde", {"eta": 0.5}, False),
    ("sa-solver", "sa-solver", {}, False),  # order 2, η = 1 on steps from σ ≥ 0.3, deterministic below
    ("sa-solver noise on every step", "sa-solver", {"noise_sigma_min": 0.0}, False),
    ("sa-solver order=3", "sa-solver", {"order": 3}, False),
    ("sa-solver η=0 order=3", "sa-solver", {"eta": 0.0, "order": 3}, True),
    ("unipc", "unipc", {}, True),
    ("unipc order=2 lower_order_final", "unipc", {"order": 2, "lower_order_final": True}, True),
]


def oracle_section(
    n: int, seed: int, only: list[str] | None = None, spacings: list[str] | None = None, cache_full: dict | None = None
) -> dict:
    """Run every configuration on the Gaussian oracle; returns {row label: {evals: (mc W2, exact W2 | None)}}.

    ``only`` / ``spacings`` restrict the run to those sampler labels / spacings (and skip the diffusers rows);
    ``cache_full`` maps a sampler label to its saved steps == T result, which is the same for every spacing.
    """
    schedule = ddpm.Schedule.linear(1000, 1e-4, 0.02)
    oracle = GaussianOracle(schedule, d=6)
    d = oracle.d
    x_T = torch.randn(n, d, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    denoise = make_denoiser(oracle.model("eps"), schedule, clip_x0=False)
    rows: dict[str, dict[int, tuple[float, float | None]]] = {}
    cache_full = dict(cache_full or {})  # steps == T is the same for every spacing
    for label, name, opts, det in CONFIGS:
        if only and label not in only:
            continue
        fn = SAMPLERS[name]
        for spacing in spacings or SPACINGS:
            row = rows.setdefault(f"{label} / {spacing}", {})
            for k in EVALS:
                if k == schedule.timesteps and label in cache_full:
                    row[k] = cache_full[label]
                    continue
                ts = ddpm.spaced_timesteps(schedule, k, spacing)
                gen = torch.Generator().manual_seed(seed + 1)
                out = fn(denoise, x_T.clone(), schedule, ts, gen, None, **opts)
                exact = None
                if det:
                    m, c = affine_gaussian(
                        lambda x, fn=fn, ts=ts, opts=opts: fn(denoise, x, schedule, ts, None, None, **opts), d
                    )
                    exact = oracle.w2_of(m, c)
                row[k] = (oracle.w2(out), exact)
                if k == schedule.timesteps:
                    cache_full[label] = row[k]
            print(f"  {label} / {spacing}: " + " ".join(f"{row[k][0]:.2e}" for k in EVALS), file=sys.stderr)
    if not only and not spacings:
        rows.update(diffusers_rows(oracle, schedule, x_T))
    floors = [oracle.w2(oracle.sample(n, torch.Generator().manual_seed(1000 + i))) for i in range(5)]
    return {"rows": rows, "noise_floor": floors, "prior_floor": oracle.prior_floor(), "n": n}


def diffusers_rows(oracle: GaussianOracle, schedule: ddpm.Schedule, x_T: torch.Tensor) -> dict:
    """diffusers' schedulers driven by the same exact predictor (skipped when diffusers is missing)."""
    try:
        import diffusers
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
    except ImportError:
        print("diffusers not installed: skipping its rows", file=sys.stderr)
        return {}
    v = diffusers.__version__
    common = {
        "num_train_timesteps": schedule.timesteps,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
    }
    peers = [
        # clip_sample=False so that DDIM, like every sampler here, runs with clipping off.
        (f"diffusers {v} DDIMScheduler (clip_sample=False) / leading (default)", DDIMScheduler, {"clip_sample": False}),
        (
            f"diffusers {v} DDIMScheduler (clip_sample=False) / trailing",
            DDIMScheduler,
            {"clip_sample": False, "timestep_spacing": "trailing"},
        ),
        (f"diffusers {v} DPMSolverMultistepScheduler / linspace (default)", DPMSolverMultistepScheduler, {}),
        (
            f"diffusers {v} DPMSolverMultistepScheduler / trailing",
            DPMSolverMultistepScheduler,
            {"timestep_spacing": "trailing"},
        ),
    ]
    rows = {}
    for label, cls, kw in peers:
        row = {}
        for k in EVALS:

            def run(x: torch.Tensor, k: int = k, cls: Callable = cls, kw: dict = kw) -> torch.Tensor:
                sch = cls(**common, **kw)
                sch.set_timesteps(k)
                for t in sch.timesteps:
                    tt = torch.full((x.shape[0],), int(t), dtype=torch.long)
                    x = sch.step(oracle.eps(x, tt), t, x).prev_sample
                return x

            try:
                out = run(x_T.clone())
                m, c = affine_gaussian(run, oracle.d)
                row[k] = (oracle.w2(out), oracle.w2_of(m, c))
            except Exception as e:  # diffusers' DPM-Solver breaks at 1000 steps (λ = ∞ at index 0)
                print(f"  {label} at {k}: {type(e).__name__}: {e}", file=sys.stderr)
                row[k] = (math.nan, math.nan)
        rows[label] = row
        print(f"  {label}: " + " ".join(f"{row[k][0]:.2e}" for k in EVALS), file=sys.stderr)
    return rows


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if not math.isfinite(v):
        return "nan"
    return f"{v:.2e}"


def markdown(res: dict, cmd: str, seconds: float) -> str:
    rows, n = res["rows"], res["n"]
    nf = res["noise_floor"]
    nf_mean, nf_sd = sum(nf) / len(nf), (sum((x - sum(nf) / len(nf)) ** 2 for x in nf) / (len(nf) - 1)) ** 0.5
    lines = [
        "# Samplers on the Gaussian oracle",
        "",
        f"Command: `{cmd}` ({seconds:.0f} s on {platform.machine()} CPU, torch {torch.__version__}, float64).",
        "",
        "Data N(μ, Σ), d = 6, standard deviations 0.05..0.5 on rotated axes; model = exact E[ε | x_t];",
        "schedule linear 1e-4..0.02, T = 1000; clipping off. Columns: number of model evaluations.",
        "",
        f"- **Sampling-noise floor** (W2 of {n} exact draws of x_0, 5 seeds): {nf_mean:.2e} ± {nf_sd:.1e}.",
        f"- **Prior floor** (exact probability-flow map started from N(0, I) instead of q(x_999); ᾱ_999 > 0): "
        f"{res['prior_floor']:.2e}: where the exact ODE lands when started, as every sampler here is, from N(0, I).",
        "",
        f"## W2 of {n} samples (same x_T for all rows)",
        "",
        "| sampler / spacing | " + " | ".join(str(k) for k in EVALS) + " |",
        "|---|" + "---:|" * len(EVALS),
    ]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(fmt(row[k][0]) for k in EVALS) + " |")
    lines += [
        "",
        "## Exact W2 of the deterministic samplers (no sampling noise)",
        "",
        "With the oracle every deterministic sampler is an affine map x_T ↦ A x_T + b, so its output law is",
        "N(b, AAᵀ) exactly (probed with 0 and the unit vectors).",
        "",
        "| sampler / spacing | " + " | ".join(str(k) for k in EVALS) + " |",
        "|---|" + "---:|" * len(EVALS),
    ]
    for label, row in rows.items():
        if row[EVALS[0]][1] is not None:
            lines.append(f"| {label} | " + " | ".join(fmt(row[k][1]) for k in EVALS) + " |")
    lines += targets(rows)
    lines += default_spacing(rows)
    return "\n".join(lines) + "\n"


def targets(rows: dict) -> list[str]:
    """The project's targets: at 10 evaluations ≤ 1/20 of diffusers' DPM-Solver (trailing); at 20 within
    2x of the 1000-step ancestral sampler. Judged on the same-noise Monte Carlo W2."""
    peer = next((r for k, r in rows.items() if "DPMSolverMultistep" in k and k.endswith("/ trailing")), None)
    ancestral = rows["ddpm (ancestral) / linspace"][1000][0]
    ours = {k: r for k, r in rows.items() if not k.startswith("diffusers")}
    best10 = min(ours, key=lambda k: ours[k][10][0])
    best20 = min(ours, key=lambda k: ours[k][20][0])
    out = ["", "## Targets", ""]
    if peer is not None:
        need = peer[10][0] / 20
        out.append(
            f"- 10 evaluations, target ≤ 1/20 of diffusers DPMSolverMultistepScheduler (trailing) "
            f"= {peer[10][0]:.3e}/20 = {need:.2e}: best here **{best10}** {ours[best10][10][0]:.2e} "
            f"({peer[10][0] / ours[best10][10][0]:.1f}x better) → "
            f"{'met' if ours[best10][10][0] <= need else '**not met**'}."
        )
    out.append(
        f"- 20 evaluations, target ≤ 2 × ancestral DDPM at 1000 steps = 2 × {ancestral:.2e} = "
        f"{2 * ancestral:.2e}: best here **{best20}** {ours[best20][20][0]:.2e} → "
        f"{'met' if ours[best20][20][0] <= 2 * ancestral else '**not met**'}."
    )
    for const, value in (("DETERMINISTIC_SAMPLER", DETERMINISTIC_SAMPLER), ("DEFAULT_SAMPLER", DEFAULT_SAMPLER)):
        name, spacing = value.name, value.spacing
        row = next((k for k in ours if k.split(" / ")[0] == name and k.endswith("/ " + spacing)), None)
        if row is not None:
            out.append(
                f"- `{const} = {(value.name, value.spacing, value.steps)}` ({row}): "
                + ", ".join(f"{k} evals {ours[row][k][0]:.2e}" for k in EVALS if k in (10, 20, 50))
                + "."
            )
    return out


def default_spacing(rows: dict) -> list[str]:
    """``ddpm.sample()`` without ``spacing`` (``DEFAULT_SPACING``) against the best spacing of each sampler, with
    its default options, at 10 and 20 evaluations. Scored on the exact W2 where there is one (deterministic
    samplers: no sampling noise), else on the Monte Carlo W2; the target is within 10% of the best."""
    labels = {name: label for label, name, opts, _ in CONFIGS if not opts}  # each sampler with its defaults
    out = [
        "",
        "## sample()'s default spacing",
        "",
        "`ddpm.sample(..., sampler=S, steps=K)` without `spacing` uses `DEFAULT_SPACING`; target: within 10% "
        "of the best spacing for S at K = 10 and 20. Score: exact W2 for deterministic samplers (Monte Carlo "
        "W2 in brackets), Monte Carlo W2 for the others.",
        "",
        "| sampler | default spacing | K | default | best spacing | best | default / best | within 10% |",
        "|---|---|---:|---:|---|---:|---:|---|",
    ]
    for name, label in labels.items():
        spacing = DEFAULT_SPACING
        mine = {sp: rows[f"{label} / {sp}"] for sp in SPACINGS if f"{label} / {sp}" in rows}
        if spacing not in mine:
            out.append(f"| {name} | {spacing} | – | not measured | | | | |")
            continue
        for k in (10, 20):
            score = {sp: r[k][1] if r[k][1] is not None else r[k][0] for sp, r in mine.items()}
            best = min(score, key=score.get)
            ratio = score[spacing] / score[best]

            def shown(sp: str, k: int = k, mine: dict = mine) -> str:
                mc, exact = mine[sp][k]
                return f"{fmt(mc)}" if exact is None else f"{fmt(exact)} ({fmt(mc)})"

            out.append(
                f"| {name} | {spacing} | {k} | {shown(spacing)} | {best} | {shown(best)} | {ratio:.2f} | "
                f"{'yes' if ratio <= 1.1 else '**no**'} |"
            )
        missing = [sp for sp in SPACINGS if sp not in mine]
        if missing:
            out.append(f"| {name} | | | not measured on {', '.join(missing)} | | | | |")
    return out


def plot(res: dict, path: Path) -> None:
    """Log-log W2 vs evaluations for the best spacing of each sampler and the diffusers peers (Pillow)."""
    rows = res["rows"]
    chosen: dict[str, dict] = {}
    for label, row in rows.items():
        base = label.split(" / ")[0]
        if base.startswith("diffusers"):
            chosen[label] = row
            continue
        best = chosen.get(base)
        if best is None or row[10][0] < best[10][0]:
            chosen[base] = row
            chosen[base + "@"] = label  # type: ignore[assignment]
    W, H, L, R, Tm, B = 1100, 650, 80, 430, 30, 60
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    xs = [math.log10(k) for k in EVALS]
    ylo, yhi = -3.5, 0.3
    px = lambda x: L + (x - xs[0]) / (xs[-1] - xs[0]) * (W - L - R)  # noqa: E731
    py = lambda y: Tm + (yhi - y) / (yhi - ylo) * (H - Tm - B)  # noqa: E731
    dr.rectangle([L, Tm, W - R, H - B], outline="black")
    for k in EVALS:
        dr.text((px(math.log10(k)) - 10, H - B + 8), str(k), fill="black")
    for e in range(-3, 1):
        dr.line([L - 5, py(e), L, py(e)], fill="black")
        dr.text((10, py(e) - 6), f"1e{e}", fill="black")
    dr.text((L + 200, H - 25), "model evaluations (log)        W2 to N(mu, Sigma) (log)", fill="black")
    floor = sum(res["noise_floor"]) / len(res["noise_floor"])
    dr.line([L, py(math.log10(floor)), W - R, py(math.log10(floor))], fill=(150, 150, 150))
    colors = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 0),
        (90, 90, 200),
    ]
    legend_y = Tm
    i = 0
    for key, row in chosen.items():
        if key.endswith("@"):
            continue
        name = chosen.get(key + "@", key)
        pts = [(px(math.log10(k)), py(math.log10(max(row[k][0], 10**ylo)))) for k in EVALS if math.isfinite(row[k][0])]
        c = colors[i % len(colors)]
        dr.line(pts, fill=c, width=2)
        for p in pts:
            dr.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=c)
        dr.line([W - R + 10, legend_y + 6, W - R + 30, legend_y + 6], fill=c, width=3)
        dr.text((W - R + 35, legend_y), str(name).replace("η", "eta")[:64], fill="black")
        legend_y += 18
        i += 1
    dr.text((W - R + 35, legend_y + 6), "grey: sampling-noise floor", fill="black")
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="samples per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "samplers_oracle.md")
    ap.add_argument("--replot", action="store_true", help="redraw the table and plot from the saved JSON")
    ap.add_argument(
        "--only",
        action="append",
        metavar="LABEL",
        help="rerun only this sampler label (repeatable) and merge into the saved JSON",
    )
    ap.add_argument(
        "--spacing",
        action="append",
        choices=SPACINGS,
        help="rerun only this spacing (repeatable) and merge into the saved JSON",
    )
    args = ap.parse_args()
    # One thread: on a shared machine OpenMP workers spin against other jobs and run 100x slower.
    torch.set_num_threads(1)
    t0 = time.time()
    raw = args.out.with_suffix(".json")
    if args.replot:
        saved = json.loads(raw.read_text())
        res, cmd, seconds = saved["res"], saved["cmd"], saved["seconds"]
        res["rows"] = {k: {int(e): tuple(v) for e, v in row.items()} for k, row in res["rows"].items()}
    elif args.only or args.spacing:
        saved = json.loads(raw.read_text())
        res = saved["res"]
        res["rows"] = {k: {int(e): tuple(v) for e, v in row.items()} for k, row in res["rows"].items()}
        if res["n"] != args.n:
            raise SystemExit(f"--n {args.n} differs from the saved run's n = {res['n']}; merge needs the same n")
        full = {k.split(" / ")[0]: row[1000] for k, row in res["rows"].items() if not k.startswith("diffusers")}
        new = oracle_section(args.n, args.seed, args.only, args.spacing, full)["rows"]
        merged = {k: new.get(k, v) for k, v in res["rows"].items()}
        merged.update({k: v for k, v in new.items() if k not in merged})
        # rows in CONFIGS x SPACINGS order, the diffusers rows last
        order = {f"{c[0]} / {sp}": i for i, (c, sp) in enumerate((c, sp) for c in CONFIGS for sp in SPACINGS)}
        res["rows"] = dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))
        cmd = saved["cmd"] + "; then python benchmarks/samplers.py " + " ".join(sys.argv[1:])
        seconds = saved["seconds"] + time.time() - t0
    else:
        res = oracle_section(args.n, args.seed)
        cmd = ("python benchmarks/samplers.py " + " ".join(sys.argv[1:])).strip()
        seconds = time.time() - t0
    if not args.replot:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps({"res": res, "cmd": cmd, "seconds": seconds}, indent=0))
    md = markdown(res, cmd, seconds)
    print(md)
    args.out.write_text(md)
    plot(res, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
