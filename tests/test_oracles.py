"""The analytic oracles (ddpm.oracles) against their closed forms, in one and two dimensions."""

import math

import torch

from ddpm import Schedule
from ddpm.oracles import GaussianOracle, MixtureOracle, affine_gaussian, gaussian_w2, mean_cov

SCHED = Schedule.linear(1000)
AB = SCHED.alphas_cumprod


def one_dim() -> tuple[GaussianOracle, float, float]:
    """The oracle for d = 1, x_0 ~ N(μ, s²), with its μ and s."""
    oracle = GaussianOracle(SCHED, d=1, seed=3)
    return oracle, oracle.mean.item(), oracle.stds.item()


def test_gaussian_oracle_matches_the_closed_form_in_one_dimension():
    # E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ) and E[x_0 | x_t] = μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ).
    oracle, mu, s = one_dim()
    assert math.isclose(s, 0.05) and math.isclose(oracle.cov.item(), s**2)  # d = 1: the smallest std
    t = torch.tensor([0, 1, 250, 500, 999])
    x_t = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], dtype=torch.float64).reshape(5, 1, 1, 1)
    a = AB[t].reshape(5, 1, 1, 1)
    centred = x_t - a.sqrt() * mu
    denom = a * s**2 + 1 - a
    assert torch.allclose(oracle.eps(x_t, t), (1 - a).sqrt() * centred / denom, rtol=1e-12, atol=0)
    assert torch.allclose(oracle.x0(x_t, t), mu + a.sqrt() * s**2 * centred / denom, rtol=1e-12, atol=1e-15)
    # v = √ᾱ ε − √(1−ᾱ) x_0, and the two predictions explain x_t exactly: x_t = √ᾱ x̂_0 + √(1−ᾱ) ε̂.
    eps, x0 = oracle.eps(x_t, t), oracle.x0(x_t, t)
    assert torch.allclose(oracle.v(x_t, t), a.sqrt() * eps - (1 - a).sqrt() * x0, rtol=1e-12, atol=1e-15)
    assert torch.allclose(a.sqrt() * x0 + (1 - a).sqrt() * eps, x_t, rtol=0, atol=1e-12)
    assert oracle.model("x0") == oracle.x0


def test_gaussian_oracle_keeps_the_dtype_and_mixed_timesteps():
    oracle = GaussianOracle(SCHED, d=3)
    x = torch.randn(4, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 10, 700, 999])
    out = oracle.eps(x, t)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i in range(4):  # one t per row gives the same numbers as a batch of one
        assert torch.allclose(out[i], oracle.eps(x[i : i + 1], t[i : i + 1])[0])


def test_samples_have_the_oracle_mean_and_covariance():
    oracle = GaussianOracle(SCHED, d=2, std_min=0.1, std_max=0.4)
    x = oracle.sample(50_000, torch.Generator().manual_seed(1))
    m, c = mean_cov(x)
    assert torch.allclose(m, oracle.mean, atol=0.01) and torch.allclose(c, oracle.cov, atol=0.003)
    assert torch.allclose(torch.linalg.eigvalsh(oracle.cov), torch.tensor([0.01, 0.16], dtype=torch.float64))
    assert oracle.w2(x) < 0.01


def test_gaussian_w2_in_one_dimension():
    # W2(N(m1, s1²), N(m2, s2²)) = √((m1 − m2)² + (s1 − s2)²).
    one = torch.ones(1, 1, dtype=torch.float64)
    w = gaussian_w2(torch.tensor([0.5]), 4 * one, torch.tensor([-0.5]), 0.25 * one)
    assert math.isclose(w, math.sqrt(1.0 + 1.5**2), rel_tol=1e-12)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    assert gaussian_w2(torch.zeros(2), cov, torch.zeros(2), cov) < 1e-7


def test_prior_floor_is_the_affine_flow_of_unit_noise():
    # Per direction the exact flow from x_T ~ N(0, 1) is y = μ + k(x_T − √a μ), k = s/√(a s² + 1 − a), a = ᾱ_{T−1}.
    oracle, mu, s = one_dim()
    a = AB[-1].item()
    k = s / math.sqrt(a * s**2 + 1 - a)
    assert math.isclose(oracle.prior_floor(), math.hypot(-k * math.sqrt(a) * mu, k - s), rel_tol=1e-7)


def test_affine_gaussian_recovers_an_affine_map():
    mat = torch.tensor([[2.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0], dtype=torch.float64)
    b, cov = affine_gaussian(lambda x: (x.reshape(-1, 2) @ mat.T + shift).reshape(-1, 2, 1, 1), 2)
    assert torch.equal(b, shift) and torch.allclose(cov, mat @ mat.T, rtol=0, atol=1e-12)


def test_mixture_oracle_with_one_component_is_the_gaussian_formula():
    # K = 1, N(m, s² I): E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ m)/(ᾱ s² + 1 − ᾱ), as for the Gaussian oracle.
    m, s = torch.tensor([[0.4, -0.3]]), 0.2
    mix = MixtureOracle(SCHED, m, torch.ones(1), std=s)
    x_t = torch.tensor([[0.1, 0.9], [-1.0, 0.0]], dtype=torch.float64).reshape(2, 2, 1, 1)
    t = torch.tensor([30, 600])
    a = AB[t].reshape(2, 1, 1, 1)
    want = (1 - a).sqrt() * (x_t - a.sqrt() * m.double().reshape(1, 2, 1, 1)) / (a * s**2 + 1 - a)
    assert torch.allclose(mix.model(x_t, t), want, rtol=1e-10, atol=1e-12)


def test_mixture_oracle_labels_pick_one_component():
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    mix = MixtureOracle(SCHED, means, torch.tensor([1.0, 3.0]), std=0.1)
    only0 = MixtureOracle(SCHED, means[:1], torch.ones(1), std=0.1)
    x_t = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([100, 500, 900])
    assert torch.allclose(mix.model(x_t, t, torch.tensor([0, 0, 0])), only0.model(x_t, t))
    assert torch.allclose(mix.model(x_t, t, torch.tensor([-1, -1, -1])), mix.model(x_t, t))
    assert mix.weights.tolist() == [0.25, 0.75]
    assert mix.nearest(torch.tensor([[0.9, 0.2], [-2.0, 1.0]]).reshape(2, 2, 1, 1)).tolist() == [0, 1]
