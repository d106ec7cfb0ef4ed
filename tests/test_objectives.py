"""The objectives of the DDPM paper's Table 2 and of improved DDPM against closed forms: μ̃ prediction, the learned
reverse variance, the bound as a loss (the same terms as ``ddpm eval --nll``), the hybrid loss's stop-gradient and
the loss-aware timestep sampler's weights."""

from __future__ import annotations

import math

import pytest
import torch

import ddpm
from ddpm.denoiser import image_generators, make_denoiser
from ddpm.diffusion import (
    learned_log_variance,
    output_channels,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    split_output,
    training_target,
)
from ddpm.errors import ParameterError
from ddpm.likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    learned_variance_bounds,
    reverse_log_variance,
    vb_term,
    vlb_terms,
)
from ddpm.losses import LossHistory, Objective, check_objective
from ddpm.schedule import Schedule

S = Schedule.linear(1000)


def _batch(n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.randint(0, 256, (n, 2, 3, 3), generator=g) / 127.5 - 1).to(dtype)  # on the 8-bit grid
    noise = torch.randn(x0.shape, generator=g, dtype=dtype)
    t = torch.cat([torch.tensor([0, 1, 999]), torch.randint(0, 1000, (max(n - 3, 0),), generator=g)])[:n]
    return x0, noise, t


def test_mean_prediction_converts_to_x0_and_eps_exactly():
    x0, noise, t = _batch()
    x_t = q_sample(x0, t, noise, S)
    mean = training_target(x0, noise, t, S, "mean")
    torch.testing.assert_close(mean, q_posterior(x0, x_t, t, S)[0], rtol=0, atol=0)
    ab, ab_prev = (S.alphas_cumprod[t].view(-1, 1, 1, 1), S.alphas_cumprod_prev[t].view(-1, 1, 1, 1))
    got_x0, got_eps = prediction_to_x0_eps(mean, x_t, ab, "mean", ab_prev)
    # c_x0 is ~1e-4 at t = 999: the conversion divides by it, so float64 keeps ~1e-11 of x0 there.
    torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-9)
    torch.testing.assert_close(got_eps, noise, rtol=0, atol=1e-9)
    assert torch.equal(got_x0[0], mean[0])  # index 0: μ̃ = x_0 itself
    with pytest.raises(ValueError, match="alpha_bar_prev"):
        prediction_to_x0_eps(mean, x_t, ab, "mean")


def test_learned_range_ends_are_the_two_fixed_variances():
    small, large = learned_variance_bounds(S)
    post = S.posterior_variance.clone()
    post[0] = post[1]  # improved-diffusion's clipped log β̃
    torch.testing.assert_close(small.exp(), post, rtol=1e-12, atol=0)
    torch.testing.assert_close(large.exp(), S.betas, rtol=1e-12, atol=0)
    v = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    out = learned_log_variance(v, "learned-range", small[5], large[5])
    assert out[0].item() == pytest.approx(small[5].item(), abs=1e-15)
    assert out[1].item() == pytest.approx(large[5].item(), abs=1e-15)
    assert out[2].item() == pytest.approx(0.5 * (small[5] + large[5]).item(), abs=1e-15)  # log-space midpoint
    assert torch.equal(learned_log_variance(v, "learned", small[5], large[5]), v)
    assert output_channels(3, "learned-range") == 6 and output_channels(3, "fixed-large") == 3
    pred, var_out = split_output(torch.arange(12.0).view(1, 4, 1, 3), "learned")
    assert pred.shape == var_out.shape == (1, 2, 1, 3) and var_out[0, 0, 0, 0] == 6.0


