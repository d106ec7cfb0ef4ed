"""The variational bound (ddpm.likelihood) against closed forms: every term, the whole bound, and its units.

Oracles: Gaussian data N(μ, s²) per pixel, whose exact denoiser is linear, so that each expected KL term, the
model chain's exact marginal and its exact NLL are closed forms; and 8-bit data with a known distribution over
the 256 levels, whose exact denoiser is a softmax over the levels, so the bound must stay above the entropy.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import norm

import ddpm
from ddpm import Schedule
from ddpm.denoiser import image_generators
from ddpm.likelihood import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_kl,
    quantize,
    reverse_log_variance,
)

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 8-bit grid in [-1, 1]
HALF = 1 / 255


def short_schedule(T: int) -> Schedule:
    """DDPM's linear schedule compressed to T steps (β from 0.1/T to 20/T, capped at 0.5), ᾱ_{T−1} ≲ e^{−10}."""
    return Schedule.linear(T, 0.1 / T, min(20.0 / T, 0.5))


class GaussianPixels:
    """Every pixel independent N(mu, sd²); the exact E[ε | x_t] = √(1−ᾱ)/(ᾱ sd² + 1 − ᾱ) (x_t − √ᾱ mu)."""

    def __init__(self, schedule: Schedule, mu: float, sd: float) -> None:
        self.s, self.mu, self.sd = schedule, mu, sd

    def k(self, t: int) -> float:
        """E[x_0 | x_t] = mu + k_t (x_t − √ᾱ_t mu)."""
        a = self.s.alphas_cumprod[t].item()
        return math.sqrt(a) * self.sd**2 / (a * self.sd**2 + 1 - a)

    def model(self, prediction: str):
        def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            a = self.s.alphas_cumprod[t.cpu()].reshape(-1, 1, 1, 1).to(x.dtype)
            k = a.sqrt() * self.sd**2 / (a * self.sd**2 + 1 - a)
            x0 = self.mu + k * (x - a.sqrt() * self.mu)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

        return f


class DiscretePixels:
    """Every pixel independent on the 256 levels with probabilities ``pmf``; the exact denoiser is
    E[x_0 | x_t] = Σ_k r_k c_k, r_k ∝ pmf_k exp(−(x_t − √ᾱ c_k)² / (2(1 − ᾱ)))."""

    def __init__(self, schedule: Schedule, pmf: torch.Tensor) -> None:
        self.ab, self.logp = schedule.alphas_cumprod, pmf.log()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ab[t.cpu()].reshape(-1, *[1] * (x.ndim - 1))[..., None]  # (B, 1, 1, 1, 1)
        xd = x.to(torch.float64)[..., None]
        r = torch.softmax(self.logp - 0.5 * (xd - a.sqrt() * LEVELS).square() / (1 - a), dim=-1)
        x0 = (r * LEVELS).sum(-1)
        return ((x.to(torch.float64) - a[..., 0].sqrt() * x0) / (1 - a[..., 0]).sqrt()).to(x.dtype)


# ---------------------------------------------------------------------------- the pieces


def test_normal_kl_closed_form_and_monte_carlo():
    """KL(N(m1, v1) ‖ N(m2, v2)) = log(σ2/σ1) + (v1 + (m1 − m2)²)/(2 v2) − ½, and the same by sampling."""
    m1, v1, m2, v2 = 0.3, 0.5, -0.4, 1.7
    kl = normal_kl(torch.tensor(m1), torch.tensor(math.log(v1)), torch.tensor(m2), torch.tensor(math.log(v2)))
    closed = 0.5 * math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    assert kl.item() == pytest.approx(closed, rel=1e-6)
    # Elementwise and broadcast, and zero exactly when the two agree.
    mean = torch.tensor([[0.0, 1.0], [2.0, -3.0]], dtype=torch.float64)
    out = normal_kl(mean, torch.zeros(()), mean, torch.zeros(()))
    assert out.shape == (2, 2) and torch.all(out == 0)
    # Monte Carlo: E_{x~N1}[log N1(x) − log N2(x)] over 400k draws, within 5 standard errors.
    g = torch.Generator().manual_seed(0)
    x = m1 + math.sqrt(v1) * torch.randn(400_000, generator=g, dtype=torch.float64)
    log_ratio = (-0.5 * math.log(v1) - (x - m1) ** 2 / (2 * v1)) - (-0.5 * math.log(v2) - (x - m2) ** 2 / (2 * v2))
    se = log_ratio.std().item() / math.sqrt(x.numel())
    assert log_ratio.mean().item() == pytest.approx(closed, abs=5 * se)


