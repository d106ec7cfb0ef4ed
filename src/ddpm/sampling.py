"""Samplers: plain functions over a model callable, and one public entry point, :func:`sample`.

Every sampler has the same signature (k-diffusion style)::

    fn(denoise, x, schedule, timesteps, generator, callback, **options) -> x0_batch

- ``denoise(x, t) -> (x0, eps)`` wraps the network: guidance, prediction type and x_0 clipping are
  already applied, ``t`` is a python int index into the *training* schedule. A network that also predicts its
  reverse variance returns a :class:`Denoised` pair whose ``log_variance`` gives it; only the ancestral sampler
  uses it, every other sampler follows the mean (the probability-flow ODE and its SDEs have no use for Σ_θ).
- ``x`` (B, C, H, W) is the starting noise x_T; ``timesteps`` a LongTensor of decreasing indices that
  ends at 0. Multistep memory lives in local variables, never on an object.
- ``generator`` is None, one ``torch.Generator``, or a list with one per image (so image *i* is the
  same at any batch size); every random draw goes through :func:`randn`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Callback, Denoised, Denoiser, Generators, conditioned, make_denoiser, randn
from .schedule import DEFAULT_SPACING, Schedule, log_snr, posterior_coefficients, spaced_timesteps

# ---------------------------------------------------------------------------- samplers

Step = tuple[int, float, float, float, float]  # (t, ᾱ_t, ᾱ_s, λ_t, λ_s) of one step t -> s


def _steps(schedule: Schedule, timesteps: Tensor) -> list[Step]:
    """One (t, ᾱ_t, ᾱ_s, λ_t, λ_s) per kept index t, s the next kept index; python floats (float64).

    After the last index s is the clean image: ᾱ_s = 1 and λ_s = +inf. λ = log(α/σ) = ½ log(ᾱ/(1−ᾱ)) is
    DPM-Solver's half log-SNR.
    """
    ts = [int(t) for t in timesteps.tolist()]
    ab = schedule.alphas_cumprod.tolist()
    a = [ab[t] for t in ts] + [1.0]
    lam = [0.5 * float(log_snr(v)) for v in a]
    return [(t, a[i], a[i + 1], lam[i], lam[i + 1]) for i, t in enumerate(ts)]


def _evaluate(denoise: Denoiser, callback: Callback, x: Tensor, i: int, t: int) -> tuple[Tensor, Tensor]:
    """Step i's model evaluation at index t: (x̂_0, ε̂), both x's shape (B, C, H, W), shown to ``callback``."""
    out = denoise(x, t)
    if callback is not None:
        callback({"i": i, "t": t, "x": x, "x0": out[0]})
    return out


def _sigma_ratio(a_t: float, a_s: float) -> float:
    """σ_s/σ_t = √((1−ᾱ_s)/(1−ᾱ_t)), the factor every exponential-integrator step puts on x_t."""
    return ((1 - a_s) / (1 - a_t)) ** 0.5


def _check_eta(eta: float, sampler: str, meaning: str) -> None:
    """Reject a noise level η outside [0, 1], naming the sampler and what the ends mean."""
    if not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] ({meaning}) for {sampler}; got {eta!r}")


def _check_order(order: int, highest: int, sampler: str) -> None:
    """Reject a solver order outside 1..``highest``, naming the sampler."""
    if order not in range(1, highest + 1):
        allowed = " or ".join([", ".join(str(k) for k in range(1, highest)), str(highest)])
        raise ValueError(f"order must be {allowed} for {sampler}; got {order!r}")


ANCESTRAL_VARIANCES = ("posterior", "beta", "learned")


def sample_ddpm(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                generator: Generators = None, callback: Callback = None, *,
                variance: str = "posterior") -> Tensor:  # fmt: skip
    """Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2), on any decreasing subset of indices.

    For consecutive kept indices t > s, the step's own β is recomputed from ᾱ: β = 1 − ᾱ_t/ᾱ_s, so
    the subset defines a valid shorter Markov chain (Nichol & Dhariwal 2021, respacing).
    ``variance='posterior'`` uses σ² = β̃ = (1−ᾱ_s)/(1−ᾱ_t) β, ``'beta'`` uses σ² = β, ``'learned'`` the
    network's own σ² (a :class:`Denoised` output; a ``learned-range`` network interpolates the step's own β̃ and β,
    as improved DDPM respaces). The last step (to ᾱ = 1) adds no noise and returns the posterior mean, which is x̂_0.
    """
    if variance not in ANCESTRAL_VARIANCES:
        raise ValueError(
            f"unknown variance {variance!r}; choose 'posterior' (β̃_t), 'beta' (β_t) or 'learned' (the "
            "network's own, for a network that predicts it)"
        )
    steps = _steps(schedule, timesteps)
    for i, (t, a_t, a_s, _, _) in enumerate(steps):
        c_x0, c_xt, var_post, beta = posterior_coefficients(a_t, a_s)
        out = _evaluate(denoise, callback, x, i, t)
        mean = c_x0 * out[0] + c_xt * x  # DDPM eq. 7: the posterior mean, written with x̂_0
        if i + 1 == len(steps):
            return mean
        noise = randn(x.shape, generator, x.device, x.dtype)
        if variance == "learned":
            if not isinstance(out, Denoised):
                raise ValueError("variance='learned' needs a network that predicts its variance (learned_variance=)")
            x = mean + (0.5 * out.log_variance(math.log(var_post), math.log(beta))).exp() * noise
        else:
            x = mean + (var_post if variance == "posterior" else beta) ** 0.5 * noise
    return x


def sample_ddim(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                generator: Generators = None, callback: Callback = None, *,
                eta: float = 0.0) -> Tensor:  # fmt: skip
    """DDIM (Song, Meng & Ermon 2021) on any decreasing subset of indices. x: (B, C, H, W) → (B, C, H, W).

    ``eta = 0`` is the deterministic sampler (a first-order solver of the probability-flow ODE);
    ``eta = 1`` gives σ² = β̃ of the respaced chain, i.e. the same distribution as ancestral DDPM.
    The last step goes to ᾱ = 1 and returns x̂_0.
    """
    _check_eta(eta, "ddim", "0 deterministic, 1 DDPM-like")
    steps = _steps(schedule, timesteps)
    for i, (t, a_t, a_s, _, _) in enumerate(steps):
        x0, eps = _evaluate(denoise, callback, x, i, t)
        if i + 1 == len(steps):  # ᾱ_s = 1: eq. 12 reduces to x̂_0 (σ = 0, √(1−ᾱ_s) = 0)
            return x0
        # (1) DDIM eq. 16: σ_t(η) = η · √((1−ᾱ_s)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_s).
        sigma = eta * ((1 - a_s) / (1 - a_t) * (1 - a_t / a_s)) ** 0.5
        # (2) DDIM eq. 12: x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s−σ²) ε̂ + σ z.
        x = a_s**0.5 * x0 + max(1 - a_s - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * randn(x.shape, generator, x.device, x.dtype)
    return x


def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                    generator: Generators = None, callback: Callback = None, *, order: int = 2,
                    lower_order_final: bool = False) -> Tensor:  # fmt: skip
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): data-prediction multistep solver in λ = log(α/σ).

    x: (B, C, H, W) → (B, C, H, W). The first step is first order (no history yet). ``order=1`` is
    DPM-Solver++(1), which is DDIM with η = 0 step for step. ``lower_order_final`` also takes the step
    into the last index first order. The endpoint λ = ∞ (ᾱ = 1) is reached from the last index with
    the exact limit of the first-order update, which is x̂_0 there; a second-order update has no limit
    at h = ∞ (r = h_prev/h → 0), so the final jump never uses history.
    """
    _check_order(order, 2, "dpmpp-2m")
    steps = _steps(schedule, timesteps)
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i, (t, a_t, a_s, lam_t, lam_s) in enumerate(steps):
        x0, _ = _evaluate(denoise, callback, x, i, t)
        if i + 1 == len(steps):  # (4) λ_s = ∞: σ_s = 0, α_s = 1, e^{−h} = 0, so x_s = D = x̂_0
            return x0
        h = lam_s - lam_t  # (1) h = λ_s − λ_t, with α = √ᾱ, σ = √(1−ᾱ).
        if order == 1 or x0_prev is None or (lower_order_final and i + 2 == len(steps)):
            d = x0
        else:
            # (2) Alg. 2 line 6: D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(prev), r = h_prev/h.
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # (3) Lu et al. eq. 8 (first-order exponential integrator in data space):
        #     x_s = (σ_s/σ_t) x_t − α_s (e^{−h} − 1) D.
        x = _sigma_ratio(a_t, a_s) * x - a_s**0.5 * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


