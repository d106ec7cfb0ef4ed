"""ddpm.tutorial.Diffusion, the tutorials' class: each way the tutorial code commonly goes wrong pinned down by a
test."""

import math

import torch

import ddpm
from ddpm.tutorial import Diffusion


def test_sample_timesteps_covers_0_and_last():
    d = Diffusion(noise_steps=1000, img_size=8, channels=1)
    t = d.sample_timesteps(100_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min().item() == 0 and t.max().item() == 999
    # Uniform: each index appears 100 times on average; the mean is 499.5 (sd of the mean ≈ 0.91).
    assert abs(t.float().mean().item() - 499.5) < 5


def test_noise_images_returns_the_noise_it_added():
    d = Diffusion(noise_steps=1000, img_size=4, channels=3)
    x0 = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1  # seeded: not the global RNG
    t = torch.arange(0, 1000, 1000 // 16)[:16]
    x_t, eps = d.noise_images(x0, t, generator=torch.Generator().manual_seed(3))
    ab = d.alpha_hat[t].view(-1, 1, 1, 1)
    # The tutorial-style float32 tables against q_sample's float64 ones: a few float32 ulps of |ε| ≤ 5.
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, atol=4e-6)
    assert torch.allclose(x_t, ddpm.q_sample(x0, t, eps, d.schedule), atol=0)


def test_sample_rounds_and_reaches_the_data():
    """Data concentrated at one image c: the exact predictor sends every sample to c, and uint8 rounds it."""
    d = Diffusion(noise_steps=100, beta_start=1e-3, beta_end=0.2, img_size=2, channels=1)
    # Pixel values whose (c + 1) * 127.5 have fractional part > .5, so truncation would be off by one.
    c = torch.tensor([100.8, 20.6, 200.9, 3.7]).view(1, 1, 2, 2) / 127.5 - 1
    ab = d.alpha_hat

    def oracle(x_t, t):
        a = ab[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * c) / (1 - a).sqrt()

    imgs = d.sample(oracle, 5, generator=torch.Generator().manual_seed(0))
    assert imgs.dtype == torch.uint8 and imgs.shape == (5, 1, 2, 2)
    assert imgs.flatten(1).tolist() == [[101, 21, 201, 4]] * 5


def test_tables_match_schedule():
    d = Diffusion(noise_steps=1000, beta_start=1e-4, beta_end=0.02)
    assert torch.allclose(d.beta.double(), ddpm.Schedule.linear().betas, atol=1e-9)
    assert math.isclose(d.alpha_hat[-1].item(), 4.0358e-5, rel_tol=1e-3)