@pytest.mark.parametrize(
    "mean,log_scale",
    [
        (0.0, math.log(0.01)),
        (0.37, math.log(0.3)),
        (-1.4, math.log(0.05)),
        (0.9, math.log(3e-4)),
        (0.2, math.log(40.0)),
    ],
)
def test_decoder_bins_sum_to_one_and_match_the_cdf(mean, log_scale):
    """The 256 bin probabilities sum to 1 for any mean and scale, and each equals Φ(b) − Φ(a) (edges open)."""
    logp = discretized_gaussian_log_likelihood(
        LEVELS, torch.full((256,), mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)
    )
    assert torch.isfinite(logp).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    scale = math.exp(log_scale)
    lo = np.concatenate([[-np.inf], LEVELS.numpy()[1:] - HALF])
    hi = np.concatenate([LEVELS.numpy()[:-1] + HALF, [np.inf]])
    direct = norm.cdf((hi - mean) / scale) - norm.cdf((lo - mean) / scale)
    big = direct > 1e-6
    np.testing.assert_allclose(logp.exp().numpy()[big], direct[big], rtol=1e-9)


def test_decoder_far_tail_and_off_grid_values():
    """A bin 180 standard deviations from the mean keeps its exact log-probability (50-digit arithmetic),
    and a value between levels counts in its nearest level's bin."""
    mpmath.mp.dps = 60
    x = LEVELS[242:243]  # 0.898
    mean, scale = -0.9, 0.01
    out = discretized_gaussian_log_likelihood(
        x, torch.tensor([mean], dtype=torch.float64), torch.tensor(math.log(scale), dtype=torch.float64)
    ).item()
    a, b = (x.item() - HALF - mean) / scale, (x.item() + HALF - mean) / scale
    exact = float(mpmath.log(mpmath.ncdf(-a) - mpmath.ncdf(-b)))
    assert exact < -1e4 and out == pytest.approx(exact, rel=1e-9)
    # Off-grid values: the bin is the nearest level's; quantize agrees with round((x + 1) · 127.5).
    c = LEVELS[100].item()
    args = (torch.tensor([0.05], dtype=torch.float64), torch.tensor(math.log(0.2), dtype=torch.float64))
    on = discretized_gaussian_log_likelihood(torch.tensor([c], dtype=torch.float64), *args)
    off = discretized_gaussian_log_likelihood(torch.tensor([c + 0.9 * HALF], dtype=torch.float64), *args)
    assert torch.equal(on, off)
    digits = torch.arange(17, dtype=torch.float64) / 8 - 1  # the built-in digits' 17 levels
    assert torch.equal(quantize(digits), torch.round((digits + 1) * 127.5) / 127.5 - 1)


def test_prior_term_matches_its_formula():
    """L_T = ½ (ᾱ x_0² + (1 − ᾱ) − 1 − log(1 − ᾱ)) per pixel, ᾱ = ᾱ_{T−1}."""
    s = Schedule.linear(30, 1e-3, 0.05)
    a = s.alphas_cumprod[-1].item()
    x0 = torch.tensor([[-1.0, -0.2], [0.5, 1.0]], dtype=torch.float64)
    expected = 0.5 * (a * x0**2 + (1 - a) - 1 - math.log(1 - a))
    assert torch.allclose(prior_kl(x0, s), expected, rtol=1e-12, atol=0)
    assert bool((prior_kl(x0, s) > 0).all())


