import math

import pytest
import torch

import ddpm
from ddpm import Schedule


def test_q_sample_moments():
    """x_t | x_0 has mean √ᾱ_t x_0 and variance 1 − ᾱ_t (checked over 200k draws per t)."""
    s = Schedule.linear()
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    for t in (0, 10, 500, 999):
        tt = torch.full((n,), t)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        x_t = ddpm.q_sample(x0, tt, noise, s)
        ab = s.alphas_cumprod[t].item()
        # standard error of the mean is sqrt(var/n) <= 0.0023; of the variance about var*sqrt(2/n).
        assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=5 * math.sqrt((1 - ab) / n) + 1e-12)
        assert x_t.var().item() == pytest.approx(1 - ab, rel=5 * math.sqrt(2 / n))
        # And it is exactly the closed form with the noise that was passed in.
        assert torch.allclose(x_t, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise, rtol=0, atol=1e-12)


def test_q_posterior_matches_ddpm_eq_6_7_and_bayes():
    s = Schedule.linear(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 5, 400, 999])
    mean, var = ddpm.q_posterior(x0, x_t, t, s)
    for i, ti in enumerate(t.tolist()):
        ab, ab_prev = s.alphas_cumprod[ti].item(), s.alphas_cumprod[ti - 1].item()
        beta, alpha = s.betas[ti].item(), 1 - s.betas[ti].item()
        eq7_mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0[i] + math.sqrt(alpha) * (1 - ab_prev) / (1 - ab) * x_t[i]
        eq7_var = (1 - ab_prev) / (1 - ab) * beta
        assert torch.allclose(mean[i], eq7_mean, rtol=1e-12, atol=1e-12)
        assert var[i].item() == pytest.approx(eq7_var, rel=1e-12)
        # Independent oracle: Bayes' rule for the Gaussian prior q(x_{t-1}|x_0) and likelihood q(x_t|x_{t-1}).
        prec = 1 / (1 - ab_prev) + alpha / beta
        bayes_mean = (math.sqrt(ab_prev) * x0[i] / (1 - ab_prev) + math.sqrt(alpha) * x_t[i] / beta) / prec
        assert torch.allclose(mean[i], bayes_mean, rtol=1e-9, atol=1e-9)
        assert var[i].item() == pytest.approx(1 / prec, rel=1e-9)


def test_q_posterior_at_index_zero_is_x0():
    s = Schedule.linear(1000)
    x0, x_t = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    mean, var = ddpm.q_posterior(x0, x_t, torch.zeros(3, dtype=torch.long), s)
    assert torch.allclose(mean, x0, atol=1e-6) and torch.all(var == 0)


def test_conversions_round_trip():
    s = Schedule.cosine(100)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 100, (8,), generator=g)
    x_t = ddpm.q_sample(x0, t, eps, s)
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = ddpm.v_from_eps_x0(eps, x0, ab)
    assert torch.allclose(ddpm.x0_from_eps(x_t, eps, ab), x0, atol=1e-6)
    assert torch.allclose(ddpm.eps_from_x0(x_t, x0, ab), eps, atol=1e-9)
    assert torch.allclose(ddpm.x0_from_v(x_t, v, ab), x0, atol=1e-12)
    assert torch.allclose(ddpm.eps_from_v(x_t, v, ab), eps, atol=1e-12)
    for kind, pred in (("eps", eps), ("x0", x0), ("v", v)):
        got_x0, got_eps = ddpm.prediction_to_x0_eps(pred, x_t, ab, kind)
        assert torch.allclose(got_x0, x0, atol=1e-6) and torch.allclose(got_eps, eps, atol=1e-6)
        assert torch.allclose(ddpm.training_target(x0, eps, t, s, kind), pred, atol=1e-12)


def test_bad_inputs():
    s = Schedule.linear(10)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match="0..9"):
        ddpm.q_sample(x, torch.tensor([0, 10]), x, s)
    with pytest.raises(ValueError, match="shape"):
        ddpm.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 1, 2, 3), s)
    with pytest.raises(ValueError, match="prediction"):
        ddpm.prediction_to_x0_eps(x, x, 0.5, "score")
