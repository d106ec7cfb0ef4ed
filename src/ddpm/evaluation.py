"""``ddpm eval``: score generated images against a data set (FID, KID, precision/recall, FeatureNet FD).

Two ways in: ``--checkpoint RUN`` samples ``--num`` images first (written as samples.npz beside eval.json,
so they can be scored again with ``--samples``); ``--samples DIR|FILE.npz`` scores images that exist.
The terminal gets a short table; ``eval.json`` gets every figure and the protocol that produced it
(image counts, reference split and subset, extractor files and hashes, resize, sampler, seeds, checkpoint
hash). Reference features are cached (see :mod:`ddpm.reference`), so a second evaluation against the same
data embeds only the generated images.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import file_sha256, load_model, resolve_checkpoint
from .data import decode_image, image_files, load_dataset
from .errors import ParameterError, UserError, check_at_least
from .featurenet import featurenet_for
from .generate import check_sampler, choose_sampler, draw, resolve_label
from .images import make_grid, save_png
from .inception import Inception
from .likelihood import bits_per_dim
from .metrics import kid, memorization, precision_recall
from .reference import default_cache_dir, fd_against, reference_features, subset_indices, to_pixels
from .runtime import pick_device
from .sampling import image_generators

METRICS = ("fid", "kid", "pr", "fd")  # a new metric: add its name here and a block in _score
INCEPTION_METRICS = ("fid", "kid", "pr")
DEFAULT_METRICS = "fid,kid,pr"
KID_SUBSETS, KID_MAX_SUBSET, PR_K = 100, 1000, 3
PAIRS_SHOWN = 8  # rows of the memorization picture


@dataclass
class EvalSettings:
    """What ``ddpm eval`` does: its flags as typed fields (the same names, ``label`` for --class, ``options`` for
    --option, ``ema``/``clip_x0``/``progress`` for --no-ema/--no-clip/--quiet). Exactly one of ``checkpoint``
    (sample, then score) and ``samples`` (score images that exist)."""
    checkpoint: str | None = None
    samples: str | None = None
    data: str | None = None
    image_size: int | None = None
    num: int | None = None
    seed: int = 0
    ref_split: str = "train"
    ref_num: int | None = None
    metrics: str | None = None
    nll: bool = False
    nll_num: int = 100
    nll_variance: str = "posterior"
    memorization: bool = False
    out: str | None = None
    batch_size: int = 100
    inception: str | None = None
    featurenet: str | None = None
    cache_dir: str | None = None
    sampler: str | None = None
    spacing: str | None = None
    steps: int | None = None
    eta: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: int | str | None = None
    guidance: float | None = None
    ema: bool = True
    clip_x0: bool = True
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    command: str | None = None  # recorded in eval.json


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
    if not path.exists():
        raise ParameterError(f"{{samples}} {path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ParameterError(f"{{samples}} {path} is a file but not an .npz: pass a folder of images or an .npz")
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
    for p in image_files(path, recursive=False):
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
        raise ParameterError(f"{{samples}} {path} holds no images (PNG/JPEG/...; ddpm's grids and trajectories do not "
                             "count): point it at the folder ddpm sample wrote, or at an .npz")
    arrays = []
    for p in files:
        try:
            arrays.append(decode_image(p))
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
        raise ParameterError(f"{{metrics}} {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe_shape(p: np.ndarray) -> str:
    return f"{p.shape[2]}x{p.shape[3]} with {p.shape[1]} channel{'s' if p.shape[1] != 1 else ''}"


def evaluate_images(cfg: EvalSettings) -> tuple[Path, dict[str, Any]]:
    """Score generated images (see the module docstring); returns (eval.json's path, its record)."""
    t_start = time.perf_counter()
    if (cfg.checkpoint is None) == (cfg.samples is None):
        raise ParameterError("pass exactly one of {checkpoint} RUN (sample, then score) and {samples} DIR|FILE.npz")
    metrics = [] if (cfg.metrics is None and cfg.nll) else _parse_metrics(cfg.metrics or DEFAULT_METRICS)
    if cfg.nll and cfg.checkpoint is None:
        raise ParameterError("{nll} needs {checkpoint}: the bound is the model's, not the images'")
    check_at_least("nll_num", cfg.nll_num, 1)
    if not metrics and cfg.memorization:
        raise ParameterError("{memorization} compares samples with the data: keep a metric in {metrics}")
    if cfg.num is not None:
        check_at_least("num", cfg.num, 2, " (statistics of a set)")
    if cfg.ref_num is not None:
        check_at_least("ref_num", cfg.ref_num, 2)
    check_at_least("batch_size", cfg.batch_size, 1)
    if cfg.samples is not None and cfg.data is None:
        raise ParameterError("{samples} needs {data}: the data set to compare the images with")
    device = pick_device(cfg.device)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    progress = cfg.progress
    protocol: dict[str, Any] = {}

    # -- where the results go; refuse to overwrite before doing any work
    ckpt_path = None
    if cfg.checkpoint is not None:
        ckpt_path = resolve_checkpoint(cfg.checkpoint)
        out = Path(cfg.out) if cfg.out else ckpt_path.parent.parent / "eval" / ckpt_path.stem
    else:
        src = Path(cfg.samples)
        out = Path(cfg.out) if cfg.out else (src if src.is_dir() else src.parent)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out} is a file: choose a directory")
    written = ["eval.json", *(["samples.npz"] if ckpt_path and metrics else []),
               *(["memorization.png"] if cfg.memorization else [])]
    clash = [n for n in written if (out / n).exists()]
    if clash and not cfg.overwrite:
        raise ParameterError(f"{out} already holds {clash[0]}: choose another {{out}} or pass {{overwrite}}")

    # -- the generated side, part 1: the model (sampling waits until the data set has been checked)
    meta_ckpt = None
    if ckpt_path is not None:
        model, ckpt, schedule = load_model(ckpt_path, use_ema=cfg.ema, device=device)
        meta_ckpt = ckpt.meta
        choice = choose_sampler(schedule.timesteps, sampler=cfg.sampler, spacing=cfg.spacing, steps=cfg.steps,
                                eta=cfg.eta, options=cfg.options)
        check_sampler(choice, schedule)
        label = resolve_label(cfg.label, cfg.guidance, meta_ckpt)
        train_cfg = meta_ckpt.get("train", {})
        data_spec = cfg.data or train_cfg.get("data")
        image_size = cfg.image_size if cfg.image_size is not None else train_cfg.get("image_size")
        if not data_spec:
            raise ParameterError(f"{ckpt_path} does not record its data set: pass {{data}}")
    else:
        data_spec, image_size, label = cfg.data, cfg.image_size, None
        gen, gen_info = read_samples(Path(cfg.samples))

    nll = None
    if cfg.nll:
        nll = _nll(model, schedule, meta_ckpt, cfg, data_spec, image_size, device, progress, protocol)
        protocol["nll"]["checkpoint_sha256"] = file_sha256(ckpt_path)
    if not metrics:  # --nll alone: no samples to draw or score
        return _write(out, {"nll": nll}, None, protocol, device, t_start, cfg.command)

    # -- the reference side
    ref_ds = load_dataset(data_spec, image_size, split=cfg.ref_split)
    ref_all = ref_ds.as_uint8()  # (N, C, H, W) uint8
    if label is not None and ref_ds.labels is not None:
        ref_all = ref_all[(ref_ds.labels == label).numpy()]  # --class: compare with that class only
    split_size = len(ref_all)
    ref_num = split_size if cfg.ref_num is None else cfg.ref_num
    if ref_num > split_size:
        raise ParameterError(f"{{ref_num}} {ref_num} is larger than the {cfg.ref_split} split of {data_spec} "
                             f"({split_size} images): pass {{ref_num}} {split_size} or fewer")
    ref_idx = subset_indices(split_size, ref_num)
    ref = ref_all[ref_idx]  # (M, C, H, W) uint8

    # -- the generated side, part 2
    if ckpt_path is not None:
        c, size = int(meta_ckpt["channels"]), int(meta_ckpt["image_size"])
        if (c, size) != (ref.shape[1], ref.shape[2]):
            raise ParameterError(f"{ckpt_path.name} makes {size}x{size} images with {c} channel(s) but {data_spec} is "
                                 f"{_describe_shape(ref)}: compare with the data it was trained on (or {{image_size}})")
        num = 1000 if cfg.num is None else cfg.num
        if num > ref_num:
            raise ParameterError(f"{{num}} {num} is larger than the reference set ({ref_num} {cfg.ref_split} images of "
                                 f"{data_spec}): pass {{num}} {ref_num} or fewer")
        gen = _sample(model, schedule, meta_ckpt, choice, cfg, label, num, device, progress)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "samples.npz", images=gen.transpose(0, 2, 3, 1))
        gen_info = {"source": "checkpoint", "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
                    "checkpoint_step": meta_ckpt.get("step"), "ema": cfg.ema, "sampler": choice.name,
                    "spacing": choice.spacing, "steps": choice.steps, "options": choice.options,
                    "guidance": cfg.guidance, "class": label, "clip_x0": cfg.clip_x0, "seed": cfg.seed,
                    "seeds": f"image i from (seed {cfg.seed}, i), i = 0..{num - 1}",
                    "samples_file": str(out / "samples.npz")}
    else:
        if cfg.num is not None:
            if cfg.num > len(gen):
                raise ParameterError(f"{{num}} {cfg.num} is more than the {len(gen)} images in {cfg.samples}")
            gen = gen[:cfg.num]
        if gen.shape[1:] != ref.shape[1:]:
            raise ParameterError(f"the samples are {_describe_shape(gen)} but {data_spec} is {_describe_shape(ref)}: "
                                 "compare images with the data set they imitate (or pass {image_size})")
        if len(gen) < 2:
            raise ParameterError(f"{{samples}} {cfg.samples} holds {len(gen)} image: statistics need at least 2")
        if len(gen) > ref_num:
            raise ParameterError(f"{len(gen)} samples but only {ref_num} reference images ({cfg.ref_split} split of "
                                 f"{data_spec}): pass {{num}} {ref_num} or fewer, or a larger {{ref_num}}")
    if "pr" in metrics and len(gen) <= PR_K:
        raise ParameterError(f"precision/recall needs more than k = {PR_K} images per set; got {len(gen)}: "
                             "score more images, or drop pr from {metrics}")
    gen_info["num"] = len(gen)
    protocol["generated"] = gen_info
    protocol["reference"] = {"data": data_spec, "description": ref_ds.name, "split": cfg.ref_split, "num": ref_num,
                             "split_size": split_size, "image_size": ref.shape[-1], "channels": ref.shape[1],
                             "subset": "all" if ref_num == split_size else "seeded random subset (seed 0)",
                             "class": label, "pixels": "round((x + 1) * 127.5) to uint8, like the samples"}
    _log(f"scoring {len(gen)} generated images against {ref_num} {cfg.ref_split} images of {data_spec} "
         f"({', '.join(metrics)}); reference features cached in {cache_dir}")

    results, extra = _score(metrics, gen, ref, data_spec, image_size, cfg, protocol, cache_dir, device, progress)
    out.mkdir(parents=True, exist_ok=True)
    memo = None
    if cfg.memorization:
        memo = _memorization(gen, ref if cfg.ref_split == "train" else None, data_spec, image_size, cfg, extra,
                             protocol, cache_dir, out, progress)
    if nll is not None:
        results["nll"] = nll
    return _write(out, results, memo, protocol, device, t_start, cfg.command)