def test_reverse_variance_tables():
    """'posterior' is β̃_t, 'beta' is β_t, and the decoder (index 0) uses β̃_1 for both, as DDPM's code does."""
    s = Schedule.linear(20, 1e-3, 0.1)
    post, beta = reverse_log_variance(s, "posterior").exp(), reverse_log_variance(s, "beta").exp()
    assert torch.allclose(post[1:], s.posterior_variance[1:], rtol=1e-12)
    assert torch.allclose(beta[1:], s.betas[1:], rtol=1e-12)
    assert post[0].item() == beta[0].item() == pytest.approx(s.posterior_variance[1].item(), rel=1e-12)
    with pytest.raises(ValueError, match="fixed_large|fixed large"):
        reverse_log_variance(s, "fixed_large")


# ---------------------------------------------------------------------------- the bound against oracles


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_every_term_matches_its_closed_form_for_gaussian_pixels(variance):
    """Gaussian pixels with the exact (linear) denoiser: each expected term has a closed form.

    With x̂_0 = μ + k (x_t − √ᾱ μ) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, the model mean differs from μ̃_t by
    c (x_0 − x̂_0), c = √ᾱ_{t−1} β_t/(1−ᾱ_t), so E_ε KL = ½ (log(σ²/β̃) + β̃/σ² − 1 + c² E(x_0 − x̂_0)²/σ²)
    with E(x_0 − x̂_0)² = (1 − k√ᾱ)² (x_0 − μ)² + k² (1 − ᾱ). The decoder term is a 1-D Gaussian integral
    (Gauss–Hermite, scipy's CDF) and the prior has its own formula. 1500 draws of each term per image;
    every one of the T + 1 means must fall within 5 standard errors.
    """
    T, n = 40, 1500
    s = short_schedule(T)
    oracle = GaussianPixels(s, mu=0.1, sd=0.3)
    levels = torch.tensor([20.0, 128.0, 140.0, 250.0], dtype=torch.float64)
    x0 = (levels / 127.5 - 1).reshape(1, 4, 1, 1)
    g = torch.Generator().manual_seed(3)
    r = ddpm.bits_per_dim(
        oracle.model("eps"), x0.expand(n, 4, 1, 1), s, variance=variance, clip_x0=False, batch_size=n, generator=g
    )
    to_bits = 1 / (4 * math.log(2))
    ab, abp, betas, post = s.alphas_cumprod, s.alphas_cumprod_prev, s.betas, s.posterior_variance
    d0 = x0.flatten() - oracle.mu
    for t in range(1, T):
        a, k = ab[t].item(), oracle.k(t)
        c = math.sqrt(abp[t].item()) * betas[t].item() / (1 - a)
        var = post[t].item() if variance == "posterior" else betas[t].item()
        err2 = (1 - k * math.sqrt(a)) ** 2 * d0**2 + k**2 * (1 - a)
        expected = 0.5 * (math.log(var / post[t].item()) + post[t].item() / var - 1 + c**2 * err2 / var)
        expected = expected.sum().item() * to_bits
        se = r.terms[:, t].std().item() / math.sqrt(n)
        assert r.terms[:, t].mean().item() == pytest.approx(expected, abs=5 * se + 1e-12), t
    # The decoder: E_ε[−log P(bin of x_0 | N(x̂_0(x_{t=0}), β̃_1))] by 60-point Gauss–Hermite quadrature, the
    # bin probabilities in 40-digit arithmetic, taken in the tail that holds the bin.
    mpmath.mp.dps = 40
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    a0, k0, sd_dec = ab[0].item(), oracle.k(0), math.sqrt(post[1].item())
    expected0 = 0.0
    for x, lv in zip(x0.flatten().tolist(), levels.tolist(), strict=True):
        for e, w in zip(nodes.tolist(), weights.tolist(), strict=True):
            mean = oracle.mu + k0 * (math.sqrt(a0) * x + math.sqrt(1 - a0) * e - math.sqrt(a0) * oracle.mu)
            a = (x - HALF - mean) / sd_dec if lv > 0 else -mpmath.inf
            b = (x + HALF - mean) / sd_dec if lv < 255 else mpmath.inf
            p = mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)  # the far tail
            expected0 += w * -float(mpmath.log(p))
    se0 = r.terms[:, 0].std().item() / math.sqrt(n)
    assert r.terms[:, 0].mean().item() == pytest.approx(expected0 * to_bits, abs=5 * se0 + 1e-9)
    # The prior: deterministic, the same for every copy of the image.
    aT = ab[-1].item()
    prior = 0.5 * (aT * x0.flatten() ** 2 + (1 - aT) - 1 - math.log(1 - aT))
    assert torch.allclose(r.prior, torch.full((n,), prior.sum().item() * to_bits, dtype=torch.float64), rtol=1e-9)
    assert torch.allclose(r.total, r.prior + r.terms.sum(1), rtol=1e-12)


