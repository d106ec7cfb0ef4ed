"""The figures of a conditioned evaluation against their definitions: PSNR's closed form, SSIM computed window by
window, and SR3's consistency error (zero for the true image, whose low view is the condition)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ddpm.conditioning import low_of, resize_pixels
from ddpm.evaluation.restoration import consistency, psnr, ssim


def test_psnr_is_the_closed_form():
    a = np.full((2, 1, 8, 8), 100, np.uint8)
    b = a.copy()
    b[0] += 5  # MSE 25
    b[1, :, :4] += 10  # MSE 50
    np.testing.assert_allclose(psnr(a, b), [10 * math.log10(255**2 / 25), 10 * math.log10(255**2 / 50)])
    assert np.isinf(psnr(a, a)).all()


def ssim_by_windows(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """SSIM of two single-channel images (H, W) by its definition (Wang et al. 2004), one window at a time."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i : i + size, j : j + size].astype(float), y[i : i + size, j : j + size].astype(float)
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_is_the_windowed_definition_and_one_for_identical_images():
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    y = np.clip(x.astype(int) + g.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    got = ssim(x, y)
    want = [np.mean([ssim_by_windows(x[n, c], y[n, c]) for c in range(3)]) for n in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(ssim(x, x), 1.0, rtol=1e-12)
    assert 0 < got.min() and got.max() < 0.99  # noise of ±40 levels is seen
    # Flat images: only the luminance term is left, (2 mx my + C1) / (mx^2 + my^2 + C1).
    flat_a, flat_b = np.full((1, 1, 12, 12), 50, np.uint8), np.full((1, 1, 12, 12), 200, np.uint8)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(ssim(flat_a, flat_b), (2 * 50 * 200 + c1) / (50**2 + 200**2 + c1))


def test_consistency_is_zero_for_the_truth_and_not_for_lanczos_upsampling():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 256, (3, 1, 28, 28), generator=g, dtype=torch.uint8)
    low = low_of(truth, 4)
    assert (consistency(truth.numpy(), low.numpy(), 4) == 0).all()
    up = resize_pixels(low, 28)
    errors = consistency(up.numpy(), low.numpy(), 4)
    want = np.sqrt(((low_of(up, 4).double() - low.double()) ** 2).flatten(1).mean(1).numpy())
    np.testing.assert_allclose(errors, want)
    assert (errors > 1).all()  # random pixels: Lanczos up then down is far from the identity