def _write(out: Path, metrics: dict[str, Any], memo: dict[str, Any] | None, protocol: dict[str, Any],
           device: torch.device, t_start: float, command: str | None) -> tuple[Path, dict[str, Any]]:
    """Write eval.json (atomically); returns its path and the record."""
    record = {"metrics": metrics, "memorization": memo, "protocol": protocol, "command": command,
              "ddpm_version": __version__, "torch_version": torch.__version__, "device": str(device),
              "seconds": round(time.perf_counter() - t_start, 1)}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".eval.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, out / "eval.json")
    return out / "eval.json", record


def _nll(model: Any, schedule: Any, meta: dict[str, Any], cfg: EvalSettings, data_spec: str,
         image_size: int | None, device: torch.device, progress: bool, protocol: dict[str, Any]) -> dict[str, Any]:
    """The variational bound (bits/dim) of ``--nll-num`` seeded held-out images; records its protocol."""
    try:
        ds, split = load_dataset(data_spec, image_size, split="test"), "test"
    except UserError:  # digits, image folders: no held-out split
        ds, split = load_dataset(data_spec, image_size), "train"
    if (ds.channels, ds.image_size) != (int(meta["channels"]), int(meta["image_size"])):
        raise ParameterError(f"the checkpoint makes {meta['image_size']}x{meta['image_size']} images with "
                             f"{meta['channels']} channel(s) but {data_spec} is {ds.image_size}x{ds.image_size} with "
                             f"{ds.channels}: compare with the data it was trained on (or {{image_size}})")
    n = min(cfg.nll_num, len(ds))
    idx = subset_indices(len(ds), n, seed=3)
    x0 = ds.images[torch.as_tensor(idx)]
    _log(f"variational bound of {n} {split} images: {schedule.timesteps} model calls per batch of {cfg.batch_size}")
    try:
        vb = bits_per_dim(model, x0, schedule, prediction=meta.get("prediction", "eps"), variance=cfg.nll_variance,
                          clip_x0=cfg.clip_x0, batch_size=cfg.batch_size,
                          generator=image_generators(cfg.seed, range(n)), progress=progress, device=device)
    except ValueError as e:
        raise ParameterError(f"{{nll}}: {e}") from None
    protocol["nll"] = {"data": data_spec, "split": split, "num": n, "subset": "seeded random subset (seed 3)",
                       "variance": cfg.nll_variance, "clip_x0": cfg.clip_x0, "timesteps": schedule.timesteps,
                       "ema": cfg.ema, "noise": f"image i's x_t from (seed {cfg.seed}, i)",
                       "units": "bits/dim, 8-bit data in [-1, 1], discretized Gaussian decoder (Ho et al. 2020)",
                       "labels": "none (the unconditional bound)"}
    return vb.summary()