def sample_dpmpp_3m(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                    generator: Generators = None, callback: Callback = None, *,
                    lower_order_final: bool = False) -> Tensor:  # fmt: skip
    """Third-order multistep DPM-Solver++ (Lu et al. 2022, §4 with a quadratic Taylor term). x: (B, C, H, W).

    Exact solution of the probability-flow ODE in data-prediction form (Lu et al. eq. 7):
    x_s = (σ_s/σ_t) x_t + σ_s ∫ e^λ x̂_0(λ) dλ. Expanding x̂_0(λ) = D + u D' + u²/2 D'' (u = λ − λ_t)
    and integrating exactly gives x_s = (σ_s/σ_t) x_t + α_s (c1 D + c2 D' + c3 D'') with
    c1 = 1 − e^{−h}, c2 = h − c1, c3 = h²/2 − c2. D' and D'' come from divided differences of the
    last three x̂_0 in λ. Orders ramp 1, 2, 3; ``lower_order_final`` uses first order into the last index.
    """
    steps = _steps(schedule, timesteps)
    hist: list[tuple[float, Tensor]] = []  # (λ, x̂_0), newest last; at most three kept
    for i, (t, a_t, a_s, lam_t, lam_s) in enumerate(steps):
        x0, _ = _evaluate(denoise, callback, x, i, t)
        if i + 1 == len(steps):  # λ_s = ∞: the limit of every term is x̂_0 (c2, c3 multiply α_s·0 history)
            return x0
        hist = (hist + [(lam_t, x0)])[-3:]
        order = 1 if (lower_order_final and i + 2 == len(steps)) else len(hist)
        x = _sigma_ratio(a_t, a_s) * x + a_s**0.5 * _dpmpp_3m_update(hist, lam_s - lam_t, order)
    return x


