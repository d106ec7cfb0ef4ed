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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..cascade import batched, open_cascade, parse_stage, run_cascade
from ..checkpoint import read_meta, resolve_checkpoint
from ..data.load import load_dataset
from ..errors import ParameterError, check_at_least
from ..files import atomic_write, cache_dir
from ..generate import Sampling, open_for_sampling, save_npz
from ..runtime import pick_device
from ..version import __version__
from .memorization import memorization_report
from .reference import subset_indices, to_pixels
from .restoration import conditioned_table, evaluate_conditioned
from .samples import Images, conform_samples, read_samples
from .scores import PR_K, bound, score
from .settings import DEFAULT_METRICS, METRICS, EvalRun, EvalSettings, log


def evaluate_images(cfg: EvalSettings) -> tuple[Path, dict[str, Any]]:
    """Score generated images (see the module docstring); returns (eval.json's path, its record)."""
    metrics = _check_settings(cfg)
    device = pick_device(cfg.device)
    ckpt_path = resolve_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    out = _out_dir(cfg, ckpt_path, metrics)  # refuses to overwrite before doing any work
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_dir()
    if ckpt_path is not None and read_meta(ckpt_path).get("condition"):
        return _evaluate_conditioned(cfg, ckpt_path, metrics, device, out, cache)
    # The generated side, part 1: the model, or the images given (sampling waits until the data set is checked).
    s = open_for_sampling(ckpt_path, cfg, device) if ckpt_path is not None else None
    run = EvalRun(cfg, device, cache, out, *_compared_data(cfg, s))
    given = read_samples(Path(cfg.samples)) if s is None and cfg.samples is not None else None
    results: dict[str, Any] = {}
    if cfg.nll and s is not None:
        results["nll"] = bound(run, s)
    if not metrics:  # --nll alone: no samples to draw or score
        if not cfg.nll:
            raise ParameterError("{metrics} none leaves nothing to score for a model that draws from noise: name a "
                                 "metric, or add {nll}")  # fmt: skip
        return _write(run, results, None)
    ref, ref_record = _reference(run, s.label if s is not None else None)
    # The generated side, part 2.
    gen, gen_info = _sample_checkpoint(run, s, ref) if s is not None else _given_samples(run, given, ref)
    if "pr" in metrics and len(gen) <= PR_K:
        raise ParameterError(f"precision/recall needs more than k = {PR_K} images per set; got {len(gen)}: score "
                             "more images, or drop pr from {metrics}")  # fmt: skip
    gen_info["num"] = len(gen)
    run.protocol["generated"], run.protocol["reference"] = gen_info, ref_record
    log(f"scoring {len(gen)} generated images against {len(ref)} {cfg.ref_split} images of {run.data} "
        f"({', '.join(metrics)}); reference features cached in {cache}")  # fmt: skip
    scores, features = score(run, metrics, gen, ref)
    out.mkdir(parents=True, exist_ok=True)
    memo = None
    if cfg.memorization:
        memo = memorization_report(run, gen, ref if cfg.ref_split == "train" else None, features)
    return _write(run, {**scores, **results}, memo)


def _evaluate_conditioned(cfg: EvalSettings, ckpt_path: Path, metrics: list[str], device: torch.device, out: Path,
                          cache: Path) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """A checkpoint conditioned on an image: its outputs on the held-out conditions against the true images and the
    baselines (:mod:`.restoration`)."""
    if cfg.nll or cfg.memorization:
        raise ParameterError("{nll} and {memorization} score models that draw from noise: drop them for a "
                             "conditioned checkpoint")  # fmt: skip
    train_cfg = read_meta(ckpt_path).get("train", {})
    data = cfg.data or train_cfg.get("data")
    if not data:
        raise ParameterError(f"{ckpt_path} does not record its data set: pass {{data}}")
    run = EvalRun(cfg, device, cache, out, data, cfg.image_size)
    results = evaluate_conditioned(run, metrics)
    return _write(run, {"conditioned": results}, None)


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
        src = Path(str(cfg.samples))  # _check_settings: one of checkpoint and samples
        out = Path(cfg.out) if cfg.out else (src if src.is_dir() else src.parent)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out} is a file: choose a directory")
    written = [
        "eval.json",
        *(["samples.npz"] if ckpt_path and metrics else []),
        *(["memorization.png"] if cfg.memorization else []),
    ]
    clash = [n for n in written if (out / n).exists()]
    if clash and not cfg.overwrite:
        raise ParameterError(f"{out} already holds {clash[0]}: choose another {{out}} or pass {{overwrite}}")
    return out


