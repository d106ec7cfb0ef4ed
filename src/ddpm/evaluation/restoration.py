"""``ddpm eval`` of a model conditioned on an image (super-resolution, paired restoration): its outputs for the
held-out conditions against the true images, beside the baselines a user would otherwise take.

The targets are a seeded subset of the test split (the data itself where it has none: pass held-out images), their
conditions made as training makes them (the Lanczos low view; the paired inputs). Each row of the table (the model;
Lanczos upsampling of the low image; the input itself, for paired data) gets PSNR and SSIM against the targets
(8-bit, per image, then averaged), the consistency error of super-resolution (SR3's check: the output brought down
again against the low image it was given, RMS in 8-bit levels; below 1 means below the low image's own quantisation
step) and the distribution metrics of ``--metrics`` against the split. PSNR and SSIM reward the mean: a sampler that
draws sharp, plausible detail scores below a blur on them, and better on FID.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..cascade import CascadeSettings, Stage, cascade, open_cascade
from ..conditioning import ConditionSpec, low_of, resize_pixels
from ..data.load import load_dataset
from ..data.paired import paired_data
from ..errors import ParameterError
from ..generate import save_npz
from ..images import conform, to_8bit
from .reference import subset_indices
from .scores import held_out, score
from .settings import EvalRun, log

SSIM_WINDOW, SSIM_SIGMA, SSIM_K = 11, 1.5, (0.01, 0.03)  # Wang et al. 2004


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR in dB of each pair of uint8 images (N, C, H, W): 10·log10(255² / MSE); identical images give inf."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0**2 / mse)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """The normalised (size, size) float64 Gaussian window of SSIM."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) of each pair of uint8 images (N, C, H, W): local statistics under an 11×11
    Gaussian window (σ 1.5) at every position where it fits, L = 255, K = (0.01, 0.03), averaged over positions and
    channels. Images smaller than the window use a window of their size."""
    x, y = (torch.from_numpy(np.ascontiguousarray(v)).double() for v in (a, b))
    n, c, h, w = x.shape
    size = min(SSIM_WINDOW, h, w)
    win = _gaussian_window(size, SSIM_SIGMA * size / SSIM_WINDOW).to(x)[None, None].repeat(c, 1, 1, 1)

    def filt(v: Tensor) -> Tensor:
        return F.conv2d(v, win, groups=c)

    c1, c2 = (SSIM_K[0] * 255) ** 2, (SSIM_K[1] * 255) ** 2
    mx, my = filt(x), filt(y)
    vx, vy, cov = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.reshape(n, -1).mean(1).numpy()


def consistency(outputs: np.ndarray, lows: np.ndarray, scale: int) -> np.ndarray:
    """SR3's consistency error of each output uint8 (N, C, S, S) against the low image it was given uint8 (N, C, s, s):
    the RMS difference, in 8-bit levels, between the output brought down by the same Lanczos and the low image."""
    down = low_of(torch.from_numpy(outputs), scale).numpy().astype(np.float64)
    return np.sqrt(((down - lows.astype(np.float64)) ** 2).reshape(len(outputs), -1).mean(1))


# ---------------------------------------------------------------------------- the evaluation


def evaluate_conditioned(run: EvalRun, metrics: list[str]) -> dict[str, Any]:
    """Score the cascade ``run.cfg`` names (its first stage conditioned) on the held-out conditions; returns the
    figures, and records the protocol in ``run.protocol``."""
    cfg = run.cfg
    assert isinstance(cfg, CascadeSettings)  # EvalSettings
    stages = open_cascade(cfg, cfg.then, cfg.cond_noise, run.device, cfg.project)
    first = stages[0]
    assert first.spec is not None  # the caller's choice
    targets, inputs, ref, split = _targets(run, first.spec, stages[-1])
    num = len(targets)
    log(f"scoring {num} {split} images of {run.data}: {first.spec.task} from their conditions, against Lanczos "
        "upsampling" + (" and the input itself" if first.spec.task == "paired" else ""))  # fmt: skip
    outputs = _outputs(stages, inputs, cfg.seed, cfg.batch_size, cfg.progress)
    run.out.mkdir(parents=True, exist_ok=True)
    save_npz(run.out / "samples.npz", outputs.transpose(0, 2, 3, 1))
    rows = {"model": outputs, **_baselines(first.spec, inputs, targets)}
    results: dict[str, Any] = {}
    for name, images in rows.items():
        results[name] = _row(run, metrics, images, targets, inputs, ref, first.spec)
    run.protocol["conditioned"] = {
        "task": first.spec.task, "scale": first.spec.scale, "data": run.data, "split": split, "num": num,
        "seed": cfg.seed,
        "seeds": f"output i from (seed {cfg.seed}, i) for the i-th condition",
        "stages": [s.record(j) for j, s in enumerate(stages)],
        "conditions": "as training makes them: Lanczos (Pillow's, 8-bit) down by the scale; the paired inputs",
        "psnr_ssim": "8-bit, per image, then the mean; SSIM 11x11 Gaussian window sigma 1.5, K1 0.01, K2 0.03",
        "consistency": "RMS in 8-bit levels of low(output) - the low image given",
        "reference": f"{len(ref)} images of the {split} split (a seeded subset), for {', '.join(metrics) or 'none'}",
        "samples_file": str(run.out / "samples.npz"),
    }  # fmt: skip
    return results


def _targets(run: EvalRun, spec: ConditionSpec, last: Stage) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A seeded subset of the held-out targets uint8 (N, C, S, S), their conditions uint8 (N, Cc, s, s), the
    reference images of the distribution metrics (a seeded subset of ``--ref-num`` of the split, all by default) and
    the split's name."""
    cfg = run.cfg
    c_out, size = last.output
    if spec.task == "paired":
        folder = getattr(cfg, "condition_data", None) or last.sampling.meta.get("train", {}).get("condition_data")
        if not folder:
            raise ParameterError("a paired model's evaluation needs {condition_data} INPUTS, the inputs of {data}")
        pairs = paired_data(run.data, folder, size, lambda name, s: load_dataset(name, s))
        t_all = pairs.targets.as_uint8()[pairs.target_rows.numpy()]
        i_all: np.ndarray | None = pairs.inputs.as_uint8()[pairs.input_rows.numpy()]
        split = "given"
    else:
        ds, split = held_out(run.data, size)
        t_all, i_all = ds.as_uint8(), None
    if t_all.shape[1:] != (c_out, size, size):
        raise ParameterError(f"the cascade makes {size}x{size} images with {c_out} channel(s) but {run.data} is "
                             f"{t_all.shape[-1]}x{t_all.shape[-1]} with {t_all.shape[1]}: compare with the data it "
                             "was trained on (or {image_size})")  # fmt: skip
    pick = subset_indices(len(t_all), min(1000 if cfg.num is None else cfg.num, len(t_all)), seed=5)
    ref = t_all[subset_indices(len(t_all), len(t_all) if cfg.ref_num is None else cfg.ref_num)]
    targets = t_all[pick]
    if i_all is not None:
        return targets, i_all[pick], ref, split
    assert spec.scale is not None  # super-resolution
    return targets, low_of(torch.from_numpy(targets), spec.scale).numpy(), ref, split