def _dpmpp_3m_update(hist: list[tuple[float, Tensor]], h: float, order: int) -> Tensor:
    """c1 D + c2 D' + c3 D'' of :func:`sample_dpmpp_3m`'s step of length h, from the Taylor terms of the newest
    ``order`` points of ``hist`` [(λ, x̂_0 (B, C, H, W))], newest last; (B, C, H, W)."""
    # (1) the exponential-integrator weights.
    c1 = -math.expm1(-h)
    c2 = h - c1
    c3 = 0.5 * h * h - c2
    update = c1 * hist[-1][1]
    if order >= 2:
        # (2) first divided difference D'(λ_t) ≈ (D_t − D_p1)/h1.
        (l1, d1), (l0, d0) = hist[-2], hist[-1]
        h1 = l0 - l1
        dd0 = (d0 - d1) / h1
        if order == 2:
            update = update + c2 * dd0
        else:
            # (3) derivative of the quadratic through the last three points at λ_t:
            #     D' = dd0 + h1 f, D'' = 2 f with f = (dd0 − dd1)/(h1 + h2).
            l2, d2 = hist[-3]
            h2 = l1 - l2
            f = (dd0 - (d1 - d2) / h2) / (h1 + h2)
            update = update + c2 * (dd0 + h1 * f) + c3 * (2 * f)
    return update


