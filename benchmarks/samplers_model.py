"""Sampler quality vs number of model evaluations, on a trained model (the oracle half is samplers.py).

Every configuration (sampler × timestep spacing × evaluations) draws images 0..N-1 from the same
per-image seeds (``image_generators(seed, range(N))``), so rows differ only by the sampler. The reference
is 1000-step ancestral DDPM from the same seeds. Samples are rounded to uint8 (as real images are) and
scored in the feature space of a small CNN classifier (``ddpm.evaluation.featurenet.FeatureNet``) trained on the real
training split against the real test split:

- FD: Fréchet distance of Gaussians fitted to the features (FID's formula, our features). Biased upwards
  at small N, so it is only comparable at equal N; the "real train" row (N real training images vs the
  test split, 5 draws) is the floor for this N.
- KID: unbiased MMD² with the cubic polynomial kernel, mean ± std over 100 random subsets of N/2 images
  from each side (the std is the noise of a size-N/2 measurement, so it overstates the noise of the mean).
- For the target check, a paired bootstrap over image indices gives an interval for FD(config)/FD(DDPM-1000).

Samples are cached in ``benchmarks/.cache/`` (one .npz per configuration, extended when N grows) and the
feature network's weights in ``benchmarks/results/samplers_model.featurenet-<data>.safetensors``, so
reruns only score. Results accumulate per data set in samplers_model.json; the Markdown and the plot are
redrawn from it.

    .venv/bin/python benchmarks/samplers_model.py --checkpoint runs/fashion --data fashion-mnist --num 200
    .venv/bin/python benchmarks/samplers_model.py --replot
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from harness import REFERENCE, RESULTS, checkpoint_id, feature_net, log, paired_ratio, real_sets, samples_for
from PIL import Image, ImageDraw

from ddpm.checkpoint import load_model
from ddpm.evaluation.featurenet import FeatureNet, extract_features
from ddpm.evaluation.metrics import frechet_distance, kid
from ddpm.images import make_grid
from ddpm.sampler_choice import DEFAULT_SAMPLER, DETERMINISTIC_SAMPLER
from ddpm.schedule import Schedule

EVALS = (5, 10, 20, 50)
# (sampler, spacing); the default sampler's pair is put first.
CONFIGS = list(
    dict.fromkeys(
        [
            (DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing),
            (DETERMINISTIC_SAMPLER.name, DETERMINISTIC_SAMPLER.spacing),  # the most accurate ODE path on the oracle
            ("sa-solver", "info"),  # the default sampler on the oracle's best spacing
            ("dpmpp-2m-sde", "logsnr"),  # stochastic multistep: corrects model error like ancestral sampling does
            ("dpmpp-2m-sde", "info"),
            ("ddpm", "logsnr"),  # ancestral (stochastic) on few steps: separates solver error from ODE-vs-SDE
            ("dpmpp-2m", "info"),
            ("ddim", "leading"),
            ("dpmpp-2m", "logsnr"),
            ("dpmpp-3m", "logsnr"),
            ("ddim", "logsnr"),
            ("ddim", "linspace"),
            ("dpmpp-2m", "linspace"),
        ]
    )
)


# ---------------------------------------------------------------------------- sample strips


def sample_strip(images: dict[str, np.ndarray], path: Path, count: int = 16) -> None:
    """One labelled row per configuration: its first ``count`` images (uint8 (N, C, H, W)), the same seeds in
    every column, so columns compare samplers on the same starting noise."""
    scale = max(2, 56 // next(iter(images.values())).shape[-1])
    rows = [
        make_grid(x[:count].transpose(0, 2, 3, 1), nrow=count, padding=2, pad_value=128, scale=scale)
        for x in images.values()
    ]
    label_w = 220
    h, w = rows[0].shape[0], rows[0].shape[1]
    img = Image.new("RGB", (label_w + w, h * len(rows)), "white")
    dr = ImageDraw.Draw(img)
    for r, (label, grid) in enumerate(zip(images, rows, strict=True)):
        img.paste(Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert("RGB"), (label_w, r * h))
        dr.text((8, r * h + h // 2 - 6), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ---------------------------------------------------------------------------- scoring


def score(feats: torch.Tensor, ref: torch.Tensor, seed: int) -> dict:
    n = feats.shape[0]
    k_mean, k_std = kid(
        feats, ref, subsets=100, subset_size=max(2, n // 2), generator=torch.Generator().manual_seed(seed)
    )
    return {"fd": frechet_distance(feats, ref), "kid": k_mean, "kid_std": k_std}


Config = tuple[str, str, int]  # (sampler, spacing, evaluations)


def floor_rows(net: FeatureNet, train_x: torch.Tensor, ref_f: torch.Tensor, n: int) -> list[dict]:
    """The scores of 5 random draws of ``n`` real training images: the floor for this N."""
    floors = []
    for i in range(5):
        idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1000 + i))[:n]
        floors.append(score(extract_features(net, train_x[idx]), ref_f, seed=i))
    return floors


def plan(args: argparse.Namespace) -> list[Config]:
    """The configurations to sample, in order: the target rows first (default sampler at 20 and 10), then the
    reference, then the rest; only the reference with ``--part reference``, all but it with ``--part fast``."""
    every = [REFERENCE] + [(s, sp, k) for s, sp in CONFIGS[: args.configs] for k in EVALS]
    first = [
        (DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, 20),
        (DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, 10),
        REFERENCE,
    ]
    every = first + [p for p in every if p not in first]
    if args.part == "reference":
        return [REFERENCE]
    if args.part == "fast":
        return [p for p in every if p != REFERENCE]
    return every


def sample_and_score(
    model: torch.nn.Module,
    schedule: Schedule,
    key: str,
    shape: tuple[int, int, int],
    prediction: str,
    net: FeatureNet,
    ref_f: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[dict[str, dict], dict[Config, torch.Tensor], dict[Config, np.ndarray]]:
    """Each configuration of :func:`plan`'s samples (cached), features and scores: (rows by "sampler|spacing|evals",
    features and images by configuration)."""
    rows, feats, images = {}, {}, {}
    for sampler, spacing, steps in plan(args):
        imgs, per_image = samples_for(
            model, schedule, key, shape, sampler, spacing, steps, args.num, args.seed, args.batch, prediction=prediction
        )
        images[(sampler, spacing, steps)] = imgs
        x = torch.from_numpy(imgs).float() / 127.5 - 1
        f = extract_features(net, x)
        feats[(sampler, spacing, steps)] = f
        s = score(f, ref_f, seed=0)
        s["seconds_per_image"] = per_image
        rows[f"{sampler}|{spacing}|{steps}"] = s
        log(
            f"{sampler}/{spacing}/{steps}: FD {s['fd']:.3f}  KID {s['kid'] * 1e3:.2f}±{s['kid_std'] * 1e3:.2f} e-3"
            + f"  ({per_image * 1e3:.0f} ms/image)"
        )
    return rows, feats, images


def targets(rows: dict[str, dict], feats: dict[Config, torch.Tensor], ref_f: torch.Tensor) -> dict[str, dict]:
    """The default sampler at 20 and 10 evaluations against the reference, with the limits of the project's
    targets (within 10% and 25% in FD) and the paired bootstrap of the ratio."""
    ref_gen = feats[REFERENCE]
    out = {}
    for k, limit in ((20, 1.10), (10, 1.25)):
        cfgk = (DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, k)
        fd_c, fd_r = rows[f"{cfgk[0]}|{cfgk[1]}|{k}"]["fd"], rows["|".join(map(str, REFERENCE))]["fd"]
        rc, rr = rows[f"{cfgk[0]}|{cfgk[1]}|{k}"], rows["|".join(map(str, REFERENCE))]
        out[str(k)] = {
            "limit": limit,
            "fd": fd_c,
            "fd_ref": fd_r,
            "ratio": fd_c / fd_r,
            "kid": rc["kid"],
            "kid_std": rc["kid_std"],
            "kid_ref": rr["kid"],
            "kid_ref_std": rr["kid_std"],
            "bootstrap": paired_ratio(feats[cfgk], ref_gen, ref_f),
        }
    return out


def default_choice(rows: dict[str, dict], feats: dict[Config, torch.Tensor], ref_f: torch.Tensor) -> dict:
    """The default against the best other row at its own step count, paired over the same images ({} if either
    was not sampled)."""
    d_steps = DEFAULT_SAMPLER.steps
    d_cfg = (DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, d_steps)
    others = [c for c in feats if c[2] == d_steps and c != d_cfg]
    if d_cfg not in feats or not others:
        return {}
    best = min(others, key=lambda c: rows[f"{c[0]}|{c[1]}|{c[2]}"]["fd"])
    return {
        "steps": d_steps,
        "best_other": list(best),
        "fd_default": rows[f"{d_cfg[0]}|{d_cfg[1]}|{d_steps}"]["fd"],
        "fd_best_other": rows[f"{best[0]}|{best[1]}|{d_steps}"]["fd"],
        "bootstrap": paired_ratio(feats[d_cfg], feats[best], ref_f),
    }


def run(args: argparse.Namespace) -> dict:
    """Sample and score every configuration of ``args``; the result record ({} unless ``--part all``), with the
    sample strip of the key rows written beside ``--out``."""
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train_x, train_y, ref_x, ref_y, ref_desc = real_sets(args.data)
    net, meta = feature_net(args.data, train_x, train_y, ref_x, ref_y, args.feature_epochs)
    ref_f = extract_features(net, ref_x)
    floors = floor_rows(net, train_x, ref_f, args.num)

    model, ckpt, schedule = load_model(args.checkpoint, use_ema=not args.raw_weights)
    ckpt_path = Path(ckpt.path)
    key = checkpoint_id(ckpt_path) + ("-raw" if args.raw_weights else "")
    cfg = model.config
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    if shape[0] != ref_x.shape[1] or shape[1] != ref_x.shape[-1]:
        raise SystemExit(f"the model makes {shape} images but {args.data} has {tuple(ref_x.shape[1:])}")
    rows, feats, images = sample_and_score(
        model, schedule, key, shape, ckpt.meta.get("prediction", "eps"), net, ref_f, args
    )
    if args.part != "all":
        return {}
    shown = [REFERENCE, *[(c.name, c.spacing, k) for c in (DEFAULT_SAMPLER, DETERMINISTIC_SAMPLER) for k in (10, 20)]]
    sample_strip(
        {f"{s} / {sp} / {k} calls": images[(s, sp, k)] for s, sp, k in shown if (s, sp, k) in images},
        args.out.parent / f"{args.out.stem}-{args.data}-samples.png",
    )

    cmd = "python benchmarks/samplers_model.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {
        "data": args.data,
        "n": args.num,
        "seed": args.seed,
        "batch": args.batch,
        "cmd": cmd,
        "checkpoint": str(ckpt_path),
        "checkpoint_key": key,
        "step": ckpt.step,
        "ema": not args.raw_weights,
        "threads": args.threads,
        "reference": ref_desc,
        "feature_net": meta,
        "feature_dim": int(ref_f.shape[1]),
        "floors": floors,
        "rows": rows,
        "targets": targets(rows, feats, ref_f),
        "choice": default_choice(rows, feats, ref_f),
        "default": [DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, DEFAULT_SAMPLER.steps],
        "seconds": time.perf_counter() - t_start,
        "machine": f"{platform.machine()} CPU ({platform.processor() or 'unknown'}), torch {torch.__version__}, "
        f"{args.threads} thread{'s' if args.threads > 1 else ''}, {time.strftime('%Y-%m-%d')}",
    }


# ---------------------------------------------------------------------------- report


def _mean_std(xs: list[float]) -> tuple[float, float]:
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(xs) > 1 else 0.0


def _configs(rows: dict) -> list[tuple[str, str]]:
    """The (sampler, spacing) pairs of the result rows "sampler|spacing|evals", in order, without the reference."""
    ref_key = "|".join(map(str, REFERENCE))
    return list(dict.fromkeys(tuple(key.split("|")[:2]) for key in rows if key != ref_key))


def section_header(res: dict) -> list[str]:
    """The heading of one data set's section: command, checkpoint, features, the floor and the reference."""
    rows = res["rows"]
    ref_key = "|".join(map(str, REFERENCE))
    fd_floor = _mean_std([f["fd"] for f in res["floors"]])
    kid_floor = _mean_std([f["kid"] for f in res["floors"]])
    fn = res["feature_net"]
    return [
        f"## {res['data']}: N = {res['n']} images per configuration",
        "",
        f"Command: `{res['cmd']}` ({res['seconds']:.0f} s including cached work; {res['machine']}).",
        f"Checkpoint `{res['checkpoint']}` ({'EMA' if res['ema'] else 'raw'} weights, cache key "
        f"`{res['checkpoint_key']}`). Reference: {res['reference']}. Seeds: image i uses "
        f"`image_generators({res['seed']}, [i])` in every row.",
        f"Features: FeatureNet penultimate layer ({res['feature_dim']} dims), trained {fn.get('epochs')} epochs "
        f"({fn.get('train_seconds')} s), accuracy {float(fn.get('accuracy', 'nan')):.4f} on {fn.get('accuracy_on')}.",
        "",
        f"- **Floor** (N = {res['n']} real training images vs the reference, 5 draws): FD {fd_floor[0]:.3f} ± "
        f"{fd_floor[1]:.3f}, KID {kid_floor[0] * 1e3:.2f} ± {kid_floor[1] * 1e3:.2f} ×10⁻³.",
        f"- **Reference**, DDPM ancestral 1000 steps: FD {rows[ref_key]['fd']:.3f}, KID "
        f"{rows[ref_key]['kid'] * 1e3:.2f} ± {rows[ref_key]['kid_std'] * 1e3:.2f} ×10⁻³"
        + (f", {rows[ref_key]['seconds_per_image']:.2f} s/image." if rows[ref_key].get("seconds_per_image") else "."),
        "",
    ]


