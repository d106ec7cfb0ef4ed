"""Score sampler variants (any option of ``ddpm.sample``) on a trained model against 1000-step DDPM.

A companion to samplers_model.py, which runs a fixed grid of sampler × spacing × evaluations with the
library's default options. This one takes the configurations to compare on the command line, each as
``sampler/spacing/evaluations[/option=value...]`` with JSON values, e.g. ``sa-solver/logsnr/20/clip_x0=false``
or ``ddpm/linspace/1000/clip_x0=false``. Image i of every variant uses ``image_generators(seed, [i])``, as in
samplers_model.py, and the reference is samplers_model.py's cached 1000-step DDPM for the same checkpoint
(run that first). Output: FD in the same classifier features, FD / FD(DDPM-1000), and the paired bootstrap
interval of that ratio over the N images.

Samples are cached with samplers_model.py's (``benchmarks/.cache/``, keyed by the options too); what the two share
is in harness.py.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/studies/sampler_variants.py --checkpoint runs/fashion \\
        --num 300 sa-solver/logsnr/20 sa-solver/logsnr/20/clip_x0=false

A study in ``benchmarks/studies/``: it takes what it shares with the benchmarks from ``benchmarks/harness.py``, so it
runs from the repository's root with ``benchmarks/`` on the module path (``PYTHONPATH=benchmarks``), as above.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from harness import REFERENCE, cache_file, checkpoint_id, feature_net, paired_ratio, real_sets, samples_for

from ddpm.checkpoint import load_model
from ddpm.evaluation.featurenet import extract_features
from ddpm.evaluation.metrics import frechet_distance
from ddpm.sampling import SAMPLERS


def parse_variant(spec: str) -> tuple[str, str, int, dict]:
    """ "sampler/spacing/evals[/key=json...]" → (sampler, spacing, evals, options)."""
    parts = spec.split("/")
    if len(parts) < 3 or parts[0] not in SAMPLERS or not parts[2].isdigit():
        raise SystemExit(
            f"variant {spec!r}: write sampler/spacing/evaluations[/option=value...], "
            f"with sampler one of {', '.join(SAMPLERS)}"
        )
    options = {}
    for kv in parts[3:]:
        key, sep, value = kv.partition("=")
        if not sep:
            raise SystemExit(f"variant {spec!r}: option {kv!r} needs the form name=value")
        options[key] = json.loads(value)
    return parts[0], parts[1], int(parts[2]), options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", help="sampler/spacing/evaluations[/option=value...]")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", default="fashion-mnist", choices=["fashion-mnist", "digits"])
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [parse_variant(s) for s in args.variants]

    train_x, train_y, ref_x, ref_y, _ = real_sets(args.data)
    net, _ = feature_net(args.data, train_x, train_y, ref_x, ref_y, 2 if args.data == "fashion-mnist" else 40)
    real_f = extract_features(net, ref_x)
    model, ckpt, schedule = load_model(args.checkpoint)
    key = checkpoint_id(Path(ckpt.path))
    prediction = ckpt.meta.get("prediction", "eps")
    cfg = model.config
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    ref_file = cache_file(key, *REFERENCE, args.seed)
    ref = np.load(ref_file)["images"] if ref_file.exists() else np.zeros((0,))
    if len(ref) < args.num:
        raise SystemExit(
            f"no 1000-step reference with {args.num} images for {ckpt.path}: run benchmarks/"
            f"samplers_model.py --checkpoint {args.checkpoint} --num {args.num} --part reference"
        )
    ref_f = extract_features(net, torch.from_numpy(ref[: args.num]).float() / 127.5 - 1)
    fd_ref = frechet_distance(ref_f, real_f)
    print(f"checkpoint {ckpt.path} (step {ckpt.step}, {prediction}-prediction), N = {args.num}, seed {args.seed}\n")
    print("| variant | FD | FD / FD(DDPM-1000) | paired 90% interval |")
    print("|---|---:|---:|---:|")
    print(f"| ddpm/linspace/1000 (reference, library defaults) | {fd_ref:.3f} | 1 | – |")
    for spec, (sampler, spacing, steps, options) in zip(args.variants, variants, strict=True):
        imgs, _ = samples_for(
            model,
            schedule,
            key,
            shape,
            sampler,
            spacing,
            steps,
            args.num,
            args.seed,
            args.batch,
            prediction=prediction,
            options=options,
        )
        f = extract_features(net, torch.from_numpy(imgs).float() / 127.5 - 1)
        fd = frechet_distance(f, real_f)
        b = paired_ratio(f, ref_f, real_f, reps=200)
        print(f"| {spec} | {fd:.3f} | {fd / fd_ref:.3f} | {b['lo']:.2f}–{b['hi']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