def test_batched_bound_terms_match_the_closed_forms_per_element():
    x0, noise, t = _batch()
    x_t = q_sample(x0, t, noise, S)
    g = torch.Generator().manual_seed(1)
    model_mean = x0 + 0.1 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    log_var = math.log(1e-3) + 0.5 * torch.randn(x0.shape, generator=g, dtype=torch.float64)  # per element
    got = vlb_terms(x0, x_t, t, model_mean, log_var, S)
    true_mean, true_var = q_posterior(x0, x_t, t, S)
    for i in range(len(t)):
        if t[i] == 0:  # the discretized decoder
            want = -discretized_gaussian_log_likelihood(x0[i], model_mean[i], 0.5 * log_var[i]).sum()
        else:  # KL of two Gaussians, per element, written out
            v1, v2 = true_var[i], log_var[i].exp()
            want = 0.5 * (torch.log(v2 / v1) + v1 / v2 + (true_mean[i] - model_mean[i]) ** 2 / v2 - 1).sum()
        assert got[i].item() == pytest.approx(want.item(), rel=1e-10)
    # The per-index term of `ddpm eval --nll` is the same function.
    table = reverse_log_variance(S, "posterior")
    for i in range(3):
        x0_hat = model_mean[i : i + 1]
        mean_i = x0_hat if t[i] == 0 else q_posterior(x0_hat, x_t[i : i + 1], t[i : i + 1], S)[0]
        want = vlb_terms(x0[i : i + 1], x_t[i : i + 1], t[i : i + 1], mean_i, table[t[i]].item(), S)
        torch.testing.assert_close(vb_term(x0_hat, x0[i : i + 1], x_t[i : i + 1], int(t[i]), S, table), want)


