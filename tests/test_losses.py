"""The training objective: loss weights against their x_0-space definitions, Laplace timestep draws against
a Monte-Carlo of the continuous density, and the LR schedule against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import extract, q_sample, training_target, x0_from_eps, x0_from_v
from ddpm.losses import (
    Objective,
    diffusion_loss,
    draw_timesteps,
    loss_weights,
    snr,
    stratified_uniforms,
    timestep_probabilities,
)
from ddpm.schedule import Schedule

S = Schedule.linear(1000)


def _setup(prediction: str, n: int = 64):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((n, 1, 4, 4), generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (n,), generator=g)
    x_t = q_sample(x0, t, noise, S)
    target = training_target(x0, noise, t, S, prediction)
    output = target + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)  # an imperfect network
    return x0, t, x_t, target, output


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_min_snr_weights_the_x0_error_by_min_snr_gamma(prediction):
    x0, t, x_t, target, output = _setup(prediction)
    ab = extract(S.alphas_cumprod, t, x_t)
    x0_hat = {
        "eps": lambda: x0_from_eps(x_t, output, ab),
        "v": lambda: x0_from_v(x_t, output, ab),
        "x0": lambda: output,
    }[prediction]()
    x0_err = (x0 - x0_hat).square().flatten(1).mean(1)  # (B,)
    own_err = (target - output).square().flatten(1).mean(1)
    w = loss_weights(S, prediction, "min-snr", gamma=5.0)[t]
    expected = snr(S)[t].clamp(max=5.0) * x0_err
    torch.testing.assert_close(w * own_err, expected, rtol=1e-9, atol=0)
    # At the noisiest step the ε weight is 1 (SNR < γ), at the cleanest it is γ/SNR.
    if prediction == "eps":
        table = loss_weights(S, "eps", "min-snr")
        assert table[-1].item() == pytest.approx(1.0)
        assert table[0].item() == pytest.approx(5.0 / snr(S)[0].item())


def test_p2_is_one_over_k_plus_snr_on_the_eps_error():
    w = loss_weights(S, "eps", "p2", gamma=0.5)
    torch.testing.assert_close(w, 1 / (1 + snr(S)) ** 0.5, rtol=1e-12, atol=0)
    # The same emphasis seen from a v-network: weight on the v error × (1+SNR)/SNR = weight on the eps error.
    wv = loss_weights(S, "v", "p2", gamma=0.5)
    torch.testing.assert_close(wv * (1 + snr(S)) / snr(S), w, rtol=1e-12, atol=0)


def test_unweighted_loss_is_plain_mse_bit_for_bit():
    _, t, _, target, output = _setup("eps")
    out32, tgt32 = output.float(), target.float()
    assert torch.equal(diffusion_loss(out32, tgt32, t), torch.nn.functional.mse_loss(out32, tgt32))
    ones = loss_weights(S, "eps", "none")
    assert diffusion_loss(out32, tgt32, t, ones).item() == pytest.approx(
        diffusion_loss(out32, tgt32, t).item(), rel=1e-6
    )
    w = loss_weights(S, "eps", "min-snr")
    per_image = (out32 - tgt32).square().flatten(1).mean(1)
    assert diffusion_loss(out32, tgt32, t, w).item() == pytest.approx(float((w[t] * per_image).mean()), rel=1e-6)


def test_laplace_timesteps_match_a_monte_carlo_of_the_continuous_density():
    loc, scale = -1.0, 0.7
    p = timestep_probabilities(S, "laplace", loc, scale)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((p >= 0).all())
    # Draw log-SNR from Laplace(loc, scale) and round each draw to the index with the nearest log-SNR.
    g = torch.Generator().manual_seed(1)
    n = 400_000
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    lam = loc - scale * torch.sign(u) * torch.log1p(-2 * u.abs())
    grid = snr(S).log()  # decreasing in t
    idx = torch.searchsorted(-grid, -lam).clamp(1, 999)  # neighbours idx-1, idx
    nearer = torch.where((grid[idx - 1] - lam).abs() <= (grid[idx] - lam).abs(), idx - 1, idx)
    freq = torch.bincount(nearer, minlength=1000).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    busy = p * n >= 20  # where the normal approximation of a bin count holds; the tail is checked as one bin
    assert int(busy.sum()) > 100
    assert float(((freq - p).abs() / sigma)[busy].max()) < 5.0
    tail = float(p[~busy].sum())
    assert abs(float(freq[~busy].sum()) - tail) < 5 * math.sqrt(tail / n) + 1e-6
    # The mass sits where log-SNR is near loc.
    assert abs(grid[int(p.argmax())].item() - loc) < 0.05
    uniform = timestep_probabilities(S, "uniform")
    assert torch.equal(uniform, torch.full((1000,), 1e-3, dtype=torch.float64))


def test_draw_timesteps_follows_its_distribution_and_uniform_is_the_seed_draw():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw_timesteps(50, None, 1000, g1), torch.randint(0, 1000, (50,), generator=g2))
    p = torch.zeros(10, dtype=torch.float64)
    p[[0, 3, 9]] = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    s = Schedule.linear(10)
    t = draw_timesteps(100_000, p, s.timesteps, torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=10).double() / t.numel()
    assert set(t.unique().tolist()) == {0, 3, 9}
    torch.testing.assert_close(freq, p, atol=6e-3, rtol=0)


def test_stratified_draws_put_one_in_each_slice_and_keep_each_draws_density():
    # One u in each of the n slices [k/n, (k+1)/n); with n = T every timestep is drawn exactly once.
    g = torch.Generator().manual_seed(1)
    u = stratified_uniforms(64, g)
    assert u.dtype == torch.float64 and ((u >= 0) & (u < 1)).all()
    assert torch.equal((u * 64).floor().long().sort().values, torch.arange(64))
    assert torch.equal(draw_timesteps(1000, None, 1000, g, stratified=True).sort().values, torch.arange(1000))
    t = draw_timesteps(64, None, 1000, g, stratified=True)
    assert torch.equal((t * 64 // 1000).sort().values, torch.arange(64))  # 64 strata of 15.6 timesteps
    # The order is random: the same slot falls in different slices from batch to batch.
    firsts = torch.stack([stratified_uniforms(8, g)[0] for _ in range(4000)])
    counts = torch.bincount((firsts * 10).long(), minlength=10).double()
    assert (counts - 400).abs().max() < 5 * math.sqrt(400 * 0.9)  # each slot alone is U[0, 1)
    # Through the inverse distribution function a stratified batch hits every mass to within 1/n, far inside
    # the ±1.6e-3 standard deviation of n independent draws.
    p = torch.zeros(10, dtype=torch.float64)
    p[[0, 3, 9]] = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    n = 100_000
    t = draw_timesteps(n, p, 10, torch.Generator().manual_seed(0), stratified=True)
    freq = torch.bincount(t, minlength=10).double() / n
    torch.testing.assert_close(freq, p, atol=1.0 / n + 1e-12, rtol=0)
    objective = Objective.create(S, stratified=True)
    assert torch.equal(objective.draw_t(1000, torch.Generator().manual_seed(2)).sort().values, torch.arange(1000))


def test_bad_objective_values_are_refused():
    with pytest.raises(ValueError, match="min-snr gamma"):
        loss_weights(S, "eps", "min-snr", gamma=0.0)
    with pytest.raises(ValueError, match="unknown loss weighting"):
        loss_weights(S, "eps", "bogus")
    with pytest.raises(ValueError, match="positive scale"):
        timestep_probabilities(S, "laplace", 0.0, -1.0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_objective_is_the_composition_of_its_parts(prediction):
    """Objective.loss = diffusion_loss(net(q_sample(x0, t, ε), t), target) bit for bit, so training and the
    README's example compute the same number; the default is the plain MSE against ε (the DDPM paper's)."""
    x0, t, _, _, _ = _setup(prediction)
    x0, noise = x0.float(), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    net = torch.nn.Conv2d(1, 1, 3, padding=1)

    def model(x, tt):
        return net(x) * (1 + tt.view(-1, 1, 1, 1) / 1000)

    plain = Objective(S, prediction)
    expect = torch.nn.functional.mse_loss(
        model(q_sample(x0, t, noise, S), t), training_target(x0, noise, t, S, prediction)
    )
    assert torch.equal(plain.loss(model, x0, t, noise), expect)
    weighted = Objective.create(S, prediction, "min-snr", t_sampling="laplace")
    w = loss_weights(S, prediction, "min-snr")
    assert torch.equal(
        weighted.loss(model, x0, t, noise),
        diffusion_loss(model(q_sample(x0, t, noise, S), t), training_target(x0, noise, t, S, prediction), t, w),
    )
    assert not torch.equal(weighted.loss(model, x0, t, noise), expect)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    p = timestep_probabilities(S, "laplace")
    assert torch.equal(weighted.draw_t(100, g1), draw_timesteps(100, p, 1000, g2))
