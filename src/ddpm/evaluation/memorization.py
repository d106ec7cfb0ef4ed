"""``ddpm eval --memorization``: each sample's nearest training image, in the features and in pixels, against real
held-out images' distances to the training set, with ``memorization.png`` showing the closest pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.load import load_dataset
from ..errors import UserError
from ..images import make_grid, save_png
from .metrics import memorization
from .reference import reference_features, subset_indices
from .scores import Features
from .settings import EvalRun

PAIRS_SHOWN = 8  # rows of the memorization picture


def memorization_report(run: EvalRun, gen: np.ndarray, train_ref: np.ndarray | None,
                        features: Features) -> dict[str, Any]:  # fmt: skip
    """Nearest training image of each generated image uint8 (N, C, H, W), in ``features``' space and in pixels,
    against held-out real images; ``train_ref`` is the reference set when it is the train split. Draws
    memorization.png into the run's folder and records the protocol."""
    ext, f_gen, _ = features
    train, held = _train_and_held_out(run, train_ref)

    def feats(p: np.ndarray, split: str) -> Tensor:
        info = {"data": run.data, "split": split, "num": len(p), "use": "memorization"}
        return reference_features(ext, p, run.cache, info, run.cfg.batch_size, run.cfg.progress)[0]

    in_feats = memorization(f_gen, feats(train, "train"), feats(held, "test") if held is not None else None)
    in_pixels = memorization(_flat(gen), _flat(train), None if held is None else _flat(held))
    rms = 1.0 / math.sqrt(_flat(gen[:1]).shape[1])  # pixel distances reported as RMS differences per value
    _draw(run, gen, train, in_pixels, in_feats)
    run.protocol["memorization"] = {
        "train_images_searched": len(train),
        "held_out_images": 0 if held is None else len(held),
        "feature_space": ext.name,
        "pixel_distance": "RMS difference of values in [-1, 1]",
        "threshold": "the 1% quantile of real held-out images' nearest-training-image distances",
        "picture": "memorization.png: each row, the r-th closest sample in pixels | its nearest training image | "
        "the r-th closest sample in features | its nearest training image",
    }
    return {"features": _summary(in_feats, 1.0), "pixels": _summary(in_pixels, rms)}


def _train_and_held_out(run: EvalRun, train_ref: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The training images searched, uint8 (M, C, H, W), and real held-out ones (the test split, as many; None where
    there is none: digits, image folders, whose baseline is then leave-one-out within train)."""
    if train_ref is None:  # the reference was the test split: the training images are needed too
        train_all = load_dataset(run.data, run.image_size).as_uint8()
        train = train_all[subset_indices(len(train_all), run.cfg.ref_num or len(train_all))]
    else:
        train = train_ref
    try:
        test_all = load_dataset(run.data, run.image_size, split="test").as_uint8()
    except UserError:
        return train, None
    return train, test_all[subset_indices(len(test_all), min(len(test_all), len(train)), seed=2)]


def _flat(p: np.ndarray) -> Tensor:
    """uint8 images (N, C, H, W) as float64 rows (N, C·H·W) in [-1, 1]."""
    return torch.as_tensor(p.reshape(len(p), -1)).double() / 127.5 - 1.0


def _draw(run: EvalRun, gen: np.ndarray, train: np.ndarray, in_pixels: dict[str, Any],
          in_feats: dict[str, Any]) -> None:  # fmt: skip
    """memorization.png: row r = the r-th closest sample in pixels beside its nearest training image, then the r-th
    closest in features beside its nearest training image (in those features)."""
    rows = []
    by_px, by_ft = in_pixels["distances"].argsort()[:PAIRS_SHOWN], in_feats["distances"].argsort()[:PAIRS_SHOWN]
    for a, b in zip(by_px.tolist(), by_ft.tolist(), strict=True):
        rows += [gen[a], train[int(in_pixels["indices"][a])], gen[b], train[int(in_feats["indices"][b])]]
    tiles = np.stack(rows).transpose(0, 2, 3, 1)  # (4R, H, W, C)
    grid = make_grid(tiles, nrow=4, padding=2, pad_value=128, scale=max(1, 48 // gen.shape[-1]))
    # Tagged like ddpm's other pictures, so a later --samples on this folder does not take it for a sample.
    save_png(run.out / "memorization.png", grid, {"ddpm:kind": "memorization"})


def _summary(m: dict[str, Any], scale: float) -> dict[str, Any]:
    """What eval.json records of one space's nearest-neighbour distances (multiplied by ``scale``)."""
    q = torch.tensor([0.01, 0.5], dtype=torch.float64)
    closest = m["distances"].argsort()[:PAIRS_SHOWN].tolist()
    return {
        "share_closer": m["share_closer"],
        "expected_share": m["quantile"],
        "threshold": m["threshold"] * scale,
        "baseline": m["baseline_kind"],
        "generated_nn_distance_p1_p50": (torch.quantile(m["distances"], q) * scale).tolist(),
        "baseline_nn_distance_p1_p50": (torch.quantile(m["baseline"], q) * scale).tolist(),
        "closest": [
            {"sample": int(i), "train_index": int(m["indices"][i]), "distance": float(m["distances"][i]) * scale}
            for i in closest
        ],
    }  # fmt: skip
