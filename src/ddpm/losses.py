"""The training objective: which timesteps are drawn, and how each one's error is weighted.

DDPM's objective (Ho et al. 2020, "L_simple") draws t uniformly from 0..T−1 and takes the plain
MSE between the network's output and its target (ε, x_0 or v). On the linear schedule half of those
draws land where SNR = ᾱ/(1−ᾱ) < 0.1, where there is little left to learn. Two published remedies keep
the forward process and change the emphasis:

- **Loss weights** per timestep. They are stated here as a weight w(t) on the x_0 error ‖x_0 − x̂_0‖²,
  the common currency of the three parametrisations; the weight on the network's own MSE is w(t) times
  ‖x_0 − x̂_0‖² / ‖target − output‖², which is 1/SNR for ε, 1/(1+SNR) for v and 1 for x_0
  (x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ and x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂).

  - ``min-snr`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"):
    w(t) = min(SNR_t, γ), γ = 5 by default. For ε this is min(SNR, γ)/SNR: 1 at high noise, γ/SNR at
    low noise, so easy low-noise steps stop dominating the gradient.
  - ``p2`` (Choi et al. 2022, "Perception Prioritized Training"): ε-loss weight 1/(k + SNR)^γ with
    k = 1 and γ = 1 by default, i.e. w(t) = SNR/(1 + SNR)^γ.
  - ``none``: the plain MSE of whatever the network predicts (L_simple for ε).

- **Timestep sampling**: ``uniform`` (DDPM's), or ``laplace`` (Hang et al. 2024, "Improved Noise
  Schedule for Diffusion Training"): log-SNR λ is drawn from a Laplace density centred at ``loc`` with
  scale ``scale``; on a discrete schedule index t gets the Laplace mass of the λ-interval that rounds to
  it (edges halfway between neighbouring λ_t, the two end intervals open), so the draw concentrates
  where λ ≈ loc, the mid-noise steps.

  Either density can be drawn **stratified** (the "low-discrepancy sampler" of Kingma et al. 2021,
  "Variational Diffusion Models"): the B uniform numbers u behind a batch's draws are
  (u₀ + i/B) mod 1 for i = 0..B−1 with one u₀ ~ U[0, 1), in a random order, so each of the B equal slices
  of [0, 1) holds exactly one. Every single draw keeps the density, so the loss's expectation is unchanged;
  only the batch's spread over t is even, which lowers the variance of the batch's loss and gradient.

Every table is float64 of length T and indexed by t; the weights are cast to the loss's dtype at the end.
:class:`Objective` puts the choices of one run together: ``draw_t`` and ``loss`` are what training calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .diffusion import extract, q_sample, training_target
from .schedule import Schedule, log_snr

LOSS_WEIGHTS = ("none", "min-snr", "p2")
T_SAMPLINGS = ("uniform", "laplace")
DEFAULT_GAMMA = {"min-snr": 5.0, "p2": 1.0}


def snr(schedule: Schedule) -> Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t), float64 (T,)."""
    ab = schedule.alphas_cumprod
    return ab / (1 - ab)


def loss_weights(schedule: Schedule, prediction: str, weighting: str = "none", gamma: float | None = None) -> Tensor:
    """Per-timestep weights (T,) float64 on the MSE between the network's output and its ``prediction`` target.

    ``weighting`` is one of :data:`LOSS_WEIGHTS`; ``gamma`` None takes the weighting's default
    (:data:`DEFAULT_GAMMA`). ``none`` gives ones.
    """
    if weighting not in LOSS_WEIGHTS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTS)}")
    s = snr(schedule)
    if weighting == "none":
        return torch.ones_like(s)
    g = DEFAULT_GAMMA[weighting] if gamma is None else float(gamma)
    if not (math.isfinite(g) and g > 0):
        raise ValueError(f"the {weighting} gamma must be a positive number; got {gamma!r}")
    w_x0 = s.clamp(max=g) if weighting == "min-snr" else s / (1 + s) ** g
    # ‖x0 − x̂0‖² per unit of the network's own squared error.
    per_unit = {"eps": 1 / s, "v": 1 / (1 + s), "x0": torch.ones_like(s)}
    if prediction not in per_unit:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(per_unit)}")
    return w_x0 * per_unit[prediction]