def _sample(model: Any, schedule: Any, meta: dict[str, Any], choice: Any, cfg: EvalSettings,
            label: int | None, num: int, device: torch.device, progress: bool) -> np.ndarray:
    """Images 0..num-1 of (seed, i) as uint8 (num, C, H, W), exactly as ``ddpm sample`` draws them."""
    parts = []
    with tqdm(total=num, desc=f"sampling {choice.name}, {choice.steps} steps", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, num, cfg.batch_size):
            idx = list(range(start, min(num, start + cfg.batch_size)))
            x = draw(model, schedule, meta, choice, cfg.seed, idx, label, cfg.guidance, cfg.clip_x0, device)
            parts.append(to_pixels(x))
            bar.update(len(idx))
    return np.concatenate(parts)


def _embed(ext: Any, gen: np.ndarray, ref: np.ndarray, info: dict[str, Any], cfg: EvalSettings,
           cache_dir: Path, progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Features of the generated images, then of the reference (cached), announcing the time an uncached
    reference takes at the rate measured on the generated images."""
    t0 = time.perf_counter()
    f_gen = ext.features(gen, batch_size=cfg.batch_size, progress=progress, desc=f"{ext.name} (generated)")
    rate = len(gen) / max(time.perf_counter() - t0, 1e-9)

    def announce(n: int) -> None:
        _log(f"reference features ({ext.name}) are not cached: {n} images to embed, about "
             f"{n / rate / 60:.1f} min at the {rate:.1f} img/s measured on the generated images; cached afterwards "
             "(a smaller --ref-num costs less)")

    f_ref, mean, cov, file, cached = reference_features(ext, ref, cache_dir, info, cfg.batch_size, progress, announce)
    return f_gen, f_ref, mean, cov, f"{file} ({'read' if cached else 'written'})"


def _score(metrics: list[str], gen: np.ndarray, ref: np.ndarray, data_spec: str, image_size: int | None,
           cfg: EvalSettings,
           protocol: dict[str, Any], cache_dir: Path, device: torch.device,
           progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The asked-for metrics; also returns the features computed, for the memorization report."""
    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    protocol["extractors"], protocol["cache"] = {}, {}
    info = {"data": data_spec, "split": cfg.ref_split, "num": len(ref)}
    if any(m in INCEPTION_METRICS for m in metrics) or (cfg.memorization and "fd" not in metrics):

        ext = Inception(cfg.inception, device)
        f_gen, f_ref, mean, cov, cache_note = _embed(ext, gen, ref, info, cfg, cache_dir, progress)
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

        train = load_dataset(data_spec, image_size)
        if cfg.featurenet is None and train.labels is None:
            raise ParameterError(f"{{metrics}} fd needs a labelled data set (FeatureNet is a classifier), and "
                                 f"{data_spec} has no labels: use class subfolders, or {{metrics}} fid")
        fnet = featurenet_for(train.as_uint8(), train.labels, data_spec, cache_dir, cfg.featurenet,
                              device, _log)
        f_gen, f_ref, mean, cov, cache_note = _embed(fnet, gen, ref, info, cfg, cache_dir, progress)
        results["fd"] = fd_against(f_gen, mean, cov)
        protocol["extractors"]["featurenet"] = fnet.protocol()
        protocol["cache"]["featurenet_reference"] = cache_note
        extra.setdefault("features", (fnet, f_gen, f_ref))
    # --nll (the variational bound in bits/dim, ddpm.likelihood) plugs in here: results["nll_bpd"] = ...
    return results, extra


def _memorization(gen: np.ndarray, train_ref: np.ndarray | None, data_spec: str, image_size: int | None,
                  cfg: EvalSettings, extra: dict[str, Any], protocol: dict[str, Any], cache_dir: Path,
                  out: Path, progress: bool) -> dict[str, Any]:
    """Nearest training image of each sample, in features and in pixels, against held-out real images."""
    ext, f_gen, _ = extra["features"]
    if train_ref is None:  # the reference was the test split: the training images are needed too
        train_all = load_dataset(data_spec, image_size).as_uint8()
        train = train_all[subset_indices(len(train_all), cfg.ref_num or len(train_all))]
    else:
        train = train_ref
    try:
        test_all = load_dataset(data_spec, image_size, split="test").as_uint8()
        held = test_all[subset_indices(len(test_all), min(len(test_all), len(train)), seed=2)]
    except UserError:
        held = None  # no test split (digits, image folders): the baseline is leave-one-out within train

    def feats(p: np.ndarray, split: str) -> torch.Tensor:
        info = {"data": data_spec, "split": split, "num": len(p), "use": "memorization"}
        return reference_features(ext, p, cache_dir, info, cfg.batch_size, progress)[0]

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


def summary_table(record: dict[str, Any]) -> str:
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