def score_table(res: dict, title: str, fmt: Callable[[dict], str]) -> list[str]:
    """One table of the section: a row per (sampler, spacing), a column per evaluation count, ``fmt`` of each."""
    rows = res["rows"]
    ref_key = "|".join(map(str, REFERENCE))
    default = tuple(res["default"][:2])
    cols = [*EVALS, REFERENCE[2]]
    lines = [
        title,
        "",
        "| sampler / spacing | " + " | ".join(str(k) for k in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for s, sp in _configs(rows):
        name = f"{s} / {sp}" + (" (default)" if (s, sp) == default else "")
        cells = [fmt(rows[f"{s}|{sp}|{k}"]) if f"{s}|{sp}|{k}" in rows else "–" for k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ref_cells = ["–"] * len(EVALS) + [fmt(rows[ref_key])]
    lines.append("| ddpm ancestral (reference, all 1000 steps) | " + " | ".join(ref_cells) + " |")
    return lines + [""]


def choice_and_targets(res: dict) -> list[str]:
    """The default against the best other row, and the targets, with their paired bootstrap intervals."""
    out = []
    ch = res.get("choice")
    if ch:
        b = ch["bootstrap"]
        out += [
            "### The default against the best other row",
            "",
            f"At {ch['steps']} evaluations the default ({res['default'][0]} / {res['default'][1]}) has FD "
            f"{ch['fd_default']:.3f}; the best other row, {ch['best_other'][0]} / {ch['best_other'][1]}, "
            f"{ch['fd_best_other']:.3f}. Paired bootstrap of FD(default)/FD(other) over the {res['n']} images: "
            f"median {b['median']:.3f}, 90% interval [{b['lo']:.3f}, {b['hi']:.3f}].",
            "",
        ]
    out += ["### Targets (quality measure: FD; KID alongside)", ""]
    for k, t in res["targets"].items():
        b = t["bootstrap"]
        met = "met" if t["ratio"] <= t["limit"] else "NOT met"
        out.append(
            f"- Default sampler ({res['default'][0]} / {res['default'][1]}) at {k} evaluations within "
            f"{(t['limit'] - 1) * 100:.0f}% of DDPM-1000 in FD: FD {t['fd']:.3f} vs {t['fd_ref']:.3f}, "
            f"ratio {t['ratio']:.3f} → **{met}**. Paired bootstrap over the {res['n']} images: ratio 90% "
            f"interval [{b['lo']:.3f}, {b['hi']:.3f}], share of resamples within the limit "
            f"{b['p_within_' + ('10' if k == '20' else '25')] * 100:.0f}%. KID ×10³: "
            f"{t['kid'] * 1e3:.2f} ± {t['kid_std'] * 1e3:.2f} vs {t['kid_ref'] * 1e3:.2f} ± "
            f"{t['kid_ref_std'] * 1e3:.2f}."
        )
    return out


def markdown_section(res: dict) -> str:
    """One data set's section of the report."""
    out = section_header(res)
    out += score_table(res, "### FD (lower is better; columns: model evaluations)", lambda r: f"{r['fd']:.3f}")
    out += score_table(
        res,
        "### KID ×10³ (mean ± std over 100 subsets of N/2; the std is the noise of one "
        "half-size measurement, not of the mean)",
        lambda r: f"{r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f}",
    )
    if any(r.get("seconds_per_image") for r in res["rows"].values()):
        batch = res.get("batch", "?")
        threads = res.get("threads", 1)
        out += score_table(
            res,
            f"### Sampling time, seconds per image ({threads} thread{'s' if threads > 1 else ''}, batches of {batch})",
            lambda r: f"{r['seconds_per_image']:.3f}" if r.get("seconds_per_image") else "?",
        )
    out += choice_and_targets(res)
    return "\n".join(out) + "\n"


def write_report(all_res: dict, out_md: Path) -> str:
    parts = [
        "# Samplers on a trained model: quality vs model evaluations",
        "",
        "Written by `benchmarks/samplers_model.py` (see its docstring for the method); the oracle half is "
        f"in samplers_oracle.md. Plot: {out_md.with_suffix('.png').name} (FD and KID vs evaluations, log x).",
        "",
    ]
    for data in sorted(all_res, key=lambda d: d != "fashion-mnist"):
        parts.append(markdown_section(all_res[data]))
    md = "\n".join(parts)
    out_md.write_text(md)
    plot(all_res, out_md.with_suffix(".png"))
    return md


COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def plot(all_res: dict, path: Path) -> None:
    """One row per data set, panels FD and KID; log-x evaluations, linear y; dashed = reference, dotted = floor."""
    datas = sorted(all_res, key=lambda d: d != "fashion-mnist")
    pw, ph, ml, mr, mt, mb = 520, 340, 70, 20, 40, 50
    legend_w = 300
    W, H = 2 * pw + legend_w, ph * len(datas)
    img = Image.new("RGB", (W, H), "white")
    dr = ImageDraw.Draw(img)
    lx0, lx1 = math.log(EVALS[0]), math.log(EVALS[-1])
    for row, data in enumerate(datas):
        res = all_res[data]
        rows = res["rows"]
        ref_key = "|".join(map(str, REFERENCE))
        configs = _configs(rows)
        for col, (metric, scale, label) in enumerate((("fd", 1.0, "FD"), ("kid", 1e3, "KID x1e3"))):
            x0, y0 = col * pw + ml, row * ph + mt
            w, h = pw - ml - mr, ph - mt - mb
            floor = float(np.mean([f[metric] for f in res["floors"]])) * scale
            vals = [rows[k][metric] * scale for k in rows] + [floor]
            lo, hi = min(0.0, min(vals)), max(vals) * 1.05
            # Clip the y range so the short-step outliers do not flatten everything else.
            hi = min(hi, 4 * rows[ref_key][metric] * scale + 1e-12) if rows[ref_key][metric] > 0 else hi

            def px(k: float, x0=x0, w=w) -> float:
                return x0 + (math.log(k) - lx0) / (lx1 - lx0) * w

            def py(v: float, y0=y0, h=h, lo=lo, hi=hi) -> float:
                return y0 + h - (min(max(v, lo), hi) - lo) / (hi - lo) * h

            dr.rectangle([x0, y0, x0 + w, y0 + h], outline="black")
            title = f"{data}, N = {res['n']}: {label} vs evaluations (clipped at 4x reference)"
            dr.text((x0, y0 - 28), title, fill="black")
            for k in EVALS:
                dr.line([px(k), y0 + h, px(k), y0 + h + 4], fill="black")
                dr.text((px(k) - 6, y0 + h + 8), str(k), fill="black")
            for j in range(5):
                v = lo + (hi - lo) * j / 4
                dr.line([x0 - 4, py(v), x0, py(v)], fill="black")
                dr.text((x0 - 60, py(v) - 6), f"{v:.3g}", fill="black")
            for yv, style in ((rows[ref_key][metric] * scale, 8), (floor, 3)):
                for xx in range(int(x0), int(x0 + w), 2 * style):
                    dr.line([xx, py(yv), min(xx + style, x0 + w), py(yv)], fill=(0, 0, 0))
            for c, (s, sp) in enumerate(configs):
                pts = [(px(k), py(rows[f"{s}|{sp}|{k}"][metric] * scale)) for k in EVALS if f"{s}|{sp}|{k}" in rows]
                color = COLORS[c % len(COLORS)]
                if len(pts) > 1:
                    dr.line(pts, fill=color, width=2)
                for x, y in pts:
                    dr.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        lx, ly = 2 * pw + 10, row * ph + mt
        for c, (s, sp) in enumerate(configs):
            dr.line([lx, ly + 7 + 18 * c, lx + 24, ly + 7 + 18 * c], fill=COLORS[c % len(COLORS)], width=3)
            dr.text((lx + 30, ly + 18 * c), f"{s} / {sp}", fill="black")
        yy = ly + 18 * len(configs) + 10
        dr.text((lx, yy), "dashed: DDPM 1000 steps", fill="black")
        dr.text((lx, yy + 18), "dotted: real train images (floor)", fill="black")
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="run directory (latest checkpoint) or checkpoint file")
    ap.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    ap.add_argument("--num", type=int, default=200, help="images per configuration (N)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50, help="images per sampling batch (results do not depend on it)")
    ap.add_argument(
        "--part",
        choices=["all", "reference", "fast"],
        default="all",
        help="sample only the 1000-step reference or only the rest (to run two processes), no report",
    )
    ap.add_argument("--configs", type=int, default=6, help=f"how many of {len(CONFIGS)} sampler/spacing pairs to run")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (more than 1 only on an otherwise idle machine: contended pools stall)",
    )
    ap.add_argument("--feature-epochs", type=int, default=None, help="default: 2 (fashion-mnist), 40 (digits)")
    ap.add_argument("--raw-weights", action="store_true", help="use the raw instead of the EMA weights")
    ap.add_argument("--out", type=Path, default=RESULTS / "samplers_model.md")
    ap.add_argument("--replot", action="store_true", help="redraw the Markdown and plot from the saved JSON")
    args = ap.parse_args()
    raw = args.out.with_suffix(".json")
    all_res = json.loads(raw.read_text()) if raw.exists() else {}
    if not args.replot:
        if args.checkpoint is None:
            ap.error("--checkpoint is required (or --replot)")
        if args.feature_epochs is None:
            args.feature_epochs = 40 if args.data == "digits" else 2
        res = run(args)
        if args.part != "all":
            return
        all_res[args.data] = res
        args.out.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(all_res, indent=1))
    print(write_report(all_res, args.out))


if __name__ == "__main__":
    main()
