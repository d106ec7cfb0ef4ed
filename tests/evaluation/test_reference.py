"""Tests for ddpm.evaluation.reference: cached reference features are keyed by content, subsets are seeded, FD
from statistics."""

import numpy as np
import pytest
import torch

from ddpm.evaluation.metrics import frechet_distance, gaussian_frechet_distance
from ddpm.evaluation.reference import (
    content_sha256,
    fd_against,
    reference_features,
    subset_indices,
    to_pixels,
)


class CountingExtractor:
    """The extractor interface over a fixed random projection of the pixels; counts the images it embeds."""

    name = "counting"
    sha256 = "0" * 64

    def __init__(self) -> None:
        self.embedded = 0
        self.weight = torch.randn(4 * 4, 5, generator=torch.Generator().manual_seed(0))

    def protocol(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}

    def features(
        self, pixels: np.ndarray, batch_size: int = 50, progress: bool = False, desc: str = ""
    ) -> torch.Tensor:
        self.embedded += len(pixels)
        x = torch.as_tensor(pixels).reshape(len(pixels), -1).float() / 255
        return (x @ self.weight).double()


def pixels(n: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 4, 4)).astype(np.uint8)


def test_content_sha256_is_the_content():
    p = pixels()
    assert content_sha256(p) == content_sha256(p.copy())
    changed = p.copy()
    changed[3, 0, 2, 1] ^= 1
    assert content_sha256(changed) != content_sha256(p)
    assert content_sha256(p.reshape(12, 1, 2, 8)) != content_sha256(p)  # the shape is part of it
    labels = np.arange(12) % 3
    assert content_sha256(p, labels) not in (content_sha256(p), content_sha256(p, labels[::-1].copy()))
    assert content_sha256(p, torch.as_tensor(labels)) == content_sha256(p, labels)


def test_reference_features_are_cached_by_content(tmp_path):
    ext, p = CountingExtractor(), pixels()
    info = {"data": "test", "split": "train", "num": 12}
    feats, mean, cov, file, cached = reference_features(ext, p, tmp_path, info)
    assert not cached and ext.embedded == 12 and file.parent == tmp_path / "reference"
    assert file.name.startswith("counting-")
    direct = ext.features(p).float().double()  # stored as float32: exact for float32 features
    assert torch.equal(feats, direct)
    assert torch.allclose(mean, direct.mean(0)) and torch.allclose(cov, torch.cov(direct.T))
    # The same pixels (a copy): the same file, read back, nothing embedded.
    ext.embedded = 0
    feats2, mean2, cov2, file2, cached2 = reference_features(ext, p.copy(), tmp_path, info)
    assert cached2 and file2 == file and ext.embedded == 0
    assert torch.equal(feats2, feats) and torch.equal(mean2, mean) and torch.equal(cov2, cov)
    # One pixel changed: a new entry beside the first.
    changed = p.copy()
    changed[0, 0, 0, 0] ^= 1
    announced = []
    *_, file3, cached3 = reference_features(ext, changed, tmp_path, info, before_compute=announced.append)
    assert not cached3 and file3 != file and announced == [12]
    assert sorted((tmp_path / "reference").iterdir()) == sorted([file, file3])


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    ext, p = CountingExtractor(), pixels()
    feats, *_, file, _ = reference_features(ext, p, tmp_path, {})
    file.write_bytes(b"not a safetensors file")
    again, *_, file2, cached = reference_features(ext, p, tmp_path, {})
    assert not cached and file2 == file and torch.equal(again, feats)


def test_subset_indices_are_seeded_distinct_and_sorted():
    a = subset_indices(1000, 50, seed=4)
    assert np.array_equal(a, subset_indices(1000, 50, seed=4))
    assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0) and 0 <= a.min() and a.max() < 1000
    assert not np.array_equal(a, subset_indices(1000, 50, seed=5))
    assert not np.array_equal(a, np.arange(50))  # a random subset, not the first ones
    assert np.array_equal(subset_indices(7, 7), np.arange(7)) and np.array_equal(subset_indices(7, 9), np.arange(7))


def test_fd_against_is_the_gaussian_fd_of_the_features_statistics():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(40, 6, generator=g, dtype=torch.float64)
    ref = torch.randn(50, 6, generator=g, dtype=torch.float64) * 1.3 + 0.2
    mean, cov = ref.mean(0), torch.cov(ref.T)
    value = fd_against(feats, mean, cov)
    assert value == gaussian_frechet_distance(feats.mean(0), torch.cov(feats.T), mean, cov)
    assert value == pytest.approx(frechet_distance(feats, ref), rel=1e-12) and value > 0


def test_to_pixels_rounds_like_a_png():
    x = torch.tensor([-1.0, -0.99, 0.0, 0.5, 1.0, 1.2]).reshape(1, 1, 2, 3)
    assert to_pixels(x).reshape(-1).tolist() == [0, 1, 128, 191, 255, 255]
