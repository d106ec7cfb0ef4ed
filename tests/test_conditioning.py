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
    low_projector,
    project_low,
    resize_pixels,
    upsample,
)
from ddpm.data.load import load_dataset
from ddpm.denoiser import make_denoiser
from ddpm.images import to_8bit
from ddpm.schedule import Schedule


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


def _down(x: torch.Tensor, s: int) -> torch.Tensor:
    """The float Lanczos-down view (B, C, s, s) of x (B, C, S, S)."""
    a = lanczos_weights(x.shape[-1], s, False).to(x)
    return a @ x @ a.T


@pytest.mark.parametrize(("size", "low"), [(8, 4), (12, 6), (28, 7)])
def test_project_low_is_the_orthogonal_projection_onto_the_images_with_that_low_view(size, low):
    g = torch.Generator().manual_seed(size)
    x = 0.05 * torch.randn(2, 1, size, size, generator=g, dtype=torch.float64)
    y = 0.05 * torch.randn(2, 1, low, low, generator=g, dtype=torch.float64)
    got = project_low(x, y, rounds=1)
    assert got.abs().max() < 1  # the clamp did not act: the oracle below is the projection alone
    # The oracle: the dense down matrix D = A ⊗ A on the flattened image, x + D⁺ (y − D x), from numpy's pinv.
    a = lanczos_weights(size, low, False).numpy()
    d = np.kron(a, a)
    flat = x.reshape(2, -1).numpy()
    want = flat + (np.linalg.pinv(d) @ (y.reshape(2, -1).numpy() - flat @ d.T).T).T
    np.testing.assert_allclose(got.reshape(2, -1).numpy(), want, rtol=0, atol=1e-10)
    # Its low view is the one given, projecting again changes nothing, and the change is orthogonal to every
    # image whose low view is zero (so no image with that low view is nearer to x).
    torch.testing.assert_close(_down(got, low), y, rtol=0, atol=1e-10)
    torch.testing.assert_close(project_low(got, y, rounds=1), got, rtol=0, atol=1e-10)
    null = torch.randn(2, 1, size, size, generator=g, dtype=torch.float64)
    null = null - _pinv_part(null, low)
    torch.testing.assert_close(_down(null, low), torch.zeros_like(y), rtol=0, atol=1e-10)
    assert abs(float(((got - x) * null).sum())) < 1e-9


def _pinv_part(x: torch.Tensor, low: int) -> torch.Tensor:
    """The part of x (B, C, S, S) in the range of D⁺ (what its low view determines): A⁺ (A x Aᵀ) A⁺ᵀ."""
    a = lanczos_weights(x.shape[-1], low, False).to(x)
    p = torch.linalg.pinv(a)
    return p @ (a @ x @ a.T) @ p.T


def test_back_projection_gives_real_low_images_back_below_the_8bit_step_and_keeps_the_truth():
    # Digits at 16 px brought down x2 and x4 (Pillow clips about a seventh of these low pixels): from a flat grey, the
    # rounds bring the 8-bit output's own low view (Pillow's, exact) to the low image, below one level in every image;
    # the true images are (to the float model's rounding) a fixed point; every output stays in [-1, 1].
    digits = torch.from_numpy(load_dataset("digits", 16).as_uint8()[:64])

    def error(out: torch.Tensor, low: torch.Tensor, scale: int) -> torch.Tensor:
        return (low_of(to_8bit(out), scale).float() - low.float()).pow(2).mean((1, 2, 3)).sqrt()

    for scale in (2, 4):
        low = low_of(digits, scale)
        y = low.float() / 127.5 - 1
        grey = torch.zeros(digits.shape)
        assert error(grey, low, scale).mean() > 30  # where it starts
        errors = [error(project_low(grey, y, rounds=r), low, scale) for r in (1, 4, 16, 64)]
        assert all(a.mean() > b.mean() for a, b in zip(errors, errors[1:], strict=False)), scale
        assert errors[-1].max() < 1.0, (scale, float(errors[-1].max()))
        out = project_low(torch.rand(digits.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1, y, rounds=64)
        assert out.min() >= -1 and out.max() <= 1 and error(out, low, scale).mean() < 1.0
        truth = digits.float() / 127.5 - 1
        moved = (project_low(truth, y, rounds=64) - truth).pow(2).mean().sqrt() * 127.5
        assert moved < 2.0, (scale, float(moved))
    spec = ConditionSpec("super-resolution", 1, 8, 2)
    torch.testing.assert_close(
        low_projector(spec, low_of(digits, 2))(torch.zeros(digits.shape)),
        project_low(torch.zeros(digits.shape), low_of(digits, 2).float() / 127.5 - 1),
    )
    assert low_projector(ConditionSpec("paired", 1, 16), digits) is None  # no known degradation to project onto


def test_the_denoiser_applies_the_projection_after_the_clamp_and_keeps_eps_consistent():
    schedule = Schedule.linear(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 4, generator=g)

    def model(x_t, t, labels=None):
        return 5.0 * torch.ones_like(x_t)  # ε = 5: an x̂_0 far outside [-1, 1]

    seen = []

    def project(x0):
        seen.append(x0.clone())
        return 0.5 * x0

    x0, eps = make_denoiser(model, schedule, project=project)(x, 10)
    a = float(schedule.alphas_cumprod[10])
    plain, _ = make_denoiser(model, schedule)(x, 10)
    torch.testing.assert_close(seen[0], plain)  # it was given the clamped x̂_0
    torch.testing.assert_close(x0, 0.5 * plain)
    torch.testing.assert_close(eps, (x - a**0.5 * x0) / (1 - a) ** 0.5)