def _chain_nll_bits(oracle: GaussianPixels, schedule: Schedule, x0_levels: list[float], variance: str) -> float:
    """Exact −log p_θ(x_0) in bits/dim of the model's own chain with the linear denoiser, by propagating the
    Gaussian marginal N(m, v) of x_t from N(0, 1) at T−1 through every step, then the decoder: x̂_0 at index 0
    is N(m', v'), so P(bin) = Φ((c + 1/255 − m')/S) − Φ((c − 1/255 − m')/S) with S² = β̃_1 + v'."""
    ab, abp, betas = schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist(), schedule.betas.tolist()
    post = schedule.posterior_variance.tolist()
    m, v, mu = 0.0, 1.0, oracle.mu
    for t in range(schedule.timesteps - 1, 0, -1):
        a, k = ab[t], oracle.k(t)
        c1 = math.sqrt(abp[t]) * betas[t] / (1 - a)
        c2 = math.sqrt(1 - betas[t]) * (1 - abp[t]) / (1 - a)
        gain, shift = c1 * k + c2, c1 * mu * (1 - k * math.sqrt(a))  # μ_θ(x_t) = gain · x_t + shift
        m, v = gain * m + shift, gain**2 * v + (post[t] if variance == "posterior" else betas[t])
    k0 = oracle.k(0)
    m_hat, v_hat = mu + k0 * (m - math.sqrt(ab[0]) * mu), k0**2 * v
    S = math.sqrt(post[1] + v_hat)
    nats = 0.0
    for lv in x0_levels:
        c = lv / 127.5 - 1
        hi = norm.cdf((c + HALF - m_hat) / S) if lv < 255 else 1.0
        lo = norm.cdf((c - HALF - m_hat) / S) if lv > 0 else 0.0
        nats -= math.log(hi - lo)
    return nats / (len(x0_levels) * math.log(2))