def _outputs(stages: list[Stage], inputs: np.ndarray, seed: int, batch_size: int, progress: bool) -> np.ndarray:
    """The cascade's outputs uint8 (N, C, S, S) for conditions ``inputs`` uint8 (N, Cc, s, s), output i keyed i."""
    images = cascade(stages, conditions=torch.from_numpy(inputs), seed=seed, batch_size=batch_size, progress=progress)
    return to_8bit(images).numpy()


def _baselines(spec: ConditionSpec, inputs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """What a user has without the model: the low image brought up by Pillow's Lanczos, and (paired) the input
    itself in the targets' channels."""
    size, channels = targets.shape[-1], targets.shape[1]
    if spec.task == "super-resolution":
        return {"lanczos": resize_pixels(torch.from_numpy(inputs), size).numpy()}
    same = np.stack([conform(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), channels, size).transpose(2, 0, 1)
                     for a in inputs])  # fmt: skip
    return {"input": same}


def _row(run: EvalRun, metrics: list[str], images: np.ndarray, targets: np.ndarray, inputs: np.ndarray,
         ref: np.ndarray, spec: ConditionSpec) -> dict[str, Any]:  # fmt: skip
    """One row of the table: PSNR, SSIM, the consistency error (super-resolution) and ``metrics`` against ``ref``."""
    p = psnr(images, targets)
    row: dict[str, Any] = {"psnr": float(np.mean(np.minimum(p, 100.0))), "ssim": float(np.mean(ssim(images, targets)))}
    if spec.task == "super-resolution":
        assert spec.scale is not None
        row["consistency"] = float(np.mean(consistency(images, inputs, spec.scale)))
    if metrics:
        row.update(score(run, metrics, images, ref)[0])
    return row


def conditioned_table(results: dict[str, Any]) -> list[str]:
    """The terminal table of a conditioned evaluation: one line per row (model and baselines)."""
    keys = [k for k in ("psnr", "ssim", "consistency", "fid", "kid", "fd") if k in results["model"]]
    lines = ["           " + "".join(f"{k.upper():>13}" for k in keys)]
    for name, row in results.items():
        cells = "".join(f"{row[k]:13.4f}" if not math.isinf(row[k]) else f"{'inf':>13}" for k in keys)
        lines.append(f"  {name:<9}{cells}")
    lines.append("  PSNR dB, SSIM (higher is better: they reward the mean); consistency RMS 8-bit levels of "
                 "low(output) - input; FID/KID/FD against the split (lower is better)")  # fmt: skip
    return lines