def timestep_probabilities(schedule: Schedule, sampling: str = "uniform", loc: float = 0.0,
                           scale: float = 0.5) -> Tensor:
    """The probability (T,) float64 of drawing each index t under ``sampling`` (see the module notes)."""
    T = schedule.timesteps
    if sampling == "uniform":
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if sampling != "laplace":
        raise ValueError(f"unknown timestep sampling {sampling!r}; choose one of {', '.join(T_SAMPLINGS)}")
    if not (math.isfinite(scale) and scale > 0) or not math.isfinite(loc):
        raise ValueError(f"the Laplace density needs a finite loc and a positive scale; got {loc!r}, {scale!r}")
    lam = log_snr(schedule.alphas_cumprod)  # decreasing in t
    # Interval of t: (edge[t+1], edge[t]] in λ, halfway to the neighbours; the ends reach ±∞.
    mid = 0.5 * (lam[1:] + lam[:-1])
    inf = torch.tensor([math.inf], dtype=torch.float64)
    upper, lower = torch.cat([inf, mid]), torch.cat([mid, -inf])

    def cdf(x: Tensor) -> Tensor:  # the Laplace(loc, scale) distribution function
        z = (x - loc) / scale
        return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))

    p = cdf(upper) - cdf(lower)
    return p / p.sum()


def stratified_uniforms(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """(n,) float64 in [0, 1): (u₀ + i/n) mod 1 for i = 0..n−1, one u₀ ~ U[0, 1), randomly permuted.

    Each value alone is U[0, 1); together they put exactly one value in each slice [k/n, (k+1)/n).
    """
    u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
    grid = torch.arange(n, device=device, dtype=torch.float64) / n
    u = torch.remainder(u0 + grid, 1.0)
    return u[torch.randperm(n, generator=generator, device=device)]


def draw_timesteps(n: int, probabilities: Tensor | None, timesteps: int, generator: torch.Generator,
                   device: torch.device | str = "cpu", stratified: bool = False) -> Tensor:
    """n indices (n,) int64: uniform from 0..T−1 when ``probabilities`` is None (DDPM's draw),
    else from the distribution ``probabilities`` (T,). ``stratified`` draws the n as one stratified set
    (:func:`stratified_uniforms`) through the same inverse distribution function."""
    if probabilities is None and not stratified:
        return torch.randint(0, timesteps, (n,), generator=generator, device=device)
    if stratified:
        u = stratified_uniforms(n, generator, device)
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if probabilities is None:
        return (u * timesteps).floor().long().clamp(max=timesteps - 1)
    cum = probabilities.to(device).cumsum(0)
    return torch.searchsorted(cum, u * cum[-1], right=True).clamp(max=timesteps - 1)


def diffusion_loss(output: Tensor, target: Tensor, t: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of the (optionally t-weighted) per-image MSE; output, target (B, C, H, W), t (B,).

    ``weights`` None is the plain MSE (bit for bit ``F.mse_loss``); else ``weights`` (T,) from
    :func:`loss_weights` multiply each image's mean squared error.
    """
    if weights is None:
        return torch.nn.functional.mse_loss(output.float(), target.float())
    per_image = (output.float() - target.float()).square().flatten(1).mean(1)  # (B,)
    return (extract(weights, t, per_image) * per_image).mean()


@dataclass(frozen=True)
class Objective:
    """One run's training objective: how its timesteps are drawn and the loss of a batch.

    ``t_probabilities`` (T,) None draws t uniformly (DDPM's draw); ``weights`` (T,) None is the plain MSE;
    ``stratified`` draws each batch's t as one stratified set.
    Build it with :meth:`create` from the option names; the tables live on the device given there.
    """

    schedule: Schedule
    prediction: str = "eps"
    t_probabilities: Tensor | None = None
    weights: Tensor | None = None
    stratified: bool = False

    @classmethod
    def create(cls, schedule: Schedule, prediction: str = "eps", loss_weight: str = "none",
               gamma: float | None = None, t_sampling: str = "uniform", laplace_loc: float = 0.0,
               laplace_scale: float = 0.5, device: torch.device | str = "cpu", stratified: bool = False) -> Objective:
        """The objective of :func:`loss_weights` ``loss_weight`` and :func:`timestep_probabilities` ``t_sampling``."""
        probs = None if t_sampling == "uniform" else timestep_probabilities(
            schedule, t_sampling, laplace_loc, laplace_scale).to(device)
        weights = None if loss_weight == "none" else loss_weights(schedule, prediction, loss_weight, gamma).to(device)
        return cls(schedule, prediction, probs, weights, stratified)

    def draw_t(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """n training timesteps (n,) int64, see :func:`draw_timesteps`."""
        return draw_timesteps(n, self.t_probabilities, self.schedule.timesteps, generator, device, self.stratified)

    def loss(self, model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None,
             memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """The loss (scalar) of ``model`` on clean images x0 (B, C, H, W) at timesteps t (B,) with noise ε (B, C, H, W).

        x_t = q_sample(x0, t, ε) with **that** ε; the network's output on (x_t, t[, labels]) is compared to its
        target (ε, x0 or v) by :func:`diffusion_loss` with this objective's weights.
        """
        x_t = q_sample(x0, t, noise, self.schedule).contiguous(memory_format=memory_format)
        output = model(x_t, t) if labels is None else model(x_t, t, labels)
        return diffusion_loss(output, training_target(x0, noise, t, self.schedule, self.prediction), t, self.weights)