@pytest.mark.parametrize("variance,max_gap", [("posterior", 0.5), ("beta", 0.02)])
def test_bound_is_above_the_exact_nll_of_the_models_chain(variance, max_gap):
    """With the linear denoiser the model's chain is linear-Gaussian, so its exact NLL is a closed form; the bound
    must lie above it (by its KL(q(x_{1:T}|x_0) ‖ p_θ(x_{1:T}|x_0)) ≥ 0) for every image, and with σ² = β, which
    is the better choice for broad data, within 2%. Also the prediction types give the same bound."""
    T, n = 40, 1200
    s = short_schedule(T)
    oracle = GaussianPixels(s, mu=0.1, sd=0.3)
    levels = [20.0, 128.0, 140.0, 250.0]
    x0 = (torch.tensor(levels, dtype=torch.float64) / 127.5 - 1).reshape(1, 4, 1, 1).expand(n, 4, 1, 1)
    exact = _chain_nll_bits(oracle, s, levels, variance)
    r = ddpm.bits_per_dim(
        oracle.model("eps"),
        x0,
        s,
        variance=variance,
        clip_x0=False,
        batch_size=n,
        generator=torch.Generator().manual_seed(5),
    )
    mean, se = r.total.mean().item(), r.total.std().item() / math.sqrt(n)
    assert mean > exact - 4 * se
    assert mean < exact * (1 + max_gap)
    for prediction in ("x0", "v"):
        other = ddpm.bits_per_dim(
            oracle.model(prediction),
            x0,
            s,
            prediction,
            variance,
            clip_x0=False,
            batch_size=n,
            generator=torch.Generator().manual_seed(5),
        )
        assert torch.allclose(other.total, r.total, rtol=1e-6), prediction


@pytest.mark.parametrize("name", ["uniform", "peaked"])
def test_bound_of_discrete_data_is_above_its_entropy(name):
    """8-bit pixels drawn from a known distribution over the 256 levels, exact denoiser: averaged over the data,
    the bound is ≥ the model's NLL ≥ the data's entropy H (8 bits/dim for uniform pixels: the units are bits
    per dimension of 8-bit data), and with σ² = β and 100 steps it comes within 6% of it."""
    T, n = 100, 300
    s = short_schedule(T)
    if name == "uniform":
        pmf = torch.full((256,), 1 / 256, dtype=torch.float64)
    else:
        pmf = torch.softmax(-0.5 * ((LEVELS - 0.1) / 0.1) ** 2, 0)
    entropy = -(pmf * pmf.log()).sum().item() / math.log(2)
    g = torch.Generator().manual_seed(11)
    x0 = LEVELS[torch.multinomial(pmf, n * 16, replacement=True, generator=g)].reshape(n, 1, 4, 4).float()
    r = ddpm.bits_per_dim(DiscretePixels(s, pmf), x0, s, variance="beta", batch_size=n, generator=g)
    mean, se = r.total.mean().item(), r.total.std().item() / math.sqrt(n)
    if name == "uniform":
        assert entropy == pytest.approx(8.0, abs=1e-12)
    assert entropy - 4 * se < mean < 1.06 * entropy


# ---------------------------------------------------------------------------- how the model is called