class _Outputs(torch.nn.Module):
    """A 'network' whose output is a parameter: (B, 2C, H, W) for a learned variance."""

    def __init__(self, shape: tuple[int, ...], seed: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.out = torch.nn.Parameter(0.3 * torch.randn(shape, generator=g))

    def forward(self, x, t):
        return self.out


def _grads(objective: Objective, model: _Outputs, x0, t, noise) -> torch.Tensor:
    model.zero_grad()
    objective.loss(model, x0, t, noise).backward()
    return model.out.grad.clone()


def test_hybrid_bound_term_trains_only_the_variance():
    x0, noise, t = _batch(dtype=torch.float32)
    net = _Outputs((x0.shape[0], 4, 3, 3))
    hybrid = Objective.create(S, loss_type="hybrid", variance="learned-range")
    simple = Objective.create(S)
    g_h = _grads(hybrid, net, x0, t, noise)
    net.zero_grad()
    simple.loss(lambda x, tt: net(x, tt)[:, :2], x0, t, noise).backward()
    g_s = net.out.grad.clone()
    torch.testing.assert_close(g_h[:, :2], g_s[:, :2], rtol=0, atol=0)  # the mean: L_simple's gradient alone
    assert g_h[:, 2:].abs().sum() > 0  # the variance: the bound's
    # The same bound without the stop-gradient (loss vlb) moves the mean too.
    g_v = _grads(Objective.create(S, loss_type="vlb", variance="learned-range"), net, x0, t, noise)
    assert not torch.allclose(g_v[:, :2], g_s[:, :2])
    # Its value: L_simple + λ T L_t, L_t in bits/dim.
    loss, per_image = hybrid.losses(net, x0, t, noise)
    x_t = q_sample(x0, t, noise, S)
    bits = hybrid.vlb_bits(x0, x_t, t, net.out[:, :2], net.out[:, 2:])
    mse = (net.out[:, :2] - noise).square().flatten(1).mean(1)
    torch.testing.assert_close(per_image, (mse + 0.001 * 1000 * bits).detach())
    torch.testing.assert_close(loss, per_image.mean())


def test_vlb_loss_with_a_fixed_variance_is_the_bound_in_bits_per_dim():
    x0, noise, t = _batch(dtype=torch.float64)
    net = _Outputs(x0.shape)
    net.out.data = net.out.data.double()
    for variance, name in (("fixed-small", "posterior"), ("fixed-large", "beta")):
        _, per_image = Objective.create(S, loss_type="vlb", variance=variance, prediction="x0").losses(
            net, x0, t, noise
        )
        x_t = q_sample(x0, t, noise, S)
        table = reverse_log_variance(S, name)
        want = torch.stack(
            [
                vb_term(net.out[i : i + 1].detach(), x0[i : i + 1], x_t[i : i + 1], int(t[i]), S, table)[0]
                for i in range(len(t))
            ]
        )
        # Training computes the bound in float32; the float64 per-index code of `ddpm eval --nll` is the oracle. The
        # two log-variances of each KL round to float32 (~1e-7), which T / ln 2 ≈ 1443 turns into ~1e-4 here.
        torch.testing.assert_close(
            per_image.double(), 1000 * want / (x0[0].numel() * math.log(2)), rtol=1e-5, atol=2e-4
        )


def test_importance_weights_keep_the_loss_unbiased():
    """Σ_t p_t · (importance-weighted loss at t) equals the uniform-t average of the loss, on a fixed model."""
    T = 12
    s = Schedule.linear(T, 1e-3, 0.3)
    x0, noise, _ = _batch(n=1, dtype=torch.float64)
    net = _Outputs((1, 4, 3, 3))
    net.out.data = net.out.data.double()
    obj = Objective.create(s, loss_type="vlb", variance="learned-range", t_sampling="importance")
    plain = Objective.create(s, loss_type="vlb", variance="learned-range")
    g = torch.Generator().manual_seed(3)
    for _ in range(10):  # warm the history up with arbitrary positive losses
        obj.history.update(torch.arange(T), torch.rand(T, generator=g, dtype=torch.float64) * torch.arange(1, T + 1))
    p = obj.history.probabilities()
    assert p is not None and not torch.allclose(p, torch.full_like(p, 1 / T))
    weighted = [obj.loss(net, x0, torch.tensor([t]), noise).item() for t in range(T)]
    uniform = [plain.loss(net, x0, torch.tensor([t]), noise).item() for t in range(T)]
    # Exact in real arithmetic; the loss is float32 (the weight 1/(T p_t) rounds to ~6e-8 relative).
    assert sum(p[t].item() * weighted[t] for t in range(T)) == pytest.approx(sum(uniform) / T, rel=1e-6)
    assert max(abs(p[t].item() * T * weighted[t] / uniform[t] - 1) for t in range(T)) < 1e-6
    # ... and draw_t draws from p.
    draws = obj.draw_t(200_000, torch.Generator().manual_seed(4))
    freq = torch.bincount(draws, minlength=T).double() / draws.numel()
    torch.testing.assert_close(freq, p, rtol=0, atol=4 * (p * (1 - p) / draws.numel()).sqrt().max().item())


def test_loss_history_is_uniform_until_full_then_follows_the_second_moment():
    h = LossHistory(3, per_t=2, uniform=0.25)
    h.update(torch.tensor([0, 1, 2, 0]), torch.tensor([1.0, 2.0, 3.0, 5.0]))
    assert h.probabilities() is None  # indices 1 and 2 have one loss each
    h.update(torch.tensor([1, 2, 0]), torch.tensor([2.0, 4.0, 7.0]))  # index 0 keeps its newest two: 5, 7
    w = torch.tensor([math.sqrt((25 + 49) / 2), 2.0, math.sqrt((9 + 16) / 2)], dtype=torch.float64)
    torch.testing.assert_close(h.probabilities(), 0.75 * w / w.sum() + 0.25 / 3)
    again = LossHistory(3, per_t=2, uniform=0.25)
    again.load_state_dict(h.state_dict())
    torch.testing.assert_close(again.probabilities(), h.probabilities(), rtol=0, atol=0)


class _GaussianEps:
    """Exact ε-prediction for pixels N(0, sd²), with a constant variance output v appended when ``v`` is set."""

    def __init__(self, schedule: Schedule, sd: float = 0.5, v: float | None = None) -> None:
        self.s, self.sd, self.v = schedule, sd, v

    def __call__(self, x, t):
        a = self.s.alphas_cumprod[t.cpu()].view(-1, 1, 1, 1).to(x.dtype)
        eps = (1 - a).sqrt() / (a * self.sd**2 + 1 - a) * x
        return eps if self.v is None else torch.cat([eps, torch.full_like(x, self.v)], dim=1)


@pytest.mark.parametrize("steps", [None, 10])
def test_learned_range_sampling_at_its_ends_is_fixed_variance_sampling(steps):
    s = Schedule.linear(100, 1e-3, 0.2)
    for v, fixed in ((-1.0, "posterior"), (1.0, "beta")):
        kw = dict(shape=(4, 1, 3, 3), schedule=s, steps=steps, clip_x0=False)
        learned = ddpm.sample(
            _GaussianEps(s, v=v), generator=image_generators(0, range(4)), learned_variance="learned-range", **kw
        )
        want = ddpm.sample(_GaussianEps(s), generator=image_generators(0, range(4)), variance=fixed, **kw)
        torch.testing.assert_close(learned, want, rtol=0, atol=1e-5)
    # An ODE sampler follows the mean part only: the variance output changes nothing.
    a, b = (
        ddpm.sample(
            _GaussianEps(s, v=v),
            sampler="ddim",
            learned_variance="learned-range",
            generator=image_generators(0, range(4)),
            **kw,
        )
        for v in (-1.0, 1.0)
    )
    assert torch.equal(a, b)


def test_bound_of_a_learned_range_network_uses_its_own_variance():
    s = Schedule.linear(20, 1e-3, 0.3)
    x0 = (torch.randint(0, 256, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0)) / 127.5 - 1).double()

    def bound(model, **kw):  # the same draws of x_t for every call
        return bits_per_dim(model, x0, s, generator=image_generators(0, range(3)), clip_x0=False, **kw)

    small = bound(_GaussianEps(s, v=-1.0), learned_variance="learned-range")
    post = bound(_GaussianEps(s), variance="posterior")
    torch.testing.assert_close(small.terms, post.terms, rtol=1e-6, atol=0)
    large = bound(_GaussianEps(s, v=1.0), learned_variance="learned-range")
    beta = bound(_GaussianEps(s), variance="beta")
    # Steps t ≥ 1 match σ² = β_t; the decoder of "beta" keeps β̃_1 (the paper's), the network's end is β_0.
    torch.testing.assert_close(large.terms[:, 1:], beta.terms[:, 1:], rtol=1e-6, atol=0)
    assert not torch.allclose(large.terms[:, 0], beta.terms[:, 0])


def test_denoiser_checks_the_doubled_output():
    d = make_denoiser(_GaussianEps(S), S, learned_variance="learned-range")
    with pytest.raises(ValueError, match=r"it must return \(2, 2, 3, 3\)"):
        d(torch.zeros(2, 1, 3, 3), 5)


@pytest.mark.parametrize(
    "kw, flag",
    [
        (
            dict(loss_type="simple", variance="learned-range", t_sampling="uniform"),
            "a learned-range variance is trained only by the bound",
        ),
        (dict(loss_type="hybrid", variance="fixed-small", t_sampling="uniform"), "{loss} hybrid trains a learned"),
        (dict(loss_type="simple", variance="fixed-small", t_sampling="importance"), "{t_sampling} importance"),
        (
            dict(loss_type="vlb", variance="fixed-small", t_sampling="uniform", loss_weight="min-snr"),
            "drop {loss_weight}",
        ),
        (dict(loss_type="kl", variance="fixed-small", t_sampling="uniform"), "unknown {loss} 'kl'"),
    ],
)
def test_combinations_that_cannot_train_are_named(kw, flag):
    with pytest.raises(ParameterError) as e:
        check_objective(**kw)
    assert flag in e.value.template