def _compared_data(cfg: EvalSettings, s: Sampling | None) -> tuple[str, int | None]:
    """The data set to compare with and its image size: as given, else (with a checkpoint) the training run's, at the
    size of the images compared (a cascade's last stage's)."""
    if s is None:
        assert cfg.data is not None  # _check_settings: --samples needs --data
        return cfg.data, cfg.image_size
    train_cfg = s.meta.get("train", {})
    data = cfg.data or train_cfg.get("data")
    if not data:
        raise ParameterError(f"{s.checkpoint.path} does not record its data set: pass {{data}}")
    if cfg.image_size is not None:
        return data, cfg.image_size
    if cfg.then:  # the cascade's images: the last stage's size
        return data, int(read_meta(resolve_checkpoint(parse_stage(cfg.then[-1])[0]))["image_size"])
    return data, train_cfg.get("image_size")


def _reference(run: EvalRun, label: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The reference images uint8 (M, C, H, W) (a seeded subset of the split, of one class with a label) and
    their protocol record."""
    cfg = run.cfg
    ref_ds = load_dataset(run.data, run.image_size, split=cfg.ref_split)
    ref_all = ref_ds.as_uint8()  # (N, C, H, W) uint8
    if label is not None and ref_ds.labels is not None:
        ref_all = ref_all[(ref_ds.labels == label).numpy()]  # --class: compare with that class only
    split_size = len(ref_all)
    ref_num = split_size if cfg.ref_num is None else cfg.ref_num
    if ref_num > split_size:
        raise ParameterError(f"{{ref_num}} {ref_num} is larger than the {cfg.ref_split} split of {run.data} "
                             f"({split_size} images): pass {{ref_num}} {split_size} or fewer")  # fmt: skip
    ref = ref_all[subset_indices(split_size, ref_num)]  # (M, C, H, W) uint8
    record = {
        "data": run.data, "description": ref_ds.name, "split": cfg.ref_split, "num": ref_num, "split_size": split_size,
        "image_size": ref.shape[-1], "channels": ref.shape[1],
        "subset": "all" if ref_num == split_size else "seeded random subset (seed 0)", "class": label,
        "pixels": "round((x + 1) * 127.5) to uint8, like the samples",
    }  # fmt: skip
    return ref, record


def _sample_checkpoint(run: EvalRun, s: Sampling, ref: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Images 0..num-1 of the checkpoint as uint8 (num, C, H, W), exactly as ``ddpm sample`` draws them, saved as
    samples.npz in the run's folder, and their record."""
    cfg = run.cfg
    num = 1000 if cfg.num is None else cfg.num
    if num > len(ref):
        raise ParameterError(f"{{num}} {num} is larger than the reference set ({len(ref)} {cfg.ref_split} images "
                             f"of {run.data}): pass {{num}} {len(ref)} or fewer")  # fmt: skip
    gen = np.concatenate([to_pixels(x) for x in _drawn(run, s, num)])
    run.out.mkdir(parents=True, exist_ok=True)
    save_npz(run.out / "samples.npz", gen.transpose(0, 2, 3, 1))
    gen, was = conform_samples(gen, ref.shape[1], ref.shape[2])
    if was:
        log(f"brought the samples from the model's {', '.join(was)} to the reference's {_describe_shape(ref)}, as "
            "training reads pictures (shorter side to the size, centre crop, Lanczos)")  # fmt: skip
    c = s.choice
    info = {
        "source": "checkpoint", "checkpoint": str(s.checkpoint.path), "checkpoint_sha256": s.sha256,
        "checkpoint_step": s.meta.get("step"), "ema": cfg.ema, "sampler": c.name, "spacing": c.spacing,
        "steps": c.steps, "options": c.options, "guidance": cfg.guidance, "class": s.label, "clip_x0": cfg.clip_x0,
        "seed": cfg.seed, "seeds": f"image i from (seed {cfg.seed}, i), i = 0..{num - 1}",
        "samples_file": str(run.out / "samples.npz"),
    }  # fmt: skip
    if cfg.then:
        stages = open_cascade(cfg, cfg.then, cfg.cond_noise, run.device, cfg.project)
        info["then"] = [stage.record(j) for j, stage in enumerate(stages) if j > 0]
    return gen, info


def _drawn(run: EvalRun, s: Sampling, num: int) -> Iterator[Tensor]:
    """Images 0..num-1 of the checkpoint (B, C, H, W) in [-1, 1], a batch at a time, exactly as ``ddpm sample`` draws
    them: the checkpoint's, or with --then its cascade's final images."""
    cfg = run.cfg
    if not cfg.then:
        yield from (x for _, x in s.batches(cfg.seed, num, batch_size=cfg.batch_size, progress=cfg.progress))
        return
    stages = open_cascade(cfg, cfg.then, cfg.cond_noise, run.device, cfg.project)
    for idx in batched(stages, num, cfg.batch_size):
        yield run_cascade(stages, cfg.seed, [(i, 0) for i in idx], None, cfg.progress)[-1]


def _given_samples(run: EvalRun, given: tuple[Images, dict[str, Any]] | None,
                   ref: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The images of ``--samples`` (the first ``num`` of them) as uint8 (N, C, H, W), brought to the reference's size
    and channels as training reads pictures where they differ (said), and what their files say."""
    assert given is not None  # read when there is no checkpoint
    images, info = given
    cfg = run.cfg
    if cfg.num is not None:
        if cfg.num > len(images):
            raise ParameterError(f"{{num}} {cfg.num} is more than the {len(images)} images in {cfg.samples}")
        images = images[: cfg.num]
    gen, was = conform_samples(images, ref.shape[1], ref.shape[2])
    if was:
        to = f"{ref.shape[2]}x{ref.shape[3]} {'RGB' if ref.shape[1] == 3 else 'gray'}"
        log(f"brought the {len(gen)} samples from {', '.join(was[:3])} to {to}, as training reads pictures (shorter "
            "side to the size, centre crop, Lanczos), to compare them with the reference images")  # fmt: skip
        info["resized_from"] = was
    if len(gen) < 2:
        raise ParameterError(f"{{samples}} {cfg.samples} holds {len(gen)} image: statistics need at least 2")
    if len(gen) > len(ref):
        raise ParameterError(f"{len(gen)} samples but only {len(ref)} reference images ({cfg.ref_split} split of "
                             f"{run.data}): pass {{num}} {len(ref)} or fewer, or a larger {{ref_num}}")  # fmt: skip
    return gen, info


def _write(run: EvalRun, metrics: dict[str, Any], memo: dict[str, Any] | None) -> tuple[Path, dict[str, Any]]:
    """Write eval.json (atomically); returns its path and the record."""
    record = {
        "metrics": metrics, "memorization": memo, "protocol": run.protocol, "command": run.cfg.command,
        "ddpm_version": __version__, "torch_version": torch.__version__, "device": str(run.device),
        "seconds": round(time.perf_counter() - run.t_start, 1),
    }  # fmt: skip
    return atomic_write(run.out / "eval.json", json.dumps(record, indent=2, default=str) + "\n"), record


def _parse_metrics(text: str) -> list[str]:
    """``"fid,kid"`` -> the metrics' names; ``"none"`` -> none (a conditioned model's PSNR and SSIM alone)."""
    if text.strip().lower() == "none":
        return []
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ParameterError(f"{{metrics}} {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _describe_shape(p: np.ndarray) -> str:
    return f"{p.shape[2]}x{p.shape[3]} with {p.shape[1]} channel{'s' if p.shape[1] != 1 else ''}"


def summary_table(record: dict[str, Any]) -> str:
    """The short terminal summary."""
    m, p = record["metrics"], record["protocol"]
    if "conditioned" in m:
        q = p["conditioned"]
        head = f"{q['num']} {q['split']} images of {q['data']}: {q['task']} outputs and baselines against them"
        return "\n".join([head,
                          *conditioned_table(m["conditioned"])])  # fmt: skip
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
        lines.append(
            f"  NLL        {n['bits_per_dim']:10.3f}   ± {n['bits_per_dim_stderr']:.3f} bits/dim, variational "
            f"bound on {q['num']} {q['split']} images ({q['variance']} variance); lower is better"
        )
    mem = record.get("memorization")
    if mem:
        for space in ("features", "pixels"):
            s = mem[space]
            real = "held-out" if s["baseline"].startswith("held-out") else "other training"
            lines.append(
                f"  closer than real ({space}) {100 * s['share_closer']:5.1f}%   of samples are closer to a "
                f"training image than {100 * (1 - s['expected_share']):.0f}% of {real} images are "
                f"(~{100 * s['expected_share']:.0f}% if nothing is copied)"
            )
    return "\n".join(lines)
