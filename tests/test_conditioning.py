"""Image conditions: Pillow's Lanczos reproduced to the 8-bit level, the float path up, conditioning augmentation, and
what a conditioned network takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.conditioning import (
    ConditionSpec,
    condition_of,
    lanczos_weights,
    low_of,
    resize_pixels,
    upsample,
)
from ddpm.images import to_8bit


def pillow(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pillow's own Lanczos resize of uint8 (C, H, W) to (C, size, size)."""
    if pixels.shape[0] == 1:
        return np.asarray(Image.fromarray(pixels[0]).resize((size, size), Image.LANCZOS))[None]
    rgb = Image.fromarray(pixels.transpose(1, 2, 0)).resize((size, size), Image.LANCZOS)
    return np.asarray(rgb).transpose(2, 0, 1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("size", "to"), [(28, 14), (28, 7), (32, 8), (30, 10), (7, 28), (14, 28), (9, 9)])
def test_resize_pixels_is_pillows_lanczos_to_the_last_bit(channels, size, to):
    g = np.random.default_rng(size * 100 + to + channels)
    # Random pixels and a picture with hard edges (where Lanczos rings and the clipping to 0..255 matters).
    noise = g.integers(0, 256, (3, channels, size, size), dtype=np.uint8)
    edges = np.zeros((1, channels, size, size), np.uint8)
    edges[..., size // 3 : 2 * size // 3, :] = 255
    pixels = np.concatenate([noise, edges])
    ours = resize_pixels(torch.from_numpy(pixels), to).numpy()
    theirs = np.stack([pillow(p, to) for p in pixels])
    assert ours.shape == (4, channels, to, to)
    np.testing.assert_array_equal(ours, theirs)


def test_low_of_refuses_a_scale_that_does_not_divide_and_non_uint8():
    with pytest.raises(ValueError, match="multiple of the scale"):
        low_of(torch.zeros(1, 1, 10, 10, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="uint8"):
        resize_pixels(torch.zeros(1, 1, 4, 4), 2)


def test_the_float_path_is_the_normalised_filter_linear_and_identity_at_the_same_size():
    # Each output pixel is a normalised weighted sum: rows sum to 1, so constants stay constant.
    for n, m in [(7, 28), (14, 28), (28, 14)]:
        w = lanczos_weights(n, m, False)
        torch.testing.assert_close(w.sum(1), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-12)
    x = torch.full((2, 3, 7, 7), 0.3)
    torch.testing.assert_close(upsample(x, 28), torch.full((2, 3, 28, 28), 0.3))
    # Separable and linear: up(a x + b y) = a up(x) + b up(y); the same size is the identity.
    a, b = torch.randn(1, 1, 7, 7, dtype=torch.float64), torch.randn(1, 1, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(upsample(2 * a - 3 * b, 21), 2 * upsample(a, 21) - 3 * upsample(b, 21))
    torch.testing.assert_close(upsample(a, 7), a, rtol=0, atol=1e-12)
    # Both axes use the same 1-D filter: up(x)[i, j] = sum_kl w[i, k] w[j, l] x[k, l].
    w = lanczos_weights(7, 21, False)
    torch.testing.assert_close(upsample(a, 21)[0, 0], w @ a[0, 0] @ w.T)


def test_conditioning_augmentation_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    low = torch.randint(0, 256, (3, 1, 7, 7), generator=g, dtype=torch.uint8)
    level, noise = torch.tensor([0.0, 0.1, 0.5]), torch.randn(3, 1, 7, 7, generator=g)
    x = low.float() / 127.5 - 1
    want = upsample(torch.sqrt(1 - level).view(-1, 1, 1, 1) * x + torch.sqrt(level).view(-1, 1, 1, 1) * noise, 28)
    torch.testing.assert_close(condition_of(low, 28, level, noise), want)
    torch.testing.assert_close(condition_of(low, 28, level, noise)[0], upsample(x, 28)[0])  # level 0: clean
    with pytest.raises(ValueError, match="noise"):
        condition_of(low, 28, level)


def test_to_8bit_round_trips_8bit_images():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_8bit(pixels.float() / 127.5 - 1), pixels)


def test_condition_spec_records_and_checks_what_the_network_takes():
    spec = ConditionSpec("super-resolution", 1, 7, 4, 0.1)
    assert ConditionSpec.from_meta({"condition": spec.to_dict()}) == spec
    assert ConditionSpec.from_meta({}) is None and spec.told_level
    low = torch.randint(0, 256, (2, 1, 7, 7), dtype=torch.uint8)
    torch.testing.assert_close(spec.network_input(low, 28), upsample(low.float() / 127.5 - 1, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, 7, 7\)"):
        spec.network_input(torch.zeros(2, 3, 7, 7), 28)
    paired = ConditionSpec("paired", 1, 28)
    gray = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.equal(paired.network_input(gray, 28), gray)  # an input of the model's size goes in as it is