def test_model_called_like_a_sampler_and_batches_do_not_change_numbers():
    """One model call per (batch, t), t running T−1 → 0 with one index per call; per-image generators make image
    i's bound independent of the batch size; the callback sees every call; off-grid values are quantized."""
    T, n = 12, 5
    s = short_schedule(T)
    oracle = GaussianPixels(s, mu=0.0, sd=0.5)
    seen: list[tuple[int, list[int]]] = []

    def model(x, t):
        seen.append((x.shape[0], t.tolist()))
        return oracle.model("eps")(x, t)

    x0 = quantize(torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    events: list[dict] = []
    a = ddpm.bits_per_dim(model, x0, s, batch_size=2, generator=image_generators(7, range(n)), callback=events.append)
    assert [b for b, _ in seen] == [2] * T + [2] * T + [1] * T
    for i, (_, ts) in enumerate(seen):
        assert ts == [T - 1 - i % T] * len(ts)
    assert len(events) == 3 * T and events[-1]["calls"] == events[-1]["total_calls"] == 3 * T
    b = ddpm.bits_per_dim(oracle.model("eps"), x0, s, batch_size=5, generator=image_generators(7, range(n)))
    assert torch.allclose(a.total, b.total, rtol=1e-6, atol=0)
    # Values between levels (the built-in digits have 17) are taken to their nearest 8-bit level first.
    off_grid = torch.randint(0, 17, (n, 1, 3, 3), generator=torch.Generator().manual_seed(2)).float() / 8 - 1
    c = ddpm.bits_per_dim(oracle.model("eps"), off_grid, s, generator=torch.Generator().manual_seed(4))
    d = ddpm.bits_per_dim(oracle.model("eps"), quantize(off_grid), s, generator=torch.Generator().manual_seed(4))
    assert torch.equal(c.total, d.total)
    summary = a.summary()
    assert summary["bits_per_dim"] == pytest.approx(a.total.mean().item())
    assert summary["num_images"] == n and summary["timesteps"] == T
    assert summary["per_image_bits_per_dim"] == a.total.tolist() and len(summary["per_image_bits_per_dim"]) == n


def test_labels_follow_their_images_through_batches():
    """A class-conditional model (label y: pixels N(0.2 y − 0.3, 0.3²)) gets each image's own label in every batch:
    the bound equals that of the unconditional oracle for that class, image by image."""
    T, n = 10, 5
    s = short_schedule(T)
    labels = torch.tensor([0, 3, 1, 2, 3])
    x0 = quantize(torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(6)) * 2 - 1).double()

    def cond(x, t, y):
        a = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        mu = (0.2 * y - 0.3).reshape(-1, 1, 1, 1).double()
        return (1 - a).sqrt() / (a * 0.09 + 1 - a) * (x - a.sqrt() * mu)

    r = ddpm.bits_per_dim(
        cond, x0, s, labels=labels, batch_size=2, generator=image_generators(1, range(n)), progress=True
    )
    gens = image_generators(1, range(n))
    for i, y in enumerate(labels.tolist()):
        one = ddpm.bits_per_dim(
            GaussianPixels(s, 0.2 * y - 0.3, 0.3).model("eps"), x0[i : i + 1], s, generator=gens[i : i + 1]
        )
        assert r.total[i].item() == pytest.approx(one.total.item(), rel=1e-6), i


def test_clipping_is_applied_like_the_samplers():
    """A model whose x̂_0 lies far outside [-1, 1]: clipping (the default, as in sampling) bounds the damage."""
    s = short_schedule(10)
    x0 = torch.full((3, 1, 2, 2), LEVELS[128].item())  # the level just above 0 (0 lies between two levels)

    def far(x, t):
        return torch.full_like(x, 5.0)  # x̂_0 = 5 in x0-prediction

    clipped = ddpm.bits_per_dim(far, x0, s, prediction="x0", generator=torch.Generator().manual_seed(0))
    raw = ddpm.bits_per_dim(far, x0, s, prediction="x0", clip_x0=False, generator=torch.Generator().manual_seed(0))
    assert bool((raw.total > clipped.total).all())
    # With x̂_0 clamped to 1 the decoder term is exactly −log P(bin of x_0 | N(1, β̃_1)) per pixel.
    sd = math.sqrt(s.posterior_variance[1].item())
    c = LEVELS[128].item()
    dec = -math.log(norm.cdf((c + HALF - 1) / sd) - norm.cdf((c - HALF - 1) / sd)) / math.log(2)
    assert clipped.terms[:, 0].tolist() == pytest.approx([dec] * 3, rel=1e-9)


def test_bad_input_is_named():
    s = short_schedule(5)
    model = GaussianPixels(s, 0.0, 0.5).model("eps")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ddpm.bits_per_dim(model, torch.full((2, 1, 2, 2), 3.0), s)
    with pytest.raises(ValueError, match="variance"):
        ddpm.bits_per_dim(model, torch.zeros(2, 1, 2, 2), s, variance="large")
    with pytest.raises(ValueError, match="generators"):
        ddpm.bits_per_dim(model, torch.zeros(2, 1, 2, 2), s, generator=image_generators(0, range(3)))
    with pytest.raises(ValueError, match="batch_size"):
        ddpm.bits_per_dim(model, torch.zeros(2, 1, 2, 2), s, batch_size=0)
