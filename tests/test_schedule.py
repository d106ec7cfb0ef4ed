import math

import pytest
import torch

from ddpm import Schedule


def test_linear_matches_ddpm_table():
    s = Schedule.linear(1000, 1e-4, 0.02)
    assert s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-18)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-17)
    # Evenly spaced: every difference is (0.02 - 1e-4) / 999.
    assert torch.allclose(
        s.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64), rtol=0, atol=1e-15
    )


def test_alphas_cumprod_is_the_running_product():
    s = Schedule.linear(1000)
    prod, expected = 1.0, []
    for b in s.betas.tolist():
        prod *= 1.0 - b
        expected.append(prod)
    assert torch.allclose(s.alphas_cumprod, torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0)
    assert torch.equal(s.alphas, 1 - s.betas)
    # The DDPM paper's figure: ᾱ_T is about 4.04e-5 for the default schedule.
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])


def test_cosine_matches_closed_form():
    T, s_off = 1000, 0.008
    s = Schedule.cosine(T)

    def f(t):
        return math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2

    expected = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    capped = s.betas >= 0.999
    assert capped.sum().item() == 1 and bool(capped[-1])  # only the last beta hits the cap
    assert torch.allclose(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-12, atol=1e-15)
    assert torch.all(s.betas <= 0.999)


def test_posterior_variance_closed_form():
    s = Schedule.linear(50, 1e-3, 0.2)
    ab = s.alphas_cumprod.tolist()
    for t in (1, 7, 49):
        assert s.posterior_variance[t].item() == pytest.approx(
            (1 - ab[t - 1]) / (1 - ab[t]) * s.betas[t].item(), rel=1e-14
        )
    assert s.posterior_variance[0].item() == 0.0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"timesteps": 0}, "timesteps"),
        ({"timesteps": 10, "beta_start": 0.0}, "beta_start"),
        ({"timesteps": 10, "beta_end": 1.0}, "beta_end"),
        ({"timesteps": 10, "beta_start": -0.1}, "beta_start"),
        ({"timesteps": 10, "beta_start": 0.03, "beta_end": 0.02}, "larger than beta_end"),
    ],
)
def test_linear_rejects_bad_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Schedule.linear(**kwargs)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="timesteps"):
        Schedule.cosine(0)
    with pytest.raises(ValueError, match="timesteps"):
        Schedule.linear(2.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Schedule(torch.tensor([0.1, 1.5]))


def test_round_trip_through_dict():
    for s in (Schedule.linear(100, 2e-4, 0.03), Schedule.cosine(64), Schedule(torch.tensor([0.1, 0.2, 0.3]))):
        r = Schedule.from_dict(s.to_dict())
        assert torch.equal(r.betas, s.betas)