def sample_dpmpp_2m_sde(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                        generator: Generators = None, callback: Callback = None, *,
                        eta: float = 1.0) -> Tensor:  # fmt: skip
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, App. B): the data-prediction reverse SDE, second-order multistep.

    x: (B, C, H, W) → (B, C, H, W). With k = 1 + η, exact integration of the linear part with
    x̂_0(λ) = D + (λ − λ_t) D' gives
    x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s (1 − e^{−kh}) D + α_s (h − (1 − e^{−kh})/k) D' + σ_s √(1 − e^{−2ηh}) z.
    ``eta = 1`` is the reverse SDE itself (the paper's sampler); ``eta = 0`` is a second-order solver of the
    probability-flow ODE (its first step is DDIM η=0); between, the fresh noise per step shrinks to
    σ_s √(1 − e^{−2ηh}) while the marginals stay those of the forward process. First-order steps (no history)
    are DDIM-like: x_s = α_s x̂_0 + σ_s e^{−ηh} ε̂ + σ_s √(1 − e^{−2ηh}) z.
    """
    # The 2-node, corrector-free case of SA-Solver's exponential Adams step, noise on every step.
    _check_eta(eta, "dpmpp-2m-sde", "0 ODE, 1 the reverse SDE")
    return sample_sa_solver(
        denoise, x, schedule, timesteps, generator, callback, eta=eta, order=2, corrector=False, noise_sigma_min=0.0
    )


def sample_sa_solver(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                     generator: Generators = None, callback: Callback = None, *, eta: float = 1.0,
                     order: int = 2, corrector: bool = True,
                     noise_sigma_min: float = 0.3) -> Tensor:  # fmt: skip
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor–corrector for the data-prediction SDE family.

    x: (B, C, H, W) → (B, C, H, W). With k = 1 + η, every step from λ_t to λ_s (h = λ_s − λ_t) is
        x_s = (σ_s/σ_t) e^{−ηh} x_t + α_s Σ_j b_j x̂_0(λ_j) + σ_s √(1 − e^{−2ηh}) z,
        b_j = ∫_{λ_t}^{λ_s} k e^{−k(λ_s − λ)} ℓ_j(λ) dλ,
    where ℓ_j are the Lagrange basis polynomials through the nodes λ_j, so the x̂_0 interpolant is integrated
    exactly against the linear part. The predictor uses the last ``order`` evaluations (orders ramp up as they
    arrive); the model is then evaluated at the predicted x_s (that is the next step's evaluation anyway) and
    the corrector redoes the step with that point added as one more node, with the same z, which raises the
    order by one at no extra model call. ``eta = 0`` is a deterministic probability-flow ODE solver;
    ``eta = 1`` is the reverse SDE, whose first-order step (``order=1``, no corrector) is ancestral DDPM with
    σ² = β̃ of the respaced chain. The last evaluation, at index 0, returns its x̂_0 as the other samplers do.

    ``noise_sigma_min`` makes η a step function of the noise level, as the paper's τ(t) may be: a step that
    starts at σ_t = √((1 − ᾱ_t)/ᾱ_t) below it is deterministic (η = 0, no noise drawn). The default 0.3
    (about t = 90 of the linear schedule) was chosen by measurement: the low-noise steps are more accurate without
    noise on the exact oracle, at no cost in FD on trained models (BENCHMARKS.md, "samplers.py").
    ``noise_sigma_min=0`` puts noise on every step.
    """
    _check_order(order, 3, "sa-solver")
    if not float(noise_sigma_min) >= 0.0:
        raise ValueError(f"noise_sigma_min must be >= 0 (0: noise on every step); got {noise_sigma_min!r}")
    _check_eta(eta, "sa-solver", "0 ODE, 1 the reverse SDE")
    eta = float(eta)
    steps = _steps(schedule, timesteps)
    hist: list[tuple[float, Tensor]] = []  # (λ, x̂_0) of past evaluations, newest first
    last: tuple[Tensor, float, float, list[tuple[float, Tensor]], float, Tensor | None] | None = None
    for i, (t, a_t, a_s, lam_t, lam_s) in enumerate(steps):
        x0, _ = _evaluate(denoise, callback, x, i, t)
        if i + 1 == len(steps):  # λ = ∞ next: σ = 0, the update reduces to x̂_0
            return x0
        if corrector and last is not None:
            # (1) corrector: redo the last step, from x_r, with x̂_0(λ_t) as one more node and the same noise z.
            x_r, a_r, lam_r, nodes, e, z = last
            x = _sa_step(x_r, a_r, a_t, lam_r, lam_t, [(lam_t, x0), *nodes], e, z)
        hist = [(lam_t, x0), *hist][:order]
        e = eta if (1 - a_t) / a_t >= noise_sigma_min**2 else 0.0  # (2) this step's η: σ_t against the window
        z = randn(x.shape, generator, x.device, x.dtype) if e > 0 else None
        last = (x, a_t, lam_t, hist, e, z)
        # (3) predictor: extrapolate x̂_0 through the last ``order`` evaluations.
        x = _sa_step(x, a_t, a_s, lam_t, lam_s, hist, e, z)
    return x


def _exp_moments(a: float, n_max: int) -> list[float]:
    """J_n = ∫_0^1 a e^{−a(1−u)} u^n du for n = 0..n_max, a > 0 (float64).

    By parts J_0 = 1 − e^{−a}, J_n = 1 − (n/a) J_{n−1}; that recursion cancels digits when a is small, so
    below a = 1 the series J_n = a n! Σ_m (−a)^m / (n + m + 1)! is summed instead.
    """
    if a >= 1.0:
        out = [-math.expm1(-a)]
        for n in range(1, n_max + 1):
            out.append(1.0 - n / a * out[-1])
        return out
    out = []
    for n in range(n_max + 1):
        term, total, m = 1.0 / math.factorial(n + 1), 0.0, 0
        while abs(term) > 1e-20:
            total += term
            m += 1
            term *= -a / (n + m + 1)
        out.append(a * math.factorial(n) * total)
    return out


def sa_weights(nodes: Sequence[float], lam_t: float, lam_s: float, k: float) -> list[float]:
    """b_j = ∫_{λ_t}^{λ_s} k e^{−k(λ_s − λ)} ℓ_j(λ) dλ for the Lagrange basis ℓ_j on ``nodes`` (SA-Solver).

    With u = (λ − λ_t)/h, ℓ_j(u) = Σ_n C_{nj} u^n where C is the inverse of the Vandermonde matrix
    V_{jn} = u_j^n, and ∫ k e^{−k(λ_s−λ)} u^n dλ = J_n(kh) (:func:`_exp_moments`), so b = Jᵀ C.
    """
    h = lam_s - lam_t
    us = [(lam - lam_t) / h for lam in nodes]
    m = len(us)
    vander = torch.tensor([[u**n for n in range(m)] for u in us], dtype=torch.float64)
    moments = torch.tensor(_exp_moments(k * h, m - 1), dtype=torch.float64)
    return torch.linalg.solve(vander.T, moments).tolist()  # Σ_j b_j u_j^n = J_n for n < m


def _sa_step(
    x: Tensor,
    a_t: float,
    a_s: float,
    lam_t: float,
    lam_s: float,
    nodes: list[tuple[float, Tensor]],
    eta: float,
    z: Tensor | None,
) -> Tensor:
    """One SA-Solver step from λ_t to λ_s with x̂_0 interpolated through ``nodes`` [(λ, x̂_0)]; x: (B, C, H, W)."""
    h = lam_s - lam_t
    weights = sa_weights([lam for lam, _ in nodes], lam_t, lam_s, 1.0 + eta)
    out = _sigma_ratio(a_t, a_s) * math.exp(-eta * h) * x
    for w, (_, d) in zip(weights, nodes, strict=True):
        out = out + (a_s**0.5 * w) * d
    if z is not None:
        out = out + ((1 - a_s) * -math.expm1(-2 * eta * h)) ** 0.5 * z
    return out


def sample_unipc(denoise: Denoiser, x: Tensor, schedule: Schedule, timesteps: Tensor,
                 generator: Generators = None, callback: Callback = None, *, order: int = 3,
                 variant: str = "bh2", corrector: bool = True, lower_order_final: bool = False) -> Tensor:  # fmt: skip
    """UniPC (Zhao et al. 2023): multistep predictor UniP-p with corrector UniC-p, in data prediction.

    x: (B, C, H, W) → (B, C, H, W). Orders ramp 1, 2, ..., ``order`` as x̂_0 history builds up. After each
    predictor step into λ_s the model is evaluated there anyway (it is the next step's evaluation); UniC
    reuses that x̂_0(λ_s) to correct x_s before the next predictor step, which raises the step's order by
    one at no extra model call. The evaluation at λ_s is kept as made (on the predicted x_s), as in the
    paper. No correction follows the last evaluation (it would need one more call): the output is x̂_0 at
    index 0, reached as in the other samplers. ``variant`` picks B(h): ``"bh1"`` B(h) = h, ``"bh2"``
    B(h) = e^h − 1 (the paper's recommendation for few steps). ``corrector=False`` leaves UniP alone
    (order 2 with bh2 is then DPM-Solver++(2M) step for step); ``lower_order_final`` makes the step into
    the last index first order. Every model call is one ``callback``; steps = model evaluations.
    """
    _check_order(order, 3, "unipc")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; choose 'bh1' (B(h) = h) or 'bh2' (B(h) = e^h − 1)")
    steps = _steps(schedule, timesteps)
    hist: list[tuple[float, Tensor]] = []  # (λ, x̂_0) of past evaluations, newest last
    last: tuple[Tensor, float, float, int] | None = None  # the last predictor step: (x_r, ᾱ_r, λ_r, order)
    for i, (t, a_t, a_s, lam_t, lam_s) in enumerate(steps):
        x0, _ = _evaluate(denoise, callback, x, i, t)
        if i + 1 == len(steps):  # λ = ∞ next: σ = 0, every update reduces to x̂_0 (as in dpmpp-2m)
            return x0
        if corrector and last is not None:
            # (1) UniC-p: redo the last step, from x_r, with x̂_0(λ_t) as one more point, order p + 1.
            x_r, a_r, lam_r, p = last
            x = _unipc_update(x_r, a_r, a_t, lam_r, lam_t, hist[-p:][::-1], variant, x0)
        hist = (hist + [(lam_t, x0)])[-3:]
        p = 1 if (lower_order_final and i + 2 == len(steps)) else min(order, len(hist))
        # (2) UniP-p: predict x at the next index from the last p evaluations.
        last = (x, a_t, lam_t, p)
        x = _unipc_update(x, a_t, a_s, lam_t, lam_s, hist[-p:][::-1], variant, None)
    return x


def _unipc_update(
    x: Tensor,
    a_t: float,
    a_s: float,
    lam_t: float,
    lam_s: float,
    points: list[tuple[float, Tensor]],
    variant: str,
    x0_new: Tensor | None,
) -> Tensor:
    """One UniP-p (``x0_new`` None) or UniC-p step from λ_t to λ_s in data prediction; x: (B, C, H, W).

    ``points`` are (λ, x̂_0) newest first; points[0] is the evaluation at λ_t (D_0 below), the rest the
    p − 1 older ones. With h = λ_s − λ_t, r_k = (λ_k − λ_t)/h and D_k = (x̂_0(λ_k) − D_0)/r_k, UniPC's
    data-prediction update is (Zhao et al. 2023, Alg. 2 in the form of their App. for x_0-models)
        x_s = (σ_s/σ_t) x_t − α_s φ_1 D_0 − α_s B(h) Σ_k a_k D_k,   φ_1 = e^{−h} − 1,
    where the corrector adds x̂_0(λ_s) as the point with r = 1. The weights a solve the order conditions
    Σ_k a_k r_k^{n−1} = n! φ_{n+1}(−h)·(−h)/B(h) for n = 1..m (m unknowns), with the φ recursion below;
    UniP-2 uses a_1 = ½, the paper's choice.
    """
    h = lam_s - lam_t
    hh = -h  # data prediction integrates in −λ
    phi1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi1  # (3) B(h), §3.3
    d0 = points[0][1]
    rks = [(lam_k - lam_t) / h for lam_k, _ in points[1:]]
    diffs = [(xk - d0) / r for (_, xk), r in zip(points[1:], rks, strict=True)]
    if x0_new is not None:
        rks.append(1.0)
        diffs.append(x0_new - d0)
    m = len(rks)
    # (4) right-hand sides: g_1 = φ_1/hh − 1, g_{n+1} = g_n/hh − 1/(n+1)!; b_n = g_n · n! / B(h).
    rhs, g, fact = [], phi1 / hh - 1, 1.0
    for n in range(1, m + 1):
        rhs.append(g * fact / b_h)
        fact *= n + 1
        g = g / hh - 1 / fact
    if m == 0:
        weights: list[float] = []
    elif (x0_new is None and m == 1) or (x0_new is not None and len(points) == 1):
        weights = [0.5]  # UniP-2 and UniC-1: a = ½
    else:
        mat = torch.tensor([[r**n for r in rks] for n in range(m)], dtype=torch.float64)
        weights = torch.linalg.solve(mat, torch.tensor(rhs, dtype=torch.float64)).tolist()
    out = _sigma_ratio(a_t, a_s) * x - a_s**0.5 * phi1 * d0
    for w, dk in zip(weights, diffs, strict=True):
        out = out - (a_s**0.5 * b_h * w) * dk
    return out


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-3m": sample_dpmpp_3m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
    "unipc": sample_unipc,
    "sa-solver": sample_sa_solver,
}


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` (its keyword-only arguments) and their defaults.

    E.g. ``sampler_options("ddim") == {"eta": 0.0}``; these are the ``**options`` :func:`sample` accepts.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


@torch.no_grad()
def sample(
    model: Callable[..., Tensor],
    shape: Sequence[int],
    schedule: Schedule,
    sampler: str = "ddpm",
    steps: int | None = None,
    generator: Generators = None,
    clip_x0: bool = True,
    prediction: str = "eps",
    labels: Tensor | None = None,
    guidance: float | None = None,
    progress: bool = False,
    *,
    spacing: str | None = None,
    callback: Callback = None,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    threshold: float | None = None,
    learned_variance: str | None = None,
    condition: Tensor | None = None,
    condition_level: Tensor | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> Tensor:
    """Draw images from a diffusion model.

    Args:
        model: any callable ``model(x_t, t)`` (or ``model(x_t, t, labels)``) returning a prediction
            of x_t's shape; ``t`` is a LongTensor (B,) of indices into ``schedule``.
        shape: (B, C, H, W) of the batch; schedule: the training schedule; sampler: one of ``SAMPLERS``.
        steps: model evaluations (None: T); fewer than T use a respaced subset of indices (``spacing``) ending at 0.
        generator: None, a generator, or one per image; clip_x0: clamp x̂_0 to [-1, 1]; prediction: eps, x0 or v.
        labels: LongTensor (B,) of class indices (-1 = no label); guidance: the classifier-free guidance weight w
            (0 unconditional, 1 conditional).
        progress: show a tqdm bar; callback: called after each model evaluation with a dict (i, t, x, x0).
        spacing: how ``steps`` indices are picked (:func:`ddpm.spaced_timesteps`); None means ``DEFAULT_SPACING``,
            the measured best on the Gaussian oracle. Irrelevant when steps is None or T (every index is used).
        x_T: starting noise (B, C, H, W); drawn from ``generator`` when None. threshold: dynamic-thresholding
            quantile (e.g. 0.995) used instead of the plain clamp.
        condition, condition_level, project: an image-conditioned network's condition (B, Cc, H, W) and augmentation
            level (B,), passed to every call (:func:`ddpm.denoiser.conditioned`); a map of every x̂_0 after the clamp,
            ε recomputed from it (a super-resolution model's back-projection, :func:`ddpm.conditioning.project_low`).
        learned_variance: ``"learned"`` or ``"learned-range"`` for a model that also predicts its reverse variance
            (2C output channels; other samplers use the mean part): ``"ddpm"`` draws with its σ² unless ``variance``.
        options: sampler-specific keywords (``variance``, ``eta``, ``order``, ...), listed by :func:`sampler_options`.

    Returns the final x_0 estimate (B, C, H, W), float32 (in [-1, 1] when clipping).
    """
    _check_options(sampler, options)
    device = model_device(model) if device is None else device
    steps, spacing = schedule.timesteps if steps is None else steps, DEFAULT_SPACING if spacing is None else spacing
    timesteps = spaced_timesteps(schedule, steps, spacing)
    x = _start_noise(tuple(int(s) for s in shape), generator, device, x_T)
    denoise = make_denoiser(conditioned(model, condition, condition_level), schedule, prediction, clip_x0, labels,
                            guidance, threshold=threshold, learned_variance=learned_variance,
                            project=project)  # fmt: skip
    if sampler == "ddpm" and learned_variance is not None:
        options = {"variance": "learned", **options}
    denoise = _with_progress(denoise, len(timesteps), sampler) if progress else denoise
    return SAMPLERS[sampler](denoise, x, schedule, timesteps, generator, callback, **options)


def _check_options(sampler: str, options: dict[str, Any]) -> None:
    """Reject an unknown sampler name, or an option that sampler does not take (see :func:`sampler_options`)."""
    accepted = sampler_options(sampler)
    for key in options:
        if key not in accepted:
            raise ValueError(f"sampler {sampler!r} has no option {key!r}; its options: {', '.join(accepted) or 'none'}")


def _start_noise(
    shape: tuple[int, ...], generator: Generators, device: torch.device | str, x_T: Tensor | None
) -> Tensor:
    """The starting x_T, ``shape`` (B, C, H, W) float32 on ``device``: ``x_T`` when given, else drawn."""
    x = randn(shape, generator, device) if x_T is None else x_T.to(device=device, dtype=torch.float32)
    if tuple(x.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x.shape)} but shape is {shape}")
    return x


def model_device(model: Callable[..., Tensor]) -> torch.device:
    """The device of ``model``'s first parameter; the CPU for a callable without parameters (e.g. an oracle)."""
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _with_progress(denoise: Denoiser, total: int, name: str) -> Denoiser:
    """``denoise`` that also advances a tqdm bar of ``total`` model calls, closed after the last one."""
    bar = tqdm(total=total, desc=f"sampling ({name})", unit="step", leave=False, delay=1.0)  # shown after 1 s

    def wrapped(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        out = denoise(x, t)
        bar.update(1)
        if bar.n >= total:
            bar.close()
        return out

    return wrapped
